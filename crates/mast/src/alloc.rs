//! The heap allocator of the `mast` binary: jemalloc where it builds (Unix, not musl), the
//! system allocator elsewhere.
//!
//! The server keeps its key index in memory and turns over hundreds of thousands of small
//! allocations a minute on several threads. With glibc's malloc the soak (`scripts/soak.sh`)
//! saw RSS rise in steps, +76 % over an hour with the key count bounded; jemalloc returns
//! pages it no longer uses to the OS after its decay time, and reports how
//! much is live and how much it holds, which `/metrics` exports so the two can be told apart.
//!
//! Its options are set when jemalloc is built, by `JEMALLOC_SYS_WITH_MALLOC_CONF` in
//! `.cargo/config.toml` (the `_RJEM_MALLOC_CONF` environment variable still overrides them):
//! - `narenas:1`: one arena instead of four per core. Each thread keeps a cache of its own, so
//!   the arena's lock is taken rarely, while every extra arena held free pages of its own.
//! - `dirty_decay_ms:1000`, `muzzy_decay_ms:0`: freed pages go back to the OS after about a
//!   second instead of ten, so RSS follows the live heap.
//!
//! With a registry of 10,000 configs and 10,000 instances these took RSS from 53 to 50 MiB with
//! the same live heap; puts with 100 clients ran at the same rate within the run-to-run noise
//! (benchmarks/notes.md).

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

#[cfg(all(test, unix, not(target_env = "musl")))]
mod tests {
    /// jemalloc was built with the options of `.cargo/config.toml`
    /// (`JEMALLOC_SYS_WITH_MALLOC_CONF`), unless the environment overrides them.
    #[test]
    fn jemalloc_runs_with_the_binarys_options() {
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            return;
        }
        assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().unwrap(), 1);
    }
}
