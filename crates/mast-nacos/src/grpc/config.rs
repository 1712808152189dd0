//! Configs over the Nacos 2.x protocol: query, publish, remove and batch listen, on the same
//! configs as the v1 API (the same reads and the registry's publish path), and
//! `ConfigChangeNotifyRequest` pushed to every connection listening to a config whose content
//! key a commit touched.

use std::collections::HashMap;
use std::sync::Arc;

use mast_model::{ConfigFormat, ConfigMeta, md5_hex};
use mast_registry::configs::{self, NewVersion};
use mast_registry::etcd;
use mast_server::authz::Caller;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::conn::{Conn, Connections, ListenedName};
use super::{Incoming, Outcome, failed, response};
use crate::AppState;
use crate::config_v1::id_of;
use crate::error::{NacosError, NacosResult};

/// Nacos's error code for a config that does not exist.
pub const CONFIG_NOT_FOUND: i32 = 300;

/// Answers one config request.
pub async fn handle(
    st: &AppState,
    _conns: &Arc<Connections>,
    conn: Option<Arc<Conn>>,
    base: &Caller,
    req: &Incoming,
) -> mast_proto::nacospb::Payload {
    let caller = req.caller(base);
    if let Some(c) = &conn {
        c.seen(&caller);
    }
    let rid = req.request_id();
    let (kind, result) = match req.kind.as_str() {
        "ConfigQueryRequest" => ("ConfigQueryResponse", query(st, &caller, req).await),
        "ConfigPublishRequest" => ("ConfigPublishResponse", publish(st, &caller, req).await),
        "ConfigRemoveRequest" => ("ConfigRemoveResponse", remove(st, &caller, req).await),
        "ConfigBatchListenRequest" => (
            "ConfigChangeBatchListenResponse",
            batch_listen(st, conn, &caller, req).await,
        ),
        other => (
            "ErrorResponse",
            Err(NacosError::NotImplemented(format!(
                "Mast does not serve {other} (README: Nacos clients)"
            ))),
        ),
    };
    match result {
        Ok(Ok(extra)) => response(kind, Outcome::ok(rid), extra),
        Ok(Err((code, message))) => {
            response(kind, Outcome::fail(rid, code, message), fail_body(kind))
        }
        Err(e) => failed(kind, rid, &e, caller.token.is_some()),
    }
}

/// The fields a failed response of class `kind` still carries: Nacos serializes its
/// primitive and initialized fields whatever the outcome, and clients (the Rust `nacos-sdk`)
/// require them.
fn fail_body(kind: &str) -> Value {
    match kind {
        "ConfigQueryResponse" => json!({ "lastModified": 0, "beta": false }),
        "ConfigChangeBatchListenResponse" => json!({ "changedConfigs": [] }),
        _ => json!({}),
    }
}

/// A request's answer: the body's own fields, or a Nacos error code and message.
type Answer = NacosResult<Result<Value, (i32, String)>>;

fn config_id(req: &Incoming) -> NacosResult<mast_model::ConfigId> {
    id_of(req.str("dataId"), req.str("group"), req.str("tenant"))
}

async fn query(st: &AppState, caller: &Caller, req: &Incoming) -> Answer {
    let id = config_id(req)?;
    let (content, revision) = etcd::get(&st.node, caller, &id.content_key(), 0).await?;
    let Some(content) = content else {
        return Ok(Err((CONFIG_NOT_FOUND, "config data not exist".into())));
    };
    let meta: Option<ConfigMeta> = match etcd::get(&st.node, caller, &id.meta_key(), revision).await
    {
        Ok((kv, _)) => kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()),
        Err(e) if e.code == mast_registry::ErrorCode::PermissionDenied => None,
        Err(e) => return Err(e.into()),
    };
    let kind = meta
        .as_ref()
        .map(|m| m.format)
        .or_else(|| ConfigFormat::from_data_id(&id.data_id))
        .unwrap_or_default()
        .name();
    // A client a gray release is meant for (by its address: Nacos's beta) gets its content.
    let facts = crate::config_v1::nacos_facts(caller, None);
    if let Some(g) = mast_registry::gray::gray_for(&st.node, caller, &id, &facts).await? {
        return Ok(Ok(json!({
            "content": g.content,
            "encryptedDataKey": "",
            "contentType": kind,
            "md5": g.md5,
            "lastModified": g.updated_at,
            "beta": true,
        })));
    }
    Ok(Ok(json!({
        "content": String::from_utf8_lossy(&content.value),
        "encryptedDataKey": "",
        "contentType": kind,
        "md5": md5_hex(&content.value),
        "lastModified": meta.as_ref().map_or(0, |m| m.updated_at),
        "beta": false,
    })))
}

