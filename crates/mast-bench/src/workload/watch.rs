//! The `watch` workload and the watcher machinery the `registry` workload reuses.
//!
//! Watchers are spread over `--streams` Watch streams (one bidirectional gRPC stream holds many
//! watchers, as etcd clients multiplex them). Each stream task writes down every event it gets
//! as (watcher, revision, time received) and nothing more; the writers write down (revision,
//! time acknowledged). Matching the two afterwards by revision — a write's response header
//! revision is the `mod_revision` of the event it causes — gives, for every watcher and every
//! acknowledged write, whether the event came and how long after the acknowledgement, without
//! any lock shared between writers and watchers while the run goes on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use mast_proto::etcdserverpb::watch_request::RequestUnion;
use mast_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use serde_json::json;
use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{Common, Ctx, key, kv_client, params, prefix_end, rpc_err, value, watch_client};
use crate::driver::{Errors, open_loop};
use crate::stats::{Recorder, Report, WatchStats};

/// What one watcher watches and which group of writes it should see.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// First key.
    pub key: Bytes,
    /// End of the range (exclusive; empty: the key alone).
    pub range_end: Bytes,
    /// Writes tagged with this group are expected by this watcher.
    pub group: usize,
}

/// One event received: watcher number, revision, nanoseconds since the run's epoch.
type Receipt = (u32, i64, u64);

/// A write acknowledged by the server: when, and which group of watchers should see it.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// Nanoseconds since the run's epoch when the request was sent.
    pub sent_ns: u64,
    /// Nanoseconds since the run's epoch when the response arrived.
    pub at_ns: u64,
    /// The group of watchers that should get the event.
    pub group: usize,
}

/// Watchers running on their streams.
pub struct Watchers {
    specs: Vec<WatchSpec>,
    stop: signal::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Receipt>>>,
    received: Arc<AtomicU64>,
    errors: Arc<Errors>,
}

/// Nanoseconds from `epoch` to now.
pub fn since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Watchers {
    /// Creates every watcher in `specs` over `streams` streams (round-robin over `channels`)
    /// and returns once the server has confirmed each of them.
    pub async fn start(
        channels: &[Channel],
        specs: Vec<WatchSpec>,
        streams: usize,
        epoch: Instant,
    ) -> anyhow::Result<Watchers> {
        let streams = if specs.is_empty() {
            0
        } else {
            streams.clamp(1, specs.len())
        };
        let (stop, stop_rx) = signal::channel(false);
        let received = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Errors::default());
        let mut tasks = Vec::with_capacity(streams);
        let mut ready = Vec::with_capacity(streams);
        for s in 0..streams {
            let mine: Vec<u32> = (s..specs.len())
                .step_by(streams)
                .map(|i| i as u32)
                .collect();
            let creates: Vec<WatchRequest> = mine
                .iter()
                .map(|&w| {
                    let spec = &specs[w as usize];
                    WatchRequest {
                        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                            key: spec.key.clone(),
                            range_end: spec.range_end.clone(),
                            ..Default::default()
                        })),
                    }
                })
                .collect();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            ready.push(ready_rx);
            let client = watch_client(channels[s % channels.len()].clone());
            tasks.push(tokio::spawn(run_stream(
                client,
                mine,
                creates,
                ready_tx,
                stop_rx.clone(),
                received.clone(),
                errors.clone(),
                epoch,
            )));
        }
        let watchers = Watchers {
            specs,
            stop,
            tasks,
            received,
            errors,
        };
        for r in ready {
            match tokio::time::timeout(Duration::from_secs(60), r).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e).context("creating watchers"),
                Ok(Err(_)) => anyhow::bail!("a watch stream ended while creating watchers"),
                Err(_) => anyhow::bail!("watchers were not created within 60 s"),
            }
        }
        Ok(watchers)
    }

    /// How many watchers there are.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Waits until `expected` events have arrived or `timeout` passes.
    pub async fn drain(&self, expected: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every stream and matches what the watchers got against `acks` (revision → ack).
    /// Groups are summed into classes (`class_of[group]`, `classes` of them): returns one
    /// [`WatchStats`] per class, their total, the stream errors and the first of them.
    pub async fn finish(
        self,
        acks: &HashMap<i64, Ack>,
        class_of: &[usize],
        classes: usize,
    ) -> (Vec<WatchStats>, WatchStats, u64, Option<String>) {
        let _ = self.stop.send(true);
        let mut receipts = Vec::new();
        for t in self.tasks {
            match t.await {
                Ok(r) => receipts.extend(r),
                Err(e) => self.errors.record(format!("watch task failed: {e}")),
            }
        }
        let (per_class, total) = analyze(&self.specs, &receipts, acks, class_of, classes);
        (per_class, total, self.errors.count(), self.errors.first())
    }
}

