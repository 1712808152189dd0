//! `etcdserverpb.Lease`: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use mast_mvcc::{Command, CommandResult, MAX_LEASE_TTL, MvccError};
use mast_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{GrpcStream, grpc_stream, record_code, started, unary};
use crate::authz::Caller;
use crate::error::EtcdError;
use crate::lessor::MIN_LEASE_TTL;
use crate::node::Node;

const SVC: &str = "etcdserverpb.Lease";

/// The Lease service.
pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    /// A Lease service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        LeaseService { node }
    }
}

/// What a lease grant costs against the backend quota, as etcd's `leaseOverhead` (bytes).
pub(crate) const LEASE_COST: u64 = 64;

/// LeaseGrant, as etcd: ID 0 lets the server pick a positive 63-bit ID; a TTL below
/// [`MIN_LEASE_TTL`] seconds is raised to it.
///
/// # Errors
/// `etcdserver: too large lease TTL` above 9,000,000,000 s; `etcdserver: lease already
/// exists` for an ID in use.
pub async fn grant(
    node: &Node,
    caller: &Caller,
    req: LeaseGrantRequest,
) -> Result<LeaseGrantResponse, EtcdError> {
    node.check_token_if_any(caller)?;
    if req.ttl > MAX_LEASE_TTL {
        return Err(MvccError::LeaseTtlTooLarge.into());
    }
    let ttl = req.ttl.max(MIN_LEASE_TTL);
    node.check_quota(LEASE_COST).await?;
    let mut attempts = 0;
    loop {
        let id = if req.id != 0 {
            req.id
        } else {
            node.lease_ids.next()
        };
        match node.write(Command::LeaseGrant { id, ttl }).await {
            Ok(CommandResult::LeaseGrant { id, ttl }) => {
                return Ok(LeaseGrantResponse {
                    header: node.header(),
                    id,
                    ttl,
                    error: String::new(),
                });
            }
            Ok(other) => return Err(EtcdError::unexpected_result(&other)),
            // A picked ID that a client had chosen itself: pick the next.
            Err(EtcdError::Mvcc(MvccError::LeaseExists)) if req.id == 0 && attempts < 8 => {
                attempts += 1
            }
            Err(e) => return Err(e),
        }
    }
}

/// LeaseRevoke, as etcd: deletes the lease and its keys in one revision.
///
/// # Errors
/// `etcdserver: requested lease not found` (NotFound).
pub async fn revoke(
    node: &Node,
    caller: &Caller,
    req: LeaseRevokeRequest,
) -> Result<LeaseRevokeResponse, EtcdError> {
    // As etcd: a lease holding no keys may be revoked without credentials.
    let has_keys = node
        .store
        .leases()
        .get(req.id)
        .is_some_and(|r| !r.keys.is_empty());
    let who = if has_keys {
        let who = node.authenticate_caller(caller)?;
        node.check_lease_keys(&who, req.id, true)?;
        who
    } else {
        node.check_token_if_any(caller)?
    };
    match node
        .write(node.attribute(&who, caller, Command::LeaseRevoke { id: req.id }))
        .await?
    {
        CommandResult::LeaseRevoke { revision } => Ok(LeaseRevokeResponse {
            header: Some(node.header_at(revision)),
        }),
        other => Err(EtcdError::unexpected_result(&other)),
    }
}

/// One keepalive: the full TTL for a live lease, TTL 0 for an unknown one (not an error).
/// Only the leader's lessor renews: a follower hands the keepalive to the leader, as etcd's.
///
/// # Errors
/// No leader, or the leader could not be reached in time.
pub async fn keep_alive_once(
    node: &Node,
    req: &LeaseKeepAliveRequest,
) -> Result<LeaseKeepAliveResponse, EtcdError> {
    let ttl = if node.lessor.is_primary() {
        node.lessor.renew(req.id).unwrap_or(0)
    } else {
        node.consensus
            .lease_at_leader(req.id, true, false)
            .await?
            .ttl
    };
    Ok(LeaseKeepAliveResponse {
        header: node.header(),
        id: req.id,
        ttl,
    })
}

/// LeaseTimeToLive: TTL -1 for an unknown lease, as etcd.
///
/// # Errors
/// Token errors; `etcdserver: permission denied` when the keys are asked for and the caller may
/// not read them all.
pub async fn time_to_live(
    node: &Node,
    caller: &Caller,
    req: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, EtcdError> {
    if req.keys {
        let who = node.authenticate_caller(caller)?;
        node.check_lease_keys(&who, req.id, false)?;
    } else {
        node.check_token_if_any(caller)?;
    }
    if !node.lessor.is_primary() {
        // The leader's lessor knows how long is left.
        let r = node
            .consensus
            .lease_at_leader(req.id, false, req.keys)
            .await?;
        return Ok(LeaseTimeToLiveResponse {
            header: node.header(),
            id: req.id,
            ttl: r.ttl,
            granted_ttl: r.granted_ttl,
            keys: r.keys,
        });
    }
    let leases = node.store.leases();
    Ok(match (leases.get(req.id), node.lessor.timing(req.id)) {
        (Some(rec), Some(t)) => LeaseTimeToLiveResponse {
            header: node.header(),
            id: req.id,
            ttl: t.remaining,
            granted_ttl: rec.ttl,
            keys: if req.keys {
                rec.keys
                    .iter()
                    .map(|k| bytes::Bytes::copy_from_slice(k))
                    .collect()
            } else {
                Vec::new()
            },
        },
        _ => LeaseTimeToLiveResponse {
            header: node.header(),
            id: req.id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        },
    })
}

/// LeaseLeases: every lease, soonest expiry first.
pub fn leases(node: &Node) -> LeaseLeasesResponse {
    LeaseLeasesResponse {
        header: node.header(),
        leases: node
            .lessor
            .ids_by_expiry()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect(),
    }
}

/// Serves a keepalive stream until the client closes it (or its stream fails, with any error
/// `E`) or the server shuts down. It ends with an error only when a keepalive cannot reach
/// the leader (no leader, as etcd's `etcdserver: no leader`), so the client retries.
pub fn keep_alive_stream<S, E>(
    node: Arc<Node>,
    mut requests: S,
) -> mpsc::Receiver<Result<LeaseKeepAliveResponse, EtcdError>>
where
    S: Stream<Item = Result<LeaseKeepAliveRequest, E>> + Unpin + Send + 'static,
    E: Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut shutdown = node.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                req = requests.next() => match req {
                    Some(Ok(req)) => {
                        let r = keep_alive_once(&node, &req).await;
                        let failed = r.is_err();
                        if tx.send(r).await.is_err() || failed {
                            break;
                        }
                    }
                    _ => break,
                },
            }
        }
        record_code(SVC, "LeaseKeepAlive", "bidi_stream", Code::Ok);
    });
    rx
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            SVC,
            "LeaseGrant",
            grant(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            SVC,
            "LeaseRevoke",
            revoke(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    type LeaseKeepAliveStream = GrpcStream<LeaseKeepAliveResponse>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        started(SVC, "LeaseKeepAlive", "bidi_stream");
        let rx = keep_alive_stream(self.node.clone(), request.into_inner());
        Ok(Response::new(grpc_stream(rx)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            SVC,
            "LeaseTimeToLive",
            time_to_live(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        unary(SVC, "LeaseLeases", async { Ok(leases(&self.node)) }).await
    }
}
