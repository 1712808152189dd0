//! HTTP routes on the client port: `/health`, `/version`, `/metrics`, and etcd's JSON gateway
//! (`POST /v3/kv/range`, `/v3/watch`, …) as etcd's grpc-gateway renders it: snake_case field
//! names, bytes as base64, 64-bit integers as strings, streams as newline-separated
//! `{"result": …}` objects, errors as `{"error", "code", "message"}` with an HTTP status (made
//! from an [`EtcdError`] in one place for unary calls and one for streams).

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
use tonic::Code;

use crate::api::{self, auth, cluster, concurrency, kv, lease, maintenance};
use crate::authz::Caller;
use crate::error::EtcdError;
use crate::node::Node;
use crate::serve::ClientAddr;

/// The process-wide Prometheus recorder (metrics are global in the `metrics` crate).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // etcd's peer round-trip histogram: 16 buckets from 0.1 ms, each twice the last; the
        // same for unary call latency (go-grpc-prometheus's `grpc_server_handling_seconds`).
        let rtt_buckets: Vec<f64> = (0..16).map(|i| 0.0001 * f64::from(1u32 << i)).collect();
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    "etcd_network_peer_round_trip_time_seconds".into(),
                ),
                &rtt_buckets,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "grpc_server_handling_seconds".into(),
                    ),
                    &rtt_buckets,
                )
            })
            .map_or_else(
                |_| PrometheusBuilder::new().build_recorder(),
                PrometheusBuilder::build_recorder,
            );
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

/// A unary call's error as grpc-gateway renders it.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// The gateway's edge for unary calls: an [`EtcdError`] as `{"error", "message", "code"}` (the
/// message twice, the gRPC code as a number) with the HTTP status grpc-gateway gives the code.
pub(crate) fn error_response(e: &EtcdError) -> Response {
    let code = e.code();
    let message = e.to_string();
    let body = ErrorBody {
        error: &message,
        message: &message,
        code: code as i32,
    };
    (http_status(code), axum::Json(body)).into_response()
}

/// The gateway's edge for streams: an [`EtcdError`] as the one `{"error": {…}}` object
/// grpc-gateway sends in place of a stream's next result.
fn stream_error_body(e: &EtcdError) -> serde_json::Value {
    let code = e.code();
    let status = http_status(code);
    serde_json::json!({"error": {
        "grpc_code": code as i32,
        "http_code": status.as_u16(),
        "message": e.to_string(),
        "http_status": status.canonical_reason(),
    }})
}

fn json_response<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(e) => error_response(&EtcdError::Internal(e.to_string())),
    }
}

fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, EtcdError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| EtcdError::BadRequestBody(e.to_string()))
}

async fn unary<Req, Resp, Fut>(body: Bytes, f: impl FnOnce(Req) -> Fut) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    Fut: std::future::Future<Output = Result<Resp, EtcdError>>,
{
    let req = match parse::<Req>(&body) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    match f(req).await {
        Ok(resp) => json_response(&resp),
        Err(e) => error_response(&e),
    }
}

