//! Free space on the data directory's file system, watched so a filling disk raises etcd's
//! `NOSPACE` alarm before a write fails with `ENOSPC`.
//!
//! A write the disk cannot take would fail inside the Raft log or the store's checkpoint,
//! where the member can only stop; refusing it at the edge, as the backend quota does,
//! keeps the member serving reads and keeps every acknowledged write readable. The reserve
//! (`--disk-reserve-bytes`) is the room kept back for what must still be written once writes
//! are refused: the alarm entry itself, deletes and compactions that make room, lease
//! revokes, and the store's next checkpoint.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The default of `--disk-reserve-bytes`: 64 MiB (several checkpoints' worth of changes).
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// How often the free space is read again, in milliseconds; between reads the bytes
/// admitted are subtracted from the last reading.
const REFRESH_MS: u64 = 100;

/// Free space of one directory's file system, read with `statvfs(2)` at most every
/// [`REFRESH_MS`] and lowered by every write admitted in between.
#[derive(Debug)]
pub struct DiskWatch {
    dir: PathBuf,
    reserve: u64,
    /// Milliseconds between readings ([`REFRESH_MS`]).
    refresh_ms: u64,
    origin: Instant,
    /// Milliseconds since `origin` of the last reading, plus one (0: never read).
    read_at: AtomicU64,
    /// Bytes free at the last reading, less what was admitted since.
    free: AtomicU64,
}

impl DiskWatch {
    /// Watches the file system holding `dir`, keeping `reserve` bytes free (0 turns the
    /// check off).
    pub fn new(dir: impl Into<PathBuf>, reserve: u64) -> DiskWatch {
        DiskWatch {
            dir: dir.into(),
            reserve,
            refresh_ms: REFRESH_MS,
            origin: Instant::now(),
            read_at: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
        }
    }

    /// The bytes kept free (`--disk-reserve-bytes`).
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Bytes an unprivileged writer may still write on the data directory's file system
    /// (`f_bavail × f_frsize`), as of the last reading; `None` when it cannot be read.
    pub fn free_bytes(&self) -> Option<u64> {
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let at = self.read_at.load(Ordering::Acquire);
        if at == 0 || now.saturating_sub(at) >= self.refresh_ms {
            match rustix::fs::statvfs(&self.dir) {
                Ok(st) => {
                    self.free
                        .store(st.f_bavail.saturating_mul(st.f_frsize), Ordering::Release);
                    self.read_at.store(now, Ordering::Release);
                }
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "statvfs failed");
                    return None;
                }
            }
        }
        Some(self.free.load(Ordering::Acquire))
    }

    /// Whether a write of about `cost` bytes would leave less than the reserve free. When it
    /// would not, `cost` is taken off the reading, so writes admitted between two readings
    /// add up. A file system whose free space cannot be read is not held against writes.
    pub fn would_fill(&self, cost: u64) -> bool {
        if self.reserve == 0 {
            return false;
        }
        let Some(free) = self.free_bytes() else {
            return false;
        };
        if free < self.reserve.saturating_add(cost) {
            return true;
        }
        // Another writer may have lowered it meanwhile: never below zero.
        let _ = self
            .free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                Some(f.saturating_sub(cost))
            });
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_zero_never_fills_and_a_huge_reserve_always_does() {
        let dir = tempfile::tempdir().expect("temp dir");
        let off = DiskWatch::new(dir.path(), 0);
        assert!(!off.would_fill(u64::MAX / 2));
        let free = DiskWatch::new(dir.path(), 1)
            .free_bytes()
            .expect("statvfs on a temp dir");
        assert!(free > 0);
        let huge = DiskWatch::new(dir.path(), free.saturating_mul(4).max(1 << 50));
        assert!(huge.would_fill(0));
    }

    #[test]
    fn admitted_writes_add_up_between_readings() {
        let dir = tempfile::tempdir().expect("temp dir");
        // No second reading during the test: other processes may write meanwhile.
        let w = DiskWatch {
            refresh_ms: u64::MAX,
            ..DiskWatch::new(dir.path(), 1)
        };
        let free = w.free_bytes().expect("statvfs");
        // One write of nearly all the free space is admitted; the next one is not, though
        // nothing was written to disk yet (the reading is lowered by what was admitted).
        assert!(!w.would_fill(free - 2));
        assert!(w.would_fill(free / 2 + 1));
    }
}
