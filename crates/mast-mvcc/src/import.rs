//! Building a store file from outside the log: what a snapshot restore needs.
//!
//! - [`restore_copy`] rewrites a Mast snapshot (a store file) into a new store file for a
//!   new cluster: every key revision, lease, user and role, minus what belonged to the old
//!   cluster (the log owner's notes and the raised alarms, which name old members).
//! - [`StoreBuilder`] takes the contents of another store row by row — an etcd backend's
//!   `key`, `lease`, `authUsers` and `authRoles` buckets — and writes them as this store's
//!   rows, so an etcd backup restores with its revisions, versions and leases intact.

use std::path::{Path, PathBuf};

use mast_proto::authpb::{Role, User};
use mast_proto::mvccpb::KeyValue;
use prost::Message;

use crate::error::StorageError;
use crate::revision::Revision;
use crate::rows::{
    META_ALARM_PREFIX, META_APPLIED, META_AUTH_ENABLED, META_AUTH_REVISION, META_COMPACT,
    META_REVISION, encode_row,
};
use crate::snapshot::{SnapshotChunk, SnapshotWriter, TableId, file_view};

/// Bytes of rows gathered before they are written as one chunk.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// What a built store holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// The store revision.
    pub revision: i64,
    /// The compacted revision, -1 when never compacted.
    pub compact_revision: i64,
    /// Rows of the key space: every kept revision of every key, deletes included.
    pub key_revisions: u64,
    /// Leases.
    pub leases: u64,
    /// Auth users.
    pub users: u64,
    /// Auth roles.
    pub roles: u64,
    /// Whether auth is enabled.
    pub auth_enabled: bool,
}

/// Copies the Mast store file `src` (as `Maintenance.Snapshot` streams it, without its
/// trailing hash) into a new store file at `dest`, leaving out the log owner's notes and the
/// raised alarms. `progress` is called with the bytes of rows copied so far.
///
/// # Errors
/// [`StorageError`] when `src` is not a store file or `dest` cannot be written.
pub fn restore_copy(
    src: &Path,
    dest: &Path,
    mut progress: impl FnMut(u64),
) -> Result<ImportSummary, StorageError> {
    let (_db, view) = file_view(src)?;
    let mut writer = SnapshotWriter::create(dest)?;
    let mut summary = ImportSummary {
        compact_revision: -1,
        ..Default::default()
    };
    let mut done = 0u64;
    view.for_each_chunk(CHUNK_BYTES, |mut chunk| {
        done += chunk.byte_len() as u64;
        match chunk.table {
            TableId::Notes => return Ok(()),
            TableId::Meta => chunk
                .rows
                .retain(|(k, _)| !k.starts_with(META_ALARM_PREFIX.as_bytes())),
            TableId::Kv => summary.key_revisions += chunk.rows.len() as u64,
            TableId::Lease => summary.leases += chunk.rows.len() as u64,
            TableId::AuthUsers => summary.users += chunk.rows.len() as u64,
            TableId::AuthRoles => summary.roles += chunk.rows.len() as u64,
            // The audit log is the data's history: it goes with the data.
            TableId::Audit => {}
        }
        if chunk.table == TableId::Meta {
            for (k, v) in &chunk.rows {
                let v = i64::from_le_bytes(v.as_slice().try_into().unwrap_or([0; 8]));
                match std::str::from_utf8(k) {
                    Ok(META_COMPACT) => summary.compact_revision = v,
                    Ok(META_AUTH_ENABLED) => summary.auth_enabled = v != 0,
                    _ => {}
                }
            }
        }
        writer.write_chunk(&chunk)?;
        progress(done);
        Ok(())
    })?;
    summary.revision = view.revision();
    writer.finish()?;
    Ok(summary)
}

/// Writes a new store file from rows given one by one (an etcd backend's contents); see the
/// module documentation. Nothing is checked against a log: the store starts with no applied
/// entry, and the first log entry applied to it continues from its revision.
pub struct StoreBuilder {
    writer: SnapshotWriter,
    kv: Vec<(Vec<u8>, Vec<u8>)>,
    kv_bytes: usize,
    summary: ImportSummary,
    auth_revision: u64,
}

impl StoreBuilder {
    /// Starts a new store file at `path` (replacing any file there).
    ///
    /// # Errors
    /// [`StorageError`] when the file cannot be created.
    pub fn create(path: &Path) -> Result<StoreBuilder, StorageError> {
        Ok(StoreBuilder {
            writer: SnapshotWriter::create(path)?,
            kv: Vec::new(),
            kv_bytes: 0,
            summary: ImportSummary {
                revision: 1,
                compact_revision: -1,
                ..Default::default()
            },
            auth_revision: 1,
        })
    }

