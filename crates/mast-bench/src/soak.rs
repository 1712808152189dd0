//! `soak-report`: the soak section of BENCHMARKS.md (`benchmarks/soak.md`) and its plot, from
//! the results of `scripts/soak.sh`.
//!
//! The run directory holds `max.json` (the `watch` run, puts as fast as they go, that measured
//! the maximum throughput under the soak's mix), `lease.json` (the lease keepalive run that lasted the whole soak), and per
//! window `window-NNN.json` (a `watch` run: puts at the soak rate, watchers matching every
//! event) with `window-NNN.proc.json` (`{"t_s", "rss_kb", "cpu_s", "heap_kb"}` of the server,
//! sampled at the window's end; `heap_kb` is the allocator's live heap from `/metrics`, which
//! tells growth of what the server holds from growth of what the allocator keeps).
//!
//! The verdict follows issue 18: RSS flat (less than 10 % growth from the end of the warm-up to
//! the largest sample after it), p99 steady (each window's p99 against the median window's),
//! and no error: no failed put, no missing watch event, no failed keepalive.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;
use serde::Deserialize;

use crate::stats::Report;

/// Flags of `soak-report`.
#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// The directory `scripts/soak.sh` wrote its results to.
    #[arg(long)]
    pub results: PathBuf,
    /// The Markdown section to write.
    #[arg(long, default_value = "benchmarks/soak.md")]
    pub out: PathBuf,
    /// The SVG plot to write (default: `soak.svg` beside --out).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Minutes of warm-up before RSS growth is measured.
    #[arg(long, default_value_t = 5.0)]
    pub warmup_min: f64,
}

/// A server sample taken at a window's end.
#[derive(Debug, Clone, Deserialize)]
struct Proc {
    /// Seconds since the soak started.
    t_s: f64,
    /// Resident set size, KiB (`VmRSS`).
    rss_kb: u64,
    /// CPU time used by the server since it started, seconds.
    #[serde(default)]
    cpu_s: f64,
    /// Bytes in live allocations as the server's allocator counts them, KiB
    /// (`mast_allocator_allocated_bytes` / 1024); absent when the server exports none.
    #[serde(default)]
    heap_kb: Option<u64>,
}

/// One window: its load report and the server sample at its end.
#[derive(Debug, Clone)]
struct Window {
    report: Report,
    proc: Proc,
}

/// What the soak showed, as the verdict lines print it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// RSS growth after warm-up, percent.
    pub rss_growth_pct: f64,
    /// Largest window p99 over the median window p99 (puts).
    pub p99_spread: f64,
    /// Failed puts, missing events and failed keepalives, summed.
    pub errors: u64,
}

impl Verdict {
    /// Whether the soak met issue 18's bar.
    pub fn passed(&self) -> bool {
        self.rss_growth_pct < 10.0 && self.errors == 0
    }
}

fn read_report(path: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
}

fn windows(dir: &Path) -> anyhow::Result<Vec<Window>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("window-") && n.ends_with(".json") && !n.ends_with(".proc.json"))
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let report = read_report(&dir.join(&n))?;
        let proc_path = dir.join(n.replace(".json", ".proc.json"));
        let text = std::fs::read_to_string(&proc_path)
            .with_context(|| format!("{}", proc_path.display()))?;
        let proc: Proc =
            serde_json::from_str(&text).with_context(|| format!("{}", proc_path.display()))?;
        out.push(Window { report, proc });
    }
    anyhow::ensure!(!out.is_empty(), "no window-NNN.json in {}", dir.display());
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn missing(r: &Report) -> u64 {
    r.watch.as_ref().map_or(0, |w| w.missing)
}

fn delivery_p99(r: &Report) -> f64 {
    r.watch.as_ref().map_or(0.0, |w| w.delivery_ms.p99_ms)
}

/// Computes the verdict of `windows` with `warmup_s` seconds of warm-up.
fn verdict(windows: &[Window], lease: Option<&Report>, warmup_s: f64) -> Verdict {
    let base = windows
        .iter()
        .find(|w| w.proc.t_s >= warmup_s)
        .unwrap_or(&windows[windows.len() - 1]);
    let peak = windows
        .iter()
        .filter(|w| w.proc.t_s >= base.proc.t_s)
        .map(|w| w.proc.rss_kb)
        .max()
        .unwrap_or(base.proc.rss_kb);
    let rss_growth_pct = if base.proc.rss_kb == 0 {
        0.0
    } else {
        (peak as f64 - base.proc.rss_kb as f64) * 100.0 / base.proc.rss_kb as f64
    };
    let p99s: Vec<f64> = windows.iter().map(|w| w.report.latency_ms.p99_ms).collect();
    let med = median(p99s.clone());
    let max = p99s.iter().copied().fold(0.0, f64::max);
    let errors = windows
        .iter()
        .map(|w| w.report.errors + missing(&w.report))
        .sum::<u64>()
        + lease.map_or(0, |l| l.errors);
    Verdict {
        rss_growth_pct,
        p99_spread: if med > 0.0 { max / med } else { 0.0 },
        errors,
    }
}

