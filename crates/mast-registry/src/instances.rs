//! Services and their instances, stored at `/services/<service>/<id>` as the seeds store them.
//!
//! - Register: a LeaseGrant (TTL from the body, default 10 s as the seeds) and a Put of the
//!   instance JSON attached to it. etcd has no way to grant a lease inside a Txn, so these are
//!   two operations; a Put that fails revokes the fresh lease. Re-registering an existing id
//!   replaces the instance, and its previous lease is revoked when no other key uses it.
//! - Heartbeat: one LeaseKeepAlive of the lease the instance's key is attached to.
//! - Update: a Txn that compares the key's mod revision and puts the new JSON keeping the
//!   lease (retried a few times when another writer got there first). A weight or enabled
//!   set this way is an operator's override, kept at `/instance-overrides/…` and put in force
//!   again whenever the instance re-registers ([`crate::overrides`]).
//! - Deregister: a DeleteRange of the key; the lease is revoked when no other key uses it.
//! - Health: an instance with a lease is healthy while the lease is alive; one without a lease
//!   (persistent, e.g. written by `etcdctl put`) is healthy unless its JSON says
//!   `"healthy": false` (as the Nacos API marks persistent instances, and as the leader's
//!   health probes mark them, see [`crate::probes`]).
//! - Protection threshold: when the healthy share of a service's enabled instances is at or
//!   below its `protectThreshold` (`/service-meta/<service>`), a `healthy=true` list answers
//!   every enabled instance and says `protectionThresholdReached`, as Nacos does.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mast_model::{Instance, check_name, instance_key, parse_instance_key, service_prefix};
use mast_proto::etcdserverpb::{LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest};
use mast_proto::mvccpb::KeyValue;
use mast_server::Node;
use mast_server::api::{kv, lease};
use mast_server::authz::Caller;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::AppState;
use crate::error::{ApiError, ApiResult, Call, ErrorCode, JsonBody, PathParams, QueryParams};
use crate::etcd;
use crate::list_cache::{LeaseFields, ServiceEntry};

/// Default lease TTL of a registration, as the seeds' `client.lease(10)`.
pub const DEFAULT_TTL: i64 = 10;

/// Attempts of an optimistic update before answering 409.
pub(crate) const UPDATE_ATTEMPTS: usize = 5;

/// An instance as the API shows it: the stored fields, where it lives, and its health.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// Service name.
    pub service: String,
    /// Instance id (the last key segment).
    pub id: String,
    /// Host clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: u16,
    /// Relative share of traffic.
    pub weight: f64,
    /// False: out of discovery without being deregistered.
    pub enabled: bool,
    /// Free-form labels.
    pub metadata: BTreeMap<String, String>,
    /// Availability zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Registration time, ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<u64>,
    /// Other fields found in the stored JSON.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Lease alive (or no lease at all).
    pub healthy: bool,
    /// Attached to a lease (goes away when heartbeats stop).
    pub ephemeral: bool,
    /// The lease ID, as a decimal string (as etcd's JSON gateway writes 64-bit IDs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// Whole seconds left on the lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    /// The lease's granted TTL in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted_ttl: Option<i64>,
    /// Revision that created the key.
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
}

/// The `healthy` an instance's JSON holds among its other fields (true when absent or not a
/// boolean): what decides a persistent instance's health.
pub fn stored_healthy(extra: &BTreeMap<String, serde_json::Value>) -> bool {
    extra
        .get("healthy")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true)
}

impl InstanceView {
    /// The view of a stored key, or `None` when the key is not an instance key or its value is
    /// not instance JSON (such keys are left to etcd clients).
    pub fn from_kv(node: &Node, kv: &KeyValue) -> Option<InstanceView> {
        let (service, id) = parse_instance_key(&kv.key)?;
        let inst = Instance::from_json(&kv.value).ok()?;
        Some(Self::from_instance(node, service, id, inst, kv))
    }

