//! Moving configs in and out, in Nacos's zip layout so users can move from Nacos: export
//! (`GET /mast/v1/configs/export`), import (`POST /mast/v1/configs/import`) and clone to
//! another namespace (`POST /mast/v1/configs/clone`).
//!
//! The zip is what Nacos 2.x's "export (new)" writes: one entry `<group>/<dataId>` per config
//! holding its content, and `.metadata.yml` listing each config's `group`, `dataId`, `type`
//! (format) and `desc` (description) under `metadata:`. An import also takes a zip without
//! `.metadata.yml` (formats then follow the data ids' extensions, as a publish without one).
//!
//! Every config written goes through the same publish as `PUT /mast/v1/configs/…` (format and
//! schema checks, a history entry, the caller's permissions), so an import can store nothing
//! that a publish would refuse.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use mast_model::config::{CONTENT_PREFIX, META_PREFIX};
use mast_model::{ConfigFormat, ConfigId, ConfigMeta, HistoryOp};
use serde::{Deserialize, Serialize};

use crate::configs::{Publish, publish_version, read_current};
use crate::error::{ApiError, ApiResult, Call, ErrorCode, JsonBody, QueryParams};
use crate::{AppState, etcd};
use mast_server::authz::Caller;

/// Nacos's metadata entry in an export (`Constants.CONFIG_EXPORT_METADATA_NEW`).
pub const METADATA_ENTRY: &str = ".metadata.yml";

/// Most entries one import may hold.
pub const MAX_ENTRIES: usize = 10_000;

/// Most bytes one unpacked entry may hold.
const MAX_ENTRY_BYTES: u64 = 16 << 20;

/// `.metadata.yml`: Nacos's `ConfigMetadata`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Metadata {
    #[serde(default)]
    metadata: Vec<MetadataItem>,
}

/// Nacos's `ConfigMetadata.ConfigExportItem`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataItem {
    group: String,
    data_id: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    desc: Option<String>,
}

/// Which configs an export or a clone takes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selection {
    /// The namespace (default `public`).
    pub namespace: Option<String>,
    /// Only this group.
    pub group: Option<String>,
    /// Only data ids starting with this text.
    pub data_id_prefix: Option<String>,
}

/// One config read for an export or a clone.
struct Item {
    id: ConfigId,
    content: Vec<u8>,
    meta: Option<ConfigMeta>,
}

async fn select(st: &AppState, caller: &Caller, s: &Selection) -> ApiResult<Vec<Item>> {
    let ns = s
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| mast_model::config::DEFAULT_NAMESPACE.to_string());
    mast_model::check_name("namespace", &ns)?;
    let suffix = match s.group.as_deref().filter(|g| !g.is_empty()) {
        Some(g) => {
            mast_model::check_name("group", g)?;
            format!("{ns}/{g}/")
        }
        None => format!("{ns}/"),
    };
    let contents = etcd::range_prefix(
        &st.node,
        caller,
        &format!("{CONTENT_PREFIX}{suffix}"),
        0,
        false,
    )
    .await?;
    let revision = etcd::revision_of(&contents);
    let metas = etcd::range_prefix(
        &st.node,
        caller,
        &format!("{META_PREFIX}{suffix}"),
        revision,
        false,
    )
    .await?;
    let mut metas: BTreeMap<ConfigId, ConfigMeta> = metas
        .kvs
        .iter()
        .filter_map(|kv| {
            let (id, _) = ConfigId::parse_key(&kv.key)?;
            Some((id, serde_json::from_slice(&kv.value).ok()?))
        })
        .collect();
    Ok(contents
        .kvs
        .into_iter()
        .filter_map(|kv| {
            let (id, _) = ConfigId::parse_key(&kv.key)?;
            let wanted = s
                .data_id_prefix
                .as_deref()
                .is_none_or(|p| id.data_id.starts_with(p));
            wanted.then(|| Item {
                meta: metas.remove(&id),
                id,
                content: kv.value.to_vec(),
            })
        })
        .collect())
}

/// `GET /mast/v1/configs/export?namespace=&group=&dataIdPrefix=`: the selected configs as a
/// Nacos export zip (`nacos_config_export_<namespace>.zip`).
///
/// # Errors
/// 400 for a bad namespace or group; auth errors; 500 if the zip cannot be written.
pub async fn export(
    State(st): State<AppState>,
    Call(caller): Call,
    QueryParams(s): QueryParams<Selection>,
) -> ApiResult<Response> {
    let items = select(&st, &caller, &s).await?;
    let ns = items
        .first()
        .map(|i| i.id.namespace.clone())
        .unwrap_or_else(|| s.namespace.clone().unwrap_or_default());
    let zip = tokio::task::spawn_blocking(move || write_zip(&items)).await??;
    let name = format!(
        "nacos_config_export_{}.zip",
        if ns.is_empty() { "public" } else { &ns }
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        zip,
    )
        .into_response())
}

