//! Naming over the Nacos 2.x protocol: instance register / deregister (one, a batch, or
//! persistent), service query, subscribe and list, on the same instance keys as the v1 API.
//! An ephemeral instance registered over gRPC is attached to its connection's lease, so it
//! lives while the client is connected. `NotifySubscriberRequest` is pushed to every
//! connection subscribed to a service a commit touched.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use mast_model::{
    SERVICE_META_PREFIX, SERVICES_PREFIX, ServiceName, instance_key, parse_instance_key,
    service_prefix,
};
use mast_proto::etcdserverpb::{DeleteRangeRequest, RangeRequest};
use mast_server::api::kv;
use mast_server::authz::Caller;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::conn::{Conn, Connections};
use super::{Incoming, Outcome, failed, response};
use crate::AppState;
use crate::error::{NacosError, NacosResult};
use crate::naming_v1::{self, InstanceParams};

/// Answers one naming request.
pub async fn handle(
    st: &AppState,
    _conns: &Arc<Connections>,
    conn: Option<Arc<Conn>>,
    base: &Caller,
    req: &Incoming,
) -> mast_proto::nacospb::Payload {
    let caller = req.caller(base);
    let rid = req.request_id();
    if let Some(c) = &conn {
        c.seen(&caller);
    }
    let (kind, result) = match req.kind.as_str() {
        "InstanceRequest" => (
            "InstanceResponse",
            instance(st, conn, &caller, req, false).await,
        ),
        "BatchInstanceRequest" => ("BatchInstanceResponse", batch(st, conn, &caller, req).await),
        "PersistentInstanceRequest" => (
            "InstanceResponse",
            instance(st, conn, &caller, req, true).await,
        ),
        "ServiceQueryRequest" => ("QueryServiceResponse", query(st, &caller, req).await),
        "SubscribeServiceRequest" => (
            "SubscribeServiceResponse",
            subscribe(st, conn, &caller, req).await,
        ),
        "ServiceListRequest" => ("ServiceListResponse", list(st, &caller, req).await),
        other => (
            "ErrorResponse",
            Err(NacosError::NotImplemented(format!(
                "Mast does not serve {other} (README: Nacos clients)"
            ))),
        ),
    };
    match result {
        Ok(extra) => response(kind, Outcome::ok(rid), extra),
        Err(e) => failed(kind, rid, &e, caller.token.is_some()),
    }
}

fn bad(message: impl Into<String>) -> NacosError {
    NacosError::BadRequest(message.into())
}

/// The service a request names: `namespace`, `groupName`, `serviceName` (possibly grouped).
fn service_of(req: &Incoming) -> NacosResult<ServiceName> {
    let raw = req.str("serviceName");
    if raw.is_empty() {
        return Err(bad("Param 'serviceName' is required."));
    }
    naming_v1::service_name(req.str("namespace"), req.str("groupName"), raw)
}

/// An instance as a request's JSON describes it.
fn instance_of(v: &Value, ephemeral_default: bool) -> NacosResult<InstanceParams> {
    let ip = v
        .get("ip")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ip.is_empty() {
        return Err(bad("Param 'ip' is required."));
    }
    naming_v1::check_ip(&ip)?;
    let port = v
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| bad("Param 'port' is illegal, the value should be between 0 and 65535."))?;
    let cluster = v
        .get("clusterName")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .unwrap_or(naming_v1::DEFAULT_CLUSTER)
        .to_string();
    naming_v1::check_cluster(&cluster)?;
    let weight = v.get("weight").and_then(Value::as_f64).unwrap_or(1.0);
    if !(0.0..=10_000.0).contains(&weight) {
        return Err(bad(
            "instance format invalid: The weights range from 0.0 to 10000.0",
        ));
    }
    let flag = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
    let metadata: BTreeMap<String, String> = v
        .get("metadata")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(InstanceParams {
        ip,
        port,
        cluster,
        weight,
        healthy: flag("healthy", true),
        enabled: flag("enabled", true),
        ephemeral: flag("ephemeral", ephemeral_default),
        metadata,
    })
}

fn need_conn(conn: Option<Arc<Conn>>) -> NacosResult<Arc<Conn>> {
    conn.ok_or_else(|| NacosError::Unavailable("Connection is unregistered.".into()))
}