/// Parses a request body that carries a sequence of JSON objects (a client stream). A body
/// that stops decoding ends the stream with the decoder's error.
fn json_stream<T: DeserializeOwned + Send + 'static>(
    body: Body,
) -> impl Stream<Item = Result<T, serde_json::Error>> + Unpin + Send {
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
                        return Some((Err(e), (frames, Vec::new(), true)));
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
    rx: tokio::sync::mpsc::Receiver<Result<T, EtcdError>>,
) -> Response {
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
        let mut bytes = match item {
            Ok(v) => serde_json::to_vec(&StreamItem { result: v }),
            Err(e) => serde_json::to_vec(&stream_error_body(&e)),
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

/// The caller of a gateway request: `Authorization` header and client address.
fn caller_of(
    headers: &http::HeaderMap,
    ci: Option<&axum::Extension<axum::extract::ConnectInfo<ClientAddr>>>,
) -> Caller {
    Caller::from_http(headers, ci.map(|c| &c.0.0))
}

/// Declares a unary gateway handler: `$name(node, caller, request) -> Result<response>`.
macro_rules! gateway {
    ($name:ident, $req:ty, |$n:ident, $c:ident, $r:ident| $call:expr) => {
        async fn $name(
            State(node): N,
            ci: Option<axum::Extension<axum::extract::ConnectInfo<ClientAddr>>>,
            headers: http::HeaderMap,
            body: Bytes,
        ) -> Response {
            let caller = caller_of(&headers, ci.as_ref());
            unary(body, move |$r: $req| async move {
                let $n = &node;
                let $c = &caller;
                $call
            })
            .await
        }
    };
}

gateway!(lock_lock, mast_proto::v3lockpb::LockRequest, |n, c, r| {
    concurrency::lock(n, c, r).await
});
gateway!(
    lock_unlock,
    mast_proto::v3lockpb::UnlockRequest,
    |n, c, r| concurrency::unlock(n, c, r).await
);
gateway!(
    election_campaign,
    mast_proto::v3electionpb::CampaignRequest,
    |n, c, r| concurrency::campaign(n, c, r).await
);
gateway!(
    election_proclaim,
    mast_proto::v3electionpb::ProclaimRequest,
    |n, c, r| concurrency::proclaim(n, c, r).await
);
gateway!(
    election_leader,
    mast_proto::v3electionpb::LeaderRequest,
    |n, c, r| concurrency::leader(n, c, r).await
);
gateway!(
    election_resign,
    mast_proto::v3electionpb::ResignRequest,
    |n, c, r| concurrency::resign(n, c, r).await
);
gateway!(kv_range, pb::RangeRequest, |n, c, r| kv::range(n, c, r)
    .await);
gateway!(kv_put, pb::PutRequest, |n, c, r| kv::put(n, c, r).await);
gateway!(kv_delete, pb::DeleteRangeRequest, |n, c, r| {
    kv::delete_range(n, c, r).await
});
gateway!(kv_txn, pb::TxnRequest, |n, c, r| kv::txn(n, c, r).await);
gateway!(kv_compact, pb::CompactionRequest, |n, c, r| kv::compact(
    n, c, r
)
.await);
gateway!(lease_grant, pb::LeaseGrantRequest, |n, c, r| lease::grant(
    n, c, r
)
.await);
gateway!(lease_revoke, pb::LeaseRevokeRequest, |n, c, r| {
    lease::revoke(n, c, r).await
});
gateway!(lease_ttl, pb::LeaseTimeToLiveRequest, |n, c, r| {
    lease::time_to_live(n, c, r).await
});
gateway!(lease_leases, pb::LeaseLeasesRequest, |n, _c, _r| Ok::<
    _,
    EtcdError,
>(
    lease::leases(n)
));
gateway!(member_list, pb::MemberListRequest, |n, c, r| {
    cluster::member_list(n, c, r).await
});
gateway!(member_add, pb::MemberAddRequest, |n, c, r| {
    cluster::member_add(n, c, r).await
});
gateway!(member_remove, pb::MemberRemoveRequest, |n, c, r| {
    cluster::member_remove(n, c, r).await
});
gateway!(member_update, pb::MemberUpdateRequest, |n, c, r| {
    cluster::member_update(n, c, r).await
});
gateway!(member_promote, pb::MemberPromoteRequest, |n, c, r| {
    cluster::member_promote(n, c, r).await
});
gateway!(
    m_status,
    pb::StatusRequest,
    |n, _c, _r| maintenance::status(n)
);
gateway!(m_alarm, pb::AlarmRequest, |n, _c, r| maintenance::alarm(
    n, r
)
.await);
gateway!(m_defrag, pb::DefragmentRequest, |n, c, _r| {
    n.require_admin_maintenance(c)?;
    maintenance::defragment(n).await
});
gateway!(m_hash, pb::HashRequest, |n, c, _r| {
    n.require_admin_maintenance(c)?;
    maintenance::hash(n)
});
gateway!(m_hashkv, pb::HashKvRequest, |n, c, r| {
    n.require_admin_maintenance(c)?;
    maintenance::hash_kv(n, r)
});
gateway!(auth_status, pb::AuthStatusRequest, |n, _c, _r| Ok::<
    _,
    EtcdError,
>(
    auth::auth_status(n)
));
gateway!(auth_authenticate, pb::AuthenticateRequest, |n, c, r| {
    auth::authenticate(n, c, r).await
});
gateway!(auth_enable, pb::AuthEnableRequest, |n, c, r| {
    auth::ops::enable(n, c, r).await
});
gateway!(auth_disable, pb::AuthDisableRequest, |n, c, r| {
    auth::ops::disable(n, c, r).await
});
gateway!(user_add, pb::AuthUserAddRequest, |n, c, r| {
    auth::ops::user_add(n, c, r).await
});
gateway!(user_get, pb::AuthUserGetRequest, |n, c, r| {
    auth::ops::user_get(n, c, r)
});
gateway!(user_list, pb::AuthUserListRequest, |n, c, _r| {
    auth::ops::user_list(n, c)
});
gateway!(user_delete, pb::AuthUserDeleteRequest, |n, c, r| {
    auth::ops::user_delete(n, c, r).await
});
gateway!(
    user_changepw,
    pb::AuthUserChangePasswordRequest,
    |n, c, r| auth::ops::user_change_password(n, c, r).await
);
gateway!(user_grant, pb::AuthUserGrantRoleRequest, |n, c, r| {
    auth::ops::user_grant_role(n, c, r).await
});
gateway!(user_revoke, pb::AuthUserRevokeRoleRequest, |n, c, r| {
    auth::ops::user_revoke_role(n, c, r).await
});
gateway!(role_add, pb::AuthRoleAddRequest, |n, c, r| {
    auth::ops::role_add(n, c, r).await
});
gateway!(role_get, pb::AuthRoleGetRequest, |n, c, r| {
    auth::ops::role_get(n, c, r)
});
gateway!(role_list, pb::AuthRoleListRequest, |n, c, _r| {
    auth::ops::role_list(n, c)
});
gateway!(role_delete, pb::AuthRoleDeleteRequest, |n, c, r| {
    auth::ops::role_delete(n, c, r).await
});
gateway!(role_grant, pb::AuthRoleGrantPermissionRequest, |n, c, r| {
    auth::ops::role_grant_permission(n, c, r).await
});
gateway!(
    role_revoke,
    pb::AuthRoleRevokePermissionRequest,
    |n, c, r| auth::ops::role_revoke_permission(n, c, r).await
);

async fn lease_keepalive(State(n): N, body: Body) -> Response {
    stream_response(lease::keep_alive_stream(n.clone(), json_stream(body)))
}

async fn watch(
    State(n): N,
    ci: Option<axum::Extension<axum::extract::ConnectInfo<ClientAddr>>>,
    headers: http::HeaderMap,
    body: Body,
) -> Response {
    let caller = caller_of(&headers, ci.as_ref());
    stream_response(api::watch::open_session(
        n.clone(),
        caller,
        json_stream(body),
    ))
}

async fn m_snapshot(
    State(n): N,
    ci: Option<axum::Extension<axum::extract::ConnectInfo<ClientAddr>>>,
    headers: http::HeaderMap,
) -> Response {
    if let Err(e) = n.require_admin_maintenance(&caller_of(&headers, ci.as_ref())) {
        return error_response(&e);
    }
    stream_response(maintenance::snapshot_stream(n.clone()))
}

async fn health(State(n): N) -> Response {
    // As etcd's /health: false without a leader; otherwise a linearizable read must go
    // through (a read index round, or the store alone on a member that leads alone).
    let (ok, reason) = if n.consensus.leader() == 0 {
        (false, "RAFT NO LEADER".to_string())
    } else {
        match n.linearize().await {
            Err(e) => (false, e.to_string()),
            Ok(()) => match n.store.range(&pb::RangeRequest {
                key: bytes::Bytes::from_static(b"health"),
                ..Default::default()
            }) {
                Ok(_) => (true, String::new()),
                Err(e) => (false, e.to_string()),
            },
        }
    };
    let body = serde_json::json!({"health": if ok { "true" } else { "false" }, "reason": reason});
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
        metrics::gauge!("etcd_server_quota_backend_bytes")
            .set(n.quota_bytes().map_or(0.0, |q| q as f64));
        metrics::gauge!("etcd_debugging_mvcc_current_revision").set(s.revision as f64);
        metrics::gauge!("etcd_debugging_mvcc_compact_revision").set(s.compact_revision as f64);
        metrics::gauge!("etcd_debugging_mvcc_keys_total").set(s.keys as f64);
        metrics::gauge!("etcd_server_proposals_committed_total")
            .set(n.consensus.raft_index() as f64);
        metrics::gauge!("etcd_server_proposals_applied_total")
            .set(n.consensus.applied_index() as f64);
    }
    metrics::gauge!("etcd_server_has_leader").set(f64::from(u8::from(n.consensus.leader() != 0)));
    metrics::gauge!("etcd_server_is_leader").set(f64::from(u8::from(n.consensus.is_leader())));
    metrics::gauge!("etcd_server_id", "server_id" => format!("{:x}", n.identity.member_id))
        .set(1.0);
    metrics::gauge!("etcd_debugging_lease_granted_total").set(n.lessor.len() as f64);
    if let Some(stats) = n.config.allocator_stats.and_then(|read| read()) {
        metrics::gauge!("mast_allocator_allocated_bytes").set(stats.allocated as f64);
        metrics::gauge!("mast_allocator_resident_bytes").set(stats.resident as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// Answers gRPC calls to services Mast does not serve with the gRPC
/// `Unimplemented` status, and anything else with a JSON 404.
async fn fallback(req: axum::extract::Request) -> Response {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        let e = EtcdError::unimplemented(req.uri().path());
        let mut resp = Response::new(Body::empty());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(e.code() as i32));
        if let Ok(v) = HeaderValue::from_str(&e.to_string()) {
            h.insert("grpc-message", v);
        }
        return resp;
    }
    error_response(&EtcdError::NoRoute {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
    })
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
        .route("/v3/cluster/member/add", post(member_add))
        .route("/v3/cluster/member/remove", post(member_remove))
        .route("/v3/cluster/member/update", post(member_update))
        .route("/v3/cluster/member/promote", post(member_promote))
        .route("/v3/maintenance/status", post(m_status))
        .route("/v3/maintenance/alarm", post(m_alarm))
        .route("/v3/maintenance/defragment", post(m_defrag))
        .route("/v3/maintenance/hash", post(m_hash))
        .route("/v3/maintenance/hashkv", post(m_hashkv))
        .route("/v3/maintenance/snapshot", post(m_snapshot))
        .route("/v3/auth/status", post(auth_status))
        .route("/v3/auth/authenticate", post(auth_authenticate))
        .route("/v3/auth/enable", post(auth_enable))
        .route("/v3/auth/disable", post(auth_disable))
        .route("/v3/auth/user/add", post(user_add))
        .route("/v3/auth/user/get", post(user_get))
        .route("/v3/auth/user/list", post(user_list))
        .route("/v3/auth/user/delete", post(user_delete))
        .route("/v3/auth/user/changepw", post(user_changepw))
        .route("/v3/auth/user/grant", post(user_grant))
        .route("/v3/auth/user/revoke", post(user_revoke))
        .route("/v3/auth/role/add", post(role_add))
        .route("/v3/auth/role/get", post(role_get))
        .route("/v3/auth/role/list", post(role_list))
        .route("/v3/auth/role/delete", post(role_delete))
        .route("/v3/auth/role/grant", post(role_grant))
        .route("/v3/auth/role/revoke", post(role_revoke))
        .route("/v3/lock/lock", post(lock_lock))
        .route("/v3/lock/unlock", post(lock_unlock))
        .route("/v3/election/campaign", post(election_campaign))
        .route("/v3/election/proclaim", post(election_proclaim))
        .route("/v3/election/leader", post(election_leader))
        .route("/v3/election/resign", post(election_resign))
        .fallback(fallback)
        .with_state(node)
}
