//! The store: the state machine that log entries are applied to.
//!
//! The key space's rows, the leases and the auth state live in redb tables on disk
//! ([`crate::rows`]); the key index, the lease table and the auth state also live in memory
//! ([`crate::state`]). [`Store::apply`] applies one log entry ([`crate::apply`]) in one redb
//! write transaction committed *without* fsync: the log in front of the store is what makes an
//! entry durable. [`Store::checkpoint`] makes everything applied durable in redb, so the log
//! before it may be dropped; after a crash the store opens at its last checkpoint
//! ([`Store::durable_index`]) and the log's later entries are applied again.
//!
//! Readers never look past the last *published* revision ([`Store::publish`]): an entry can be
//! applied before its log record is synced, and is published once it is. No lock is held
//! across a commit or a sync.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use mast_proto::etcdserverpb::RangeRequest;
use mast_proto::mvccpb::{Event, KeyValue};
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use crate::apply::{ApplyState, apply_entry};
use crate::auth::AuthState;
use crate::command::{Command, CommandResult};
use crate::error::{MvccError, StorageError};
use crate::index::{Index, RangeEnd};
use crate::lease::{LeaseTable, PendingLeaseRows};
use crate::revision::Revision;
use crate::rows::{
    AUTH_ROLES, AUTH_USERS, KV, LEASES, META, META_ALARM_PREFIX, META_APPLIED, META_AUTH_ENABLED,
    META_AUTH_REVISION, META_COMPACT, META_REVISION, NOTES, decode_row, parse_alarm_key,
    row_to_event,
};
use crate::state::Memory;

/// Lease rows waiting for a checkpoint beyond which an entry writes them anyway (without a
/// durable commit), so a checkpoint never has more than this many to insert.
const LEASE_ROWS_FLUSH: usize = 4096;

/// Default size of redb's page cache in bytes (4 MiB). Values are read through it; the key
/// index lives outside it. It is small because the operating system caches the file as well
/// (as it does bbolt's memory map for etcd): a 100,000-key working set served 16 % fewer
/// point reads with 8 MiB than with 64 MiB, and 10,000 keys the same, while the 64 MiB
/// cache was about half of the live heap of a registry with 10,000 configs and instances
/// (benchmarks/notes.md). `mast serve --cache-mb` raises it.
pub const DEFAULT_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Keys with their `mod_revision`, in key order, as [`Store::range_mod_revisions`] lists them.
pub type KeyRevisions = Vec<(Vec<u8>, i64)>;

/// Options of [`Store::open_with_options`].
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Size of redb's page cache in bytes.
    pub cache_bytes: usize,
    /// Audit entries kept (the oldest beyond are deleted as entries are added; at least 1).
    pub audit_retention: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            audit_retention: crate::audit::DEFAULT_AUDIT_RETENTION,
        }
    }
}

/// The outcome of one applied entry.
#[derive(Debug)]
pub struct Applied {
    /// One result per command, in order.
    pub results: Vec<Result<CommandResult, MvccError>>,
    /// Every event of the entry, in revision order (a watch's input).
    pub events: Vec<Event>,
    /// The store revision after the entry.
    pub revision: i64,
    /// The entry's log index.
    pub index: u64,
}

/// Counters that describe the store, for `Status` and metrics.
#[derive(Clone, Copy, Debug)]
pub struct StoreStatus {
    /// Current (published) store revision.
    pub revision: i64,
    /// Compacted revision, -1 before the first compaction.
    pub compact_revision: i64,
    /// Index of the last published log entry.
    pub applied_index: u64,
    /// Index of the last entry made durable in redb (a checkpoint).
    pub durable_index: u64,
    /// Size of the database file in bytes.
    pub db_size: u64,
    /// Bytes in use inside the file (stored data and metadata).
    pub db_size_in_use: u64,
    /// Number of keys with indexed history.
    pub keys: usize,
    /// Durable redb commits (checkpoints) since the store was opened.
    pub checkpoints: u64,
}

/// What only the applier touches, under one lock.
struct WriterState {
    st: ApplyState,
    /// Index of the last applied entry.
    applied_index: u64,
    /// Lease rows of committed entries waiting for a durable commit.
    lease_rows: PendingLeaseRows,
}

