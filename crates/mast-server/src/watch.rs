//! Watch: the hub that fans committed events out, and the per-stream session that serves
//! etcd's `Watch` bidi stream (many watchers on one stream).
//!
//! Fan-out does not copy events per watcher: the writer publishes each batch once as an
//! `Arc` on a broadcast channel, and each stream filters it for its own watchers. A stream that
//! falls behind (its broadcast receiver lags, or the client reads slowly) never blocks the
//! writer or other streams: it drops to "unsynced" and catches up by reading history from the
//! store, as etcd's unsynced watcher group does.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use mast_mvcc::index::RangeEnd;
use mast_mvcc::{MvccError, Store};
use mast_proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request::FilterType,
    watch_request,
};
use mast_proto::mvccpb::{Event, event::EventType};
use prost::Message;
use tokio::sync::{broadcast, mpsc};

use crate::authz::Caller;
use crate::error::EtcdError;
use crate::node::Node;

/// Batches the broadcast channel keeps for slow streams before they must read history.
const HUB_CAPACITY: usize = 4096;
/// Most revisions read from history in one catch-up step.
const CATCH_UP_REVS: usize = 1000;
/// Most events in one response while replaying history (etcd: `maxWatchEventsPerResponse`-like).
const MAX_EVENTS_PER_RESPONSE: usize = 1000;

/// Packs events (in revision order) into responses of about `max` events without ever
/// splitting one revision across two responses, so a client that resumes from the last
/// header revision it saw never skips part of a revision.
fn whole_revisions(events: Vec<Event>, max: usize) -> Vec<Vec<Event>> {
    let rev = |e: &Event| e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let mut out: Vec<Vec<Event>> = Vec::new();
    let mut cur: Vec<Event> = Vec::new();
    for ev in events {
        if cur.len() >= max && cur.last().is_some_and(|last| rev(last) != rev(&ev)) {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(ev);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The events of one committed batch.
#[derive(Debug)]
pub struct Batch {
    /// Store revision after the batch.
    pub revision: i64,
    /// Events in revision order.
    pub events: Vec<Event>,
    /// The store was replaced (a snapshot from the leader): events up to `revision` did not
    /// come through the hub, and every watcher reads them from history instead.
    pub gap: bool,
}

/// Publishes committed batches to every watch stream.
pub struct WatchHub {
    tx: broadcast::Sender<Arc<Batch>>,
}

impl Default for WatchHub {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchHub {
    /// A hub with no subscribers.
    pub fn new() -> Self {
        WatchHub {
            tx: broadcast::channel(HUB_CAPACITY).0,
        }
    }

    /// Publishes a committed batch. Batches without events are not sent.
    pub fn publish(&self, revision: i64, events: Vec<Event>) {
        if !events.is_empty() {
            let _ = self.tx.send(Arc::new(Batch {
                revision,
                events,
                gap: false,
            }));
        }
    }

    /// Tells every stream that the store jumped to `revision` without events (a snapshot was
    /// installed): its watchers catch up from history.
    pub fn resync(&self, revision: i64) {
        let _ = self.tx.send(Arc::new(Batch {
            revision,
            events: Vec::new(),
            gap: true,
        }));
    }

    /// A receiver of every batch published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.tx.subscribe()
    }
}

struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// The next revision this watcher must see.
    next_rev: i64,
    /// False while the watcher reads history instead of the broadcast.
    synced: bool,
    /// Whether anything was sent since the last progress tick.
    active: bool,
    /// Counts the watcher in `etcd_debugging_mvcc_watcher_total` while it lives.
    _gauge: WatcherGauge,
    /// Lists the watcher in the node's watch registry while it lives.
    _listed: crate::watchers::WatchingGuard,
}

/// One watcher in etcd's `etcd_debugging_mvcc_watcher_total` gauge, from creation to drop.
struct WatcherGauge;

impl WatcherGauge {
    fn new() -> Self {
        metrics::gauge!("etcd_debugging_mvcc_watcher_total").increment(1.0);
        WatcherGauge
    }
}

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        metrics::gauge!("etcd_debugging_mvcc_watcher_total").decrement(1.0);
    }
}

