//! The lessor: when each lease expires.
//!
//! The store knows which leases exist and which keys they hold; the lessor only keeps a
//! deadline per lease, from an injected [`Clock`]. Keepalives move a deadline; an expired lease
//! is revoked by submitting a `LeaseRevoke` command, so expiry reaches the store as an ordinary
//! deterministic write. Deadlines are not persisted: after a restart every lease starts again
//! with its full TTL, as etcd does on a leader change, so leases do not all expire at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mast_mvcc::LeaseId;

/// The smallest lease TTL in seconds; shorter grants are raised to it, as etcd's
/// `minLeaseTTL` with default election timing (2 s).
pub const MIN_LEASE_TTL: i64 = 2;

/// How long a lease that was handed to the writer for revoking stays "expiring" before it is
/// tried again, should the revoke not go through.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

/// A monotonic clock; tests inject a manual one to test expiry without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Time since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

#[derive(Clone, Copy, Debug)]
struct Deadline {
    ttl: i64,
    expires: Duration,
    revoking: bool,
}

/// Lease deadlines.
pub struct Lessor {
    clock: Box<dyn Clock>,
    /// Hashed with foldhash: lease IDs are server-picked integers, so the default SipHash's
    /// resistance to chosen keys buys nothing here and costs a registration's worth of time.
    leases: Mutex<HashMap<LeaseId, Deadline, foldhash::fast::RandomState>>,
}

/// The timing of one lease, for `LeaseTimeToLive` and `LeaseLeases`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Granted TTL in seconds.
    pub granted_ttl: i64,
    /// Whole seconds left before expiry (0 when expiring).
    pub remaining: i64,
}

impl Lessor {
    /// A lessor with no leases, reading time from `clock`.
    pub fn new(clock: Box<dyn Clock>) -> Self {
        Lessor {
            clock,
            leases: Mutex::new(HashMap::default()),
        }
    }

    /// Starts tracking a lease that was granted (or recovered) with `ttl` seconds: it expires
    /// `ttl` seconds from now.
    pub fn granted(&self, id: LeaseId, ttl: i64) {
        self.granted_all([(id, ttl)]);
    }

    /// [`Lessor::granted`] for several leases (lease ID, TTL in seconds) at once: one clock
    /// reading and one lock for all of them.
    pub fn granted_all(&self, grants: impl IntoIterator<Item = (LeaseId, i64)>) {
        let mut grants = grants.into_iter().peekable();
        if grants.peek().is_none() {
            return;
        }
        let now = self.clock.now();
        let mut leases = self.leases.lock().expect("lessor lock");
        for (id, ttl) in grants {
            leases.insert(
                id,
                Deadline {
                    ttl,
                    expires: now + Duration::from_secs(ttl.max(0) as u64),
                    revoking: false,
                },
            );
        }
    }

    /// Stops tracking a revoked lease.
    pub fn revoked(&self, id: LeaseId) {
        self.leases.lock().expect("lessor lock").remove(&id);
    }

    /// A keepalive: moves the deadline to a full TTL from now and returns the TTL in seconds,
    /// or `None` for an unknown or already expired lease (etcd answers TTL 0 then).
    pub fn renew(&self, id: LeaseId) -> Option<i64> {
        let now = self.clock.now();
        let mut leases = self.leases.lock().expect("lessor lock");
        let d = leases.get_mut(&id)?;
        if d.revoking || d.expires <= now {
            return None;
        }
        d.expires = now + Duration::from_secs(d.ttl.max(0) as u64);
        Some(d.ttl)
    }

    /// The timing of a lease, or `None` when it is unknown.
    pub fn timing(&self, id: LeaseId) -> Option<LeaseTiming> {
        let now = self.clock.now();
        let leases = self.leases.lock().expect("lessor lock");
        let d = leases.get(&id)?;
        Some(LeaseTiming {
            granted_ttl: d.ttl,
            remaining: d.expires.saturating_sub(now).as_secs() as i64,
        })
    }

    /// Every tracked lease ID, soonest expiry first.
    pub fn ids_by_expiry(&self) -> Vec<LeaseId> {
        let leases = self.leases.lock().expect("lessor lock");
        let mut v: Vec<(Duration, LeaseId)> =
            leases.iter().map(|(id, d)| (d.expires, *id)).collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// The leases whose deadline has passed and that are not already being revoked; they are
    /// marked as being revoked (retried after a few seconds if still present).
    pub fn take_expired(&self) -> Vec<LeaseId> {
        let now = self.clock.now();
        let mut leases = self.leases.lock().expect("lessor lock");
        let mut out = Vec::new();
        for (id, d) in leases.iter_mut() {
            if d.expires <= now {
                d.revoking = true;
                d.expires = now + REVOKE_RETRY;
                out.push(*id);
            } else if d.revoking {
                // A revoke that did not go through: allow keepalives to fail until retried.
            }
        }
        out.sort();
        out
    }

    /// Number of tracked leases.
    pub fn len(&self) -> usize {
        self.leases.lock().expect("lessor lock").len()
    }

    /// True when no lease is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Clone, Default)]
    struct ManualClock(Arc<AtomicU64>);
    impl Clock for ManualClock {
        fn now(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
    }
    impl ManualClock {
        fn advance(&self, ms: u64) {
            self.0.fetch_add(ms, Ordering::SeqCst);
        }
    }

    #[test]
    fn expiry_and_keepalive_follow_the_clock() {
        let clock = ManualClock::default();
        let lessor = Lessor::new(Box::new(clock.clone()));
        lessor.granted(1, 10);
        lessor.granted(2, 5);
        clock.advance(4_000);
        assert_eq!(lessor.renew(2), Some(5));
        assert_eq!(
            lessor.timing(1),
            Some(LeaseTiming {
                granted_ttl: 10,
                remaining: 6
            })
        );
        // Lease 2 was renewed at 4 s, so it now ends at 9 s; lease 1 ends at 10 s.
        clock.advance(5_500);
        assert_eq!(lessor.take_expired(), vec![2]);
        // Being revoked: keepalives fail, and it is not handed out twice.
        assert_eq!(lessor.renew(2), None);
        assert!(lessor.take_expired().is_empty());
        clock.advance(1_000);
        assert_eq!(lessor.take_expired(), vec![1]);
        assert_eq!(lessor.renew(99), None);
    }
}
