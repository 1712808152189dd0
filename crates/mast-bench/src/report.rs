//! `report`: BENCHMARKS.md and its SVG plot from the results directory a comparison run
//! (`scripts/bench-compare.sh`) leaves behind.
//!
//! The directory holds:
//! - `meta.json`: machine, versions, scale, how each server was started (free-form strings);
//! - `commands.txt`: every benchmark command, as run;
//! - `runs/<NN>-<label>.<server>.json`: one `mast-bench --json` report per workload and server
//!   (`server` is `etcd` or `mast`), and beside it `<...>.proc.json`: the server's CPU seconds,
//!   RSS and fsync count over that run;
//! - `load.<server>.json`: the 1,000,000-key measurement (load report, RSS, disk, restart);
//! - `fsync.json`: the disk's fsync rate (`mast-bench fsync --json`).
//!
//! Missing pieces are left out of the document rather than failing it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use crate::stats::Report;

/// Flags of `report`.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// The results directory of a comparison run.
    #[arg(long)]
    results: PathBuf,
    /// The Markdown file to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// The SVG plot to write (default: `benchmarks.svg` beside --out).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Markdown files appended after the generated sections, in order (e.g. the r-nacos
    /// comparison and the hand-written profile notes). Each is wrapped in
    /// `<!-- include: PATH -->` … `<!-- end include: PATH -->` so a script can later replace
    /// it in place. Missing files are skipped.
    #[arg(long)]
    include: Vec<PathBuf>,
}

/// What the comparison script measured on the server process during one run.
#[derive(Debug, Clone, Default, Deserialize)]
struct Proc {
    /// User + system CPU seconds the server used during the run.
    cpu_s: Option<f64>,
    /// Resident set size after the run, in KiB.
    rss_kb: Option<f64>,
    /// fsync calls during the run (from the server's /metrics), when it exposes them.
    fsyncs: Option<f64>,
}

/// The 1,000,000-key measurement of one server.
#[derive(Debug, Clone, Default, Deserialize)]
struct LoadResult {
    load: Option<Report>,
    rss_kb: Option<f64>,
    disk_bytes: Option<f64>,
    restart_s: Option<f64>,
    rss_after_restart_kb: Option<f64>,
}

/// Both servers' results for one workload label.
#[derive(Debug, Default)]
struct Row {
    label: String,
    etcd: Option<(Report, Proc)>,
    mast: Option<(Report, Proc)>,
}

/// Runs `report`.
pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let rows = read_runs(&args.results.join("runs"))?;
    let meta: BTreeMap<String, Value> =
        read_json(&args.results.join("meta.json")).unwrap_or_default();
    let commands = std::fs::read_to_string(args.results.join("commands.txt")).unwrap_or_default();
    let loads: BTreeMap<&str, LoadResult> = ["etcd", "mast"]
        .into_iter()
        .filter_map(|s| {
            read_json(&args.results.join(format!("load.{s}.json")))
                .ok()
                .map(|l| (s, l))
        })
        .collect();
    let fsync: Option<Report> = read_json(&args.results.join("fsync.json")).ok();
    let plot = args.plot.clone().unwrap_or_else(|| {
        args.out
            .parent()
            .unwrap_or(Path::new("."))
            .join("benchmarks.svg")
    });
    for path in [&args.out, &plot] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    draw_plot(&rows, &plot).with_context(|| format!("drawing {}", plot.display()))?;
    let plot_name = plot
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut md = markdown(&rows, &meta, &commands, &loads, fsync.as_ref(), &plot_name);
    for inc in &args.include {
        let Ok(text) = std::fs::read_to_string(inc) else {
            eprintln!("skipping {} (not readable)", inc.display());
            continue;
        };
        let name = inc.display();
        md.push_str(&format!(
            "\n<!-- include: {name} -->\n{}\n<!-- end include: {name} -->\n",
            text.trim_end()
        ));
    }
    std::fs::write(&args.out, md).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} and {}", args.out.display(), plot.display());
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Reads `runs/<NN>-<label>.<server>.json` files into rows ordered by file name.
fn read_runs(dir: &Path) -> anyhow::Result<Vec<Row>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !n.ends_with(".proc.json"))
        .collect();
    names.sort();
    let mut rows: Vec<Row> = Vec::new();
    for name in names {
        let stem = name.trim_end_matches(".json");
        let Some((label, server)) = stem.rsplit_once('.') else {
            continue;
        };
        let Ok(report) = read_json::<Report>(&dir.join(&name)) else {
            eprintln!("skipping {name}: not a mast-bench report");
            continue;
        };
        let proc: Proc = read_json(&dir.join(format!("{stem}.proc.json"))).unwrap_or_default();
        // Labels are `NN-name`: the number orders, the name shows.
        let shown = label
            .split_once('-')
            .map_or(label, |(_, rest)| rest)
            .to_string();
        let row = match rows.iter_mut().find(|r| r.label == shown) {
            Some(r) => r,
            None => {
                rows.push(Row {
                    label: shown,
                    ..Row::default()
                });
                rows.last_mut().expect("just pushed")
            }
        };
        match server {
            "etcd" => row.etcd = Some((report, proc)),
            "mast" => row.mast = Some((report, proc)),
            _ => {}
        }
    }
    Ok(rows)
}