/// Registers `inst`: an ephemeral one on its connection's lease, a persistent one without.
async fn register(
    st: &AppState,
    conn: Option<&Arc<Conn>>,
    caller: &Caller,
    svc: &ServiceName,
    inst: &InstanceParams,
) -> NacosResult<()> {
    let lease = match conn {
        _ if !inst.ephemeral => None,
        Some(c) => Some(c.lease(&st.node, caller).await?),
        None => {
            return Err(NacosError::Unavailable(
                "Connection is unregistered.".into(),
            ));
        }
    };
    naming_v1::put_instance(&st.node, caller, svc, inst, lease).await?;
    Ok(())
}

async fn deregister(
    st: &AppState,
    caller: &Caller,
    svc: &ServiceName,
    inst: &InstanceParams,
) -> NacosResult<()> {
    let key = instance_key(
        &svc.segment(),
        &naming_v1::instance_id(&inst.ip, inst.port, &inst.cluster),
    );
    kv::delete_range(
        &st.node,
        caller,
        DeleteRangeRequest {
            key: key.into_bytes().into(),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// `InstanceRequest` (ephemeral by default) and `PersistentInstanceRequest` (`persistent`):
/// register or deregister one instance.
async fn instance(
    st: &AppState,
    conn: Option<Arc<Conn>>,
    caller: &Caller,
    req: &Incoming,
    persistent: bool,
) -> NacosResult<Value> {
    let svc = service_of(req)?;
    let mut inst = instance_of(
        req.body.get("instance").unwrap_or(&Value::Null),
        !persistent,
    )?;
    inst.ephemeral &= !persistent;
    let kind = req.str("type");
    match kind {
        "registerInstance" => register(st, conn.as_ref(), caller, &svc, &inst).await?,
        // Java says deRegisterInstance, Python deregisterInstance.
        k if k.eq_ignore_ascii_case("deRegisterInstance") => {
            deregister(st, caller, &svc, &inst).await?
        }
        other => return Err(bad(format!("Unsupported request type {other}"))),
    }
    Ok(json!({ "type": kind }))
}

async fn batch(
    st: &AppState,
    conn: Option<Arc<Conn>>,
    caller: &Caller,
    req: &Incoming,
) -> NacosResult<Value> {
    let svc = service_of(req)?;
    let instances = req
        .body
        .get("instances")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parsed: Vec<InstanceParams> = instances
        .iter()
        .map(|v| instance_of(v, true))
        .collect::<NacosResult<_>>()?;
    for inst in &parsed {
        register(st, conn.as_ref(), caller, &svc, inst).await?;
    }
    if let Some(conn) = &conn {
        drop_unnamed(st, conn, caller, &svc, &parsed).await?;
    }
    Ok(json!({ "type": req.str("type") }))
}

/// As Nacos 2.x's batch register: a batch is the connection's whole set of ephemeral instances
/// of the service, so those it registered before and no longer names are deregistered.
async fn drop_unnamed(
    st: &AppState,
    conn: &Arc<Conn>,
    caller: &Caller,
    svc: &ServiceName,
    named: &[InstanceParams],
) -> NacosResult<()> {
    let lease = conn.lease(&st.node, caller).await?;
    let keep: HashSet<String> = named
        .iter()
        .map(|i| {
            instance_key(
                &svc.segment(),
                &naming_v1::instance_id(&i.ip, i.port, &i.cluster),
            )
        })
        .collect();
    let prefix = service_prefix(&svc.segment()).into_bytes();
    let mut range_end = prefix.clone();
    if let Some(last) = range_end.last_mut() {
        *last += 1; // '/' + 1: the end of the prefix range
    }
    let owned = kv::range(
        &st.node,
        caller,
        RangeRequest {
            key: prefix.into(),
            range_end: range_end.into(),
            keys_only: true,
            ..Default::default()
        },
    )
    .await?;
    for kv in owned.kvs {
        if kv.lease != lease || keep.contains(String::from_utf8_lossy(&kv.key).as_ref()) {
            continue;
        }
        kv::delete_range(
            &st.node,
            caller,
            DeleteRangeRequest {
                key: kv.key,
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(())
}

async fn service_info(
    st: &AppState,
    caller: &Caller,
    svc: &ServiceName,
    clusters: &str,
    healthy_only: bool,
) -> NacosResult<Value> {
    let mut info = naming_v1::list_service(&st.node, caller, svc, clusters, healthy_only).await?;
    // In the 2.x protocol a service's name is without its group.
    info.name = svc.name.clone();
    let mut v = serde_json::to_value(&info).map_err(|e| NacosError::Internal(e.to_string()))?;
    // Python clients read `allIps`.
    if let Value::Object(m) = &mut v {
        m.insert("allIps".into(), Value::Bool(false));
    }
    Ok(v)
}

async fn query(st: &AppState, caller: &Caller, req: &Incoming) -> NacosResult<Value> {
    let svc = service_of(req)?;
    // Java sends healthyOnly, Python healthOnly.
    let healthy_only = ["healthyOnly", "healthOnly"]
        .iter()
        .find_map(|k| req.body.get(*k).and_then(Value::as_bool))
        .unwrap_or(false);
    let info = service_info(st, caller, &svc, req.str("cluster"), healthy_only).await?;
    Ok(json!({ "serviceInfo": info }))
}

async fn subscribe(
    st: &AppState,
    conn: Option<Arc<Conn>>,
    caller: &Caller,
    req: &Incoming,
) -> NacosResult<Value> {
    let svc = service_of(req)?;
    let clusters = req.str("clusters").to_string();
    let on = req
        .body
        .get("subscribe")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let info = service_info(st, caller, &svc, &clusters, false).await?;
    let conn = need_conn(conn)?;
    conn.subscribe(svc, clusters, on);
    Ok(json!({ "serviceInfo": info }))
}

async fn list(st: &AppState, caller: &Caller, req: &Incoming) -> NacosResult<Value> {
    let namespace = req.str("namespace");
    naming_v1::check_namespace(namespace)?;
    let page_no = req
        .body
        .get("pageNo")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1) as usize;
    let page_size = req
        .body
        .get("pageSize")
        .and_then(Value::as_u64)
        .unwrap_or(10) as usize;
    let names = naming_v1::service_names(&st.node, caller, namespace, req.str("groupName")).await?;
    let count = names.len();
    let page: Vec<String> = names
        .into_iter()
        .skip((page_no - 1).saturating_mul(page_size))
        .take(page_size)
        .collect();
    Ok(json!({ "count": count, "serviceNames": page }))
}

/// The service a key under `/services/` or `/service-meta/` belongs to.
fn service_of_key(key: &[u8]) -> Option<ServiceName> {
    if key.starts_with(SERVICES_PREFIX.as_bytes()) {
        return parse_instance_key(key).map(|(segment, _)| ServiceName::parse(segment));
    }
    let rest = std::str::from_utf8(key)
        .ok()?
        .strip_prefix(SERVICE_META_PREFIX)?;
    Some(ServiceName::parse(rest))
}

/// Starts the task that pushes `NotifySubscriberRequest` to the connections subscribed to a
/// service a commit changed (every subscribed service after missed commits).
pub fn start_pushes(st: &AppState, conns: &Arc<Connections>) {
    let st = st.clone();
    let conns = Arc::downgrade(conns);
    let mut rx = st.node.subscribe_commits();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = st.node.shutting_down() => return,
            };
            let Some(conns) = conns.upgrade() else { return };
            if conns.is_empty() {
                continue;
            }
            let changed: Option<Vec<ServiceName>> = match next {
                Ok(batch) if !batch.gap => {
                    let mut v: Vec<ServiceName> = batch
                        .events
                        .iter()
                        .filter_map(|e| e.kv.as_ref())
                        .filter_map(|kv| service_of_key(&kv.key))
                        .collect();
                    v.sort();
                    v.dedup();
                    Some(v)
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => None,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if changed.as_ref().is_some_and(Vec::is_empty) {
                continue;
            }
            for conn in conns.all() {
                let subs: Vec<(ServiceName, String)> = {
                    let subs = conn.subscribed.lock().unwrap_or_else(|p| p.into_inner());
                    subs.iter()
                        .filter(|(s, _)| changed.as_ref().is_none_or(|c| c.contains(s)))
                        .map(|(s, c)| (s.clone(), c.clone()))
                        .collect()
                };
                for (svc, clusters) in subs {
                    let caller = conn.caller();
                    match service_info(&st, &caller, &svc, &clusters, false).await {
                        Ok(info) => conn.push(
                            "NotifySubscriberRequest",
                            json!({
                                "namespace": svc.namespace,
                                "serviceName": svc.name,
                                "groupName": svc.group,
                                "serviceInfo": info,
                                "module": "naming",
                                "headers": {},
                            }),
                        ),
                        Err(e) => tracing::debug!(error = %e, "a naming push was skipped"),
                    }
                }
            }
        }
    });
}
