//! The lessor: when each lease expires.
//!
//! The store knows which leases exist and which keys they hold; the lessor only keeps a
//! deadline per lease, from an injected [`Clock`]. Every member's lessor follows the applied
//! log (grants, revokes, checkpoints), but only the leader's is *primary*, as etcd's: it alone
//! answers keepalives, and expiry is decided by it and reaches the store as an ordinary
//! `LeaseRevoke` entry.
//!
//! A follower cannot see keepalives, so the primary tells it: every so often it proposes a
//! `LeaseCheckpoint` with the remaining time of every lease renewed since the last one, and a
//! follower sets that lease's deadline to "remaining from when the checkpoint was applied".
//! When a follower becomes leader ([`Lessor::promote`]) every deadline is extended by an
//! election timeout, so a lease whose owner keeps renewing survives the change of leader, and
//! a lease whose owner died still ends at most an election timeout (plus the checkpoint's
//! travel time) after it would have. Deadlines are not persisted: after a restart every lease
//! starts again with its full TTL, as etcd does, so leases never expire early and never all
//! at once.

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

#[derive(Default)]
struct Leases {
    by_id: HashMap<LeaseId, Deadline, foldhash::fast::RandomState>,
    /// Whether this lessor expires leases and answers keepalives (this member leads).
    primary: bool,
    /// Leases renewed since the last checkpoint (primary only).
    renewed: Vec<LeaseId>,
}

/// Lease deadlines.
pub struct Lessor {
    clock: std::sync::Arc<dyn Clock>,
    /// Hashed with foldhash: lease IDs are server-picked integers, so the default SipHash's
    /// resistance to chosen keys buys nothing here and costs a registration's worth of time.
    leases: Mutex<Leases>,
}

/// The timing of one lease, for `LeaseTimeToLive` and `LeaseLeases`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Granted TTL in seconds.
    pub granted_ttl: i64,
    /// Whole seconds left before expiry (0 when expiring).
    pub remaining: i64,
    /// Milliseconds left before expiry (0 when expiring): `remaining` before rounding down,
    /// for callers that measure beat ages below a second (Nacos's heartbeat timeout).
    pub remaining_ms: u64,
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

impl Lessor {
    /// A lessor with no leases, reading time from `clock`, not primary.
    pub fn new(clock: std::sync::Arc<dyn Clock>) -> Self {
        Lessor {
            clock,
            leases: Mutex::new(Leases::default()),
        }
    }

