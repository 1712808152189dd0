//! Service registration, discovery, watching, `tower::discover`, and weighted picking.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use mast_model::{
    Instance, check_name, instance_key, parse_instance_key, prefix_end, service_prefix,
};
use mast_proto::etcdserverpb::{
    LeaseKeepAliveRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
    watch_request::RequestUnion,
};
use mast_proto::mvccpb::event::EventType;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tower::discover::Change;

use crate::client::{Client, Result};

/// One live instance of a service, as discovered.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInstance {
    /// The instance id (last key segment).
    pub id: String,
    /// What the instance published.
    pub instance: Instance,
    /// The lease keeping it registered (0 for none).
    pub lease: i64,
}

impl ServiceInstance {
    /// Whether the instance may take traffic as far as its health goes: one on a lease is
    /// (its key lives while its lease does); a persistent one unless its JSON says
    /// `"healthy": false` (as the Nacos API and Mast's health probes mark it).
    pub fn healthy(&self) -> bool {
        self.lease != 0
            || self
                .instance
                .extra
                .get("healthy")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true)
    }
}

/// What discovery hands out of a service ([`Client::discover_available`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Available {
    /// The instances to send traffic to, by id.
    pub instances: Vec<ServiceInstance>,
    /// The healthy share of enabled instances was at or below the service's protection
    /// threshold, so every enabled instance is in `instances` (Nacos's rule).
    pub protection_threshold_reached: bool,
}

/// The instances of `set` to send traffic to: enabled, weighted above 0, and healthy — or,
/// when the healthy share is at or below `threshold`, every enabled one.
fn available(set: Vec<ServiceInstance>, threshold: f64) -> Available {
    let enabled: Vec<ServiceInstance> = set
        .into_iter()
        .filter(|s| s.instance.enabled && s.instance.weight > 0.0)
        .collect();
    let healthy = enabled.iter().filter(|s| s.healthy()).count();
    let reached = mast_model::reaches_protection_threshold(healthy, enabled.len(), threshold);
    Available {
        instances: if reached {
            enabled
        } else {
            enabled
                .into_iter()
                .filter(ServiceInstance::healthy)
                .collect()
        },
        protection_threshold_reached: reached,
    }
}

/// The state of a [`Registration`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// Registered under this lease.
    Registered {
        /// The current lease ID.
        lease: i64,
    },
    /// The lease was lost and the SDK is registering again.
    Reregistering,
    /// Deregistered (shut down).
    Stopped,
}

/// A registered instance. Keeps its lease alive in the background, registers again when the
/// lease is lost (a server restart, a revoke, a long network cut), and deregisters when shut
/// down or dropped.
pub struct Registration {
    key: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    state: watch::Receiver<RegistrationState>,
}

