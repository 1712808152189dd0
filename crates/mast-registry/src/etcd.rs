//! Builders over the node's etcd operations, so handlers read as the etcd calls they make.

use mast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse, compare, request_op,
};
use mast_proto::mvccpb::KeyValue;
use mast_server::Node;
use mast_server::api::kv;
use mast_server::authz::Caller;

use crate::error::ApiResult;

/// Reads one key (at `revision`, or the newest when 0). Returns the key's value, if any, and the
/// revision the read was served at.
///
/// # Errors
/// Auth and etcd errors.
pub async fn get(
    node: &Node,
    caller: &Caller,
    key: &str,
    revision: i64,
) -> ApiResult<(Option<KeyValue>, i64)> {
    let resp = kv::range(
        node,
        caller,
        RangeRequest {
            key: key.to_string().into(),
            revision,
            ..Default::default()
        },
    )
    .await?;
    let rev = revision_of(&resp);
    Ok((resp.kvs.into_iter().next(), rev))
}

/// Reads every key under `prefix` (at `revision`, or the newest when 0).
///
/// # Errors
/// Auth and etcd errors.
pub async fn range_prefix(
    node: &Node,
    caller: &Caller,
    prefix: &str,
    revision: i64,
    keys_only: bool,
) -> ApiResult<RangeResponse> {
    Ok(kv::range(
        node,
        caller,
        RangeRequest {
            key: prefix.to_string().into(),
            range_end: mast_model::prefix_end(prefix.as_bytes()).into(),
            revision,
            keys_only,
            ..Default::default()
        },
    )
    .await?)
}

/// The revision a Range was served at.
pub fn revision_of(resp: &RangeResponse) -> i64 {
    resp.header.as_ref().map_or(0, |h| h.revision)
}

/// The revision a Txn committed at (or was evaluated at).
pub fn txn_revision(resp: &TxnResponse) -> i64 {
    resp.header.as_ref().map_or(0, |h| h.revision)
}

/// A Put op.
pub fn put_op(key: impl Into<String>, value: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into().into_bytes().into(),
            value: value.into().into(),
            ..Default::default()
        })),
    }
}

/// A Put op that keeps the key's lease.
pub fn put_keep_lease_op(key: impl Into<String>, value: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into().into_bytes().into(),
            value: value.into().into(),
            ignore_lease: true,
            ..Default::default()
        })),
    }
}

/// A DeleteRange op over `[key, end)` (`end` empty: the one key).
pub fn delete_op(key: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.into().into(),
                range_end: end.into().into(),
                ..Default::default()
            },
        )),
    }
}

/// A compare: `key`'s mod revision equals `rev` (0: the key does not exist).
pub fn mod_revision_is(key: impl Into<String>, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.into().into_bytes().into(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

/// Runs a Txn whose failure branch is empty.
///
/// # Errors
/// Auth and etcd errors.
pub async fn txn(
    node: &Node,
    caller: &Caller,
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
) -> ApiResult<TxnResponse> {
    Ok(kv::txn(
        node,
        caller,
        TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        },
    )
    .await?)
}

/// Reads instance `key` as the server and, when `change` changes it (given the stored key and
/// the parsed instance, it returns whether it did), writes it back as the server's
/// `component` (the audit log's user), keeping the lease, in a Txn guarded by the key's mod
/// revision: the server's own rewrite never undoes a newer write. Returns whether it wrote.
/// A missing key or a value that is not instance JSON is left alone.
///
/// # Errors
/// The store's and the proposal's errors.
pub async fn rewrite_instance_as_system(
    node: &Node,
    key: &str,
    component: &str,
    change: impl FnOnce(&KeyValue, &mut mast_model::Instance) -> bool,
) -> Result<bool, mast_server::EtcdError> {
    let read = node.range_as_server(&RangeRequest {
        key: key.to_string().into(),
        serializable: true,
        ..Default::default()
    })?;
    let Some(kv) = read.kvs.into_iter().next() else {
        return Ok(false);
    };
    let Ok(mut inst) = mast_model::Instance::from_json(&kv.value) else {
        return Ok(false);
    };
    if !change(&kv, &mut inst) {
        return Ok(false);
    }
    let result = node
        .write_as_system(
            component,
            mast_mvcc::Command::Txn(TxnRequest {
                compare: vec![mod_revision_is(key, kv.mod_revision)],
                success: vec![put_keep_lease_op(key, inst.to_json())],
                failure: Vec::new(),
            }),
        )
        .await?;
    Ok(matches!(result, mast_mvcc::CommandResult::Txn(r) if r.succeeded))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