fn ratio(mast: f64, etcd: f64) -> String {
    if etcd > 0.0 && mast.is_finite() {
        format!("{:.2}×", mast / etcd)
    } else {
        "–".into()
    }
}

fn num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else if x >= 0.01 {
        format!("{x:.2}")
    } else if x > 0.0 {
        format!("{x:.3}")
    } else {
        "0".into()
    }
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or("–".into(), f)
}

fn mib(kb_or_bytes: f64, divisor: f64) -> String {
    format!("{:.1} MiB", kb_or_bytes / divisor)
}

/// One line describing a run's parameters, for the tables.
fn describe(r: &Report) -> String {
    let keys = [
        "clients",
        "conns",
        "consistency",
        "scan",
        "txn_ops",
        "watchers",
        "streams",
        "put_rate",
        "leases",
        "ttl",
        "instances",
        "services",
        "subscribers",
        "config_rate",
        "val_size",
    ];
    keys.iter()
        .filter_map(|k| {
            r.params
                .get(*k)
                .map(|v| format!("{k}={}", v.to_string().trim_matches('"')))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The Markdown document.
fn markdown(
    rows: &[Row],
    meta: &BTreeMap<String, Value>,
    commands: &str,
    loads: &BTreeMap<&str, LoadResult>,
    fsync: Option<&Report>,
    plot: &str,
) -> String {
    let mut md = String::new();
    let m = |k: &str| {
        meta.get(k)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .unwrap_or_else(|| "unknown".into())
    };
    let _ = writeln!(md, "# Benchmarks: Mast vs etcd\n");
    let _ = writeln!(
        md,
        "Both servers ran on this machine in the same run, on loopback, driven by the same tool \
         (`mast-bench`, through the public etcd v3 gRPC API), workload by workload, one server \
         after the other (which goes first alternates from one workload to the next). The tool \
         runs on one thread (`--client-threads 1`), so it takes at most one of the cores; the \
         put, range and txn workloads call over `h2` directly (one write carries every call \
         queued on a connection), the streaming ones (watch, lease keepalive, registry) \
         through tonic. Generated by `scripts/bench-compare.sh` on {} (scale `{}`); rerun it to \
         refresh this file.\n",
        m("date"),
        m("scale")
    );
    let _ = writeln!(md, "## Machine and versions\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    for k in [
        "cpu", "cores", "memory", "kernel", "os", "disk", "load", "etcd", "mast", "rustc",
    ] {
        let _ = writeln!(md, "| {k} | {} |", m(k).replace('|', "/"));
    }
    let _ = writeln!(md, "\n## Durability\n\n{}\n", m("durability"));
    let _ = writeln!(
        md,
        "Servers as started:\n\n```sh\n{}\n{}\n```\n",
        m("etcd_command"),
        m("mast_command")
    );

    // Throughput and latency.
    let _ = writeln!(
        md,
        "## Results\n\n![throughput and p99 latency, etcd vs Mast]({plot})\n"
    );
    let _ = writeln!(
        md,
        "Throughput is successful requests per second; latency is per request, in milliseconds \
         (HDR histogram). Ratio = Mast / etcd: above 1 is better for throughput, below 1 is \
         better for latency.\n"
    );
    let _ = writeln!(
        md,
        "| workload | parameters | etcd ops/s | Mast ops/s | ratio | etcd p50 | Mast p50 | etcd p99 | Mast p99 | ratio p99 | etcd p99.9 / max | Mast p99.9 / max | errors etcd / Mast |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let (e, mm) = (r.etcd.as_ref().map(|x| &x.0), r.mast.as_ref().map(|x| &x.0));
        let params = e.or(mm).map(describe).unwrap_or_default();
        let f =
            |x: Option<&Report>, g: &dyn Fn(&Report) -> f64| x.map_or("–".into(), |r| num(g(r)));
        let tail = |x: Option<&Report>| {
            x.map_or("–".into(), |r| {
                format!(
                    "{} / {}",
                    num(r.latency_ms.p999_ms),
                    num(r.latency_ms.max_ms)
                )
            })
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            r.label,
            params,
            f(e, &|r| r.ops_per_sec),
            f(mm, &|r| r.ops_per_sec),
            match (e, mm) {
                (Some(e), Some(m)) => ratio(m.ops_per_sec, e.ops_per_sec),
                _ => "–".into(),
            },
            f(e, &|r| r.latency_ms.p50_ms),
            f(mm, &|r| r.latency_ms.p50_ms),
            f(e, &|r| r.latency_ms.p99_ms),
            f(mm, &|r| r.latency_ms.p99_ms),
            match (e, mm) {
                (Some(e), Some(m)) => ratio(m.latency_ms.p99_ms, e.latency_ms.p99_ms),
                _ => "–".into(),
            },
            tail(e),
            tail(mm),
            e.map_or("–".into(), |r| r.errors.to_string()),
            mm.map_or("–".into(), |r| r.errors.to_string()),
        );
    }

    // Watch delivery.
    let watch_rows: Vec<(
        &Row,
        String,
        Option<crate::stats::WatchStats>,
        Option<crate::stats::WatchStats>,
    )> = rows
        .iter()
        .flat_map(|r| {
            let get = |side: &Option<(Report, Proc)>, part: Option<&str>| {
                side.as_ref().and_then(|(rep, _)| match part {
                    None => rep.watch.clone(),
                    Some(p) => rep
                        .parts
                        .iter()
                        .find(|x| x.name == p)
                        .and_then(|x| x.watch.clone()),
                })
            };
            let mut out = Vec::new();
            let has_parts = r
                .etcd
                .iter()
                .chain(r.mast.iter())
                .any(|(rep, _)| rep.parts.iter().any(|p| p.watch.is_some()));
            if has_parts {
                for p in ["service-watch", "config-watch"] {
                    out.push((
                        r,
                        format!("{} ({p})", r.label),
                        get(&r.etcd, Some(p)),
                        get(&r.mast, Some(p)),
                    ));
                }
            } else if get(&r.etcd, None).is_some() || get(&r.mast, None).is_some() {
                out.push((r, r.label.clone(), get(&r.etcd, None), get(&r.mast, None)));
            }
            out
        })
        .collect();
    if !watch_rows.is_empty() {
        let _ = writeln!(md, "\n### Watch delivery\n");
        let _ = writeln!(
            md,
            "Delivery latency runs from the writer receiving its response to the watcher receiving \
             the event (clamped at 0 when the event arrives first; `early` counts those). Missing = \
             expected − received: every acknowledged write must reach every watcher.\n"
        );
        let _ = writeln!(
            md,
            "| workload | server | watchers | expected | received | missing | dup | early | p50 ms | p99 ms | p99.9 ms | max ms | write→event p50 / p99 ms |"
        );
        let _ = writeln!(
            md,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (_, label, e, mm) in &watch_rows {
            for (name, w) in [("etcd", e), ("Mast", mm)] {
                if let Some(w) = w {
                    let _ = writeln!(
                        md,
                        "| {label} | {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                        w.watchers,
                        w.events_expected,
                        w.events_received,
                        w.missing,
                        w.duplicates,
                        w.before_ack,
                        num(w.delivery_ms.p50_ms),
                        num(w.delivery_ms.p99_ms),
                        num(w.delivery_ms.p999_ms),
                        num(w.delivery_ms.max_ms),
                        num(w.end_to_end_ms.p50_ms),
                        num(w.end_to_end_ms.p99_ms),
                    );
                }
            }
        }
    }

    // Server resources and group commit.
    let _ = writeln!(md, "\n### Server CPU, memory and fsyncs per workload\n");
    let _ = writeln!(
        md,
        "CPU = user + system seconds the server process used during the run (from \
         `/proc/PID/stat`); RSS after the run (`VmRSS`). Writes per fsync = acknowledged write \
         requests / fsync calls the server reported on `/metrics` during the run (etcd: \
         `etcd_disk_wal_fsync_duration_seconds_count`; Mast: `mast_fsyncs_total`, log syncs plus checkpoints). \
         The benchmark client shares the machine: its own CPU seconds (the whole `mast-bench` \
         process, setup included) show how much of the 2 cores the load generator took.\n"
    );
    let _ = writeln!(
        md,
        "| workload | etcd CPU s | Mast CPU s | ratio | etcd CPU µs/op | Mast CPU µs/op | etcd RSS | Mast RSS | etcd writes/fsync | Mast writes/fsync | client CPU s (etcd run / Mast run) |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let client = |s: &Option<(Report, Proc)>| {
            s.as_ref()
                .and_then(|(rep, _)| rep.extra.get("client_cpu_s").and_then(Value::as_f64))
        };
        let cpu = |s: &Option<(Report, Proc)>| s.as_ref().and_then(|(_, p)| p.cpu_s);
        let per_op = |s: &Option<(Report, Proc)>| {
            s.as_ref().and_then(|(rep, p)| {
                p.cpu_s
                    .filter(|_| rep.ops > 0)
                    .map(|c| c * 1e6 / rep.ops as f64)
            })
        };
        let rss = |s: &Option<(Report, Proc)>| s.as_ref().and_then(|(_, p)| p.rss_kb);
        let wpf = |s: &Option<(Report, Proc)>| {
            s.as_ref().and_then(|(rep, p)| {
                let writes = writes_of(rep)?;
                p.fsyncs.filter(|f| *f > 0.0).map(|f| writes as f64 / f)
            })
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            r.label,
            opt(cpu(&r.etcd), num),
            opt(cpu(&r.mast), num),
            match (cpu(&r.etcd), cpu(&r.mast)) {
                (Some(e), Some(m)) => ratio(m, e),
                _ => "–".into(),
            },
            opt(per_op(&r.etcd), num),
            opt(per_op(&r.mast), num),
            opt(rss(&r.etcd), |k| mib(k, 1024.0)),
            opt(rss(&r.mast), |k| mib(k, 1024.0)),
            opt(wpf(&r.etcd), num),
            opt(wpf(&r.mast), num),
            opt(client(&r.etcd), num),
            opt(client(&r.mast), num),
        );
    }

    // One million keys.
    if !loads.is_empty() {
        let keys = load_keys(loads);
        let _ = writeln!(md, "\n## {keys} keys (8-byte keys, 256-byte values)\n");
        let _ = writeln!(
            md,
            "Each server starts on an empty data directory and is loaded with plain puts (one \
             revision per key); then RSS and the data directory's size on disk (`du`) are taken; \
             then the server is stopped (SIGTERM) and started again, and restart time runs from \
             the new process's start to the first answered linearizable range.\n"
        );
        let _ = writeln!(md, "| | etcd | Mast | ratio |\n|---|---:|---:|---:|");
        let get = |s: &str, f: &dyn Fn(&LoadResult) -> Option<f64>| loads.get(s).and_then(f);
        type Getter<'a> = (
            &'a str,
            Box<dyn Fn(&LoadResult) -> Option<f64>>,
            fn(f64) -> String,
        );
        let lines: Vec<Getter> = vec![
            (
                "load throughput (keys/s)",
                Box::new(|l: &LoadResult| l.load.as_ref().map(|r| r.ops_per_sec)),
                num,
            ),
            (
                "load p99 latency (ms)",
                Box::new(|l: &LoadResult| l.load.as_ref().map(|r| r.latency_ms.p99_ms)),
                num,
            ),
            ("RSS after load", Box::new(|l: &LoadResult| l.rss_kb), |k| {
                mib(k, 1024.0)
            }),
            (
                "on-disk size",
                Box::new(|l: &LoadResult| l.disk_bytes),
                |b| mib(b, 1048576.0),
            ),
            (
                "restart time (s)",
                Box::new(|l: &LoadResult| l.restart_s),
                |s| format!("{s:.2}"),
            ),
            (
                "RSS after restart",
                Box::new(|l: &LoadResult| l.rss_after_restart_kb),
                |k| mib(k, 1024.0),
            ),
        ];
        for (name, f, fmt) in &lines {
            let (e, mm) = (get("etcd", f.as_ref()), get("mast", f.as_ref()));
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} |",
                opt(e, fmt),
                opt(mm, fmt),
                match (e, mm) {
                    (Some(e), Some(m)) => ratio(m, e),
                    _ => "–".into(),
                }
            );
        }
    }

    // The physical limit.
    if let Some(f) = fsync {
        let rate = f.ops_per_sec;
        let _ = writeln!(md, "\n## The physical limit: fsync\n");
        let _ = writeln!(
            md,
            "`mast-bench fsync` in the data directories' file system ({}): write {} bytes + \
             `fdatasync`, in a loop, for {:.1} s: **{:.0} fsyncs/s** (p50 {} ms, p99 {} ms, max {} \
             ms). A server that syncs every write one at a time cannot pass this rate; every \
             durable write rate above it comes from group commit: one fsync covering many \
             concurrent writes.\n",
            f.params.get("dir").and_then(Value::as_str).unwrap_or("?"),
            f.params
                .get("block_size")
                .map_or("?".into(), Value::to_string),
            f.duration_s,
            rate,
            num(f.latency_ms.p50_ms),
            num(f.latency_ms.p99_ms),
            num(f.latency_ms.max_ms),
        );
        if rate > 0.0 {
            let _ = writeln!(
                md,
                "| write workload | server | writes/s | ÷ disk fsync rate | measured writes per fsync |"
            );
            let _ = writeln!(md, "|---|---|---:|---:|---:|");
            for r in rows {
                for (name, side) in [("etcd", &r.etcd), ("Mast", &r.mast)] {
                    let Some((rep, p)) = side else { continue };
                    let Some(writes) = writes_of(rep) else {
                        continue;
                    };
                    let wps = writes as f64 / rep.duration_s.max(1e-9);
                    let measured = p.fsyncs.filter(|f| *f > 0.0).map(|f| writes as f64 / f);
                    let _ = writeln!(
                        md,
                        "| {} | {name} | {} | {} | {} |",
                        r.label,
                        num(wps),
                        num(wps / rate),
                        opt(measured, num)
                    );
                }
            }
        }
    }

    // Targets from the product brief.
    let targets = targets(rows, loads);
    if !targets.is_empty() {
        let _ = writeln!(md, "\n## Targets (PRODUCT.md)\n");
        let _ = writeln!(md, "| target | measured | met |\n|---|---|---|");
        for (t, measured, met) in targets {
            let _ = writeln!(
                md,
                "| {t} | {measured} | {} |",
                if met { "yes" } else { "**no**" }
            );
        }
    }

    if !commands.trim().is_empty() {
        let _ = writeln!(
            md,
            "\n## Exact commands\n\n```sh\n{}\n```",
            commands.trim_end()
        );
    }
    md
}

