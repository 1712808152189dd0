//! Operator overrides of an instance's weight and enabled that survive re-registration (see
//! [`mast_model::overrides`] for the keys and the JSON).
//!
//! Three things keep an instance's JSON in line with its override:
//!
//! - an operator's edit (`PATCH /mast/v1/services/{s}/instances/{id}` with `weight` or
//!   `enabled`, Nacos's `PUT /nacos/v1/ns/instance`, `mast service set`) writes the override
//!   key and the instance's JSON with the override in force in one Txn;
//! - registrations through Mast's own APIs (`/mast/v1`, Nacos HTTP and gRPC) put the override
//!   in force before the instance is written ([`apply_on_register`]), so a re-registered
//!   instance is never seen with its own weight;
//! - [`spawn_reconciler`] follows the commits on the leader and rewrites an instance whose JSON
//!   disagrees with its override — an instance registered by a plain etcd put (the seeds' code,
//!   the SDK) or an override written or deleted by `etcdctl`. Its write is a Txn guarded by the
//!   instance key's mod revision, so it never undoes a newer write.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use mast_model::{Instance, InstanceOverride, apply_override, override_key};
use mast_proto::etcdserverpb::RangeRequest;
use mast_proto::mvccpb::KeyValue;
use mast_server::Node;
use mast_server::authz::Caller;
use serde::Serialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult, Call, ErrorCode, PathParams};
use crate::etcd;

/// The override of instance `id` of the service with key segment `segment`, as this member
/// holds it, read as the server (an override is the operator's policy, applied whoever
/// registers); `None` when there is none or it is not override JSON.
pub fn read_override(node: &Node, segment: &str, id: &str) -> Option<InstanceOverride> {
    let kv = node
        .range_as_server(&RangeRequest {
            key: override_key(segment, id).into_bytes().into(),
            serializable: true,
            ..Default::default()
        })
        .ok()?
        .kvs
        .into_iter()
        .next()?;
    InstanceOverride::from_json(&kv.value).ok()
}

/// Puts the override of `segment`/`id`, if any, in force on `inst`, an instance about to be
/// registered. Returns whether it changed `inst`.
pub fn apply_on_register(node: &Node, segment: &str, id: &str, inst: &mut Instance) -> bool {
    let ov = read_override(node, segment, id);
    apply_override(inst, ov.as_ref())
}

/// The name of the user behind `caller` (empty with auth off or for an anonymous caller).
///
/// # Errors
/// A bad or expired token.
pub fn user_of(node: &Node, caller: &Caller) -> ApiResult<String> {
    Ok(node
        .authenticate_caller(caller)?
        .map(|a| a.user)
        .unwrap_or_default())
}

/// What an operator sets on an instance; each `None` leaves that part as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct OperatorChange<'a> {
    /// Weight in force whatever the instance registers.
    pub weight: Option<f64>,
    /// Enabled in force whatever the instance registers.
    pub enabled: Option<bool>,
    /// Metadata entries merged into the override: a value sets the entry, `None` removes it.
    pub metadata: Option<&'a BTreeMap<String, Option<String>>>,
}

