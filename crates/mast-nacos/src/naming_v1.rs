//! Nacos open API v1 for naming (`/nacos/v1/ns/…`), on Mast's instances: a Nacos service is
//! a [`ServiceName`] (namespace, group, name) whose instances live at
//! `/services/<segment>/<ip>#<port>#<cluster>`, holding the same instance JSON the seeds and
//! `/mast/v1` write (`host`, `port`, `weight`, `enabled`, `metadata`, plus `cluster`,
//! `ephemeral` and, for a persistent instance, `healthy`). So an instance registered here is in
//! `discoverService`'s prefix read, and one the seeds put with etcd is in this API's list
//! (cluster `DEFAULT`, ephemeral when it has a lease).
//!
//! Ephemeral instances are kept by a lease, as etcd registrations are: registering grants one
//! of the instance's delete timeout (`preserved.ip.delete.timeout`, default 30 s), and each
//! beat is a keepalive of it. An instance whose last beat is older than its heartbeat timeout
//! (`preserved.heart.beat.timeout`, default 15 s) is listed unhealthy; when the lease expires,
//! the key goes (Nacos's "unhealthy after 15 s, removed after 30 s").

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use mast_model::{Instance, ServiceMeta, ServiceName, instance_key, parse_instance_key};
use mast_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
};
use mast_proto::mvccpb::KeyValue;
use mast_registry::{ApiError, etcd};
use mast_server::Node;
use mast_server::api::{kv, lease};
use mast_server::authz::Caller;
use serde::Serialize;

use crate::AppState;
use crate::auth::NacosCaller;
use crate::error::{NacosError, NacosResult, ServiceRefusal};
use crate::params::Params;

/// Nacos's default cluster.
pub const DEFAULT_CLUSTER: &str = "DEFAULT";
/// How often a client beats, in milliseconds (Nacos's default).
pub const HEART_BEAT_INTERVAL_MS: u64 = 5_000;
/// Beat age past which an instance is unhealthy, in milliseconds (Nacos's default).
pub const HEART_BEAT_TIMEOUT_MS: u64 = 15_000;
/// Beat age past which an instance is removed, in milliseconds (Nacos's default).
pub const IP_DELETE_TIMEOUT_MS: u64 = 30_000;
/// How long a client may keep a list before asking again, in milliseconds (`cacheMillis`).
pub const CACHE_MILLIS: u64 = 10_000;

const META_BEAT_INTERVAL: &str = "preserved.heart.beat.interval";
const META_BEAT_TIMEOUT: &str = "preserved.heart.beat.timeout";
const META_DELETE_TIMEOUT: &str = "preserved.ip.delete.timeout";

/// A naming request's 400, in Nacos's words (naming errors carry no `caused:` prefix).
fn bad(message: impl Into<String>) -> NacosError {
    NacosError::BadRequest(message.into())
}

/// A required naming parameter: absent or blank is a 400 `Param '<name>' is required.`.
fn required<'a>(p: &'a Params, name: &str) -> NacosResult<&'a str> {
    p.opt(name)
        .ok_or_else(|| bad(format!("Param '{name}' is required.")))
}

/// The service a request names: `serviceName` (possibly `group@@name`), `groupName` and
/// `namespaceId` (default `public`).
fn service_of(p: &Params) -> NacosResult<ServiceName> {
    let raw = required(p, "serviceName")?;
    service_name(
        p.opt("namespaceId").unwrap_or(""),
        p.opt("groupName").unwrap_or(""),
        raw,
    )
}

/// A service from a request's namespace, group and service name (possibly `group@@name`,
/// which wins over `group`), checked as Nacos checks them; shared by the v1 and gRPC APIs.
pub(crate) fn service_name(namespace: &str, group: &str, raw: &str) -> NacosResult<ServiceName> {
    check_namespace(namespace)?;
    let (group, name) = match raw.split_once("@@") {
        Some((g, n)) => (g, n),
        None => (group, raw),
    };
    if raw.starts_with('@') || name.contains("@@") || name.is_empty() {
        return Err(bad(
            "Param 'serviceName' is illegal, it should be format as 'groupName@@serviceName'",
        ));
    }
    if raw.contains("@@") && group.trim().is_empty() {
        return Err(bad(
            "Param 'serviceName' is illegal, groupName can't be empty",
        ));
    }
    let svc = ServiceName::new(namespace, group, name);
    // A service is one key segment: no '/', no control characters.
    mast_model::check_name("service", &svc.segment()).map_err(|e| bad(e.to_string()))?;
    if svc.group.contains(['#', '@']) {
        return Err(bad(format!(
            "Param 'groupName' is illegal, illegal characters should not appear in the param: {}",
            svc.group
        )));
    }
    Ok(svc)
}

pub(crate) fn check_namespace(ns: &str) -> NacosResult<()> {
    if ns.len() > 64 {
        return Err(bad(
            "Param 'namespaceId/tenant' is illegal, the param length should not exceed 64.",
        ));
    }
    if !ns
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(bad(
            "Param 'namespaceId/tenant' is illegal, illegal characters should not appear in the param.",
        ));
    }
    Ok(())
}

fn parse_bool(p: &Params, names: &[&str], default: bool) -> bool {
    names
        .iter()
        .find_map(|n| p.opt(n))
        .map_or(default, |v| v.eq_ignore_ascii_case("true"))
}

