//! Configs: namespace / group / data id, stored as [`mast_model`] lays them out — content raw
//! at `/configs/…` (so a plain etcd watcher sees the content itself), metadata at
//! `/config-meta/…`, and every version at `/config-history/…/<version>`.
//!
//! Every change is one Txn that compares the meta key's mod revision with what was read
//! (optimistic concurrency; retried a few times when another publisher got there first):
//! - publish: put content, put meta (version + 1, md5, time, author…), put the history entry,
//!   and delete history entries older than the retention;
//! - rollback: a publish of an old version's content (op `rollback`), never a delete;
//! - delete: delete content and meta, put a history entry with op `delete` (keeping the last
//!   content); history stays, and a later publish continues the version numbers.
//!
//! Because history lives under its own keys, it survives compaction.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use mast_model::config::{CONTENT_PREFIX, META_PREFIX};
use mast_model::{
    ConfigFormat, ConfigHistoryEntry, ConfigId, ConfigMeta, HistoryOp, check_name, check_schema,
    md5_hex,
};
use mast_proto::mvccpb::KeyValue;
use mast_server::Node;
use mast_server::authz::Caller;
use serde::{Deserialize, Deserializer, Serialize};

use crate::AppState;
use crate::error::{ApiError, ApiResult, Call, ErrorCode, JsonBody, PathParams, QueryParams};
use crate::etcd;

/// Attempts of an optimistic write before answering 409.
const WRITE_ATTEMPTS: usize = 5;

/// A config in a list: everything but the content and the schema.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSummary {
    /// Namespace.
    pub namespace: String,
    /// Group.
    pub group: String,
    /// Data id.
    pub data_id: String,
    /// Content format.
    pub format: ConfigFormat,
    /// Current version (0 for content written by a plain etcd client, never published here).
    pub version: u64,
    /// Hex MD5 of the content (absent for content never published here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// Description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Who published the current version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// When, ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<u64>,
    /// A JSON Schema is attached.
    pub has_schema: bool,
    /// Revision of the content key's last change.
    pub revision: i64,
}

impl ConfigSummary {
    fn new(id: &ConfigId, meta: Option<&ConfigMeta>, revision: i64) -> Self {
        ConfigSummary {
            namespace: id.namespace.clone(),
            group: id.group.clone(),
            data_id: id.data_id.clone(),
            format: meta.map_or_else(
                || ConfigFormat::from_data_id(&id.data_id).unwrap_or_default(),
                |m| m.format,
            ),
            version: meta.map_or(0, |m| m.version),
            md5: meta.map(|m| m.md5.clone()),
            description: meta.map(|m| m.description.clone()).unwrap_or_default(),
            tags: meta.map(|m| m.tags.clone()).unwrap_or_default(),
            author: meta.map(|m| m.author.clone()).unwrap_or_default(),
            updated_at: meta.map(|m| m.updated_at),
            has_schema: meta.is_some_and(|m| m.schema.is_some()),
            revision,
        }
    }
}

/// One config with its content.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    /// Everything but content and schema.
    #[serde(flatten)]
    pub summary: ConfigSummary,
    /// The content (non-UTF-8 bytes written by other clients are shown replaced).
    pub content: String,
    /// The attached JSON Schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// The gray release whose content this is, when the client is one of its clients
    /// (`md5` is then the gray content's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gray: Option<String>,
}

/// Who reads a config, for gray releases: `?clientId=&labels=k=v,k2=v2` (the address is the
/// connection's).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientQuery {
    /// The client's id (percentage rules).
    pub client_id: Option<String>,
    /// The client's labels, `k=v` pairs separated by commas (labels rules).
    pub labels: Option<String>,
}

impl ClientQuery {
    /// The client's facts, with `caller`'s address.
    ///
    /// # Errors
    /// 400 for a label without `=`.
    pub fn facts(&self, caller: &Caller) -> ApiResult<mast_model::ClientFacts> {
        let mut labels = BTreeMap::new();
        for pair in self
            .labels
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ApiError::bad_request(format!("label {pair:?} is not k=v")))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(mast_model::ClientFacts {
            id: self.client_id.clone().unwrap_or_default(),
            labels,
            ip: caller.addr.map(|a| a.ip()),
        })
    }
}