impl Watcher {
    fn matches(&self, ev: &Event) -> bool {
        let Some(kv) = &ev.kv else { return false };
        if !RangeEnd::from_request(&self.range_end).contains_from(&self.key, &kv.key) {
            return false;
        }
        let is_delete = ev.r#type == EventType::Delete as i32;
        !(is_delete && self.no_delete || !is_delete && self.no_put)
    }
}

type Out = mpsc::Sender<Result<WatchResponse, EtcdError>>;

/// Serves one watch stream: reads requests from `requests`, writes responses to `out`, until
/// the client goes away (its request stream fails, or `out`'s receiver is dropped — a client
/// that only closes its sending side keeps its watchers, as etcd) or the server shuts down.
pub async fn serve_stream<S, E>(node: Arc<Node>, caller: Caller, requests: S, out: Out)
where
    S: Stream<Item = Result<WatchRequest, E>> + Unpin + Send,
{
    let mut session = Session {
        node: node.clone(),
        rx: node.hub.subscribe(),
        watchers: BTreeMap::new(),
        next_id: 0,
        out,
        caller,
    };
    if let Err(e) = session.run(requests).await {
        tracing::debug!(error = %e, "watch stream ended");
    }
}

struct Session {
    node: Arc<Node>,
    rx: broadcast::Receiver<Arc<Batch>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    out: Out,
    /// The stream's token, checked at every create as etcd's `isWatchPermitted`.
    caller: Caller,
}

/// Why a session stopped.
#[derive(Debug)]
enum Stop {
    ClientGone,
    Shutdown,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl Session {
    async fn run<S, E>(&mut self, mut requests: S) -> Result<(), Stop>
    where
        S: Stream<Item = Result<WatchRequest, E>> + Unpin + Send,
    {
        let mut shutdown = self.node.shutdown.clone();
        let mut progress = tokio::time::interval(self.node.config.watch_progress_notify_interval);
        progress.tick().await;
        // As etcd: a client that closes its sending side (a gateway `curl -d '{create_request…}'`,
        // a gRPC CloseSend) keeps receiving until it goes away or the server stops.
        let mut requests_open = true;
        loop {
            if self.watchers.values().any(|w| !w.synced) {
                self.catch_up().await?;
                // Let requests and new batches in between catch-up steps.
                tokio::task::yield_now().await;
            }
            let catching_up = self.watchers.values().any(|w| !w.synced);
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Err(Stop::Shutdown),
                req = requests.next(), if requests_open => match req {
                    Some(Ok(req)) => self.handle_request(req).await?,
                    Some(Err(_)) => return Err(Stop::ClientGone),
                    None => requests_open = false,
                },
                () = self.out.closed(), if !requests_open => return Err(Stop::ClientGone),
                batch = self.rx.recv() => match batch {
                    Ok(batch) => self.deliver(&batch).await?,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "watch stream lagged; catching up from history");
                        for w in self.watchers.values_mut() {
                            w.synced = false;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Shutdown),
                },
                _ = progress.tick() => self.progress_notify().await?,
                _ = std::future::ready(()), if catching_up => {}
            }
        }
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Stop> {
        self.out.send(Ok(resp)).await.map_err(|_| Stop::ClientGone)
    }

