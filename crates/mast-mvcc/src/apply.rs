//! Applying one log entry: what etcd's applier does, as a deterministic step.
//!
//! [`apply_entry`] applies an entry's commands in order to the in-memory state and to the
//! tables of one redb write transaction, and returns each command's result and the entry's
//! events. It decides nothing about durability (the caller commits the transaction as it
//! sees fit) and reads no clock.
//!
//! Every command checks everything that can refuse it before it changes anything, so a
//! refused command leaves no trace and the next command of the entry applies as if it had
//! never been there; a Txn applies whole or not at all. A failure of the disk is different:
//! the entry stops, the caller drops the write transaction, and the in-memory state may be
//! ahead of the disk, so the store refuses further writes.

use mast_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, response_op,
};
use mast_proto::mvccpb::{Event, KeyValue, event::EventType};
use prost::Message;
use redb::ReadableTable;

use crate::auth::{AuthCommand, AuthState};
use crate::command::{Command, CommandResult, check_txn_intervals, txn_puts};
use crate::error::{MvccError, StorageError};
use crate::index::RangeEnd;
use crate::lease::{LeaseId, PendingLeaseRows};
use crate::range::{header, range};
use crate::revision::Revision;
use crate::rows::{self, encode_row, read_row};
use crate::state::Memory;

/// The largest lease TTL in seconds, as etcd's `MaxLeaseTTL`.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// Why a command did not apply.
enum Fail {
    /// Refused, with nothing changed; the entry goes on.
    Refused(MvccError),
    /// The disk failed; the entry stops.
    Storage(StorageError),
}

impl From<MvccError> for Fail {
    fn from(e: MvccError) -> Self {
        Fail::Refused(e)
    }
}

impl From<StorageError> for Fail {
    fn from(e: StorageError) -> Self {
        Fail::Storage(e)
    }
}

macro_rules! storage_fail_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::Storage(StorageError::from(e))
            }
        }
    )*};
}
storage_fail_from!(redb::StorageError, redb::TableError);

type Applying<T> = Result<T, Fail>;

/// The writer's state between entries: what the next entry starts from.
pub(crate) struct ApplyState {
    /// Store revision after the last applied entry.
    pub(crate) rev: i64,
    /// The auth state as the last applied entry left it (maybe not yet published).
    pub(crate) auth: std::sync::Arc<AuthState>,
    /// Audit entries kept ([`crate::audit`]).
    pub(crate) audit_retention: u64,
}

/// What one entry did.
pub(crate) struct EntryOutcome {
    /// One result per command, in order.
    pub(crate) results: Vec<Result<CommandResult, MvccError>>,
    /// Every event of the entry, in revision order.
    pub(crate) events: Vec<Event>,
    /// The auth state after the entry, when one of its commands changed it.
    pub(crate) auth: Option<std::sync::Arc<AuthState>>,
    /// Lease rows the entry granted or revoked, for the store to write with a later commit
    /// once this one is in.
    pub(crate) lease_rows: PendingLeaseRows,
}