/// Nacos's metadata parameter: a JSON object, or `k1=v1,k2=v2`.
fn parse_metadata(raw: &str) -> NacosResult<BTreeMap<String, String>> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(BTreeMap::new());
    }
    if let Ok(map) = serde_json::from_str::<BTreeMap<String, serde_json::Value>>(raw) {
        return Ok(map
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect());
    }
    let mut out = BTreeMap::new();
    for pair in raw.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(bad(format!("metadata format incorrect:{raw}")));
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// One instance as a request describes it.
#[derive(Debug, Clone)]
pub(crate) struct InstanceParams {
    pub(crate) ip: String,
    pub(crate) port: u16,
    pub(crate) cluster: String,
    pub(crate) weight: f64,
    pub(crate) healthy: bool,
    pub(crate) enabled: bool,
    pub(crate) ephemeral: bool,
    pub(crate) metadata: BTreeMap<String, String>,
}

pub(crate) fn check_ip(ip: &str) -> NacosResult<()> {
    if ip.len() > 128 || ip.contains(|c: char| c.is_whitespace() || c == '/' || c == '#') {
        return Err(bad(
            "Param 'ip' is illegal, illegal characters should not appear in the param.",
        ));
    }
    Ok(())
}

fn parse_port(raw: &str) -> NacosResult<u16> {
    raw.trim()
        .parse::<u16>()
        .map_err(|_| bad("Param 'port' is illegal, the value should be between 0 and 65535."))
}

pub(crate) fn check_cluster(cluster: &str) -> NacosResult<()> {
    if cluster.is_empty()
        || cluster.len() > 64
        || !cluster
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(bad(format!(
            "Instance 'clusterName' should be characters with only 0-9a-zA-Z-. (current: {cluster})"
        )));
    }
    Ok(())
}

fn cluster_of(p: &Params) -> NacosResult<String> {
    let cluster = p
        .opt("clusterName")
        .or_else(|| p.opt("cluster"))
        .unwrap_or(DEFAULT_CLUSTER)
        .to_string();
    check_cluster(&cluster)?;
    Ok(cluster)
}

fn instance_params(p: &Params) -> NacosResult<InstanceParams> {
    let ip = required(p, "ip")?.to_string();
    check_ip(&ip)?;
    let port = parse_port(required(p, "port")?)?;
    let weight = match p.opt("weight") {
        Some(w) => w
            .parse::<f64>()
            .map_err(|_| bad(format!("For input string: \"{w}\"")))?,
        None => 1.0,
    };
    if !(0.0..=10_000.0).contains(&weight) {
        return Err(bad(
            "instance format invalid: The weights range from 0.0 to 10000.0",
        ));
    }
    Ok(InstanceParams {
        ip,
        port,
        cluster: cluster_of(p)?,
        weight,
        healthy: parse_bool(p, &["healthy"], true),
        enabled: parse_bool(p, &["enabled", "enable"], true),
        ephemeral: parse_bool(p, &["ephemeral"], true),
        metadata: parse_metadata(p.get("metadata").unwrap_or(""))?,
    })
}

/// The last key segment of a Nacos instance: `<ip>#<port>#<cluster>`.
pub(crate) fn instance_id(ip: &str, port: u16, cluster: &str) -> String {
    format!("{ip}#{port}#{cluster}")
}

