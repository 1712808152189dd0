//! The workloads, one module each, and what they share: the common flags, the connections and
//! progress bar of a run ([`Ctx`]), and how keys and values are made.
//!
//! Keys are a prefix followed by a zero-padded decimal number, padded so the whole key is at
//! least `--key-size` bytes (`00001234` for 8-byte keys with no prefix). Consecutive numbers
//! are consecutive keys in byte order, so a range `[key(i), key(i + n))` holds exactly `n`
//! keys: that is how range scans and watches on a prefix find what the writers wrote.

pub mod kv;
pub mod lease;
pub mod registry;
pub mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use mast_proto::etcdserverpb::kv_client::KvClient;
use mast_proto::etcdserverpb::lease_client::LeaseClient;
use mast_proto::etcdserverpb::watch_client::WatchClient;
use serde_json::Value;
use tonic::transport::Channel;

use crate::driver::{Budget, Progress};
use crate::endpoint::{self, Target};
use crate::stats::Report;
use crate::unary::KvConn;

/// Largest response a client accepts (range scans over many keys).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Flags every network workload takes, named as etcd's `benchmark` tool names them.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Comma-separated endpoints (`host:port` or `http://host:port`).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// gRPC connections (HTTP/2) to open; clients share them round-robin.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Concurrent clients, each with one request outstanding.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Requests to issue (default: as many as fit in --duration, or a per-workload count).
    #[arg(long)]
    pub total: Option<u64>,
    /// How long to run (`10s`, `500ms`, `2m`; a bare number is seconds).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print one JSON object instead of a table (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Allow endpoints outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_non_loopback: bool,
}

impl Common {
    /// The request budget, with `default_total` when neither --total nor --duration is given.
    pub fn budget(&self, default_total: u64) -> Budget {
        match (self.total, self.duration) {
            (None, None) => Budget::count(default_total),
            (total, duration) => Budget { total, duration },
        }
    }
}

/// Parses `10s`, `250ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("{s}: not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s}: unit must be ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s}: not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What one run holds: where it goes, its connections, its progress bar.
pub struct Ctx {
    /// The flags.
    pub common: Common,
    /// The checked endpoints.
    pub targets: Vec<Target>,
    /// One tonic channel per connection (runs opened with [`Ctx::open`]).
    pub channels: Vec<Channel>,
    /// One lean unary connection per connection (runs opened with [`Ctx::open_kv`]).
    pub kv: Vec<KvConn>,
    /// The progress bar (hidden with --json).
    pub progress: Progress,
}

impl Ctx {
    /// Checks the endpoints and opens `--conns` tonic channels, for workloads with streams
    /// (watch, lease keepalive, registry).
    pub async fn open(common: &Common, label: &str, total: Option<u64>) -> anyhow::Result<Ctx> {
        let targets = endpoint::parse_endpoints(&common.endpoints, common.allow_non_loopback)?;
        let channels = endpoint::connect_all(&targets, common.conns).await?;
        Ok(Ctx {
            common: common.clone(),
            targets,
            channels,
            kv: Vec::new(),
            progress: Progress::new(!common.json, label, total),
        })
    }

    /// Checks the endpoints and opens `--conns` lean unary connections ([`KvConn`]), for the
    /// KV workloads (put, range, txn-put, load).
    pub async fn open_kv(common: &Common, label: &str, total: Option<u64>) -> anyhow::Result<Ctx> {
        let targets = endpoint::parse_endpoints(&common.endpoints, common.allow_non_loopback)?;
        let mut kv = Vec::with_capacity(common.conns.max(1));
        for i in 0..common.conns.max(1) {
            kv.push(KvConn::connect(&targets[i % targets.len()], Duration::from_secs(5)).await?);
        }
        Ok(Ctx {
            common: common.clone(),
            targets,
            channels: Vec::new(),
            kv,
            progress: Progress::new(!common.json, label, total),
        })
    }

    /// The channel client (or stream) number `i` uses (a run opened with [`Ctx::open`]).
    pub fn channel(&self, i: usize) -> Channel {
        assert!(
            !self.channels.is_empty(),
            "Ctx::channel needs a run opened with Ctx::open"
        );
        self.channels[i % self.channels.len()].clone()
    }

