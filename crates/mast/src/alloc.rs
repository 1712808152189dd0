//! The heap allocator of the `mast` binary: jemalloc where it builds (Unix, not musl), the
//! system allocator elsewhere.
//!
//! The server keeps its key index in memory and turns over hundreds of thousands of small
//! allocations a minute on several threads. With glibc's malloc the soak (`scripts/soak.sh`)
//! saw RSS rise in steps, +76 % over an hour with the key count bounded; jemalloc returns
//! pages it no longer uses to the OS after its decay time (10 s by default), and reports how
//! much is live and how much it holds, which `/metrics` exports so the two can be told apart.

use mast_server::AllocatorStats;

#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The allocator's counters in bytes, refreshed on every call (jemalloc caches them until its
/// epoch advances); `None` if jemalloc does not answer.
#[cfg(all(unix, not(target_env = "musl")))]
pub fn stats() -> Option<AllocatorStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(AllocatorStats {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

/// The system allocator keeps no counters we can read.
#[cfg(not(all(unix, not(target_env = "musl"))))]
pub fn stats() -> Option<AllocatorStats> {
    None
}