/// The MVCC store. Share it behind an `Arc`: reads run concurrently from any thread; entries
/// are applied one at a time through [`Store::apply`].
pub struct Store {
    /// Readers and the applier hold the read side for the life of their redb transaction;
    /// [`Store::defragment`] and [`Store::close`] take the write side.
    db: RwLock<Option<Database>>,
    path: std::path::PathBuf,
    /// redb's page cache size in bytes, to reopen with after [`Store::replace_with`].
    cache_bytes: usize,
    mem: Memory,
    /// The published auth state, replaced as a whole when an entry that changed it is
    /// published, so readers never see an auth change that is not durable.
    auth: RwLock<Arc<AuthState>>,
    /// Auth states of applied entries waiting to be published, by entry index.
    auth_waiting: Mutex<VecDeque<(u64, Arc<AuthState>)>>,
    /// The newest published revision; readers never look past it.
    committed_rev: AtomicI64,
    /// Index of the last published entry.
    applied_index: AtomicU64,
    /// Index of the last entry in redb for good (the last checkpoint).
    durable_index: AtomicU64,
    /// Durable redb commits so far.
    checkpoints: AtomicU64,
    writer: Mutex<WriterState>,
    poisoned: AtomicBool,
    /// Size of the database file in bytes, as of the last commit (etcd's `Backend.Size`).
    db_size: AtomicU64,
}

/// Read access to the open database; holding it keeps [`Store::close`] and
/// [`Store::defragment`] waiting.
struct DbGuard<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0
            .as_ref()
            .expect("checked open when the guard was made")
    }
}