/// `GET /mast/v1/configs`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigList {
    /// Revision the list was read at.
    pub revision: i64,
    /// How many configs match the filters (the page is `configs`).
    pub total: usize,
    /// Configs by namespace, group, data id: the page `offset .. offset + limit` of the
    /// matching ones.
    pub configs: Vec<ConfigSummary>,
}

/// Most configs one page of `GET /mast/v1/configs` answers.
pub const MAX_PAGE: usize = 1000;

/// Filters of the config list.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFilter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this group.
    pub group: Option<String>,
    /// Only data ids containing this text.
    pub search: Option<String>,
    /// Only this data id.
    pub data_id: Option<String>,
    /// Only data ids starting with this text.
    pub data_id_prefix: Option<String>,
    /// Only configs whose content contains this text (reads every candidate's content).
    pub content: Option<String>,
    /// Configs per page, 1 to 1000 (default: every matching config).
    pub limit: Option<usize>,
    /// Matching configs to skip before the page (default 0).
    pub offset: Option<usize>,
}

fn double_option<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<serde_json::Value>>, D::Error> {
    Ok(Some(Option::<serde_json::Value>::deserialize(d)?))
}

/// `PUT /mast/v1/configs/{namespace}/{group}/{dataId}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishRequest {
    /// The new content.
    pub content: String,
    /// `text`, `json`, `yaml`, `toml` or `properties`; default: the current format, else the
    /// data id's extension, else text.
    pub format: Option<String>,
    /// New description (default: unchanged).
    pub description: Option<String>,
    /// New tags (default: unchanged).
    pub tags: Option<Vec<String>>,
    /// Who publishes (ignored when auth is on: the authenticated user is recorded).
    pub author: Option<String>,
    /// A JSON Schema to attach (`null` detaches; absent keeps the current one).
    #[serde(default, deserialize_with = "double_option")]
    pub schema: Option<Option<serde_json::Value>>,
    /// Publish only if the current version is this (0: only if the config does not exist).
    pub expected_version: Option<u64>,
}

/// `POST …/rollback`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version whose content to publish again.
    pub version: u64,
    /// Who rolls back (ignored when auth is on).
    pub author: Option<String>,
    /// Roll back only if the current version is this.
    pub expected_version: Option<u64>,
}

/// Publish and rollback answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishResponse {
    /// The config after the write.
    #[serde(flatten)]
    pub config: ConfigSummary,
    /// For a rollback: the version restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<u64>,
    /// `true` for `?dryRun=true`: everything was checked, nothing was stored, and `config`
    /// shows the version a publish would have made.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// `PUT /mast/v1/configs/…` query.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishQuery {
    /// Check the publish (read permission, `expectedVersion`, format, schema, size) without
    /// storing anything, as the console does before it asks for confirmation.
    #[serde(default)]
    pub dry_run: bool,
}

/// Delete answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteResponse {
    /// Namespace.
    pub namespace: String,
    /// Group.
    pub group: String,
    /// Data id.
    pub data_id: String,
    /// The version number of the delete record in history.
    pub version: u64,
    /// Revision of the delete.
    pub revision: i64,
}

/// One history entry without its content.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistorySummary {
    /// Version number.
    pub version: u64,
    /// Publish, rollback, delete, or a gray release's publish, promotion or stop.
    pub op: HistoryOp,
    /// Format.
    pub format: ConfigFormat,
    /// Hex MD5 of the content.
    pub md5: String,
    /// Who.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub author: String,
    /// When, ms since the Unix epoch.
    pub time: u64,
    /// For a rollback: the version restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<u64>,
    /// Content size in bytes.
    pub size: usize,
    /// For gray entries: the gray release's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gray: Option<String>,
}

/// `GET …/history`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryList {
    /// Revision the history was read at.
    pub revision: i64,
    /// Versions kept per config.
    pub retention: u64,
    /// Newest first.
    pub versions: Vec<HistorySummary>,
}

