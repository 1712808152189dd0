//! The write-ahead log in front of the store, and [`LoggedStore`], a single member's durable
//! write path over it.
//!
//! An entry (a batch of [`Command`]s, see [`crate::command`]) is applied to the store with a
//! non-durable redb commit and written here as one record; one `fdatasync` of this file then
//! makes it (and every record before it) durable. Every so often — after
//! [`LogOptions::checkpoint_bytes`] of records, or when the next record would not fit — the
//! store is checkpointed ([`Store::checkpoint`], a durable redb commit) and the log starts again
//! at offset 0. On open, the records after the store's durable index are applied again, in
//! order; commands are deterministic, so this rebuilds exactly the state that was acknowledged.
//! This is the role etcd's WAL plays in front of bbolt.
//!
//! The store does not know this module: it applies entries and checkpoints when told.
//!
//! ## File
//! One file, `wal.log`, created at its full size and filled with zeros once, then overwritten
//! in place: a sync flushes data only, never the file's size or extents. A record is
//!
//! ```text
//! u32 LE  payload length in bytes (0: no record here)
//! u32 LE  CRC-32 (IEEE) of the next 8 bytes and the payload
//! u64 LE  the entry's index
//! payload the entry, encoded by crate::command::encode_entry
//! ```
//!
//! Replay skips records already in redb (indexes at or below its durable index) and stops at
//! the first record whose length is zero or runs past the file, whose CRC does not match (a
//! torn write, never acknowledged) or whose index is not the next one expected. Each record is
//! followed on disk by four zero bytes, which the next record overwrites, so a scan never runs
//! on into stale records of an earlier pass.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::command::{Command, decode_entry, encode_entry, entry_len};
use crate::error::StorageError;
use crate::store::{Applied, Store, StoreOptions};

/// Bytes before a record's payload.
const HEADER: usize = 16;

/// Largest encoding buffer kept between records, in bytes.
const KEEP_BUFFER_BYTES: usize = 1024 * 1024;

/// Default size of the log file in bytes (64 MiB, as an etcd WAL segment).
pub const DEFAULT_WAL_BYTES: u64 = 64 * 1024 * 1024;

/// Smallest log file accepted, in bytes.
pub const MIN_WAL_BYTES: u64 = 64 * 1024;

/// Default [`LogOptions::checkpoint_bytes`]: 8 MiB.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

/// The open log: the file and where the next record goes.
pub struct Wal {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    /// Offset of the next record.
    offset: u64,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

/// A record read back by [`Wal::replay`].
#[derive(Debug)]
pub struct Record {
    /// The entry's index.
    pub index: u64,
    /// The entry's commands.
    pub commands: Vec<Command>,
}

impl Wal {
    /// Opens `dir/wal.log`, creating it zero-filled at `size` bytes (at least
    /// [`MIN_WAL_BYTES`]) when it is missing; an existing file keeps its size.
    ///
    /// # Errors
    /// [`StorageError`] when the file cannot be opened or created.
    pub fn open(dir: &Path, size: u64) -> Result<Wal, StorageError> {
        let size = size.max(MIN_WAL_BYTES);
        let path = dir.join("wal.log");
        let existing = std::fs::metadata(&path).map(|m| m.len()).ok();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let wal = Wal {
            file: Arc::new(file),
            path,
            size: existing.unwrap_or(size),
            offset: 0,
            buf: Vec::new(),
        };
        if existing.is_none() || existing == Some(0) {
            wal.fill_zeros(size)?;
            return Ok(Wal { size, ..wal });
        }
        Ok(wal)
    }