impl Store {
    /// Opens the store in `dir` (created if missing) at its last durable commit, rebuilding
    /// the key index and lease table from disk, as etcd's `restore`.
    ///
    /// # Errors
    /// [`StorageError`] when the directory or database cannot be created, opened or read.
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        Self::open_with_options(dir, StoreOptions::default())
    }

    /// As [`Store::open`], with explicit options.
    ///
    /// # Errors
    /// [`StorageError`] when the directory or database cannot be created, opened or read.
    pub fn open_with_options(dir: &Path, opts: StoreOptions) -> Result<Store, StorageError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("mast.redb");
        let db = Database::builder()
            .set_cache_size(opts.cache_bytes)
            .create(&path)?;
        Self::from_database(db, path, opts)
    }

    /// As [`Store::open_with_options`], on a redb [`redb::StorageBackend`] instead of the file
    /// `dir/mast.redb`: for tests that decide what a crash leaves of unsynced writes (see
    /// `tests/crash_consistency.rs`). Reads, [`Store::apply`], [`Store::checkpoint`] and
    /// [`Store::hash_kv`] work as on a file; what works on the file by its path
    /// ([`Store::defragment`], [`Store::snapshot_to`], the database size) does not.
    ///
    /// # Errors
    /// [`StorageError`] when the backend cannot be opened as a database or read.
    pub fn open_with_backend(
        dir: &Path,
        opts: StoreOptions,
        backend: impl redb::StorageBackend,
    ) -> Result<Store, StorageError> {
        let db = Database::builder()
            .set_cache_size(opts.cache_bytes)
            .create_with_backend(backend)?;
        Self::from_database(db, dir.join("mast.redb"), opts)
    }

    fn from_database(
        db: Database,
        path: std::path::PathBuf,
        opts: StoreOptions,
    ) -> Result<Store, StorageError> {
        ensure_tables(&db)?;

        let loaded = load(&db)?;
        let Loaded {
            rev,
            compact,
            applied,
            auth,
            leases,
            index,
            alarms,
        } = loaded;
        let db_size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let auth = Arc::new(auth);
        Ok(Store {
            db: RwLock::new(Some(db)),
            path,
            cache_bytes: opts.cache_bytes,
            mem: Memory::new(index, leases, compact, alarms),
            db_size: AtomicU64::new(db_size),
            auth: RwLock::new(auth.clone()),
            auth_waiting: Mutex::new(VecDeque::new()),
            committed_rev: AtomicI64::new(rev),
            applied_index: AtomicU64::new(applied),
            durable_index: AtomicU64::new(applied),
            checkpoints: AtomicU64::new(0),
            writer: Mutex::new(WriterState {
                st: ApplyState {
                    rev,
                    auth,
                    audit_retention: opts.audit_retention,
                },
                applied_index: applied,
                lease_rows: PendingLeaseRows::default(),
            }),
            poisoned: AtomicBool::new(false),
        })
    }

    fn db(&self) -> Result<DbGuard<'_>, StorageError> {
        let guard = self
            .db
            .read()
            .map_err(|_| StorageError("database lock poisoned".into()))?;
        if guard.is_none() {
            return Err(StorageError("store is closed".into()));
        }
        Ok(DbGuard(guard))
    }

    /// Applies log entry `index` (its commands in order) to memory and to redb, without
    /// making it durable or visible: readers see it after [`Store::publish`], a crash keeps it
    /// only after [`Store::checkpoint`]. Entries are applied one at a time, each with an index
    /// above the last one's.
    ///
    /// A refused command changes nothing and the entry's other commands still apply; the
    /// result of each is in [`Applied::results`].
    ///
    /// # Errors
    /// [`StorageError`] when the disk fails or `index` is not above the last applied one; the
    /// store then refuses every later write (its memory may be ahead of the disk) until it is
    /// reopened.
    pub fn apply(&self, index: u64, cmds: &[Command]) -> Result<Applied, StorageError> {
        self.apply_noted(index, cmds, &[])
    }

    /// As [`Store::apply`], also writing `notes` (name → bytes the store does not interpret) in
    /// the same commit, so they are durable exactly when the entry is. A Raft log's owner
    /// keeps the entry's log ID and the applied membership this way.
    ///
    /// # Errors
    /// As [`Store::apply`].
    pub fn apply_noted(
        &self,
        index: u64,
        cmds: &[Command],
        notes: &[(&str, &[u8])],
    ) -> Result<Applied, StorageError> {
        let mut applied = self.apply_batch(&[(index, cmds)], notes)?;
        Ok(applied.pop().expect("one entry in, one out"))
    }

    /// As [`Store::apply_noted`] for consecutive entries `(index, commands)` at once: one
    /// redb transaction (and one commit) for all of them, `notes` written once, one
    /// [`Applied`] per entry in order. A Raft state machine given several committed entries
    /// applies them this way; the commit is the larger part of a small entry's cost.
    ///
    /// # Errors
    /// As [`Store::apply`]; also when the indexes do not ascend. An empty `entries` is an
    /// empty answer.
    pub fn apply_batch(
        &self,
        entries: &[(u64, &[Command])],
        notes: &[(&str, &[u8])],
    ) -> Result<Vec<Applied>, StorageError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = self.writer.lock().expect("writer lock");
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError(
                "store failed earlier; restart to recover".into(),
            ));
        }
        let mut last = w.applied_index;
        for &(index, _) in entries {
            if index <= last {
                return Err(StorageError(format!(
                    "entry {index} is not above the last applied entry {last}"
                )));
            }
            last = index;
        }
        match self.apply_locked(&mut w, entries, notes) {
            Ok(applied) => Ok(applied),
            Err(e) => {
                self.poisoned.store(true, Ordering::Release);
                tracing::error!(error = %e, index = entries[0].0, "applying entries failed; store refuses further writes");
                Err(e)
            }
        }
    }

    fn apply_locked(
        &self,
        w: &mut WriterState,
        entries: &[(u64, &[Command])],
        notes: &[(&str, &[u8])],
    ) -> Result<Vec<Applied>, StorageError> {
        let db = self.db()?;
        let mut wtxn = db.begin_write()?;
        wtxn.set_durability(Durability::None)?;
        let mut outs = Vec::with_capacity(entries.len());
        for &(index, cmds) in entries {
            let out = apply_entry(&self.mem, &wtxn, &mut w.st, index, cmds)?;
            outs.push((index, w.st.rev, out));
        }
        if !notes.is_empty() {
            let mut table = wtxn.open_table(NOTES)?;
            for (name, value) in notes {
                table.insert(*name, *value)?;
            }
        }
        let new_rows: usize = outs.iter().map(|(_, _, o)| o.lease_rows.len()).sum();
        if w.lease_rows.len() + new_rows >= LEASE_ROWS_FLUSH {
            let mut table = wtxn.open_table(LEASES)?;
            w.lease_rows.write_to(&mut table)?;
            for (_, _, out) in &mut outs {
                out.lease_rows.write_to(&mut table)?;
            }
        }
        wtxn.commit()?;
        self.note_db_size();
        let mut applied = Vec::with_capacity(outs.len());
        for (index, revision, mut out) in outs {
            // Rows join the waiting ones only once their entry's commit is in: a commit that
            // redb makes durable later (a checkpoint, or its own close) never lacks them.
            w.lease_rows.merge(std::mem::take(&mut out.lease_rows));
            w.applied_index = index;
            if let Some(auth) = out.auth {
                self.auth_waiting
                    .lock()
                    .expect("auth queue lock")
                    .push_back((index, auth));
            }
            applied.push(Applied {
                results: out.results,
                events: out.events,
                revision,
                index,
            });
        }
        Ok(applied)
    }

    /// Lets readers see every revision up to `revision` and the auth state of every entry up
    /// to `index` (an applied entry's, once its log record is durable); reports `index` as
    /// applied.
    pub fn publish(&self, revision: i64, index: u64) {
        {
            let mut waiting = self.auth_waiting.lock().expect("auth queue lock");
            let mut newest = None;
            while waiting.front().is_some_and(|(i, _)| *i <= index) {
                newest = waiting.pop_front().map(|(_, a)| a);
            }
            if let Some(auth) = newest {
                *self.auth.write().expect("auth lock") = auth;
            }
        }
        self.committed_rev.fetch_max(revision, Ordering::AcqRel);
        self.applied_index.fetch_max(index, Ordering::AcqRel);
    }

    /// Makes every applied entry durable in redb (a commit with fsync); the log before
    /// [`Store::durable_index`] is then no longer needed.
    ///
    /// # Errors
    /// [`StorageError`] when the commit fails; the store then refuses further writes.
    pub fn checkpoint(&self) -> Result<(), StorageError> {
        let mut w = self.writer.lock().expect("writer lock");
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError(
                "store failed earlier; restart to recover".into(),
            ));
        }
        self.checkpoint_locked(&mut w).inspect_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            tracing::error!(error = %e, "checkpoint failed; store refuses further writes");
        })
    }

    /// The note `name` as the last applied entry left it (see [`Store::apply_noted`]).
    ///
    /// # Errors
    /// [`StorageError`] when the database cannot be read.
    pub fn note(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let db = self.db()?;
        let r = db.begin_read()?;
        let table = r.open_table(NOTES)?;
        Ok(table.get(name)?.map(|v| v.value().to_vec()))
    }

    /// Up to `limit` audit entries with a sequence number above `after`, oldest first (see
    /// [`crate::audit`]).
    ///
    /// # Errors
    /// [`StorageError`] when the database cannot be read or an entry does not decode.
    pub fn audit_entries(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::audit::AuditEntry>, StorageError> {
        let db = self.db()?;
        let r = db.begin_read()?;
        let table = r.open_table(crate::audit::AUDIT)?;
        let mut out = Vec::new();
        for row in table.range(after.saturating_add(1)..)?.take(limit) {
            let (k, v) = row?;
            out.push(crate::audit::AuditEntry::decode(v.value()).map_err(|e| {
                StorageError(format!("audit entry {} does not decode: {e}", k.value()))
            })?);
        }
        Ok(out)
    }

    /// Checks the audit chain (see [`crate::audit`]): the report of an intact chain, or where
    /// it is broken.
    ///
    /// # Errors
    /// [`StorageError`] when the database cannot be read.
    pub fn verify_audit(
        &self,
    ) -> Result<Result<crate::audit::AuditReport, crate::audit::AuditBreak>, StorageError> {
        let db = self.db()?;
        let r = db.begin_read()?;
        let table = r.open_table(crate::audit::AUDIT)?;
        crate::audit::verify(&table)
    }

    /// Marks the store failed: its owner could not make applied entries durable (a log write
    /// or sync failed). Every later write is refused until the store is reopened.
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// The index of the last entry in redb for good: after a crash the store opens there.
    pub fn durable_index(&self) -> u64 {
        self.durable_index.load(Ordering::Acquire)
    }

    /// The index of the last applied entry (maybe not yet published or durable).
    pub fn last_applied_index(&self) -> u64 {
        self.writer.lock().expect("writer lock").applied_index
    }

    /// A durable redb commit of everything applied so far.
    fn checkpoint_locked(&self, w: &mut WriterState) -> Result<(), StorageError> {
        let db = self.db()?;
        let mut wtxn = db.begin_write()?;
        wtxn.set_durability(Durability::Immediate)?;
        w.lease_rows.write_to(&mut wtxn.open_table(LEASES)?)?;
        wtxn.commit()?;
        self.durable_index.store(w.applied_index, Ordering::Release);
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the database file after a checkpoint (waiting for running reads and the current
    /// entry); every later operation fails with "store is closed". Dropping the store also
    /// closes it, without the checkpoint.
    ///
    /// # Errors
    /// [`StorageError`] when redb reports an error while closing.
    pub fn close(&self) -> Result<(), StorageError> {
        let mut w = self.writer.lock().expect("writer lock");
        let open = self.db.read().is_ok_and(|d| d.is_some());
        if open && !self.poisoned.load(Ordering::Acquire) {
            self.checkpoint_locked(&mut w)?;
        }
        let mut db = self
            .db
            .write()
            .map_err(|_| StorageError("database lock poisoned".into()))?;
        match db.take() {
            Some(d) => d.close().map_err(|e| StorageError(e.to_string())),
            None => Ok(()),
        }
    }

    /// Rewrites the database file to release free pages, as etcd's `Defragment`. Reads and
    /// writes wait while it runs. Returns whether anything was released.
    ///
    /// # Errors
    /// [`StorageError`] when redb cannot compact the file.
    pub fn defragment(&self) -> Result<bool, StorageError> {
        let mut w = self.writer.lock().expect("writer lock");
        self.checkpoint_locked(&mut w)?;
        let mut db = self
            .db
            .write()
            .map_err(|_| StorageError("database lock poisoned".into()))?;
        let db = db
            .as_mut()
            .ok_or_else(|| StorageError("store is closed".into()))?;
        let released = db.compact().map_err(|e| StorageError(e.to_string()))?;
        self.note_db_size();
        Ok(released)
    }

    /// Size of the database file in bytes as of the last commit or defragmentation: what
    /// etcd's backend quota compares with `--quota-backend-bytes`.
    pub fn db_size(&self) -> u64 {
        self.db_size.load(Ordering::Acquire)
    }

    fn note_db_size(&self) {
        if let Ok(m) = std::fs::metadata(&self.path) {
            self.db_size.store(m.len(), Ordering::Release);
        }
    }

    /// The raised alarms, as `(member ID, etcd AlarmType number)`, ordered by member and
    /// type (applied through [`Command::Alarm`]).
    pub fn alarms(&self) -> Vec<(u64, i32)> {
        self.mem
            .alarms
            .read()
            .expect("alarm lock")
            .iter()
            .copied()
            .collect()
    }

    /// The current store revision: every write up to it is on disk.
    pub fn revision(&self) -> i64 {
        self.committed_rev.load(Ordering::Acquire)
    }

    /// The compacted revision, -1 before the first compaction.
    pub fn compact_revision(&self) -> i64 {
        self.mem.compact_revision()
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sizes and counters of the store.
    ///
    /// # Errors
    /// [`StorageError`] when the database file cannot be inspected.
    pub fn status(&self) -> Result<StoreStatus, StorageError> {
        let db_size = std::fs::metadata(&self.path)?.len();
        let mut in_use = 0;
        let db = self.db()?;
        let r = db.begin_read()?;
        {
            let t = r.open_table(KV)?;
            let s = t.stats()?;
            in_use += s.stored_bytes() + s.metadata_bytes() + s.fragmented_bytes();
        }
        Ok(StoreStatus {
            revision: self.revision(),
            compact_revision: self.compact_revision(),
            applied_index: self.applied_index.load(Ordering::Acquire),
            durable_index: self.durable_index.load(Ordering::Acquire),
            db_size,
            db_size_in_use: in_use.min(db_size),
            keys: self.mem.index.read().expect("index lock").len(),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
        })
    }

    /// Read access to the applied lease table (granted TTLs and attached keys).
    pub fn leases(&self) -> RwLockReadGuard<'_, LeaseTable> {
        self.mem.leases.read().expect("lease lock")
    }

    /// The published auth state (users, roles, permissions): what the last published entry
    /// left.
    pub fn auth(&self) -> Arc<AuthState> {
        self.auth.read().expect("auth lock").clone()
    }

    /// Serves a Range at the current committed revision, as etcd's `Range`. The header of the
    /// response carries only the revision; the caller fills in the cluster fields.
    ///
    /// # Errors
    /// [`MvccError::FutureRevision`] or [`MvccError::Compacted`] for a `revision` out of the
    /// store's history; [`MvccError::Storage`] when the disk fails.
    pub fn range(
        &self,
        req: &RangeRequest,
    ) -> Result<mast_proto::etcdserverpb::RangeResponse, MvccError> {
        let current = self.revision();
        if req.count_only {
            return crate::range::count(&self.mem, current, req);
        }
        let db = self.db()?;
        let r = db.begin_read().map_err(StorageError::from)?;
        let table = r.open_table(KV).map_err(StorageError::from)?;
        crate::range::range(&self.mem, &table, current, req)
    }

    /// The `mod_revision` of each of `keys` at the current revision (`None`: absent then),
    /// and that revision, read from the index only (no disk). Lets a caller tell whether
    /// something it rendered from these keys earlier is still current.
    pub fn mod_revisions(&self, keys: &[&[u8]]) -> (i64, Vec<Option<i64>>) {
        let index = self.mem.index.read().expect("index lock");
        let rev = self.revision();
        let mods = keys
            .iter()
            .map(|k| {
                index
                    .history(k)
                    .and_then(|h| h.get(rev))
                    .map(|e| e.modified.main)
            })
            .collect();
        (rev, mods)
    }

    /// Every key of `[key, range_end)` (etcd's `range_end` conventions) at the current
    /// revision with its `mod_revision`, in key order, and that revision; read from the index
    /// only (no disk), as [`Store::mod_revisions`] for a range.
    pub fn range_mod_revisions(&self, key: &[u8], range_end: &[u8]) -> (i64, KeyRevisions) {
        let index = self.mem.index.read().expect("index lock");
        let rev = self.revision();
        let mut out = Vec::new();
        index.visit(key, RangeEnd::from_request(range_end), rev, |k, e| {
            out.push((k.to_vec(), e.modified.main));
            true
        });
        (rev, out)
    }

    /// Whether `[key, range_end)` (etcd's `range_end` conventions) holds at most `n` keys at
    /// the current revision. Visits at most `n + 1` index entries and reads nothing from disk:
    /// a cheap way to decide whether a range is small enough to serve inline.
    pub fn has_at_most(&self, key: &[u8], range_end: &[u8], n: usize) -> bool {
        let rev = self.revision();
        let index = self.mem.index.read().expect("index lock");
        let mut seen = 0usize;
        index.visit(key, RangeEnd::from_request(range_end), rev, |_, _| {
            seen += 1;
            seen <= n
        });
        seen <= n
    }

    /// A summary of `[key, range_end)` (etcd's `range_end` conventions) at the current
    /// revision, from the index only: `(revision, count, max_mod_revision)`, where
    /// `max_mod_revision` is 0 for an empty range.
    ///
    /// Two summaries of the same range that are equal mean the range holds the same keys with
    /// the same values: a put gives a key a `mod_revision` above every earlier one, so any put
    /// since raises the maximum unless the key was deleted again, and a delete alone lowers the
    /// count. A caller can keep something rendered from the range and use it while the summary
    /// is unchanged.
    pub fn range_summary(&self, key: &[u8], range_end: &[u8]) -> (i64, usize, i64) {
        let index = self.mem.index.read().expect("index lock");
        let rev = self.revision();
        let (mut count, mut max_mod) = (0usize, 0i64);
        index.visit(key, RangeEnd::from_request(range_end), rev, |_, e| {
            count += 1;
            max_mod = max_mod.max(e.modified.main);
            true
        });
        (rev, count, max_mod)
    }

    /// The key's value at revision `rev` (`None` when absent then, or compacted away), for a
    /// watch event's `prev_kv`.
    ///
    /// # Errors
    /// [`StorageError`] when the disk fails.
    pub fn get_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, StorageError> {
        if rev < self.compact_revision() || rev <= 0 {
            return Ok(None);
        }
        let db = self.db()?;
        let r = db.begin_read()?;
        let table = r.open_table(KV)?;
        let entry = self
            .mem
            .index
            .read()
            .expect("index lock")
            .history(key)
            .and_then(|h| h.get(rev));
        match entry {
            Some(e) => match table.get(e.modified.to_u128())? {
                Some(g) => Ok(Some(decode_row(g.value())?.kv)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// The events of revisions `from..=to` whose key is in `[key, end)`, read from history, in
    /// revision order, at most `limit` revisions' worth (whole revisions only). Used to replay a
    /// watch from `start_revision` and to catch up a slow watcher, as etcd's unsynced watchers.
    ///
    /// # Errors
    /// [`MvccError::Compacted`] when `from` is below the compacted revision;
    /// [`MvccError::Storage`] when the disk fails.
    pub fn events_between(
        &self,
        from: i64,
        to: i64,
        limit_revs: usize,
        mut filter: impl FnMut(&[u8]) -> bool,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        if from < self.compact_revision() {
            return Err(MvccError::Compacted);
        }
        let db = self.db()?;
        let r = db.begin_read().map_err(StorageError::from)?;
        let table = r.open_table(KV).map_err(StorageError::from)?;
        let lo = Revision::new(from.max(0), 0).to_u128();
        let hi = Revision::new(to, i64::MAX).to_u128();
        let mut events = Vec::new();
        let mut last_rev = from - 1;
        let mut revs_seen = 0usize;
        for row in table.range(lo..=hi).map_err(StorageError::from)? {
            let (k, v) = row.map_err(StorageError::from)?;
            let at = Revision::from_u128(k.value());
            if at.main != last_rev {
                if revs_seen == limit_revs {
                    break;
                }
                revs_seen += 1;
                last_rev = at.main;
            }
            let row = decode_row(v.value())?;
            if !filter(&row.kv.key) {
                continue;
            }
            events.push(row_to_event(row));
        }
        Ok((events, last_rev))
    }

    /// A CRC-32 over every row at or below `rev` (all history when `rev` is 0), as etcd's
    /// `HashKV`. Returns the hash, the revision hashed up to, and the compacted revision.
    ///
    /// # Errors
    /// [`MvccError::FutureRevision`] / [`MvccError::Compacted`] for a revision out of history.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64), MvccError> {
        let current = self.revision();
        let compact = self.compact_revision();
        if rev > current {
            return Err(MvccError::FutureRevision);
        }
        if rev > 0 && rev < compact {
            return Err(MvccError::Compacted);
        }
        let upto = if rev <= 0 { current } else { rev };
        let db = self.db()?;
        let r = db.begin_read().map_err(StorageError::from)?;
        let table = r.open_table(KV).map_err(StorageError::from)?;
        let mut h = crc32fast::Hasher::new();
        let hi = Revision::new(upto, i64::MAX).to_u128();
        for row in table.range(..=hi).map_err(StorageError::from)? {
            let (k, v) = row.map_err(StorageError::from)?;
            h.update(&k.value().to_be_bytes());
            h.update(v.value());
        }
        Ok((h.finalize(), upto, compact))
    }

    /// A CRC-32 of the whole database's key space, as etcd's `Hash`.
    ///
    /// # Errors
    /// [`StorageError`] when the disk fails.
    pub fn hash(&self) -> Result<u32, MvccError> {
        self.hash_kv(0).map(|(h, _, _)| h)
    }

    /// Writes a consistent copy of the store (one read transaction) to `dest` as a redb file,
    /// for `Snapshot`. Returns the revision the copy holds.
    ///
    /// # Errors
    /// [`StorageError`] when reading or writing fails.
    pub fn snapshot_to(&self, dest: &Path) -> Result<i64, StorageError> {
        let view = self.view()?;
        let mut out = crate::snapshot::SnapshotWriter::create(dest)?;
        view.for_each_chunk(4 << 20, |c| out.write_chunk(&c))?;
        out.finish()?;
        Ok(view.revision())
    }

    /// A consistent view of every table as of the last applied entry (see
    /// [`crate::snapshot`]); lease rows still waiting for a checkpoint are written first (a
    /// non-durable commit), so the view holds every lease.
    ///
    /// # Errors
    /// [`StorageError`] when the database cannot be written or read.
    pub fn view(&self) -> Result<crate::snapshot::StoreView, StorageError> {
        let mut w = self.writer.lock().expect("writer lock");
        let db = self.db()?;
        if w.lease_rows.len() > 0 {
            let mut wtxn = db.begin_write()?;
            wtxn.set_durability(Durability::None)?;
            w.lease_rows.write_to(&mut wtxn.open_table(LEASES)?)?;
            wtxn.commit()?;
        }
        crate::snapshot::StoreView::new(db.begin_read()?)
    }

    /// Replaces the whole store with the database file at `path` (a finished
    /// [`crate::snapshot::SnapshotWriter`]'s), as etcd installs a snapshot from its leader: the
    /// file is moved over the store's own, and the index, leases, auth state and revisions are
    /// read back from it. Reads and writes wait while it runs; the new state is published at
    /// once.
    ///
    /// # Errors
    /// [`StorageError`] when the file cannot be moved or opened; the store then refuses every
    /// later write.
    pub fn replace_with(&self, path: &Path) -> Result<(), StorageError> {
        let mut w = self.writer.lock().expect("writer lock");
        let mut slot = self
            .db
            .write()
            .map_err(|_| StorageError("database lock poisoned".into()))?;
        let result = (|| {
            if let Some(old) = slot.take() {
                old.close().map_err(|e| StorageError(e.to_string()))?;
            }
            std::fs::rename(path, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            let db = Database::builder()
                .set_cache_size(self.cache_bytes)
                .create(&self.path)?;
            ensure_tables(&db)?;
            let loaded = load(&db)?;
            *slot = Some(db);
            Ok::<_, StorageError>(loaded)
        })();
        let loaded = match result {
            Ok(l) => l,
            Err(e) => {
                self.poisoned.store(true, Ordering::Release);
                tracing::error!(error = %e, "installing a snapshot failed; store refuses further writes");
                return Err(e);
            }
        };
        let auth = Arc::new(loaded.auth);
        *self.mem.index.write().expect("index lock") = loaded.index;
        *self.mem.leases.write().expect("lease lock") = loaded.leases;
        self.mem
            .compact_rev
            .store(loaded.compact, Ordering::Release);
        *self.mem.alarms.write().expect("alarm lock") = loaded.alarms;
        self.note_db_size();
        w.st = ApplyState {
            rev: loaded.rev,
            auth: auth.clone(),
            audit_retention: w.st.audit_retention,
        };
        w.applied_index = loaded.applied;
        w.lease_rows = PendingLeaseRows::default();
        self.auth_waiting.lock().expect("auth queue lock").clear();
        *self.auth.write().expect("auth lock") = auth;
        self.committed_rev.store(loaded.rev, Ordering::Release);
        self.applied_index.store(loaded.applied, Ordering::Release);
        self.durable_index.store(loaded.applied, Ordering::Release);
        Ok(())
    }
}

impl Drop for Store {
    /// Writes the waiting lease rows durably before redb closes the file: redb makes every
    /// commit durable on a clean close, and a commit that records an applied index must not
    /// lack the lease rows of the entries it holds.
    fn drop(&mut self) {
        let Ok(mut w) = self.writer.lock() else {
            return;
        };
        if self.db.read().is_ok_and(|d| d.is_some())
            && let Err(e) = self.checkpoint_locked(&mut w)
        {
            tracing::warn!(error = %e, "checkpoint at close failed");
        }
    }
}

/// Creates any table a database lacks (a new file, or one written by an older version).
fn ensure_tables(db: &Database) -> Result<(), StorageError> {
    let w = db.begin_write()?;
    {
        w.open_table(KV)?;
        w.open_table(META)?;
        w.open_table(LEASES)?;
        w.open_table(AUTH_USERS)?;
        w.open_table(AUTH_ROLES)?;
        w.open_table(NOTES)?;
        w.open_table(crate::audit::AUDIT)?;
    }
    w.commit()?;
    Ok(())
}

/// What [`load`] reads back from a database.
struct Loaded {
    rev: i64,
    compact: i64,
    applied: u64,
    auth: AuthState,
    leases: LeaseTable,
    index: Index,
    alarms: BTreeSet<(u64, i32)>,
}

/// Reads the state back from a database's tables, rebuilding the key index and the lease
/// attachments from the `kv` rows (as etcd's `restore`).
fn load(db: &Database) -> Result<Loaded, StorageError> {
    let r = db.begin_read()?;
    let meta = r.open_table(META)?;
    let get =
        |k: &str| -> Result<Option<i64>, StorageError> { Ok(meta.get(k)?.map(|v| v.value())) };
    let mut rev = get(META_REVISION)?.unwrap_or(1);
    let compact = get(META_COMPACT)?.unwrap_or(-1);
    let applied = get(META_APPLIED)?.unwrap_or(0) as u64;
    let auth = load_auth(&r, &get)?;
    let mut alarms = BTreeSet::new();
    for row in meta.range(META_ALARM_PREFIX..)? {
        let (k, _) = row?;
        if !k.value().starts_with(META_ALARM_PREFIX) {
            break;
        }
        if let Some(a) = parse_alarm_key(k.value()) {
            alarms.insert(a);
        }
    }

    let mut leases = LeaseTable::default();
    for row in r.open_table(LEASES)?.iter()? {
        let (id, ttl) = row?;
        leases.insert(id.value(), ttl.value());
    }

    let mut index = Index::new();
    for row in r.open_table(KV)?.iter()? {
        let (k, v) = row?;
        let at = Revision::from_u128(k.value());
        let row = decode_row(v.value())?;
        let created = Revision::new(row.kv.create_revision, 0);
        index.restore(
            &row.kv.key,
            created,
            at,
            row.kv.version,
            row.tombstone,
            row.kv.lease,
        );
        rev = rev.max(at.main);
    }
    for (key, id) in index.leased_keys() {
        leases.move_key(key, 0, id);
    }
    tracing::info!(
        revision = rev,
        compact_revision = compact,
        applied_index = applied,
        keys = index.len(),
        leases = leases.len(),
        auth_enabled = auth.enabled(),
        auth_revision = auth.revision(),
        alarms = alarms.len(),
        "store loaded"
    );
    Ok(Loaded {
        rev,
        compact,
        applied,
        auth,
        leases,
        index,
        alarms,
    })
}

/// Reads the auth state back from disk (revision 1 and auth off on a store that never had
/// an auth change, as etcd's new auth store).
fn load_auth(
    r: &redb::ReadTransaction,
    get: &dyn Fn(&str) -> Result<Option<i64>, StorageError>,
) -> Result<AuthState, StorageError> {
    let enabled = get(META_AUTH_ENABLED)?.unwrap_or(0) != 0;
    let revision = get(META_AUTH_REVISION)?.map_or(1, |v| v as u64);
    let mut users = Vec::new();
    for row in r.open_table(AUTH_USERS)?.iter()? {
        let (_, v) = row?;
        users.push(mast_proto::authpb::User::decode(v.value())?);
    }
    let mut roles = Vec::new();
    for row in r.open_table(AUTH_ROLES)?.iter()? {
        let (_, v) = row?;
        roles.push(mast_proto::authpb::Role::decode(v.value())?);
    }
    Ok(AuthState::restore(enabled, revision, users, roles))
}
