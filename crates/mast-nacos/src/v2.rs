//! The Nacos open API v2 (`/nacos/v2/…`): the v1 operations answered in Nacos's
//! `{"code", "message", "data"}` envelope, with v2's parameter names (`namespaceId` for a
//! config's tenant) and v2's error codes: 10000 parameter missing, 20002 parameter validate
//! error, 20004 resource not found, 20005 resource conflict (HTTP 400 / 400 / 404 / 409), 30000
//! for a server error (500). Auth failures keep Spring's JSON error body, as Nacos's.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::NacosCaller;
use crate::error::{NacosError, NacosResult};
use crate::params::Params;
use crate::{config_v1, history_v1, namespace_v1, naming_v1};

/// Bytes of a v1 answer read to re-wrap it.
const MAX_BODY: usize = 64 * 1024 * 1024;

fn envelope(status: StatusCode, code: i32, message: &str, data: Value) -> Response {
    let body = json!({ "code": code, "message": message, "data": data });
    (status, axum::Json(body)).into_response()
}

/// The v2 answer for a failed operation.
fn failure(e: NacosError) -> Response {
    let detail = |m: &str| {
        m.trim_end()
            .trim_start_matches("caused: ")
            .trim_end_matches(';')
            .to_string()
    };
    match e {
        NacosError::MissingParam(name) => envelope(
            StatusCode::BAD_REQUEST,
            10000,
            "parameter missing",
            json!(format!(
                "Required parameter '{name}' type String is not present"
            )),
        ),
        NacosError::BadRequest(m) => envelope(
            StatusCode::BAD_REQUEST,
            20002,
            "parameter validate error",
            json!(detail(&m)),
        ),
        NacosError::Service(refusal, m) => {
            let (code, message) = refusal.v2();
            envelope(StatusCode::BAD_REQUEST, code, message, json!(m))
        }
        NacosError::NotFound(m) => envelope(
            StatusCode::NOT_FOUND,
            20004,
            "resource not found",
            json!(detail(&m)),
        ),
        NacosError::Conflict(m) => envelope(
            StatusCode::CONFLICT,
            20005,
            "resource conflict",
            json!(detail(&m)),
        ),
        e @ (NacosError::Forbidden(_) | NacosError::LoginFailed) => e.into_response(),
        NacosError::NotImplemented(m) => {
            envelope(StatusCode::NOT_IMPLEMENTED, 30000, &m, Value::Null)
        }
        NacosError::Unavailable(m) | NacosError::Internal(m) => {
            envelope(StatusCode::INTERNAL_SERVER_ERROR, 30000, &m, Value::Null)
        }
    }
}

/// How a v1 answer's body becomes `data`.
#[derive(Clone, Copy)]
enum Data {
    /// The body as a string (config content).
    Text,
    /// The body parsed as JSON (`true`, an object), else as a string (`ok`).
    Json,
}

