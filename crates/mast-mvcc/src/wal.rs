//! The write-ahead log in front of redb: what makes a batch durable without a redb fsync.
//!
//! A batch of [`Command`]s is applied to the in-memory state and to redb with a non-durable
//! commit, and written here as one record; one `fdatasync` of this file then makes it (and every
//! record before it) durable. Every so often — when the next record would not fit — the store
//! makes a durable redb commit (a *checkpoint*) that records the applied index, and the log
//! starts again at offset 0. On open, the store replays the records after the checkpoint's
//! applied index, in order; commands are deterministic, so replay rebuilds exactly the state
//! that was acknowledged. This is the role etcd's WAL plays in front of bbolt, and the shape a
//! Raft log takes.
//!
//! ## File
//! One file, `wal.log`, created at its full size and filled with zeros once, then overwritten
//! in place: a sync flushes data only, never the file's size or extents. A record is
//!
//! ```text
//! u32 LE  payload length in bytes (0: no record here)
//! u32 LE  CRC-32 (IEEE) of the next 12 bytes and the payload
//! u64 LE  applied index of the batch's first command
//! u32 LE  number of commands
//! payload the commands, each: u8 tag, u32 LE length, body
//! ```
//!
//! Replay skips records already in redb (indexes at or below the applied index it recovered)
//! and stops at the first record whose length is zero or runs past the file, whose CRC does
//! not match (a torn write, never acknowledged) or whose first index is past the next one
//! expected. Each record is followed on disk by four zero bytes, which the next record
//! overwrites, so a scan never runs on into stale records of an earlier pass.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use mast_proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, TxnRequest};
use prost::Message;

use crate::error::StorageError;
use crate::store::Command;

/// Bytes before a record's payload.
const HEADER: usize = 20;

/// Largest encoding buffer kept between records, in bytes.
const KEEP_BUFFER_BYTES: usize = 1024 * 1024;

/// Default size of the log file in bytes (64 MiB, as an etcd WAL segment).
pub const DEFAULT_WAL_BYTES: u64 = 64 * 1024 * 1024;

/// Smallest log file accepted, in bytes.
pub const MIN_WAL_BYTES: u64 = 64 * 1024;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_TXN: u8 = 3;
const TAG_COMPACT: u8 = 4;
const TAG_LEASE_GRANT: u8 = 5;
const TAG_LEASE_REVOKE: u8 = 6;
const TAG_GRANT_PUT: u8 = 7;

