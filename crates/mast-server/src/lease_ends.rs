//! How leases ended, as this member saw them applied: expired (revoked by the leader's
//! lessor) or revoked by a client.
//!
//! etcd's watch events do not say why a key went: a key deleted with its lease is a plain
//! `DELETE`. Every member records, when it applies a `LeaseRevoke`, the lease's ID, the revision
//! of the deletions and the cause (the command's attribution names the lessor, see
//! [`crate::node::Node::spawn_lease_expiry`]), so the console's event stream can say "lease
//! expired" beside the deletions. The record is in memory and bounded to the
//! [`LeaseEnds::CAPACITY`] most recent ends: a member that restarted, or a lease that ended
//! long ago, answers "unknown".

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Why a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEndCause {
    /// Its TTL ran out without a keepalive; the leader's lessor revoked it.
    Expired,
    /// A client revoked it (etcd's `LeaseRevoke`).
    Revoked,
}

impl LeaseEndCause {
    /// `expired` or `revoked`.
    pub fn name(self) -> &'static str {
        match self {
            LeaseEndCause::Expired => "expired",
            LeaseEndCause::Revoked => "revoked",
        }
    }
}

/// One lease's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseEnd {
    /// The store revision after the revoke: the revision of its keys' deletions when it had
    /// keys, else the revision current then.
    pub revision: i64,
    /// Why.
    pub cause: LeaseEndCause,
}

/// The most recent lease ends on this member.
#[derive(Debug, Default)]
pub struct LeaseEnds {
    inner: Mutex<Ends>,
}

#[derive(Debug, Default)]
struct Ends {
    by_id: HashMap<i64, LeaseEnd>,
    order: VecDeque<i64>,
}

impl LeaseEnds {
    /// How many ends are kept; older ones are forgotten first.
    pub const CAPACITY: usize = 16_384;

    /// Records that lease `id` ended at `revision` for `cause`.
    pub fn record(&self, id: i64, revision: i64, cause: LeaseEndCause) {
        let mut e = self.inner.lock().expect("lease ends lock");
        if e.by_id.insert(id, LeaseEnd { revision, cause }).is_none() {
            e.order.push_back(id);
        }
        while e.order.len() > Self::CAPACITY {
            if let Some(old) = e.order.pop_front() {
                e.by_id.remove(&old);
            }
        }
    }

    /// How lease `id` ended, `None` when this member does not know (alive, never existed,
    /// ended before this member started or too long ago).
    pub fn get(&self, id: i64) -> Option<LeaseEnd> {
        self.inner
            .lock()
            .expect("lease ends lock")
            .by_id
            .get(&id)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_kept_up_to_the_capacity_oldest_forgotten_first() {
        let ends = LeaseEnds::default();
        for id in 0..(LeaseEnds::CAPACITY as i64 + 2) {
            let cause = if id % 2 == 0 {
                LeaseEndCause::Expired
            } else {
                LeaseEndCause::Revoked
            };
            ends.record(id, 100 + id, cause);
        }
        assert_eq!(ends.get(0), None);
        assert_eq!(ends.get(1), None);
        assert_eq!(
            ends.get(2),
            Some(LeaseEnd {
                revision: 102,
                cause: LeaseEndCause::Expired
            })
        );
        let last = LeaseEnds::CAPACITY as i64 + 1;
        assert_eq!(
            ends.get(last).map(|e| e.cause),
            Some(LeaseEndCause::Revoked)
        );
    }
}