    async fn handle_request(&mut self, req: WatchRequest) -> Result<(), Stop> {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    let resp = WatchResponse {
                        header: self.node.header(),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                // As etcd 3.4: answered only when every watcher is synced, with watch_id -1.
                if self.watchers.values().all(|w| w.synced) {
                    let resp = WatchResponse {
                        header: self.node.header(),
                        watch_id: -1,
                        ..Default::default()
                    };
                    self.send(resp).await?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Stop> {
        let current = self.node.store.revision();
        let permitted = self
            .node
            .authenticate_caller(&self.caller)
            .and_then(|who| self.node.check_range(&who, &c.key, &c.range_end, false));
        if let Err(e) = permitted {
            // As etcd: a reply that is both created and canceled, with watch_id -1.
            let resp = WatchResponse {
                header: self.node.header(),
                watch_id: -1,
                created: true,
                canceled: true,
                // etcd puts the whole gRPC error text here.
                cancel_reason: format!(
                    "rpc error: code = {} desc = {}",
                    crate::api::code_name(e.code()),
                    e
                ),
                ..Default::default()
            };
            return self.send(resp).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                let resp = WatchResponse {
                    header: self.node.header(),
                    watch_id: c.watch_id,
                    created: true,
                    canceled: true,
                    cancel_reason: "etcdserver: mvcc: duplicate watch ID provided".into(),
                    ..Default::default()
                };
                return self.send(resp).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if id >= self.next_id {
            self.next_id = id + 1;
        }
        let start = if c.start_revision <= 0 {
            current + 1
        } else {
            c.start_revision
        };
        let mut w = Watcher {
            key: c.key.to_vec(),
            range_end: c.range_end.to_vec(),
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: c.prev_kv,
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            next_rev: start,
            synced: start > current,
            active: false,
            _gauge: WatcherGauge::new(),
            _listed: self
                .node
                .watch_registry()
                .register(crate::watchers::Watching {
                    kind: match self.caller.api {
                        "" => "etcd",
                        api => api,
                    },
                    key: c.key.to_vec(),
                    range_end: c.range_end.to_vec(),
                    address: self.caller.addr.map(|a| a.to_string()).unwrap_or_default(),
                    user: self
                        .node
                        .authenticate_caller(&self.caller)
                        .ok()
                        .flatten()
                        .map(|i| i.user)
                        .unwrap_or_default(),
                    since_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                }),
        };
        let created = WatchResponse {
            header: Some(self.node.header_at(current)),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.send(created).await?;
        let compact = self.node.store.compact_revision();
        if c.start_revision > 0 && c.start_revision < compact {
            // As etcd's: the compaction cancel carries no revision in its header.
            let resp = WatchResponse {
                header: Some(self.node.header_at(0)),
                watch_id: id,
                canceled: true,
                compact_revision: compact,
                ..Default::default()
            };
            return self.send(resp).await;
        }
        w.active = true;
        self.watchers.insert(id, w);
        Ok(())
    }

    /// Sends a batch's matching events to every synced watcher, one response per revision.
    async fn deliver(&mut self, batch: &Batch) -> Result<(), Stop> {
        if batch.gap {
            for w in self.watchers.values_mut() {
                w.synced = false;
            }
            return Ok(());
        }
        let mut pending: Vec<(i64, Vec<Event>, bool, bool, i64)> = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if !w.synced {
                continue;
            }
            let mut evs: Vec<Event> = Vec::new();
            let mut cur_rev = 0;
            for ev in &batch.events {
                let rev = ev.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                if rev < w.next_rev || !w.matches(ev) {
                    continue;
                }
                if rev != cur_rev && !evs.is_empty() {
                    pending.push((
                        *id,
                        std::mem::take(&mut evs),
                        w.prev_kv,
                        w.fragment,
                        cur_rev,
                    ));
                }
                cur_rev = rev;
                evs.push(ev.clone());
            }
            if !evs.is_empty() {
                pending.push((*id, evs, w.prev_kv, w.fragment, cur_rev));
                w.active = true;
            }
            w.next_rev = w.next_rev.max(batch.revision + 1);
        }
        for (id, evs, prev_kv, fragment, rev) in pending {
            self.send_events(id, evs, prev_kv, fragment, rev).await?;
        }
        Ok(())
    }

    async fn send_events(
        &self,
        id: i64,
        mut events: Vec<Event>,
        prev_kv: bool,
        fragment: bool,
        rev: i64,
    ) -> Result<(), Stop> {
        if prev_kv {
            for ev in &mut events {
                if let Some(kv) = &ev.kv {
                    ev.prev_kv = self
                        .node
                        .store
                        .get_at(&kv.key, kv.mod_revision - 1)
                        .ok()
                        .flatten();
                }
            }
        }
        let header = Some(self.node.header_at(rev));
        let limit = self.node.config.max_request_bytes;
        if fragment {
            let total: usize = events.iter().map(|e| e.encoded_len()).sum();
            if total > limit {
                // Split into responses under the limit; all but the last say `fragment`.
                let mut chunks: Vec<Vec<Event>> = vec![Vec::new()];
                let mut size = 0;
                for ev in events {
                    let n = ev.encoded_len();
                    if size + n > limit && !chunks.last().expect("non-empty").is_empty() {
                        chunks.push(Vec::new());
                        size = 0;
                    }
                    size += n;
                    chunks.last_mut().expect("non-empty").push(ev);
                }
                let last = chunks.len() - 1;
                for (i, chunk) in chunks.into_iter().enumerate() {
                    self.send(WatchResponse {
                        header,
                        watch_id: id,
                        fragment: i != last,
                        events: chunk,
                        ..Default::default()
                    })
                    .await?;
                }
                return Ok(());
            }
        }
        self.send(WatchResponse {
            header,
            watch_id: id,
            events,
            ..Default::default()
        })
        .await
    }

    /// One catch-up step for every unsynced watcher: read a chunk of history and send it.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| !w.synced)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let store: Arc<Store> = self.node.store.clone();
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let current = store.revision();
            if w.next_rev > current {
                self.watchers.get_mut(&id).expect("present").synced = true;
                continue;
            }
            let (from, key, range_end) = (w.next_rev, w.key.clone(), w.range_end.clone());
            let read = tokio::task::spawn_blocking(move || {
                let end = RangeEnd::from_request(&range_end);
                store.events_between(from, current, CATCH_UP_REVS, |k| end.contains_from(&key, k))
            })
            .await
            .map_err(|_| Stop::Shutdown)?;
            match read {
                Ok((events, last)) => {
                    let w = self.watchers.get_mut(&id).expect("present");
                    let evs: Vec<Event> = events.into_iter().filter(|e| w.matches(e)).collect();
                    let (prev_kv, fragment) = (w.prev_kv, w.fragment);
                    let upto = if last >= from { last } else { current };
                    w.next_rev = upto + 1;
                    if w.next_rev > current {
                        w.synced = true;
                    }
                    if !evs.is_empty() {
                        w.active = true;
                        for chunk in whole_revisions(evs, MAX_EVENTS_PER_RESPONSE) {
                            self.send_events(id, chunk, prev_kv, fragment, upto).await?;
                        }
                    }
                }
                Err(MvccError::Compacted) => {
                    self.watchers.remove(&id);
                    let resp = WatchResponse {
                        header: Some(self.node.header_at(0)),
                        watch_id: id,
                        canceled: true,
                        compact_revision: self.node.store.compact_revision(),
                        ..Default::default()
                    };
                    self.send(resp).await?;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reading watch history failed");
                    self.watchers.remove(&id);
                    let resp = WatchResponse {
                        header: self.node.header(),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: format!("etcdserver: {e}"),
                        ..Default::default()
                    };
                    self.send(resp).await?;
                }
            }
        }
        Ok(())
    }

    async fn progress_notify(&mut self) -> Result<(), Stop> {
        let header = self.node.header();
        let mut due = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.progress_notify && w.synced && !w.active {
                due.push(*id);
            }
            w.active = false;
        }
        for id in due {
            self.send(WatchResponse {
                header,
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mast_proto::mvccpb::KeyValue;

    fn ev(rev: i64) -> Event {
        Event {
            kv: Some(KeyValue {
                mod_revision: rev,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_never_split_a_revision() {
        let evs = vec![ev(1), ev(1), ev(2), ev(2), ev(2), ev(3)];
        let chunks = whole_revisions(evs, 2);
        let revs: Vec<Vec<i64>> = chunks
            .iter()
            .map(|c| {
                c.iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision)
                    .collect()
            })
            .collect();
        assert_eq!(revs, vec![vec![1, 1], vec![2, 2, 2], vec![3]]);
    }
}
