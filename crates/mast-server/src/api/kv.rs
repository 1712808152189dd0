//! `etcdserverpb.KV`: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use mast_mvcc::{Command, CommandResult};
use mast_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
    kv_server::Kv,
    range_request::{SortOrder, SortTarget},
    request_op,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::unary;
use crate::authz::Caller;
use crate::error::EtcdError;
use crate::node::Node;

/// Most operations in one txn branch, as etcd's `--max-txn-ops` default.
pub const MAX_TXN_OPS: usize = 128;

const SVC: &str = "etcdserverpb.KV";

/// The KV service.
pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    /// A KV service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }
}

fn check_size<M: Message>(node: &Node, m: &M) -> Result<(), EtcdError> {
    if m.encoded_len() > node.config.max_request_bytes {
        return Err(EtcdError::RequestTooLarge);
    }
    Ok(())
}

fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

fn check_put(p: &PutRequest) -> Result<(), EtcdError> {
    if p.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(d: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if d.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: op counts (at most `max_ops` compares, and ops per branch) and
/// per-op checks, recursively.
fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
    if ops > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(r)?,
            Some(request_op::Request::RequestPut(p)) => check_put(p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => check_delete(d)?,
            Some(request_op::Request::RequestTxn(n)) => check_txn(n, max_ops)?,
            None => {}
        }
    }
    Ok(())
}

/// Ranges over at most this many keys are read on the async worker; larger ones on the
/// blocking pool. Reading this many rows from redb's page cache takes on the order of 100 µs,
/// about what handing the read to a blocking-pool thread and back costs a loaded 2-core
/// machine in wake-ups and context switches, so smaller scans gain nothing from the pool.
const INLINE_RANGE_KEYS: usize = 256;

/// Range, as etcd's `KV.Range`.
///
/// # Errors
/// etcd's errors for an empty key, bad sort options, and revisions out of history.
pub async fn range(
    node: &Node,
    caller: &Caller,
    req: RangeRequest,
) -> Result<RangeResponse, EtcdError> {
    check_range(&req)?;
    check_size(node, &req)?;
    let who = node.authenticate_caller(caller)?;
    node.check_range(&who, &req.key, &req.range_end, false)?;
    if !req.serializable {
        if node.consensus.is_learner() {
            // As etcd's `isRPCSupportedForLearner`: a learner serves serializable reads only.
            return Err(EtcdError::NotSupportedForLearner);
        }
        node.linearize().await?;
    }
    let store = node.store.clone();
    let small = req.limit > 0 && req.limit <= INLINE_RANGE_KEYS as i64;
    let mut resp = if small
        || req.count_only
        || req.range_end.is_empty()
        || store.has_at_most(&req.key, &req.range_end, INLINE_RANGE_KEYS)
    {
        store.range(&req)?
    } else {
        // Scans that read many rows: keep them off the async workers.
        tokio::task::spawn_blocking(move || store.range(&req)).await??
    };
    resp.header = node.complete(resp.header);
    Ok(resp)
}

/// The checks of a Put before it is written: shape, size, the caller's write permission on
/// the key (and read permission when it asks for the previous value). Returns the caller.
fn check_put_request(
    node: &Node,
    caller: &Caller,
    req: &PutRequest,
) -> Result<crate::authz::Identity, EtcdError> {
    check_put(req)?;
    check_size(node, req)?;
    let who = node.authenticate_caller(caller)?;
    node.check_range(&who, &req.key, &[], true)?;
    if req.prev_kv {
        node.check_range(&who, &req.key, &[], false)?;
    }
    Ok(who)
}

/// Bytes etcd's quota counts for a put beside its key and value (`kvOverhead`).
const KV_OVERHEAD: u64 = 256;

/// What a put costs against the backend quota, as etcd's `costPut`.
fn put_cost(p: &PutRequest) -> u64 {
    KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
}

