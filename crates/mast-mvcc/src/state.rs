//! The in-memory part of the store's state: the key index, the lease table, the compacted
//! revision and the raised alarms. The applier changes it; readers look at it through locks held per change, never
//! across a commit.

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::error::MvccError;
use crate::index::{Index, IndexEntry, RangeEnd};
use crate::lease::{LeaseId, LeaseTable};

/// What a range finds in the index: the revision read, the visible keys with their entries
/// (at most the limit), and the count of all visible keys in the range.
pub(crate) type IndexRange = (i64, Vec<(Vec<u8>, IndexEntry)>, usize);

/// The key index, the lease table and the compacted revision.
pub(crate) struct Memory {
    pub(crate) index: RwLock<Index>,
    pub(crate) leases: RwLock<LeaseTable>,
    /// The compacted revision, -1 before the first compaction; written under the index write
    /// lock.
    pub(crate) compact_rev: AtomicI64,
    /// Raised alarms: `(member ID, etcd AlarmType number)`.
    pub(crate) alarms: RwLock<BTreeSet<(u64, i32)>>,
}

impl Memory {
    pub(crate) fn new(
        index: Index,
        leases: LeaseTable,
        compact_rev: i64,
        alarms: BTreeSet<(u64, i32)>,
    ) -> Self {
        Memory {
            index: RwLock::new(index),
            leases: RwLock::new(leases),
            compact_rev: AtomicI64::new(compact_rev),
            alarms: RwLock::new(alarms),
        }
    }

    pub(crate) fn compact_revision(&self) -> i64 {
        self.compact_rev.load(Ordering::Acquire)
    }

    /// The revision a read of `requested` (0: `current`) looks at, after checking it is in
    /// history.
    pub(crate) fn check_read_rev(&self, requested: i64, current: i64) -> Result<i64, MvccError> {
        if requested > current {
            return Err(MvccError::FutureRevision);
        }
        let rev = if requested <= 0 { current } else { requested };
        if rev < self.compact_revision() {
            return Err(MvccError::Compacted);
        }
        Ok(rev)
    }

    /// Collects the index entries for a range at `requested` (after checking it), releasing
    /// the index lock before any disk read. `limit` 0 collects every key.
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

    /// Counts the keys of a range at `requested` (after checking it), as
    /// [`Memory::index_range`] counts them, without collecting any.
    pub(crate) fn index_count(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        requested: i64,
        current: i64,
    ) -> Result<usize, MvccError> {
        let index = self.index.read().expect("index lock");
        let rev = self.check_read_rev(requested, current)?;
        let mut count = 0usize;
        index.visit(key, end, rev, |_, _| {
            count += 1;
            true
        });
        Ok(count)
    }

    pub(crate) fn index_get(&self, key: &[u8], rev: i64) -> Option<IndexEntry> {
        self.index
            .read()
            .expect("index lock")
            .history(key)
            .and_then(|h| h.get(rev))
    }

    /// Indexes a put of `key` at `rev` with `lease` and moves the key to that lease. Returns
    /// the key's `create_revision` and `version` as of this put.
    pub(crate) fn index_put(&self, key: &[u8], rev: crate::Revision, lease: LeaseId) -> (i64, i64) {
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
    pub(crate) fn index_tombstone(&self, key: &[u8], rev: crate::Revision) {
        let prev = self.index.write().expect("index lock").tombstone(key, rev);
        if prev != 0 {
            self.leases
                .write()
                .expect("lease lock")
                .move_key(key, prev, 0);
        }
    }

    pub(crate) fn lease_exists(&self, id: LeaseId) -> bool {
        self.leases.read().expect("lease lock").contains(id)
    }
}