fn mark(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

/// Writes the section and the plot; returns the verdict.
///
/// # Errors
/// When the results cannot be read or the files cannot be written.
pub fn run(args: &SoakArgs) -> anyhow::Result<Verdict> {
    let windows = windows(&args.results)?;
    let max = read_report(&args.results.join("max.json")).ok();
    let lease = read_report(&args.results.join("lease.json")).ok();
    let meta: serde_json::Value = std::fs::read_to_string(args.results.join("meta.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let v = verdict(&windows, lease.as_ref(), args.warmup_min * 60.0);
    let plot = args
        .plot
        .clone()
        .unwrap_or_else(|| args.out.parent().unwrap_or(Path::new(".")).join("soak.svg"));
    draw(&windows, &plot)?;

    let last = &windows[windows.len() - 1];
    let minutes = last.proc.t_s / 60.0;
    let puts: u64 = windows.iter().map(|w| w.report.ops).sum();
    let rate = windows
        .first()
        .and_then(|w| w.report.params.get("put_rate"))
        .and_then(|r| r.as_f64())
        .unwrap_or(0.0);
    let watchers = windows
        .first()
        .and_then(|w| w.report.params.get("watchers"))
        .cloned()
        .unwrap_or_default();
    let leases = lease
        .as_ref()
        .and_then(|l| l.params.get("leases"))
        .cloned()
        .unwrap_or_default();
    let mut md = String::new();
    md.push_str("## Soak\n\n");
    md.push_str(&format!(
        "`bash scripts/soak.sh` ({}): {minutes:.0} minutes of puts at {rate:.0}/s — half of the \
         {:.0} puts/s the same server took just before under the same mix, as fast as 256 puts \
         in flight allowed — with {watchers} watchers matching every event and {leases} leases \
         kept alive throughout, compacted after every window; {puts} puts in all. Release \
         build, one member, data on this machine's disk, load generator on the same two cores, \
         everything on loopback.\n\n",
        meta.get("when")
            .and_then(|w| w.as_str())
            .unwrap_or("date not recorded"),
        max.as_ref().map_or(0.0, |m| m.ops_per_sec),
    ));
    md.push_str("| check | result | bar | met |\n|---|---:|---|---|\n");
    md.push_str(&format!(
        "| RSS growth after {:.0} min warm-up (largest sample vs first after warm-up) | {:.1} % | < 10 % | {} |\n",
        args.warmup_min,
        v.rss_growth_pct,
        mark(v.rss_growth_pct < 10.0)
    ));
    md.push_str(&format!(
        "| largest window put p99 / median window put p99 | {:.2}× | steady | {} |\n",
        v.p99_spread,
        mark(v.p99_spread < 3.0)
    ));
    md.push_str(&format!(
        "| errors (failed puts + missing watch events + failed keepalives) | {} | 0 | {} |\n\n",
        v.errors,
        mark(v.errors == 0)
    ));
    // The section is read inside BENCHMARKS.md at the repository root, the plot beside it in
    // benchmarks/.
    md.push_str(&format!(
        "![RSS and p99 over the soak](benchmarks/{})\n\n",
        plot.file_name()
            .map_or("soak.svg".into(), |n| n.to_string_lossy().into_owned())
    ));
    md.push_str(
        "| minute | puts/s | put p50 ms | put p99 ms | delivery p99 ms | RSS MiB | live heap MiB | server CPU % | errors | missing |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut prev_cpu = 0.0;
    let mut prev_t = 0.0;
    for w in &windows {
        let dt = w.proc.t_s - prev_t;
        let cpu = if dt > 0.0 {
            (w.proc.cpu_s - prev_cpu) * 100.0 / dt
        } else {
            0.0
        };
        prev_cpu = w.proc.cpu_s;
        prev_t = w.proc.t_s;
        md.push_str(&format!(
            "| {:.1} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.0} | {} | {} |\n",
            w.proc.t_s / 60.0,
            w.report.ops_per_sec,
            w.report.latency_ms.p50_ms,
            w.report.latency_ms.p99_ms,
            delivery_p99(&w.report),
            w.proc.rss_kb as f64 / 1024.0,
            w.proc
                .heap_kb
                .map_or("—".to_string(), |kb| format!("{:.1}", kb as f64 / 1024.0)),
            cpu,
            w.report.errors,
            missing(&w.report)
        ));
    }
    if let Some(l) = &lease {
        md.push_str(&format!(
            "\nLease keepalives over the whole soak: {} answered, {} failed, p99 {:.2} ms.\n",
            l.ops, l.errors, l.latency_ms.p99_ms
        ));
    }
    if let Some(cmds) = meta.get("commands").and_then(|c| c.as_str()) {
        md.push_str(&format!("\n```sh\n{}\n```\n", cmds.trim_end()));
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, md).with_context(|| format!("{}", args.out.display()))?;
    Ok(v)
}

/// RSS and the allocator's live heap (top), the put and delivery p99 (bottom) over the soak's
/// minutes.
fn draw(windows: &[Window], path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(300);
    let end = windows.last().map_or(1.0, |w| w.proc.t_s / 60.0).max(1.0);
    let series = |f: &dyn Fn(&Window) -> Option<f64>| -> Vec<(f64, f64)> {
        windows
            .iter()
            .filter_map(|w| f(w).map(|y| (w.proc.t_s / 60.0, y)))
            .collect()
    };
    let mib = |kb: u64| kb as f64 / 1024.0;
    panel(
        &top,
        end,
        ("server memory (MiB)", "MiB"),
        [
            ("RSS", series(&|w| Some(mib(w.proc.rss_kb)))),
            ("live heap", series(&|w| w.proc.heap_kb.map(mib))),
        ],
    )?;
    panel(
        &bottom,
        end,
        ("p99 latency per window (ms)", "ms"),
        [
            ("put", series(&|w| Some(w.report.latency_ms.p99_ms))),
            ("watch delivery", series(&|w| Some(delivery_p99(&w.report)))),
        ],
    )?;
    root.present()?;
    Ok(())
}

/// One chart of two labelled lines against minutes 0..`end`.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    end: f64,
    (caption, unit): (&str, &str),
    lines: [(&str, Vec<(f64, f64)>); 2],
) -> anyhow::Result<()> {
    let hi = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..end, 0f64..hi)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc(unit)
        .label_style(("sans-serif", 12))
        .draw()?;
    let colours = [RGBColor(0xe0, 0x6c, 0x2b), RGBColor(0x41, 0x9e, 0xda)];
    for ((label, points), colour) in lines.into_iter().zip(colours) {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(t_s: f64, rss_kb: u64, p99: f64, errors: u64) -> Window {
        let mut report = Report::new(
            "watch",
            1000,
            errors,
            std::time::Duration::from_secs(60),
            crate::stats::Latency::default(),
        );
        report.latency_ms.p99_ms = p99;
        Window {
            report,
            proc: Proc {
                t_s,
                rss_kb,
                cpu_s: t_s / 2.0,
                heap_kb: Some(rss_kb / 2),
            },
        }
    }

    #[test]
    fn growth_is_measured_from_the_end_of_the_warm_up() {
        // Growth during warm-up does not count; after it, the largest sample does.
        let w = vec![
            window(60.0, 10_000, 2.0, 0),
            window(120.0, 50_000, 2.0, 0),
            window(180.0, 54_000, 4.0, 0),
            window(240.0, 52_000, 2.0, 0),
        ];
        let v = verdict(&w, None, 120.0);
        assert!((v.rss_growth_pct - 8.0).abs() < 1e-9, "{v:?}");
        assert!((v.p99_spread - 2.0).abs() < 1e-9, "{v:?}");
        assert!(v.passed());
        let v = verdict(&w, None, 0.0);
        assert!(v.rss_growth_pct > 400.0);
        assert!(!v.passed());
    }

    #[test]
    fn any_error_fails_the_soak() {
        let w = vec![window(60.0, 10_000, 2.0, 0), window(120.0, 10_000, 2.0, 1)];
        let v = verdict(&w, None, 0.0);
        assert_eq!(v.errors, 1);
        assert!(!v.passed());
    }

    #[test]
    fn writes_the_section_and_the_plot() {
        let dir = tempfile::tempdir().unwrap();
        for (i, w) in [window(60.0, 10_000, 2.0, 0), window(120.0, 10_100, 2.5, 0)]
            .iter()
            .enumerate()
        {
            std::fs::write(
                dir.path().join(format!("window-{i:03}.json")),
                serde_json::to_string(&w.report).unwrap(),
            )
            .unwrap();
            std::fs::write(
                dir.path().join(format!("window-{i:03}.proc.json")),
                // The first sample as servers without allocator counters wrote it.
                if i == 0 {
                    format!(
                        r#"{{"t_s": {}, "rss_kb": {}, "cpu_s": {}}}"#,
                        w.proc.t_s, w.proc.rss_kb, w.proc.cpu_s
                    )
                } else {
                    format!(
                        r#"{{"t_s": {}, "rss_kb": {}, "cpu_s": {}, "heap_kb": 5120}}"#,
                        w.proc.t_s, w.proc.rss_kb, w.proc.cpu_s
                    )
                },
            )
            .unwrap();
        }
        let out = dir.path().join("soak.md");
        let v = run(&SoakArgs {
            results: dir.path().to_path_buf(),
            out: out.clone(),
            plot: None,
            warmup_min: 0.0,
        })
        .unwrap();
        assert!(v.passed());
        let md = std::fs::read_to_string(&out).unwrap();
        assert!(md.contains("| 1.0 |") && md.contains("| 2.0 |"), "{md}");
        assert!(md.contains("1.0 %"), "{md}");
        assert!(
            md.contains("| 9.8 | — |") && md.contains("| 9.9 | 5.0 |"),
            "{md}"
        );
        let svg = std::fs::read_to_string(dir.path().join("soak.svg")).unwrap();
        assert!(svg.contains("<svg"));
    }
}