/// Query of `GET …/history`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HistoryQuery {
    /// Most entries to return (newest first).
    pub limit: Option<usize>,
}

/// `GET …/history/{version}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryVersion {
    /// Namespace.
    pub namespace: String,
    /// Group.
    pub group: String,
    /// Data id.
    pub data_id: String,
    /// The entry, content included.
    #[serde(flatten)]
    pub entry: ConfigHistoryEntry,
}

/// Query of `GET …/diff`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiffQuery {
    /// The older version.
    pub from: u64,
    /// The newer version (default: the latest).
    pub to: Option<u64>,
}

/// `GET …/diff`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffResponse {
    /// From version.
    pub from: u64,
    /// To version.
    pub to: u64,
    /// The two contents are equal.
    pub identical: bool,
    /// Unified diff (3 lines of context), empty when identical.
    pub diff: String,
}

fn config_id(ns: &str, group: &str, data_id: &str) -> ApiResult<ConfigId> {
    Ok(ConfigId::new(ns, group, data_id)?)
}

/// What a write needs to know of a config's current state.
pub(crate) struct Current {
    /// The metadata and the meta key's mod revision (0: absent).
    pub(crate) meta: Option<ConfigMeta>,
    pub(crate) meta_rev: i64,
    /// The newest version number ever used (meta's, or the newest history entry's).
    pub(crate) version: u64,
}

pub(crate) async fn read_current(
    node: &Node,
    caller: &Caller,
    id: &ConfigId,
) -> ApiResult<Current> {
    let (kv, _) = etcd::get(node, caller, &id.meta_key(), 0).await?;
    if let Some(kv) = kv {
        let meta: ConfigMeta = serde_json::from_slice(&kv.value).map_err(|e| {
            ApiError::new(
                ErrorCode::Conflict,
                format!("the metadata at {} is not valid: {e}", id.meta_key()),
            )
        })?;
        // Gray entries take history numbers too without moving the current version.
        return Ok(Current {
            version: meta.newest_history(),
            meta: Some(meta),
            meta_rev: kv.mod_revision,
        });
    }
    // No metadata: never published, or deleted. Versions continue after the newest history
    // entry, so a deleted config's history is never overwritten.
    let resp = etcd::range_prefix(node, caller, &id.history_prefix(), 0, true).await?;
    let version = resp
        .kvs
        .iter()
        .filter_map(|kv| ConfigId::parse_key(&kv.key).and_then(|(_, v)| v))
        .max()
        .unwrap_or(0);
    Ok(Current {
        meta: None,
        meta_rev: 0,
        version,
    })
}

/// The op that trims history to the retention once `version` is written, if any is needed.
pub(crate) fn trim_op(
    id: &ConfigId,
    version: u64,
    retention: u64,
) -> Option<mast_proto::etcdserverpb::RequestOp> {
    (version > retention)
        .then(|| etcd::delete_op(id.history_prefix(), id.history_key(version - retention + 1)))
}

fn check_expected(expected: Option<u64>, current: u64) -> ApiResult<()> {
    match expected {
        Some(e) if e != current => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("expected version {e}, but the current version is {current}"),
        )),
        _ => Ok(()),
    }
}

/// Content up to this many bytes without a schema is validated on the async worker: parsing
/// it takes microseconds, less than handing it to a blocking thread.
const INLINE_VALIDATE_BYTES: usize = 16 * 1024;

/// Validates off the async workers (parsing and schema checks may be slow on large content),
/// or inline for small content without a schema.
pub(crate) async fn validate(
    format: ConfigFormat,
    content: &str,
    schema: Option<&serde_json::Value>,
) -> ApiResult<()> {
    if schema.is_none() && content.len() <= INLINE_VALIDATE_BYTES {
        format.validate(content.as_bytes(), None)?;
        return Ok(());
    }
    let content = content.to_string();
    let schema = schema.cloned();
    tokio::task::spawn_blocking(move || format.validate(content.as_bytes(), schema.as_ref()))
        .await??;
    Ok(())
}

