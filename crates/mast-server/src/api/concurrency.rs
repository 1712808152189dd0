//! etcd's `v3lockpb.Lock` and `v3electionpb.Election` services, as etcd's v3lock and
//! v3election servers build them on its `concurrency` package: plain keys, leases and
//! revisions, written and read through the checked KV operations with the caller's identity
//! (so auth applies as to any KV call).
//!
//! A lock or a campaign is the key `<name>/<lease id in hex>` put with its lease; the holder
//! is the key of the prefix `<name>/` with the smallest create revision, and a waiter waits
//! until every key created before its own is deleted (`waitDeletes`). Waiting re-reads after
//! each committed batch (`Node::subscribe_commits`), so it needs no watch of its own. A lease
//! of 0 gets a new one of 60 seconds, as etcd's server-side session. A waiting request that
//! is cancelled (the client went) deletes its key, as etcd's `Mutex.Lock` does on error.

use std::sync::Arc;

use bytes::Bytes;
use mast_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use mast_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use mast_proto::etcdserverpb::request_op::Request as Op;
use mast_proto::etcdserverpb::response_op::Response as OpResponse;
use mast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest,
};
use mast_proto::mvccpb::KeyValue;
use mast_proto::v3electionpb::election_server::Election;
use mast_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use mast_proto::v3lockpb::lock_server::Lock;
use mast_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use super::{GrpcStream, grpc_stream, kv, lease, record_code, started, unary};
use crate::authz::Caller;
use crate::error::EtcdError;
use crate::node::Node;

/// TTL in seconds of the lease a lock or campaign without one gets (etcd's session default).
pub const DEFAULT_SESSION_TTL: i64 = 60;

fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(&[0])
}

/// The prefix of an election or lock: `<name>/`.
fn prefix_of(name: &[u8]) -> Bytes {
    let mut p = name.to_vec();
    p.push(b'/');
    p.into()
}

/// The key of a lease's lock or campaign: `<name>/<lease id in hex>`.
fn key_of(prefix: &[u8], lease: i64) -> Bytes {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{lease:x}").as_bytes());
    k.into()
}

fn create_revision_is(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn get_op(key: &Bytes) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(RangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    }
}

/// The first-created key of `prefix` (etcd's `WithFirstCreate`), or with `max_create_rev` the
/// last-created key at or below it (`WithLastCreate` + `WithMaxCreateRev`).
fn owner_range(prefix: &Bytes, max_create_rev: Option<i64>) -> RangeRequest {
    RangeRequest {
        key: prefix.clone(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_target: SortTarget::Create as i32,
        sort_order: if max_create_rev.is_some() {
            SortOrder::Descend as i32
        } else {
            SortOrder::Ascend as i32
        },
        max_create_revision: max_create_rev.unwrap_or(0),
        ..Default::default()
    }
}

/// The lease to hold the key: the request's, or a new one of [`DEFAULT_SESSION_TTL`].
async fn lease_or_new(node: &Node, caller: &Caller, lease: i64) -> Result<i64, EtcdError> {
    if lease != 0 {
        return Ok(lease);
    }
    let resp = lease::grant(
        node,
        caller,
        LeaseGrantRequest {
            ttl: DEFAULT_SESSION_TTL,
            id: 0,
        },
    )
    .await?;
    Ok(resp.id)
}

/// What creating (or finding) a key under a prefix gave: its create revision, whether it
/// already existed, its value if so, and the txn's header.
struct Entered {
    rev: i64,
    existing_value: Option<Bytes>,
    header: Option<ResponseHeader>,
    /// The first-created key of the prefix at the txn.
    owner: Option<KeyValue>,
}

/// Puts `key` = `value` with `lease` unless it exists, and reads the prefix's owner, in one
/// Txn (as `Mutex.Lock` and `Election.Campaign`).
async fn enter(
    node: &Node,
    caller: &Caller,
    prefix: &Bytes,
    key: &Bytes,
    value: Bytes,
    lease: i64,
) -> Result<Entered, EtcdError> {
    let owner = RequestOp {
        request: Some(Op::RequestRange(owner_range(prefix, None))),
    };
    let put = RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: key.clone(),
            value,
            lease,
            ..Default::default()
        })),
    };
    let resp = kv::txn(
        node,
        caller,
        TxnRequest {
            compare: vec![create_revision_is(key, 0)],
            success: vec![put, owner.clone()],
            failure: vec![get_op(key), owner],
        },
    )
    .await?;
    let header = resp.header;
    let range_of = |i: usize| -> Option<&RangeResponse> {
        match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
            Some(OpResponse::ResponseRange(r)) => Some(r),
            _ => None,
        }
    };
    let owner = range_of(1).and_then(|r| r.kvs.first().cloned());
    if resp.succeeded {
        let rev = header.as_ref().map_or(0, |h| h.revision);
        Ok(Entered {
            rev,
            existing_value: None,
            header,
            owner,
        })
    } else {
        let mine = range_of(0)
            .and_then(|r| r.kvs.first().cloned())
            .ok_or_else(|| EtcdError::Internal("the key compared as existing is gone".into()))?;
        Ok(Entered {
            rev: mine.create_revision,
            existing_value: Some(mine.value.clone()),
            header,
            owner,
        })
    }
}

