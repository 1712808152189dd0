//! Range, Put, DeleteRange and Txn, with etcd's exact semantics (the applier of etcd 3.4/3.5).

use std::cmp::Ordering as CmpOrdering;

use mast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op, response_op,
};
use mast_proto::mvccpb::{Event, KeyValue, event::EventType};
use redb::ReadableTable;

use crate::error::{MvccError, StorageError};
use crate::index::RangeEnd;
use crate::lease::LeaseId;
use crate::revision::Revision;
use crate::store::{Store, encode_row, read_row};

/// The result of one applied [`crate::Command`]. Response headers carry only `revision`; the
/// server fills in the cluster fields of the top-level header.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandResult {
    /// Result of a Put.
    Put(PutResponse),
    /// Result of a DeleteRange.
    DeleteRange(DeleteRangeResponse),
    /// Result of a Txn.
    Txn(TxnResponse),
    /// Result of a Compact; `revision` is the store revision (unchanged by compaction).
    Compact {
        /// Current store revision.
        revision: i64,
    },
    /// A lease was created.
    LeaseGrant {
        /// Its ID.
        id: LeaseId,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// A lease was revoked; `revision` is the store revision after deleting its keys.
    LeaseRevoke {
        /// Store revision after the revoke.
        revision: i64,
    },
    /// A lease was created and a put attached to it (`Command::LeaseGrantPut`).
    LeaseGrantPut {
        /// The lease's ID.
        id: LeaseId,
        /// Its TTL in seconds.
        ttl: i64,
        /// The put's result.
        put: PutResponse,
    },
    /// An auth command was applied (or was a no-op); the store revision is unchanged.
    Auth {
        /// The auth revision after the command.
        revision: u64,
    },
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Serves a Range against `table` with `current` as the newest visible revision.
pub(crate) fn range<T: ReadableTable<u128, &'static [u8]>>(
    store: &Store,
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
    let (_, entries, count) = store.index_range(&req.key, end, req.revision, current, limit)?;
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

/// The state of one command being applied inside the batch's write transaction.
pub(crate) struct WriteCtx<'s, 'a, 't> {
    pub(crate) store: &'s Store,
    pub(crate) kv: &'a mut redb::Table<'t, u128, &'static [u8]>,
    /// Store revision before this command.
    pub(crate) begin_rev: i64,
    /// Events of this command so far; all share revision `begin_rev + 1`.
    pub(crate) changes: Vec<Event>,
}