/// How many keys the load measurement wrote.
fn load_keys(loads: &BTreeMap<&str, LoadResult>) -> u64 {
    loads
        .values()
        .filter_map(|l| l.load.as_ref())
        .find_map(|r| r.params.get("keys").and_then(Value::as_u64))
        .unwrap_or(0)
}

/// Acknowledged write requests of a write workload (None for reads, watches of no writes...).
fn writes_of(r: &Report) -> Option<u64> {
    match r.workload.as_str() {
        "put" | "txn-put" | "load" | "watch" => Some(r.ops),
        _ => None,
    }
}

/// The brief's targets that this run measured: (target, measured, met).
fn targets(rows: &[Row], loads: &BTreeMap<&str, LoadResult>) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for r in rows {
        let (Some((e, ep)), Some((m, mp))) = (&r.etcd, &r.mast) else {
            continue;
        };
        let clients = e.params.get("clients").and_then(Value::as_u64).unwrap_or(0);
        match e.workload.as_str() {
            "put" if clients >= 100 => {
                let t = m.ops_per_sec / e.ops_per_sec.max(1e-9);
                let l = m.latency_ms.p99_ms / e.latency_ms.p99_ms.max(1e-9);
                out.push((
                    format!("{}: put throughput ≥ 2× etcd", r.label),
                    format!("{t:.3}×"),
                    t >= 2.0,
                ));
                out.push((
                    format!("{}: put p99 ≤ ½ etcd's", r.label),
                    format!("{l:.3}×"),
                    l <= 0.5,
                ));
            }
            "range" => {
                let t = m.ops_per_sec / e.ops_per_sec.max(1e-9);
                out.push((
                    format!("{}: range throughput ≥ 2× etcd", r.label),
                    format!("{t:.3}×"),
                    t >= 2.0,
                ));
            }
            "watch" => {
                if let (Some(ew), Some(mw)) = (&e.watch, &m.watch) {
                    out.push((
                        format!(
                            "{}: every event delivered ({} watchers)",
                            r.label, mw.watchers
                        ),
                        format!("Mast missing {}, etcd missing {}", mw.missing, ew.missing),
                        mw.missing == 0,
                    ));
                    out.push((
                        format!("{}: delivery p99 ≤ etcd's", r.label),
                        format!(
                            "{} ms vs {} ms",
                            num(mw.delivery_ms.p99_ms),
                            num(ew.delivery_ms.p99_ms)
                        ),
                        mw.delivery_ms.p99_ms <= ew.delivery_ms.p99_ms,
                    ));
                }
            }
            "lease-keepalive" => {
                if let (Some(ec), Some(mc)) = (ep.cpu_s, mp.cpu_s) {
                    let leases = m.params.get("leases").and_then(Value::as_u64).unwrap_or(0);
                    out.push((
                        format!(
                            "{}: {leases} leases kept alive with less CPU than etcd",
                            r.label
                        ),
                        format!("{} s vs {} s", num(mc), num(ec)),
                        mc < ec,
                    ));
                }
            }
            _ => {}
        }
    }
    if let (Some(e), Some(m)) = (loads.get("etcd"), loads.get("mast")) {
        if let (Some(er), Some(mr)) = (e.rss_kb, m.rss_kb) {
            out.push((
                format!("{} keys: RSS ≤ ½ etcd's", load_keys(loads)),
                format!("{:.2}×", mr / er.max(1e-9)),
                mr <= er / 2.0,
            ));
        }
        if let (Some(er), Some(mr)) = (e.restart_s, m.restart_s) {
            out.push((
                format!("{} keys: restart time ≤ etcd's", load_keys(loads)),
                format!("{mr:.2} s vs {er:.2} s"),
                mr <= er,
            ));
        }
    }
    out
}