/// Waits until no key of `prefix` created at or before `max_create_rev` is left (etcd's
/// `waitDeletes`), checking after every commit. Fails with [`EtcdError::SessionExpired`]
/// when `mine` is deleted meanwhile.
async fn wait_deletes(
    node: &Node,
    caller: &Caller,
    prefix: &Bytes,
    max_create_rev: i64,
    mine: &Bytes,
) -> Result<Option<ResponseHeader>, EtcdError> {
    let mut commits = node.subscribe_commits();
    loop {
        let before = kv::range(node, caller, owner_range(prefix, Some(max_create_rev))).await?;
        if before.kvs.is_empty() {
            let me = kv::range(
                node,
                caller,
                RangeRequest {
                    key: mine.clone(),
                    ..Default::default()
                },
            )
            .await?;
            if me.kvs.is_empty() {
                return Err(EtcdError::SessionExpired);
            }
            return Ok(before.header);
        }
        tokio::select! {
            r = commits.recv() => match r {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return Err(EtcdError::Stopped),
            },
            () = node.shutting_down() => return Err(EtcdError::Stopped),
        }
    }
}

/// Deletes the key of a wait that did not finish (the request was cancelled): etcd's
/// `Mutex.Lock` and `Election.Campaign` give their key up on error.
struct GiveUp {
    node: Arc<Node>,
    caller: Caller,
    key: Option<Bytes>,
}

impl GiveUp {
    fn done(mut self) {
        self.key = None;
    }
}

impl Drop for GiveUp {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let (node, caller) = (self.node.clone(), self.caller.clone());
        // Dropped inside the runtime (a handler future): give the key up in the background.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let req = DeleteRangeRequest {
                    key,
                    ..Default::default()
                };
                if let Err(e) = kv::delete_range(&node, &caller, req).await {
                    tracing::debug!(error = %e, "giving up a lock or campaign key failed");
                }
            });
        }
    }
}

/// Lock, as etcd's `v3lock` `Lock`: the key `<name>/<lease hex>`, returned once every key of
/// the prefix created before it is gone.
///
/// # Errors
/// The KV errors (auth, a lease that does not exist); [`EtcdError::SessionExpired`] when the
/// key went while waiting.
pub async fn lock(
    node: &Arc<Node>,
    caller: &Caller,
    req: LockRequest,
) -> Result<LockResponse, EtcdError> {
    let lease = lease_or_new(node, caller, req.lease).await?;
    let prefix = prefix_of(&req.name);
    let key = key_of(&prefix, lease);
    let entered = enter(node, caller, &prefix, &key, Bytes::new(), lease).await?;
    if entered
        .owner
        .as_ref()
        .is_none_or(|o| o.create_revision == entered.rev)
    {
        return Ok(LockResponse {
            header: entered.header,
            key,
        });
    }
    let guard = GiveUp {
        node: node.clone(),
        caller: caller.clone(),
        key: Some(key.clone()),
    };
    let header = wait_deletes(node, caller, &prefix, entered.rev - 1, &key).await;
    let header = match header {
        Ok(h) => {
            guard.done();
            h
        }
        Err(e) => return Err(e), // the guard gives the key up
    };
    Ok(LockResponse { header, key })
}