    /// One revision of a key, as etcd's `key` bucket holds it: the revision `(main, sub)`,
    /// whether it records a delete, and the key-value (of a delete only the key is read).
    ///
    /// # Errors
    /// [`StorageError`] when writing fails.
    pub fn key_revision(
        &mut self,
        main: i64,
        sub: i64,
        tombstone: bool,
        kv: KeyValue,
    ) -> Result<(), StorageError> {
        let kv = if tombstone {
            KeyValue {
                key: kv.key,
                mod_revision: main,
                ..Default::default()
            }
        } else {
            kv
        };
        let key = Revision::new(main, sub).to_u128().to_be_bytes().to_vec();
        let row = encode_row(tombstone, &kv);
        self.kv_bytes += key.len() + row.len();
        self.kv.push((key, row));
        self.summary.revision = self.summary.revision.max(main);
        self.summary.key_revisions += 1;
        if self.kv_bytes >= CHUNK_BYTES {
            self.flush_kv()?;
        }
        Ok(())
    }

    fn flush_kv(&mut self) -> Result<(), StorageError> {
        let rows = std::mem::take(&mut self.kv);
        self.kv_bytes = 0;
        self.writer.write_chunk(&SnapshotChunk {
            table: TableId::Kv,
            rows,
        })
    }

    /// Key revisions given so far (for progress).
    pub fn key_revisions(&self) -> u64 {
        self.summary.key_revisions
    }

    /// Lease `id` granted `ttl` seconds. Its keys are the key revisions that name it.
    ///
    /// # Errors
    /// [`StorageError`] when writing fails.
    pub fn lease(&mut self, id: i64, ttl: i64) -> Result<(), StorageError> {
        self.summary.leases += 1;
        self.writer.write_chunk(&SnapshotChunk {
            table: TableId::Lease,
            rows: vec![(id.to_le_bytes().to_vec(), ttl.to_le_bytes().to_vec())],
        })
    }

    /// An auth user (its password as a bcrypt hash, as etcd stores it).
    ///
    /// # Errors
    /// [`StorageError`] when the name is not UTF-8 or writing fails.
    pub fn user(&mut self, user: &User) -> Result<(), StorageError> {
        self.summary.users += 1;
        self.named(TableId::AuthUsers, &user.name, user.encode_to_vec())
    }

    /// An auth role with its permissions.
    ///
    /// # Errors
    /// [`StorageError`] when the name is not UTF-8 or writing fails.
    pub fn role(&mut self, role: &Role) -> Result<(), StorageError> {
        self.summary.roles += 1;
        self.named(TableId::AuthRoles, &role.name, role.encode_to_vec())
    }

    fn named(&mut self, table: TableId, name: &[u8], value: Vec<u8>) -> Result<(), StorageError> {
        std::str::from_utf8(name).map_err(|_| StorageError("an auth name is not UTF-8".into()))?;
        self.writer.write_chunk(&SnapshotChunk {
            table,
            rows: vec![(name.to_vec(), value)],
        })
    }

    /// Whether auth is enabled, and the auth revision.
    pub fn auth(&mut self, enabled: bool, revision: u64) {
        self.summary.auth_enabled = enabled;
        self.auth_revision = revision.max(1);
    }

    /// The compacted revision.
    pub fn compacted(&mut self, revision: i64) {
        self.summary.compact_revision = revision;
    }

    /// Writes the counters and commits the file durably; returns its path and what it holds.
    ///
    /// # Errors
    /// [`StorageError`] when writing or the commit fails.
    pub fn finish(mut self) -> Result<(PathBuf, ImportSummary), StorageError> {
        self.flush_kv()?;
        let s = &mut self.summary;
        s.revision = s.revision.max(s.compact_revision);
        let meta = [
            (META_REVISION, s.revision),
            (META_COMPACT, s.compact_revision),
            (META_APPLIED, 0),
            (META_AUTH_ENABLED, i64::from(s.auth_enabled)),
            (META_AUTH_REVISION, self.auth_revision as i64),
        ];
        self.writer.write_chunk(&SnapshotChunk {
            table: TableId::Meta,
            rows: meta
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_le_bytes().to_vec()))
                .collect(),
        })?;
        let summary = self.summary.clone();
        let path = self.writer.finish()?;
        Ok((path, summary))
    }
}