/// The open log: the file and where the next record goes.
pub(crate) struct Wal {
    file: std::sync::Arc<File>,
    path: PathBuf,
    size: u64,
    /// Offset of the next record.
    offset: u64,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

/// A record read back by [`Wal::replay`].
pub(crate) struct Record {
    /// Applied index of the first command.
    pub(crate) first_index: u64,
    pub(crate) commands: Vec<Command>,
}

impl Wal {
    /// Opens `dir/wal.log`, creating it zero-filled at `size` bytes when it is missing or has
    /// another size (its records are then lost, so callers only resize after a checkpoint).
    pub(crate) fn open(dir: &Path, size: u64) -> Result<Wal, StorageError> {
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
            file: std::sync::Arc::new(file),
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
    pub(crate) fn file(&self) -> std::sync::Arc<File> {
        self.file.clone()
    }

    /// Reads every valid record from offset 0 whose first index continues from
    /// `applied_index`, in order.
    ///
    /// # Errors
    /// [`StorageError`] when the file cannot be read or a record with a valid CRC does not
    /// decode (a bug, not a torn write).
    pub(crate) fn replay(&self, applied_index: u64) -> Result<Vec<Record>, StorageError> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        let mut expected = applied_index + 1;
        let mut header = [0u8; HEADER];
        loop {
            if offset + HEADER as u64 > self.size {
                break;
            }
            self.file.read_exact_at(&mut header, offset)?;
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
            let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let first = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let count = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes"));
            // A record wholly at or below the applied index is already in redb (redb may
            // recover a later commit than the last checkpoint): skip it. Anything else but the
            // next index is a gap: stop.
            if len == 0 || offset + HEADER as u64 + len > self.size || first > expected {
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
            let end = first + u64::from(count);
            if end <= expected {
                continue;
            }
            if first != expected {
                // Straddles the applied index: batches never do.
                break;
            }
            let commands = decode_commands(&payload, count)?;
            expected = end;
            out.push(Record {
                first_index: first,
                commands,
            });
        }
        Ok(out)
    }

    /// Whether a batch can be logged at all (its record fits in an empty log). Batches that do
    /// not are made durable by a checkpoint instead.
    pub(crate) fn encodes(cmds: &[Command]) -> bool {
        cmds.iter().all(|c| !matches!(c, Command::Auth(_)))
    }

    /// Encodes `cmds` (first applied index `first_index`) as a record and writes it at the
    /// current offset, without syncing. Returns `false`, writing nothing, when the record does
    /// not fit in the rest of the file: the caller checkpoints, [`Wal::reset`]s and retries, or
    /// checkpoints the batch itself when it cannot fit even in an empty log.
    ///
    /// # Errors
    /// [`StorageError`] when the write fails.
    pub(crate) fn append(
        &mut self,
        first_index: u64,
        cmds: &[Command],
    ) -> Result<bool, StorageError> {
        // Sized first, so a batch that cannot fit is refused without encoding it.
        let len: usize = cmds.iter().map(|c| 5 + body_len(c)).sum();
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
        for c in cmds {
            encode_command(c, &mut buf);
        }
        debug_assert_eq!(buf.len() as u64, total);
        buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        buf[8..16].copy_from_slice(&first_index.to_le_bytes());
        buf[16..20].copy_from_slice(&(cmds.len() as u32).to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&buf[8..]);
        let crc = h.finalize();
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&[0u8; 4]);
        let res = self.file.write_all_at(&buf, self.offset);
        self.offset += total;
        // Keep the buffer for the next record, unless one large batch grew it.
        if buf.capacity() <= KEEP_BUFFER_BYTES {
            self.buf = buf;
        }
        res?;
        Ok(true)
    }

    /// Bytes of records written since the last reset.
    pub(crate) fn used(&self) -> u64 {
        self.offset
    }

