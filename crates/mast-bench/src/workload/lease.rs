//! The `lease-keepalive` workload and the keepalive machinery the `registry` workload reuses.
//!
//! L leases are granted, then kept alive for S seconds over `--streams` LeaseKeepAlive streams,
//! each lease renewed once per `--interval` (TTL/3 by default, as etcd's client does). Renewals
//! are spread evenly over the interval rather than sent in bursts, the way many independent
//! clients would send them. A renewal answered with TTL ≤ 0 means the lease was lost: an error.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use mast_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{Common, Ctx, lease_client, params, rpc_err};
use crate::driver::{Budget, Errors, Outcome, Progress, closed_loop};
use crate::stats::{Part, Recorder, Report};

/// How often a keepalive stream wakes up to send its share of renewals.
const TICK: Duration = Duration::from_millis(10);
/// How long to wait for answers to renewals already sent when the run ends.
const DRAIN: Duration = Duration::from_secs(3);

/// Grants `n` leases of `ttl` seconds with `clients` concurrent clients; returns their ids.
pub async fn grant(ctx: &Ctx, n: u64, ttl: i64, clients: usize) -> (Vec<i64>, Outcome) {
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n as usize)));
    let lcs: Arc<Vec<_>> = Arc::new(
        (0..clients.max(1))
            .map(|i| lease_client(ctx.channel(i)))
            .collect(),
    );
    let ids2 = ids.clone();
    let out = closed_loop(
        clients,
        Budget::count(n),
        &ctx.progress,
        move |client, _| {
            let mut lc = lcs[client].clone();
            let ids = ids2.clone();
            async move {
                let resp = lc
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .map_err(|s| rpc_err("lease grant", s))?
                    .into_inner();
                if !resp.error.is_empty() {
                    anyhow::bail!("lease grant: {}", resp.error);
                }
                ids.lock().unwrap_or_else(|e| e.into_inner()).push(resp.id);
                Ok(())
            }
        },
    )
    .await;
    let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(|e| e.into_inner()));
    (ids, out)
}

/// Revokes every lease in `ids` with `clients` concurrent clients.
pub async fn revoke(ctx: &Ctx, ids: Vec<i64>, clients: usize) -> Outcome {
    let ids = Arc::new(ids);
    let lcs: Arc<Vec<_>> = Arc::new(
        (0..clients.max(1))
            .map(|i| lease_client(ctx.channel(i)))
            .collect(),
    );
    let ids2 = ids.clone();
    closed_loop(
        clients,
        Budget::count(ids.len() as u64),
        &ctx.progress,
        move |client, seq| {
            let mut lc = lcs[client].clone();
            let id = ids2[seq as usize];
            async move {
                lc.lease_revoke(LeaseRevokeRequest { id })
                    .await
                    .map_err(|s| rpc_err("lease revoke", s))?;
                Ok(())
            }
        },
    )
    .await
}

/// Keeps every lease in `ids` alive for `duration`, renewing each once per `interval`, over
/// `streams` LeaseKeepAlive streams.
pub async fn keep_alive(
    channels: &[Channel],
    ids: &[i64],
    streams: usize,
    interval: Duration,
    duration: Duration,
    progress: &Progress,
) -> Outcome {
    let streams = streams.clamp(1, ids.len().max(1));
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let deadline = start + duration.min(crate::driver::TIME_CAP);
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let mine: Vec<i64> = ids.iter().skip(s).step_by(streams).copied().collect();
        let ch = channels[s % channels.len()].clone();
        tasks.push(tokio::spawn(run_stream(
            ch,
            mine,
            interval,
            deadline,
            errors.clone(),
            progress.clone(),
        )));
    }
    let mut out = Outcome::default();
    for t in tasks {
        match t.await {
            Ok((ops, rec)) => {
                out.ops += ops;
                out.latency.merge(&rec);
            }
            Err(e) => errors.record(format!("keepalive task failed: {e}")),
        }
    }
    out.elapsed = start.elapsed();
    out.errors = errors.count();
    out.first_error = errors.first();
    out
}

