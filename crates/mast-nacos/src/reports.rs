//! Rollout reports for Nacos clients: a Nacos listener says which MD5 of each config it
//! holds, so the server writes that down as the client's [`AppliedReport`] under
//! `/config-clients/…` (see `mast_registry::rollout`), only when it changes.
//!
//! A 2.x gRPC client is `nacos-<connection id>` and its reports go with the connection's
//! lease (gone soon after the connection). A 1.x HTTP long-polling client has no identity but
//! its address: it is `nacos-<ip>`, on a lease of [`HTTP_REPORT_TTL`] seconds that each of its
//! listen requests keeps alive. The reports are the server's bookkeeping, written as the
//! server (`Node::write_as_system`), not with the client's permissions.

use std::collections::HashMap;
use std::sync::Mutex;

use mast_model::{AppliedReport, ConfigId};
use mast_mvcc::Command;
use mast_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest};
use mast_server::Node;
use mast_server::api::lease;
use mast_server::authz::Caller;

/// Seconds the report of an HTTP long-polling client outlives its last listen request (three
/// 30-second polls).
pub const HTTP_REPORT_TTL: i64 = 90;

/// A client's lease and the MD5 last reported per report key.
type Written = (i64, HashMap<String, String>);

/// What was last written for each client.
#[derive(Default)]
pub struct Reports {
    clients: Mutex<HashMap<String, Written>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Reports {
    /// Records that HTTP client at `ip` holds `md5` of each config in `held` (empty MD5s are
    /// skipped: the client has nothing yet), keeping its lease alive.
    pub async fn http_listen(&self, node: &Node, ip: &str, held: &[(ConfigId, String)]) {
        let client = format!("nacos-{ip}");
        let known = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .map(|(l, _)| *l);
        let lease = match known {
            Some(l)
                if lease::keep_alive_once(node, &LeaseKeepAliveRequest { id: l })
                    .await
                    .is_ok_and(|r| r.ttl > 0) =>
            {
                l
            }
            _ => {
                let system = Caller {
                    api: "system",
                    ..Caller::default()
                };
                let req = LeaseGrantRequest {
                    ttl: HTTP_REPORT_TTL,
                    id: 0,
                };
                match lease::grant(node, &system, req).await {
                    Ok(r) => {
                        // A new lease: every report is written again on it.
                        self.clients
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(client.clone(), (r.id, HashMap::new()));
                        r.id
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "no lease for a Nacos client's reports");
                        return;
                    }
                }
            }
        };
        self.record(node, &client, ip, lease, held).await;
    }

    /// Records that `client` (at `address`) holds `md5` of each config in `held`, on `lease`,
    /// writing only what changed since the last call.
    pub async fn record(
        &self,
        node: &Node,
        client: &str,
        address: &str,
        lease: i64,
        held: &[(ConfigId, String)],
    ) {
        for (id, md5) in held {
            if md5.is_empty() {
                continue;
            }
            let key = id.client_key(client);
            let unchanged = {
                let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
                let entry = clients
                    .entry(client.to_string())
                    .or_insert_with(|| (lease, HashMap::new()));
                if entry.0 != lease {
                    *entry = (lease, HashMap::new());
                }
                entry.1.get(&key) == Some(md5)
            };
            if unchanged {
                continue;
            }
            let report = AppliedReport {
                client_id: client.to_string(),
                md5: md5.clone(),
                applied_at: now_ms(),
                address: address.to_string(),
                via: "nacos".into(),
                ..Default::default()
            };
            let put = PutRequest {
                key: key.clone().into_bytes().into(),
                value: serde_json::to_vec(&report)
                    .expect("report serializes")
                    .into(),
                lease,
                ..Default::default()
            };
            match node
                .write_as_system("nacos-listener", Command::Put(put))
                .await
            {
                Ok(_) => {
                    if let Some(e) = self
                        .clients
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(client)
                    {
                        e.1.insert(key, md5.clone());
                    }
                }
                Err(e) => {
                    tracing::debug!(client, error = %e, "writing a Nacos client's report failed")
                }
            }
        }
    }

    /// Forgets a client (its connection closed; its lease goes with it).
    pub fn forget(&self, client: &str) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client);
    }
}
