//! Every request handler of one running member, fed arbitrary bytes: the etcd gRPC services
//! (the message decoded from the input), the JSON gateway, the `/mast/v1` API, the Nacos HTTP
//! API (query string and form body from the input) and the Nacos 2.x gRPC requests (a JSON
//! body from the input, over a real connection set up as a Nacos client does). A handler
//! may refuse anything, but it must answer (or time out, for calls that wait by design such
//! as a lock held by someone else) and never panic — libFuzzer's panic hook aborts on a panic
//! in any task, so a panic in a spawned task or the applier is caught as well.
//!
//! Input: `[target][path][method] query \0 body`. The member is rebuilt in a fresh directory
//! every [`REBUILD_EVERY`] inputs, so a state that shuts most doors (auth enabled, a CORRUPT
//! alarm) does not stop the fuzzer from reaching the rest for long.
//!
//! Left out, with the reason: `Watch`, `LeaseKeepAlive`'s stream, `Observe`, `Snapshot`, the
//! event stream and the Nacos bi-stream never end by themselves (their decoding is the same
//! prost / serde code the unary calls reach); `MemberAdd`, `MemberRemove`, `MemberPromote` and
//! `MoveLeader` change who votes, after which a one-member world has no quorum.

use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use mast_proto::nacospb::bi_request_stream_client::BiRequestStreamClient;
use mast_proto::nacospb::request_client::RequestClient;
use mast_proto::nacospb::{Metadata, Payload};
use tower::ServiceExt;

/// Inputs served by one member before it is replaced by a fresh one.
const REBUILD_EVERY: u64 = 2000;
/// How long one call may take before the fuzzer moves on (calls that wait by design).
const CALL_TIMEOUT: Duration = Duration::from_millis(300);

/// The etcd unary gRPC methods (full paths), as `etcdctl` and the clients call them.
const GRPC: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Downgrade",
    "/etcdserverpb.Auth/AuthEnable",
    "/etcdserverpb.Auth/AuthDisable",
    "/etcdserverpb.Auth/AuthStatus",
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Auth/UserAdd",
    "/etcdserverpb.Auth/UserGet",
    "/etcdserverpb.Auth/UserList",
    "/etcdserverpb.Auth/UserDelete",
    "/etcdserverpb.Auth/UserChangePassword",
    "/etcdserverpb.Auth/UserGrantRole",
    "/etcdserverpb.Auth/UserRevokeRole",
    "/etcdserverpb.Auth/RoleAdd",
    "/etcdserverpb.Auth/RoleGet",
    "/etcdserverpb.Auth/RoleList",
    "/etcdserverpb.Auth/RoleDelete",
    "/etcdserverpb.Auth/RoleGrantPermission",
    "/etcdserverpb.Auth/RoleRevokePermission",
    "/v3lockpb.Lock/Lock",
    "/v3lockpb.Lock/Unlock",
    "/v3electionpb.Election/Campaign",
    "/v3electionpb.Election/Proclaim",
    "/v3electionpb.Election/Leader",
    "/v3electionpb.Election/Resign",
];

