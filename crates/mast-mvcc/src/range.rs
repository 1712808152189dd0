//! Range with etcd's semantics (sort, limits, revision and mod/create filters), read from the
//! index and a `kv` table handle of any transaction.

use std::cmp::Ordering as CmpOrdering;

use mast_proto::etcdserverpb::{
    RangeRequest, RangeResponse, ResponseHeader,
    range_request::{SortOrder, SortTarget},
};
use mast_proto::mvccpb::KeyValue;
use redb::ReadableTable;

use crate::error::MvccError;
use crate::index::RangeEnd;
use crate::rows::read_row;
use crate::state::Memory;

/// A response header that carries only the revision; the server fills in the cluster fields.
pub(crate) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Serves a `count_only` Range from the index alone: no transaction and no row is read. As
/// etcd's, the count is every key in the range at the revision, before any limit or
/// revision filter.
pub(crate) fn count(
    mem: &Memory,
    current: i64,
    req: &RangeRequest,
) -> Result<RangeResponse, MvccError> {
    let end = RangeEnd::from_request(&req.range_end);
    let count = mem.index_count(&req.key, end, req.revision, current)?;
    Ok(RangeResponse {
        header: header(current),
        count: count as i64,
        ..Default::default()
    })
}

/// Serves a Range against `table` with `current` as the newest visible revision.
pub(crate) fn range<T: ReadableTable<u128, &'static [u8]>>(
    mem: &Memory,
    table: &T,
    current: i64,
    req: &RangeRequest,
) -> Result<RangeResponse, MvccError> {
    let end = RangeEnd::from_request(&req.range_end);
    let order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let fetch_all = order != SortOrder::None
        || req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let limit = if fetch_all || req.limit <= 0 {
        0
    } else {
        req.limit as usize + 1
    };
    let (_, entries, count) = mem.index_range(&req.key, end, req.revision, current, limit)?;
    let mut resp = RangeResponse {
        header: header(current),
        count: count as i64,
        ..Default::default()
    };
    if req.count_only {
        return Ok(resp);
    }
    let mut kvs = Vec::with_capacity(entries.len());
    for (_, e) in &entries {
        kvs.push(read_row(table, e.modified)?.kv);
    }
    if req.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
    }
    if req.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
    }
    if req.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
    }
    if req.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
    }
    // Results come in key order; any other target sorts ascending unless told otherwise.
    let order = if target != SortTarget::Key && order == SortOrder::None {
        SortOrder::Ascend
    } else {
        order
    };
    if order != SortOrder::None {
        let cmp = |a: &KeyValue, b: &KeyValue| -> CmpOrdering {
            match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        resp.more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    resp.kvs = kvs;
    Ok(resp)
}
