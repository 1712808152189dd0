//! Snapshots of the whole store: a consistent view to read from, row chunks to send, a
//! writer that builds a store file from chunks, and installing such a file in place of a live
//! store.
//!
//! A [`StoreView`] is one redb read transaction taken between two entries: everything applied
//! up to an index and nothing after. It costs nothing to take (redb's copy-on-write keeps the
//! pages it sees) and can be read for as long as it lives, while entries go on being applied.
//! [`StoreView::chunks`] cuts its tables into [`SnapshotChunk`]s of bounded size, in table
//! and key order — what a member sends a follower that is too far behind for the log — and a
//! [`SnapshotWriter`] puts them back together into a new database file, which
//! [`crate::Store::replace_with`] installs.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::audit::AUDIT;
use crate::error::StorageError;
use crate::rows::{AUTH_ROLES, AUTH_USERS, KV, LEASES, META, META_APPLIED, META_REVISION, NOTES};

/// A table of the store, as it travels in a [`SnapshotChunk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TableId {
    /// `kv`: revision → row.
    Kv = 1,
    /// `meta`: counters.
    Meta = 2,
    /// `lease`: lease ID → TTL.
    Lease = 3,
    /// `auth_users`.
    AuthUsers = 4,
    /// `auth_roles`.
    AuthRoles = 5,
    /// `notes`: the log owner's notes.
    Notes = 6,
    /// `audit`: sequence number → audit entry.
    Audit = 7,
}

impl TableId {
    /// Every table, in the order chunks carry them.
    pub const ALL: [TableId; 7] = [
        TableId::Meta,
        TableId::Notes,
        TableId::AuthUsers,
        TableId::AuthRoles,
        TableId::Lease,
        TableId::Kv,
        TableId::Audit,
    ];

    /// The table with this wire number.
    pub fn from_u8(v: u8) -> Option<TableId> {
        TableId::ALL.into_iter().find(|t| *t as u8 == v)
    }
}

/// Rows of one table, keys and values as bytes: `kv` keys are 16 bytes big-endian, `audit`
/// keys 8 bytes big-endian, `meta` and
/// name keys UTF-8, lease IDs and every `i64` value 8 bytes little-endian; the other values as
/// stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The table the rows belong to.
    pub table: TableId,
    /// `(key, value)` pairs in key order.
    pub rows: Vec<(Vec<u8>, Vec<u8>)>,
}

impl SnapshotChunk {
    /// Bytes of keys and values in the chunk.
    pub fn byte_len(&self) -> usize {
        self.rows.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// A consistent read of every table, taken between two entries.
pub struct StoreView {
    txn: redb::ReadTransaction,
    revision: i64,
    index: u64,
}

impl std::fmt::Debug for StoreView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreView")
            .field("revision", &self.revision)
            .field("index", &self.index)
            .finish()
    }
}

impl StoreView {
    pub(crate) fn new(txn: redb::ReadTransaction) -> Result<StoreView, StorageError> {
        let (revision, index) = {
            let meta = txn.open_table(META)?;
            (
                meta.get(META_REVISION)?.map_or(1, |v| v.value()),
                meta.get(META_APPLIED)?.map_or(0, |v| v.value() as u64),
            )
        };
        Ok(StoreView {
            txn,
            revision,
            index,
        })
    }

    /// The store revision the view holds.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The index of the last entry the view holds.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The note `name` as of the view (see [`crate::Store::apply_noted`]).
    ///
    /// # Errors
    /// [`StorageError`] when the database cannot be read.
    pub fn note(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let table = self.txn.open_table(NOTES)?;
        Ok(table.get(name)?.map(|v| v.value().to_vec()))
    }