fn millis_meta(metadata: &BTreeMap<String, String>, key: &str, default: u64) -> u64 {
    metadata
        .get(key)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

impl InstanceParams {
    fn to_instance(&self) -> Instance {
        let mut inst = Instance::new(self.ip.clone(), self.port);
        inst.weight = self.weight;
        inst.enabled = self.enabled;
        inst.metadata = self.metadata.clone();
        inst.registered_at = Some(etcd::now_ms());
        inst.extra.insert(
            "cluster".into(),
            serde_json::Value::String(self.cluster.clone()),
        );
        inst.extra
            .insert("ephemeral".into(), serde_json::Value::Bool(self.ephemeral));
        if !self.ephemeral {
            inst.extra
                .insert("healthy".into(), serde_json::Value::Bool(self.healthy));
        }
        inst
    }

    /// The lease TTL of an ephemeral instance: its delete timeout, in whole seconds (≥ 2).
    fn ttl_secs(&self) -> i64 {
        let ms = millis_meta(&self.metadata, META_DELETE_TIMEOUT, IP_DELETE_TIMEOUT_MS);
        (ms.div_ceil(1000) as i64).max(2)
    }
}

/// Revokes `lease` when no key is attached to it any more.
pub(crate) async fn revoke_if_unused(node: &Node, caller: &Caller, id: i64) {
    if id == 0 || node.lease_key_count(id) != Some(0) {
        return;
    }
    if let Err(e) = lease::revoke(node, caller, LeaseRevokeRequest { id }).await {
        tracing::debug!(lease = id, error = %e, "revoking an unused lease failed");
    }
}

/// Writes an instance: an ephemeral one with a fresh lease in the same write, a persistent
/// one without a lease; the lease of the instance it replaces is revoked when unused.
async fn write_instance(
    node: &Node,
    caller: &Caller,
    svc: &ServiceName,
    ip: &InstanceParams,
) -> Result<(), ApiError> {
    put_instance(node, caller, svc, ip, None).await
}

/// Writes an instance on `lease` (a gRPC connection's), or as [`write_instance`] does when
/// `None`; the lease of the instance it replaces is revoked when unused.
pub(crate) async fn put_instance(
    node: &Node,
    caller: &Caller,
    svc: &ServiceName,
    ip: &InstanceParams,
    lease: Option<i64>,
) -> Result<(), ApiError> {
    let segment = svc.segment();
    let id = instance_id(&ip.ip, ip.port, &ip.cluster);
    let key = instance_key(&segment, &id);
    let mut inst = ip.to_instance();
    // An operator's weight / enabled outlive the instance's own registration.
    mast_registry::overrides::apply_on_register(node, &segment, &id, &mut inst);
    let mut req = PutRequest {
        key: key.into_bytes().into(),
        value: inst.to_json().into(),
        prev_kv: true,
        ..Default::default()
    };
    let (lease_id, put) = match lease {
        Some(id) if ip.ephemeral => {
            req.lease = id;
            (id, kv::put(node, caller, req).await?)
        }
        None if ip.ephemeral => {
            let (id, _, put) = kv::put_with_new_lease(node, caller, ip.ttl_secs(), req).await?;
            (id, put)
        }
        _ => (0, kv::put(node, caller, req).await?),
    };
    if let Some(prev) = &put.prev_kv
        && prev.lease != lease_id
    {
        revoke_if_unused(node, caller, prev.lease).await;
    }
    Ok(())
}

fn ok_text() -> Response {
    ([(header::CONTENT_TYPE, "text/plain;charset=UTF-8")], "ok").into_response()
}

/// `POST /nacos/v1/ns/instance`: registers (or replaces) an instance; answers `ok`.
pub async fn register(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let svc = service_of(&p)?;
    let inst = instance_params(&p)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    write_instance(&st.node, &caller, &svc, &inst)
        .await
        .map_err(|e| NacosError::from_api(e, had_token))?;
    Ok(ok_text())
}

/// `DELETE /nacos/v1/ns/instance`: deregisters an instance (its lease goes when unused);
/// answers `ok`, also when it was not registered (as Nacos).
pub async fn deregister(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let svc = service_of(&p)?;
    let ip = required(&p, "ip")?.to_string();
    check_ip(&ip)?;
    let port = parse_port(required(&p, "port")?)?;
    let cluster = cluster_of(&p)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    let key = instance_key(&svc.segment(), &instance_id(&ip, port, &cluster));
    let resp = kv::delete_range(
        &st.node,
        &caller,
        DeleteRangeRequest {
            key: key.into_bytes().into(),
            prev_kv: true,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| NacosError::from_api(e.into(), had_token))?;
    for prev in &resp.prev_kvs {
        revoke_if_unused(&st.node, &caller, prev.lease).await;
    }
    Ok(ok_text())
}

/// `PUT /nacos/v1/ns/instance`: changes an instance's weight, enabled, metadata (and health
/// of a persistent one), keeping its lease; answers `ok`. The `weight` and `enabled` given
/// are an operator's override, as Nacos 2.x keeps console edits apart from what the
/// instance registers: they stay in force when the instance registers again, until cleared
/// through `/mast/v1` or `mast service unset` (see [`mast_registry::overrides`]).
///
/// # Errors
/// 400 `service not found, …` when the instance is not registered.
pub async fn update(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let svc = service_of(&p)?;
    let params = instance_params(&p)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    let segment = svc.segment();
    let id = instance_id(&params.ip, params.port, &params.cluster);
    let err = |e: ApiError| NacosError::from_api(e, had_token);
    let not_found = || {
        bad(format!(
            "service not found, namespace: {}, service: {}",
            svc.namespace,
            svc.grouped()
        ))
    };
    let ephemeral = match etcd::get(&st.node, &caller, &instance_key(&segment, &id), 0)
        .await
        .map_err(err)?
    {
        (Some(kv), _) => kv.lease != 0,
        (None, _) => return Err(not_found()),
    };
    let set_meta = p.get("metadata").is_some();
    let set_health = !ephemeral && p.opt("healthy").is_some();
    let edit = |inst: &mut Instance| {
        if set_meta {
            inst.metadata = params.metadata.clone();
        }
        if set_health {
            inst.extra
                .insert("healthy".into(), serde_json::Value::Bool(params.healthy));
        }
    };
    let weight = p.opt("weight").map(|_| params.weight);
    let enabled = p.opt("enabled").map(|_| params.enabled);
    let change = mast_registry::overrides::OperatorChange {
        weight,
        enabled,
        metadata: None,
    };
    match mast_registry::overrides::set(&st.node, &caller, &segment, &id, change, edit).await {
        Ok(_) => Ok(ok_text()),
        Err(e) if e.code == mast_registry::ErrorCode::NotFound => Err(not_found()),
        Err(e) if e.code == mast_registry::ErrorCode::Conflict => {
            Err(NacosError::Conflict(e.message))
        }
        Err(e) => Err(err(e)),
    }
}

/// A beat's `beat` parameter (the fields Mast uses).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Beat {
    ip: Option<String>,
    port: Option<u16>,
    cluster: Option<String>,
    weight: Option<f64>,
    metadata: BTreeMap<String, String>,
}

/// The beat answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BeatResponse {
    client_beat_interval: u64,
    code: u32,
    light_beat_enabled: bool,
}

/// Beat codes: the instance is alive / is not registered (register again).
const BEAT_OK: u32 = 10200;
const BEAT_NOT_FOUND: u32 = 20404;