/// Applies entry `index` (its `cmds`) to `mem` and to the tables of `wtxn`, advancing `st`,
/// and records the store revision and the applied index in `meta`.
///
/// # Errors
/// [`StorageError`] when the disk fails; the caller must then drop `wtxn` and stop writing.
pub(crate) fn apply_entry(
    mem: &Memory,
    wtxn: &redb::WriteTransaction,
    st: &mut ApplyState,
    index: u64,
    cmds: &[Command],
) -> Result<EntryOutcome, StorageError> {
    let mut results = Vec::with_capacity(cmds.len());
    let mut events = Vec::with_capacity(cmds.len());
    let mut lease_rows = PendingLeaseRows::default();
    // The auth state as this entry leaves it, cloned at the entry's first auth command.
    let mut staged_auth: Option<AuthState> = None;
    let mut kv = wtxn.open_table(rows::KV)?;
    let mut meta = wtxn.open_table(rows::META)?;
    let mut audit_table = None;
    for cmd in cmds {
        let (origin, cmd) = match cmd {
            Command::Attributed { origin, cmd } => (Some(origin), cmd.as_ref()),
            c => (None, c),
        };
        let mut ctx = WriteCtx {
            mem,
            kv: &mut kv,
            begin_rev: st.rev,
            changes: Vec::new(),
        };
        let res = match check_alarms(mem, cmd) {
            Err(e) => Err(Fail::Refused(e)),
            Ok(()) => match cmd {
                Command::Put(p) => ctx.put_cmd(p),
                Command::DeleteRange(d) => ctx.delete(d).map(CommandResult::DeleteRange),
                Command::Txn(t) => ctx.txn_cmd(t),
                Command::Compact(c) => ctx.compact(c.revision, &mut meta),
                Command::LeaseGrant { id, ttl } => lease_grant(mem, *id, *ttl, &mut lease_rows)
                    .map(|()| CommandResult::LeaseGrant { id: *id, ttl: *ttl }),
                Command::LeaseRevoke { id } => ctx.lease_revoke(*id, &mut lease_rows),
                // Deadlines are the lessor's: the store only passes the checkpoint on.
                Command::LeaseCheckpoint { .. } => Ok(CommandResult::LeaseCheckpoint),
                // Tokens are the server's: the store only passes them on.
                Command::SimpleToken { .. } => Ok(CommandResult::SimpleToken),
                Command::LeaseGrantPut { id, ttl, put } => {
                    ctx.lease_grant_put(*id, *ttl, put, &mut lease_rows)
                }
                Command::Auth(c) => {
                    let state = staged_auth.get_or_insert_with(|| (*st.auth).clone());
                    apply_auth(state, c, wtxn, &mut meta)
                }
                Command::Alarm {
                    activate,
                    member,
                    alarm,
                } => apply_alarm(mem, &mut meta, *activate, *member, *alarm),
                // The decoder never yields one inside another.
                Command::Attributed { .. } => Err(Fail::Refused(MvccError::Storage(
                    "an attributed command inside another".into(),
                ))),
            },
        };
        if let (Some(origin), Ok(_)) = (origin, &res) {
            let pending = audited_changes(&ctx, cmd)?;
            if !pending.is_empty() {
                let table = match &mut audit_table {
                    Some(t) => t,
                    None => audit_table.insert(wtxn.open_table(crate::audit::AUDIT)?),
                };
                let revision = if ctx.changes.is_empty() {
                    ctx.begin_rev
                } else {
                    ctx.begin_rev + 1
                };
                crate::audit::append(table, origin, revision, pending, st.audit_retention)?;
            }
        }
        let res = match res {
            Ok(r) => Ok(r),
            Err(Fail::Refused(e)) => {
                debug_assert!(ctx.changes.is_empty(), "refused after a change: {e}");
                Err(e)
            }
            Err(Fail::Storage(e)) => return Err(e),
        };
        if !ctx.changes.is_empty() {
            st.rev = ctx.begin_rev + 1;
            events.append(&mut ctx.changes);
        }
        results.push(res);
    }
    meta.insert(rows::META_REVISION, st.rev)?;
    meta.insert(rows::META_APPLIED, index as i64)?;
    let auth = staged_auth.map(|a| {
        let a = std::sync::Arc::new(a);
        st.auth = a.clone();
        a
    });
    Ok(EntryOutcome {
        results,
        events,
        auth,
        lease_rows,
    })
}

/// The audit entries of `cmd`, just applied in `ctx`: one per changed audited key (with the
/// value before the command and after it), or one for an auth command.
fn audited_changes(
    ctx: &WriteCtx<'_, '_, '_>,
    cmd: &Command,
) -> Result<Vec<crate::audit::Pending>, StorageError> {
    use crate::audit::{AuditAction, Pending, is_audited};
    if let Command::Auth(a) = cmd {
        return Ok(vec![Pending {
            action: AuditAction::Auth,
            key: bytes::Bytes::new(),
            before: None,
            after: None,
            detail: describe_auth(a),
        }]);
    }
    let mut out = Vec::new();
    for ev in &ctx.changes {
        let Some(kv) = ev.kv.as_ref() else { continue };
        if !is_audited(&kv.key) {
            continue;
        }
        let before = ctx.get_kv(&kv.key, ctx.begin_rev)?.map(|old| old.value);
        let put = ev.r#type == EventType::Put as i32;
        out.push(Pending {
            action: if put {
                AuditAction::Put
            } else {
                AuditAction::Delete
            },
            key: kv.key.clone(),
            before,
            after: put.then(|| kv.value.clone()),
            detail: String::new(),
        });
    }
    Ok(out)
}