    /// The view of `inst`, stored at `kv` (whose value is `inst` as JSON) under `service` and
    /// `id`: what [`InstanceView::from_kv`] gives for `kv`, without parsing the value again.
    pub fn from_instance(
        node: &Node,
        service: &str,
        id: &str,
        inst: Instance,
        kv: &KeyValue,
    ) -> InstanceView {
        let lease = LeaseFields::of(node, kv.lease, stored_healthy(&inst.extra));
        InstanceView {
            service: service.to_string(),
            id: id.to_string(),
            host: inst.host,
            port: inst.port,
            weight: inst.weight,
            enabled: inst.enabled,
            metadata: inst.metadata,
            zone: inst.zone,
            registered_at: inst.registered_at,
            extra: inst.extra,
            healthy: lease.healthy,
            ephemeral: kv.lease != 0,
            lease_id: (kv.lease != 0).then(|| kv.lease.to_string()),
            ttl: lease.timing.map(|(remaining, _)| remaining),
            granted_ttl: lease.timing.map(|(_, granted)| granted),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        }
    }
}

/// One service in the list.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// Instances registered.
    pub instances: usize,
    /// Of those, healthy.
    pub healthy_instances: usize,
    /// Of those, healthy and enabled (what discovery hands out).
    pub available_instances: usize,
}

/// `GET /mast/v1/services`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceList {
    /// Revision the list was read at; pass `revision + 1` to `/mast/v1/events` to follow on.
    pub revision: i64,
    /// Services by name.
    pub services: Vec<ServiceSummary>,
}

/// Filters of the instance list.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceFilter {
    /// Only healthy (`true`) or unhealthy (`false`) instances.
    pub healthy: Option<bool>,
    /// Only enabled (`true`) or disabled (`false`) instances.
    pub enabled: Option<bool>,
}

/// `POST /mast/v1/services/{service}/instances`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// Instance id; default `host:port`.
    pub id: Option<String>,
    /// Host clients connect to.
    pub host: String,
    /// Port clients connect to.
    pub port: u16,
    /// Relative share of traffic (default 1).
    pub weight: Option<f64>,
    /// Free-form labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Availability zone.
    pub zone: Option<String>,
    /// Lease TTL in seconds (default 10; at least 2 is granted, as etcd).
    pub ttl: Option<i64>,
    /// False registers a persistent instance with no lease (it stays until deregistered).
    pub ephemeral: Option<bool>,
    /// How the leader probes this persistent instance ([`mast_model::HealthCheck`]'s JSON;
    /// default: its service's check, if any). Refused for an ephemeral instance, which lives
    /// by its lease.
    pub health_check: Option<serde_json::Value>,
}

/// `PATCH /mast/v1/services/{service}/instances/{id}`. Absent fields stay as they are;
/// `metadata` is merged (JSON Merge Patch: a `null` value removes a label).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateRequest {
    /// New weight.
    pub weight: Option<f64>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Labels to set (string) or remove (`null`).
    pub metadata: Option<BTreeMap<String, Option<String>>>,
    /// New zone; `""` clears it.
    pub zone: Option<String>,
}

/// Heartbeat answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// The lease kept alive.
    pub lease_id: String,
    /// Its TTL, now fully restored, in seconds.
    pub ttl: i64,
}

/// Deregister answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeregisterResponse {
    /// Revision of the delete.
    pub revision: i64,
    /// Whether the instance's lease was revoked too (no other key used it).
    pub lease_revoked: bool,
}

fn check_weight(w: f64) -> ApiResult<()> {
    if w.is_finite() && w >= 0.0 {
        Ok(())
    } else {
        Err(ApiError::bad_request("weight must be a finite number >= 0"))
    }
}

fn read_instances(node: &Node, kvs: &[KeyValue]) -> Vec<InstanceView> {
    kvs.iter()
        .filter_map(|kv| InstanceView::from_kv(node, kv))
        .collect()
}

