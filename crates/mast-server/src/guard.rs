//! The checks etcd's gRPC interceptors make before any handler runs, as one axum layer over
//! the gRPC services and the JSON gateway:
//!
//! - a **learner** serves only `Maintenance.Status` and serializable `KV.Range` (the
//!   serializable part is checked in [`crate::api::kv::range`], where the request is decoded);
//!   everything else answers `etcdserver: rpc not supported for learner` (Unavailable), as
//!   etcd 3.4's `isRPCSupportedForLearner`. Streams (Watch, LeaseKeepAlive, Snapshot) are refused
//!   too, as etcd's stream interceptor does.
//! - a gRPC call carrying the metadata `hasleader: true` (what `clientv3.WithRequireLeader`
//!   sends) fails with `etcdserver: no leader` (Unavailable) while this member knows no leader.
//! - a call carrying a simple token issued at a Raft index this member has not applied yet
//!   (the client logged in on another member a moment ago) waits until it has, for up to the
//!   request timeout, as etcd's simple-token check waits for its index: the token is then
//!   known here instead of `invalid auth token`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::EtcdError;
use crate::node::Node;

/// The metadata key and value of `clientv3.WithRequireLeader` (etcd's
/// `rpctypes.MetadataRequireLeaderKey` / `MetadataHasLeader`).
const REQUIRE_LEADER_KEY: &str = "hasleader";
const HAS_LEADER: &str = "true";

/// The calls a learner serves (both spellings: gRPC path and gateway path). `KV.Range` is
/// further limited to serializable reads by its handler.
const LEARNER_SERVES: [&str; 4] = [
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.KV/Range",
    "/v3/maintenance/status",
    "/v3/kv/range",
];

/// Whether `path` is one of etcd's client calls (gRPC service or JSON gateway) that a learner
/// refuses.
#[must_use]
pub fn learner_refuses(path: &str) -> bool {
    let etcd_call = path.starts_with("/etcdserverpb.")
        || path.starts_with("/v3lockpb.")
        || path.starts_with("/v3electionpb.")
        || path.starts_with("/v3/");
    etcd_call && !LEARNER_SERVES.contains(&path)
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn refuse(grpc: bool, e: EtcdError) -> Response {
    if grpc {
        tonic::Status::from(e)
            .into_http::<axum::body::Body>()
            .into_response()
    } else {
        crate::http::error_response(&e)
    }
}

/// The layer's function: see the module documentation.
pub async fn check(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let grpc = is_grpc(&req);
    if node.consensus.is_learner() && learner_refuses(req.uri().path()) {
        return refuse(grpc, EtcdError::NotSupportedForLearner);
    }
    if grpc
        && req
            .headers()
            .get(REQUIRE_LEADER_KEY)
            .is_some_and(|v| v.as_bytes() == HAS_LEADER.as_bytes())
        && node.consensus.leader() == 0
    {
        return refuse(grpc, EtcdError::NoLeader);
    }
    if let Some(index) = token_index(&node, req.headers())
        && node.consensus.applied_index() < index
    {
        let deadline = tokio::time::Instant::now() + node.consensus.request_timeout;
        // At the deadline the handler refuses the token, as etcd's does.
        let _ = node.consensus.wait_applied(index, deadline).await;
    }
    next.run(req).await
}

/// The Raft index a request's simple token was issued at, when auth is on and it carries one
/// (gRPC metadata `token`, or `Authorization` on the gateway).
fn token_index(node: &Node, headers: &http::HeaderMap) -> Option<u64> {
    let token = headers
        .get("token")
        .or_else(|| headers.get(http::header::AUTHORIZATION))?
        .to_str()
        .ok()?;
    let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
    if !node.store.auth().enabled() {
        return None;
    }
    node.tokens.simple_token_index(token)
}

#[cfg(test)]
mod tests {
    use super::learner_refuses;

    #[test]
    fn a_learner_serves_status_and_range_only() {
        assert!(!learner_refuses("/etcdserverpb.Maintenance/Status"));
        assert!(!learner_refuses("/etcdserverpb.KV/Range"));
        assert!(!learner_refuses("/v3/kv/range"));
        assert!(learner_refuses("/etcdserverpb.KV/Put"));
        assert!(learner_refuses("/etcdserverpb.Watch/Watch"));
        assert!(learner_refuses("/etcdserverpb.Maintenance/Snapshot"));
        assert!(learner_refuses("/etcdserverpb.Cluster/MemberList"));
        assert!(learner_refuses("/v3/kv/put"));
        // Not etcd's: health checks, metrics and the registry API stay served.
        assert!(!learner_refuses("/health"));
        assert!(!learner_refuses("/metrics"));
        assert!(!learner_refuses("/grpc.health.v1.Health/Check"));
    }
}