impl Registration {
    /// The instance's key, `/services/<service>/<id>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current state.
    pub fn state(&self) -> RegistrationState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn subscribe(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Deregisters (revokes the lease, deleting the key) and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // The background task revokes the lease when it sees the stop.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Client {
    /// Registers `instance` as `/services/<service>/<id>` under a lease of `ttl` (whole
    /// seconds, at least 2 as etcd's minimum) and keeps it alive every `ttl / 3`.
    ///
    /// # Errors
    /// A bad name, or the server's error for the first registration.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        mut instance: Instance,
        ttl: Duration,
    ) -> Result<Registration> {
        check_name("service", service)?;
        check_name("instance id", id)?;
        if instance.registered_at.is_none() {
            instance.registered_at = Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            );
        }
        let ttl_secs = ttl.as_secs().max(2) as i64;
        let key = instance_key(service, id);
        let value = Bytes::from(instance.to_json());
        let lease = self.put_with_new_lease(&key, &value, ttl_secs).await?;
        let (state_tx, state) = watch::channel(RegistrationState::Registered { lease });
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(keep_registered(
            self.clone(),
            key.clone(),
            value,
            ttl_secs,
            lease,
            state_tx,
            stop_rx,
        ));
        Ok(Registration {
            key,
            stop: Some(stop),
            task: Some(task),
            state,
        })
    }

    async fn put_with_new_lease(&self, key: &str, value: &Bytes, ttl: i64) -> Result<i64> {
        let lease = self.grant(ttl).await?;
        self.put(PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: value.clone(),
            lease,
            ..Default::default()
        })
        .await?;
        Ok(lease)
    }

    /// The live instances of `service`, by id. Values that are not instance JSON are skipped.
    ///
    /// # Errors
    /// A bad name, or the server's error.
    pub async fn discover(&self, service: &str) -> Result<Vec<ServiceInstance>> {
        Ok(self.list_service(service).await?.0.into_values().collect())
    }

    /// What discovery hands out of `service` now: enabled, healthy instances with a weight
    /// above 0, or every enabled one past the service's protection threshold
    /// (`protectThreshold` at `/service-meta/<service>`), as `/mast/v1`, Nacos and DNS answer.
    ///
    /// # Errors
    /// A bad name, or the server's error.
    pub async fn discover_available(&self, service: &str) -> Result<Available> {
        let set = self.discover(service).await?;
        let threshold = self.protect_threshold(service).await?;
        Ok(available(set, threshold))
    }

    /// The service's protection threshold (0 when it has no settings or they do not parse).
    async fn protect_threshold(&self, service: &str) -> Result<f64> {
        let key = format!("{}{service}", mast_model::SERVICE_META_PREFIX);
        let resp = self
            .range(RangeRequest {
                key: Bytes::from(key),
                ..Default::default()
            })
            .await?;
        Ok(resp
            .kvs
            .first()
            .and_then(|kv| serde_json::from_slice::<mast_model::ServiceMeta>(&kv.value).ok())
            .map_or(0.0, |m| m.protect_threshold))
    }

    async fn list_service(
        &self,
        service: &str,
    ) -> Result<(BTreeMap<String, ServiceInstance>, i64)> {
        check_name("service", service)?;
        let prefix = service_prefix(service);
        let resp = self
            .range(RangeRequest {
                key: Bytes::from(prefix.clone()),
                range_end: Bytes::from(prefix_end(prefix.as_bytes())),
                ..Default::default()
            })
            .await?;
        let mut set = BTreeMap::new();
        for kv in resp.kvs {
            if let Some(si) = to_service_instance(&kv.key, &kv.value, kv.lease) {
                set.insert(si.id.clone(), si);
            }
        }
        Ok((set, resp.header.map_or(0, |h| h.revision)))
    }

    /// A stream of `service`'s instance set: the current set first, then the whole set again
    /// after every change. Built from one watch that resumes from its last revision after a
    /// reconnect (and re-lists if that revision was compacted), so no change is missed.
    pub fn watch_service(
        &self,
        service: &str,
    ) -> impl Stream<Item = Result<Vec<ServiceInstance>>> + Send + 'static {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(follow_service(self.clone(), service.to_string(), tx));
        ReceiverStream::new(rx)
    }

    /// `service`'s instances as a `tower::discover` stream of changes: what
    /// [`Client::discover_available`] hands out is inserted (again when it changes) and
    /// removed when it leaves it (the protection threshold is read again at each change).
    pub fn discover_changes(
        &self,
        service: &str,
    ) -> impl Stream<Item = Result<Change<String, ServiceInstance>>> + Send + 'static {
        let mut known: BTreeMap<String, ServiceInstance> = BTreeMap::new();
        let client = self.clone();
        let name = service.to_string();
        self.watch_service(service)
            .then(move |set| {
                let (client, name) = (client.clone(), name.clone());
                async move {
                    let set = set?;
                    let threshold = client.protect_threshold(&name).await?;
                    Ok(available(set, threshold))
                }
            })
            .map(
                move |set: Result<Available>| -> Vec<Result<Change<String, ServiceInstance>>> {
                    match set {
                        Err(e) => vec![Err(e)],
                        Ok(set) => {
                            let now: BTreeMap<String, ServiceInstance> = set
                                .instances
                                .into_iter()
                                .map(|s| (s.id.clone(), s))
                                .collect();
                            let mut changes = Vec::new();
                            for id in known.keys() {
                                if !now.contains_key(id) {
                                    changes.push(Ok(Change::Remove(id.clone())));
                                }
                            }
                            for (id, s) in &now {
                                if known.get(id) != Some(s) {
                                    changes.push(Ok(Change::Insert(id.clone(), s.clone())));
                                }
                            }
                            known = now;
                            changes
                        }
                    }
                },
            )
            .flat_map(futures::stream::iter)
    }
}