async fn publish(st: &AppState, caller: &Caller, req: &Incoming) -> Answer {
    let id = config_id(req)?;
    let content = req.str("content");
    if content.trim().is_empty() {
        return Err(NacosError::caused(format!("content is blank : {content}")));
    }
    let addition = req.body.get("additionMap");
    let extra = |k: &str| {
        addition
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let format = match extra("type") {
        Some(t) => Some(t.parse::<ConfigFormat>().map_err(|_| {
            NacosError::caused(format!(
                "unknown config type {t} (text, json, xml, yaml, html, properties, toml)"
            ))
        })?),
        None => None,
    };
    // Compare-and-set publish: the client's md5 of what it last read must still hold.
    let cas = req.str("casMd5");
    if !cas.is_empty() {
        let (kv, _) = etcd::get(&st.node, caller, &id.content_key(), 0).await?;
        let current = kv.map(|kv| md5_hex(&kv.value)).unwrap_or_default();
        if current != cas {
            return Ok(Err((
                500,
                "Cas publish fail, server md5 may have changed.".into(),
            )));
        }
    }
    let v = NewVersion {
        content: content.to_string(),
        format,
        description: extra("desc").map(str::to_string),
        author: extra("src_user").map(str::to_string),
    };
    configs::publish_from(&st.node, st.retention, caller, &id, v).await?;
    Ok(Ok(json!({})))
}

async fn remove(st: &AppState, caller: &Caller, req: &Incoming) -> Answer {
    let id = config_id(req)?;
    match configs::delete_from(&st.node, st.retention, caller, &id).await {
        Ok(_) => Ok(Ok(json!({}))),
        Err(e) if e.code == mast_registry::ErrorCode::NotFound => Ok(Ok(json!({}))),
        Err(e) => Err(e.into()),
    }
}

async fn batch_listen(
    st: &AppState,
    conn: Option<Arc<Conn>>,
    caller: &Caller,
    req: &Incoming,
) -> Answer {
    let listen = req
        .body
        .get("listen")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let contexts = req
        .body
        .get("configListenContexts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let field = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let mut changed = Vec::new();
    let mut held = Vec::new();
    for c in &contexts {
        let name = ListenedName {
            data_id: field(c, "dataId"),
            group: field(c, "group"),
            tenant: field(c, "tenant"),
        };
        let id = id_of(&name.data_id, &name.group, &name.tenant)?;
        let key = id.content_key().into_bytes();
        if !listen {
            if let Some(conn) = &conn {
                conn.unlisten(&key);
            }
            continue;
        }
        // Read first: the caller must be allowed to read what it listens to.
        let (kv, _) = etcd::get(&st.node, caller, &id.content_key(), 0).await?;
        let facts = crate::config_v1::nacos_facts(caller, None);
        let md5 = match mast_registry::gray::gray_for(&st.node, caller, &id, &facts).await? {
            Some(g) if kv.is_some() => g.md5,
            _ => kv.map(|kv| md5_hex(&kv.value)).unwrap_or_default(),
        };
        if let Some(conn) = &conn {
            conn.listen(key, id.clone(), name.clone());
        }
        held.push((id, field(c, "md5")));
        if md5 != field(c, "md5") {
            changed.push(json!({
                "group": name.group,
                "dataId": name.data_id,
                "tenant": name.tenant,
            }));
        }
    }
    // What the client holds, for the rollout view, on the connection's lease.
    if let Some(conn) = &conn
        && held.iter().any(|(_, md5)| !md5.is_empty())
    {
        match conn.lease(&st.node, caller).await {
            Ok(lease) => {
                let client = format!("nacos-{}", conn.id);
                let addr = conn.addr.ip().to_string();
                st.reports
                    .record(&st.node, &client, &addr, lease, &held)
                    .await;
            }
            Err(e) => tracing::debug!(error = %e, "no lease for a Nacos connection's reports"),
        }
    }
    Ok(Ok(json!({ "changedConfigs": changed })))
}

/// Starts the task that pushes `ConfigChangeNotifyRequest` to the connections listening to a
/// config a commit changed (every listened config after missed commits).
pub fn start_pushes(st: &AppState, conns: &Arc<Connections>) {
    let node = st.node.clone();
    let conns = Arc::downgrade(conns);
    let mut rx = node.subscribe_commits();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = node.shutting_down() => return,
            };
            let Some(conns) = conns.upgrade() else { return };
            if conns.is_empty() {
                continue;
            }
            let keys: Option<Vec<Vec<u8>>> = match next {
                Ok(batch) if !batch.gap => Some(
                    // A config's content, or one of its gray releases, changed.
                    batch
                        .events
                        .iter()
                        .filter_map(|e| e.kv.as_ref())
                        .filter_map(|kv| mast_model::gray::content_key_of(&kv.key))
                        .collect(),
                ),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => None,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if keys.as_ref().is_some_and(Vec::is_empty) {
                continue;
            }
            // Each listened name's notification body, serialized once for every connection
            // listening to it (each gets its own `requestId` in front).
            let mut bodies: HashMap<ListenedName, Vec<u8>> = HashMap::new();
            for conn in conns.all() {
                let names: Vec<ListenedName> = {
                    let listened = conn.listened.lock().unwrap_or_else(|p| p.into_inner());
                    match &keys {
                        Some(keys) => keys
                            .iter()
                            .filter_map(|k| listened.get(k).map(|(_, n)| n.clone()))
                            .collect(),
                        None => listened.values().map(|(_, n)| n.clone()).collect(),
                    }
                };
                for n in names {
                    let body = bodies.entry(n).or_insert_with_key(|n| {
                        serde_json::to_vec(&json!({
                            "dataId": n.data_id,
                            "group": n.group,
                            "tenant": n.tenant,
                            "module": "config",
                            "headers": {},
                        }))
                        .unwrap_or_default()
                    });
                    conn.push_serialized("ConfigChangeNotifyRequest", body);
                }
            }
        }
    });
}
