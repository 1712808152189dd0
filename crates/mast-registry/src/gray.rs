//! Gray releases of a config over HTTP (see [`mast_model::gray`] for keys, rules and how a
//! client's gray is chosen):
//!
//! - `GET …/gray`: the config's grays;
//! - `PUT …/gray/{name}` (`{content?, rule, priority?}`): publishes a gray or changes it (widen
//!   its rule step by step; the content is kept when not given), checked against the config's
//!   format and JSON Schema; one history entry (`gray-publish`) in the same Txn;
//! - `POST …/gray/{name}/promote`: its content becomes the config's next version (one history
//!   entry, `gray-promote`) and the gray goes, in one Txn;
//! - `DELETE …/gray/{name}`: stops it (its clients fall back), with a `gray-stop` entry.
//!
//! Clients get their version through `GET /mast/v1/configs/…?clientId=&labels=` (the address
//! is the connection's), the Rust SDK, and the Nacos API (by address, as Nacos's beta).

use axum::Json;
use axum::extract::State;
use mast_model::gray::{ClientFacts, GrayRelease, GrayRule, gray_key, gray_prefix, select};
use mast_model::{ConfigFormat, ConfigHistoryEntry, ConfigId, ConfigMeta, HistoryOp, md5_hex};
use mast_server::Node;
use mast_server::authz::Caller;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::configs::{Publish, PublishResponse, publish_version, read_current, to_json, trim_op};
use crate::error::{ApiError, ApiResult, Call, ErrorCode, JsonBody, PathParams};
use crate::etcd;

/// Attempts of an optimistic gray write before answering 409.
const ATTEMPTS: usize = 5;

/// The grays of `id`, by name, read with `caller`'s permissions.
///
/// # Errors
/// Auth and etcd errors.
pub async fn grays_of(node: &Node, caller: &Caller, id: &ConfigId) -> ApiResult<Vec<GrayRelease>> {
    let resp = etcd::range_prefix(node, caller, &gray_prefix(id), 0, false).await?;
    Ok(resp
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// Whether `id` has any gray release, counted in the index alone (no row is read). Checks
/// no permission: a caller uses it only to skip [`gray_for`] (and the client facts it needs)
/// for the many configs without one. An error counts as "maybe", so [`gray_for`] runs and
/// reports it.
pub fn has_grays(node: &Node, id: &ConfigId) -> bool {
    let prefix = gray_prefix(id);
    node.range_as_server(&mast_proto::etcdserverpb::RangeRequest {
        range_end: mast_model::prefix_end(prefix.as_bytes()).into(),
        key: prefix.into(),
        serializable: true,
        count_only: true,
        ..Default::default()
    })
    .map_or(true, |r| r.count > 0)
}

/// The gray meant for `client` of `id`, if any: a version of the config, so anyone who may
/// read the config's content gets the one meant for them (the grays are read as the server,
/// after that check). Costs one count of an empty range when the config has no gray.
///
/// # Errors
/// Auth errors (the caller may not read the config), storage errors.
pub async fn gray_for(
    node: &Node,
    caller: &Caller,
    id: &ConfigId,
    client: &ClientFacts,
) -> ApiResult<Option<GrayRelease>> {
    let who = node.authenticate_caller(caller)?;
    node.check_range(&who, id.content_key().as_bytes(), &[], false)?;
    if !has_grays(node, id) {
        return Ok(None);
    }
    let prefix = gray_prefix(id);
    let req = mast_proto::etcdserverpb::RangeRequest {
        range_end: mast_model::prefix_end(prefix.as_bytes()).into(),
        key: prefix.into(),
        serializable: true,
        ..Default::default()
    };
    let grays: Vec<GrayRelease> = node
        .range_as_server(&req)?
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    Ok(select(id, &grays, client).cloned())
}

/// `GET …/gray` answer.
#[derive(Debug, Serialize)]
pub struct GrayList {
    /// The config's grays, by name.
    pub grays: Vec<GrayRelease>,
}

/// `GET /mast/v1/configs/{namespace}/{group}/{dataId}/gray`.
///
/// # Errors
/// 400 for a bad name, auth and etcd errors.
pub async fn list(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id)): PathParams<(String, String, String)>,
) -> ApiResult<Json<GrayList>> {
    let id = ConfigId::new(&ns, &group, &data_id)?;
    Ok(Json(GrayList {
        grays: grays_of(&st.node, &caller, &id).await?,
    }))
}