/// Wraps a v1 answer: success in the envelope; failures as [`failure`].
async fn wrap(result: NacosResult<Response>, data: Data, edit: fn(&mut Value)) -> Response {
    let resp = match result {
        Ok(r) => r,
        Err(e) => return failure(e),
    };
    if !resp.status().is_success() {
        return resp;
    }
    let bytes = match axum::body::to_bytes(resp.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return failure(NacosError::Internal(e.to_string())),
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let mut value = match data {
        Data::Text => Value::String(text),
        Data::Json => serde_json::from_str(&text).unwrap_or(Value::String(text)),
    };
    edit(&mut value);
    envelope(StatusCode::OK, 0, "success", value)
}

fn keep(_: &mut Value) {}

/// v2 config parameters as v1 reads them: `namespaceId` is the tenant.
fn config_params(p: Params) -> Params {
    p.alias("namespaceId", "tenant")
        .alias("srcUser", "src_user")
}

/// `GET /nacos/v2/cs/config`: `data` is the content.
pub async fn get_config(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let r = config_v1::get(st, who, config_params(p)).await;
    wrap(r, Data::Text, keep).await
}

/// `POST /nacos/v2/cs/config`: `data` is `true`.
pub async fn publish_config(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let r = config_v1::publish(st, who, config_params(p)).await;
    wrap(r, Data::Json, keep).await
}

/// `DELETE /nacos/v2/cs/config`: `data` is `true`.
pub async fn delete_config(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let r = config_v1::delete(st, who, config_params(p)).await;
    wrap(r, Data::Json, keep).await
}

/// `POST /nacos/v2/ns/instance`: `data` is `"ok"`.
pub async fn register(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    wrap(naming_v1::register(st, who, p).await, Data::Json, keep).await
}

/// `DELETE /nacos/v2/ns/instance`: `data` is `"ok"`.
pub async fn deregister(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    wrap(naming_v1::deregister(st, who, p).await, Data::Json, keep).await
}

/// `PUT /nacos/v2/ns/instance`: `data` is `"ok"`.
pub async fn update(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    wrap(naming_v1::update(st, who, p).await, Data::Json, keep).await
}

/// `GET /nacos/v2/ns/instance`: one instance, its service as `serviceName`.
pub async fn get_instance(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let r = naming_v1::get_instance(st, who, p).await;
    wrap(r, Data::Json, |v| {
        if let Value::Object(m) = v
            && let Some(s) = m.remove("service")
        {
            m.insert("serviceName".into(), s);
        }
    })
    .await
}

/// `GET /nacos/v2/ns/instance/list` (`clusterName` for v1's `clusters`): the service info.
pub async fn list(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let r = naming_v1::list(st, who, p.alias("clusterName", "clusters")).await;
    wrap(r, Data::Json, keep).await
}

/// `GET /nacos/v2/ns/service/list` (pages of 20 by default): `{"count", "services"}`.
pub async fn service_list(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let p = p.with_default("pageNo", "1").with_default("pageSize", "20");
    let r = naming_v1::service_list(st, who, p).await;
    wrap(r, Data::Json, |v| {
        if let Value::Object(m) = v
            && let Some(d) = m.remove("doms")
        {
            m.insert("services".into(), d);
        }
    })
    .await
}

/// v2 service parameters as v1 reads them: `ephemeral` defaults to false (v2's form).
fn service_params(p: Params) -> Params {
    p.with_default("ephemeral", "false")
}

/// `POST /nacos/v2/ns/service`: `data` is `"ok"`; an existing service is 400 / 21007.
pub async fn create_service(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let r = naming_v1::create_service(st, who, service_params(p)).await;
    wrap(r, Data::Json, keep).await
}

/// `PUT /nacos/v2/ns/service` (`protectThreshold` defaults to 0): `data` is `"ok"`; an
/// unknown service is 400 / 21008.
pub async fn update_service(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let p = service_params(p).with_default("protectThreshold", "0");
    wrap(
        naming_v1::update_service(st, who, p).await,
        Data::Json,
        keep,
    )
    .await
}

/// `DELETE /nacos/v2/ns/service`: `data` is `"ok"`; 400 / 21008 unknown, 21009 not empty.
pub async fn delete_service(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    wrap(
        naming_v1::delete_service(st, who, p).await,
        Data::Json,
        keep,
    )
    .await
}

/// `GET /nacos/v2/ns/service`: `{namespace, serviceName, groupName, clusterMap, metadata,
/// protectThreshold, selector, ephemeral}`; an unknown service is 400 / 21008. Mast keeps no
/// service-level `ephemeral` flag (each instance carries its own): it is `false`, v2's
/// default for a created service.
pub async fn get_service(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let r = naming_v1::get_service(st, who, p).await;
    let mut resp = wrap(r, Data::Json, keep).await;
    if resp.status().is_success() {
        // Reshape v1's detail into v2's (a v1 detail names clusters in a list).
        let bytes = axum::body::to_bytes(std::mem::take(resp.body_mut()), MAX_BODY)
            .await
            .unwrap_or_default();
        let mut env: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let d = env["data"].take();
        let clusters: serde_json::Map<String, Value> = d["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let name = c["name"].as_str()?.to_string();
                Some((
                    name.clone(),
                    json!({"clusterName": name, "healthChecker": c["healthChecker"],
                        "metadata": c["metadata"], "hosts": null}),
                ))
            })
            .collect();
        let data = json!({
            "namespace": d["namespaceId"],
            "serviceName": d["name"],
            "groupName": d["groupName"],
            "clusterMap": clusters,
            "metadata": d["metadata"],
            "protectThreshold": d["protectThreshold"],
            "selector": d["selector"],
            "ephemeral": false,
        });
        return envelope(StatusCode::OK, 0, "success", data);
    }
    resp
}