/// An auth command in etcdctl's words, without any password.
fn describe_auth(a: &AuthCommand) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match a {
        AuthCommand::Enable => "auth enable".into(),
        AuthCommand::Disable => "auth disable".into(),
        AuthCommand::UserAdd { name, .. } => format!("user add {name}"),
        AuthCommand::UserDelete { name } => format!("user delete {name}"),
        AuthCommand::UserChangePassword { name, .. } => format!("user passwd {name}"),
        AuthCommand::UserGrantRole { user, role } => format!("user grant-role {user} {role}"),
        AuthCommand::UserRevokeRole { user, role } => format!("user revoke-role {user} {role}"),
        AuthCommand::RoleAdd { name } => format!("role add {name}"),
        AuthCommand::RoleDelete { name } => format!("role delete {name}"),
        AuthCommand::RoleGrantPermission { role, perm } => {
            let kind = match perm.perm_type {
                0 => "read",
                1 => "write",
                _ => "readwrite",
            };
            format!(
                "role grant-permission {role} {kind} {} {}",
                text(&perm.key),
                text(&perm.range_end)
            )
            .trim_end()
            .to_string()
        }
        AuthCommand::RoleRevokePermission {
            role,
            key,
            range_end,
        } => format!(
            "role revoke-permission {role} {} {}",
            text(key),
            text(range_end)
        )
        .trim_end()
        .to_string(),
        AuthCommand::BootstrapRoot { .. } => "user add root (bootstrap)".into(),
    }
}

/// etcd's `AlarmType` numbers.
const ALARM_NOSPACE: i32 = 1;
const ALARM_CORRUPT: i32 = 2;

/// Refuses `cmd` as etcd's capped applier (a `NOSPACE` alarm raised: no puts, no txn that
/// puts, no lease grants) and corrupt applier (a `CORRUPT` alarm raised: no puts, txns,
/// compactions, lease grants or revokes) would.
fn check_alarms(mem: &Memory, cmd: &Command) -> Result<(), MvccError> {
    let alarms = mem.alarms.read().expect("alarm lock");
    if alarms.is_empty() {
        return Ok(());
    }
    let raised = |t: i32| alarms.iter().any(|(_, a)| *a == t);
    if raised(ALARM_CORRUPT)
        && matches!(
            cmd,
            Command::Put(_)
                | Command::Txn(_)
                | Command::Compact(_)
                | Command::LeaseGrant { .. }
                | Command::LeaseRevoke { .. }
                | Command::LeaseGrantPut { .. }
        )
    {
        return Err(MvccError::Corrupt);
    }
    if raised(ALARM_NOSPACE) {
        let grows = match cmd {
            Command::Put(_) | Command::LeaseGrant { .. } | Command::LeaseGrantPut { .. } => true,
            Command::Txn(t) => txn_puts(t),
            _ => false,
        };
        if grows {
            return Err(MvccError::NoSpace);
        }
    }
    Ok(())
}

/// Raises or clears alarm `alarm` of `member`, as etcd's alarm store: raising one already
/// raised answers it again, clearing one not raised answers nothing.
fn apply_alarm(
    mem: &Memory,
    meta: &mut redb::Table<'_, &str, i64>,
    activate: bool,
    member: u64,
    alarm: i32,
) -> Applying<CommandResult> {
    let mut alarms = mem.alarms.write().expect("alarm lock");
    let key = rows::alarm_key(member, alarm);
    if activate {
        if !alarms.contains(&(member, alarm)) {
            meta.insert(key.as_str(), 1)?;
            alarms.insert((member, alarm));
        }
        Ok(CommandResult::Alarm(Some((member, alarm))))
    } else if alarms.contains(&(member, alarm)) {
        meta.remove(key.as_str())?;
        alarms.remove(&(member, alarm));
        Ok(CommandResult::Alarm(Some((member, alarm))))
    } else {
        Ok(CommandResult::Alarm(None))
    }
}

fn lease_grant(mem: &Memory, id: LeaseId, ttl: i64, rows: &mut PendingLeaseRows) -> Applying<()> {
    check_lease_grant(mem, id, ttl)?;
    rows.grant(id, ttl);
    mem.leases.write().expect("lease lock").insert(id, ttl);
    Ok(())
}

fn check_lease_grant(mem: &Memory, id: LeaseId, ttl: i64) -> Result<(), MvccError> {
    if ttl > MAX_LEASE_TTL {
        return Err(MvccError::LeaseTtlTooLarge);
    }
    if mem.lease_exists(id) {
        return Err(MvccError::LeaseExists);
    }
    Ok(())
}