/// Writes an operator's `weight` / `enabled` / `metadata` entries ([`OperatorChange`]) on
/// instance `segment`/`id`, after `edit`
/// changed the instance: the override key (merged with the one there; not written when all
/// are `None`) and the instance's JSON with it in force, in one
/// Txn guarded by both keys' mod revisions (retried a few times when
/// another writer got there first), with the caller's permissions on both keys.
///
/// Returns the instance key as the Txn left it.
///
/// # Errors
/// 404 when the instance is not registered, 409 when its value is not instance JSON or it
/// kept changing, auth and etcd errors.
pub async fn set(
    node: &Node,
    caller: &Caller,
    segment: &str,
    id: &str,
    change: OperatorChange<'_>,
    mut edit: impl FnMut(&mut Instance),
) -> ApiResult<KeyValue> {
    let OperatorChange {
        weight,
        enabled,
        metadata,
    } = change;
    let user = user_of(node, caller)?;
    let key = mast_model::instance_key(segment, id);
    let okey = override_key(segment, id);
    for _ in 0..crate::instances::UPDATE_ATTEMPTS {
        let (Some(kv), _) = etcd::get(node, caller, &key, 0).await? else {
            return Err(not_registered(segment, id));
        };
        let (existing, orev) = match etcd::get(node, caller, &okey, 0).await?.0 {
            Some(okv) => (
                InstanceOverride::from_json(&okv.value).ok(),
                okv.mod_revision,
            ),
            None => (None, 0),
        };
        let mut inst = Instance::from_json(&kv.value).map_err(|_| not_instance(&key))?;
        edit(&mut inst);
        let mut ov = existing.unwrap_or_default();
        // Nothing to override: the instance alone changes (an override already there stays
        // in force and untouched).
        let overriding = weight.is_some() || enabled.is_some() || metadata.is_some();
        if weight.is_some() {
            ov.weight = weight;
        }
        if enabled.is_some() {
            ov.enabled = enabled;
        }
        if let Some(patch) = metadata {
            ov.metadata
                .extend(patch.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        ov.set_by = user.clone();
        ov.set_at = etcd::now_ms();
        apply_override(&mut inst, (overriding || orev != 0).then_some(&ov));
        let value = inst.to_json();
        let mut ops = vec![etcd::put_keep_lease_op(key.clone(), value.clone())];
        if overriding {
            ops.push(etcd::put_op(okey.clone(), ov.to_json()));
        }
        let resp = etcd::txn(
            node,
            caller,
            vec![
                etcd::mod_revision_is(key.clone(), kv.mod_revision),
                etcd::mod_revision_is(okey.clone(), orev),
            ],
            ops,
        )
        .await?;
        if resp.succeeded {
            return Ok(KeyValue {
                value: value.into(),
                mod_revision: etcd::txn_revision(&resp),
                version: kv.version + 1,
                ..kv
            });
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        "the instance kept changing while it was updated; try again",
    ))
}

/// `GET /mast/v1/services/{service}/instances/{id}/override`: the operator's override.
///
/// # Errors
/// 404 when there is none; auth and etcd errors.
pub async fn get(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((service, id)): PathParams<(String, String)>,
) -> ApiResult<Json<InstanceOverride>> {
    check(&service, &id)?;
    let okey = override_key(&service, &id);
    let (kv, _) = etcd::get(&st.node, &caller, &okey, 0).await?;
    let kv = kv.ok_or_else(|| {
        ApiError::not_found(format!(
            "instance {id:?} of service {service:?} has no operator override"
        ))
    })?;
    InstanceOverride::from_json(&kv.value)
        .map(Json)
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Conflict,
                format!("the value at {okey} is not an override"),
            )
        })
}

/// `DELETE …/override` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClearResponse {
    /// Revision of the delete (the current revision when there was nothing to clear).
    pub revision: i64,
    /// Whether there was an override.
    pub cleared: bool,
}

/// `DELETE /mast/v1/services/{service}/instances/{id}/override`: clears the operator's
/// override; the instance, if registered, gets back the weight and enabled it registered with,
/// in the same Txn.
///
/// # Errors
/// 409 when the instance kept changing; auth and etcd errors.
pub async fn clear(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams((service, id)): PathParams<(String, String)>,
) -> ApiResult<Json<ClearResponse>> {
    check(&service, &id)?;
    let node = &st.node;
    let key = mast_model::instance_key(&service, &id);
    let okey = override_key(&service, &id);
    for _ in 0..crate::instances::UPDATE_ATTEMPTS {
        let (okv, rev) = etcd::get(node, &caller, &okey, 0).await?;
        let Some(okv) = okv else {
            return Ok(Json(ClearResponse {
                revision: rev,
                cleared: false,
            }));
        };
        let (kv, _) = etcd::get(node, &caller, &key, 0).await?;
        let mut compare = vec![etcd::mod_revision_is(okey.clone(), okv.mod_revision)];
        let mut ops = vec![etcd::delete_op(okey.clone().into_bytes(), Vec::new())];
        match kv.as_ref() {
            Some(kv) => {
                compare.push(etcd::mod_revision_is(key.clone(), kv.mod_revision));
                if let Ok(mut inst) = Instance::from_json(&kv.value)
                    && apply_override(&mut inst, None)
                {
                    ops.push(etcd::put_keep_lease_op(key.clone(), inst.to_json()));
                }
            }
            None => compare.push(etcd::mod_revision_is(key.clone(), 0)),
        }
        let resp = etcd::txn(node, &caller, compare, ops).await?;
        if resp.succeeded {
            return Ok(Json(ClearResponse {
                revision: etcd::txn_revision(&resp),
                cleared: true,
            }));
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        "the instance kept changing while its override was cleared; try again",
    ))
}

