//! Rollout progress of a config: which clients hold which version, who lags, and how long
//! the last change took to reach everyone, from the clients' reports under
//! `/config-clients/<namespace>/<group>/<data-id>/` ([`mast_model::AppliedReport`]: the Rust
//! SDK reports what it applied; Nacos clients are reported by the server from the MD5s their
//! listeners send).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use mast_model::{AppliedReport, ConfigId, ConfigMeta, md5_hex};
use serde::Serialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult, Call, PathParams};
use crate::etcd;

/// The clients on one version.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionClients {
    /// Hex MD5 of the content.
    pub md5: String,
    /// The version number, when a client reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Whether it is the current content.
    pub current: bool,
    /// The gray release with this content, when it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gray: Option<String>,
    /// The clients' ids.
    pub clients: Vec<String>,
}

/// `GET /mast/v1/configs/{namespace}/{group}/{dataId}/rollout`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The current version (absent for content put without Mast's metadata).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Hex MD5 of the current content.
    pub md5: String,
    /// When the current version was published, ms since the Unix epoch (0: unknown).
    pub published_at: u64,
    /// Clients that reported.
    pub clients: usize,
    /// Of those, on the current content.
    pub on_current: usize,
    /// Clients by version, the current one first, then the newest.
    pub versions: Vec<VersionClients>,
    /// The clients on neither the current content nor a gray release's, with their last
    /// report.
    pub lagging: Vec<AppliedReport>,
    /// Every reporting client holds the current content or a gray release's.
    pub complete: bool,
    /// When complete: from the publish to the last client's report of it, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
}

/// `GET /mast/v1/configs/{namespace}/{group}/{dataId}/rollout`.
///
/// # Errors
/// 400 for a bad name, 404 when the config does not exist, auth and etcd errors (reading the
/// reports needs read permission on `/config-clients/…` too).
pub async fn get(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id)): PathParams<(String, String, String)>,
) -> ApiResult<Json<Rollout>> {
    let id = ConfigId::new(&ns, &group, &data_id)?;
    let node = &st.node;
    let (content, _) = etcd::get(node, &caller, &id.content_key(), 0).await?;
    let Some(content) = content else {
        return Err(ApiError::not_found(format!(
            "config {data_id:?} in group {group:?} of namespace {ns:?} does not exist"
        )));
    };
    let meta: Option<ConfigMeta> = etcd::get(node, &caller, &id.meta_key(), 0)
        .await?
        .0
        .and_then(|kv| serde_json::from_slice(&kv.value).ok());
    let md5 = md5_hex(&content.value);
    let resp = etcd::range_prefix(node, &caller, &id.clients_prefix(), 0, false).await?;
    let mut reports: Vec<AppliedReport> = resp
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    reports.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    let grays: BTreeMap<String, String> = crate::gray::grays_of(node, &caller, &id)
        .await?
        .into_iter()
        .map(|g| (g.md5, g.name))
        .collect();
    let settled = |m: &str| m == md5 || grays.contains_key(m);
    let mut by_md5: BTreeMap<String, VersionClients> = BTreeMap::new();
    for r in &reports {
        let v = by_md5
            .entry(r.md5.clone())
            .or_insert_with(|| VersionClients {
                md5: r.md5.clone(),
                version: r.version,
                current: r.md5 == md5,
                gray: grays.get(&r.md5).cloned(),
                clients: Vec::new(),
            });
        v.version = v.version.max(r.version);
        v.clients.push(r.client_id.clone());
    }
    let mut versions: Vec<VersionClients> = by_md5.into_values().collect();
    versions.sort_by(|a, b| b.current.cmp(&a.current).then(b.version.cmp(&a.version)));
    let lagging: Vec<AppliedReport> = reports
        .iter()
        .filter(|r| !settled(&r.md5))
        .cloned()
        .collect();
    let on_current = reports.iter().filter(|r| r.md5 == md5).count();
    let complete = !reports.is_empty() && lagging.is_empty();
    let published_at = meta.as_ref().map_or(0, |m| m.updated_at);
    let took_ms = (complete && published_at > 0).then(|| {
        reports
            .iter()
            .filter(|r| r.md5 == md5)
            .map(|r| r.applied_at)
            .max()
            .unwrap_or(published_at)
            .saturating_sub(published_at)
    });
    Ok(Json(Rollout {
        version: meta.as_ref().map(|m| m.version),
        md5,
        published_at,
        clients: reports.len(),
        on_current,
        versions,
        lagging,
        complete,
        took_ms,
    }))
}