/// Unlock, as etcd's: deletes the lock key.
///
/// # Errors
/// The KV errors (auth).
pub async fn unlock(
    node: &Node,
    caller: &Caller,
    req: UnlockRequest,
) -> Result<UnlockResponse, EtcdError> {
    let resp = kv::delete_range(
        node,
        caller,
        DeleteRangeRequest {
            key: req.key,
            ..Default::default()
        },
    )
    .await?;
    Ok(UnlockResponse {
        header: resp.header,
    })
}

/// Campaign, as etcd's `v3election` `Campaign`: the key `<name>/<lease hex>` with `value`,
/// returned once it is the first-created key of the prefix. A campaign by a lease that
/// already campaigned takes its key back (proclaiming the new value).
///
/// # Errors
/// As [`lock`].
pub async fn campaign(
    node: &Arc<Node>,
    caller: &Caller,
    req: CampaignRequest,
) -> Result<CampaignResponse, EtcdError> {
    let lease = lease_or_new(node, caller, req.lease).await?;
    let prefix = prefix_of(&req.name);
    let key = key_of(&prefix, lease);
    let entered = enter(node, caller, &prefix, &key, req.value.clone(), lease).await?;
    let mut header = entered.header;
    if entered
        .existing_value
        .as_ref()
        .is_some_and(|v| *v != req.value)
    {
        header = proclaim_at(node, caller, &key, entered.rev, lease, req.value.clone()).await?;
    }
    let guard = GiveUp {
        node: node.clone(),
        caller: caller.clone(),
        key: Some(key.clone()),
    };
    match wait_deletes(node, caller, &prefix, entered.rev - 1, &key).await {
        Ok(_) => guard.done(),
        Err(e) => return Err(e),
    }
    Ok(CampaignResponse {
        header,
        leader: Some(LeaderKey {
            name: req.name,
            key,
            rev: entered.rev,
            lease,
        }),
    })
}

/// Puts `value` on the leader key if it is still the one created at `rev`.
async fn proclaim_at(
    node: &Node,
    caller: &Caller,
    key: &Bytes,
    rev: i64,
    lease: i64,
    value: Bytes,
) -> Result<Option<ResponseHeader>, EtcdError> {
    let resp = kv::txn(
        node,
        caller,
        TxnRequest {
            compare: vec![create_revision_is(key, rev)],
            success: vec![RequestOp {
                request: Some(Op::RequestPut(PutRequest {
                    key: key.clone(),
                    value,
                    lease,
                    ..Default::default()
                })),
            }],
            failure: vec![],
        },
    )
    .await?;
    if !resp.succeeded {
        return Err(EtcdError::ElectionNotLeader);
    }
    Ok(resp.header)
}

/// Proclaim, as etcd's: a new value from the leader.
///
/// # Errors
/// [`EtcdError::MissingLeaderKey`], [`EtcdError::ElectionNotLeader`] when the key is not the
/// leader's any more, and the KV errors.
pub async fn proclaim(
    node: &Node,
    caller: &Caller,
    req: ProclaimRequest,
) -> Result<ProclaimResponse, EtcdError> {
    let leader = req.leader.ok_or(EtcdError::MissingLeaderKey)?;
    let header = proclaim_at(
        node,
        caller,
        &leader.key,
        leader.rev,
        leader.lease,
        req.value,
    )
    .await?;
    Ok(ProclaimResponse { header })
}

