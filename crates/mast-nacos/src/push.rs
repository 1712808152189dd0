//! UDP push to v1 naming clients, as Nacos's: a client that lists a service with `udpPort`
//! is subscribed for [`SUBSCRIPTION_TTL`] (each list renews it); when a committed batch
//! touches one of the service's instance keys, the service's instance list is sent to it as
//! one datagram, `{"type": "dom", "data": "<ServiceInfo JSON>", "lastRefTime": <ns>}`, which
//! the client acknowledges (`push-ack`). A lost datagram costs nothing but time: the client
//! asks again every `cacheMillis`.
//!
//! The list is read with the subscriber's own caller (token), so a push shows exactly what
//! its list would.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mast_model::{SERVICES_PREFIX, ServiceName, parse_instance_key};
use mast_server::Node;
use mast_server::authz::Caller;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

use crate::naming_v1;

/// How long a subscription lasts without another list from the client.
pub const SUBSCRIPTION_TTL: Duration = Duration::from_secs(30);

/// Most subscriptions kept; past it the oldest are dropped (the clients still poll).
const MAX_SUBSCRIPTIONS: usize = 65_536;

/// The address to push to: the `clientIP` a client gives, unless the request came from this
/// host (then its loopback address, which is certainly reachable), or the request's address.
pub fn push_ip(peer: IpAddr, client_ip: Option<&str>) -> IpAddr {
    if peer.is_loopback() {
        return peer;
    }
    client_ip
        .and_then(|c| c.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer)
}

struct Subscription {
    clusters: String,
    caller: Caller,
    until: Instant,
}

type Subscribers = HashMap<ServiceName, HashMap<SocketAddr, Subscription>>;

/// Subscribed clients by service, and the task that pushes to them.
pub struct PushHub {
    subscribers: Mutex<Subscribers>,
    changed: mpsc::UnboundedSender<ServiceName>,
}

impl PushHub {
    /// A hub pushing from a UDP socket on an ephemeral port, fed by `node`'s commits until the
    /// node shuts down. When no UDP socket can be opened, push is off (logged) and clients
    /// still poll.
    pub fn start(node: Arc<Node>) -> Arc<PushHub> {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(PushHub {
            subscribers: Mutex::default(),
            changed: tx,
        });
        let commits = node.subscribe_commits();
        tokio::spawn(watch_commits(node.clone(), Arc::downgrade(&hub), commits));
        tokio::spawn(push_loop(node, Arc::downgrade(&hub), rx));
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes `addr` to `svc` (or renews its subscription).
    pub fn subscribe(&self, addr: SocketAddr, svc: ServiceName, clusters: String, caller: Caller) {
        let mut subs = self.lock();
        let total: usize = subs.values().map(HashMap::len).sum();
        if total >= MAX_SUBSCRIPTIONS {
            let now = Instant::now();
            for s in subs.values_mut() {
                s.retain(|_, sub| sub.until > now);
            }
            subs.retain(|_, s| !s.is_empty());
            if subs.values().map(HashMap::len).sum::<usize>() >= MAX_SUBSCRIPTIONS {
                return;
            }
        }
        subs.entry(svc).or_default().insert(
            addr,
            Subscription {
                clusters,
                caller,
                until: Instant::now() + SUBSCRIPTION_TTL,
            },
        );
    }

    /// How many clients are subscribed (for tests and metrics).
    pub fn subscriptions(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    fn is_watched(&self, svc: &ServiceName) -> bool {
        self.lock().contains_key(svc)
    }
}

/// Turns committed batches into "this service changed" for the services someone watches.
async fn watch_commits(
    node: Arc<Node>,
    hub: std::sync::Weak<PushHub>,
    mut rx: broadcast::Receiver<Arc<mast_server::watch::Batch>>,
) {
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = node.shutting_down() => return,
        };
        let Some(hub) = hub.upgrade() else { return };
        match next {
            Ok(batch) if !batch.gap => {
                let mut seen: Vec<ServiceName> = Vec::new();
                for kv in batch.events.iter().filter_map(|e| e.kv.as_ref()) {
                    if !kv.key.starts_with(SERVICES_PREFIX.as_bytes()) {
                        continue;
                    }
                    let Some((segment, _)) = parse_instance_key(&kv.key) else {
                        continue;
                    };
                    let svc = ServiceName::parse(segment);
                    if !seen.contains(&svc) && hub.is_watched(&svc) {
                        seen.push(svc);
                    }
                }
                for svc in seen {
                    let _ = hub.changed.send(svc);
                }
            }
            // Changes were missed: push every watched service.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                let all: Vec<ServiceName> = hub.lock().keys().cloned().collect();
                for svc in all {
                    let _ = hub.changed.send(svc);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Sends each changed service's list to its live subscribers.
async fn push_loop(
    node: Arc<Node>,
    hub: std::sync::Weak<PushHub>,
    mut rx: mpsc::UnboundedReceiver<ServiceName>,
) {
    let socket = match UdpSocket::bind((IpAddr::from([0u8, 0, 0, 0]), 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no UDP socket for Nacos push; clients will poll");
            return;
        }
    };
    loop {
        let svc = tokio::select! {
            svc = rx.recv() => match svc { Some(s) => s, None => return },
            _ = node.shutting_down() => return,
        };
        let Some(hub) = hub.upgrade() else { return };
        let targets: Vec<(SocketAddr, String, Caller)> = {
            let mut subs = hub.lock();
            let now = Instant::now();
            let Some(of_svc) = subs.get_mut(&svc) else {
                continue;
            };
            of_svc.retain(|_, s| s.until > now);
            let t = of_svc
                .iter()
                .map(|(a, s)| (*a, s.clusters.clone(), s.caller.clone()))
                .collect();
            if of_svc.is_empty() {
                subs.remove(&svc);
            }
            t
        };
        drop(hub);
        for (addr, clusters, caller) in targets {
            let info = match naming_v1::list_service(&node, &caller, &svc, &clusters, false).await {
                Ok(info) => info,
                Err(e) => {
                    tracing::debug!(%addr, error = %e.message, "push skipped: the list failed");
                    continue;
                }
            };
            let Ok(data) = serde_json::to_string(&info) else {
                continue;
            };
            let packet = serde_json::json!({
                "type": "dom",
                "data": data,
                "lastRefTime": nanos_now(),
            });
            if let Err(e) = socket.send_to(packet.to_string().as_bytes(), addr).await {
                tracing::debug!(%addr, error = %e, "push failed");
            }
        }
    }
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_go_to_loopback_for_local_clients_else_to_client_ip() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(push_ip(lo, Some("192.168.1.5")), lo);
        assert_eq!(
            push_ip(far, Some("192.168.1.5")),
            "192.168.1.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(push_ip(far, Some("junk")), far);
        assert_eq!(push_ip(far, None), far);
    }
}
