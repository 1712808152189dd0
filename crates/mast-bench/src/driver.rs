//! How load is generated: a closed loop of concurrent clients bounded by a request count and a
//! deadline, an open loop at a fixed rate, and the progress bar both drive.
//!
//! Every loop here stops by itself: a run ends when its request budget is spent or its deadline
//! passes, whichever comes first, and a run given only a count still has a deadline
//! ([`TIME_CAP`]), so a stuck server cannot hold a benchmark forever.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;

use crate::stats::Recorder;

/// The deadline of a run that was given only a request count.
pub const TIME_CAP: Duration = Duration::from_secs(2 * 60 * 60);

/// How much work a loop may do: at most `total` requests and at most `duration` of time.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most requests to issue (`None`: as many as fit in the time).
    pub total: Option<u64>,
    /// Longest time to run (`None`: [`TIME_CAP`]).
    pub duration: Option<Duration>,
}

impl Budget {
    /// A budget of exactly `n` requests (within [`TIME_CAP`]).
    pub fn count(n: u64) -> Budget {
        Budget {
            total: Some(n),
            duration: None,
        }
    }

    /// The instant after which no new request starts.
    pub fn deadline(&self, start: Instant) -> Instant {
        start + self.duration.unwrap_or(TIME_CAP).min(TIME_CAP)
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal or when output is JSON.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar labelled `label`: a bar over `total` when known, else a counter.
    pub fn new(visible: bool, label: &str, total: Option<u64>) -> Progress {
        let visible = visible && std::io::stderr().is_terminal();
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::hidden())
                .with_style(
                    ProgressStyle::with_template(
                        "{prefix:>14} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
                    )
                    .expect("valid template"),
                ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()).with_style(
                ProgressStyle::with_template("{prefix:>14} [{elapsed_precise}] {spinner} {pos} ops ({per_sec}) {msg}")
                    .expect("valid template"),
            ),
        };
        bar.set_prefix(label.to_string());
        if visible {
            bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        Progress { bar }
    }

    /// A bar that never draws.
    #[cfg(test)]
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    /// Counts `n` more operations.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Shows a short status message beside the counter.
    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// Starts a new phase: resets the counter and relabels the bar.
    pub fn phase(&self, label: &str, total: Option<u64>) {
        self.bar.set_prefix(label.to_string());
        self.bar.set_length(total.unwrap_or(0));
        self.bar.set_position(0);
        self.bar.reset_eta();
        self.bar.reset_elapsed();
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// What a loop measured.
#[derive(Clone, Default)]
pub struct Outcome {
    /// Requests that succeeded.
    pub ops: u64,
    /// Requests that failed.
    pub errors: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Latency of the successful requests.
    pub latency: Recorder,
    /// Wall time from the first request to the last response.
    pub elapsed: Duration,
}

impl Outcome {
    /// The report of a workload named `workload` from this outcome: counts, elapsed time,
    /// latency summary and the first error.
    pub fn into_report(self, workload: &str) -> crate::stats::Report {
        let mut report = crate::stats::Report::new(
            workload,
            self.ops,
            self.errors,
            self.elapsed,
            self.latency.summary(),
        );
        report.first_error = self.first_error;
        report
    }

    /// Adds another outcome's counts and latencies (elapsed times are not added).
    pub fn absorb(&mut self, other: &Outcome) {
        self.ops += other.ops;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.latency.merge(&other.latency);
    }
}

/// Shared error bookkeeping of concurrent tasks.
#[derive(Default)]
pub struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    /// Counts one error, keeping its message if it is the first.
    pub fn record(&self, msg: impl std::fmt::Display) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
            if first.is_none() {
                *first = Some(msg.to_string());
            }
        }
    }

    /// Errors counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first error's message.
    pub fn first(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Runs `clients` concurrent tasks, each issuing one request at a time (`op(client, seq)`,
/// with `seq` unique across clients, from 0) until the budget is spent.
pub async fn closed_loop<F, Fut>(
    clients: usize,
    budget: Budget,
    progress: &Progress,
    op: F,
) -> Outcome
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let deadline = budget.deadline(start);
    let total = budget.total.unwrap_or(u64::MAX);
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients.max(1) {
        let op = op.clone();
        let next = next.clone();
        let errors = errors.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::new();
            let mut ops = 0u64;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total || Instant::now() >= deadline {
                    break;
                }
                let t0 = Instant::now();
                match op(client, seq).await {
                    Ok(()) => {
                        rec.record(t0.elapsed());
                        ops += 1;
                    }
                    Err(e) => errors.record(format!("{e:#}")),
                }
                progress.inc(1);
            }
            (ops, rec)
        }));
    }
    let mut out = Outcome::default();
    for t in tasks {
        match t.await {
            Ok((ops, rec)) => {
                out.ops += ops;
                out.latency.merge(&rec);
            }
            Err(e) => errors.record(format!("client task failed: {e}")),
        }
    }
    out.elapsed = start.elapsed();
    out.errors = errors.count();
    out.first_error = errors.first();
    out
}

/// Issues `count` requests at `rate` per second (an open loop: request `i` starts at
/// `start + i / rate` whether or not earlier ones have answered), with at most `max_in_flight`
/// outstanding, stopping at `deadline`. `op(seq)` records its own results.
pub async fn open_loop<F, Fut>(
    rate: f64,
    count: u64,
    max_in_flight: usize,
    deadline: Instant,
    op: F,
) where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tasks = Vec::new();
    for seq in 0..count {
        let at = start + period.mul_f64(seq as f64);
        if at.into_std() >= deadline {
            break;
        }
        tokio::time::sleep_until(at).await;
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let fut = op(seq);
        tasks.push(tokio::spawn(async move {
            fut.await;
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_loop_spends_exactly_the_count() {
        let out = closed_loop(
            7,
            Budget::count(100),
            &Progress::hidden(),
            |_, seq| async move {
                if seq % 10 == 0 {
                    anyhow::bail!("seq {seq}");
                }
                Ok(())
            },
        )
        .await;
        assert_eq!(out.ops, 90);
        assert_eq!(out.errors, 10);
        assert!(out.first_error.unwrap().starts_with("seq "));
        assert_eq!(out.latency.count(), 90);
    }

    #[tokio::test]
    async fn closed_loop_stops_at_the_deadline() {
        let budget = Budget {
            total: None,
            duration: Some(Duration::from_millis(200)),
        };
        let t0 = Instant::now();
        let out = closed_loop(2, budget, &Progress::hidden(), |_, _| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        })
        .await;
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(out.ops > 10, "{}", out.ops);
    }

    #[tokio::test]
    async fn open_loop_keeps_the_rate() {
        let n = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let n2 = n.clone();
        open_loop(100.0, 20, 4, t0 + Duration::from_secs(5), move |_| {
            let n = n2.clone();
            async move {
                n.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
        assert_eq!(n.load(Ordering::Relaxed), 20);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(180) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
