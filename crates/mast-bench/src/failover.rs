//! `failover`: the time a cluster takes to take writes again after its leader is killed.
//!
//! The tool finds the leader (`Status` on every member), puts load on the other members
//! (`--writers` sequential writers on each), kills the leader's process with `kill -9` after
//! `--warmup`, and measures from just before the kill to the acknowledgement of the first write
//! *sent after* the kill: a write sent before it may have been committed by the old leader and
//! says nothing about the new one. The same tool, the same way, measures etcd and Mast.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use mast_proto::etcdserverpb::{PutRequest, StatusRequest, maintenance_client::MaintenanceClient};

use crate::endpoint;
use crate::stats::{Latency, Report};
use crate::unary::KvConn;

/// Flags of `failover`.
#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// The members' client endpoints, comma-separated.
    #[arg(long)]
    pub endpoints: String,
    /// The members' process IDs, in the order of `--endpoints`.
    #[arg(long)]
    pub pids: String,
    /// Sequential writers on each member that is not the leader.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Load before the kill.
    #[arg(long, default_value = "2s", value_parser = crate::workload::parse_duration)]
    pub warmup: Duration,
    /// Give up when no write is acknowledged this long after the kill.
    #[arg(long, default_value = "30s", value_parser = crate::workload::parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Allow endpoints outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_non_loopback: bool,
}

/// Finds the leader, loads the others, kills the leader and measures until the next write.
///
/// # Errors
/// When the endpoints cannot be reached, no leader is found, the kill fails, or no write is
/// acknowledged within `--timeout` of the kill.
pub async fn failover(args: FailoverArgs) -> anyhow::Result<Report> {
    let targets = endpoint::parse_endpoints(&args.endpoints, args.allow_non_loopback)?;
    let pids: Vec<u32> = args
        .pids
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        pids.len() == targets.len(),
        "--pids must name one PID per endpoint"
    );
    let mut ids = Vec::new();
    let mut leader = 0u64;
    for t in &targets {
        let ch = endpoint::connect(t, Duration::from_secs(5)).await?;
        let s = MaintenanceClient::new(ch)
            .status(StatusRequest::default())
            .await?
            .into_inner();
        ids.push(s.header.map_or(0, |h| h.member_id));
        if s.leader != 0 {
            leader = s.leader;
        }
    }
    let victim = ids.iter().position(|id| *id == leader).ok_or_else(|| {
        anyhow::anyhow!("no member leads (member IDs {ids:x?}, leader {leader:x})")
    })?;

    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let first_after: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        if i == victim {
            continue;
        }
        for w in 0..args.writers {
            let conn = KvConn::connect(t, Duration::from_secs(5)).await?;
            let (killed_at, first_after, stop, acked) = (
                killed_at.clone(),
                first_after.clone(),
                stop.clone(),
                acked.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let sent = Instant::now();
                    let req = PutRequest {
                        key: format!("failover/{i}/{w}/{n}").into_bytes().into(),
                        value: bytes::Bytes::from_static(b"x"),
                        ..Default::default()
                    };
                    let ok = matches!(
                        tokio::time::timeout(Duration::from_secs(2), conn.put(req)).await,
                        Ok(Ok(_))
                    );
                    if ok {
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if killed_at.lock().expect("lock").is_some_and(|k| sent >= k) {
                            first_after
                                .lock()
                                .expect("lock")
                                .get_or_insert_with(Instant::now);
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }));
        }
    }
    tokio::time::sleep(args.warmup).await;
    let before = acked.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(before > 0, "no write was acknowledged before the kill");
    let kill = Instant::now();
    *killed_at.lock().expect("lock") = Some(kill);
    let status = std::process::Command::new("kill")
        .args(["-9", &pids[victim].to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -9 {} failed", pids[victim]);
    let deadline = kill + args.timeout;
    let took = loop {
        if let Some(t) = *first_after.lock().expect("lock") {
            break t - kill;
        }
        if Instant::now() >= deadline {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            anyhow::bail!(
                "no write acknowledged within {:?} of the kill",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let mut report = Report::new("failover", 1, 0, took, Latency::default());
    report.endpoints = targets.iter().map(|t| t.label.clone()).collect();
    report
        .params
        .insert("writers".into(), serde_json::json!(args.writers));
    report.extra.insert(
        "failover_ms".into(),
        serde_json::json!(took.as_secs_f64() * 1000.0),
    );
    report
        .extra
        .insert("killed".into(), serde_json::json!(victim));
    report
        .extra
        .insert("writes_before_kill".into(), serde_json::json!(before));
    Ok(report)
}