/// One LeaseKeepAlive stream: renews its leases evenly over each interval until `deadline`.
async fn run_stream(
    ch: Channel,
    leases: Vec<i64>,
    interval: Duration,
    deadline: Instant,
    errors: Arc<Errors>,
    progress: Progress,
) -> (u64, Recorder) {
    let mut rec = Recorder::new();
    let mut ops = 0u64;
    if leases.is_empty() {
        return (ops, rec);
    }
    let (tx, rx) = mpsc::channel::<LeaseKeepAliveRequest>(leases.len() + 16);
    let mut client = lease_client(ch);
    let call = client.lease_keep_alive(ReceiverStream::new(rx));
    // Renewals due per tick; fractions carry over so the rate is exact on average.
    let per_tick = leases.len() as f64 * TICK.as_secs_f64() / interval.as_secs_f64().max(0.001);
    let mut credit = 0.0f64;
    let mut sent: HashMap<i64, VecDeque<Instant>> = HashMap::with_capacity(leases.len());
    let mut outstanding = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A gRPC server may hold the response headers back until it has something to answer, so
    // one renewal goes out before the call is awaited.
    let first = leases[0];
    let mut next = 1usize;
    if tx.try_send(LeaseKeepAliveRequest { id: first }).is_ok() {
        sent.entry(first).or_default().push_back(Instant::now());
        outstanding += 1;
    }
    let mut stream = match call.await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            errors.record(rpc_err("lease keepalive", s));
            return (ops, rec);
        }
    };
    let mut sending = true;
    let drain_until = deadline + DRAIN;
    loop {
        if !sending && outstanding == 0 {
            break;
        }
        let now = Instant::now();
        if sending && now >= deadline {
            sending = false;
            continue;
        }
        if !sending && now >= drain_until {
            errors.record(format!("{outstanding} keepalives unanswered after the run"));
            break;
        }
        tokio::select! {
            _ = tick.tick(), if sending => {
                credit += per_tick;
                while credit >= 1.0 {
                    credit -= 1.0;
                    let id = leases[next % leases.len()];
                    next += 1;
                    if tx.try_send(LeaseKeepAliveRequest { id }).is_err() {
                        errors.record("keepalive send queue full (server not reading)");
                        continue;
                    }
                    sent.entry(id).or_default().push_back(Instant::now());
                    outstanding += 1;
                }
            }
            m = stream.next() => match m {
                Some(Ok(resp)) => {
                    let Some(t0) = sent.get_mut(&resp.id).and_then(VecDeque::pop_front) else {
                        errors.record(format!("keepalive answer for lease {} not asked", resp.id));
                        continue;
                    };
                    outstanding = outstanding.saturating_sub(1);
                    if resp.ttl <= 0 {
                        errors.record(format!("lease {} expired (keepalive TTL {})", resp.id, resp.ttl));
                    } else {
                        rec.record(t0.elapsed());
                        ops += 1;
                    }
                    progress.inc(1);
                }
                Some(Err(s)) => {
                    errors.record(rpc_err("lease keepalive stream", s));
                    break;
                }
                None => {
                    errors.record("lease keepalive stream closed by the server");
                    break;
                }
            },
            _ = tokio::time::sleep_until((if sending { deadline } else { drain_until }).into()) => {}
        }
    }
    drop(tx);
    (ops, rec)
}

/// Flags of `lease-keepalive`.
#[derive(Args, Debug, Clone)]
pub struct LeaseArgs {
    /// Endpoints, connections, clients, budget, output.
    #[command(flatten)]
    pub common: Common,
    /// Leases to grant and keep alive.
    #[arg(long, default_value_t = 1_000)]
    leases: u64,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 30)]
    ttl: i64,
    /// Time between two renewals of the same lease (default: TTL / 3).
    #[arg(long, value_parser = super::parse_duration)]
    interval: Option<Duration>,
    /// LeaseKeepAlive streams the leases are spread over (default: one per connection).
    #[arg(long)]
    streams: Option<usize>,
    /// Revoke the leases at the end (default true).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    revoke: bool,
}

/// Runs `lease-keepalive`: grant L leases, keep them alive for `--duration`, revoke them.
pub async fn lease_keepalive(args: LeaseArgs) -> anyhow::Result<Report> {
    let duration = args.common.duration.unwrap_or(Duration::from_secs(10));
    let interval = args
        .interval
        .unwrap_or(Duration::from_secs_f64(args.ttl.max(1) as f64 / 3.0));
    let streams = args.streams.unwrap_or(args.common.conns).max(1);
    let ctx = Ctx::open(&args.common, "lease grant", Some(args.leases)).await?;
    let (ids, granted) = grant(&ctx, args.leases, args.ttl, args.common.clients).await;
    if ids.is_empty() {
        anyhow::bail!(
            "no lease could be granted: {}",
            granted.first_error.unwrap_or_default()
        );
    }
    ctx.progress.phase("keepalive", None);
    let kept = keep_alive(
        &ctx.channels,
        &ids,
        streams,
        interval,
        duration,
        &ctx.progress,
    )
    .await;
    let mut parts = vec![part("grant", &granted)];
    let mut errors = granted.errors + kept.errors;
    let mut first_error = kept.first_error.clone().or(granted.first_error.clone());
    if args.revoke {
        ctx.progress.phase("lease revoke", Some(ids.len() as u64));
        let revoked = revoke(&ctx, ids, args.common.clients).await;
        errors += revoked.errors;
        first_error = first_error.or(revoked.first_error.clone());
        parts.push(part("revoke", &revoked));
    }
    let mut report = Report::new(
        "lease-keepalive",
        kept.ops,
        errors,
        kept.elapsed,
        kept.latency.summary(),
    );
    report.parts = parts;
    report.first_error = first_error;
    report.extra.insert(
        "keepalives_per_sec_target".into(),
        json!(args.leases as f64 / interval.as_secs_f64()),
    );
    Ok(ctx.report(
        report,
        params([
            ("leases", json!(args.leases)),
            ("ttl", json!(args.ttl)),
            ("interval_s", json!(interval.as_secs_f64())),
            ("streams", json!(streams)),
            ("duration_s", json!(duration.as_secs_f64())),
        ]),
    ))
}

/// A [`Part`] from a loop's outcome.
pub fn part(name: &str, out: &Outcome) -> Part {
    Part {
        name: name.to_string(),
        ops: out.ops,
        errors: out.errors,
        latency_ms: Some(out.latency.summary()),
        watch: None,
    }
}