/// One Watch stream: creates its watchers, then records events until told to stop.
#[allow(clippy::too_many_arguments)]
async fn run_stream(
    mut client: mast_proto::etcdserverpb::watch_client::WatchClient<Channel>,
    mine: Vec<u32>,
    creates: Vec<WatchRequest>,
    ready: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    mut stop: signal::Receiver<bool>,
    received: Arc<AtomicU64>,
    errors: Arc<Errors>,
    epoch: Instant,
) -> Vec<Receipt> {
    let mut receipts = Vec::new();
    let (tx, rx) = mpsc::channel(creates.len() + 1);
    let response = client.watch(ReceiverStream::new(rx));
    // Queue every create before awaiting the stream: the call returns once the server answers
    // the headers, which some servers only do after the first request.
    for c in creates {
        if tx.send(c).await.is_err() {
            break;
        }
    }
    let mut stream = match response.await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let _ = ready.send(Err(rpc_err("watch", s)));
            return receipts;
        }
    };
    // Watch ids → our watcher numbers. The server answers creates in the order sent.
    let mut ids: HashMap<i64, u32> = HashMap::with_capacity(mine.len());
    let mut pending = mine.into_iter();
    let mut ready = Some(ready);
    if pending.len() == 0
        && let Some(r) = ready.take()
    {
        let _ = r.send(Ok(()));
    }
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        let resp = match msg {
            Some(Ok(resp)) => resp,
            Some(Err(s)) => {
                let e = rpc_err("watch stream", s);
                errors.record(&e);
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                }
                break;
            }
            None => {
                errors.record("watch stream closed by the server");
                break;
            }
        };
        let now = since(epoch);
        if resp.created {
            match pending.next() {
                Some(w) => {
                    ids.insert(resp.watch_id, w);
                }
                None => errors.record("unexpected watch created response"),
            }
            if pending.len() == 0
                && let Some(r) = ready.take()
            {
                let _ = r.send(Ok(()));
            }
        }
        if resp.canceled {
            errors.record(format!(
                "watch {} canceled: {} (compact revision {})",
                resp.watch_id, resp.cancel_reason, resp.compact_revision
            ));
            continue;
        }
        if resp.events.is_empty() {
            continue;
        }
        let Some(&w) = ids.get(&resp.watch_id) else {
            errors.record(format!("events for unknown watch id {}", resp.watch_id));
            continue;
        };
        received.fetch_add(resp.events.len() as u64, Ordering::Relaxed);
        for ev in &resp.events {
            if let Some(kv) = &ev.kv {
                receipts.push((w, kv.mod_revision, now));
            }
        }
    }
    drop(tx);
    receipts
}