    /// Starts the log again at offset 0. Only after a checkpoint: the records before it are
    /// then in redb for good.
    pub(crate) fn reset(&mut self) {
        self.offset = 0;
    }
}

/// Bytes of a command's body in a record (after its tag and length).
fn body_len(c: &Command) -> usize {
    match c {
        Command::Put(p) => p.encoded_len(),
        Command::DeleteRange(d) => d.encoded_len(),
        Command::Txn(t) => t.encoded_len(),
        Command::Compact(c) => c.encoded_len(),
        Command::LeaseGrant { .. } => 16,
        Command::LeaseRevoke { .. } => 8,
        Command::LeaseGrantPut { put, .. } => 16 + put.encoded_len(),
        Command::Auth(_) => 0,
    }
}

/// Appends `c` as tag, body length ([`body_len`]) and body.
fn encode_command(c: &Command, buf: &mut Vec<u8>) {
    let (tag, len) = (tag_of(c), body_len(c));
    buf.push(tag);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    let start = buf.len();
    match c {
        Command::Put(p) => p.encode(buf).expect("vec grows"),
        Command::DeleteRange(d) => d.encode(buf).expect("vec grows"),
        Command::Txn(t) => t.encode(buf).expect("vec grows"),
        Command::Compact(c) => c.encode(buf).expect("vec grows"),
        Command::LeaseGrant { id, ttl } => {
            buf.extend_from_slice(&id.to_le_bytes());
            buf.extend_from_slice(&ttl.to_le_bytes());
        }
        Command::LeaseRevoke { id } => buf.extend_from_slice(&id.to_le_bytes()),
        Command::LeaseGrantPut { id, ttl, put } => {
            buf.extend_from_slice(&id.to_le_bytes());
            buf.extend_from_slice(&ttl.to_le_bytes());
            put.encode(buf).expect("vec grows");
        }
        Command::Auth(_) => unreachable!("auth batches are checkpointed, never logged"),
    }
    debug_assert_eq!(buf.len() - start, len);
}

fn tag_of(c: &Command) -> u8 {
    match c {
        Command::Put(_) => TAG_PUT,
        Command::DeleteRange(_) => TAG_DELETE,
        Command::Txn(_) => TAG_TXN,
        Command::Compact(_) => TAG_COMPACT,
        Command::LeaseGrant { .. } => TAG_LEASE_GRANT,
        Command::LeaseRevoke { .. } => TAG_LEASE_REVOKE,
        Command::LeaseGrantPut { .. } => TAG_GRANT_PUT,
        Command::Auth(_) => unreachable!("auth batches are checkpointed, never logged"),
    }
}

fn decode_commands(mut payload: &[u8], count: u32) -> Result<Vec<Command>, StorageError> {
    let bad = |what: &str| StorageError(format!("write-ahead log: {what}"));
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if payload.len() < 5 {
            return Err(bad("truncated command"));
        }
        let tag = payload[0];
        let len = u32::from_le_bytes(payload[1..5].try_into().expect("4 bytes")) as usize;
        if payload.len() < 5 + len {
            return Err(bad("truncated command body"));
        }
        let body = &payload[5..5 + len];
        payload = &payload[5 + len..];
        let i64_at = |b: &[u8], at: usize| -> Result<i64, StorageError> {
            b.get(at..at + 8)
                .map(|s| i64::from_le_bytes(s.try_into().expect("8 bytes")))
                .ok_or_else(|| bad("short lease command"))
        };
        let cmd = match tag {
            TAG_PUT => Command::Put(PutRequest::decode(body)?),
            TAG_DELETE => Command::DeleteRange(DeleteRangeRequest::decode(body)?),
            TAG_TXN => Command::Txn(TxnRequest::decode(body)?),
            TAG_COMPACT => Command::Compact(CompactionRequest::decode(body)?),
            TAG_LEASE_GRANT => Command::LeaseGrant {
                id: i64_at(body, 0)?,
                ttl: i64_at(body, 8)?,
            },
            TAG_LEASE_REVOKE => Command::LeaseRevoke {
                id: i64_at(body, 0)?,
            },
            TAG_GRANT_PUT => Command::LeaseGrantPut {
                id: i64_at(body, 0)?,
                ttl: i64_at(body, 8)?,
                put: PutRequest::decode(body.get(16..).unwrap_or_default())?,
            },
            t => return Err(bad(&format!("unknown command tag {t}"))),
        };
        out.push(cmd);
    }
    if !payload.is_empty() {
        return Err(bad("trailing bytes after the commands"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Command::LeaseGrantPut {
                id: 8,
                ttl: 5,
                put: PutRequest {
                    key: b"b".to_vec().into(),
                    lease: 8,
                    ..Default::default()
                },
            },
        ];
        let b = vec![
            Command::LeaseRevoke { id: 7 },
            Command::Compact(CompactionRequest {
                revision: 2,
                physical: false,
            }),
        ];
        assert!(wal.append(1, &a).unwrap());
        assert!(wal.append(4, &b).unwrap());
        let got = wal.replay(0).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].first_index, 1);
        assert_eq!(got[0].commands, a);
        assert_eq!(got[1].commands, b);
        // Replay from index 3 (redb already has the first batch) skips it.
        let got = wal.replay(3).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].first_index, 4);
        assert!(wal.replay(5).unwrap().is_empty());
        // A gap (redb behind the log's first record) replays nothing.
        wal.reset();
        assert!(wal.append(10, &b).unwrap());
        assert!(wal.replay(5).unwrap().is_empty());
        // Writing at offset 0 again: the zero marker keeps the scan off the stale second record.
        wal.reset();
        assert!(wal.append(1, &a).unwrap());
        assert!(wal.replay(0).unwrap().len() == 1);
        assert!(wal.append(4, &b).unwrap());

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