/// v2's fields of a history item that v1's lacks: every version is a normal (not gray)
/// publish.
fn v2_history_item(v: &mut Value) {
    if let Value::Object(m) = v {
        m.entry("publishType").or_insert(json!("formal"));
        m.entry("grayName").or_insert(Value::Null);
        m.entry("extInfo").or_insert(Value::Null);
        m.entry("encryptedDataKey").or_insert(json!(""));
    }
}

/// A v1 history answer in the envelope; a version that is not kept is `data: null` (200), as
/// v2 answers.
async fn wrap_history(r: NacosResult<Response>, edit: fn(&mut Value)) -> Response {
    match r {
        Err(NacosError::NotFound(_)) => envelope(StatusCode::OK, 0, "success", Value::Null),
        r => wrap(r, Data::Json, edit).await,
    }
}

/// `GET /nacos/v2/cs/history/list` (`dataId`, `group`, `namespaceId`, `pageNo` 1, `pageSize`
/// 100, at most 500): a page of versions, newest first.
pub async fn history_list(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let size = p
        .get("pageSize")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(100)
        .min(500)
        .to_string();
    let p = config_params(p)
        .with_default("pageNo", "1")
        .with_default("search", "accurate")
        .set("pageSize", &size)
        .without("nid");
    let r = history_v1::history(st, who, p).await;
    wrap_history(r, |v| {
        if let Some(Value::Array(items)) = v.get_mut("pageItems") {
            items.iter_mut().for_each(v2_history_item);
        }
    })
    .await
}

/// `GET /nacos/v2/cs/history` (`dataId`, `group`, `namespaceId`, `nid`): one version with its
/// content; `data: null` when it is not kept.
pub async fn history_one(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    if p.get("nid").is_none() {
        return failure(NacosError::MissingParam("nid".into()));
    }
    let p = config_params(p).with_default("search", "accurate");
    wrap_history(history_v1::history(st, who, p).await, v2_history_item).await
}

/// `GET /nacos/v2/cs/history/previous` (`dataId`, `group`, `namespaceId`, `id`): the version
/// before `id`; `data: null` when none is kept.
pub async fn history_previous(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let r = history_v1::previous(st, who, config_params(p)).await;
    wrap_history(r, v2_history_item).await
}

/// v2's answer for a missing namespace parameter.
fn missing(name: &str) -> Response {
    envelope(
        StatusCode::BAD_REQUEST,
        10000,
        "parameter missing",
        json!(format!("required parameter '{name}' is missing")),
    )
}

/// v2's answer for a refused namespace (code 22000).
fn illegal_namespace(data: String) -> Response {
    envelope(
        StatusCode::BAD_REQUEST,
        22000,
        "illegal namespace",
        json!(data),
    )
}