/// Matches receipts against acknowledged writes: a watcher expects every write of its group;
/// counts are summed per class (`class_of[group]`) and in total.
fn analyze(
    specs: &[WatchSpec],
    receipts: &[Receipt],
    acks: &HashMap<i64, Ack>,
    class_of: &[usize],
    classes: usize,
) -> (Vec<WatchStats>, WatchStats) {
    let class = |group: usize| class_of.get(group).copied().filter(|&c| c < classes);
    let mut watchers_in: HashMap<usize, u64> = HashMap::new();
    let mut stats = vec![WatchStats::default(); classes];
    let mut latency = vec![Recorder::new(); classes];
    let mut e2e = vec![Recorder::new(); classes];
    for s in specs {
        *watchers_in.entry(s.group).or_default() += 1;
        if let Some(c) = class(s.group) {
            stats[c].watchers += 1;
        }
    }
    for ack in acks.values() {
        if let Some(c) = class(ack.group) {
            stats[c].events_expected += watchers_in.get(&ack.group).copied().unwrap_or(0);
        }
    }
    let mut seen: HashSet<(u32, i64)> = HashSet::with_capacity(receipts.len());
    for &(w, rev, at) in receipts {
        let Some(ack) = acks.get(&rev) else { continue };
        let group = specs[w as usize].group;
        let Some(c) = class(group).filter(|_| group == ack.group) else {
            continue;
        };
        let st = &mut stats[c];
        if !seen.insert((w, rev)) {
            st.duplicates += 1;
            continue;
        }
        st.events_received += 1;
        if at < ack.at_ns {
            st.before_ack += 1;
        }
        latency[c].record_us(at.saturating_sub(ack.at_ns) / 1000);
        e2e[c].record_us(at.saturating_sub(ack.sent_ns) / 1000);
    }
    let mut total = WatchStats::default();
    let (mut all, mut all_e2e) = (Recorder::new(), Recorder::new());
    for ((st, lat), e2e) in stats.iter_mut().zip(&latency).zip(&e2e) {
        st.missing = st.events_expected.saturating_sub(st.events_received);
        st.delivery_ms = lat.summary();
        st.end_to_end_ms = e2e.summary();
        total.watchers += st.watchers;
        total.events_expected += st.events_expected;
        total.events_received += st.events_received;
        total.missing += st.missing;
        total.duplicates += st.duplicates;
        total.before_ack += st.before_ack;
        all.merge(lat);
        all_e2e.merge(e2e);
    }
    total.delivery_ms = all.summary();
    total.end_to_end_ms = all_e2e.summary();
    (stats, total)
}

/// Flags of `watch`.
#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Endpoints, connections, clients, budget, output.
    #[command(flatten)]
    pub common: Common,
    /// Watchers, all on the same prefix.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Puts per second (an open loop: the rate does not slow down when the server does).
    #[arg(long, default_value_t = 100.0)]
    put_rate: f64,
    /// Value size of the puts.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// The prefix every watcher watches and every put writes under.
    #[arg(long, default_value = "/bench/watch/")]
    prefix: String,
    /// After the last put, how long to wait for missing events.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    drain_timeout: Duration,
}

