//! The store: redb tables on disk, the key index, the lease table and the auth state in memory,
//! and the write path that applies commands to them.
//!
//! Writes arrive as a batch of [`Command`]s applied in order inside one redb write transaction.
//! [`Store::stage`] applies a batch to memory and to redb with a non-durable commit and writes
//! it as one record to the write-ahead log ([`crate::wal`]) without syncing; [`Store::sync`]
//! then makes every staged batch durable with one `fdatasync` of the log, and
//! [`Store::publish`] lets readers see it. The caller groups concurrent requests into one batch
//! and can stage the next batch while the last one syncs, so one fsync serves many writes.
//! When the log is full (and for auth changes, which are never logged) the batch is committed
//! to redb durably instead — a checkpoint — and the log starts again. Readers only look at
//! revisions up to the last *published* one, so they never observe a write that is not on
//! disk. No lock is held across a sync.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use mast_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};
use mast_proto::mvccpb::{Event, KeyValue, event::EventType};
use prost::Message;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::auth::{AuthCommand, AuthState};
use crate::error::{MvccError, StorageError};
use crate::index::{Index, RangeEnd};
use crate::lease::{LeaseId, LeaseTable};
use crate::revision::Revision;
use crate::txn::{self, CommandResult};

/// Rows of the key space: revision → flag byte + encoded `mvccpb.KeyValue`.
pub(crate) const KV: TableDefinition<u128, &[u8]> = TableDefinition::new("kv");
/// Small named counters (current revision, compacted revision, applied index, auth flag and
/// revision).
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Leases: ID → granted TTL in seconds.
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("lease");

/// Lease rows waiting for a checkpoint beyond which a batch writes them anyway (without a
/// durable commit), so a checkpoint never has more than this many to insert.
const LEASE_ROWS_FLUSH: usize = 4096;
/// Auth users: name → encoded `authpb.User` (password holds the bcrypt hash).
const AUTH_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_users");
/// Auth roles: name → encoded `authpb.Role`.
const AUTH_ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_roles");

const META_REVISION: &str = "current_revision";
const META_COMPACT: &str = "compact_revision";
const META_APPLIED: &str = "applied_index";
const META_AUTH_ENABLED: &str = "auth_enabled";
const META_AUTH_REVISION: &str = "auth_revision";

/// Flag byte of a row that records a delete.
const TOMBSTONE: u8 = 1;

/// Default size of redb's page cache in bytes (64 MiB; the operating system caches the file
/// too). Values are read through it; the key index lives outside it.
pub const DEFAULT_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The largest lease TTL in seconds, as etcd's `MaxLeaseTTL`.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// What a range finds in the index: the revision read, the visible keys with their entries
/// (at most the limit), and the count of all visible keys in the range.
pub(crate) type IndexRange = (i64, Vec<(Vec<u8>, crate::index::IndexEntry)>, usize);

/// A deterministic change to the store. Applying the same commands in the same order to the
/// same state always gives the same state: no clock, no randomness (lease IDs are chosen by the
/// caller).
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// As etcd's `Put`.
    Put(PutRequest),
    /// As etcd's `DeleteRange`.
    DeleteRange(DeleteRangeRequest),
    /// As etcd's `Txn`. The caller has checked op counts and duplicate keys.
    Txn(TxnRequest),
    /// As etcd's `Compact`.
    Compact(CompactionRequest),
    /// Creates lease `id` with `ttl` seconds (already raised to the minimum TTL).
    LeaseGrant {
        /// The new lease's ID, non-zero.
        id: LeaseId,
        /// Granted TTL in seconds.
        ttl: i64,
    },
    /// Deletes lease `id` and, in one revision, every key attached to it.
    LeaseRevoke {
        /// The lease to revoke.
        id: LeaseId,
    },
    /// Changes the auth state; never changes the store revision. The caller has checked that
    /// the requester may (admin), and hashed any password.
    Auth(AuthCommand),
    /// Creates lease `id` with `ttl` seconds and then applies `put` (whose `lease` must be
    /// `id`), as a `LeaseGrant` followed by a `Put` would, in one command: registering a
    /// service instance. Fails with nothing changed when lease `id` exists.
    LeaseGrantPut {
        /// The new lease's ID, non-zero.
        id: LeaseId,
        /// Granted TTL in seconds.
        ttl: i64,
        /// The put attached to the new lease.
        put: PutRequest,
    },
}

