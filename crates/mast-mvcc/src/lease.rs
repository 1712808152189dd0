//! The applied state of leases: which leases exist, their granted TTL, and the keys attached.
//!
//! Deadlines are not here: when a lease expires is decided outside the store (by the server's
//! lessor, from its clock) and arrives as a revoke command, so that applying the same commands
//! always gives the same state.

use std::collections::{BTreeMap, BTreeSet};

/// A lease ID, as etcd's `LeaseID` (0 means "no lease").
pub type LeaseId = i64;

/// Lease rows granted or revoked since the last durable commit.
///
/// Writing each grant into redb's lease table at once costs a B-tree insert per registration
/// (and a page copy per registration when IDs are scattered: clients may pick their own, and
/// the server's grow only within one run). The rows wait here instead and go
/// into the table, sorted, with the next durable commit (a checkpoint), or with the batch that
/// finds a few thousand waiting (so a checkpoint's pause stays short). Until then the
/// write-ahead log holds the commands that made them, and replaying the log after a crash makes
/// them again. The in-memory [`LeaseTable`] is what reads use, so nothing reads the table
/// between checkpoints.
#[derive(Debug, Default)]
pub(crate) struct PendingLeaseRows(BTreeMap<LeaseId, Option<i64>>);

impl PendingLeaseRows {
    /// Records a granted lease with its TTL in seconds.
    pub(crate) fn grant(&mut self, id: LeaseId, ttl: i64) {
        self.0.insert(id, Some(ttl));
    }

    /// Adds `later`'s changes after this one's (a later change of a lease wins).
    pub(crate) fn merge(&mut self, later: PendingLeaseRows) {
        if self.0.is_empty() {
            *self = later;
        } else {
            self.0.extend(later.0);
        }
    }

    /// How many changes are waiting.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Records a revoked lease.
    pub(crate) fn revoke(&mut self, id: LeaseId) {
        self.0.insert(id, None);
    }

    /// Writes every recorded change into `table` (the caller commits it durably) and forgets
    /// them.
    ///
    /// # Errors
    /// redb's error when a write fails.
    pub(crate) fn write_to(
        &mut self,
        table: &mut redb::Table<'_, i64, i64>,
    ) -> Result<(), redb::StorageError> {
        for (id, ttl) in std::mem::take(&mut self.0) {
            match ttl {
                Some(ttl) => {
                    table.insert(id, ttl)?;
                }
                None => {
                    table.remove(id)?;
                }
            }
        }
        Ok(())
    }
}

/// One lease as applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The granted TTL in seconds (after raising to the minimum).
    pub ttl: i64,
    /// Keys currently attached, in key order.
    pub keys: LeaseKeys,
}

/// Most keys [`LeaseKeys`] keeps in a sorted inline list before switching to a tree.
const FEW_KEYS: usize = 8;

/// The keys attached to one lease, in key order. A registry lease usually holds one key: up to
/// [`FEW_KEYS`] live in a sorted list (the first inline, no allocation for the set itself),
/// more in a `BTreeSet`, so a lease with many keys still inserts in O(log n).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseKeys {
    /// Up to [`FEW_KEYS`] keys, sorted.
    Few(smallvec::SmallVec<[Vec<u8>; 1]>),
    /// More keys.
    Many(BTreeSet<Vec<u8>>),
}

impl Default for LeaseKeys {
    fn default() -> Self {
        LeaseKeys::Few(smallvec::SmallVec::new())
    }
}

impl LeaseKeys {
    /// Keys in key order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &Vec<u8>> + '_> {
        match self {
            LeaseKeys::Few(v) => Box::new(v.iter()),
            LeaseKeys::Many(t) => Box::new(t.iter()),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        match self {
            LeaseKeys::Few(v) => v.len(),
            LeaseKeys::Many(t) => t.len(),
        }
    }