/// What one publish (or rollback, or gray promotion) writes.
#[derive(Default)]
pub(crate) struct Publish {
    pub(crate) content: String,
    pub(crate) format: Option<ConfigFormat>,
    pub(crate) description: Option<String>,
    pub(crate) tags: Option<Vec<String>>,
    pub(crate) author: Option<String>,
    pub(crate) schema: Option<Option<serde_json::Value>>,
    pub(crate) expected_version: Option<u64>,
    pub(crate) op: HistoryOp,
    pub(crate) rolled_back_from: Option<u64>,
    /// For a gray promotion: the gray's name (in the history entry).
    pub(crate) gray: Option<String>,
    /// More conditions and ops for the same Txn (a promotion deletes its gray, if unchanged).
    pub(crate) more_compares: Vec<mast_proto::etcdserverpb::Compare>,
    pub(crate) more_ops: Vec<mast_proto::etcdserverpb::RequestOp>,
    /// Check only: answer what the publish would make, store nothing.
    pub(crate) dry_run: bool,
}

pub(crate) async fn publish_version(
    node: &Node,
    retention: u64,
    caller: &Caller,
    id: &ConfigId,
    p: Publish,
) -> ApiResult<PublishResponse> {
    if p.content.len() > node.max_request_bytes() {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!(
                "content is {} bytes; the server accepts writes up to {} bytes",
                p.content.len(),
                node.max_request_bytes()
            ),
        ));
    }
    let who = node.authenticate_caller(caller)?;
    let author = who.map(|w| w.user).or(p.author).unwrap_or_default();
    if let Some(Some(schema)) = &p.schema {
        let schema = schema.clone();
        tokio::task::spawn_blocking(move || check_schema(&schema)).await??;
    }
    for _ in 0..WRITE_ATTEMPTS {
        let cur = read_current(node, caller, id).await?;
        check_expected(p.expected_version, cur.version)?;
        let old = cur.meta.as_ref();
        let format = p
            .format
            .or(old.map(|m| m.format))
            .or_else(|| ConfigFormat::from_data_id(&id.data_id))
            .unwrap_or_default();
        let schema = match &p.schema {
            Some(s) => s.clone(),
            None => old.and_then(|m| m.schema.clone()),
        };
        validate(format, &p.content, schema.as_ref()).await?;
        let version = cur.version + 1;
        let dry_run = p.dry_run;
        let now = etcd::now_ms();
        let md5 = md5_hex(p.content.as_bytes());
        let meta = ConfigMeta {
            format,
            md5: md5.clone(),
            version,
            description: p
                .description
                .clone()
                .or_else(|| old.map(|m| m.description.clone()))
                .unwrap_or_default(),
            tags: p
                .tags
                .clone()
                .or_else(|| old.map(|m| m.tags.clone()))
                .unwrap_or_default(),
            author: author.clone(),
            updated_at: now,
            schema,
            last_history: 0,
        };
        let entry = ConfigHistoryEntry {
            version,
            content: p.content.clone(),
            format,
            md5,
            author: author.clone(),
            time: now,
            op: p.op,
            rolled_back_from: p.rolled_back_from,
            gray: p.gray.clone(),
            gray_rule: None,
        };
        if dry_run {
            return Ok(PublishResponse {
                config: ConfigSummary::new(id, Some(&meta), cur.meta_rev),
                rolled_back_from: p.rolled_back_from,
                dry_run: true,
            });
        }
        let mut ops = vec![
            etcd::put_op(id.content_key(), p.content.clone()),
            etcd::put_op(id.meta_key(), to_json(&meta)?),
            etcd::put_op(id.history_key(version), to_json(&entry)?),
        ];
        ops.extend(trim_op(id, version, retention));
        ops.extend(p.more_ops.iter().cloned());
        let mut compare = vec![etcd::mod_revision_is(id.meta_key(), cur.meta_rev)];
        compare.extend(p.more_compares.iter().cloned());
        let resp = etcd::txn(node, caller, compare, ops).await?;
        if resp.succeeded {
            return Ok(PublishResponse {
                config: ConfigSummary::new(id, Some(&meta), etcd::txn_revision(&resp)),
                rolled_back_from: p.rolled_back_from,
                dry_run: false,
            });
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        "the config kept changing while it was published; try again",
    ))
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ApiError::internal(format!("encoding JSON failed: {e}")))
}