impl WriteCtx<'_, '_, '_> {
    /// The revision reads inside this command see: the command's own changes count.
    fn read_rev(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin_rev
        } else {
            self.begin_rev + 1
        }
    }

    fn next_rev(&self) -> Revision {
        Revision::new(self.begin_rev + 1, self.changes.len() as i64)
    }

    fn get_kv(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, MvccError> {
        match self.store.index_get(key, rev) {
            Some(e) => Ok(Some(read_row(&*self.kv, e.modified)?.kv)),
            None => Ok(None),
        }
    }

    pub(crate) fn put_cmd(&mut self, p: &PutRequest) -> Result<CommandResult, MvccError> {
        self.check_put(p)?;
        self.put(p).map(CommandResult::Put)
    }

    pub(crate) fn delete_cmd(
        &mut self,
        d: &DeleteRangeRequest,
    ) -> Result<CommandResult, MvccError> {
        self.delete(d).map(CommandResult::DeleteRange)
    }

    /// The checks etcd makes before applying a put: key existence for `ignore_value` /
    /// `ignore_lease`, lease existence otherwise.
    fn check_put(&self, p: &PutRequest) -> Result<(), MvccError> {
        if (p.ignore_value || p.ignore_lease)
            && self.store.index_get(&p.key, self.read_rev()).is_none()
        {
            return Err(MvccError::KeyNotFound);
        }
        if !p.ignore_lease && p.lease != 0 && !self.store.lease_exists(p.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }

    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, MvccError> {
        let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
            self.get_kv(&p.key, self.read_rev())?
        } else {
            None
        };
        let (value, lease) = match (&prev, p.ignore_value, p.ignore_lease) {
            (None, true, _) | (None, _, true) => return Err(MvccError::KeyNotFound),
            (Some(old), iv, il) => (
                if iv {
                    old.value.clone()
                } else {
                    p.value.clone()
                },
                if il { old.lease } else { p.lease },
            ),
            (None, false, false) => (p.value.clone(), p.lease),
        };
        let at = self.next_rev();
        let (create_revision, version) = self.store.index_put(&p.key, at, lease);
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision,
            mod_revision: at.main,
            version,
            value,
            lease,
        };
        self.kv
            .insert(at.to_u128(), encode_row(false, &kv).as_slice())
            .map_err(StorageError::from)?;
        self.changes.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(PutResponse {
            header: header(at.main),
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse, MvccError> {
        let end = RangeEnd::from_request(&d.range_end);
        let (_, entries, _) = self.store.index_range(&d.key, end, 0, self.read_rev(), 0)?;
        let mut prev_kvs = Vec::new();
        for (key, e) in &entries {
            if d.prev_kv {
                prev_kvs.push(read_row(&*self.kv, e.modified)?.kv);
            }
            self.tombstone(key)?;
        }
        let rev = if self.changes.is_empty() {
            self.begin_rev
        } else {
            self.begin_rev + 1
        };
        Ok(DeleteRangeResponse {
            header: header(rev),
            deleted: entries.len() as i64,
            prev_kvs,
        })
    }

    fn tombstone(&mut self, key: &[u8]) -> Result<(), MvccError> {
        let at = self.next_rev();
        let kv = KeyValue {
            key: bytes::Bytes::copy_from_slice(key),
            mod_revision: at.main,
            ..Default::default()
        };
        self.kv
            .insert(at.to_u128(), encode_row(true, &kv).as_slice())
            .map_err(StorageError::from)?;
        self.store.index_tombstone(key, at);
        self.changes.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(())
    }

    pub(crate) fn lease_revoke(
        &mut self,
        id: LeaseId,
        rows: &mut crate::lease::PendingLeaseRows,
    ) -> Result<CommandResult, MvccError> {
        let keys: Vec<Vec<u8>> = match self.store.leases().get(id) {
            Some(rec) => rec.keys.iter().cloned().collect(),
            None => return Err(MvccError::LeaseNotFound),
        };
        // Keys are deleted in key order, all in one revision, as etcd's lessor does.
        for key in keys {
            if self.store.index_get(&key, self.read_rev()).is_some() {
                self.tombstone(&key)?;
            }
        }
        rows.revoke(id);
        self.store.remove_lease(id);
        Ok(CommandResult::LeaseRevoke {
            revision: self.read_rev(),
        })
    }

    pub(crate) fn txn_cmd(&mut self, t: &TxnRequest) -> Result<CommandResult, MvccError> {
        let mut path = Vec::new();
        self.compare_path(t, &mut path)?;
        self.check_requests(t, &path, &mut 0)?;
        let resp = self.apply_txn(t, &path, &mut 0)?;
        let mut resp = resp;
        resp.header = header(self.read_rev());
        Ok(CommandResult::Txn(resp))
    }

    /// Evaluates the compares of the txn and of every nested txn on the chosen branches, before
    /// any op runs, as etcd's `compareToPath`.
    fn compare_path(&self, t: &TxnRequest, path: &mut Vec<bool>) -> Result<(), MvccError> {
        let mut ok = true;
        for c in &t.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
                self.compare_path(nested, path)?;
            }
        }
        Ok(())
    }

    fn compare(&self, c: &Compare) -> Result<bool, MvccError> {
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let end = RangeEnd::from_request(&c.range_end);
        let (_, entries, _) = match self.store.index_range(&c.key, end, 0, self.read_rev(), 0) {
            Ok(v) => v,
            Err(MvccError::Storage(s)) => return Err(MvccError::Storage(s)),
            Err(_) => return Ok(false),
        };
        if entries.is_empty() {
            // A value compare on a missing key is false whatever the operator.
            if target == CompareTarget::Value {
                return Ok(false);
            }
            return Ok(compare_kv(c, target, &KeyValue::default()));
        }
        for (_, e) in &entries {
            let kv = read_row(&*self.kv, e.modified)?.kv;
            if !compare_kv(c, target, &kv) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn check_requests(
        &self,
        t: &TxnRequest,
        path: &[bool],
        pos: &mut usize,
    ) -> Result<(), MvccError> {
        let ok = path[*pos];
        *pos += 1;
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(request_op::Request::RequestTxn(nested)) => {
                    self.check_requests(nested, path, pos)?
                }
                Some(request_op::Request::RequestPut(p)) => self.check_put(p)?,
                Some(request_op::Request::RequestRange(r)) => {
                    if r.revision > self.begin_rev {
                        return Err(MvccError::FutureRevision);
                    }
                    if r.revision > 0 && r.revision < self.store.compact_revision() {
                        return Err(MvccError::Compacted);
                    }
                }
                Some(request_op::Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    fn apply_txn(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        pos: &mut usize,
    ) -> Result<TxnResponse, MvccError> {
        let ok = path[*pos];
        *pos += 1;
        let ops: &[RequestOp] = if ok { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let rev = self.read_rev();
                    Some(response_op::Response::ResponseRange(range(
                        self.store, &*self.kv, rev, r,
                    )?))
                }
                Some(request_op::Request::RequestPut(p)) => {
                    Some(response_op::Response::ResponsePut(self.put(p)?))
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    Some(response_op::Response::ResponseDeleteRange(self.delete(d)?))
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    let mut r = self.apply_txn(nested, path, pos)?;
                    r.header = Some(ResponseHeader::default());
                    Some(response_op::Response::ResponseTxn(r))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: None,
            succeeded: ok,
            responses,
        })
    }
}

/// One compare against one key's state, as etcd's `compareKV`. A target value of the wrong
/// kind compares as zero (or the empty value).
fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    let ord = match target {
        CompareTarget::Value => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_ref().cmp(v)
        }
        CompareTarget::Create => kv.create_revision.cmp(&match c.target_union {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        CompareTarget::Mod => kv.mod_revision.cmp(&match c.target_union {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        CompareTarget::Version => kv.version.cmp(&match c.target_union {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        CompareTarget::Lease => kv.lease.cmp(&match c.target_union {
            Some(TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == CmpOrdering::Equal,
        CompareResult::NotEqual => ord != CmpOrdering::Equal,
        CompareResult::Greater => ord == CmpOrdering::Greater,
        CompareResult::Less => ord == CmpOrdering::Less,
    }
}

/// Returns true when the txn (with nested txns) writes nothing, as etcd's `isTxnReadonly`.
pub fn is_txn_readonly(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(n)) => is_txn_readonly(n),
            _ => false,
        })
}