/// `PUT /nacos/v1/ns/instance/beat` (`serviceName`, `beat` JSON, or `ip` / `port` /
/// `clusterName`): keeps an ephemeral instance's lease alive. An unknown instance is
/// registered from the `beat` JSON when there is one (as Nacos), else answered code 20404.
pub async fn beat(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let svc = service_of(&p)?;
    let beat: Option<Beat> = match p.opt("beat") {
        Some(raw) => Some(
            serde_json::from_str(raw).map_err(|e| bad(format!("beat is not valid JSON: {e}")))?,
        ),
        None => None,
    };
    let b = beat.as_ref();
    let ip = match b.and_then(|b| b.ip.clone()) {
        Some(ip) => ip,
        None => required(&p, "ip")?.to_string(),
    };
    check_ip(&ip)?;
    let port = match b.and_then(|b| b.port) {
        Some(port) => port,
        None => parse_port(required(&p, "port")?)?,
    };
    let cluster = match b.and_then(|b| b.cluster.clone()).filter(|c| !c.is_empty()) {
        Some(c) => c,
        None => cluster_of(&p)?,
    };
    check_cluster(&cluster)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    let err = |e: ApiError| NacosError::from_api(e, had_token);
    let key = instance_key(&svc.segment(), &instance_id(&ip, port, &cluster));
    let (kv, _) = etcd::get(&st.node, &caller, &key, 0).await.map_err(err)?;
    let mut interval = HEART_BEAT_INTERVAL_MS;
    let code = match kv {
        Some(kv) => {
            // A beat decides an instance's fate: it needs write permission on its key.
            let who = st
                .node
                .authenticate_caller(&caller)
                .map_err(|e| err(e.into()))?;
            st.node
                .check_range(&who, key.as_bytes(), &[], true)
                .map_err(|e| err(e.into()))?;
            if let Ok(inst) = Instance::from_json(&kv.value) {
                interval = millis_meta(&inst.metadata, META_BEAT_INTERVAL, interval);
            }
            if kv.lease == 0 {
                BEAT_OK
            } else {
                let resp =
                    lease::keep_alive_once(&st.node, &LeaseKeepAliveRequest { id: kv.lease })
                        .await
                        .map_err(|e| err(e.into()))?;
                if resp.ttl > 0 {
                    BEAT_OK
                } else {
                    BEAT_NOT_FOUND
                }
            }
        }
        None => match b {
            Some(b) => {
                let params = InstanceParams {
                    ip,
                    port,
                    cluster,
                    weight: b.weight.unwrap_or(1.0),
                    healthy: true,
                    enabled: true,
                    ephemeral: true,
                    metadata: b.metadata.clone(),
                };
                interval = millis_meta(&params.metadata, META_BEAT_INTERVAL, interval);
                write_instance(&st.node, &caller, &svc, &params)
                    .await
                    .map_err(err)?;
                BEAT_OK
            }
            None => BEAT_NOT_FOUND,
        },
    };
    Ok(Json(BeatResponse {
        client_beat_interval: interval,
        code,
        light_beat_enabled: true,
    })
    .into_response())
}

/// One instance in a list, in Nacos's field order.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// `ip#port#cluster#group@@service`.
    pub instance_id: String,
    /// Address.
    pub ip: String,
    /// Port.
    pub port: u16,
    /// Weight.
    pub weight: f64,
    /// Beating within its heartbeat timeout (ephemeral), or marked healthy (persistent).
    pub healthy: bool,
    /// In discovery.
    pub enabled: bool,
    /// Kept by beats (a lease) rather than stored until deleted.
    pub ephemeral: bool,
    /// Cluster.
    pub cluster_name: String,
    /// `group@@service`.
    pub service_name: String,
    /// Labels.
    pub metadata: BTreeMap<String, String>,
    /// Milliseconds between beats.
    pub instance_heart_beat_interval: u64,
    /// Always `simple`.
    pub instance_id_generator: &'static str,
    /// Milliseconds without a beat before unhealthy.
    pub instance_heart_beat_time_out: u64,
    /// Milliseconds without a beat before removal.
    pub ip_delete_timeout: u64,
}

/// A service's instances, in Nacos's field order (`ServiceInfo`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    /// `group@@service`.
    pub name: String,
    /// Group.
    pub group_name: String,
    /// The clusters asked for, as given.
    pub clusters: String,
    /// How long the client may keep this answer, in milliseconds.
    pub cache_millis: u64,
    /// Instances.
    pub hosts: Vec<Host>,
    /// When the answer was made, in milliseconds since the epoch.
    pub last_ref_time: u64,
    /// Unused (empty).
    pub checksum: String,
    /// Unused (false).
    #[serde(rename = "allIPs")]
    pub all_ips: bool,
    /// Whether the healthy share fell below the service's protection threshold.
    pub reach_protection_threshold: bool,
    /// Always true.
    pub valid: bool,
}

/// An instance key's value as a Nacos [`Host`] (`None`: not instance JSON).
pub fn host_of(node: &Node, svc: &ServiceName, kv: &KeyValue) -> Option<Host> {
    let (mut host, health) = parse_host(svc, kv)?;
    host.healthy = health.now(node);
    Some(host)
}

/// What decides whether an instance is healthy: its last beat's age (an ephemeral instance:
/// its lease and heartbeat timeout in milliseconds), or what was stored (a persistent one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Health {
    /// Persistent: the stored flag.
    Stored(bool),
    /// Ephemeral: healthy while the lease's last keepalive is younger than the timeout.
    Beat {
        /// The instance's lease.
        lease: i64,
        /// Heartbeat timeout, in milliseconds.
        timeout_ms: u64,
    },
}

impl Health {
    /// Whether the instance is healthy now.
    pub fn now(self, node: &Node) -> bool {
        match self {
            Health::Stored(h) => h,
            Health::Beat { lease, timeout_ms } => node.lease_timing(lease).is_some_and(|t| {
                // Time since the last keepalive: the granted TTL minus what is left.
                let granted_ms = t.granted_ttl.max(0) as u64 * 1000;
                let since_ms = granted_ms.saturating_sub(t.remaining_ms);
                t.remaining_ms > 0 && since_ms < timeout_ms
            }),
        }
    }
}