/// `PUT …/gray/{name}` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrayRequest {
    /// The gray content (default: the gray's current content; required for a new gray).
    pub content: Option<String>,
    /// Who gets it: `{"type": "labels", "labels": {…}}`, `{"type": "ip", "ips": […]}` or
    /// `{"type": "percentage", "percentage": 0–100}`.
    pub rule: serde_json::Value,
    /// Higher first when several match (default: the gray's current priority, else 0).
    pub priority: Option<i32>,
}

/// A gray write's answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GrayResponse {
    /// The gray as stored (absent after a stop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gray: Option<GrayRelease>,
    /// The history version the change was recorded as.
    pub history_version: u64,
    /// The revision of the write.
    pub revision: i64,
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(e.to_string())
}

/// `PUT /mast/v1/configs/{namespace}/{group}/{dataId}/gray/{name}`: publishes or changes a
/// gray, with its history entry, in one Txn guarded by the config's metadata and the gray.
///
/// # Errors
/// 400 for a bad name, a malformed rule (a percentage outside 0–100, an address that is not
/// one, no labels), content refused by the format or schema, or no content for a new gray;
/// 404 when the config does not exist; 409 when it kept changing; auth and etcd errors.
pub async fn put(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id, name)): PathParams<(String, String, String, String)>,
    JsonBody(req): JsonBody<GrayRequest>,
) -> ApiResult<Json<GrayResponse>> {
    let node = &st.node;
    let id = ConfigId::new(&ns, &group, &data_id)?;
    let key = gray_key(&id, &name).map_err(bad)?;
    let rule: GrayRule =
        serde_json::from_value(req.rule.clone()).map_err(|e| bad(format!("rule: {e}")))?;
    rule.validate().map_err(bad)?;
    let author = node
        .authenticate_caller(&caller)?
        .map(|a| a.user)
        .unwrap_or_default();
    for _ in 0..ATTEMPTS {
        let cur = read_current(node, &caller, &id).await?;
        let Some(meta) = cur.meta.as_ref() else {
            return Err(ApiError::not_found(format!(
                "config {}/{}/{} does not exist; publish it before a gray release of it",
                id.namespace, id.group, id.data_id
            )));
        };
        let (existing_kv, _) = etcd::get(node, &caller, &key, 0).await?;
        let existing: Option<GrayRelease> = existing_kv
            .as_ref()
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        let content = match (&req.content, &existing) {
            (Some(c), _) => c.clone(),
            (None, Some(g)) => g.content.clone(),
            (None, None) => return Err(bad("content is required for a new gray release")),
        };
        crate::configs::validate(meta.format, &content, meta.schema.as_ref()).await?;
        let now = etcd::now_ms();
        let gray = GrayRelease {
            name: name.clone(),
            md5: md5_hex(content.as_bytes()),
            content,
            rule: rule.clone(),
            priority: req
                .priority
                .or(existing.as_ref().map(|g| g.priority))
                .unwrap_or(0),
            author: author.clone(),
            updated_at: now,
            extra: existing.map(|g| g.extra).unwrap_or_default(),
        };
        let version = cur.version + 1;
        let entry = history_entry(&gray, version, meta.format, HistoryOp::GrayPublish, now);
        let meta = ConfigMeta {
            last_history: version,
            ..meta.clone()
        };
        let mut ops = vec![
            etcd::put_op(key.clone(), to_json(&gray)?),
            etcd::put_op(id.history_key(version), to_json(&entry)?),
            etcd::put_op(id.meta_key(), to_json(&meta)?),
        ];
        ops.extend(trim_op(&id, version, st.config.history_retention));
        let compare = vec![
            etcd::mod_revision_is(id.meta_key(), cur.meta_rev),
            etcd::mod_revision_is(key.clone(), existing_kv.map_or(0, |kv| kv.mod_revision)),
        ];
        let resp = etcd::txn(node, &caller, compare, ops).await?;
        if resp.succeeded {
            return Ok(Json(GrayResponse {
                gray: Some(gray),
                history_version: version,
                revision: etcd::txn_revision(&resp),
            }));
        }
    }
    Err(conflict())
}

fn history_entry(
    gray: &GrayRelease,
    version: u64,
    format: ConfigFormat,
    op: HistoryOp,
    time: u64,
) -> ConfigHistoryEntry {
    ConfigHistoryEntry {
        version,
        content: gray.content.clone(),
        format,
        md5: gray.md5.clone(),
        author: gray.author.clone(),
        time,
        op,
        gray: Some(gray.name.clone()),
        gray_rule: serde_json::to_value(&gray.rule).ok(),
        ..Default::default()
    }
}