    /// A KV connection per concurrent client, round-robin over the run's connections (a run
    /// opened with [`Ctx::open_kv`]).
    pub fn kv_clients(&self, n: usize) -> Vec<KvConn> {
        assert!(
            !self.kv.is_empty(),
            "Ctx::kv_clients needs a run opened with Ctx::open_kv"
        );
        (0..n.max(1))
            .map(|i| self.kv[i % self.kv.len()].clone())
            .collect()
    }

    /// A report of `workload` with this run's endpoints and the common parameters filled in.
    pub fn report(&self, mut report: Report, params: BTreeMap<String, Value>) -> Report {
        report.endpoints = self.targets.iter().map(|t| t.label.clone()).collect();
        report.params = params;
        report
            .params
            .insert("conns".into(), self.common.conns.into());
        report
            .params
            .insert("clients".into(), self.common.clients.into());
        if let Some(cpu) = crate::stats::process_cpu_seconds() {
            report.extra.insert("client_cpu_s".into(), cpu.into());
        }
        self.progress.finish();
        report
    }
}

/// A KV client that accepts large responses.
pub fn kv_client(ch: Channel) -> KvClient<Channel> {
    KvClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

/// A Watch client that accepts large responses.
pub fn watch_client(ch: Channel) -> WatchClient<Channel> {
    WatchClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

/// A Lease client.
pub fn lease_client(ch: Channel) -> LeaseClient<Channel> {
    LeaseClient::new(ch).max_decoding_message_size(MAX_MESSAGE)
}

/// Key number `n`: `prefix` then `n` in decimal, zero-padded to make at least `key_size` bytes.
pub fn key(prefix: &[u8], n: u64, key_size: usize) -> Bytes {
    let width = key_size.saturating_sub(prefix.len()).max(1);
    let mut k = Vec::with_capacity(prefix.len() + width);
    k.extend_from_slice(prefix);
    k.extend_from_slice(format!("{n:0width$}").as_bytes());
    Bytes::from(k)
}

/// The end of the range that holds every key starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    // All 0xff (or empty): every key from the prefix on, as etcd's "\0".
    Bytes::from_static(b"\0")
}

/// A value of `size` bytes (printable, the same for every write: neither server compresses).
pub fn value(size: usize) -> Bytes {
    let pattern = b"mast-bench-value-";
    Bytes::from(
        (0..size)
            .map(|i| pattern[i % pattern.len()])
            .collect::<Vec<u8>>(),
    )
}

/// Collects `k = v` pairs into a parameter map.
pub fn params<const N: usize>(pairs: [(&str, Value); N]) -> BTreeMap<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Turns a gRPC failure into an error naming the request.
pub fn rpc_err(what: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {} ({:?})", status.message(), status.code())
}

/// Polls `Range` until the endpoint answers or `timeout` passes; returns how long it took.
pub async fn wait_ready(target: &Target, timeout: Duration) -> anyhow::Result<Duration> {
    let start = std::time::Instant::now();
    let mut last_err = String::from("no attempt");
    while start.elapsed() < timeout {
        let attempt = async {
            let ch = endpoint::connect(target, Duration::from_millis(500)).await?;
            kv_client(ch)
                .range(mast_proto::etcdserverpb::RangeRequest {
                    key: Bytes::from_static(b"mast-bench/ready"),
                    ..Default::default()
                })
                .await
                .map_err(|s| rpc_err("range", s))?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(())) => return Ok(start.elapsed()),
            Ok(Err(e)) => last_err = format!("{e:#}"),
            Err(_) => last_err = "range timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(anyhow::anyhow!(last_err)).context(format!(
        "{} did not answer a range within {timeout:?}",
        target.label
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_and_ordered() {
        assert_eq!(&key(b"", 1234, 8)[..], b"00001234");
        assert_eq!(&key(b"/w/", 7, 8)[..], b"/w/00007");
        assert_eq!(&key(b"/long-prefix/", 7, 8)[..], b"/long-prefix/7");
        assert!(key(b"", 99, 8) < key(b"", 100, 8));
    }

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(&prefix_end(b"/a/")[..], b"/a0");
        assert_eq!(&prefix_end(b"a\xff")[..], b"b");
        assert_eq!(&prefix_end(b"\xff")[..], b"\0");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn values_have_the_size_asked() {
        assert_eq!(value(256).len(), 256);
        assert_eq!(value(0).len(), 0);
    }
}
