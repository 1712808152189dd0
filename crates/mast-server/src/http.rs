//! HTTP routes on the client port: `/health`, `/version`, `/metrics`, and etcd's JSON gateway
//! (`POST /v3/kv/range`, `/v3/watch`, …) as etcd's grpc-gateway renders it: snake_case field
//! names, bytes as base64, 64-bit integers as strings, streams as newline-separated
//! `{"result": …}` objects, errors as `{"error", "code", "message"}` with an HTTP status.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::{Stream, StreamExt};
use mast_proto::etcdserverpb as pb;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Code, Status};

use crate::api::{self, auth, cluster, kv, lease, maintenance};
use crate::node::Node;

/// The process-wide Prometheus recorder (metrics are global in the `metrics` crate).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (tests embedding several servers).
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The HTTP status etcd 3.4's grpc-gateway gives a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

fn error_response(s: &Status) -> Response {
    let body = ErrorBody {
        error: s.message(),
        message: s.message(),
        code: s.code() as i32,
    };
    (http_status(s.code()), axum::Json(body)).into_response()
}

fn json_response<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => error_response(&Status::internal(e.to_string())),
    }
}

fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

async fn unary<Req, Resp, Fut>(body: Bytes, f: impl FnOnce(Req) -> Fut) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    Fut: std::future::Future<Output = Result<Resp, Status>>,
{
    let req = match parse::<Req>(&body) {
        Ok(r) => r,
        Err(s) => return error_response(&s),
    };
    match f(req).await {
        Ok(resp) => json_response(&resp),
        Err(s) => error_response(&s),
    }
}

/// Parses a request body that carries a sequence of JSON objects (a client stream).
fn json_stream<T: DeserializeOwned + Send + 'static>(
    body: Body,
) -> impl Stream<Item = Result<T, Status>> + Unpin + Send {
    let frames = body.into_data_stream();
    Box::pin(futures::stream::unfold(
        (frames, Vec::<u8>::new(), false),
        |(mut frames, mut buf, mut done)| async move {
            loop {
                let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<T>();
                match it.next() {
                    Some(Ok(v)) => {
                        let used = it.byte_offset();
                        buf.drain(..used);
                        return Some((Ok(v), (frames, buf, done)));
                    }
                    Some(Err(e)) if !e.is_eof() => {
                        return Some((
                            Err(Status::invalid_argument(e.to_string())),
                            (frames, Vec::new(), true),
                        ));
                    }
                    _ => {}
                }
                if done {
                    return None;
                }
                match frames.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    _ => done = true,
                }
            }
        },
    ))
}

#[derive(Serialize)]
struct StreamItem<T> {
    result: T,
}

/// Renders a response stream as newline-separated `{"result": …}` objects.
fn stream_response<T: Serialize + Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<Result<T, Status>>,
) -> Response {
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
        let mut bytes = match item {
            Ok(v) => serde_json::to_vec(&StreamItem { result: v }),
            Err(s) => serde_json::to_vec(&serde_json::json!({"error": {"grpc_code": s.code() as i32, "http_code": http_status(s.code()).as_u16(), "message": s.message(), "http_status": http_status(s.code()).canonical_reason()}})),
        }
        .unwrap_or_default();
        bytes.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(bytes))
    });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

type N = State<Arc<Node>>;

async fn kv_range(State(n): N, body: Bytes) -> Response {
    unary(
        body,
        |r: pb::RangeRequest| async move { kv::range(&n, r).await },
    )
    .await
}
async fn kv_put(State(n): N, body: Bytes) -> Response {
    unary(
        body,
        |r: pb::PutRequest| async move { kv::put(&n, r).await },
    )
    .await
}
async fn kv_delete(State(n): N, body: Bytes) -> Response {
    unary(body, |r: pb::DeleteRangeRequest| async move {
        kv::delete_range(&n, r).await
    })
    .await
}
async fn kv_txn(State(n): N, body: Bytes) -> Response {
    unary(
        body,
        |r: pb::TxnRequest| async move { kv::txn(&n, r).await },
    )
    .await
}
async fn kv_compact(State(n): N, body: Bytes) -> Response {
    unary(body, |r: pb::CompactionRequest| async move {
        kv::compact(&n, r).await
    })
    .await
}
async fn lease_grant(State(n): N, body: Bytes) -> Response {
    unary(body, |r: pb::LeaseGrantRequest| async move {
        lease::grant(&n, r).await
    })
    .await
}
async fn lease_revoke(State(n): N, body: Bytes) -> Response {
    unary(body, |r: pb::LeaseRevokeRequest| async move {
        lease::revoke(&n, r).await
    })
    .await
}
async fn lease_ttl(State(n): N, body: Bytes) -> Response {
    unary(body, |r: pb::LeaseTimeToLiveRequest| async move {
        Ok(lease::time_to_live(&n, r))
    })
    .await
}
async fn lease_leases(State(n): N, body: Bytes) -> Response {
    unary(body, |_: pb::LeaseLeasesRequest| async move {
        Ok(lease::leases(&n))
    })
    .await
}
async fn lease_keepalive(State(n): N, body: Body) -> Response {
    stream_response(lease::keep_alive_stream(n.clone(), json_stream(body)))
}
async fn watch(State(n): N, body: Body) -> Response {
    stream_response(api::watch::open_session(n.clone(), json_stream(body)))
}
async fn member_list(State(n): N, body: Bytes) -> Response {
    unary(body, |_: pb::MemberListRequest| async move {
        Ok(cluster::member_list(&n))
    })
    .await
}
async fn not_clustered(body: Bytes) -> Response {
    let _ = body;
    error_response(&api::unimplemented("membership changes (clustering)"))
}
async fn m_status(State(n): N, body: Bytes) -> Response {
    unary(body, |_: pb::StatusRequest| async move {
        maintenance::status(&n)
    })
    .await
}
async fn m_alarm(State(n): N, body: Bytes) -> Response {
    unary(body, |r: pb::AlarmRequest| async move {
        maintenance::alarm(&n, r)
    })
    .await
}
async fn m_defrag(State(n): N, body: Bytes) -> Response {
    unary(body, |_: pb::DefragmentRequest| async move {
        maintenance::defragment(&n).await
    })
    .await
}
async fn m_hash(State(n): N, body: Bytes) -> Response {
    unary(body, |_: pb::HashRequest| async move {
        n.store
            .hash()
            .map_err(api::status_of)
            .map(|hash| pb::HashResponse {
                header: n.header(),
                hash,
            })
    })
    .await
}
async fn m_hashkv(State(n): N, body: Bytes) -> Response {
    unary(body, |r: pb::HashKvRequest| async move {
        maintenance::hash_kv(&n, r)
    })
    .await
}
async fn m_snapshot(State(n): N) -> Response {
    stream_response(maintenance::snapshot_stream(n.clone()))
}
async fn auth_status(State(n): N, body: Bytes) -> Response {
    unary(body, |_: pb::AuthStatusRequest| async move {
        Ok(auth::auth_status(&n))
    })
    .await
}
async fn auth_authenticate(body: Bytes) -> Response {
    let _ = body;
    error_response(&auth::err_auth_not_enabled())
}
async fn auth_other(body: Bytes) -> Response {
    let _ = body;
    error_response(&api::unimplemented("this Auth RPC"))
}