    /// Every row of every table, in chunks of about `max_bytes` (at least one row each).
    ///
    /// # Errors
    /// [`StorageError`] when the database cannot be read.
    pub fn chunks(&self, max_bytes: usize) -> Result<Vec<SnapshotChunk>, StorageError> {
        let mut out = Vec::new();
        self.for_each_chunk(max_bytes, |c| {
            out.push(c);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with every chunk in order (see [`StoreView::chunks`]); stops at the first
    /// error `f` returns.
    ///
    /// # Errors
    /// [`StorageError`] when the database cannot be read, or `f`'s error.
    pub fn for_each_chunk(
        &self,
        max_bytes: usize,
        mut f: impl FnMut(SnapshotChunk) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let max_bytes = max_bytes.max(1);
        for table in TableId::ALL {
            let mut chunk = SnapshotChunk {
                table,
                rows: Vec::new(),
            };
            let mut bytes = 0usize;
            let mut push = |k: Vec<u8>, v: Vec<u8>| -> Result<(), StorageError> {
                bytes += k.len() + v.len();
                chunk.rows.push((k, v));
                if bytes >= max_bytes {
                    let full = std::mem::replace(
                        &mut chunk,
                        SnapshotChunk {
                            table,
                            rows: Vec::new(),
                        },
                    );
                    bytes = 0;
                    f(full)?;
                }
                Ok(())
            };
            match table {
                TableId::Kv => {
                    for row in self.txn.open_table(KV)?.iter()? {
                        let (k, v) = row?;
                        push(k.value().to_be_bytes().to_vec(), v.value().to_vec())?;
                    }
                }
                TableId::Meta => {
                    for row in self.txn.open_table(META)?.iter()? {
                        let (k, v) = row?;
                        push(
                            k.value().as_bytes().to_vec(),
                            v.value().to_le_bytes().to_vec(),
                        )?;
                    }
                }
                TableId::Lease => {
                    for row in self.txn.open_table(LEASES)?.iter()? {
                        let (k, v) = row?;
                        push(
                            k.value().to_le_bytes().to_vec(),
                            v.value().to_le_bytes().to_vec(),
                        )?;
                    }
                }
                TableId::Audit => {
                    for row in self.txn.open_table(AUDIT)?.iter()? {
                        let (k, v) = row?;
                        push(k.value().to_be_bytes().to_vec(), v.value().to_vec())?;
                    }
                }
                TableId::AuthUsers | TableId::AuthRoles | TableId::Notes => {
                    for row in self.txn.open_table(bytes_table(table))?.iter()? {
                        let (k, v) = row?;
                        push(k.value().as_bytes().to_vec(), v.value().to_vec())?;
                    }
                }
            }
            if !chunk.rows.is_empty() {
                f(chunk)?;
            }
        }
        Ok(())
    }
}

fn bytes_table(t: TableId) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match t {
        TableId::AuthUsers => AUTH_USERS,
        TableId::AuthRoles => AUTH_ROLES,
        _ => NOTES,
    }
}

/// Builds a store file from [`SnapshotChunk`]s. The file is complete only after
/// [`SnapshotWriter::finish`]; until then it is a scratch file the caller may delete.
pub struct SnapshotWriter {
    db: Database,
    txn: Option<redb::WriteTransaction>,
    path: PathBuf,
}

fn bad(what: &str) -> StorageError {
    StorageError(format!("snapshot chunk: {what}"))
}

fn i64_of(b: &[u8]) -> Result<i64, StorageError> {
    Ok(i64::from_le_bytes(
        b.try_into().map_err(|_| bad("an integer is not 8 bytes"))?,
    ))
}

fn str_of(b: &[u8]) -> Result<&str, StorageError> {
    std::str::from_utf8(b).map_err(|_| bad("a name is not UTF-8"))
}

impl SnapshotWriter {
    /// Starts a new database file at `path` (replacing any file there).
    ///
    /// # Errors
    /// [`StorageError`] when the file cannot be created.
    pub fn create(path: &Path) -> Result<SnapshotWriter, StorageError> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let db = Database::create(path)?;
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        {
            txn.open_table(KV)?;
            txn.open_table(META)?;
            txn.open_table(LEASES)?;
            txn.open_table(AUTH_USERS)?;
            txn.open_table(AUTH_ROLES)?;
            txn.open_table(NOTES)?;
            txn.open_table(AUDIT)?;
        }
        Ok(SnapshotWriter {
            db,
            txn: Some(txn),
            path: path.to_path_buf(),
        })
    }

    /// Adds a chunk's rows.
    ///
    /// # Errors
    /// [`StorageError`] for a row that does not decode, or when writing fails.
    pub fn write_chunk(&mut self, chunk: &SnapshotChunk) -> Result<(), StorageError> {
        let txn = self.txn.as_ref().ok_or_else(|| bad("writer finished"))?;
        match chunk.table {
            TableId::Kv => {
                let mut t = txn.open_table(KV)?;
                for (k, v) in &chunk.rows {
                    let key = u128::from_be_bytes(
                        k.as_slice()
                            .try_into()
                            .map_err(|_| bad("a kv key is not 16 bytes"))?,
                    );
                    t.insert(key, v.as_slice())?;
                }
            }
            TableId::Meta => {
                let mut t = txn.open_table(META)?;
                for (k, v) in &chunk.rows {
                    t.insert(str_of(k)?, i64_of(v)?)?;
                }
            }
            TableId::Lease => {
                let mut t = txn.open_table(LEASES)?;
                for (k, v) in &chunk.rows {
                    t.insert(i64_of(k)?, i64_of(v)?)?;
                }
            }
            TableId::Audit => {
                let mut t = txn.open_table(AUDIT)?;
                for (k, v) in &chunk.rows {
                    let seq = u64::from_be_bytes(
                        k.as_slice()
                            .try_into()
                            .map_err(|_| bad("an audit key is not 8 bytes"))?,
                    );
                    t.insert(seq, v.as_slice())?;
                }
            }
            TableId::AuthUsers | TableId::AuthRoles | TableId::Notes => {
                let mut t = txn.open_table(bytes_table(chunk.table))?;
                for (k, v) in &chunk.rows {
                    t.insert(str_of(k)?, v.as_slice())?;
                }
            }
        }
        Ok(())
    }

    /// Commits everything durably and closes the file; returns its path.
    ///
    /// # Errors
    /// [`StorageError`] when the commit fails.
    pub fn finish(mut self) -> Result<PathBuf, StorageError> {
        let mut txn = self.txn.take().ok_or_else(|| bad("writer finished"))?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        let SnapshotWriter { db, path, .. } = self;
        db.close().map_err(|e| StorageError(e.to_string()))?;
        Ok(path)
    }
}

/// Reads a snapshot file's last entry index and revision without opening it as a store.
///
/// # Errors
/// [`StorageError`] when the file is not a store.
pub fn file_view(path: &Path) -> Result<(Database, StoreView), StorageError> {
    let db = Database::open(path)?;
    let view = StoreView::new(db.begin_read()?)?;
    Ok((db, view))
}