/// Runs `watch`: W watchers on one prefix; puts at a fixed rate; every event matched.
pub async fn watch(args: WatchArgs) -> anyhow::Result<Report> {
    let puts = match (args.common.total, args.common.duration) {
        (Some(n), _) => n,
        (None, Some(d)) => (args.put_rate * d.as_secs_f64()).ceil() as u64,
        (None, None) => 1_000,
    };
    let ctx = Ctx::open(&args.common, "watch", Some(puts)).await?;
    let epoch = Instant::now();
    let prefix = Bytes::from(args.prefix.clone().into_bytes());
    let specs = (0..args.watchers)
        .map(|_| WatchSpec {
            key: prefix.clone(),
            range_end: prefix_end(&prefix),
            group: 0,
        })
        .collect();
    ctx.progress
        .message(format!("creating {} watchers", args.watchers));
    let watchers = Watchers::start(&ctx.channels, specs, args.streams, epoch).await?;
    ctx.progress.message(String::new());

    let acks = Arc::new(std::sync::Mutex::new(HashMap::with_capacity(puts as usize)));
    let put_latency = Arc::new(std::sync::Mutex::new(Recorder::new()));
    let put_errors = Arc::new(Errors::default());
    let val = value(args.val_size);
    let kvs: Vec<_> = (0..args.common.clients.max(1))
        .map(|i| kv_client(ctx.channel(i)))
        .collect();
    let started = Instant::now();
    let deadline = crate::driver::Budget::count(puts).deadline(started);
    let (acks2, lat2, errs2, progress) = (
        acks.clone(),
        put_latency.clone(),
        put_errors.clone(),
        ctx.progress.clone(),
    );
    open_loop(
        args.put_rate,
        puts,
        args.common.clients,
        deadline,
        move |seq| {
            let mut kv = kvs[seq as usize % kvs.len()].clone();
            let req = PutRequest {
                key: key(&prefix, seq, prefix.len() + 10),
                value: val.clone(),
                ..Default::default()
            };
            let (acks, lat, errs, progress) =
                (acks2.clone(), lat2.clone(), errs2.clone(), progress.clone());
            async move {
                let t0 = Instant::now();
                let sent_ns = since(epoch);
                match kv.put(req).await {
                    Ok(resp) => {
                        let at_ns = since(epoch);
                        lat.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .record(t0.elapsed());
                        let rev = resp.into_inner().header.map_or(0, |h| h.revision);
                        acks.lock().unwrap_or_else(|e| e.into_inner()).insert(
                            rev,
                            Ack {
                                sent_ns,
                                at_ns,
                                group: 0,
                            },
                        );
                    }
                    Err(s) => errs.record(rpc_err("put", s)),
                }
                progress.inc(1);
            }
        },
    )
    .await;
    let elapsed = started.elapsed();
    let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(|e| e.into_inner()));
    ctx.progress.message("draining events".into());
    watchers
        .drain(
            acks.len() as u64 * watchers.len() as u64,
            args.drain_timeout,
        )
        .await;
    let (_, stats, watch_errors, watch_first) = watchers.finish(&acks, &[0], 1).await;

    let latency = put_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .summary();
    let mut report = Report::new(
        "watch",
        acks.len() as u64,
        put_errors.count() + watch_errors,
        elapsed,
        latency,
    );
    report.first_error = put_errors.first().or(watch_first);
    report.watch = Some(stats);
    Ok(ctx.report(
        report,
        params([
            ("watchers", json!(args.watchers)),
            ("streams", json!(args.streams)),
            ("put_rate", json!(args.put_rate)),
            ("puts", json!(puts)),
            ("val_size", json!(args.val_size)),
        ]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_counts_missing_duplicates_and_latency() {
        let spec = |group| WatchSpec {
            key: Bytes::new(),
            range_end: Bytes::new(),
            group,
        };
        let specs = vec![spec(0), spec(0), spec(1)];
        let mut acks = HashMap::new();
        acks.insert(
            10,
            Ack {
                sent_ns: 0,
                at_ns: 1_000_000,
                group: 0,
            },
        );
        acks.insert(
            11,
            Ack {
                sent_ns: 1_500_000,
                at_ns: 2_000_000,
                group: 1,
            },
        );
        let receipts = vec![
            (0, 10, 3_000_000), // 2 ms
            (0, 10, 3_000_000), // duplicate
            (2, 11, 1_000_000), // before the ack: 0 ms
            (2, 10, 5_000_000), // not its group: ignored
            (0, 99, 5_000_000), // unknown revision: ignored
        ];
        let (groups, total) = analyze(&specs, &receipts, &acks, &[0, 1], 2);
        assert_eq!(groups[0].events_expected, 2);
        assert_eq!(groups[0].events_received, 1);
        assert_eq!(groups[0].missing, 1);
        assert_eq!(groups[0].duplicates, 1);
        assert!((groups[0].delivery_ms.p50_ms - 2.0).abs() < 0.01);
        assert!((groups[0].end_to_end_ms.p50_ms - 3.0).abs() < 0.01);
        assert_eq!(groups[1].missing, 0);
        assert_eq!(groups[1].before_ack, 1);
        assert_eq!(total.events_expected, 3);
        assert_eq!(total.missing, 1);
        assert_eq!(total.watchers, 3);
    }
}