/// The state of one command being applied inside the entry's write transaction.
struct WriteCtx<'s, 'a, 't> {
    mem: &'s Memory,
    kv: &'a mut redb::Table<'t, u128, &'static [u8]>,
    /// Store revision before this command.
    begin_rev: i64,
    /// Events of this command so far; all share revision `begin_rev + 1`.
    changes: Vec<Event>,
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

    fn get_kv(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, StorageError> {
        match self.mem.index_get(key, rev) {
            Some(e) => Ok(Some(read_row(&*self.kv, e.modified)?.kv)),
            None => Ok(None),
        }
    }

    fn put_cmd(&mut self, p: &PutRequest) -> Applying<CommandResult> {
        self.check_put(p)?;
        Ok(CommandResult::Put(self.put(p)?))
    }

    /// The checks etcd makes before applying a put: key existence for `ignore_value` /
    /// `ignore_lease`, lease existence otherwise.
    fn check_put(&self, p: &PutRequest) -> Result<(), MvccError> {
        if (p.ignore_value || p.ignore_lease)
            && self.mem.index_get(&p.key, self.read_rev()).is_none()
        {
            return Err(MvccError::KeyNotFound);
        }
        if !p.ignore_lease && p.lease != 0 && !self.mem.lease_exists(p.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }

    /// A put that passed [`WriteCtx::check_put`] at this point of the command; fails only
    /// when the disk does, or when the key vanished since the check (a bug of the caller's
    /// checks, reported as a storage failure so that nothing half-done is kept).
    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, StorageError> {
        let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
            self.get_kv(&p.key, self.read_rev())?
        } else {
            None
        };
        let (value, lease) = match (&prev, p.ignore_value, p.ignore_lease) {
            (None, true, _) | (None, _, true) => {
                return Err(StorageError(
                    "put checked against a key that is gone: refusing to apply half a command"
                        .into(),
                ));
            }
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
        let (create_revision, version) = self.mem.index_put(&p.key, at, lease);
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision,
            mod_revision: at.main,
            version,
            value,
            lease,
        };
        self.kv
            .insert(at.to_u128(), encode_row(false, &kv).as_slice())?;
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

    fn delete(&mut self, d: &DeleteRangeRequest) -> Applying<DeleteRangeResponse> {
        let end = RangeEnd::from_request(&d.range_end);
        let (_, entries, _) = self
            .mem
            .index_range(&d.key, end, 0, self.read_rev(), 0)
            .map_err(|e| StorageError(format!("delete's own read failed: {e}")))?;
        let mut prev_kvs = Vec::new();
        for (key, e) in &entries {
            if d.prev_kv {
                prev_kvs.push(read_row(&*self.kv, e.modified)?.kv);
            }
            self.tombstone(key)?;
        }
        Ok(DeleteRangeResponse {
            header: header(self.read_rev()),
            deleted: entries.len() as i64,
            prev_kvs,
        })
    }

    fn tombstone(&mut self, key: &[u8]) -> Result<(), StorageError> {
        let at = self.next_rev();
        let kv = KeyValue {
            key: bytes::Bytes::copy_from_slice(key),
            mod_revision: at.main,
            ..Default::default()
        };
        self.kv
            .insert(at.to_u128(), encode_row(true, &kv).as_slice())?;
        self.mem.index_tombstone(key, at);
        self.changes.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(())
    }

    fn lease_revoke(
        &mut self,
        id: LeaseId,
        rows: &mut PendingLeaseRows,
    ) -> Applying<CommandResult> {
        let keys: Vec<Vec<u8>> = match self.mem.leases.read().expect("lease lock").get(id) {
            Some(rec) => rec.keys.iter().cloned().collect(),
            None => return Err(MvccError::LeaseNotFound.into()),
        };
        // Keys are deleted in key order, all in one revision, as etcd's lessor does.
        for key in keys {
            if self.mem.index_get(&key, self.read_rev()).is_some() {
                self.tombstone(&key)?;
            }
        }
        rows.revoke(id);
        self.mem.leases.write().expect("lease lock").remove(id);
        Ok(CommandResult::LeaseRevoke {
            revision: self.read_rev(),
        })
    }

    /// A lease grant and a put attached to it, checked whole before either happens.
    fn lease_grant_put(
        &mut self,
        id: LeaseId,
        ttl: i64,
        put: &PutRequest,
        rows: &mut PendingLeaseRows,
    ) -> Applying<CommandResult> {
        if put.lease != id || put.ignore_lease {
            return Err(MvccError::LeaseNotFound.into());
        }
        check_lease_grant(self.mem, id, ttl)?;
        if put.ignore_value && self.mem.index_get(&put.key, self.read_rev()).is_none() {
            return Err(MvccError::KeyNotFound.into());
        }
        lease_grant(self.mem, id, ttl, rows)?;
        let put = self.put(put)?;
        Ok(CommandResult::LeaseGrantPut { id, ttl, put })
    }

    /// Compaction as etcd's `Compact`: history below `rev` is removed from the index and the
    /// disk, keeping what is visible at `rev`.
    fn compact(
        &mut self,
        rev: i64,
        meta: &mut redb::Table<'_, &str, i64>,
    ) -> Applying<CommandResult> {
        if rev <= self.mem.compact_revision() {
            return Err(MvccError::Compacted.into());
        }
        if rev > self.begin_rev {
            return Err(MvccError::FutureRevision.into());
        }
        let keep = {
            let mut index = self.mem.index.write().expect("index lock");
            self.mem
                .compact_rev
                .store(rev, std::sync::atomic::Ordering::Release);
            index.compact(rev)
        };
        let hi = Revision::new(rev, i64::MAX).to_u128();
        let mut doomed = Vec::new();
        for row in self.kv.range(..=hi)? {
            let (k, _) = row?;
            let at = Revision::from_u128(k.value());
            if !keep.contains(&at) {
                doomed.push(k.value());
            }
        }
        for k in &doomed {
            self.kv.remove(*k)?;
        }
        meta.insert(rows::META_COMPACT, rev)?;
        tracing::info!(revision = rev, removed = doomed.len(), "compacted");
        Ok(CommandResult::Compact {
            revision: self.begin_rev,
        })
    }

    fn txn_cmd(&mut self, t: &TxnRequest) -> Applying<CommandResult> {
        check_txn_intervals(t).map_err(|_| MvccError::DuplicateKey)?;
        let mut path = Vec::new();
        self.compare_path(t, &mut path)?;
        self.check_requests(t, &path, &mut 0)?;
        // Everything that could refuse the txn was checked: from here only the disk can fail.
        let mut resp = self.apply_txn(t, &path, &mut 0)?;
        resp.header = header(self.read_rev());
        Ok(CommandResult::Txn(resp))
    }

    /// Evaluates the compares of the txn and of every nested txn on the chosen branches, before
    /// any op runs, as etcd's `compareToPath`.
    fn compare_path(&self, t: &TxnRequest, path: &mut Vec<bool>) -> Result<(), StorageError> {
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

    fn compare(&self, c: &Compare) -> Result<bool, StorageError> {
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let end = RangeEnd::from_request(&c.range_end);
        let Ok((_, entries, _)) = self.mem.index_range(&c.key, end, 0, self.read_rev(), 0) else {
            return Ok(false);
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

    /// etcd's `checkRequests` over the chosen branches: puts' key and lease checks, ranges'
    /// revisions.
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
                    if r.revision > 0 && r.revision < self.mem.compact_revision() {
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
    ) -> Result<TxnResponse, StorageError> {
        let ok = path[*pos];
        *pos += 1;
        let ops: &[RequestOp] = if ok { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let rev = self.read_rev();
                    let resp = range(self.mem, &*self.kv, rev, r).map_err(|e| {
                        StorageError(format!("txn range failed after its checks: {e}"))
                    })?;
                    Some(response_op::Response::ResponseRange(resp))
                }
                Some(request_op::Request::RequestPut(p)) => {
                    Some(response_op::Response::ResponsePut(self.put(p)?))
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    let resp = match self.delete(d) {
                        Ok(r) => r,
                        Err(Fail::Storage(e)) => return Err(e),
                        Err(Fail::Refused(e)) => {
                            return Err(StorageError(format!("txn delete refused halfway: {e}")));
                        }
                    };
                    Some(response_op::Response::ResponseDeleteRange(resp))
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
    use std::cmp::Ordering as CmpOrdering;
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

/// Applies one auth command to the entry's auth state and writes the rows it changed.
fn apply_auth(
    state: &mut AuthState,
    cmd: &AuthCommand,
    wtxn: &redb::WriteTransaction,
    meta: &mut redb::Table<'_, &str, i64>,
) -> Applying<CommandResult> {
    let touched = state.apply_tracked(cmd).map_err(MvccError::Auth)?;
    if !touched.users.is_empty() {
        let mut users = wtxn.open_table(rows::AUTH_USERS)?;
        for name in &touched.users {
            match state.user(name) {
                Some(u) => users
                    .insert(name.as_str(), u.encode_to_vec().as_slice())
                    .map(drop),
                None => users.remove(name.as_str()).map(drop),
            }?;
        }
    }
    if !touched.roles.is_empty() {
        let mut roles = wtxn.open_table(rows::AUTH_ROLES)?;
        for name in &touched.roles {
            match state.role(name) {
                Some(r) => roles
                    .insert(name.as_str(), r.encode_to_vec().as_slice())
                    .map(drop),
                None => roles.remove(name.as_str()).map(drop),
            }?;
        }
    }
    meta.insert(rows::META_AUTH_ENABLED, i64::from(state.enabled()))?;
    meta.insert(rows::META_AUTH_REVISION, state.revision() as i64)?;
    Ok(CommandResult::Auth {
        revision: state.revision(),
    })
}