fn write_zip(items: &[Item]) -> ApiResult<Vec<u8>> {
    let failed =
        |e: &dyn std::fmt::Display| ApiError::internal(format!("writing the zip failed: {e}"));
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut metadata = Metadata::default();
    for it in items {
        zip.start_file(format!("{}/{}", it.id.group, it.id.data_id), opts)
            .map_err(|e| failed(&e))?;
        zip.write_all(&it.content).map_err(|e| failed(&e))?;
        metadata.metadata.push(MetadataItem {
            group: it.id.group.clone(),
            data_id: it.id.data_id.clone(),
            kind: it.meta.as_ref().map(|m| m.format.name().to_string()),
            app_name: None,
            desc: it
                .meta
                .as_ref()
                .map(|m| m.description.clone())
                .filter(|d| !d.is_empty()),
        });
    }
    zip.start_file(METADATA_ENTRY, opts)
        .map_err(|e| failed(&e))?;
    let yaml = serde_norway::to_string(&metadata).map_err(|e| failed(&e))?;
    zip.write_all(yaml.as_bytes()).map_err(|e| failed(&e))?;
    Ok(zip.finish().map_err(|e| failed(&e))?.into_inner())
}

/// What to do with a config that already exists (Nacos's `SameConfigPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Import nothing when any config exists already (409 naming them).
    #[default]
    Abort,
    /// Leave existing configs as they are.
    Skip,
    /// Publish a new version of existing configs.
    Overwrite,
}

/// `POST /mast/v1/configs/import` query.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportQuery {
    /// Target namespace (default `public`).
    pub namespace: Option<String>,
    /// `abort` (default), `skip` or `overwrite`.
    #[serde(default)]
    pub policy: Policy,
}

/// `POST /mast/v1/configs/clone` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloneRequest {
    /// What to copy.
    pub from: Selection,
    /// Into which namespace.
    pub to_namespace: String,
    /// `abort` (default), `skip` or `overwrite`.
    #[serde(default)]
    pub policy: Policy,
}

/// One config an import or clone did not write.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// Group.
    pub group: String,
    /// Data id.
    pub data_id: String,
    /// Why.
    pub error: String,
}

/// Import and clone answer.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportResult {
    /// Configs written (a new config or a new version).
    pub succeeded: usize,
    /// Configs left alone because they exist (policy `skip`): `group/dataId`.
    pub skipped: Vec<String>,
    /// Configs refused (invalid name, content or schema; permission).
    pub failed: Vec<Failure>,
}

/// One config to write: where, what, its format and description when known.
struct Incoming {
    group: String,
    data_id: String,
    content: String,
    format: Option<ConfigFormat>,
    description: Option<String>,
}

fn read_zip(body: &[u8]) -> ApiResult<Vec<Incoming>> {
    let bad = |m: String| ApiError::bad_request(format!("not a config export zip: {m}"));
    let mut zip = zip::ZipArchive::new(Cursor::new(body)).map_err(|e| bad(e.to_string()))?;
    if zip.len() > MAX_ENTRIES + 1 {
        return Err(bad(format!(
            "{} entries; at most {MAX_ENTRIES} configs",
            zip.len()
        )));
    }
    let mut metadata = Metadata::default();
    let mut files = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        if f.is_dir() {
            continue;
        }
        let name = f.name().map_err(|e| bad(e.to_string()))?.to_string();
        let mut buf = Vec::new();
        (&mut f)
            .take(MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        if buf.len() as u64 > MAX_ENTRY_BYTES {
            return Err(bad(format!(
                "{name} is larger than {MAX_ENTRY_BYTES} bytes"
            )));
        }
        if name == METADATA_ENTRY {
            metadata = serde_norway::from_slice(&buf)
                .map_err(|e| bad(format!("{METADATA_ENTRY}: {e}")))?;
            continue;
        }
        // Nacos 1.x's `.meta.yml` (app names only) carries nothing Mast keeps.
        if name.ends_with(".meta.yml") {
            continue;
        }
        let Some((group, data_id)) = name.split_once('/') else {
            return Err(bad(format!("entry {name:?} is not <group>/<dataId>")));
        };
        let content = String::from_utf8(buf).map_err(|_| bad(format!("{name} is not UTF-8")))?;
        files.push((group.to_string(), data_id.to_string(), content));
    }
    let meta: BTreeMap<(String, String), MetadataItem> = metadata
        .metadata
        .into_iter()
        .map(|m| ((m.group.clone(), m.data_id.clone()), m))
        .collect();
    Ok(files
        .into_iter()
        .map(|(group, data_id, content)| {
            let m = meta.get(&(group.clone(), data_id.clone()));
            Incoming {
                format: m
                    .and_then(|m| m.kind.as_deref())
                    .and_then(|k| k.parse().ok()),
                description: m.and_then(|m| m.desc.clone()),
                group,
                data_id,
                content,
            }
        })
        .collect())
}