    /// True when no key is attached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is attached.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            LeaseKeys::Few(v) => v.iter().any(|k| k.as_slice() == key),
            LeaseKeys::Many(t) => t.contains(key),
        }
    }

    fn insert(&mut self, key: &[u8]) {
        match self {
            LeaseKeys::Few(v) => match v.binary_search_by(|k| k.as_slice().cmp(key)) {
                Ok(_) => {}
                Err(i) if v.len() < FEW_KEYS => v.insert(i, key.to_vec()),
                Err(_) => {
                    let mut t: BTreeSet<Vec<u8>> = v.drain(..).collect();
                    t.insert(key.to_vec());
                    *self = LeaseKeys::Many(t);
                }
            },
            LeaseKeys::Many(t) => {
                if !t.contains(key) {
                    t.insert(key.to_vec());
                }
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        match self {
            LeaseKeys::Few(v) => {
                if let Ok(i) = v.binary_search_by(|k| k.as_slice().cmp(key)) {
                    v.remove(i);
                }
            }
            LeaseKeys::Many(t) => {
                t.remove(key);
            }
        }
    }
}

/// Every lease with the keys attached to it. Which lease a key has is kept in the key index
/// (with the key's history); the two change together in the writer.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<LeaseId, LeaseRecord>,
}

impl LeaseTable {
    /// The lease with this ID.
    pub fn get(&self, id: LeaseId) -> Option<&LeaseRecord> {
        self.leases.get(&id)
    }

    /// True when the lease exists.
    pub fn contains(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    /// Every lease, by ID.
    pub fn iter(&self) -> impl Iterator<Item = (LeaseId, &LeaseRecord)> {
        self.leases.iter().map(|(id, r)| (*id, r))
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// True when there is no lease.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub(crate) fn insert(&mut self, id: LeaseId, ttl: i64) {
        self.leases.insert(
            id,
            LeaseRecord {
                ttl,
                keys: LeaseKeys::default(),
            },
        );
    }

    pub(crate) fn remove(&mut self, id: LeaseId) -> Option<LeaseRecord> {
        self.leases.remove(&id)
    }

    /// Moves `key` from lease `from` to lease `to` (0 for none on either side); a lease that
    /// does not exist is skipped.
    pub(crate) fn move_key(&mut self, key: &[u8], from: LeaseId, to: LeaseId) {
        if from == to {
            return;
        }
        if from != 0
            && let Some(rec) = self.leases.get_mut(&from)
        {
            rec.keys.remove(key);
        }
        if to != 0
            && let Some(rec) = self.leases.get_mut(&to)
        {
            rec.keys.insert(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_stay_sorted_and_unique_across_the_switch_to_a_tree() {
        let mut t = LeaseTable::default();
        t.insert(1, 10);
        let keys: Vec<Vec<u8>> = (0..20u8).rev().map(|i| vec![b'k', i]).collect();
        for (n, k) in keys.iter().enumerate() {
            t.move_key(k, 0, 1);
            t.move_key(k, 1, 1);
            let rec = t.get(1).unwrap();
            assert_eq!(rec.keys.len(), n + 1);
            let got: Vec<&Vec<u8>> = rec.keys.iter().collect();
            assert!(got.windows(2).all(|w| w[0] < w[1]), "sorted: {got:?}");
        }
        assert!(matches!(t.get(1).unwrap().keys, LeaseKeys::Many(_)));
        // Moving a key to another lease detaches it from the first.
        t.insert(2, 10);
        t.move_key(&keys[0], 1, 2);
        assert!(!t.get(1).unwrap().keys.contains(&keys[0]));
        assert!(t.get(2).unwrap().keys.contains(&keys[0]));
        t.move_key(&keys[0], 2, 0);
        assert!(t.get(2).unwrap().keys.is_empty());
        // A lease that does not exist is skipped.
        t.move_key(&keys[1], 1, 99);
        assert!(!t.get(1).unwrap().keys.contains(&keys[1]));
        let removed = t.remove(1).unwrap();
        assert_eq!(removed.keys.len(), 18);
    }
}