/// The current leader's key-value, if any.
async fn current_leader(
    node: &Node,
    caller: &Caller,
    name: &[u8],
) -> Result<(Option<ResponseHeader>, Option<KeyValue>), EtcdError> {
    let resp = kv::range(node, caller, owner_range(&prefix_of(name), None)).await?;
    Ok((resp.header, resp.kvs.into_iter().next()))
}

/// Leader, as etcd's: the first-created key of the election.
///
/// # Errors
/// [`EtcdError::ElectionNoLeader`] when nobody holds it, and the KV errors.
pub async fn leader(
    node: &Node,
    caller: &Caller,
    req: LeaderRequest,
) -> Result<LeaderResponse, EtcdError> {
    match current_leader(node, caller, &req.name).await? {
        (header, Some(kv)) => Ok(LeaderResponse {
            header,
            kv: Some(kv),
        }),
        (_, None) => Err(EtcdError::ElectionNoLeader),
    }
}

/// Resign, as etcd's: deletes the leader key if it is still the one created at its revision
/// (nothing otherwise, without error).
///
/// # Errors
/// [`EtcdError::MissingLeaderKey`], and the KV errors.
pub async fn resign(
    node: &Node,
    caller: &Caller,
    req: ResignRequest,
) -> Result<ResignResponse, EtcdError> {
    let leader = req.leader.ok_or(EtcdError::MissingLeaderKey)?;
    let resp = kv::txn(
        node,
        caller,
        TxnRequest {
            compare: vec![create_revision_is(&leader.key, leader.rev)],
            success: vec![RequestOp {
                request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                    key: leader.key.clone(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        },
    )
    .await?;
    Ok(ResignResponse {
        header: resp.header,
    })
}

/// Observe, as etcd's: the leader's key-value now, and again every time the leader or its
/// value changes, until the client goes.
pub fn observe(
    node: Arc<Node>,
    caller: Caller,
    req: LeaderRequest,
) -> mpsc::Receiver<Result<LeaderResponse, EtcdError>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut commits = node.subscribe_commits();
        let mut last: Option<(Bytes, i64)> = None;
        loop {
            match current_leader(&node, &caller, &req.name).await {
                Ok((header, Some(kv))) => {
                    let seen = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&seen) {
                        last = Some(seen);
                        let resp = LeaderResponse {
                            header,
                            kv: Some(kv),
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
                Ok((_, None)) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            tokio::select! {
                r = commits.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = r {
                        return;
                    }
                }
                () = tx.closed() => return,
                () = node.shutting_down() => return,
            }
        }
    });
    rx
}

const LOCK_SVC: &str = "v3lockpb.Lock";
const ELECTION_SVC: &str = "v3electionpb.Election";

/// The `v3lockpb.Lock` gRPC service.
pub struct LockService {
    node: Arc<Node>,
}

impl LockService {
    /// A Lock service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        LockService { node }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            LOCK_SVC,
            "Lock",
            lock(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            LOCK_SVC,
            "Unlock",
            unlock(&self.node, &caller, request.into_inner()),
        )
        .await
    }
}

/// The `v3electionpb.Election` gRPC service.
pub struct ElectionService {
    node: Arc<Node>,
}

impl ElectionService {
    /// An Election service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        ElectionService { node }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            ELECTION_SVC,
            "Campaign",
            campaign(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            ELECTION_SVC,
            "Proclaim",
            proclaim(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            ELECTION_SVC,
            "Leader",
            leader(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    type ObserveStream = GrpcStream<LeaderResponse>;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        started(ELECTION_SVC, "Observe", "server_stream");
        let caller = Caller::from_grpc(&request);
        let rx = observe(self.node.clone(), caller, request.into_inner());
        record_code(ELECTION_SVC, "Observe", "server_stream", tonic::Code::Ok);
        Ok(Response::new(grpc_stream(rx)))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            ELECTION_SVC,
            "Resign",
            resign(&self.node, &caller, request.into_inner()),
        )
        .await
    }
}