fn content_string(kv: &KeyValue) -> String {
    String::from_utf8_lossy(&kv.value).into_owned()
}

fn parse_meta(kv: Option<&KeyValue>) -> Option<ConfigMeta> {
    kv.and_then(|kv| serde_json::from_slice(&kv.value).ok())
}

/// `GET /mast/v1/configs?namespace=&group=&search=&dataId=&dataIdPrefix=&content=&limit=&offset=`:
/// the configs the caller may read that match every filter given, sorted by namespace, group
/// and data id; `total` counts them all, `configs` holds the page.
///
/// # Errors
/// 400 for a bad namespace or group name or a `limit` outside 1–1000; auth errors.
pub async fn list(
    State(st): State<AppState>,
    Call(caller): Call,
    QueryParams(f): QueryParams<ConfigFilter>,
) -> ApiResult<Json<ConfigList>> {
    let node = &st.node;
    let ns = f.namespace.filter(|s| !s.is_empty());
    let group = f.group.filter(|s| !s.is_empty());
    if let Some(ns) = &ns {
        check_name("namespace", ns)?;
    }
    if let Some(g) = &group {
        check_name("group", g)?;
    }
    let suffix = match (&ns, &group) {
        (Some(ns), Some(g)) => format!("{ns}/{g}/"),
        (Some(ns), None) => format!("{ns}/"),
        _ => String::new(),
    };
    if let Some(l) = f.limit
        && !(1..=MAX_PAGE).contains(&l)
    {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let content = f.content.filter(|s| !s.is_empty());
    let contents = etcd::range_prefix(
        node,
        &caller,
        &format!("{CONTENT_PREFIX}{suffix}"),
        0,
        content.is_none(),
    )
    .await?;
    let revision = etcd::revision_of(&contents);
    let metas = etcd::range_prefix(
        node,
        &caller,
        &format!("{META_PREFIX}{suffix}"),
        revision,
        false,
    )
    .await?;
    // Parsed only for the configs on the page.
    let metas: BTreeMap<ConfigId, &KeyValue> = metas
        .kvs
        .iter()
        .filter_map(|kv| Some((ConfigId::parse_key(&kv.key)?.0, kv)))
        .collect();
    let content = content.as_deref().map(str::as_bytes);
    let matching: Vec<(ConfigId, i64)> = contents
        .kvs
        .iter()
        .filter(|kv| content.is_none_or(|c| contains(&kv.value, c)))
        .filter_map(|kv| {
            let (id, _) = ConfigId::parse_key(&kv.key)?;
            Some((id, kv.mod_revision))
        })
        .filter(|(id, _)| group.as_ref().is_none_or(|g| &id.group == g))
        .filter(|(id, _)| {
            f.search
                .as_ref()
                .is_none_or(|s| id.data_id.contains(s.as_str()))
        })
        .filter(|(id, _)| f.data_id.as_ref().is_none_or(|d| &id.data_id == d))
        .filter(|(id, _)| {
            f.data_id_prefix
                .as_ref()
                .is_none_or(|p| id.data_id.starts_with(p.as_str()))
        })
        .collect();
    let total = matching.len();
    let configs = matching
        .into_iter()
        .skip(f.offset.unwrap_or(0))
        .take(f.limit.unwrap_or(usize::MAX))
        .map(|(id, rev)| {
            let meta = parse_meta(metas.get(&id).copied());
            ConfigSummary::new(&id, meta.as_ref(), rev)
        })
        .collect();
    Ok(Json(ConfigList {
        revision,
        total,
        configs,
    }))
}

/// Whether `needle` occurs in `hay` (bytes; a config's content need not be UTF-8 for etcd).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// `GET /mast/v1/configs/{namespace}/{group}/{dataId}`.
pub async fn get(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id)): PathParams<(String, String, String)>,
    QueryParams(client): QueryParams<ClientQuery>,
) -> ApiResult<Response> {
    let node = &st.node;
    let id = config_id(&ns, &group, &data_id)?;
    let (content_key, meta_key) = (id.content_key(), id.meta_key());
    // A client of a gray release gets the gray's content (never cached).
    let facts = client.facts(&caller)?;
    if let Some(gray) = crate::gray::gray_for(node, &caller, &id, &facts).await? {
        let (content, revision) = etcd::get(node, &caller, &content_key, 0).await?;
        let Some(content) = content else {
            return Err(not_found(&id));
        };
        let (meta_kv, _) = etcd::get(node, &caller, &meta_key, revision).await?;
        let meta = parse_meta(meta_kv.as_ref());
        let mut summary = ConfigSummary::new(&id, meta.as_ref(), content.mod_revision);
        summary.md5 = Some(gray.md5.clone());
        let view = ConfigView {
            summary,
            content: gray.content,
            schema: meta.and_then(|m| m.schema),
            gray: Some(gray.name),
        };
        return Ok(crate::json_bytes(Bytes::from(to_json(&view)?)));
    }
    // The checks the two reads below make, done first so a cached answer gets them too.
    let who = node.authenticate_caller(&caller)?;
    let (_, mods) = node.mod_revisions(&who, &[content_key.as_bytes(), meta_key.as_bytes()])?;
    if let Some(content_rev) = mods[0]
        && let Some(body) = st.read_cache.get(&content_key, content_rev, mods[1])
    {
        return Ok(crate::json_bytes(body));
    }
    let (content, revision) = etcd::get(node, &caller, &content_key, 0).await?;
    let Some(content) = content else {
        return Err(not_found(&id));
    };
    // The metadata as of the same revision, so the two agree.
    let (meta_kv, _) = etcd::get(node, &caller, &meta_key, revision).await?;
    let meta = parse_meta(meta_kv.as_ref());
    let view = ConfigView {
        summary: ConfigSummary::new(&id, meta.as_ref(), content.mod_revision),
        content: content_string(&content),
        schema: meta.and_then(|m| m.schema),
        gray: None,
    };
    let body = Bytes::from(to_json(&view)?);
    st.read_cache.put(
        &content_key,
        content.mod_revision,
        meta_kv.as_ref().map(|kv| kv.mod_revision),
        body.clone(),
    );
    Ok(crate::json_bytes(body))
}