/// HTTP routes taking a JSON body or a query: the etcd gateway, `/mast/v1` and the Nacos
/// API. Path parameters are filled with fixed, valid-looking segments.
const HTTP: &[&str] = &[
    "/v3/kv/range",
    "/v3/kv/put",
    "/v3/kv/deleterange",
    "/v3/kv/txn",
    "/v3/kv/compaction",
    "/v3/lease/grant",
    "/v3/lease/revoke",
    "/v3/lease/keepalive",
    "/v3/lease/timetolive",
    "/v3/lease/leases",
    "/v3/cluster/member/list",
    "/v3/maintenance/status",
    "/v3/maintenance/alarm",
    "/v3/maintenance/hash",
    "/v3/maintenance/hashkv",
    "/v3/auth/status",
    "/v3/auth/authenticate",
    "/v3/auth/enable",
    "/v3/auth/disable",
    "/v3/auth/user/add",
    "/v3/auth/user/get",
    "/v3/auth/user/list",
    "/v3/auth/user/delete",
    "/v3/auth/user/changepw",
    "/v3/auth/user/grant",
    "/v3/auth/user/revoke",
    "/v3/auth/role/add",
    "/v3/auth/role/get",
    "/v3/auth/role/list",
    "/v3/auth/role/delete",
    "/v3/auth/role/grant",
    "/v3/auth/role/revoke",
    "/v3/lock/lock",
    "/v3/lock/unlock",
    "/v3/election/campaign",
    "/v3/election/proclaim",
    "/v3/election/leader",
    "/v3/election/resign",
    "/mast/v1/services",
    "/mast/v1/services/svc/instances",
    "/mast/v1/services/svc/instances/i-1",
    "/mast/v1/services/svc/instances/i-1/heartbeat",
    "/mast/v1/configs",
    "/mast/v1/configs/public/DEFAULT_GROUP/app.json",
    "/mast/v1/configs/public/DEFAULT_GROUP/app.json/history",
    "/mast/v1/configs/public/DEFAULT_GROUP/app.json/history/1",
    "/mast/v1/configs/public/DEFAULT_GROUP/app.json/diff",
    "/mast/v1/configs/public/DEFAULT_GROUP/app.json/rollback",
    "/nacos/v1/cs/configs",
    "/nacos/v1/cs/configs/listener",
    "/nacos/v1/ns/instance",
    "/nacos/v1/ns/instance/list",
    "/nacos/v1/ns/instance/beat",
    "/nacos/v1/ns/service",
    "/nacos/v1/ns/service/list",
    "/nacos/v1/ns/operator/metrics",
    "/nacos/v1/cs/history",
    "/nacos/v1/cs/history/previous",
    "/nacos/v1/console/namespaces",
    "/nacos/v2/cs/config",
    "/nacos/v2/ns/instance",
    "/nacos/v2/ns/instance/list",
    "/nacos/v2/ns/instance/beat",
    "/nacos/v2/cs/history",
    "/nacos/v2/cs/history/list",
    "/nacos/v2/cs/history/previous",
    "/nacos/v2/ns/service",
    "/nacos/v2/ns/service/list",
    "/nacos/v2/console/namespace",
    "/nacos/v2/console/namespace/list",
    "/nacos/v1/auth/users",
    "/nacos/v1/auth/roles",
    "/nacos/v1/auth/permissions",
    "/nacos/v1/auth/login",
    "/nacos/v1/auth/users/login",
];

/// The Nacos 2.x request types a client sends on `Request/request`.
const NACOS_TYPES: &[&str] = &[
    "ServerCheckRequest",
    "HealthCheckRequest",
    "ConfigQueryRequest",
    "ConfigPublishRequest",
    "ConfigRemoveRequest",
    "ConfigBatchListenRequest",
    "InstanceRequest",
    "BatchInstanceRequest",
    "PersistentInstanceRequest",
    "ServiceQueryRequest",
    "SubscribeServiceRequest",
    "ServiceListRequest",
];

const METHODS: &[http::Method] = &[
    http::Method::GET,
    http::Method::POST,
    http::Method::PUT,
    http::Method::DELETE,
    http::Method::PATCH,
];

struct World {
    served: u64,
    /// The client port's router: etcd gRPC, the gateway, `/mast/v1`.
    app: axum::Router,
    /// The Nacos HTTP port's router (served on its own port, as `mast serve` does).
    nacos_http: axum::Router,
    nacos: RequestClient<tonic::transport::Channel>,
    /// Keeps the Nacos connection's bi-stream open (dropping it ends the stream).
    _setup: tokio::sync::mpsc::Sender<Payload>,
    server: Option<mast_server::Server>,
    _dir: tempfile::TempDir,
}

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
});

static WORLD: LazyLock<Mutex<Option<World>>> = LazyLock::new(|| Mutex::new(None));

fn nacos_payload(kind: &str, body: Vec<u8>) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: kind.to_string(),
            client_ip: "127.0.0.1".into(),
            headers: Default::default(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: body,
        }),
    }
}

