//! A service's settings at `/service-meta/<service>` ([`mast_model::ServiceMeta`]): protection
//! threshold, metadata and the health check of its persistent instances.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use mast_model::health::HEALTH_CHECK_FIELD;
use mast_model::{HealthCheck, ServiceMeta, check_name};
use serde::{Deserialize, Deserializer};

use crate::AppState;
use crate::error::{ApiError, ApiResult, Call, ErrorCode, JsonBody, PathParams};
use crate::etcd;

/// `PUT /mast/v1/services/{service}`: the settings to change; absent fields stay as they are.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsRequest {
    /// Protection threshold, 0–1 (0: off).
    pub protect_threshold: Option<f64>,
    /// Labels (replace the service's labels).
    pub metadata: Option<BTreeMap<String, String>>,
    /// The health check of the service's persistent instances ([`HealthCheck`]'s JSON);
    /// `null` removes it.
    #[serde(default, deserialize_with = "present")]
    pub health_check: Option<Option<serde_json::Value>>,
}

/// A field that is present, `null` included: `Some(None)` for `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<serde_json::Value>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// `GET /mast/v1/services/{service}`: the service's settings (the defaults when it has none).
///
/// # Errors
/// 400 for a bad name, 409 when the stored value is not settings JSON, auth and etcd errors.
pub async fn get(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams(service): PathParams<String>,
) -> ApiResult<Json<ServiceMeta>> {
    check_name("service", &service)?;
    let key = meta_key(&service);
    let (kv, _) = etcd::get(&st.node, &caller, &key, 0).await?;
    match kv {
        Some(kv) => serde_json::from_slice(&kv.value)
            .map(Json)
            .map_err(|_| not_settings(&key)),
        None => Ok(Json(ServiceMeta::default())),
    }
}

/// `PUT /mast/v1/services/{service}`: changes the service's settings in one Txn guarded by
/// the key's mod revision (retried a few times when another writer got there first), after
/// checking every field; nothing is stored when one is refused.
///
/// # Errors
/// 400 for a bad name, a threshold outside 0–1, or a malformed or out-of-range health check;
/// 409 when the stored value is not settings JSON or kept changing; auth and etcd errors.
pub async fn put(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams(service): PathParams<String>,
    JsonBody(req): JsonBody<SettingsRequest>,
) -> ApiResult<Json<ServiceMeta>> {
    check_name("service", &service)?;
    if let Some(t) = req.protect_threshold
        && !(t.is_finite() && (0.0..=1.0).contains(&t))
    {
        return Err(ApiError::bad_request("protectThreshold must be 0 to 1"));
    }
    let check = match &req.health_check {
        Some(Some(v)) => Some(Some(
            HealthCheck::from_value(v).map_err(|e| ApiError::bad_request(e.to_string()))?,
        )),
        Some(None) => Some(None),
        None => None,
    };
    let key = meta_key(&service);
    for _ in 0..crate::instances::UPDATE_ATTEMPTS {
        let (kv, _) = etcd::get(&st.node, &caller, &key, 0).await?;
        let rev = kv.as_ref().map_or(0, |kv| kv.mod_revision);
        let mut meta: ServiceMeta = match &kv {
            Some(kv) => serde_json::from_slice(&kv.value).map_err(|_| not_settings(&key))?,
            None => ServiceMeta::default(),
        };
        if let Some(t) = req.protect_threshold {
            meta.protect_threshold = t;
        }
        if let Some(m) = &req.metadata {
            meta.metadata = m.clone();
        }
        match &check {
            Some(Some(c)) => {
                meta.extra.insert(
                    HEALTH_CHECK_FIELD.to_string(),
                    serde_json::to_value(c).map_err(|e| ApiError::internal(e.to_string()))?,
                );
            }
            Some(None) => {
                meta.extra.remove(HEALTH_CHECK_FIELD);
            }
            None => {}
        }
        let value = serde_json::to_vec(&meta).map_err(|e| ApiError::internal(e.to_string()))?;
        let resp = etcd::txn(
            &st.node,
            &caller,
            vec![etcd::mod_revision_is(key.clone(), rev)],
            vec![etcd::put_op(key.clone(), value)],
        )
        .await?;
        if resp.succeeded {
            return Ok(Json(meta));
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        "the service's settings kept changing while they were updated; try again",
    ))
}

fn meta_key(service: &str) -> String {
    format!("{}{service}", mast_model::SERVICE_META_PREFIX)
}

fn not_settings(key: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!("the value at {key} is not service settings JSON"),
    )
}