fn not_found(id: &ConfigId) -> ApiError {
    ApiError::not_found(format!(
        "config {}/{}/{} does not exist",
        id.namespace, id.group, id.data_id
    ))
}

/// `PUT /mast/v1/configs/{namespace}/{group}/{dataId}`: publishes a new version.
pub async fn publish(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id)): PathParams<(String, String, String)>,
    QueryParams(q): QueryParams<PublishQuery>,
    JsonBody(req): JsonBody<PublishRequest>,
) -> ApiResult<Json<PublishResponse>> {
    let id = config_id(&ns, &group, &data_id)?;
    let format = req
        .format
        .as_deref()
        .map(str::parse::<ConfigFormat>)
        .transpose()?;
    let p = Publish {
        content: req.content,
        format,
        description: req.description,
        tags: req.tags,
        author: req.author,
        schema: req.schema,
        expected_version: req.expected_version,
        op: HistoryOp::Publish,
        rolled_back_from: None,
        dry_run: q.dry_run,
        ..Default::default()
    };
    publish_version(&st.node, st.config.history_retention, &caller, &id, p)
        .await
        .map(Json)
}

/// What another API publishes: [`publish_from`]'s input.
#[derive(Clone, Debug, Default)]
pub struct NewVersion {
    /// The content (UTF-8).
    pub content: String,
    /// Its format; `None` keeps the config's.
    pub format: Option<ConfigFormat>,
    /// A new description; `None` keeps the config's.
    pub description: Option<String>,
    /// The author when auth is off.
    pub author: Option<String>,
}

