//! The connections of Nacos 2.x clients to this member: one per client address, registered by
//! the bi-stream's `ConnectionSetupRequest` and gone when the stream ends.
//!
//! A connection's ephemeral instances are attached to one lease of the connection, granted on
//! its first registration, renewed while the stream is open and revoked when it ends — so they
//! live exactly while the client is connected (or, if this member dies, until the lease's TTL
//! runs out, after which the client registers them again on another member).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mast_model::{ConfigId, ServiceName};
use mast_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use mast_proto::nacospb::Payload;
use mast_server::Node;
use mast_server::api::lease;
use mast_server::authz::Caller;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tonic::Streaming;

use super::{Incoming, payload, payload_of_json};
use crate::AppState;

/// TTL of a connection's lease, in seconds: how long its ephemeral instances outlive a member
/// that died without closing the stream.
pub const CONN_LEASE_TTL: i64 = 20;

/// The Prometheus gauge of open Nacos 2.x connections on this member (at `/metrics`).
pub const CONNECTIONS_GAUGE: &str = "mast_nacos_grpc_connections";

/// The Prometheus gauge of configs listened to over this member's Nacos 2.x connections (one
/// per connection and config).
pub const LISTENS_GAUGE: &str = "mast_nacos_grpc_config_listens";

/// The Prometheus gauge of services subscribed to over this member's Nacos 2.x connections
/// (one per connection and service).
pub const SUBSCRIPTIONS_GAUGE: &str = "mast_nacos_grpc_service_subscriptions";

/// Pushes a connection may have waiting before more are dropped (a client that does not read).
const PUSH_BUFFER: usize = 1024;

/// Wall-clock milliseconds when this process started, the prefix of connection ids (as
/// Nacos's `<millis>_<ip>_<port>`).
fn start_ms() -> u128 {
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    })
}

/// The id of the connection from `addr`.
pub fn connection_id(addr: SocketAddr) -> String {
    format!("{}_{}_{}", start_ms(), addr.ip(), addr.port())
}

/// What a listened config is called by the client (echoed in pushes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ListenedName {
    /// Data id.
    pub data_id: String,
    /// Group.
    pub group: String,
    /// Tenant as the client sent it.
    pub tenant: String,
}

/// One client connection.
pub struct Conn {
    /// Its id.
    pub id: String,
    /// The client's address.
    pub addr: SocketAddr,
    push: mpsc::Sender<Payload>,
    next_push: AtomicU64,
    /// The caller of the stream (the last token a request carried is used for pushes).
    pub caller: Mutex<Caller>,
    lease: tokio::sync::Mutex<i64>,
    /// Configs listened to, by content key (changed through [`Conn::listen`] /
    /// [`Conn::unlisten`], which keep [`LISTENS_GAUGE`]).
    pub listened: Mutex<HashMap<Vec<u8>, (ConfigId, ListenedName)>>,
    /// Services subscribed to, with the clusters asked for (changed through
    /// [`Conn::subscribe`], which keeps [`SUBSCRIPTIONS_GAUGE`]).
    pub subscribed: Mutex<HashMap<ServiceName, String>>,
    /// This member's watch registry, and the entry of each subscription in it (who watches a
    /// service, as the console shows it).
    registry: Arc<mast_server::watchers::WatchRegistry>,
    listed: Mutex<HashMap<ServiceName, mast_server::watchers::WatchingGuard>>,
}

impl Conn {
    /// Sends a server push of class `kind` with `body` (an object; a `requestId` is added).
    /// Dropped, with a log line, when the client has [`PUSH_BUFFER`] pushes unread.
    pub fn push(&self, kind: &str, mut body: Value) {
        let id = self.next_push.fetch_add(1, Ordering::Relaxed);
        if let Value::Object(m) = &mut body {
            m.insert("requestId".into(), Value::String(id.to_string()));
        }
        self.send_push(kind, payload(kind, &body));
    }

    /// As [`Conn::push`], for a body serialized once for many connections: `object` is a JSON
    /// object's bytes (`{...}`, as `serde_json::to_vec` of a map gives them); this
    /// connection's `requestId` is written in front of its first member. Bytes that are not an
    /// object are sent as they are.
    pub fn push_serialized(&self, kind: &str, object: &[u8]) {
        let id = self.next_push.fetch_add(1, Ordering::Relaxed);
        self.send_push(kind, payload_with_request_id(kind, object, id));
    }

    fn send_push(&self, kind: &str, p: Payload) {
        if self.push.try_send(p).is_err() {
            tracing::warn!(conn = %self.id, kind, "a Nacos push was dropped: the client is not reading");
        }
    }