/// Options of [`Store::open_with_options`].
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Size of redb's page cache in bytes.
    pub cache_bytes: usize,
    /// Size of the write-ahead log file in bytes (at least [`crate::wal::MIN_WAL_BYTES`]); a
    /// checkpoint happens at the latest when it fills. Only used when the log file is created.
    pub wal_bytes: u64,
    /// Bytes of log records after which the next batch is a checkpoint (a durable redb
    /// commit). Smaller: shorter pauses and less memory for redb's buffered pages, more
    /// redb fsyncs; replay after a crash covers at most this much.
    pub checkpoint_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            wal_bytes: crate::wal::DEFAULT_WAL_BYTES,
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
        }
    }
}

/// Default [`StoreOptions::checkpoint_bytes`]: 8 MiB.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

/// A batch applied by [`Store::stage`]: its outcome, and what to pass to [`Store::publish`]
/// once it is durable.
#[derive(Debug)]
pub struct Staged {
    /// Results, events and the revision after the batch.
    pub applied: Applied,
    /// The applied index after the batch.
    pub applied_index: u64,
    /// The batch is already durable (it was checkpointed); no [`Store::sync`] is needed.
    pub durable: bool,
}

/// The outcome of one batch.
#[derive(Debug)]
pub struct Applied {
    /// One result per command, in order.
    pub results: Vec<Result<CommandResult, MvccError>>,
    /// Every event of the batch, in revision order (a watch's input).
    pub events: Vec<Event>,
    /// The store revision after the batch.
    pub revision: i64,
}

/// Counters that describe the store, for `Status` and metrics.
#[derive(Clone, Copy, Debug)]
pub struct StoreStatus {
    /// Current (committed) store revision.
    pub revision: i64,
    /// Compacted revision, -1 before the first compaction.
    pub compact_revision: i64,
    /// Number of commands applied since the store was created (moves with every write).
    pub applied_index: u64,
    /// Size of the database file in bytes.
    pub db_size: u64,
    /// Bytes in use inside the file (stored data and metadata).
    pub db_size_in_use: u64,
    /// Number of keys with indexed history.
    pub keys: usize,
    /// Durable redb commits (checkpoints of the write-ahead log) since the store was opened.
    pub checkpoints: u64,
    /// Bytes of write-ahead log records since the last checkpoint.
    pub wal_used: u64,
}

struct WriterState {
    /// Revision after the last applied (maybe not yet committed) command.
    rev: i64,
    applied_index: u64,
    wal: crate::wal::Wal,
    /// Lease rows waiting for the next durable commit.
    lease_rows: crate::lease::PendingLeaseRows,
}

/// The MVCC store. Share it behind an `Arc`: reads run concurrently from any thread; writes go
/// through [`Store::apply`], which serializes them.
pub struct Store {
    /// Readers and the writer hold the read side for the life of their redb transaction;
    /// [`Store::defragment`] takes the write side to rewrite the file.
    db: RwLock<Option<Database>>,
    path: std::path::PathBuf,
    index: RwLock<Index>,
    leases: RwLock<LeaseTable>,
    /// Replaced as a whole after the batch that changed it commits, so readers never see an
    /// auth change that is not on disk.
    auth: RwLock<AuthState>,
    /// The newest revision whose batch is on disk and published; readers never look past it.
    committed_rev: AtomicI64,
    /// The write-ahead log's file, synced by [`Store::sync`] without the writer lock.
    wal_file: std::sync::Arc<std::fs::File>,
    /// The compacted revision; written under the index write lock.
    compact_rev: AtomicI64,
    applied_index: AtomicU64,
    /// Durable redb commits so far (log full, auth change, close, defragment, snapshot).
    checkpoints: AtomicU64,
    /// [`StoreOptions::checkpoint_bytes`].
    checkpoint_bytes: u64,
    writer: Mutex<WriterState>,
    poisoned: AtomicBool,
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

/// One row of the `kv` table, decoded.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub(crate) tombstone: bool,
    pub(crate) kv: KeyValue,
}

