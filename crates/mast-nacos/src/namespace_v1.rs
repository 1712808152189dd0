//! Nacos namespaces (`/nacos/v1/console/namespaces`) on `/namespaces/<id>` keys: the public
//! namespace always exists (id `""` to Nacos clients, `public` in Mast's keys); the others are
//! created, renamed and deleted here. Deleting a namespace removes its description only:
//! configs and instances in it stay, as in Nacos.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use mast_model::config::{CONTENT_PREFIX, DEFAULT_NAMESPACE};
use mast_model::{NAMESPACE_PREFIX, NamespaceMeta, namespace_key};
use mast_registry::etcd;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::NacosCaller;
use crate::error::{NacosError, NacosResult};
use crate::params::Params;

/// Nacos's namespace quota shown in lists (Mast enforces none).
const QUOTA: u32 = 200;

fn answer(ok: bool) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        if ok { "true" } else { "false" },
    )
        .into_response()
}

/// A namespace id Nacos accepts: word characters and `-`, at most 128.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A namespace name Nacos accepts: not blank, none of `@#$%^&*`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.trim().is_empty() && !name.contains(['@', '#', '$', '%', '^', '&', '*'])
}

async fn count_configs(st: &AppState, caller: &mast_server::authz::Caller, ns: &str) -> usize {
    let prefix = format!("{CONTENT_PREFIX}{ns}/");
    etcd::range_prefix(&st.node, caller, &prefix, 0, true)
        .await
        .map(|r| r.count.max(0) as usize)
        .unwrap_or(0)
}

fn entry(id: &str, name: &str, desc: &str, count: usize, kind: u8) -> Value {
    json!({
        "namespace": id,
        "namespaceShowName": name,
        "namespaceDesc": desc,
        "quota": QUOTA,
        "configCount": count,
        "type": kind,
    })
}

/// `GET /nacos/v1/console/namespaces`: `{"code":200,"message":null,"data":[…]}` — the
/// public namespace first, then every namespace with a description, by id. With
/// `show=all&namespaceId=`: that namespace alone.
pub async fn list(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let (caller, had_token) = who.caller(&st, &p).await?;
    let resp = etcd::range_prefix(&st.node, &caller, NAMESPACE_PREFIX, 0, false)
        .await
        .map_err(|e| NacosError::from_api(e, had_token))?;
    let mut data = vec![entry(
        "",
        DEFAULT_NAMESPACE,
        "Default Namespace",
        count_configs(&st, &caller, DEFAULT_NAMESPACE).await,
        0,
    )];
    for kv in &resp.kvs {
        let Some(id) = std::str::from_utf8(&kv.key)
            .ok()
            .and_then(|k| k.strip_prefix(NAMESPACE_PREFIX))
        else {
            continue;
        };
        let meta: NamespaceMeta = serde_json::from_slice(&kv.value).unwrap_or_default();
        let count = count_configs(&st, &caller, id).await;
        data.push(entry(id, &meta.name, &meta.description, count, 2));
    }
    if p.get("show") == Some("all") {
        let want = p.get("namespaceId").unwrap_or("");
        let want = if want == DEFAULT_NAMESPACE { "" } else { want };
        return match data.into_iter().find(|d| d["namespace"] == want) {
            Some(d) => Ok(Json(d).into_response()),
            None => Err(NacosError::Internal(format!(
                "namespaceId [ {want} ] not exist"
            ))),
        };
    }
    Ok(Json(json!({ "code": 200, "message": null, "data": data })).into_response())
}

/// `POST /nacos/v1/console/namespaces` (`customNamespaceId` — blank: a random id —,
/// `namespaceName`, `namespaceDesc`): `true`, or `false` for an invalid or taken id or name
/// (as Nacos, not an error).
pub async fn create(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let id = match p.opt("customNamespaceId") {
        Some(id) => id.to_string(),
        None => random_id(),
    };
    let name = p.required("namespaceName")?;
    if !valid_id(&id) || id == DEFAULT_NAMESPACE || !valid_name(name) {
        return Ok(answer(false));
    }
    let meta = NamespaceMeta {
        name: name.to_string(),
        description: p.get("namespaceDesc").unwrap_or("").to_string(),
        extra: Default::default(),
    };
    let (caller, had_token) = who.caller(&st, &p).await?;
    let json = serde_json::to_vec(&meta).map_err(|e| NacosError::Internal(e.to_string()))?;
    let resp = etcd::txn(
        &st.node,
        &caller,
        vec![etcd::mod_revision_is(namespace_key(&id), 0)],
        vec![etcd::put_op(namespace_key(&id), json)],
    )
    .await
    .map_err(|e| NacosError::from_api(e, had_token))?;
    Ok(answer(resp.succeeded))
}

fn random_id() -> String {
    use sha2::Digest;
    let seed = format!(
        "{:?}{:?}",
        std::time::SystemTime::now(),
        std::thread::current().id()
    );
    let h = sha2::Sha256::digest(seed.as_bytes());
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `PUT /nacos/v1/console/namespaces` (`namespace`, `namespaceShowName`, `namespaceDesc`):
/// `true`, or `false` for an invalid name or an unknown namespace.
pub async fn update(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let id = p.required("namespace")?.to_string();
    let name = p.required("namespaceShowName")?;
    if !valid_name(name) {
        return Ok(answer(false));
    }
    let (caller, had_token) = who.caller(&st, &p).await?;
    let err = |e| NacosError::from_api(e, had_token);
    let (kv, _) = etcd::get(&st.node, &caller, &namespace_key(&id), 0)
        .await
        .map_err(err)?;
    let Some(kv) = kv else {
        return Ok(answer(false));
    };
    let mut meta: NamespaceMeta = serde_json::from_slice(&kv.value).unwrap_or_default();
    meta.name = name.to_string();
    if let Some(d) = p.get("namespaceDesc") {
        meta.description = d.to_string();
    }
    let json = serde_json::to_vec(&meta).map_err(|e| NacosError::Internal(e.to_string()))?;
    let resp = etcd::txn(
        &st.node,
        &caller,
        vec![etcd::mod_revision_is(namespace_key(&id), kv.mod_revision)],
        vec![etcd::put_op(namespace_key(&id), json)],
    )
    .await
    .map_err(err)?;
    Ok(answer(resp.succeeded))
}

/// `DELETE /nacos/v1/console/namespaces?namespaceId=`: removes the description; `true` also
/// when there was none.
pub async fn delete(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let id = p.required("namespaceId")?.to_string();
    let (caller, had_token) = who.caller(&st, &p).await?;
    if valid_id(&id) {
        etcd::txn(
            &st.node,
            &caller,
            vec![],
            vec![etcd::delete_op(namespace_key(&id), Vec::new())],
        )
        .await
        .map_err(|e| NacosError::from_api(e, had_token))?;
    }
    Ok(answer(true))
}