/// `GET /mast/v1/services`: every service with instance counts.
pub async fn list_services(
    State(st): State<AppState>,
    Call(caller): Call,
) -> ApiResult<Json<ServiceList>> {
    let resp = etcd::range_prefix(&st.node, &caller, mast_model::SERVICES_PREFIX, 0, false).await?;
    let mut services: BTreeMap<String, ServiceSummary> = BTreeMap::new();
    for v in read_instances(&st.node, &resp.kvs) {
        let s = services
            .entry(v.service.clone())
            .or_insert_with(|| ServiceSummary {
                name: v.service.clone(),
                instances: 0,
                healthy_instances: 0,
                available_instances: 0,
            });
        s.instances += 1;
        s.healthy_instances += usize::from(v.healthy);
        s.available_instances += usize::from(v.healthy && v.enabled);
    }
    Ok(Json(ServiceList {
        revision: etcd::revision_of(&resp),
        services: services.into_values().collect(),
    }))
}

/// `GET /mast/v1/services/{service}/instances?healthy=&enabled=`: `{"revision", "service",
/// "instances"}`, where `revision` is the revision the list was read at and `instances` the
/// matching [`InstanceView`]s, by id. When the healthy share of the enabled instances is at
/// or below the service's protection threshold (`protectThreshold` at
/// `/service-meta/<service>`, Nacos's rule), `healthy=true` answers every enabled instance and
/// the answer carries `"protectionThresholdReached": true`.
///
/// The instances' JSON comes from the [`crate::list_cache`] while the service's keys are
/// unchanged (checked in the index on every call, after the same auth check a Range of the
/// prefix makes); the lease fields are always current.
///
/// # Errors
/// 400 for a bad service name, 401/403 from auth, etcd errors.
pub async fn list_instances(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams(service): PathParams<String>,
    QueryParams(filter): QueryParams<InstanceFilter>,
) -> ApiResult<Response> {
    check_name("service", &service)?;
    let node = &st.node;
    let prefix = service_prefix(&service);
    let end = mast_model::prefix_end(prefix.as_bytes());
    // The check the Range below makes, done first so a cached list gets it too.
    let who = node.authenticate_caller(&caller)?;
    let (mut revision, count, max_mod) = node.range_summary(&who, prefix.as_bytes(), &end)?;
    let entry = match st.list_cache.get(&service, count, max_mod) {
        Some(entry) => entry,
        None => {
            let resp = etcd::range_prefix(node, &caller, &prefix, 0, false).await?;
            revision = etcd::revision_of(&resp);
            let entry = Arc::new(ServiceEntry::new(node, &resp.kvs));
            st.list_cache.put(&service, entry.clone());
            entry
        }
    };
    let threshold = protect_threshold(node, &caller, &service).await?;
    let fields: Vec<LeaseFields> = entry
        .instances
        .iter()
        .map(|i| i.lease_fields(node))
        .collect();
    let enabled = entry.instances.iter().filter(|i| i.enabled()).count();
    let healthy = entry
        .instances
        .iter()
        .zip(&fields)
        .filter(|(i, f)| i.enabled() && f.healthy)
        .count();
    let protect = mast_model::reaches_protection_threshold(healthy, enabled, threshold);
    let mut out = String::with_capacity(96 + service.len() + entry.json_len());
    out.push_str("{\"revision\":");
    out.push_str(&revision.to_string());
    out.push_str(",\"service\":");
    out.push_str(&serde_json::to_string(&service).map_err(|e| ApiError::internal(e.to_string()))?);
    if protect {
        out.push_str(",\"protectionThresholdReached\":true");
    }
    out.push_str(",\"instances\":[");
    let mut first = true;
    for (inst, fields) in entry.instances.iter().zip(fields) {
        // Past the protection threshold, `healthy=true` answers every enabled instance (each
        // still shows its own `healthy`), as Nacos's list does.
        let passes_healthy =
            |wanted: bool| fields.healthy == wanted || (wanted && protect && inst.enabled());
        if filter.healthy.is_some_and(|h| !passes_healthy(h))
            || filter.enabled.is_some_and(|e| inst.enabled() != e)
        {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        inst.write(fields, &mut out);
    }
    out.push_str("]}");
    Ok(crate::json_bytes(out.into()))
}

/// The service's protection threshold, 0–1 (0: none), from `/service-meta/<service>`; 0 when
/// the service has no settings or the caller may not read them.
///
/// # Errors
/// Auth (other than a denied read) and etcd errors.
async fn protect_threshold(node: &Node, caller: &Caller, service: &str) -> ApiResult<f64> {
    let key = format!("{}{service}", mast_model::SERVICE_META_PREFIX);
    match etcd::get(node, caller, &key, 0).await {
        Ok((Some(kv), _)) => Ok(serde_json::from_slice::<mast_model::ServiceMeta>(&kv.value)
            .map_or(0.0, |m| m.protect_threshold)),
        Ok((None, _)) => Ok(0.0),
        Err(e) if e.code == ErrorCode::PermissionDenied => Ok(0.0),
        Err(e) => Err(e),
    }
}

async fn read_one(
    node: &Node,
    caller: &Caller,
    service: &str,
    id: &str,
) -> ApiResult<(String, KeyValue)> {
    check_name("service", service)?;
    check_name("instance id", id)?;
    let key = instance_key(service, id);
    match etcd::get(node, caller, &key, 0).await? {
        (Some(kv), _) => Ok((key, kv)),
        (None, _) => Err(ApiError::not_found(format!(
            "instance {id:?} of service {service:?} is not registered"
        ))),
    }
}

/// `GET /mast/v1/services/{service}/instances/{id}`.
pub async fn get_instance(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((service, id)): PathParams<(String, String)>,
) -> ApiResult<Json<InstanceView>> {
    let (_, kv) = read_one(&st.node, &caller, &service, &id).await?;
    InstanceView::from_kv(&st.node, &kv)
        .map(Json)
        .ok_or_else(|| not_an_instance(&kv))
}

fn not_an_instance(kv: &KeyValue) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "the value at {} is not instance JSON (an object with host and port)",
            String::from_utf8_lossy(&kv.key)
        ),
    )
}

