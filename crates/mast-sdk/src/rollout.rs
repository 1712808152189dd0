//! Rollout reports: which version of each config this client has applied, written to
//! `/config-clients/<namespace>/<group>/<data-id>/<client-id>` ([`AppliedReport`]) on a
//! session lease of [`REPORT_TTL`] seconds that the client keeps alive while any clone of it
//! lives. A client that dies leaves its last report for at most that long, so the rollout
//! view (`GET /mast/v1/configs/…/rollout`, `mast config rollout`) names it as lagging.
//!
//! [`Client::typed_config`] reports every version it applies by itself; code that applies
//! configs from [`Client::watch_config`] calls [`Client::report_config_applied`].

use std::time::Duration;

use bytes::Bytes;
use mast_model::{AppliedReport, check_name, md5_hex};
use mast_proto::etcdserverpb::{LeaseKeepAliveRequest, PutRequest};
use tokio::task::JoinHandle;

use crate::client::{Client, Result};
use crate::config::Config;

/// Seconds a report outlives its client.
pub const REPORT_TTL: i64 = 10;

/// The lease reports are attached to, and the task keeping it alive (stopped when the last
/// clone of the client goes).
#[derive(Default)]
pub(crate) struct Session {
    lease: tokio::sync::Mutex<i64>,
    keeper: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.lock().unwrap_or_else(|p| p.into_inner()).take() {
            k.abort();
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Client {
    /// This client's id in rollout reports ([`crate::ClientOptions::client_id`]).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Reports that this client has applied `config` (its content's MD5 and version): the
    /// rollout view counts it on that version until it reports another one or goes away.
    ///
    /// # Errors
    /// A client id that is not a key segment, or the server's error.
    pub async fn report_config_applied(&self, config: &Config) -> Result<()> {
        check_name("client id", &self.client_id)?;
        let report = AppliedReport {
            client_id: self.client_id.to_string(),
            md5: match (&config.meta, &config.gray) {
                (Some(m), None) => m.md5.clone(),
                _ => md5_hex(&config.content),
            },
            version: config
                .meta
                .as_ref()
                .filter(|_| config.gray.is_none())
                .map(|m| m.version),
            applied_at: now_ms(),
            via: "sdk".into(),
            ..Default::default()
        };
        let key = config.id.client_key(&self.client_id);
        let value = Bytes::from(serde_json::to_vec(&report).expect("report serializes"));
        // A lease that expired (the client was cut off longer than the TTL) is granted anew.
        for _ in 0..2 {
            let lease = self.session_lease().await?;
            let put = self
                .put(PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value: value.clone(),
                    lease,
                    ..Default::default()
                })
                .await;
            match put {
                Err(crate::Error::Server(s)) if s.code() == tonic::Code::NotFound => {
                    *self.session.lease.lock().await = 0;
                }
                other => return other.map(drop),
            }
        }
        Ok(())
    }

    /// The session lease, granted (and its keeper started) on first use.
    async fn session_lease(&self) -> Result<i64> {
        let mut lease = self.session.lease.lock().await;
        if *lease != 0 {
            return Ok(*lease);
        }
        let id = self.grant(REPORT_TTL).await?;
        *lease = id;
        let keeper = tokio::spawn(keep_alive(self.lease.clone(), id));
        if let Some(old) = self
            .session
            .keeper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(keeper)
        {
            old.abort();
        }
        Ok(id)
    }
}

/// Keeps lease `id` alive every third of its TTL until it is gone (then the next report
/// grants a new one) or the task is stopped.
async fn keep_alive(
    mut lease: mast_proto::etcdserverpb::lease_client::LeaseClient<crate::client::Authed>,
    id: i64,
) {
    let period = Duration::from_millis((REPORT_TTL as u64 * 1000) / 3);
    loop {
        tokio::time::sleep(period).await;
        let once = tokio_stream::once(LeaseKeepAliveRequest { id });
        match lease.lease_keep_alive(once).await {
            Ok(resp) => match resp.into_inner().message().await {
                Ok(Some(r)) if r.ttl > 0 => {}
                Ok(_) => return,
                Err(e) => tracing::debug!(lease = id, error = %e, "report lease keepalive failed"),
            },
            Err(e) => tracing::debug!(lease = id, error = %e, "report lease keepalive failed"),
        }
    }
}