/// Writes `items` into `namespace` under `policy`.
async fn write_all(
    st: &AppState,
    caller: &Caller,
    namespace: &str,
    policy: Policy,
    items: Vec<Incoming>,
) -> ApiResult<ImportResult> {
    let mut result = ImportResult::default();
    let mut ready = Vec::new();
    let mut exists = Vec::new();
    for it in items {
        match ConfigId::new(namespace, &it.group, &it.data_id) {
            Err(e) => result.failed.push(Failure {
                group: it.group,
                data_id: it.data_id,
                error: e.to_string(),
            }),
            Ok(id) => {
                let cur = read_current(&st.node, caller, &id).await?;
                if cur.meta.is_some() {
                    exists.push(format!("{}/{}", id.group, id.data_id));
                    if policy == Policy::Skip {
                        result.skipped.push(format!("{}/{}", id.group, id.data_id));
                        continue;
                    }
                }
                ready.push((id, it));
            }
        }
    }
    if policy == Policy::Abort && !exists.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "{} configs exist in {namespace} already ({}{}); nothing was imported \
                 (policy skip or overwrite imports anyway)",
                exists.len(),
                exists
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if exists.len() > 5 { ", …" } else { "" }
            ),
        ));
    }
    for (id, it) in ready {
        let p = Publish {
            content: it.content,
            format: it.format,
            description: it.description,
            op: HistoryOp::Publish,
            ..Default::default()
        };
        match publish_version(&st.node, st.config.history_retention, caller, &id, p).await {
            Ok(_) => result.succeeded += 1,
            Err(e) => result.failed.push(Failure {
                group: id.group,
                data_id: id.data_id,
                error: e.message,
            }),
        }
    }
    Ok(result)
}

/// `POST /mast/v1/configs/import?namespace=&policy=abort|skip|overwrite`, the body a Nacos
/// export zip: publishes each config in it (a new version of an existing one with
/// `overwrite`).
///
/// # Errors
/// 400 for a body that is not such a zip or a bad namespace; 409 with `abort` when any config
/// exists (nothing is written); auth errors. Configs refused one by one are listed in
/// `failed`.
pub async fn import(
    State(st): State<AppState>,
    Call(caller): Call,
    QueryParams(q): QueryParams<ImportQuery>,
    body: bytes::Bytes,
) -> ApiResult<Json<ImportResult>> {
    let ns = q
        .namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| mast_model::config::DEFAULT_NAMESPACE.to_string());
    mast_model::check_name("namespace", &ns)?;
    let items = tokio::task::spawn_blocking(move || read_zip(&body)).await??;
    write_all(&st, &caller, &ns, q.policy, items)
        .await
        .map(Json)
}

/// `POST /mast/v1/configs/clone` `{"from": {"namespace", "group"?, "dataIdPrefix"?},
/// "toNamespace", "policy"?}`: copies the selected configs (content, format, description)
/// into another namespace, as Nacos's clone.
///
/// # Errors
/// 400 for bad names or the same namespace on both sides; 409 with `abort` when any config
/// exists in the target; auth errors.
pub async fn clone(
    State(st): State<AppState>,
    Call(caller): Call,
    JsonBody(r): JsonBody<CloneRequest>,
) -> ApiResult<Json<ImportResult>> {
    mast_model::check_name("namespace", &r.to_namespace)?;
    let from_ns = r
        .from
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| mast_model::config::DEFAULT_NAMESPACE.to_string());
    if from_ns == r.to_namespace {
        return Err(ApiError::bad_request(
            "toNamespace must differ from the source namespace",
        ));
    }
    let items = select(&st, &caller, &r.from)
        .await?
        .into_iter()
        .map(|it| Incoming {
            content: String::from_utf8_lossy(&it.content).into_owned(),
            format: it.meta.as_ref().map(|m| m.format),
            description: it.meta.map(|m| m.description).filter(|d| !d.is_empty()),
            group: it.id.group,
            data_id: it.id.data_id,
        })
        .collect();
    write_all(&st, &caller, &r.to_namespace, r.policy, items)
        .await
        .map(Json)
}