/// The JSON body of a v1 answer, or its failure as v2's.
async fn v1_json(r: NacosResult<Response>) -> Result<Value, Response> {
    let resp = r.map_err(failure)?;
    if !resp.status().is_success() {
        return Err(resp);
    }
    let bytes = axum::body::to_bytes(resp.into_body(), MAX_BODY)
        .await
        .map_err(|e| failure(NacosError::Internal(e.to_string())))?;
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// `GET /nacos/v2/console/namespace?namespaceId=`: one namespace (`""` is public); an unknown
/// one is 404 / 22001.
pub async fn namespace_get(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let Some(id) = p.get("namespaceId").map(str::to_string) else {
        return missing("namespaceId");
    };
    let listed = match v1_json(namespace_v1::list(st, who, p.without("show")).await).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let found = listed["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["namespace"] == json!(id))
        .cloned();
    match found {
        Some(n) => envelope(StatusCode::OK, 0, "success", n),
        None => envelope(
            StatusCode::NOT_FOUND,
            22001,
            "namespace not exist",
            json!(format!("namespaceId [ {id} ] not exist")),
        ),
    }
}

/// `POST /nacos/v2/console/namespace` (`namespaceId` — blank: a random id —,
/// `namespaceName`, `namespaceDesc`): `data: true`; 400 / 22000 for an invalid or taken id or
/// an invalid name.
pub async fn namespace_create(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let Some(id) = p.get("namespaceId").map(|s| s.trim().to_string()) else {
        return missing("namespaceId");
    };
    let Some(name) = p.get("namespaceName").map(str::to_string) else {
        return missing("namespaceName");
    };
    if !id.is_empty() {
        if id.len() > 128 {
            return illegal_namespace("too long namespaceId, over 128".into());
        }
        if !namespace_v1::valid_id(&id) {
            return illegal_namespace(format!("namespaceId [{id}] mismatch the pattern"));
        }
    }
    if !namespace_v1::valid_name(&name) {
        return illegal_namespace(format!("namespaceName [{name}] contains illegal char"));
    }
    let p = p.set("customNamespaceId", &id);
    match v1_json(namespace_v1::create(st, who, p).await).await {
        Ok(Value::Bool(true)) => envelope(StatusCode::OK, 0, "success", json!(true)),
        Ok(_) => illegal_namespace(format!("the namespaceId is existed, namespaceId: {id}")),
        Err(resp) => resp,
    }
}

/// `PUT /nacos/v2/console/namespace` (`namespaceId`, `namespaceName`, `namespaceDesc`):
/// `data: true` (also for an unknown namespace, as v2); 400 / 22000 for an invalid name.
pub async fn namespace_update(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let Some(id) = p.get("namespaceId").map(str::to_string) else {
        return missing("namespaceId");
    };
    let Some(name) = p.get("namespaceName").map(str::to_string) else {
        return missing("namespaceName");
    };
    if !namespace_v1::valid_name(&name) {
        return illegal_namespace(format!("namespaceName [{name}] contains illegal char"));
    }
    let p = p.set("namespace", &id).set("namespaceShowName", &name);
    match v1_json(namespace_v1::update(st, who, p).await).await {
        Ok(_) => envelope(StatusCode::OK, 0, "success", json!(true)),
        Err(resp) => resp,
    }
}

/// `DELETE /nacos/v2/console/namespace?namespaceId=`: `data: true` (also when absent).
pub async fn namespace_delete(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    if p.get("namespaceId").is_none() {
        return missing("namespaceId");
    }
    match v1_json(namespace_v1::delete(st, who, p).await).await {
        Ok(_) => envelope(StatusCode::OK, 0, "success", json!(true)),
        Err(resp) => resp,
    }
}

/// `GET /nacos/v2/console/namespace/list`: `data` is the namespaces.
pub async fn namespaces(st: State<AppState>, who: NacosCaller, p: Params) -> Response {
    let r = namespace_v1::list(st, who, p).await;
    wrap(r, Data::Json, |v| {
        if let Some(data) = v.get("data").cloned() {
            *v = data;
        }
    })
    .await
}