    /// Writes `size` zero bytes over the whole file and syncs it (file size included), so later
    /// syncs only flush data.
    fn fill_zeros(&self, size: u64) -> Result<(), StorageError> {
        let chunk = vec![0u8; 1 << 20];
        let mut f = &*self.file;
        f.set_len(0)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        self.file.sync_all()?;
        if let Some(dir) = self.path.parent() {
            // The new file's directory entry.
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The file, for syncing from another thread ([`File::sync_data`] takes `&self`).
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Reads every valid record from offset 0 whose index continues from `after`, in order.
    ///
    /// # Errors
    /// [`StorageError`] when the file cannot be read or a record with a valid CRC does not
    /// decode (a bug or a file of another format, not a torn write).
    pub fn replay(&self, after: u64) -> Result<Vec<Record>, StorageError> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        let mut expected = after + 1;
        let mut header = [0u8; HEADER];
        loop {
            if offset + HEADER as u64 > self.size {
                break;
            }
            self.file.read_exact_at(&mut header, offset)?;
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
            let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            // A record at or below `after` is already in redb (redb may recover a later commit
            // than the last checkpoint): skip it. Anything else but the next index is a gap:
            // stop.
            if len == 0 || offset + HEADER as u64 + len > self.size || index > expected {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            self.file
                .read_exact_at(&mut payload, offset + HEADER as u64)?;
            let mut h = crc32fast::Hasher::new();
            h.update(&header[8..]);
            h.update(&payload);
            if h.finalize() != crc {
                break;
            }
            offset += HEADER as u64 + len;
            if index < expected {
                continue;
            }
            let commands = decode_entry(&payload)
                .map_err(|e| StorageError(format!("write-ahead log record {index}: {e}")))?;
            expected += 1;
            out.push(Record { index, commands });
        }
        Ok(out)
    }

    /// Encodes entry `index` holding `cmds` as a record and writes it at the current offset,
    /// without syncing. Returns `false`, writing nothing, when the record does not fit in the
    /// rest of the file: the caller checkpoints and [`Wal::reset`]s instead.
    ///
    /// # Errors
    /// [`StorageError`] when the write fails.
    pub fn append(&mut self, index: u64, cmds: &[Command]) -> Result<bool, StorageError> {
        // Sized first, so an entry that cannot fit is refused without encoding it.
        let len = entry_len(cmds);
        let total = (HEADER + len) as u64;
        // Four zero bytes follow each record: the end mark for replay, overwritten by the next
        // record, so a scan never runs on into older records further in the file.
        if len > u32::MAX as usize || self.offset + total + 4 > self.size {
            return Ok(false);
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.reserve(HEADER + len + 4);
        buf.resize(HEADER, 0);
        encode_entry(cmds, &mut buf);
        debug_assert_eq!(buf.len() as u64, total);
        buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        buf[8..16].copy_from_slice(&index.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&buf[8..]);
        let crc = h.finalize();
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&[0u8; 4]);
        let res = self.file.write_all_at(&buf, self.offset);
        self.offset += total;
        // Keep the buffer for the next record, unless one large entry grew it.
        if buf.capacity() <= KEEP_BUFFER_BYTES {
            self.buf = buf;
        }
        res?;
        Ok(true)
    }

    /// Bytes of records written since the last reset.
    pub fn used(&self) -> u64 {
        self.offset
    }

    /// Starts the log again at offset 0. Only after a checkpoint: the records before it are
    /// then in redb for good.
    pub fn reset(&mut self) {
        self.offset = 0;
    }
}

/// Options of [`LoggedStore::open`].
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    /// Size of the log file in bytes (at least [`MIN_WAL_BYTES`]); a checkpoint happens at
    /// the latest when it fills. Only used when the log file is created.
    pub wal_bytes: u64,
    /// Bytes of log records after which the next entry is followed by a checkpoint (a durable
    /// redb commit). Smaller: shorter pauses and less memory for redb's buffered pages, more
    /// redb fsyncs; replay after a crash covers at most this much.
    pub checkpoint_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            wal_bytes: DEFAULT_WAL_BYTES,
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
        }
    }
}

/// An entry applied by [`LoggedStore::stage`].
#[derive(Debug)]
pub struct Staged {
    /// Results, events, revision and index of the entry.
    pub applied: Applied,
    /// The entry is already durable (a checkpoint followed it); no [`LoggedStore::sync`] is
    /// needed.
    pub durable: bool,
}

/// A store with the write-ahead log in front of it: one member's durable write path. Entries
/// get consecutive indexes; [`LoggedStore::stage`] applies and logs one, [`LoggedStore::sync`]
/// makes every staged entry durable, [`LoggedStore::publish`] shows one to readers.
pub struct LoggedStore {
    store: Arc<Store>,
    log: Mutex<LogState>,
    /// The log's file, synced by [`LoggedStore::sync`] without the log lock.
    wal_file: Arc<File>,
    checkpoint_bytes: u64,
}

struct LogState {
    wal: Wal,
    /// Index of the next entry.
    next_index: u64,
}

impl LoggedStore {
    /// Opens the store in `dir` and the log beside it, and applies the log's records after the
    /// store's last checkpoint; then checkpoints, so the log starts empty.
    ///
    /// # Errors
    /// [`StorageError`] when the store or the log cannot be opened, read or replayed.
    pub fn open(
        dir: &Path,
        store_opts: StoreOptions,
        log_opts: LogOptions,
    ) -> Result<LoggedStore, StorageError> {
        let store = Arc::new(Store::open_with_options(dir, store_opts)?);
        let mut wal = Wal::open(dir, log_opts.wal_bytes)?;
        let records = wal.replay(store.durable_index())?;
        let mut next_index = store.durable_index() + 1;
        if !records.is_empty() {
            let mut commands = 0;
            for r in &records {
                let applied = store.apply(r.index, &r.commands)?;
                store.publish(applied.revision, applied.index);
                commands += r.commands.len();
                next_index = r.index + 1;
            }
            store.checkpoint()?;
            tracing::info!(
                records = records.len(),
                commands,
                revision = store.revision(),
                "replayed the write-ahead log"
            );
        }
        wal.reset();
        Ok(LoggedStore {
            wal_file: wal.file(),
            store,
            log: Mutex::new(LogState { wal, next_index }),
            checkpoint_bytes: log_opts.checkpoint_bytes,
        })
    }