/// A publish made through another API (the Nacos API): the same validation, history entry
/// and optimistic concurrency as `PUT /mast/v1/configs/…`, keeping `retention` versions.
/// A `format` of `None` keeps the config's format (or the one its data id's extension
/// suggests, else text); `author` is used only when auth is off (with auth on, the caller's
/// user is the author).
///
/// # Errors
/// As `PUT /mast/v1/configs/…`: invalid content, too large, auth, conflict, etcd errors.
pub async fn publish_from(
    node: &Node,
    retention: u64,
    caller: &Caller,
    id: &ConfigId,
    v: NewVersion,
) -> ApiResult<PublishResponse> {
    let p = Publish {
        content: v.content,
        format: v.format,
        description: v.description,
        tags: None,
        author: v.author,
        schema: None,
        expected_version: None,
        op: HistoryOp::Publish,
        rolled_back_from: None,
        ..Default::default()
    };
    publish_version(node, retention.max(1), caller, id, p).await
}

/// A delete made through another API (the Nacos API), as `DELETE /mast/v1/configs/…`:
/// content and metadata go, a `delete` history entry is written, `retention` versions kept.
///
/// # Errors
/// [`ErrorCode::NotFound`] when there is nothing to delete; auth, conflict and etcd errors.
pub async fn delete_from(
    node: &Node,
    retention: u64,
    caller: &Caller,
    id: &ConfigId,
) -> ApiResult<DeleteResponse> {
    delete_config(node, retention.max(1), caller, id).await
}

/// `POST …/rollback`: publishes an old version's content (and format) as a new version.
pub async fn rollback(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id)): PathParams<(String, String, String)>,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> ApiResult<Json<PublishResponse>> {
    let id = config_id(&ns, &group, &data_id)?;
    let entry = read_version(&st, &caller, &id, req.version).await?;
    if entry.op == HistoryOp::Delete {
        return Err(ApiError::bad_request(format!(
            "version {} records a delete; roll back to the version before it",
            req.version
        )));
    }
    let p = Publish {
        content: entry.content,
        format: Some(entry.format),
        description: None,
        tags: None,
        author: req.author,
        schema: None,
        expected_version: req.expected_version,
        op: HistoryOp::Rollback,
        rolled_back_from: Some(req.version),
        ..Default::default()
    };
    publish_version(&st.node, st.config.history_retention, &caller, &id, p)
        .await
        .map(Json)
}

/// `DELETE /mast/v1/configs/{namespace}/{group}/{dataId}`: removes content and metadata and
/// records the delete in history (which is kept).
pub async fn delete(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id)): PathParams<(String, String, String)>,
) -> ApiResult<Json<DeleteResponse>> {
    let id = config_id(&ns, &group, &data_id)?;
    delete_config(&st.node, st.config.history_retention, &caller, &id)
        .await
        .map(Json)
}

async fn delete_config(
    node: &Node,
    retention: u64,
    caller: &Caller,
    id: &ConfigId,
) -> ApiResult<DeleteResponse> {
    let caller = caller.clone();
    let id = id.clone();
    let who = node.authenticate_caller(&caller)?;
    let author = who.map(|w| w.user).unwrap_or_default();
    for _ in 0..WRITE_ATTEMPTS {
        let cur = read_current(node, &caller, &id).await?;
        let (content, _) = etcd::get(node, &caller, &id.content_key(), 0).await?;
        if content.is_none() && cur.meta.is_none() {
            return Err(not_found(&id));
        }
        let text = content.as_ref().map(content_string).unwrap_or_default();
        let version = cur.version + 1;
        let entry = ConfigHistoryEntry {
            version,
            md5: md5_hex(text.as_bytes()),
            content: text,
            format: cur.meta.as_ref().map_or_else(
                || ConfigFormat::from_data_id(&id.data_id).unwrap_or_default(),
                |m| m.format,
            ),
            author: author.clone(),
            time: etcd::now_ms(),
            op: HistoryOp::Delete,
            rolled_back_from: None,
            ..Default::default()
        };
        let mut ops = vec![
            etcd::delete_op(id.content_key(), Vec::new()),
            etcd::delete_op(id.meta_key(), Vec::new()),
            etcd::put_op(id.history_key(version), to_json(&entry)?),
        ];
        ops.extend(trim_op(&id, version, retention));
        let content_rev = content.as_ref().map_or(0, |kv| kv.mod_revision);
        let resp = etcd::txn(
            node,
            &caller,
            vec![
                etcd::mod_revision_is(id.meta_key(), cur.meta_rev),
                etcd::mod_revision_is(id.content_key(), content_rev),
            ],
            ops,
        )
        .await?;
        if resp.succeeded {
            return Ok(DeleteResponse {
                namespace: id.namespace,
                group: id.group,
                data_id: id.data_id,
                version,
                revision: etcd::txn_revision(&resp),
            });
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        "the config kept changing while it was deleted; try again",
    ))
}