pub(crate) fn encode_row(tombstone: bool, kv: &KeyValue) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(if tombstone { TOMBSTONE } else { 0 });
    kv.encode(&mut buf).expect("vec has room");
    buf
}

/// Decodes a row. The row is copied once into a shared buffer and the key and value are
/// slices of it, so a response that encodes them (prost clones each `Bytes` field it writes)
/// and drops them costs two allocations per row, not four.
pub(crate) fn decode_row(bytes: &[u8]) -> Result<Row, StorageError> {
    let (flag, rest) = bytes
        .split_first()
        .ok_or_else(|| StorageError("empty row".into()))?;
    Ok(Row {
        tombstone: *flag == TOMBSTONE,
        kv: KeyValue::decode(bytes::Bytes::copy_from_slice(rest))?,
    })
}

/// Reads one row by revision from any redb table handle (read or write transaction).
pub(crate) fn read_row<T: ReadableTable<u128, &'static [u8]>>(
    table: &T,
    rev: Revision,
) -> Result<Row, StorageError> {
    let guard = table
        .get(rev.to_u128())?
        .ok_or_else(|| StorageError(format!("index names revision {rev} missing from disk")))?;
    decode_row(guard.value())
}

impl Store {
    /// Opens the store in `dir` (created if missing), rebuilding the key index and lease table
    /// from disk, as etcd's `restore`.
    ///
    /// # Errors
    /// [`StorageError`] when the directory or database cannot be created, opened or read.
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        Self::open_with(dir, DEFAULT_CACHE_BYTES)
    }

    /// As [`Store::open`], with redb's page cache limited to `cache_bytes` bytes.
    ///
    /// # Errors
    /// [`StorageError`] when the directory or database cannot be created, opened or read.
    pub fn open_with(dir: &Path, cache_bytes: usize) -> Result<Store, StorageError> {
        Self::open_with_options(
            dir,
            StoreOptions {
                cache_bytes,
                ..StoreOptions::default()
            },
        )
    }

    /// As [`Store::open`], with explicit options. Replays the write-ahead log's records after
    /// the last checkpoint, then checkpoints.
    ///
    /// # Errors
    /// [`StorageError`] when the directory, database or log cannot be created, opened or read.
    pub fn open_with_options(dir: &Path, opts: StoreOptions) -> Result<Store, StorageError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("mast.redb");
        let db = Database::builder()
            .set_cache_size(opts.cache_bytes)
            .create(&path)?;
        let wal = crate::wal::Wal::open(dir, opts.wal_bytes)?;
        let w = db.begin_write()?;
        {
            w.open_table(KV)?;
            w.open_table(META)?;
            w.open_table(LEASES)?;
            w.open_table(AUTH_USERS)?;
            w.open_table(AUTH_ROLES)?;
        }
        w.commit()?;

        let r = db.begin_read()?;
        let meta = r.open_table(META)?;
        let get =
            |k: &str| -> Result<Option<i64>, StorageError> { Ok(meta.get(k)?.map(|v| v.value())) };
        let mut rev = get(META_REVISION)?.unwrap_or(1);
        let compact = get(META_COMPACT)?.unwrap_or(-1);
        let applied = get(META_APPLIED)?.unwrap_or(0) as u64;
        let auth = load_auth(&r, &get)?;

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
        drop(meta);
        drop(r);
        tracing::info!(
            revision = rev,
            compact_revision = compact,
            keys = index.len(),
            leases = leases.len(),
            auth_enabled = auth.enabled(),
            auth_revision = auth.revision(),
            "store recovered"
        );
        let records = wal.replay(applied)?;
        let store = Store {
            db: RwLock::new(Some(db)),
            path,
            index: RwLock::new(index),
            leases: RwLock::new(leases),
            auth: RwLock::new(auth),
            committed_rev: AtomicI64::new(rev),
            wal_file: wal.file(),
            compact_rev: AtomicI64::new(compact),
            applied_index: AtomicU64::new(applied),
            checkpoints: AtomicU64::new(0),
            checkpoint_bytes: opts.checkpoint_bytes,
            writer: Mutex::new(WriterState {
                rev,
                applied_index: applied,
                wal,
                lease_rows: Default::default(),
            }),
            poisoned: AtomicBool::new(false),
        };
        if !records.is_empty() {
            let mut w = store.writer.lock().expect("writer lock");
            let mut commands = 0;
            for r in &records {
                debug_assert_eq!(r.first_index, w.applied_index + 1);
                store.apply_locked(&mut w, &r.commands, false)?;
                commands += r.commands.len();
            }
            store.checkpoint_locked(&mut w)?;
            store.committed_rev.store(w.rev, Ordering::Release);
            store
                .applied_index
                .store(w.applied_index, Ordering::Release);
            tracing::info!(
                records = records.len(),
                commands,
                revision = w.rev,
                "replayed the write-ahead log"
            );
        }
        Ok(store)
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

    /// Closes the database file (waiting for running reads and the current write batch);
    /// every later operation fails with "store is closed". Dropping the store also closes it.
    ///
    /// # Errors
    /// [`StorageError`] when redb reports an error while closing.
    pub fn close(&self) -> Result<(), StorageError> {
        let mut w = self.writer.lock().expect("writer lock");
        let open = self.db.read().is_ok_and(|d| d.is_some());
        if open && !self.poisoned.load(Ordering::Acquire) {
            // Everything staged goes into redb for good, so the next open replays nothing.
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
        db.compact().map_err(|e| StorageError(e.to_string()))
    }

    /// The current store revision: every write up to it is on disk.
    pub fn revision(&self) -> i64 {
        self.committed_rev.load(Ordering::Acquire)
    }

    /// The compacted revision, -1 before the first compaction.
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev.load(Ordering::Acquire)
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
            db_size,
            db_size_in_use: in_use.min(db_size),
            keys: self.index.read().expect("index lock").len(),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            wal_used: self.writer.lock().expect("writer lock").wal.used(),
        })
    }

    /// Read access to the applied lease table (granted TTLs and attached keys).
    pub fn leases(&self) -> RwLockReadGuard<'_, LeaseTable> {
        self.leases.read().expect("lease lock")
    }

    /// Read access to the applied auth state (users, roles, permissions). Hold it briefly: the
    /// batch that changes auth waits for readers to release it.
    pub fn auth(&self) -> RwLockReadGuard<'_, AuthState> {
        self.auth.read().expect("auth lock")
    }

    fn check_read_rev(&self, requested: i64, current: i64) -> Result<i64, MvccError> {
        if requested > current {
            return Err(MvccError::FutureRevision);
        }
        let rev = if requested <= 0 { current } else { requested };
        if rev < self.compact_revision() {
            return Err(MvccError::Compacted);
        }
        Ok(rev)
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
        let db = self.db()?;
        let r = db.begin_read().map_err(StorageError::from)?;
        let table = r.open_table(KV).map_err(StorageError::from)?;
        txn::range(self, &table, current, req)
    }

    /// The `mod_revision` of each of `keys` at the current revision (`None`: absent then),
    /// and that revision, read from the index only (no disk). Lets a caller tell whether
    /// something it rendered from these keys earlier is still current.
    pub fn mod_revisions(&self, keys: &[&[u8]]) -> (i64, Vec<Option<i64>>) {
        let index = self.index.read().expect("index lock");
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

    /// Whether `[key, range_end)` (etcd's `range_end` conventions) holds at most `n` keys at
    /// the current revision. Visits at most `n + 1` index entries and reads nothing from disk:
    /// a cheap way to decide whether a range is small enough to serve inline.
    pub fn has_at_most(&self, key: &[u8], range_end: &[u8], n: usize) -> bool {
        let rev = self.revision();
        let index = self.index.read().expect("index lock");
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
        let index = self.index.read().expect("index lock");
        let rev = self.revision();
        let (mut count, mut max_mod) = (0usize, 0i64);
        index.visit(key, RangeEnd::from_request(range_end), rev, |_, e| {
            count += 1;
            max_mod = max_mod.max(e.modified.main);
            true
        });
        (rev, count, max_mod)
    }

    /// Collects the index entries for a range at `rev` (after checking `rev`), releasing the
    /// index lock before any disk read.
    pub(crate) fn index_range(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        requested: i64,
        current: i64,
        limit: usize,
    ) -> Result<IndexRange, MvccError> {
        let index = self.index.read().expect("index lock");
        let rev = self.check_read_rev(requested, current)?;
        let mut out = Vec::new();
        let mut count = 0usize;
        index.visit(key, end, rev, |k, e| {
            count += 1;
            if limit == 0 || out.len() < limit {
                out.push((k.to_vec(), e));
            }
            true
        });
        Ok((rev, out, count))
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

    /// Applies a batch of commands in one durable transaction and returns each command's
    /// result and the batch's events. Commands are applied in order; a refused command changes
    /// nothing and the rest still apply.
    ///
    /// # Errors
    /// [`StorageError`] when the disk fails; the store then refuses every later write (its
    /// memory may be ahead of the disk) until it is reopened.
    pub fn apply(&self, cmds: &[Command]) -> Result<Applied, StorageError> {
        let staged = self.stage(cmds)?;
        if !staged.durable {
            self.sync()?;
        }
        self.publish(staged.applied.revision, staged.applied_index);
        Ok(staged.applied)
    }

    /// Applies `cmds` in order to memory and redb and writes them to the write-ahead log, but
    /// neither syncs nor lets readers see them: call [`Store::sync`] (unless
    /// [`Staged::durable`]) and then [`Store::publish`], in staging order. Batches are staged
    /// one at a time; a later batch may be staged before an earlier one is synced.
    ///
    /// # Errors
    /// [`StorageError`] when the disk fails; the store then refuses every later write (restart
    /// to recover from the log).
    pub fn stage(&self, cmds: &[Command]) -> Result<Staged, StorageError> {
        let mut w = self.writer.lock().expect("writer lock");
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError(
                "store failed earlier; restart to recover".into(),
            ));
        }
        match self.apply_locked(&mut w, cmds, true) {
            Ok((applied, durable)) => Ok(Staged {
                applied,
                applied_index: w.applied_index,
                durable,
            }),
            Err(e) => {
                self.poisoned.store(true, Ordering::Release);
                tracing::error!(error = %e, "write batch failed; store refuses further writes");
                Err(e)
            }
        }
    }

    /// Makes every staged batch durable: one `fdatasync` of the write-ahead log. Runs without
    /// the writer lock, so the next batch can be staged meanwhile.
    ///
    /// # Errors
    /// [`StorageError`] when the sync fails; the store then refuses every later write (the log's
    /// state on disk is unknown, as etcd treats a failed WAL sync).
    pub fn sync(&self) -> Result<(), StorageError> {
        match self.wal_file.sync_data() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.poisoned.store(true, Ordering::Release);
                tracing::error!(error = %e, "write-ahead log sync failed; store refuses further writes");
                Err(e.into())
            }
        }
    }

    /// Lets readers see every revision up to `revision` (a staged batch's, after it is
    /// durable) and reports `applied_index` as applied.
    pub fn publish(&self, revision: i64, applied_index: u64) {
        self.committed_rev.fetch_max(revision, Ordering::AcqRel);
        self.applied_index
            .fetch_max(applied_index, Ordering::AcqRel);
    }

    /// A durable redb commit of everything applied so far; the log then starts again.
    fn checkpoint_locked(&self, w: &mut WriterState) -> Result<(), StorageError> {
        let db = self.db()?;
        let mut wtxn = db.begin_write()?;
        wtxn.set_durability(Durability::Immediate)?;
        w.lease_rows.write_to(&mut wtxn.open_table(LEASES)?)?;
        wtxn.commit()?;
        w.wal.reset();
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Applies `cmds`; with `log`, also writes them to the write-ahead log or, when they cannot
    /// be logged, commits durably. Returns the outcome and whether the batch is durable.
    fn apply_locked(
        &self,
        w: &mut WriterState,
        cmds: &[Command],
        log: bool,
    ) -> Result<(Applied, bool), StorageError> {
        let db = self.db()?;
        let first_index = w.applied_index + 1;
        let mut wtxn = db.begin_write()?;
        let mut durable = log && !crate::wal::Wal::encodes(cmds);
        wtxn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let mut results = Vec::with_capacity(cmds.len());
        let mut events = Vec::with_capacity(cmds.len());
        // The auth state as this batch leaves it, cloned at the batch's first auth command and
        // published after the commit.
        let mut staged_auth: Option<AuthState> = None;
        {
            let mut kv = wtxn.open_table(KV)?;
            let mut meta = wtxn.open_table(META)?;
            // Opened only for a batch that has an auth command.
            let mut auth_t = None;
            for cmd in cmds {
                let mut ctx = txn::WriteCtx {
                    store: self,
                    kv: &mut kv,
                    begin_rev: w.rev,
                    changes: Vec::new(),
                };
                let res = match cmd {
                    Command::Put(p) => ctx.put_cmd(p),
                    Command::DeleteRange(d) => ctx.delete_cmd(d),
                    Command::Txn(t) => ctx.txn_cmd(t),
                    Command::Compact(c) => self.compact(&mut ctx, c.revision, &mut meta),
                    Command::LeaseGrant { id, ttl } => {
                        self.lease_grant(*id, *ttl, &mut w.lease_rows)
                    }
                    Command::LeaseRevoke { id } => ctx.lease_revoke(*id, &mut w.lease_rows),
                    Command::LeaseGrantPut { id, ttl, put } => {
                        if put.lease != *id {
                            Err(MvccError::LeaseNotFound)
                        } else {
                            match self.lease_grant(*id, *ttl, &mut w.lease_rows) {
                                Ok(_) => match ctx.put_cmd(put) {
                                    Ok(CommandResult::Put(r)) => Ok(CommandResult::LeaseGrantPut {
                                        id: *id,
                                        ttl: *ttl,
                                        put: r,
                                    }),
                                    Ok(other) => Ok(other),
                                    Err(e) => {
                                        // Nothing changed after all: the new lease goes too.
                                        match ctx.lease_revoke(*id, &mut w.lease_rows) {
                                            Err(MvccError::Storage(s)) => {
                                                Err(MvccError::Storage(s))
                                            }
                                            _ => Err(e),
                                        }
                                    }
                                },
                                Err(e) => Err(e),
                            }
                        }
                    }
                    Command::Auth(c) => {
                        if auth_t.is_none() {
                            auth_t = Some(AuthTables {
                                users: wtxn.open_table(AUTH_USERS)?,
                                roles: wtxn.open_table(AUTH_ROLES)?,
                            });
                        }
                        let tables = auth_t.as_mut().expect("opened above");
                        let state = staged_auth
                            .get_or_insert_with(|| self.auth.read().expect("auth lock").clone());
                        apply_auth(state, c, tables, &mut meta)
                    }
                };
                let res = match res {
                    Ok(r) => Ok(r),
                    Err(MvccError::Storage(s)) => return Err(StorageError(s)),
                    Err(e) => Err(e),
                };
                if !ctx.changes.is_empty() {
                    w.rev = ctx.begin_rev + 1;
                    events.append(&mut ctx.changes);
                }
                w.applied_index += 1;
                results.push(res);
            }
            meta.insert(META_REVISION, w.rev)?;
            meta.insert(META_APPLIED, w.applied_index as i64)?;
        }
        if log && !durable && w.wal.used() >= self.checkpoint_bytes {
            // Enough logged since the last checkpoint: this batch is the next one.
            durable = true;
            wtxn.set_durability(Durability::Immediate)?;
        }
        if log && !durable && !w.wal.append(first_index, cmds)? {
            // The log is full: this batch becomes the checkpoint.
            durable = true;
            wtxn.set_durability(Durability::Immediate)?;
        }
        if durable || w.lease_rows.len() >= LEASE_ROWS_FLUSH {
            w.lease_rows.write_to(&mut wtxn.open_table(LEASES)?)?;
        }
        wtxn.commit()?;
        if durable {
            w.wal.reset();
            self.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(auth) = staged_auth {
            *self.auth.write().expect("auth lock") = auth;
        }
        Ok((
            Applied {
                results,
                events,
                revision: w.rev,
            },
            durable,
        ))
    }

    fn lease_grant(
        &self,
        id: LeaseId,
        ttl: i64,
        rows: &mut crate::lease::PendingLeaseRows,
    ) -> Result<CommandResult, MvccError> {
        if ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        let mut leases = self.leases.write().expect("lease lock");
        if leases.contains(id) {
            return Err(MvccError::LeaseExists);
        }
        rows.grant(id, ttl);
        leases.insert(id, ttl);
        Ok(CommandResult::LeaseGrant { id, ttl })
    }

    pub(crate) fn lease_exists(&self, id: LeaseId) -> bool {
        self.leases.read().expect("lease lock").contains(id)
    }

    pub(crate) fn remove_lease(&self, id: LeaseId) -> Option<crate::lease::LeaseRecord> {
        self.leases.write().expect("lease lock").remove(id)
    }

    /// Indexes a put of `key` at `rev` with `lease` and moves the key to that lease. Returns
    /// the key's `create_revision` and `version` as of this put.
    pub(crate) fn index_put(&self, key: &[u8], rev: Revision, lease: LeaseId) -> (i64, i64) {
        let out = self.index.write().expect("index lock").put(key, rev, lease);
        if out.prev_lease != lease {
            self.leases
                .write()
                .expect("lease lock")
                .move_key(key, out.prev_lease, lease);
        }
        (out.created.main, out.version)
    }

    /// Indexes a delete of `key` at `rev` and detaches it from its lease.
    pub(crate) fn index_tombstone(&self, key: &[u8], rev: Revision) {
        let prev = self.index.write().expect("index lock").tombstone(key, rev);
        if prev != 0 {
            self.leases
                .write()
                .expect("lease lock")
                .move_key(key, prev, 0);
        }
    }

    pub(crate) fn index_get(&self, key: &[u8], rev: i64) -> Option<crate::index::IndexEntry> {
        self.index
            .read()
            .expect("index lock")
            .history(key)
            .and_then(|h| h.get(rev))
    }

    /// Compaction as etcd's `Compact`: history below `rev` is removed from the index and the
    /// disk, keeping what is visible at `rev`.
    fn compact(
        &self,
        ctx: &mut txn::WriteCtx<'_, '_, '_>,
        rev: i64,
        meta: &mut redb::Table<'_, &str, i64>,
    ) -> Result<CommandResult, MvccError> {
        if rev <= self.compact_revision() {
            return Err(MvccError::Compacted);
        }
        if rev > ctx.begin_rev {
            return Err(MvccError::FutureRevision);
        }
        let keep = {
            let mut index = self.index.write().expect("index lock");
            self.compact_rev.store(rev, Ordering::Release);
            index.compact(rev)
        };
        let hi = Revision::new(rev, i64::MAX).to_u128();
        let mut doomed = Vec::new();
        for row in ctx.kv.range(..=hi).map_err(StorageError::from)? {
            let (k, _) = row.map_err(StorageError::from)?;
            let at = Revision::from_u128(k.value());
            if !keep.contains(&at) {
                doomed.push(k.value());
            }
        }
        for k in &doomed {
            ctx.kv.remove(*k).map_err(StorageError::from)?;
        }
        meta.insert(META_COMPACT, rev).map_err(StorageError::from)?;
        tracing::info!(revision = rev, removed = doomed.len(), "compacted");
        Ok(CommandResult::Compact {
            revision: ctx.begin_rev,
        })
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
        let (rev, r) = {
            // Everything staged is made durable first, so the copy holds nothing a crash
            // could take back.
            let mut w = self.writer.lock().expect("writer lock");
            self.checkpoint_locked(&mut w)?;
            let db = self.db()?;
            (w.rev, db.begin_read()?)
        };
        let out = Database::create(dest)?;
        let w = out.begin_write()?;
        {
            let src = r.open_table(KV)?;
            let mut dst = w.open_table(KV)?;
            for row in src.iter()? {
                let (k, v) = row?;
                dst.insert(k.value(), v.value())?;
            }
            let src = r.open_table(LEASES)?;
            let mut dst = w.open_table(LEASES)?;
            for row in src.iter()? {
                let (k, v) = row?;
                dst.insert(k.value(), v.value())?;
            }
            let src = r.open_table(META)?;
            let mut dst = w.open_table(META)?;
            for row in src.iter()? {
                let (k, v) = row?;
                dst.insert(k.value(), v.value())?;
            }
            for table in [AUTH_USERS, AUTH_ROLES] {
                let src = r.open_table(table)?;
                let mut dst = w.open_table(table)?;
                for row in src.iter()? {
                    let (k, v) = row?;
                    dst.insert(k.value(), v.value())?;
                }
            }
        }
        w.commit()?;
        drop(out);
        Ok(rev)
    }
}

/// The auth tables of one write batch.
struct AuthTables<'t> {
    users: redb::Table<'t, &'static str, &'static [u8]>,
    roles: redb::Table<'t, &'static str, &'static [u8]>,
}