    /// The store behind the log, for reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Applies `cmds` as the next entry and writes it to the log, but neither syncs nor lets
    /// readers see it: call [`LoggedStore::sync`] (unless [`Staged::durable`]) and then
    /// [`LoggedStore::publish`], in staging order. Entries are staged one at a time; a later
    /// one may be staged before an earlier one is synced.
    ///
    /// # Errors
    /// [`StorageError`] when the disk fails; the store then refuses every later write (restart
    /// to recover from the log).
    pub fn stage(&self, cmds: &[Command]) -> Result<Staged, StorageError> {
        let mut log = self.log.lock().expect("log lock");
        let index = log.next_index;
        let applied = self.store.apply(index, cmds)?;
        log.next_index += 1;
        let logged = log.wal.used() < self.checkpoint_bytes && {
            let r = log.wal.append(index, cmds);
            if r.is_err() {
                self.store.poison();
            }
            r?
        };
        if !logged {
            // Enough logged since the last checkpoint, or the log is full: this entry is
            // made durable by a checkpoint instead, and the log starts again.
            self.store.checkpoint()?;
            log.wal.reset();
        }
        Ok(Staged {
            applied,
            durable: !logged,
        })
    }

    /// Makes every staged entry durable: one `fdatasync` of the log. Runs without the log
    /// lock, so the next entry can be staged meanwhile.
    ///
    /// # Errors
    /// [`StorageError`] when the sync fails; the store then refuses every later write (the
    /// log's state on disk is unknown, as etcd treats a failed WAL sync).
    pub fn sync(&self) -> Result<(), StorageError> {
        self.wal_file.sync_data().map_err(|e| {
            self.store.poison();
            tracing::error!(error = %e, "write-ahead log sync failed; store refuses further writes");
            e.into()
        })
    }

    /// Lets readers see a staged entry once it is durable.
    pub fn publish(&self, applied: &Applied) {
        self.store.publish(applied.revision, applied.index);
    }

    /// Stages, syncs and publishes one entry: the whole write path for one caller.
    ///
    /// # Errors
    /// As [`LoggedStore::stage`] and [`LoggedStore::sync`].
    pub fn apply(&self, cmds: &[Command]) -> Result<Applied, StorageError> {
        let staged = self.stage(cmds)?;
        if !staged.durable {
            self.sync()?;
        }
        self.publish(&staged.applied);
        Ok(staged.applied)
    }

    /// Checkpoints and closes the store; the log then holds nothing the store lacks.
    ///
    /// # Errors
    /// As [`Store::close`].
    pub fn close(&self) -> Result<(), StorageError> {
        let mut log = self.log.lock().expect("log lock");
        self.store.close()?;
        log.wal.reset();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mast_proto::etcdserverpb::{CompactionRequest, PutRequest};

    fn put(k: &str, v: &str) -> Command {
        Command::Put(PutRequest {
            key: k.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
            ..Default::default()
        })
    }

    #[test]
    fn records_round_trip_and_replay_stops_at_gaps_and_torn_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), MIN_WAL_BYTES).unwrap();
        let a = vec![
            put("a", "1"),
            Command::LeaseGrant { id: 7, ttl: 10 },
            Command::Auth(crate::AuthCommand::RoleAdd { name: "r".into() }),
        ];
        let b = vec![
            Command::LeaseRevoke { id: 7 },
            Command::Compact(CompactionRequest {
                revision: 2,
                physical: false,
            }),
        ];
        assert!(wal.append(1, &a).unwrap());
        assert!(wal.append(2, &b).unwrap());
        let got = wal.replay(0).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].index, 1);
        assert_eq!(got[0].commands, a);
        assert_eq!(got[1].commands, b);
        // Replay after index 1 (redb already has the first entry) skips it.
        let got = wal.replay(1).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].index, 2);
        assert!(wal.replay(2).unwrap().is_empty());
        // A gap (redb behind the log's first record) replays nothing.
        wal.reset();
        assert!(wal.append(10, &b).unwrap());
        assert!(wal.replay(5).unwrap().is_empty());
        // Writing at offset 0 again: the zero marker keeps the scan off the stale second record.
        wal.reset();
        assert!(wal.append(1, &a).unwrap());
        assert!(wal.replay(0).unwrap().len() == 1);
        assert!(wal.append(2, &b).unwrap());

        // A torn second record: its CRC fails, the first still replays.
        let first_len = HEADER as u64
            + u32::from_le_bytes({
                let mut l = [0u8; 4];
                wal.file.read_exact_at(&mut l, 0).unwrap();
                l
            }) as u64;
        wal.file
            .write_all_at(&[0xff], first_len + HEADER as u64 + 2)
            .unwrap();
        let got = wal.replay(0).unwrap();
        assert_eq!(got.len(), 1);

        // Reopening keeps the file and its records.
        drop(wal);
        let wal = Wal::open(dir.path(), MIN_WAL_BYTES).unwrap();
        assert_eq!(wal.replay(0).unwrap().len(), 1);
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), MIN_WAL_BYTES).unwrap();
        let big = put("k", &"x".repeat(MIN_WAL_BYTES as usize));
        assert!(!wal.append(1, &[big]).unwrap());
        assert_eq!(wal.used(), 0);
        assert!(wal.replay(0).unwrap().is_empty());
    }
}