async fn read_version(
    st: &AppState,
    caller: &Caller,
    id: &ConfigId,
    version: u64,
) -> ApiResult<ConfigHistoryEntry> {
    let (kv, _) = etcd::get(&st.node, caller, &id.history_key(version), 0).await?;
    let kv = kv.ok_or_else(|| {
        ApiError::not_found(format!(
            "version {version} of {}/{}/{} is not in history (the last {} versions are kept)",
            id.namespace, id.group, id.data_id, st.config.history_retention
        ))
    })?;
    serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::new(
            ErrorCode::Conflict,
            format!("history entry {version} is not valid: {e}"),
        )
    })
}

/// `GET …/history?limit=`: versions, newest first, without content.
pub async fn history(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id)): PathParams<(String, String, String)>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> ApiResult<Json<HistoryList>> {
    let id = config_id(&ns, &group, &data_id)?;
    let resp = etcd::range_prefix(&st.node, &caller, &id.history_prefix(), 0, false).await?;
    let mut versions: Vec<HistorySummary> = resp
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<ConfigHistoryEntry>(&kv.value).ok())
        .map(|e| HistorySummary {
            version: e.version,
            op: e.op,
            format: e.format,
            size: e.content.len(),
            md5: e.md5,
            author: e.author,
            time: e.time,
            rolled_back_from: e.rolled_back_from,
            gray: e.gray,
        })
        .collect();
    versions.reverse();
    if let Some(limit) = q.limit {
        versions.truncate(limit);
    }
    Ok(Json(HistoryList {
        revision: etcd::revision_of(&resp),
        retention: st.config.history_retention,
        versions,
    }))
}

/// `GET …/history/{version}`: one version with its content.
pub async fn history_version(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id, version)): PathParams<(String, String, String, u64)>,
) -> ApiResult<Json<HistoryVersion>> {
    let id = config_id(&ns, &group, &data_id)?;
    let entry = read_version(&st, &caller, &id, version).await?;
    Ok(Json(HistoryVersion {
        namespace: id.namespace,
        group: id.group,
        data_id: id.data_id,
        entry,
    }))
}

/// `GET …/diff?from=&to=`: a unified diff of two versions' content.
pub async fn diff(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((ns, group, data_id)): PathParams<(String, String, String)>,
    QueryParams(q): QueryParams<DiffQuery>,
) -> ApiResult<Json<DiffResponse>> {
    let id = config_id(&ns, &group, &data_id)?;
    let to = match q.to {
        Some(v) => v,
        None => read_current(&st.node, &caller, &id).await?.version,
    };
    let a = read_version(&st, &caller, &id, q.from).await?;
    let b = read_version(&st, &caller, &id, to).await?;
    let identical = a.content == b.content;
    let diff = if identical {
        String::new()
    } else {
        similar::TextDiff::from_lines(&a.content, &b.content)
            .unified_diff()
            .context_radius(3)
            .header(
                &format!("{}@{}", id.data_id, q.from),
                &format!("{}@{}", id.data_id, to),
            )
            .to_string()
    };
    Ok(Json(DiffResponse {
        from: q.from,
        to,
        identical,
        diff,
    }))
}