    /// The caller to read with on the connection's behalf.
    pub fn caller(&self) -> Caller {
        self.caller
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Remembers the token of a request on this connection for its pushes.
    pub fn seen(&self, caller: &Caller) {
        if caller.token.is_some() {
            *self.caller.lock().unwrap_or_else(|p| p.into_inner()) = caller.clone();
        }
    }

    /// The connection's lease (granted on first use).
    ///
    /// # Errors
    /// The grant's etcd error.
    pub async fn lease(&self, node: &Node, caller: &Caller) -> Result<i64, mast_server::EtcdError> {
        let mut lease = self.lease.lock().await;
        if *lease == 0 {
            let resp = lease::grant(
                node,
                caller,
                LeaseGrantRequest {
                    ttl: CONN_LEASE_TTL,
                    id: 0,
                },
            )
            .await?;
            *lease = resp.id;
        }
        Ok(*lease)
    }

    /// Starts listening to the config at content `key`.
    pub fn listen(&self, key: Vec<u8>, id: ConfigId, name: ListenedName) {
        let mut l = self.listened.lock().unwrap_or_else(|p| p.into_inner());
        if l.insert(key, (id, name)).is_none() {
            metrics::gauge!(LISTENS_GAUGE).increment(1.0);
        }
    }

    /// Stops listening to the config at content `key`.
    pub fn unlisten(&self, key: &[u8]) {
        let mut l = self.listened.lock().unwrap_or_else(|p| p.into_inner());
        if l.remove(key).is_some() {
            metrics::gauge!(LISTENS_GAUGE).decrement(1.0);
        }
    }

    /// Subscribes to `svc` for `clusters` (`on`), or unsubscribes.
    pub fn subscribe(&self, svc: ServiceName, clusters: String, on: bool) {
        let mut subs = self.subscribed.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if on {
            subs.insert(svc.clone(), clusters).is_none()
        } else {
            subs.remove(&svc).is_some()
        };
        drop(subs);
        if changed {
            metrics::gauge!(SUBSCRIPTIONS_GAUGE).increment(if on { 1.0 } else { -1.0 });
            let mut listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
            if on {
                let key = format!("{}{}/", mast_model::SERVICES_PREFIX, svc.segment()).into_bytes();
                let mut range_end = key.clone();
                if let Some(last) = range_end.last_mut() {
                    *last += 1;
                }
                let guard = self.registry.register(mast_server::watchers::Watching {
                    kind: "nacos-grpc",
                    key,
                    range_end,
                    address: self.addr.to_string(),
                    user: String::new(),
                    since_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                });
                listed.insert(svc, guard);
            } else {
                listed.remove(&svc);
            }
        }
    }

    /// Forgets every listen and subscription (the connection closed).
    fn forget_interest(&self) {
        let l = std::mem::take(&mut *self.listened.lock().unwrap_or_else(|p| p.into_inner()));
        metrics::gauge!(LISTENS_GAUGE).decrement(l.len() as f64);
        let s = std::mem::take(&mut *self.subscribed.lock().unwrap_or_else(|p| p.into_inner()));
        metrics::gauge!(SUBSCRIPTIONS_GAUGE).decrement(s.len() as f64);
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn lease_now(&self) -> i64 {
        self.lease.try_lock().map(|l| *l).unwrap_or(0)
    }
}

/// Every connection of this member, by client address.
pub struct Connections {
    by_addr: Mutex<HashMap<SocketAddr, Arc<Conn>>>,
    registered: Notify,
}

impl Connections {
    /// An empty registry.
    pub fn new() -> Arc<Connections> {
        Arc::new(Connections {
            by_addr: Mutex::default(),
            registered: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Conn>>> {
        self.by_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection from `addr`, if its stream is set up.
    pub fn get(&self, addr: &SocketAddr) -> Option<Arc<Conn>> {
        self.lock().get(addr).cloned()
    }

    /// The connection from `addr`, waiting up to `within` for its stream's setup (a client
    /// may send its first request right after opening the stream).
    pub async fn wait_for(&self, addr: &SocketAddr, within: Duration) -> Option<Arc<Conn>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.registered.notified();
            if let Some(c) = self.get(addr) {
                return Some(c);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(addr);
            }
        }
    }

    /// Every connection.
    pub fn all(&self) -> Vec<Arc<Conn>> {
        self.lock().values().cloned().collect()
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// A push payload of class `kind` whose body is `object` (a JSON object's bytes) with
/// `"requestId": "<id>"` as its first member.
fn payload_with_request_id(kind: &str, object: &[u8], id: u64) -> Payload {
    let mut body = Vec::with_capacity(object.len() + 32);
    match object.strip_prefix(b"{") {
        Some(rest) => {
            body.extend_from_slice(b"{\"requestId\":\"");
            body.extend_from_slice(id.to_string().as_bytes());
            body.push(b'"');
            // `rest` is `}` for an empty object, else its members and `}`.
            if rest.first().is_some_and(|b| *b != b'}') {
                body.push(b',');
            }
            body.extend_from_slice(rest);
        }
        None => body.extend_from_slice(object),
    }
    payload_of_json(kind, body)
}

/// Serves one bi-stream: registers the connection at its `ConnectionSetupRequest`, takes the
/// client's answers to pushes, renews the connection's lease, and on the stream's end
/// unregisters it and revokes the lease (its ephemeral instances go). Returns what is sent
/// down the stream.
pub fn serve_stream(
    st: AppState,
    conns: Arc<Connections>,
    addr: SocketAddr,
    caller: Caller,
    mut inbound: Streaming<Payload>,
) -> mpsc::Receiver<Payload> {
    let (tx, rx) = mpsc::channel(PUSH_BUFFER);
    tokio::spawn(async move {
        let mut conn: Option<Arc<Conn>> = None;
        let renew_every = Duration::from_secs((CONN_LEASE_TTL / 3).max(1) as u64);
        let mut renew = tokio::time::interval(renew_every);
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(p)) => {
                        // Anything but the setup up the stream answers a push: nothing to do,
                        // so its body is not parsed.
                        let setup = p
                            .metadata
                            .as_ref()
                            .is_some_and(|m| m.r#type == "ConnectionSetupRequest");
                        if !setup || conn.is_some() {
                            continue;
                        }
                        let Ok(req) = Incoming::decode(&p) else { continue };
                        let c = Arc::new(Conn {
                            id: connection_id(addr),
                            addr,
                            push: tx.clone(),
                            next_push: AtomicU64::new(1),
                            caller: Mutex::new(req.caller(&caller)),
                            lease: tokio::sync::Mutex::new(0),
                            listened: Mutex::default(),
                            subscribed: Mutex::default(),
                            registry: st.node.watch_registry().clone(),
                            listed: Mutex::default(),
                        });
                        let n = {
                            let mut map = conns.lock();
                            map.insert(addr, c.clone());
                            map.len()
                        };
                        metrics::gauge!(CONNECTIONS_GAUGE).set(n as f64);
                        conns.registered.notify_waiters();
                        tracing::debug!(conn = %c.id, "Nacos connection set up");
                        conn = Some(c);
                    }
                    Ok(None) | Err(_) => break,
                },
                _ = renew.tick() => {
                    if let Some(c) = &conn {
                        let id = c.lease_now();
                        if id != 0 {
                            let _ = lease::keep_alive_once(&st.node, &LeaseKeepAliveRequest { id }).await;
                        }
                    }
                }
                _ = st.node.shutting_down() => break,
            }
        }
        if let Some(c) = conn {
            let (removed, n) = {
                let mut map = conns.lock();
                let removed = match map.get(&addr) {
                    Some(cur) if Arc::ptr_eq(cur, &c) => map.remove(&addr),
                    _ => None,
                };
                (removed, map.len())
            };
            drop(removed);
            metrics::gauge!(CONNECTIONS_GAUGE).set(n as f64);
            c.forget_interest();
            st.reports.forget(&format!("nacos-{}", c.id));
            let id = c.lease_now();
            if id != 0 {
                let who = c.caller();
                if let Err(e) = lease::revoke(&st.node, &who, LeaseRevokeRequest { id }).await {
                    tracing::debug!(lease = id, error = %e, "revoking a closed connection's lease failed; it expires by its TTL");
                }
            }
            tracing::debug!(conn = %c.id, "Nacos connection closed");
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(p: &Payload) -> Value {
        serde_json::from_slice(&p.body.as_ref().expect("a body").value).expect("JSON")
    }

    #[test]
    fn request_id_goes_in_front_of_a_serialized_object() {
        let object = serde_json::to_vec(&serde_json::json!({"dataId": "a", "headers": {}}))
            .expect("serialized");
        let p = payload_with_request_id("ConfigChangeNotifyRequest", &object, 42);
        assert_eq!(
            p.metadata.as_ref().map(|m| m.r#type.as_str()),
            Some("ConfigChangeNotifyRequest")
        );
        assert_eq!(
            body_of(&p),
            serde_json::json!({"requestId": "42", "dataId": "a", "headers": {}})
        );
        // The same body as `Conn::push` builds from a value.
        let mut v = serde_json::json!({"dataId": "a", "headers": {}});
        v["requestId"] = Value::String("42".into());
        assert_eq!(
            body_of(&p),
            body_of(&payload("ConfigChangeNotifyRequest", &v))
        );
    }

    #[test]
    fn request_id_in_an_empty_object_and_bytes_that_are_not_an_object() {
        let p = payload_with_request_id("X", b"{}", 7);
        assert_eq!(body_of(&p), serde_json::json!({"requestId": "7"}));
        let p = payload_with_request_id("X", b"[1]", 7);
        assert_eq!(body_of(&p), serde_json::json!([1]));
    }
}