/// An instance key's value as a Nacos [`Host`] (its `healthy` not yet decided) and what
/// decides its health; `None`: not instance JSON.
pub fn parse_host(svc: &ServiceName, kv: &KeyValue) -> Option<(Host, Health)> {
    let inst = Instance::from_json(&kv.value).ok()?;
    let cluster = inst
        .extra
        .get("cluster")
        .and_then(|v| v.as_str())
        .unwrap_or(DEFAULT_CLUSTER)
        .to_string();
    let beat_interval = millis_meta(&inst.metadata, META_BEAT_INTERVAL, HEART_BEAT_INTERVAL_MS);
    let beat_timeout = millis_meta(&inst.metadata, META_BEAT_TIMEOUT, HEART_BEAT_TIMEOUT_MS);
    let delete_timeout = millis_meta(&inst.metadata, META_DELETE_TIMEOUT, IP_DELETE_TIMEOUT_MS);
    let ephemeral = kv.lease != 0;
    let health = if ephemeral {
        Health::Beat {
            lease: kv.lease,
            timeout_ms: beat_timeout,
        }
    } else {
        Health::Stored(
            inst.extra
                .get("healthy")
                .and_then(|v| v.as_bool())
                .unwrap_or(true),
        )
    };
    let grouped = svc.grouped();
    let host = Host {
        instance_id: format!("{}#{}#{}#{}", inst.host, inst.port, cluster, grouped),
        ip: inst.host,
        port: inst.port,
        weight: inst.weight,
        healthy: false,
        enabled: inst.enabled,
        ephemeral,
        cluster_name: cluster,
        service_name: grouped,
        metadata: inst.metadata,
        instance_heart_beat_interval: beat_interval,
        instance_id_generator: "simple",
        instance_heart_beat_time_out: beat_timeout,
        ip_delete_timeout: delete_timeout,
    };
    Some((host, health))
}

/// Every instance of `svc` as Nacos hosts, read with the caller's permissions.
pub async fn hosts_of(
    node: &Node,
    caller: &Caller,
    svc: &ServiceName,
) -> Result<Vec<Host>, ApiError> {
    let resp = etcd::range_prefix(node, caller, &svc.prefix(), 0, false).await?;
    Ok(resp
        .kvs
        .iter()
        .filter(|kv| parse_instance_key(&kv.key).is_some())
        .filter_map(|kv| host_of(node, svc, kv))
        .collect())
}

/// The list answer for `svc`: enabled hosts in `clusters` (all when empty); when the
/// healthy share is at or below `threshold` (the service's protection threshold) every one of
/// them, marked healthy, with `reachProtectionThreshold`; then only healthy ones when
/// `healthy_only`.
pub fn service_info(
    svc: &ServiceName,
    hosts: Vec<Host>,
    clusters: &str,
    healthy_only: bool,
    threshold: f64,
) -> ServiceInfo {
    let wanted: Vec<&str> = clusters
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let mut hosts: Vec<Host> = hosts
        .into_iter()
        .filter(|h| h.enabled)
        .filter(|h| wanted.is_empty() || wanted.contains(&h.cluster_name.as_str()))
        .collect();
    let healthy = hosts.iter().filter(|h| h.healthy).count();
    let protect = mast_model::reaches_protection_threshold(healthy, hosts.len(), threshold);
    if protect {
        for h in &mut hosts {
            h.healthy = true;
        }
    }
    if healthy_only {
        hosts.retain(|h| h.healthy);
    }
    ServiceInfo {
        name: svc.grouped(),
        group_name: svc.group.clone(),
        clusters: clusters.to_string(),
        cache_millis: CACHE_MILLIS,
        hosts,
        last_ref_time: etcd::now_ms(),
        checksum: String::new(),
        all_ips: false,
        reach_protection_threshold: protect,
        valid: true,
    }
}

/// The service's settings and their key's mod revision, if it has any (and the caller may
/// read them).
///
/// # Errors
/// Auth (other than a denied read) and etcd errors.
pub async fn service_meta(
    node: &Node,
    caller: &Caller,
    svc: &ServiceName,
) -> Result<Option<(ServiceMeta, i64)>, ApiError> {
    match etcd::get(node, caller, &svc.meta_key(), 0).await {
        Ok((Some(kv), _)) => Ok(serde_json::from_slice(&kv.value)
            .ok()
            .map(|m| (m, kv.mod_revision))),
        Ok((None, _)) => Ok(None),
        Err(e) if e.code == mast_registry::ErrorCode::PermissionDenied => Ok(None),
        Err(e) => Err(e),
    }
}

/// A service's list as a client sees it: its hosts under its protection threshold.
///
/// # Errors
/// Auth and etcd errors.
pub async fn list_service(
    node: &Node,
    caller: &Caller,
    svc: &ServiceName,
    clusters: &str,
    healthy_only: bool,
) -> Result<ServiceInfo, ApiError> {
    let hosts = hosts_of(node, caller, svc).await?;
    let threshold = service_meta(node, caller, svc)
        .await?
        .map_or(0.0, |(m, _)| m.protect_threshold);
    Ok(service_info(svc, hosts, clusters, healthy_only, threshold))
}

