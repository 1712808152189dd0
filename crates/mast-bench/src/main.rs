//! `mast-bench`: drives any etcd v3 endpoint through the public gRPC API, so the same tool
//! measures etcd and Mast.
//!
//! Module map:
//! - [`endpoint`]: endpoint parsing, the loopback guard, connections (`--conns`);
//! - [`unary`]: the lean unary client (h2 directly) the KV workloads call through;
//! - [`driver`]: the closed and open loops every workload runs, bounded by count and time, and
//!   the progress bar;
//! - [`stats`]: HDR latency histograms and the [`stats::Report`] every run prints (a table, or
//!   one JSON object with `--json`);
//! - [`workload`]: `put`, `range`, `txn-put`, `load` ([`workload::kv`]), `watch`
//!   ([`workload::watch`]), `lease-keepalive` ([`workload::lease`]) and `registry`
//!   ([`workload::registry`]);
//! - [`fsync`]: the disk's fsync rate;
//! - [`failover`]: kill a cluster's leader under load, measure until the next acknowledged
//!   write;
//! - [`nacos_push`]: `nacos-push`, config change pushes to N Nacos 2.x gRPC clients (any Nacos
//!   server: r-nacos or Mast);
//! - [`report`]: BENCHMARKS.md and its plot from the JSON results of a comparison run
//!   (`scripts/bench-compare.sh`);
//! - [`soak`]: `soak-report`, the soak section (`benchmarks/soak.md`) and its plot from a
//!   `scripts/soak.sh` run.

mod driver;
mod endpoint;
mod failover;
mod fsync;
mod nacos_push;
mod report;
mod soak;
mod stats;
mod unary;
mod workload;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::stats::Report;
use crate::workload::{kv, lease, registry, watch};

/// Benchmarks an etcd v3 endpoint (etcd or Mast) through its public API.
#[derive(Parser, Debug)]
#[command(name = "mast-bench", version, about)]
struct Cli {
    /// Threads of the load generator. With 1 (the default) every client and connection shares
    /// one thread, so the calls queued on a connection leave in one write and the tool stays
    /// on one core, leaving the rest of the machine to the server; more spread them over a
    /// work-stealing runtime.
    #[arg(long, global = true, default_value_t = 1)]
    client_threads: usize,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Single-key puts (random keys in a key space, or sequential).
    Put(kv::PutArgs),
    /// Ranges: one key or scans of consecutive keys, linearizable or serializable.
    Range(kv::RangeArgs),
    /// Transactions of puts (no compare).
    TxnPut(kv::TxnPutArgs),
    /// W watchers on one prefix, puts at a fixed rate: delivery latency and missing events.
    Watch(watch::WatchArgs),
    /// Grant L leases and keep them alive for --duration.
    LeaseKeepalive(lease::LeaseArgs),
    /// Instances register and heartbeat while watchers follow them and configs fan out.
    Registry(registry::RegistryArgs),
    /// Write keys 0..N once each (bulk load), with progress.
    Load(kv::LoadArgs),
    /// Measure the disk's write+fdatasync rate in a directory.
    Fsync(fsync::FsyncArgs),
    /// Wait until an endpoint answers a range; report how long that took.
    Wait(WaitArgs),
    /// Kill a cluster's leader under load; time until the next acknowledged write.
    Failover(failover::FailoverArgs),
    /// Turn the JSON results of a comparison run into BENCHMARKS.md and an SVG plot.
    Report(report::ReportArgs),
    /// The soak section (benchmarks/soak.md) and its plot from a scripts/soak.sh run; fails
    /// when the soak missed its bar (RSS growth, errors).
    SoakReport(soak::SoakArgs),
    /// N Nacos 2.x gRPC clients listen to one config; time each publish's push to all of them.
    NacosPush(nacos_push::PushArgs),
}

/// Flags of `wait`.
#[derive(Args, Debug)]
struct WaitArgs {
    /// The endpoint to poll.
    #[arg(long, default_value = "127.0.0.1:2379")]
    endpoints: String,
    /// Give up after this long.
    #[arg(long, default_value = "60s", value_parser = workload::parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Allow endpoints outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    allow_non_loopback: bool,
}

async fn wait(args: WaitArgs) -> anyhow::Result<Report> {
    let targets = endpoint::parse_endpoints(&args.endpoints, args.allow_non_loopback)?;
    let took = workload::wait_ready(&targets[0], args.timeout).await?;
    let mut report = Report::new("wait", 1, 0, took, stats::Latency::default());
    report.endpoints = vec![targets[0].label.clone()];
    report.extra.insert(
        "ready_ms".into(),
        serde_json::json!(took.as_secs_f64() * 1000.0),
    );
    Ok(report)
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

/// Runs one workload on `threads` threads: a current-thread runtime for 1 (or 0), else a
/// multi-threaded one with that many workers.
fn run<T>(
    threads: usize,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    rt.enable_all().build()?.block_on(f)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let t = cli.client_threads;
    match cli.command {
        Cmd::Put(a) => print(&run(t, kv::put(a.clone()))?, a.common.json),
        Cmd::Range(a) => print(&run(t, kv::range(a.clone()))?, a.common.json),
        Cmd::TxnPut(a) => print(&run(t, kv::txn_put(a.clone()))?, a.common.json),
        Cmd::Load(a) => print(&run(t, kv::load(a.clone()))?, a.common.json),
        Cmd::Watch(a) => print(&run(t, watch::watch(a.clone()))?, a.common.json),
        Cmd::LeaseKeepalive(a) => print(&run(t, lease::lease_keepalive(a.clone()))?, a.common.json),
        Cmd::Registry(a) => print(&run(t, registry::registry(a.clone()))?, a.common.json),
        Cmd::Wait(a) => {
            let json = a.json;
            print(&run(t, wait(a))?, json)
        }
        Cmd::Fsync(a) => print(&fsync::fsync(&a)?, a.json),
        Cmd::Failover(a) => {
            let json = a.json;
            print(&run(t, failover::failover(a))?, json)
        }
        Cmd::Report(a) => report::run(&a),
        Cmd::SoakReport(a) => {
            let v = soak::run(&a)?;
            println!(
                "soak: RSS growth {:.1} %, p99 spread {:.2}x, errors {} -> {}",
                v.rss_growth_pct,
                v.p99_spread,
                v.errors,
                if v.passed() { "passed" } else { "FAILED" }
            );
            anyhow::ensure!(
                v.passed(),
                "the soak missed its bar (see {})",
                a.out.display()
            );
            Ok(())
        }
        Cmd::NacosPush(a) => print(&run(t, nacos_push::nacos_push(a.clone()))?, a.json),
    }
}