fn to_service_instance(key: &[u8], value: &[u8], lease: i64) -> Option<ServiceInstance> {
    let (_, id) = parse_instance_key(key)?;
    let instance = Instance::from_json(value).ok()?;
    Some(ServiceInstance {
        id: id.to_string(),
        instance,
        lease,
    })
}

async fn keep_registered(
    client: Client,
    key: String,
    value: Bytes,
    ttl: i64,
    mut lease: i64,
    state: watch::Sender<RegistrationState>,
    mut stop: oneshot::Receiver<()>,
) {
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(500));
    loop {
        // Keep the lease alive on one stream until it is lost or the stream breaks.
        let lost = tokio::select! {
            _ = &mut stop => break,
            lost = keepalive(&client, lease, period) => lost,
        };
        if !lost {
            // The stream broke (server down?): try again shortly on a new stream, same lease.
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
        }
        let _ = state.send(RegistrationState::Reregistering);
        tracing::info!(key = %key, "lease lost; registering again");
        let mut backoff = Duration::from_millis(200);
        loop {
            match client.put_with_new_lease(&key, &value, ttl).await {
                Ok(l) => {
                    lease = l;
                    let _ = state.send(RegistrationState::Registered { lease });
                    break;
                }
                Err(e) => {
                    tracing::debug!(key = %key, error = %e, "registering again failed");
                    tokio::select! {
                        _ = &mut stop => {
                            let _ = state.send(RegistrationState::Stopped);
                            return;
                        }
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    // Deregister: revoking the lease deletes the key in one revision.
    let _ = tokio::time::timeout(Duration::from_secs(3), client.revoke(lease)).await;
    let _ = state.send(RegistrationState::Stopped);
}

/// Sends keepalives every `period`; returns true when the server says the lease is gone
/// (TTL 0), false when the stream fails.
async fn keepalive(client: &Client, lease: i64, period: Duration) -> bool {
    let (tx, rx) = mpsc::channel(2);
    let mut lc = client.lease.clone();
    let Ok(resp) = lc.lease_keep_alive(ReceiverStream::new(rx)).await else {
        return false;
    };
    let mut responses = resp.into_inner();
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if tx.send(LeaseKeepAliveRequest { id: lease }).await.is_err() {
            return false;
        }
        match tokio::time::timeout(period * 2, responses.next()).await {
            Ok(Some(Ok(r))) if r.ttl > 0 => {}
            Ok(Some(Ok(_))) => return true,
            _ => return false,
        }
    }
}

async fn follow_service(
    client: Client,
    service: String,
    tx: mpsc::Sender<Result<Vec<ServiceInstance>>>,
) {
    let mut set: BTreeMap<String, ServiceInstance>;
    let mut next_rev;
    match client.list_service(&service).await {
        Ok((s, rev)) => {
            set = s;
            next_rev = rev + 1;
        }
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    }
    if tx.send(Ok(set.values().cloned().collect())).await.is_err() {
        return;
    }
    let prefix = service_prefix(&service);
    let mut backoff = Duration::from_millis(200);
    loop {
        let (req_tx, req_rx) = mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: Bytes::from(prefix.clone()),
                range_end: Bytes::from(prefix_end(prefix.as_bytes())),
                start_revision: next_rev,
                ..Default::default()
            })),
        };
        let _ = req_tx.send(create).await;
        let mut wc = client.watch.clone();
        let stream = wc.watch(ReceiverStream::new(req_rx)).await;
        if let Ok(resp) = stream {
            let mut responses = resp.into_inner();
            backoff = Duration::from_millis(200);
            while let Some(Ok(r)) = responses.next().await {
                if r.canceled {
                    if r.compact_revision > 0 {
                        // Our revision was compacted: list again and go on from there.
                        if let Ok((s, rev)) = client.list_service(&service).await {
                            set = s;
                            next_rev = rev + 1;
                            if tx.send(Ok(set.values().cloned().collect())).await.is_err() {
                                return;
                            }
                        }
                    }
                    break;
                }
                if r.events.is_empty() {
                    continue;
                }
                for ev in &r.events {
                    let Some(kv) = &ev.kv else { continue };
                    next_rev = next_rev.max(kv.mod_revision + 1);
                    let Some((_, id)) = parse_instance_key(&kv.key) else {
                        continue;
                    };
                    if ev.r#type == EventType::Delete as i32 {
                        set.remove(id);
                    } else if let Some(si) = to_service_instance(&kv.key, &kv.value, kv.lease) {
                        set.insert(si.id.clone(), si);
                    }
                }
                if tx.send(Ok(set.values().cloned().collect())).await.is_err() {
                    return;
                }
            }
        }
        drop(req_tx);
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Smooth weighted round-robin over a set of instances (as nginx's): each instance is picked
/// in proportion to its weight, spread evenly rather than in bursts. Disabled instances and
/// instances with weight 0 are never picked.
#[derive(Clone, Debug, Default)]
pub struct WeightedPicker {
    entries: Vec<(ServiceInstance, f64)>,
}

impl WeightedPicker {
    /// A picker over `instances`.
    pub fn new(instances: impl IntoIterator<Item = ServiceInstance>) -> Self {
        let mut p = WeightedPicker::default();
        p.update(instances);
        p
    }

    /// Replaces the set, keeping the rotation state of instances that stay.
    pub fn update(&mut self, instances: impl IntoIterator<Item = ServiceInstance>) {
        let old: BTreeMap<String, f64> = self
            .entries
            .iter()
            .map(|(s, c)| (s.id.clone(), *c))
            .collect();
        self.entries = instances
            .into_iter()
            .filter(|s| s.instance.enabled && s.instance.weight > 0.0)
            .map(|s| {
                let current = old.get(&s.id).copied().unwrap_or(0.0);
                (s, current)
            })
            .collect();
    }

    /// The next instance, or `None` when none can take traffic.
    pub fn pick(&mut self) -> Option<&ServiceInstance> {
        let total: f64 = self.entries.iter().map(|(s, _)| s.instance.weight).sum();
        if self.entries.is_empty() {
            return None;
        }
        let mut best = 0;
        for (s, current) in self.entries.iter_mut() {
            *current += s.instance.weight;
        }
        for i in 1..self.entries.len() {
            if self.entries[i].1 > self.entries[best].1 {
                best = i;
            }
        }
        self.entries[best].1 -= total;
        Some(&self.entries[best].0)
    }

    /// Number of instances that can take traffic.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no instance can take traffic.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn si(id: &str, weight: f64, enabled: bool) -> ServiceInstance {
        let mut instance = Instance::new("127.0.0.1", 80);
        instance.weight = weight;
        instance.enabled = enabled;
        ServiceInstance {
            id: id.into(),
            instance,
            lease: 0,
        }
    }

    #[test]
    fn weighted_picking_follows_weights_smoothly() {
        let mut p = WeightedPicker::new([
            si("a", 5.0, true),
            si("b", 1.0, true),
            si("c", 1.0, true),
            si("off", 9.0, false),
            si("zero", 0.0, true),
        ]);
        let picks: Vec<String> = (0..7).map(|_| p.pick().unwrap().id.clone()).collect();
        assert_eq!(picks.iter().filter(|x| *x == "a").count(), 5);
        assert_eq!(picks.iter().filter(|x| *x == "b").count(), 1);
        assert!(!picks.iter().any(|x| x == "off" || x == "zero"));
        // Smooth: never three a's at the start as a naive rotation would.
        assert_eq!(picks[..2], ["a".to_string(), "a".to_string()]);
        assert_ne!(picks[2], "a");
        assert!(WeightedPicker::new([si("x", 0.0, true)]).pick().is_none());
    }
}