/// The two colours of the plot: etcd and Mast.
const ETCD_COLOUR: RGBColor = RGBColor(0x41, 0x9e, 0xda);
const MAST_COLOUR: RGBColor = RGBColor(0xe0, 0x6c, 0x2b);

/// Draws grouped bars, etcd beside Mast per workload: throughput on top, p99 below, both on a
/// log scale (the workloads differ by orders of magnitude).
fn draw_plot(rows: &[Row], path: &Path) -> anyhow::Result<()> {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.etcd.is_some() || r.mast.is_some())
        .collect();
    let n = rows.len().max(1);
    let width = (160 * n as u32).clamp(640, 1800);
    let root = SVGBackend::new(path, (width, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    type Metric = (&'static str, fn(&Report) -> f64);
    let panels: [(&DrawingArea<SVGBackend, plotters::coord::Shift>, Metric); 2] = [
        (
            &top,
            ("throughput (ops/s, log scale)", |r: &Report| r.ops_per_sec),
        ),
        (
            &bottom,
            ("p99 latency (ms, log scale)", |r: &Report| {
                r.latency_ms.p99_ms
            }),
        ),
    ];
    for (area, (title, metric)) in panels {
        let values: Vec<f64> = rows
            .iter()
            .flat_map(|r| [&r.etcd, &r.mast])
            .filter_map(|s| s.as_ref().map(|(rep, _)| metric(rep)))
            .filter(|v| *v > 0.0 && v.is_finite())
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(0.0f64, f64::max);
        let (lo, hi) = if values.is_empty() {
            (0.1, 10.0)
        } else {
            (lo / 3.0, hi * 3.0)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(if title.starts_with("throughput") {
                "ops/s"
            } else {
                "ms"
            })
            .y_label_formatter(&|v| {
                if *v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                }
            })
            .label_style(("sans-serif", 12))
            .draw()?;
        for (side, colour, name) in [(0usize, ETCD_COLOUR, "etcd"), (1, MAST_COLOUR, "Mast")] {
            let bars: Vec<Rectangle<(f64, f64)>> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let rep = if side == 0 { &r.etcd } else { &r.mast };
                    let v = metric(&rep.as_ref()?.0);
                    (v > 0.0).then(|| {
                        let x0 = i as f64 + 0.12 + side as f64 * 0.38;
                        Rectangle::new([(x0, lo), (x0 + 0.36, v)], colour.filled())
                    })
                })
                .collect();
            chart.draw_series(bars)?.label(name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
            });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 13))
            .draw()?;
        // Workload names under their bars, in pixels of the panel.
        for (i, r) in rows.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, lo));
            let (ox, oy) = area.get_base_pixel();
            let style = TextStyle::from(("sans-serif", 12).into_font()).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                ),
            );
            area.draw(&Text::new(r.label.clone(), (px - ox, py - oy + 8), style))?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Latency, WatchStats};

    fn report(workload: &str, ops_per_sec: f64, p99: f64) -> Report {
        let mut r = Report::new(
            workload,
            (ops_per_sec * 10.0) as u64,
            0,
            std::time::Duration::from_secs(10),
            Latency {
                count: 10,
                p50_ms: p99 / 2.0,
                p99_ms: p99,
                max_ms: p99 * 2.0,
                ..Latency::default()
            },
        );
        r.params.insert("clients".into(), 100.into());
        if workload == "watch" {
            r.watch = Some(WatchStats {
                watchers: 10,
                events_expected: 100,
                events_received: 100,
                ..WatchStats::default()
            });
        }
        r
    }

    #[test]
    fn builds_markdown_and_plot_from_a_results_dir() {
        let dir =
            std::env::temp_dir().join(format!("mast-bench-report-test-{}", std::process::id()));
        let runs = dir.join("runs");
        std::fs::create_dir_all(&runs).unwrap();
        let write = |name: &str, r: &Report| {
            std::fs::write(runs.join(name), serde_json::to_string(r).unwrap()).unwrap();
        };
        write("01-put.etcd.json", &report("put", 5000.0, 20.0));
        write("01-put.mast.json", &report("put", 12000.0, 8.0));
        std::fs::write(
            runs.join("01-put.etcd.proc.json"),
            r#"{"cpu_s": 4.0, "rss_kb": 40960, "fsyncs": 1000}"#,
        )
        .unwrap();
        write("02-watch.etcd.json", &report("watch", 100.0, 2.0));
        write("02-watch.mast.json", &report("watch", 100.0, 1.0));
        std::fs::write(
            dir.join("meta.json"),
            r#"{"cpu": "test cpu", "scale": "small"}"#,
        )
        .unwrap();
        std::fs::write(dir.join("commands.txt"), "mast-bench put --clients 100\n").unwrap();
        let out = dir.join("BENCHMARKS.md");
        let notes = dir.join("notes.md");
        std::fs::write(&notes, "## Notes\n\nhand-written\n").unwrap();
        run(&ReportArgs {
            results: dir.clone(),
            out: out.clone(),
            plot: None,
            include: vec![dir.join("missing.md"), notes.clone()],
        })
        .unwrap();
        let md = std::fs::read_to_string(&out).unwrap();
        let wrapped = format!(
            "<!-- include: {n} -->\n## Notes\n\nhand-written\n<!-- end include: {n} -->",
            n = notes.display()
        );
        assert!(md.contains(&wrapped), "{md}");
        assert!(md.contains("| put |"), "{md}");
        assert!(md.contains("2.40×"), "{md}");
        assert!(md.contains("test cpu"));
        assert!(md.contains("mast-bench put --clients 100"));
        assert!(
            md.contains("put throughput ≥ 2× etcd | 2.400× | yes"),
            "{md}"
        );
        assert!(md.contains("| 50.0 |"), "etcd writes per fsync: {md}");
        let svg = std::fs::read_to_string(dir.join("benchmarks.svg")).unwrap();
        assert!(svg.starts_with("<svg") || svg.contains("<svg"), "{svg}");
        assert!(svg.contains("watch"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
