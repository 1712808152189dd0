//! The applied state of leases: which leases exist, their granted TTL, and the keys attached.
//!
//! Deadlines are not here: when a lease expires is decided outside the store (by the server's
//! lessor, from its clock) and arrives as a revoke command, so that applying the same commands
//! always gives the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A lease ID, as etcd's `LeaseID` (0 means "no lease").
pub type LeaseId = i64;

/// One lease as applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The granted TTL in seconds (after raising to the minimum).
    pub ttl: i64,
    /// Keys currently attached, in key order.
    pub keys: BTreeSet<Vec<u8>>,
}

/// Every lease and every key's lease.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<LeaseId, LeaseRecord>,
    key_lease: HashMap<Vec<u8>, LeaseId>,
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
                keys: BTreeSet::new(),
            },
        );
    }

    pub(crate) fn remove(&mut self, id: LeaseId) -> Option<LeaseRecord> {
        let rec = self.leases.remove(&id)?;
        for k in &rec.keys {
            self.key_lease.remove(k);
        }
        Some(rec)
    }

    /// Attaches `key` to `id` (0 detaches it), detaching it from its previous lease.
    pub(crate) fn set_key_lease(&mut self, key: &[u8], id: LeaseId) {
        let old = if id == 0 {
            self.key_lease.remove(key)
        } else {
            self.key_lease.insert(key.to_vec(), id)
        };
        if let Some(old) = old
            && old != id
            && let Some(rec) = self.leases.get_mut(&old)
        {
            rec.keys.remove(key);
        }
        if id != 0
            && let Some(rec) = self.leases.get_mut(&id)
        {
            rec.keys.insert(key.to_vec());
        }
    }
}