/// What a txn costs against the backend quota, as etcd's `costTxnReq`: the puts of its
/// costlier branch (nested txns counted in), 0 for a txn that puts nothing.
fn txn_cost(t: &TxnRequest) -> u64 {
    let branch = |ops: &[mast_proto::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => put_cost(p),
                Some(request_op::Request::RequestTxn(n)) => txn_cost(n),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

/// Put, as etcd's `KV.Put`.
///
/// # Errors
/// etcd's errors for an empty key, a too large request, a missing lease or key.
pub async fn put(node: &Node, caller: &Caller, req: PutRequest) -> Result<PutResponse, EtcdError> {
    let who = check_put_request(node, caller, &req)?;
    if req.lease != 0 {
        node.check_lease_keys(&who, req.lease, true)?;
    }
    node.check_quota(put_cost(&req)).await?;
    match node
        .write(node.attribute(&who, caller, Command::Put(req)))
        .await?
    {
        CommandResult::Put(mut r) => {
            r.header = node.complete(r.header);
            Ok(r)
        }
        other => Err(EtcdError::unexpected_result(&other)),
    }
}

/// A `LeaseGrant` of `ttl` seconds (ID chosen by the server) and a `Put` attached to the new
/// lease, as one write: what registering a service instance needs. Checks and errors are those
/// of the two requests (`req.lease` is ignored). Returns the granted lease ID and TTL (seconds)
/// and the put's response.
///
/// # Errors
/// As [`put`] and `LeaseGrant`.
pub async fn put_with_new_lease(
    node: &Node,
    caller: &Caller,
    ttl: i64,
    mut req: PutRequest,
) -> Result<(i64, i64, PutResponse), EtcdError> {
    if ttl > mast_mvcc::MAX_LEASE_TTL {
        return Err(mast_mvcc::MvccError::LeaseTtlTooLarge.into());
    }
    let ttl = ttl.max(crate::lessor::MIN_LEASE_TTL);
    req.lease = 0;
    let who = check_put_request(node, caller, &req)?;
    node.check_quota(crate::api::lease::LEASE_COST + put_cost(&req))
        .await?;
    let mut attempts = 0;
    loop {
        let id = node.lease_ids.next();
        req.lease = id;
        let cmd = Command::LeaseGrantPut {
            id,
            ttl,
            put: req.clone(),
        };
        match node.write(node.attribute(&who, caller, cmd)).await {
            Ok(CommandResult::LeaseGrantPut { id, ttl, mut put }) => {
                put.header = node.complete(put.header);
                return Ok((id, ttl, put));
            }
            Ok(other) => return Err(EtcdError::unexpected_result(&other)),
            // A picked ID that a client had chosen itself: pick the next.
            Err(EtcdError::Mvcc(mast_mvcc::MvccError::LeaseExists)) if attempts < 8 => {
                attempts += 1
            }
            Err(e) => return Err(e),
        }
    }
}

/// DeleteRange, as etcd's `KV.DeleteRange`.
///
/// # Errors
/// etcd's errors for an empty key or a too large request.
pub async fn delete_range(
    node: &Node,
    caller: &Caller,
    req: DeleteRangeRequest,
) -> Result<DeleteRangeResponse, EtcdError> {
    check_delete(&req)?;
    check_size(node, &req)?;
    let who = node.authenticate_caller(caller)?;
    node.check_range(&who, &req.key, &req.range_end, true)?;
    if req.prev_kv {
        node.check_range(&who, &req.key, &req.range_end, false)?;
    }
    match node
        .write(node.attribute(&who, caller, Command::DeleteRange(req)))
        .await?
    {
        CommandResult::DeleteRange(mut r) => {
            r.header = node.complete(r.header);
            Ok(r)
        }
        other => Err(EtcdError::unexpected_result(&other)),
    }
}

/// Txn, as etcd's `KV.Txn`.
///
/// # Errors
/// etcd's errors for too many ops, duplicate keys, empty keys, and those of the ops.
pub async fn txn(node: &Node, caller: &Caller, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
    check_txn(&req, node.config.max_txn_ops)?;
    mast_mvcc::check_txn_intervals(&req).map_err(|_| EtcdError::DuplicateKey)?;
    check_size(node, &req)?;
    let who = node.authenticate_caller(caller)?;
    node.check_txn(&who, &req)?;
    let cost = txn_cost(&req);
    if cost > 0 {
        node.check_quota(cost).await?;
    }
    match node
        .write(node.attribute(&who, caller, Command::Txn(req)))
        .await?
    {
        CommandResult::Txn(mut r) => {
            r.header = node.complete(r.header);
            Ok(r)
        }
        other => Err(EtcdError::unexpected_result(&other)),
    }
}

/// Compact, as etcd's `KV.Compact`.
///
/// # Errors
/// etcd's compacted / future revision errors.
pub async fn compact(
    node: &Node,
    caller: &Caller,
    req: CompactionRequest,
) -> Result<CompactionResponse, EtcdError> {
    // etcd checks no permission for Compact at all; compaction destroys history, so Mast
    // asks for the root role when auth is on.
    node.require_admin(caller)?;
    match node.write(Command::Compact(req)).await? {
        CommandResult::Compact { revision } => Ok(CompactionResponse {
            header: Some(node.header_at(revision)),
        }),
        other => Err(EtcdError::unexpected_result(&other)),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            SVC,
            "Range",
            range(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(SVC, "Put", put(&self.node, &caller, request.into_inner())).await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            SVC,
            "DeleteRange",
            delete_range(&self.node, &caller, request.into_inner()),
        )
        .await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(SVC, "Txn", txn(&self.node, &caller, request.into_inner())).await
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let caller = Caller::from_grpc(&request);
        unary(
            SVC,
            "Compact",
            compact(&self.node, &caller, request.into_inner()),
        )
        .await
    }
}