fn check(service: &str, id: &str) -> ApiResult<()> {
    mast_model::check_name("service", service)?;
    mast_model::check_name("instance id", id)?;
    Ok(())
}

fn not_registered(segment: &str, id: &str) -> ApiError {
    ApiError::not_found(format!(
        "instance {id:?} of service {segment:?} is not registered"
    ))
}

fn not_instance(key: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!("the value at {key} is not instance JSON (an object with host and port)"),
    )
}

/// Starts the reconciler on `node` (it acts only while the member leads) until the node shuts
/// down: on each commit that puts an instance key with an override, or puts or deletes an
/// override key, it puts the override in force on the instance's JSON (or restores the
/// registered values) when they differ. On becoming leader, after a lagging subscription or a
/// snapshot, it checks every override.
pub fn spawn_reconciler(node: Arc<Node>) {
    crate::leader::spawn(
        node.clone(),
        Reconciler {
            node,
            known: BTreeSet::new(),
        },
    );
}

/// The reconciler's state: the instances that have an override, as `(segment, id)`.
struct Reconciler {
    node: Arc<Node>,
    known: BTreeSet<(String, String)>,
}

impl Reconciler {
    async fn reconcile_all(&self, todo: BTreeSet<(String, String)>) {
        for (segment, id) in todo {
            if let Err(e) = reconcile(&self.node, &segment, &id).await {
                tracing::debug!(service = %segment, instance = %id, error = %e,
                    "putting an operator override in force failed; the next commit retries");
            }
        }
    }
}

impl crate::leader::LeaderWork for Reconciler {
    async fn everything(&mut self) {
        self.known = all_overrides(&self.node);
        self.reconcile_all(self.known.clone()).await;
    }

    async fn events(&mut self, events: &[mast_proto::mvccpb::Event]) {
        let mut todo = BTreeSet::new();
        for ev in events {
            let Some(kv) = ev.kv.as_ref() else { continue };
            if let Some((s, i)) = mast_model::parse_override_key(&kv.key) {
                let pair = (s.to_string(), i.to_string());
                if ev.r#type == 0 {
                    self.known.insert(pair.clone());
                } else {
                    self.known.remove(&pair);
                }
                todo.insert(pair);
            } else if ev.r#type == 0
                && let Some((s, i)) = mast_model::parse_instance_key(&kv.key)
            {
                let pair = (s.to_string(), i.to_string());
                if self.known.contains(&pair) {
                    todo.insert(pair);
                }
            }
        }
        self.reconcile_all(todo).await;
    }
}

/// Every override key on this member, as `(segment, id)`.
fn all_overrides(node: &Node) -> BTreeSet<(String, String)> {
    let prefix = mast_model::overrides::OVERRIDE_PREFIX;
    let resp = node.range_as_server(&RangeRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: mast_model::prefix_end(prefix.as_bytes()).into(),
        keys_only: true,
        serializable: true,
        ..Default::default()
    });
    match resp {
        Ok(resp) => resp
            .kvs
            .iter()
            .filter_map(|kv| mast_model::parse_override_key(&kv.key))
            .map(|(s, i)| (s.to_string(), i.to_string()))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the operator overrides failed");
            BTreeSet::new()
        }
    }
}

/// Puts the override of `segment`/`id` (or its absence) in force on the instance's JSON when
/// they differ, as the server, guarded by the instance key's mod revision.
async fn reconcile(node: &Node, segment: &str, id: &str) -> Result<(), mast_server::EtcdError> {
    let key = mast_model::instance_key(segment, id);
    let ov = read_override(node, segment, id);
    let changed = etcd::rewrite_instance_as_system(node, &key, "override-reconciler", |_, inst| {
        apply_override(inst, ov.as_ref())
    })
    .await?;
    if changed {
        tracing::debug!(service = %segment, instance = %id, "operator override put in force");
    }
    Ok(())
}