fn conflict() -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        "the config or its gray kept changing; try again",
    )
}

/// The gray `name` of `id` and its key's mod revision.
async fn read_gray(
    node: &Node,
    caller: &Caller,
    id: &ConfigId,
    name: &str,
) -> ApiResult<(GrayRelease, i64)> {
    let key = gray_key(id, name).map_err(bad)?;
    let (kv, _) = etcd::get(node, caller, &key, 0).await?;
    let kv = kv.ok_or_else(|| {
        ApiError::not_found(format!(
            "config {}/{}/{} has no gray release {name:?}",
            id.namespace, id.group, id.data_id
        ))
    })?;
    let gray = serde_json::from_slice(&kv.value).map_err(|_| {
        ApiError::new(
            ErrorCode::Conflict,
            format!("the value at {key} is not a gray release"),
        )
    })?;
    Ok((gray, kv.mod_revision))
}

/// `POST /mast/v1/configs/{namespace}/{group}/{dataId}/gray/{name}/promote`: the gray's
/// content becomes the config's next version (history `gray-promote`) and the gray is
/// removed, in one Txn; every client converges on the new version.
///
/// # Errors
/// 404 when the gray does not exist, 409 when it changed meanwhile; as a publish.
pub async fn promote(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id, name)): PathParams<(String, String, String, String)>,
) -> ApiResult<Json<PublishResponse>> {
    let node = &st.node;
    let id = ConfigId::new(&ns, &group, &data_id)?;
    let (gray, rev) = read_gray(node, &caller, &id, &name).await?;
    let key = gray_key(&id, &name).map_err(bad)?;
    let p = Publish {
        content: gray.content,
        op: HistoryOp::GrayPromote,
        gray: Some(name),
        more_compares: vec![etcd::mod_revision_is(key.clone(), rev)],
        more_ops: vec![etcd::delete_op(key.into_bytes(), Vec::new())],
        ..Default::default()
    };
    Ok(Json(
        publish_version(node, st.config.history_retention, &caller, &id, p).await?,
    ))
}

/// `DELETE /mast/v1/configs/{namespace}/{group}/{dataId}/gray/{name}`: stops the gray (its
/// clients fall back to the normal version), with a `gray-stop` history entry, in one Txn.
///
/// # Errors
/// 404 when the gray does not exist, 409 when it kept changing; auth and etcd errors.
pub async fn stop(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id, name)): PathParams<(String, String, String, String)>,
) -> ApiResult<Json<GrayResponse>> {
    let node = &st.node;
    let id = ConfigId::new(&ns, &group, &data_id)?;
    let key = gray_key(&id, &name).map_err(bad)?;
    let author = node
        .authenticate_caller(&caller)?
        .map(|a| a.user)
        .unwrap_or_default();
    for _ in 0..ATTEMPTS {
        let (mut gray, rev) = read_gray(node, &caller, &id, &name).await?;
        let cur = read_current(node, &caller, &id).await?;
        let format = cur.meta.as_ref().map_or_else(
            || ConfigFormat::from_data_id(&id.data_id).unwrap_or_default(),
            |m| m.format,
        );
        let version = cur.version + 1;
        gray.author = author.clone();
        let entry = history_entry(&gray, version, format, HistoryOp::GrayStop, etcd::now_ms());
        let mut ops = vec![
            etcd::delete_op(key.clone().into_bytes(), Vec::new()),
            etcd::put_op(id.history_key(version), to_json(&entry)?),
        ];
        // The number is taken: the metadata says so (a config deleted meanwhile has none, and
        // its next version continues after its history anyway).
        if let Some(meta) = &cur.meta {
            let meta = ConfigMeta {
                last_history: version,
                ..meta.clone()
            };
            ops.push(etcd::put_op(id.meta_key(), to_json(&meta)?));
        }
        ops.extend(trim_op(&id, version, st.config.history_retention));
        let compare = vec![
            etcd::mod_revision_is(id.meta_key(), cur.meta_rev),
            etcd::mod_revision_is(key.clone(), rev),
        ];
        let resp = etcd::txn(node, &caller, compare, ops).await?;
        if resp.succeeded {
            return Ok(Json(GrayResponse {
                gray: None,
                history_version: version,
                revision: etcd::txn_revision(&resp),
            }));
        }
    }
    Err(conflict())
}