    /// A primary lessor (a single member that always leads), for tests.
    pub fn new_primary(clock: std::sync::Arc<dyn Clock>) -> Self {
        let l = Lessor::new(clock);
        l.leases.lock().expect("lessor lock").primary = true;
        l
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
            leases.by_id.insert(
                id,
                Deadline {
                    ttl,
                    expires: now + secs(ttl),
                    revoking: false,
                },
            );
        }
    }

    /// Stops tracking a revoked lease.
    pub fn revoked(&self, id: LeaseId) {
        self.leases.lock().expect("lessor lock").by_id.remove(&id);
    }

    /// A checkpoint applied on a member that does not lead: each lease `(id, remaining ms)`
    /// now ends that long from now. Ignored by the primary, whose deadlines are the source.
    pub fn checkpointed(&self, checkpoints: &[(LeaseId, i64)]) {
        let now = self.clock.now();
        let mut leases = self.leases.lock().expect("lessor lock");
        if leases.primary {
            return;
        }
        for (id, ms) in checkpoints {
            if let Some(d) = leases.by_id.get_mut(id) {
                d.expires = now + Duration::from_millis((*ms).max(0) as u64);
            }
        }
    }

    /// This member became leader: its lessor expires leases from now on, and every deadline
    /// moves `extend` (an election timeout) later, as etcd's `Promote`.
    pub fn promote(&self, extend: Duration) {
        let now = self.clock.now();
        let mut leases = self.leases.lock().expect("lessor lock");
        if leases.primary {
            return;
        }
        leases.primary = true;
        leases.renewed.clear();
        for d in leases.by_id.values_mut() {
            d.expires = d.expires.max(now) + extend;
            d.revoking = false;
        }
    }

    /// This member no longer leads: it stops expiring leases, as etcd's `Demote`.
    pub fn demote(&self) {
        let mut leases = self.leases.lock().expect("lessor lock");
        leases.primary = false;
        leases.renewed.clear();
    }

    /// Whether this lessor is primary (this member leads).
    pub fn is_primary(&self) -> bool {
        self.leases.lock().expect("lessor lock").primary
    }

    /// A keepalive: moves the deadline to a full TTL from now and returns the TTL in seconds,
    /// or `None` for an unknown or already expired lease (etcd answers TTL 0 then).
    pub fn renew(&self, id: LeaseId) -> Option<i64> {
        let now = self.clock.now();
        let mut leases = self.leases.lock().expect("lessor lock");
        let d = leases.by_id.get_mut(&id)?;
        if d.revoking || d.expires <= now {
            return None;
        }
        d.expires = now + secs(d.ttl);
        let ttl = d.ttl;
        leases.renewed.push(id);
        Some(ttl)
    }

    /// The leases renewed since the last call, with the milliseconds each has left: what the
    /// primary's next checkpoint carries.
    pub fn take_renewed(&self) -> Vec<(LeaseId, i64)> {
        let now = self.clock.now();
        let mut leases = self.leases.lock().expect("lessor lock");
        let mut ids = std::mem::take(&mut leases.renewed);
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| {
                leases
                    .by_id
                    .get(&id)
                    .map(|d| (id, d.expires.saturating_sub(now).as_millis() as i64))
            })
            .collect()
    }

    /// The timing of a lease, or `None` when it is unknown.
    pub fn timing(&self, id: LeaseId) -> Option<LeaseTiming> {
        let now = self.clock.now();
        let leases = self.leases.lock().expect("lessor lock");
        let d = leases.by_id.get(&id)?;
        let left = d.expires.saturating_sub(now);
        Some(LeaseTiming {
            granted_ttl: d.ttl,
            remaining: left.as_secs() as i64,
            remaining_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Every tracked lease ID, soonest expiry first.
    pub fn ids_by_expiry(&self) -> Vec<LeaseId> {
        let leases = self.leases.lock().expect("lessor lock");
        let mut v: Vec<(Duration, LeaseId)> = leases
            .by_id
            .iter()
            .map(|(id, d)| (d.expires, *id))
            .collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// On the primary, the leases whose deadline has passed and that are not already being
    /// revoked; they are marked as being revoked (retried after a few seconds if still
    /// present). Nothing on a lessor that is not primary.
    pub fn take_expired(&self) -> Vec<LeaseId> {
        let now = self.clock.now();
        let mut leases = self.leases.lock().expect("lessor lock");
        if !leases.primary {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (id, d) in leases.by_id.iter_mut() {
            if d.expires <= now {
                d.revoking = true;
                d.expires = now + REVOKE_RETRY;
                out.push(*id);
            }
        }
        out.sort();
        out
    }

    /// Number of tracked leases.
    pub fn len(&self) -> usize {
        self.leases.lock().expect("lessor lock").by_id.len()
    }

    /// True when no lease is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every lease and tracks `leases` (ID, TTL seconds) with full TTLs: after the
    /// store was replaced by a snapshot.
    pub fn reset(&self, leases: impl IntoIterator<Item = (LeaseId, i64)>) {
        self.leases.lock().expect("lessor lock").by_id.clear();
        self.granted_all(leases);
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
        let lessor = Lessor::new_primary(Arc::new(clock.clone()));
        lessor.granted(1, 10);
        lessor.granted(2, 5);
        clock.advance(4_000);
        assert_eq!(lessor.renew(2), Some(5));
        assert_eq!(
            lessor.timing(1),
            Some(LeaseTiming {
                granted_ttl: 10,
                remaining: 6,
                remaining_ms: 6_000,
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

    #[test]
    fn followers_follow_checkpoints_and_a_promoted_lessor_extends_every_deadline() {
        let clock = ManualClock::default();
        let leader = Lessor::new_primary(Arc::new(clock.clone()));
        let follower = Lessor::new(Arc::new(clock.clone()));
        for l in [&leader, &follower] {
            l.granted(1, 10);
            l.granted(2, 10);
        }
        // Only the primary expires leases.
        clock.advance(11_000);
        assert!(follower.take_expired().is_empty());
        assert_eq!(leader.take_expired(), vec![1, 2]);

        // Fresh grants; the owner of lease 1 keeps renewing through the leader.
        clock.advance(1);
        for l in [&leader, &follower] {
            l.granted(1, 10);
            l.granted(2, 10);
        }
        clock.advance(8_000);
        assert_eq!(leader.renew(1), Some(10));
        let cp = leader.take_renewed();
        assert_eq!(cp, vec![(1, 10_000)]);
        assert!(leader.take_renewed().is_empty(), "drained");
        follower.checkpointed(&cp);
        // The leader dies 3 s later; the follower is promoted with a 1 s election timeout.
        clock.advance(3_000);
        follower.promote(Duration::from_millis(1_000));
        assert!(follower.is_primary());
        // Lease 2 (not renewed: due 1 s ago) ends one election timeout from now; lease 1
        // (renewed 3 s ago: due in 7 s) one election timeout after its deadline.
        clock.advance(999);
        assert!(follower.take_expired().is_empty());
        clock.advance(1);
        assert_eq!(follower.take_expired(), vec![2]);
        follower.revoked(2);
        clock.advance(6_999);
        assert!(follower.take_expired().is_empty());
        clock.advance(1);
        assert_eq!(follower.take_expired(), vec![1]);
        // A demoted lessor stops expiring.
        follower.granted(3, 2);
        follower.demote();
        clock.advance(5_000);
        assert!(follower.take_expired().is_empty());
    }
}