async fn build() -> World {
    // In memory when it can be: every write waits for the log's fsync.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir");
    let mut config = mast_server::ServerConfig::new(dir.path());
    config.listen = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    config.conn_threads = 0;
    let mut server = mast_server::Server::start_with(config, mast_registry::router)
        .await
        .expect("server");
    let node = server.node().clone();
    let (nacos_http, nacos_grpc) = mast_nacos::routers(node.clone(), 16);
    let grpc_addr = server
        .serve_router(SocketAddr::from(([127, 0, 0, 1], 0)), nacos_grpc)
        .await
        .expect("nacos grpc");
    let app = mast_server::serve::app_with(node.clone(), mast_registry::router(node));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let (setup, rx) = tokio::sync::mpsc::channel(4);
    setup
        .send(nacos_payload(
            "ConnectionSetupRequest",
            br#"{"clientVersion":"fuzz","labels":{},"tenant":""}"#.to_vec(),
        ))
        .await
        .expect("setup");
    let mut bi = BiRequestStreamClient::new(channel.clone());
    let stream = bi
        .request_bi_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("bi-stream")
        .into_inner();
    // Drain pushes so the server's push buffer never fills.
    tokio::spawn(async move {
        let mut stream = stream;
        while let Ok(Some(_)) = stream.message().await {}
    });
    World {
        served: 0,
        app,
        nacos_http,
        nacos: RequestClient::new(channel),
        _setup: setup,
        server: Some(server),
        _dir: dir,
    }
}

fn pick<T>(list: &[T], b: u8) -> &T {
    &list[b as usize % list.len()]
}

async fn drain(resp: axum::response::Response) {
    let _ = resp.into_body().collect().await;
}

async fn one(w: &mut World, data: &[u8]) {
    let [target, path, method, rest @ ..] = data else {
        return;
    };
    match target % 4 {
        // etcd gRPC: the message is the input, framed as gRPC.
        0 => {
            let mut framed = Vec::with_capacity(rest.len() + 5);
            framed.push(0);
            framed.extend_from_slice(&(rest.len() as u32).to_be_bytes());
            framed.extend_from_slice(rest);
            let req = http::Request::builder()
                .method(http::Method::POST)
                .uri(*pick(GRPC, *path))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Body::from(framed))
                .expect("request");
            if let Ok(Ok(resp)) =
                tokio::time::timeout(CALL_TIMEOUT, w.app.clone().oneshot(req)).await
            {
                let _ = tokio::time::timeout(CALL_TIMEOUT, drain(resp)).await;
            }
        }
        // HTTP: query before the first NUL, body after it.
        1 | 2 => {
            let (query, body) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&rest[..0], rest),
            };
            let route = *pick(HTTP, *path);
            let router = if route.starts_with("/nacos/") {
                w.nacos_http.clone()
            } else {
                w.app.clone()
            };
            let mut uri = route.to_string();
            if !query.is_empty() {
                uri.push('?');
                uri.push_str(&String::from_utf8_lossy(query));
            }
            let content_type = if target % 4 == 1 {
                "application/json"
            } else {
                "application/x-www-form-urlencoded"
            };
            let Ok(req) = http::Request::builder()
                .method(pick(METHODS, *method).clone())
                .uri(uri)
                .header("content-type", content_type)
                .header("Long-Pulling-Timeout", "100")
                .body(Body::from(body.to_vec()))
            else {
                return;
            };
            if let Ok(Ok(resp)) = tokio::time::timeout(CALL_TIMEOUT, router.oneshot(req)).await {
                let _ = tokio::time::timeout(CALL_TIMEOUT, drain(resp)).await;
            }
        }
        // Nacos 2.x gRPC: a request type and its JSON body.
        _ => {
            let p = nacos_payload(pick::<&str>(NACOS_TYPES, *path), rest.to_vec());
            let _ = tokio::time::timeout(CALL_TIMEOUT, w.nacos.request(p)).await;
        }
    }
}

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let mut guard = WORLD.lock().expect("world");
    RT.block_on(async {
        if guard.as_ref().is_some_and(|w| w.served >= REBUILD_EVERY)
            && let Some(server) = guard.take().and_then(|mut old| old.server.take())
        {
            server.shutdown().await;
        }
        if guard.is_none() {
            *guard = Some(build().await);
        }
        let w = guard.as_mut().expect("built");
        w.served += 1;
        one(w, data).await;
    });
}
