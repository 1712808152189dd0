//! Nacos config history (`/nacos/v1/cs/history`) on Mast's `/config-history/…` keys: one
//! item per version, newest first, its id the version number. Unlike Nacos — whose history
//! row for an update holds the content *before* it — each item holds the content *of* its
//! version (what `/mast/v1` history shows); the operation is `I` for a first publish (or the
//! first after a delete), `U` for later publishes and rollbacks, `D` for a delete.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use mast_model::{ConfigHistoryEntry, ConfigId, HistoryOp};
use mast_registry::etcd;
use mast_server::authz::Caller;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::NacosCaller;
use crate::config_v1::id_of;
use crate::error::{NacosError, NacosResult};
use crate::params::Params;

async fn versions(
    st: &AppState,
    caller: &Caller,
    had_token: bool,
    id: &ConfigId,
) -> NacosResult<Vec<ConfigHistoryEntry>> {
    let resp = etcd::range_prefix(&st.node, caller, &id.history_prefix(), 0, false)
        .await
        .map_err(|e| NacosError::from_api(e, had_token))?;
    let mut v: Vec<ConfigHistoryEntry> = resp
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    v.reverse();
    Ok(v)
}

/// The Nacos op letter of `e`, given the version before it (`None`: the first kept).
fn op_of(e: &ConfigHistoryEntry, before: Option<&ConfigHistoryEntry>) -> &'static str {
    match e.op {
        HistoryOp::Delete => "D",
        _ if before.is_none_or(|b| b.op == HistoryOp::Delete) => "I",
        _ => "U",
    }
}

fn item(id: &ConfigId, tenant: &str, e: &ConfigHistoryEntry, op: &str, content: bool) -> Value {
    json!({
        "id": e.version.to_string(),
        "lastId": -1,
        "dataId": id.data_id,
        "group": id.group,
        "tenant": tenant,
        "appName": "",
        "md5": e.md5,
        "content": if content { Value::String(e.content.clone()) } else { Value::Null },
        "srcIp": "",
        "srcUser": e.author,
        "opType": op,
        "createdTime": e.time,
        "lastModifiedTime": e.time,
    })
}

fn config_of(p: &Params) -> NacosResult<(ConfigId, String)> {
    let tenant = p.get("tenant").unwrap_or("").to_string();
    let id = id_of(p.required("dataId")?, p.required("group")?, &tenant)?;
    Ok((id, tenant))
}

/// `GET /nacos/v1/cs/history?search=accurate&dataId=&group=&tenant=&pageNo=&pageSize=`: one
/// page of versions, newest first (`{"totalCount","pageNumber","pagesAvailable",
/// "pageItems"}`); with `nid=`: that version, with its content.
///
/// # Errors
/// 404 for an unknown `nid`; Nacos's parameter errors.
pub async fn history(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (id, tenant) = config_of(&p)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    let all = versions(&st, &caller, had_token, &id).await?;
    let op_at = |i: usize| op_of(&all[i], all.get(i + 1));
    if let Some(nid) = p.opt("nid") {
        let nid: u64 = nid
            .parse()
            .map_err(|_| NacosError::caused(format!("For input string: \"{nid}\"")))?;
        let Some(i) = all.iter().position(|e| e.version == nid) else {
            return Err(NacosError::NotFound(format!(
                "history {nid} of {} not found (the last versions are kept)",
                id.data_id
            )));
        };
        return Ok(Json(item(&id, &tenant, &all[i], op_at(i), true)).into_response());
    }
    let page_no = p
        .opt("pageNo")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let page_size = p
        .opt("pageSize")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 500);
    let items: Vec<Value> = (0..all.len())
        .skip((page_no - 1) * page_size)
        .take(page_size)
        .map(|i| item(&id, &tenant, &all[i], op_at(i), false))
        .collect();
    Ok(Json(json!({
        "totalCount": all.len(),
        "pageNumber": page_no,
        "pagesAvailable": all.len().div_ceil(page_size),
        "pageItems": items,
    }))
    .into_response())
}

/// `GET /nacos/v1/cs/history/previous?id=&dataId=&group=&tenant=`: the version before `id`,
/// with its content.
///
/// # Errors
/// 404 when there is none kept.
pub async fn previous(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (id, tenant) = config_of(&p)?;
    let raw = p.required("id")?;
    let at: u64 = raw
        .parse()
        .map_err(|_| NacosError::caused(format!("For input string: \"{raw}\"")))?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    let all = versions(&st, &caller, had_token, &id).await?;
    let Some(i) = all.iter().position(|e| e.version < at) else {
        return Err(NacosError::NotFound(format!(
            "no version of {} before {at} is kept",
            id.data_id
        )));
    };
    Ok(Json(item(
        &id,
        &tenant,
        &all[i],
        op_of(&all[i], all.get(i + 1)),
        true,
    ))
    .into_response())
}
