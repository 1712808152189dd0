//! What a run measures and how it is printed: HDR latency histograms, the [`Report`] every
//! workload returns, and its human table.
//!
//! Latencies are recorded in microseconds in an [`hdrhistogram::Histogram`] (3 significant
//! digits, 1 µs to 1 hour), one histogram per client task, merged at the end so the hot path
//! takes no lock. Reports carry milliseconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A latency histogram in microseconds.
#[derive(Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty histogram covering 1 µs to 1 hour with 3 significant digits.
    pub fn new() -> Recorder {
        Recorder {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
        }
    }

    /// Records one latency (values past an hour saturate).
    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one latency given in microseconds.
    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Recorder) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The percentiles, in milliseconds.
    pub fn summary(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.hist.is_empty() {
            return Latency::default();
        }
        Latency {
            count: self.hist.len(),
            mean_ms: self.hist.mean() / 1000.0,
            p50_ms: ms(self.hist.value_at_quantile(0.50)),
            p90_ms: ms(self.hist.value_at_quantile(0.90)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            p999_ms: ms(self.hist.value_at_quantile(0.999)),
            max_ms: ms(self.hist.max()),
        }
    }
}

/// CPU seconds (user + system, all threads) this process has used so far, from
/// `/proc/self/stat`; `None` where there is no such file. Linux reports those times in ticks of
/// `USER_HZ`, which its ABI fixes at 100 per second.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Latency percentiles in milliseconds (HDR histogram, 3 significant digits).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Number of values.
    pub count: u64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

/// What watchers saw: every event expected, which arrived, and how long after the write was
/// acknowledged (write response received → event received, clamped at 0 when the event beats
/// the response).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WatchStats {
    /// Watchers that were created.
    pub watchers: u64,
    /// Watchers × acknowledged writes each of them should see.
    pub events_expected: u64,
    /// Distinct (watcher, write) events received.
    pub events_received: u64,
    /// Expected events that never arrived.
    pub missing: u64,
    /// Events received more than once by the same watcher.
    pub duplicates: u64,
    /// Events that arrived before the writer had its response.
    pub before_ack: u64,
    /// Delivery latency: write acknowledged → event received.
    pub delivery_ms: Latency,
    /// End-to-end latency: write sent → event received.
    #[serde(default)]
    pub end_to_end_ms: Latency,
}

/// One named sub-measurement of a mixed workload (grants, keepalives, config fan-out, ...).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Part {
    /// What was measured.
    pub name: String,
    /// Requests answered.
    pub ops: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Request latency, when the part is made of requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Latency>,
    /// Event delivery, when the part is made of watchers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchStats>,
}

/// The result of one run: what `--json` prints and what `report` reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Workload name (`put`, `range`, `watch`, ...).
    pub workload: String,
    /// Endpoints driven.
    pub endpoints: Vec<String>,
    /// Every parameter that shaped the run.
    pub params: BTreeMap<String, Value>,
    /// Requests answered successfully.
    pub ops: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Wall time of the measured phase, in seconds.
    pub duration_s: f64,
    /// `ops / duration_s`.
    pub ops_per_sec: f64,
    /// Request latency.
    pub latency_ms: Latency,
    /// Event delivery, for workloads with watchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchStats>,
    /// Sub-measurements of mixed workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    /// Workload-specific numbers (fsync rate, ready time, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
    /// The first error seen, verbatim, when there were errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Report {
    /// A report for `workload` with throughput computed from `ops` over `elapsed`.
    pub fn new(
        workload: &str,
        ops: u64,
        errors: u64,
        elapsed: Duration,
        latency: Latency,
    ) -> Report {
        let secs = elapsed.as_secs_f64();
        Report {
            workload: workload.to_string(),
            ops,
            errors,
            duration_s: secs,
            ops_per_sec: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            latency_ms: latency,
            ..Report::default()
        }
    }

    /// Renders the report as an aligned two-column table for a terminal.
    pub fn to_table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        rows.push(("workload".into(), self.workload.clone()));
        rows.push(("endpoints".into(), self.endpoints.join(",")));
        let params: Vec<String> = self
            .params
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s:?}"),
                other => format!("{k}={other}"),
            })
            .collect();
        rows.push(("params".into(), params.join(" ")));
        rows.push(("ops".into(), self.ops.to_string()));
        rows.push(("errors".into(), self.errors.to_string()));
        rows.push(("duration".into(), format!("{:.3} s", self.duration_s)));
        rows.push((
            "throughput".into(),
            format!("{:.1} ops/s", self.ops_per_sec),
        ));
        rows.push(("latency (ms)".into(), latency_line(&self.latency_ms)));
        if let Some(w) = &self.watch {
            push_watch(&mut rows, "", w);
        }
        for part in &self.parts {
            let p = &part.name;
            if let Some(l) = &part.latency_ms {
                rows.push((
                    format!("{p}: ops"),
                    format!("{} (errors {})", part.ops, part.errors),
                ));
                rows.push((format!("{p}: latency (ms)"), latency_line(l)));
            }
            if let Some(w) = &part.watch {
                push_watch(&mut rows, &format!("{p}: "), w);
            }
        }
        for (k, v) in &self.extra {
            rows.push((k.clone(), v.to_string()));
        }
        if let Some(e) = &self.first_error {
            rows.push(("first error".into(), e.clone()));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        out
    }
}

fn push_watch(rows: &mut Vec<(String, String)>, prefix: &str, w: &WatchStats) {
    rows.push((
        format!("{prefix}events"),
        format!(
            "watchers {} expected {} received {} missing {} duplicates {} before-ack {}",
            w.watchers, w.events_expected, w.events_received, w.missing, w.duplicates, w.before_ack
        ),
    ));
    rows.push((
        format!("{prefix}delivery (ms)"),
        latency_line(&w.delivery_ms),
    ));
}

fn latency_line(l: &Latency) -> String {
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut r = Recorder::new();
        for us in 1..=1000u64 {
            r.record_us(us * 10);
        }
        let s = r.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
        if cfg!(target_os = "linux") {
            let cpu = process_cpu_seconds().expect("/proc/self/stat");
            assert!((0.0..1e6).contains(&cpu), "{cpu}");
        }
        let mut total = Recorder::new();
        total.merge(&r);
        total.merge(&r);
        assert_eq!(total.count(), 2000);
    }

    #[test]
    fn report_round_trips_through_json() {
        let mut r = Report::new("put", 10, 0, Duration::from_secs(2), Latency::default());
        r.watch = Some(WatchStats {
            watchers: 1,
            ..WatchStats::default()
        });
        assert_eq!(r.ops_per_sec, 5.0);
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert!(r.to_table().contains("throughput"));
    }
}