/// `GET /nacos/v1/ns/instance/list` (`serviceName`, `groupName`, `namespaceId`, `clusters`,
/// `healthyOnly`, `clientIP`, `udpPort`): the service's enabled instances as Nacos's
/// `ServiceInfo`. With `udpPort`, the client is also subscribed: changes to the service are
/// pushed to it over UDP (see [`crate::push`]).
pub async fn list(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let svc = service_of(&p)?;
    let clusters = p.get("clusters").unwrap_or("").to_string();
    let healthy_only = parse_bool(&p, &["healthyOnly"], false);
    let (caller, had_token) = who.caller(&st, &p).await?;
    let body = list_body(&st, &caller, &svc, &clusters, healthy_only)
        .await
        .map_err(|e| NacosError::from_api(e, had_token))?;
    let udp_port = p
        .opt("udpPort")
        .and_then(|v| v.parse::<u16>().ok())
        .filter(|p| *p > 0);
    if let (Some(port), Some(peer)) = (udp_port, caller.addr) {
        let ip = crate::push::push_ip(peer.ip(), p.opt("clientIP"));
        st.push.subscribe(
            std::net::SocketAddr::new(ip, port),
            svc.clone(),
            clusters.clone(),
            caller,
        );
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// The JSON of [`list_service`]'s answer. An answer made from the same instance keys (each at
/// the same mod revision), the same health of each and the same service settings is not made
/// again: its bytes are kept around `lastRefTime`, which is filled in with the time now.
async fn list_body(
    st: &AppState,
    caller: &Caller,
    svc: &ServiceName,
    clusters: &str,
    healthy_only: bool,
) -> Result<bytes::Bytes, ApiError> {
    let node = &st.node;
    let prefix = svc.prefix();
    let cache_key = format!("{prefix}\u{0}{clusters}\u{0}{healthy_only}");
    // The keys and mod revisions from the index, with the caller's permissions; a caller who
    // may not read all of it takes the reads below, which answer as etcd would.
    let prefix_end = mast_model::prefix_end(prefix.as_bytes());
    let meta_key = svc.meta_key();
    if let Ok(who) = node.authenticate_caller(caller)
        && let Ok((_, keys)) = node.range_mod_revisions(&who, prefix.as_bytes(), &prefix_end)
        && let Ok((_, metas)) = node.mod_revisions(&who, &[meta_key.as_bytes()])
        && let Some(hit) = st.list_cache.get(&cache_key, node, &keys, metas[0])
    {
        return Ok(hit);
    }
    let resp = etcd::range_prefix(node, caller, &prefix, 0, false).await?;
    let meta = service_meta(node, caller, svc).await?;
    let meta_rev = meta.as_ref().map(|(_, r)| *r);
    let read: Vec<(Vec<u8>, i64)> = resp
        .kvs
        .iter()
        .map(|kv| (kv.key.to_vec(), kv.mod_revision))
        .collect();
    if let Some(hit) = st.list_cache.get(&cache_key, node, &read, meta_rev) {
        return Ok(hit);
    }
    let mut hosts = Vec::with_capacity(resp.kvs.len());
    let mut sources = Vec::with_capacity(resp.kvs.len());
    for kv in &resp.kvs {
        let parsed = parse_instance_key(&kv.key)
            .is_some()
            .then(|| parse_host(svc, kv))
            .flatten();
        match parsed {
            Some((mut host, health)) => {
                let now = health.now(node);
                host.healthy = now;
                hosts.push(host);
                sources.push(Some((health, now)));
            }
            None => sources.push(None),
        }
    }
    let threshold = meta.map_or(0.0, |(m, _)| m.protect_threshold);
    let mut info = service_info(svc, hosts, clusters, healthy_only, threshold);
    info.last_ref_time = 0;
    let json = serde_json::to_vec(&info).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(st
        .list_cache
        .put(cache_key, &resp.kvs, sources, meta_rev, json))
}

/// One instance, as `GET /nacos/v1/ns/instance` answers it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceAnswer {
    service: String,
    ip: String,
    port: u16,
    cluster_name: String,
    weight: f64,
    healthy: bool,
    instance_id: String,
    metadata: BTreeMap<String, String>,
}

/// `GET /nacos/v1/ns/instance` (`serviceName`, `ip`, `port`, `clusterName`): one instance.
///
/// # Errors
/// 404 `no ips found for cluster …` when the service has no instance in the cluster,
/// `no matched ip found!` when none has this address.
pub async fn get_instance(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let svc = service_of(&p)?;
    let ip = required(&p, "ip")?.to_string();
    let port = parse_port(required(&p, "port")?)?;
    let cluster = cluster_of(&p)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    let hosts = hosts_of(&st.node, &caller, &svc)
        .await
        .map_err(|e| NacosError::from_api(e, had_token))?;
    let in_cluster: Vec<Host> = hosts
        .into_iter()
        .filter(|h| h.cluster_name == cluster)
        .collect();
    if in_cluster.is_empty() {
        return Err(NacosError::NotFound(format!(
            "no ips found for cluster {cluster} in service {}",
            svc.grouped()
        )));
    }
    let Some(h) = in_cluster
        .into_iter()
        .find(|h| h.ip == ip && h.port == port)
    else {
        return Err(NacosError::NotFound("no matched ip found!".into()));
    };
    Ok(Json(InstanceAnswer {
        service: h.service_name,
        ip: h.ip,
        port: h.port,
        cluster_name: h.cluster_name,
        weight: h.weight,
        healthy: h.healthy,
        instance_id: h.instance_id,
        metadata: h.metadata,
    })
    .into_response())
}

/// The services of one namespace and group that have instances, by name.
pub(crate) async fn service_names(
    node: &Node,
    caller: &Caller,
    namespace: &str,
    group: &str,
) -> Result<Vec<String>, ApiError> {
    let resp = etcd::range_prefix(node, caller, mast_model::SERVICES_PREFIX, 0, true).await?;
    let metas = etcd::range_prefix(node, caller, mast_model::SERVICE_META_PREFIX, 0, true).await?;
    let want = ServiceName::new(namespace, group, "x");
    let from_meta = metas.kvs.iter().filter_map(|kv| {
        std::str::from_utf8(&kv.key)
            .ok()?
            .strip_prefix(mast_model::SERVICE_META_PREFIX)
            .map(ServiceName::parse)
    });
    let mut names: Vec<String> = resp
        .kvs
        .iter()
        .filter_map(|kv| parse_instance_key(&kv.key))
        .map(|(segment, _)| ServiceName::parse(segment))
        .chain(from_meta)
        .filter(|s| s.namespace == want.namespace && s.group == want.group)
        .map(|s| s.name)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// `GET /nacos/v1/ns/service/list` (`pageNo`, `pageSize`, `namespaceId`, `groupName`):
/// `{"count", "doms"}` — the services with instances, by name, one page of them.
pub async fn service_list(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let page_no = required(&p, "pageNo")?
        .parse::<usize>()
        .map_err(|_| bad("Param 'pageNo' is illegal."))?
        .max(1);
    let page_size = required(&p, "pageSize")?
        .parse::<usize>()
        .map_err(|_| bad("Param 'pageSize' is illegal."))?;
    let namespace = p.opt("namespaceId").unwrap_or("");
    check_namespace(namespace)?;
    let group = p.opt("groupName").unwrap_or("");
    let (caller, had_token) = who.caller(&st, &p).await?;
    let names = service_names(&st.node, &caller, namespace, group)
        .await
        .map_err(|e| NacosError::from_api(e, had_token))?;
    let count = names.len();
    let doms: Vec<String> = names
        .into_iter()
        .skip((page_no - 1).saturating_mul(page_size))
        .take(page_size)
        .collect();
    Ok(Json(serde_json::json!({ "count": count, "doms": doms })).into_response())
}

fn parse_threshold(raw: &str) -> NacosResult<f64> {
    let t = raw
        .trim()
        .parse::<f64>()
        .map_err(|_| bad(format!("For input string: \"{raw}\"")))?;
    if !(0.0..=1.0).contains(&t) {
        return Err(bad(
            "Param 'protectThreshold' is illegal, it should be between 0 and 1.",
        ));
    }
    Ok(t)
}

fn parse_selector(p: &Params) -> NacosResult<Option<serde_json::Value>> {
    match p.opt("selector") {
        Some(raw) => serde_json::from_str(raw)
            .map(Some)
            .map_err(|_| bad(format!("selector format incorrect:{raw}"))),
        None => Ok(None),
    }
}

/// Whether the service has instances, and its settings if it has any.
async fn service_exists(
    node: &Node,
    caller: &Caller,
    svc: &ServiceName,
) -> Result<(bool, Option<(ServiceMeta, i64)>), ApiError> {
    let meta = service_meta(node, caller, svc).await?;
    let instances = etcd::range_prefix(node, caller, &svc.prefix(), 0, true)
        .await?
        .count;
    Ok((instances > 0, meta))
}

fn meta_json(meta: &ServiceMeta) -> NacosResult<Vec<u8>> {
    serde_json::to_vec(meta).map_err(|e| NacosError::Internal(e.to_string()))
}

/// `POST /nacos/v1/ns/service` (`serviceName`, `namespaceId`, `groupName`,
/// `protectThreshold`, `metadata`, `selector`): creates a service's settings at
/// `/service-meta/<segment>`; answers `ok`.
///
/// # Errors
/// 400 `specified service … already exists!` when it has instances or settings.
pub async fn create_service(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let svc = service_of(&p)?;
    let meta = ServiceMeta {
        protect_threshold: p
            .opt("protectThreshold")
            .map(parse_threshold)
            .transpose()?
            .unwrap_or(0.0),
        metadata: parse_metadata(p.get("metadata").unwrap_or(""))?,
        selector: parse_selector(&p)?,
        extra: BTreeMap::new(),
    };
    let (caller, had_token) = who.caller(&st, &p).await?;
    let err = |e: ApiError| NacosError::from_api(e, had_token);
    let exists = || {
        NacosError::Service(
            ServiceRefusal::Exists,
            format!("specified service {} already exists!", svc.grouped()),
        )
    };
    let (has_instances, old) = service_exists(&st.node, &caller, &svc).await.map_err(err)?;
    if has_instances || old.is_some() {
        return Err(exists());
    }
    let resp = etcd::txn(
        &st.node,
        &caller,
        vec![etcd::mod_revision_is(svc.meta_key(), 0)],
        vec![etcd::put_op(svc.meta_key(), meta_json(&meta)?)],
    )
    .await
    .map_err(err)?;
    if !resp.succeeded {
        return Err(exists());
    }
    Ok(ok_text())
}

/// `PUT /nacos/v1/ns/service` (`protectThreshold` required, `metadata`, `selector`): changes
/// a service's settings; answers `ok`.
///
/// # Errors
/// 400 `service … not found!` when it has neither instances nor settings.
pub async fn update_service(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let svc = service_of(&p)?;
    let threshold = parse_threshold(required(&p, "protectThreshold")?)?;
    let metadata = match p.get("metadata") {
        Some(raw) => Some(parse_metadata(raw)?),
        None => None,
    };
    let selector = parse_selector(&p)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    let err = |e: ApiError| NacosError::from_api(e, had_token);
    for _ in 0..5 {
        let (has_instances, old) = service_exists(&st.node, &caller, &svc).await.map_err(err)?;
        if !has_instances && old.is_none() {
            return Err(NacosError::Service(
                ServiceRefusal::NotFound,
                format!("service {} not found!", svc.grouped()),
            ));
        }
        let (mut meta, rev) = old.unwrap_or_default();
        meta.protect_threshold = threshold;
        if let Some(m) = &metadata {
            meta.metadata = m.clone();
        }
        if let Some(sel) = &selector {
            meta.selector = Some(sel.clone());
        }
        let resp = etcd::txn(
            &st.node,
            &caller,
            vec![etcd::mod_revision_is(svc.meta_key(), rev)],
            vec![etcd::put_op(svc.meta_key(), meta_json(&meta)?)],
        )
        .await
        .map_err(err)?;
        if resp.succeeded {
            return Ok(ok_text());
        }
    }
    Err(NacosError::Conflict(
        "the service kept changing while it was updated; try again".into(),
    ))
}

/// `DELETE /nacos/v1/ns/service`: removes a service's settings; answers `ok`.
///
/// # Errors
/// 400 when it is unknown, or still has instances (Nacos's words for both).
pub async fn delete_service(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let svc = service_of(&p)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    let err = |e: ApiError| NacosError::from_api(e, had_token);
    let (has_instances, meta) = service_exists(&st.node, &caller, &svc).await.map_err(err)?;
    if has_instances {
        return Err(NacosError::Service(
            ServiceRefusal::NotEmpty,
            format!(
                "Service {} is not empty, can't be delete. Please unregister instance first",
                svc.grouped()
            ),
        ));
    }
    let Some((_, rev)) = meta else {
        return Err(NacosError::Service(
            ServiceRefusal::NotFound,
            format!("service {} not found!", svc.grouped()),
        ));
    };
    etcd::txn(
        &st.node,
        &caller,
        vec![etcd::mod_revision_is(svc.meta_key(), rev)],
        vec![etcd::delete_op(svc.meta_key(), Vec::new())],
    )
    .await
    .map_err(err)?;
    Ok(ok_text())
}

/// `GET /nacos/v1/ns/service`: a service's settings and clusters, as Nacos's detail.
///
/// # Errors
/// 400 `service not found, …` when it has neither instances nor settings.
pub async fn get_service(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let svc = service_of(&p)?;
    let (caller, had_token) = who.caller(&st, &p).await?;
    let err = |e: ApiError| NacosError::from_api(e, had_token);
    let (has_instances, meta) = service_exists(&st.node, &caller, &svc).await.map_err(err)?;
    if !has_instances && meta.is_none() {
        return Err(NacosError::Service(
            ServiceRefusal::NotFound,
            format!(
                "service not found, namespace: {}, serviceName: {}",
                svc.namespace,
                svc.grouped()
            ),
        ));
    }
    let meta = meta.map(|(m, _)| m).unwrap_or_default();
    let hosts = hosts_of(&st.node, &caller, &svc).await.map_err(err)?;
    let mut names: Vec<String> = hosts.into_iter().map(|h| h.cluster_name).collect();
    names.sort();
    names.dedup();
    let clusters: Vec<serde_json::Value> = names
        .into_iter()
        .map(|name| {
            serde_json::json!({"name": name, "healthChecker": {"type": "TCP"}, "metadata": {}})
        })
        .collect();
    Ok(Json(serde_json::json!({
        "namespaceId": svc.namespace,
        "groupName": svc.group,
        "name": svc.name,
        "protectThreshold": meta.protect_threshold,
        "metadata": meta.metadata,
        "selector": meta.selector.unwrap_or_else(|| serde_json::json!({"type": "none"})),
        "clusters": clusters,
    }))
    .into_response())
}

/// `GET /nacos/v1/ns/operator/metrics`: `{"status": "UP"}` (clients ask it for the server's
/// status; a member that answers is up).
pub async fn metrics() -> Response {
    Json(serde_json::json!({ "status": "UP" })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Params {
        Params::parse(Some(q), None)
    }

    #[test]
    fn service_names_come_from_grouped_names_or_group_name() {
        let s = service_of(&params("serviceName=DEFAULT_GROUP%40%40orders")).unwrap();
        assert_eq!(s.segment(), "orders");
        let s = service_of(&params("serviceName=orders&groupName=PAY&namespaceId=dev")).unwrap();
        assert_eq!(s.segment(), "dev#PAY@@orders");
        for bad_q in [
            "",
            "serviceName=%40%40x",
            "serviceName=a%40%40b%40%40c",
            "serviceName=a%2Fb",
            "serviceName=s&namespaceId=d.v",
        ] {
            assert!(
                matches!(service_of(&params(bad_q)), Err(NacosError::BadRequest(_))),
                "{bad_q}"
            );
        }
    }

    #[test]
    fn metadata_is_json_or_pairs() {
        assert_eq!(
            parse_metadata(r#"{"a":"1","b":2}"#).unwrap(),
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])
        );
        assert_eq!(
            parse_metadata("a=1, b=x").unwrap(),
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "x".into())])
        );
        assert!(parse_metadata("nope").is_err());
    }

    #[test]
    fn instance_params_follow_nacos_defaults_and_limits() {
        let i = instance_params(&params("ip=10.0.0.1&port=8080")).unwrap();
        assert_eq!(
            (i.cluster.as_str(), i.weight, i.enabled, i.ephemeral),
            ("DEFAULT", 1.0, true, true)
        );
        assert_eq!(i.ttl_secs(), 30);
        for bad_q in [
            "ip=10.0.0.1",
            "port=1",
            "ip=a b&port=1",
            "ip=1.1.1.1&port=70000",
            "ip=1.1.1.1&port=1&weight=10001",
            "ip=1.1.1.1&port=1&clusterName=a.b",
        ] {
            assert!(instance_params(&params(bad_q)).is_err(), "{bad_q}");
        }
    }
}