async fn health(State(n): N) -> Response {
    // Healthy when the store answers a read, as etcd's /health does a quorum read.
    let ok = n
        .store
        .range(&pb::RangeRequest {
            key: bytes::Bytes::from_static(b"health"),
            ..Default::default()
        })
        .is_ok();
    let body = serde_json::json!({"health": if ok { "true" } else { "false" }, "reason": ""});
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn version() -> Response {
    axum::Json(serde_json::json!({"etcdserver": maintenance::ETCD_VERSION, "etcdcluster": "3.5.0"}))
        .into_response()
}

async fn metrics_text(State(n): N) -> Response {
    if let Ok(s) = n.store.status() {
        metrics::gauge!("etcd_mvcc_db_total_size_in_bytes").set(s.db_size as f64);
        metrics::gauge!("etcd_mvcc_db_total_size_in_use_in_bytes").set(s.db_size_in_use as f64);
        metrics::gauge!("etcd_debugging_mvcc_current_revision").set(s.revision as f64);
        metrics::gauge!("etcd_debugging_mvcc_compact_revision").set(s.compact_revision as f64);
        metrics::gauge!("etcd_debugging_mvcc_keys_total").set(s.keys as f64);
        metrics::gauge!("etcd_server_proposals_committed_total").set(s.applied_index as f64);
        metrics::gauge!("etcd_server_proposals_applied_total").set(s.applied_index as f64);
    }
    metrics::gauge!("etcd_server_has_leader").set(1.0);
    metrics::gauge!("etcd_server_is_leader").set(1.0);
    metrics::gauge!("etcd_debugging_lease_granted_total").set(n.lessor.len() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// Answers gRPC calls to services Mast does not serve (Lock, Election, …) with the gRPC
/// `Unimplemented` status, and anything else with a JSON 404.
async fn fallback(req: axum::extract::Request) -> Response {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        let path = req.uri().path().to_string();
        let mut resp = Response::new(Body::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(Code::Unimplemented as i32));
        if let Ok(v) = HeaderValue::from_str(&format!("{path} is not supported by Mast yet")) {
            h.insert("grpc-message", v);
        }
        return resp;
    }
    let s = Status::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ));
    error_response(&s)
}

/// The HTTP routes, built without a socket so tests can call them directly.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health).post(health))
        .route("/version", get(version).post(version))
        .route("/metrics", get(metrics_text))
        .route("/v3/kv/range", post(kv_range))
        .route("/v3/kv/put", post(kv_put))
        .route("/v3/kv/deleterange", post(kv_delete))
        .route("/v3/kv/txn", post(kv_txn))
        .route("/v3/kv/compaction", post(kv_compact))
        .route("/v3/watch", post(watch))
        .route("/v3/lease/grant", post(lease_grant))
        .route("/v3/lease/revoke", post(lease_revoke))
        .route("/v3/kv/lease/revoke", post(lease_revoke))
        .route("/v3/lease/keepalive", post(lease_keepalive))
        .route("/v3/lease/timetolive", post(lease_ttl))
        .route("/v3/kv/lease/timetolive", post(lease_ttl))
        .route("/v3/lease/leases", post(lease_leases))
        .route("/v3/kv/lease/leases", post(lease_leases))
        .route("/v3/cluster/member/list", post(member_list))
        .route("/v3/cluster/member/add", post(not_clustered))
        .route("/v3/cluster/member/remove", post(not_clustered))
        .route("/v3/cluster/member/update", post(not_clustered))
        .route("/v3/cluster/member/promote", post(not_clustered))
        .route("/v3/maintenance/status", post(m_status))
        .route("/v3/maintenance/alarm", post(m_alarm))
        .route("/v3/maintenance/defragment", post(m_defrag))
        .route("/v3/maintenance/hash", post(m_hash))
        .route("/v3/maintenance/hashkv", post(m_hashkv))
        .route("/v3/maintenance/snapshot", post(m_snapshot))
        .route("/v3/auth/status", post(auth_status))
        .route("/v3/auth/authenticate", post(auth_authenticate))
        .route("/v3/auth/{*rest}", post(auth_other))
        .fallback(fallback)
        .with_state(node)
}