/// Revokes `lease` when no key is attached to it any more.
async fn revoke_if_unused(node: &Node, caller: &Caller, id: i64) -> bool {
    if node.lease_key_count(id) != Some(0) {
        return false;
    }
    match lease::revoke(node, caller, LeaseRevokeRequest { id }).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(lease = id, error = %e, "revoking an unused lease failed");
            false
        }
    }
}

/// `POST /mast/v1/services/{service}/instances`: registers (or replaces) an instance.
pub async fn register(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams(service): PathParams<String>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> ApiResult<Response> {
    let node = &st.node;
    check_name("service", &service)?;
    if req.host.trim().is_empty() {
        return Err(ApiError::bad_request("host is empty"));
    }
    if req.port == 0 {
        return Err(ApiError::bad_request("port must be 1-65535"));
    }
    let id = req
        .id
        .clone()
        .unwrap_or_else(|| format!("{}:{}", req.host, req.port));
    check_name("instance id", &id)?;
    let weight = req.weight.unwrap_or(1.0);
    check_weight(weight)?;
    let ttl = req.ttl.unwrap_or(DEFAULT_TTL);
    if ttl <= 0 {
        return Err(ApiError::bad_request(
            "ttl must be a positive number of seconds",
        ));
    }
    let ephemeral = req.ephemeral.unwrap_or(true);
    let health_check = match &req.health_check {
        Some(_) if ephemeral => {
            return Err(ApiError::bad_request(
                "healthCheck applies to persistent instances (\"ephemeral\": false); an ephemeral one lives by its lease",
            ));
        }
        Some(v) => Some(
            mast_model::HealthCheck::from_value(v)
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
        None => None,
    };
    let key = instance_key(&service, &id);
    // The lease and the key are one write (checked as a Put), so a refused caller leaves no
    // lease behind.
    let mut inst = Instance::new(req.host, req.port);
    inst.weight = weight;
    inst.metadata = req.metadata;
    inst.enabled = req.enabled.unwrap_or(true);
    inst.zone = req.zone.filter(|z| !z.is_empty());
    inst.registered_at = Some(etcd::now_ms());
    if let Some(check) = health_check {
        inst.extra.insert(
            mast_model::health::HEALTH_CHECK_FIELD.into(),
            serde_json::to_value(check).map_err(|e| ApiError::internal(e.to_string()))?,
        );
    }
    // An operator's weight / enabled outlive the instance's own registration.
    crate::overrides::apply_on_register(node, &service, &id, &mut inst);
    let value = bytes::Bytes::from(inst.to_json());
    let put_req = PutRequest {
        key: key.clone().into_bytes().into(),
        value: value.clone(),
        prev_kv: true,
        ..Default::default()
    };
    // An ephemeral instance: its lease and its key in one write (one fsync, one revision).
    let (lease_id, put) = if ephemeral {
        let (id, _ttl, put) = kv::put_with_new_lease(node, &caller, ttl, put_req).await?;
        (id, put)
    } else {
        (0, kv::put(node, &caller, put_req).await?)
    };
    if let Some(prev) = &put.prev_kv
        && prev.lease != 0
        && prev.lease != lease_id
    {
        revoke_if_unused(node, &caller, prev.lease).await;
    }
    // The stored key as the Put left it, without reading it back.
    let rev = put.header.as_ref().map_or(0, |h| h.revision);
    let stored = KeyValue {
        key: key.into_bytes().into(),
        value,
        lease: lease_id,
        create_revision: put.prev_kv.as_ref().map_or(rev, |p| p.create_revision),
        mod_revision: rev,
        version: put.prev_kv.as_ref().map_or(1, |p| p.version + 1),
    };
    let view = InstanceView::from_instance(node, &service, &id, inst, &stored);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `PATCH /mast/v1/services/{service}/instances/{id}`: weight, enabled, metadata, zone.
///
/// `weight` and `enabled` are an operator's override: they are stored at
/// `/instance-overrides/<service>/<id>` too, in the same Txn, and stay in force when the
/// instance registers again, until `DELETE …/override` (see [`crate::overrides`]); the caller
/// needs write permission on that key as well. So do `metadata` entries (a value sets one,
/// `null` removes it). `zone` changes the instance as it is now (its next registration
/// replaces it).
///
/// # Errors
/// 400 for a bad weight, 404 when the instance is not registered, 409 when the value is not
/// instance JSON or kept changing, auth and etcd errors.
pub async fn update(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((service, id)): PathParams<(String, String)>,
    JsonBody(req): JsonBody<UpdateRequest>,
) -> ApiResult<Json<InstanceView>> {
    let node = &st.node;
    if let Some(w) = req.weight {
        check_weight(w)?;
    }
    check_name("service", &service)?;
    check_name("instance id", &id)?;
    let edit = |inst: &mut Instance| {
        if let Some(z) = &req.zone {
            inst.zone = (!z.is_empty()).then(|| z.clone());
        }
    };
    if req.weight.is_some() || req.enabled.is_some() || req.metadata.is_some() {
        let updated = crate::overrides::set(
            node,
            &caller,
            &service,
            &id,
            crate::overrides::OperatorChange {
                weight: req.weight,
                enabled: req.enabled,
                metadata: req.metadata.as_ref(),
            },
            edit,
        )
        .await?;
        return InstanceView::from_kv(node, &updated)
            .map(Json)
            .ok_or_else(|| not_an_instance(&updated));
    }
    for _ in 0..UPDATE_ATTEMPTS {
        let (key, kv) = read_one(node, &caller, &service, &id).await?;
        let mut inst = Instance::from_json(&kv.value).map_err(|_| not_an_instance(&kv))?;
        edit(&mut inst);
        let resp = etcd::txn(
            node,
            &caller,
            vec![etcd::mod_revision_is(key.clone(), kv.mod_revision)],
            vec![etcd::put_keep_lease_op(key.clone(), inst.to_json())],
        )
        .await?;
        if resp.succeeded {
            let updated = KeyValue {
                value: inst.to_json().into(),
                mod_revision: etcd::txn_revision(&resp),
                version: kv.version + 1,
                ..kv
            };
            return InstanceView::from_kv(node, &updated)
                .map(Json)
                .ok_or_else(|| not_an_instance(&updated));
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        "the instance kept changing while it was updated; try again",
    ))
}

/// `PUT /mast/v1/services/{service}/instances/{id}/heartbeat`: keeps the instance's lease
/// alive, for clients that do not speak gRPC.
pub async fn heartbeat(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((service, id)): PathParams<(String, String)>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let node = &st.node;
    let (key, kv) = read_one(node, &caller, &service, &id).await?;
    // A heartbeat changes the instance's fate: ask for write permission on its key.
    let who = node.authenticate_caller(&caller)?;
    node.check_range(&who, key.as_bytes(), &[], true)?;
    if kv.lease == 0 {
        return Err(ApiError::new(
            ErrorCode::NoLease,
            format!("instance {id:?} is persistent (no lease); it needs no heartbeat"),
        ));
    }
    let resp = lease::keep_alive_once(node, &LeaseKeepAliveRequest { id: kv.lease }).await?;
    if resp.ttl <= 0 {
        return Err(ApiError::new(
            ErrorCode::LeaseExpired,
            format!("the lease of instance {id:?} expired; register it again"),
        ));
    }
    Ok(Json(HeartbeatResponse {
        lease_id: kv.lease.to_string(),
        ttl: resp.ttl,
    }))
}

/// `DELETE /mast/v1/services/{service}/instances/{id}`: deregisters an instance.
pub async fn deregister(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((service, id)): PathParams<(String, String)>,
) -> ApiResult<Json<DeregisterResponse>> {
    let node = &st.node;
    check_name("service", &service)?;
    check_name("instance id", &id)?;
    let key = instance_key(&service, &id);
    let resp = kv::delete_range(
        node,
        &caller,
        mast_proto::etcdserverpb::DeleteRangeRequest {
            key: key.into_bytes().into(),
            prev_kv: true,
            ..Default::default()
        },
    )
    .await?;
    let Some(prev) = resp.prev_kvs.first() else {
        return Err(ApiError::not_found(format!(
            "instance {id:?} of service {service:?} is not registered"
        )));
    };
    let lease_revoked = prev.lease != 0 && revoke_if_unused(node, &caller, prev.lease).await;
    Ok(Json(DeregisterResponse {
        revision: resp.header.as_ref().map_or(0, |h| h.revision),
        lease_revoked,
    }))
}

/// `GET /mast/v1/services/{service}/watchers` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WatcherList {
    /// The member that answered (each member knows its own clients' watches).
    pub member: String,
    /// Watches that see some instance of the service, oldest first.
    pub watchers: Vec<mast_server::watchers::Watching>,
}

/// `GET /mast/v1/services/{service}/watchers`: who watches the service on this member — etcd
/// watchers (gRPC, the JSON gateway, `/mast/v1/events` streams) whose range covers some of
/// its instance keys, and Nacos 2.x subscriptions to it.
///
/// # Errors
/// 400 for a bad service name; the same auth errors as listing its instances.
pub async fn watchers(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams(service): PathParams<String>,
) -> ApiResult<Json<WatcherList>> {
    check_name("service", &service)?;
    let node = &st.node;
    let prefix = service_prefix(&service);
    let end = mast_model::prefix_end(prefix.as_bytes());
    // Whoever may list the instances may see who watches them.
    let who = node.authenticate_caller(&caller)?;
    node.range_summary(&who, prefix.as_bytes(), &end)?;
    Ok(Json(WatcherList {
        member: node.member_name().to_string(),
        watchers: node.watch_registry().overlapping(prefix.as_bytes(), &end),
    }))
}