/// Applies one auth command to the batch's auth state and writes the rows it changed.
fn apply_auth(
    state: &mut AuthState,
    cmd: &AuthCommand,
    tables: &mut AuthTables<'_>,
    meta: &mut redb::Table<'_, &str, i64>,
) -> Result<CommandResult, MvccError> {
    let touched = state.apply_tracked(cmd)?;
    for name in &touched.users {
        match state.user(name) {
            Some(u) => tables
                .users
                .insert(name.as_str(), u.encode_to_vec().as_slice())
                .map(drop),
            None => tables.users.remove(name.as_str()).map(drop),
        }
        .map_err(StorageError::from)?;
    }
    for name in &touched.roles {
        match state.role(name) {
            Some(r) => tables
                .roles
                .insert(name.as_str(), r.encode_to_vec().as_slice())
                .map(drop),
            None => tables.roles.remove(name.as_str()).map(drop),
        }
        .map_err(StorageError::from)?;
    }
    meta.insert(META_AUTH_ENABLED, i64::from(state.enabled()))
        .map_err(StorageError::from)?;
    meta.insert(META_AUTH_REVISION, state.revision() as i64)
        .map_err(StorageError::from)?;
    Ok(CommandResult::Auth {
        revision: state.revision(),
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

pub(crate) fn row_to_event(row: Row) -> Event {
    Event {
        r#type: if row.tombstone {
            EventType::Delete
        } else {
            EventType::Put
        } as i32,
        kv: Some(row.kv),
        prev_kv: None,
    }
}
