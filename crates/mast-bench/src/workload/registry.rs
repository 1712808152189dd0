//! The `registry` workload: what a service registry and config center do all day, through the
//! plain etcd API, the way the seeds' `registerService` / `watchService` helpers do it.
//!
//! 1. M watchers follow the services (`/services/<service>/`, spread over `--services`) and K
//!    subscribers follow the config prefix (`/configs/public/DEFAULT_GROUP/`).
//! 2. N instances register: each grants a lease and puts `/services/<service>/<instance>`
//!    (JSON: host, port, weight, metadata) with it.
//! 3. For `--duration`, every instance heartbeats (keeps its lease alive) while configs change
//!    at `--config-rate` per second, each change fanning out to the K subscribers.
//! 4. Every instance deregisters: deletes its key, revokes its lease.
//!
//! Every registration and deregistration must reach every watcher of its service and every
//! config change every subscriber; the report says how many did and how fast.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use mast_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
};
use serde_json::json;

use super::lease::{keep_alive, part};
use super::watch::{Ack, WatchSpec, Watchers, since};
use super::{Common, Ctx, kv_client, lease_client, params, prefix_end, rpc_err, value};
use crate::driver::{Budget, Errors, Outcome, closed_loop, open_loop};
use crate::stats::{Part, Recorder, Report};

/// The prefix config subscribers watch (Nacos' default namespace and group).
const CONFIG_PREFIX: &str = "/configs/public/DEFAULT_GROUP/";

/// Flags of `registry`.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Endpoints, connections, clients, budget, output.
    #[command(flatten)]
    pub common: Common,
    /// Service instances that register and heartbeat.
    #[arg(long, default_value_t = 100)]
    instances: u64,
    /// Services the instances belong to (round-robin).
    #[arg(long, default_value_t = 1)]
    services: u64,
    /// Watchers following the services (spread over them round-robin).
    #[arg(long, default_value_t = 10)]
    watchers: usize,
    /// Config subscribers, all on the config prefix.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Config changes per second while the instances heartbeat.
    #[arg(long, default_value_t = 10.0)]
    config_rate: f64,
    /// Distinct config keys the changes cycle over.
    #[arg(long, default_value_t = 10)]
    configs: u64,
    /// Size of a config value in bytes.
    #[arg(long, default_value_t = 1024)]
    config_size: usize,
    /// Lease TTL of an instance, in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
    /// Time between two heartbeats of one instance (default: TTL / 3).
    #[arg(long, value_parser = super::parse_duration)]
    heartbeat: Option<Duration>,
    /// Watch streams the watchers and subscribers are spread over.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// After the last write, how long to wait for missing events.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    drain_timeout: Duration,
}

/// Runs `registry`.
pub async fn registry(args: RegistryArgs) -> anyhow::Result<Report> {
    let duration = args.common.duration.unwrap_or(Duration::from_secs(10));
    let heartbeat = args
        .heartbeat
        .unwrap_or(Duration::from_secs_f64(args.ttl.max(1) as f64 / 3.0));
    let services = args.services.max(1);
    let clients = args.common.clients.max(1);
    let ctx = Ctx::open(&args.common, "registry", None).await?;
    let epoch = Instant::now();

    // 1. Watchers: groups 0..services are the services, group `services` the configs.
    let config_group = services as usize;
    let mut specs = Vec::with_capacity(args.watchers + args.subscribers);
    for i in 0..args.watchers {
        let prefix = Bytes::from(format!("/services/svc-{}/", i as u64 % services));
        specs.push(WatchSpec {
            range_end: prefix_end(&prefix),
            key: prefix,
            group: i % services as usize,
        });
    }
    let config_prefix = Bytes::from_static(CONFIG_PREFIX.as_bytes());
    for _ in 0..args.subscribers {
        specs.push(WatchSpec {
            key: config_prefix.clone(),
            range_end: prefix_end(&config_prefix),
            group: config_group,
        });
    }
    ctx.progress.phase("watchers", None);
    let watchers = Watchers::start(&ctx.channels, specs, args.streams, epoch).await?;
    let acks: Arc<Mutex<HashMap<i64, Ack>>> = Arc::default();
    let started = Instant::now();

    // 2. Registration.
    ctx.progress.phase("register", Some(args.instances));
    let registered: Arc<Mutex<Vec<(u64, i64)>>> = Arc::default();
    let kvs: Arc<Vec<_>> = Arc::new((0..clients).map(|i| kv_client(ctx.channel(i))).collect());
    let lcs: Arc<Vec<_>> = Arc::new((0..clients).map(|i| lease_client(ctx.channel(i))).collect());
    let ttl = args.ttl;
    let register = {
        let (kvs, lcs, acks, registered) =
            (kvs.clone(), lcs.clone(), acks.clone(), registered.clone());
        closed_loop(
            clients,
            Budget::count(args.instances),
            &ctx.progress,
            move |c, seq| {
                let (mut kv, mut lc) = (kvs[c].clone(), lcs[c].clone());
                let (acks, registered) = (acks.clone(), registered.clone());
                let service = seq % services;
                async move {
                    let lease = lc
                        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                        .await
                        .map_err(|s| rpc_err("lease grant", s))?
                        .into_inner()
                        .id;
                    let sent_ns = since(epoch);
                    let resp = kv
                        .put(PutRequest {
                            key: instance_key(service, seq),
                            value: instance_value(service, seq),
                            lease,
                            ..Default::default()
                        })
                        .await
                        .map_err(|s| rpc_err("register put", s))?
                        .into_inner();
                    let at_ns = since(epoch);
                    let rev = resp.header.map_or(0, |h| h.revision);
                    acks.lock().unwrap_or_else(|e| e.into_inner()).insert(
                        rev,
                        Ack {
                            sent_ns,
                            at_ns,
                            group: service as usize,
                        },
                    );
                    registered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((seq, lease));
                    Ok(())
                }
            },
        )
        .await
    };
    let registered = std::mem::take(&mut *registered.lock().unwrap_or_else(|e| e.into_inner()));

    // 3. Heartbeats and config changes, side by side.
    ctx.progress.phase("heartbeat+config", None);
    let leases: Vec<i64> = registered.iter().map(|&(_, l)| l).collect();
    let changes = (args.config_rate * duration.as_secs_f64()).ceil() as u64;
    let config_latency = Arc::new(Mutex::new(Recorder::new()));
    let config_errors = Arc::new(Errors::default());
    let publish = {
        let (kvs, acks, lat, errs) = (
            kvs.clone(),
            acks.clone(),
            config_latency.clone(),
            config_errors.clone(),
        );
        let deadline = Instant::now() + duration + Duration::from_secs(1);
        let (configs, size) = (args.configs.max(1), args.config_size);
        open_loop(args.config_rate, changes, clients, deadline, move |seq| {
            let mut kv = kvs[seq as usize % kvs.len()].clone();
            let (acks, lat, errs) = (acks.clone(), lat.clone(), errs.clone());
            let req = PutRequest {
                key: Bytes::from(format!("{CONFIG_PREFIX}app-{}.yaml", seq % configs)),
                value: config_value(seq, size),
                ..Default::default()
            };
            async move {
                let t0 = Instant::now();
                let sent_ns = since(epoch);
                match kv.put(req).await {
                    Ok(resp) => {
                        let at_ns = since(epoch);
                        lat.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .record(t0.elapsed());
                        let rev = resp.into_inner().header.map_or(0, |h| h.revision);
                        acks.lock().unwrap_or_else(|e| e.into_inner()).insert(
                            rev,
                            Ack {
                                sent_ns,
                                at_ns,
                                group: config_group,
                            },
                        );
                    }
                    Err(s) => errs.record(rpc_err("config put", s)),
                }
            }
        })
    };
    let streams = args.common.conns.max(1);
    let heartbeats = keep_alive(
        &ctx.channels,
        &leases,
        streams,
        heartbeat,
        duration,
        &ctx.progress,
    );
    let ((), heartbeats) = tokio::join!(publish, heartbeats);
    let config_latency = config_latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let config_out = Outcome {
        ops: config_latency.count(),
        errors: config_errors.count(),
        first_error: config_errors.first(),
        latency: config_latency,
        elapsed: duration,
    };

    // 4. Deregistration.
    ctx.progress
        .phase("deregister", Some(registered.len() as u64));
    let deregister = {
        let registered = Arc::new(registered);
        let (kvs, lcs, acks) = (kvs.clone(), lcs.clone(), acks.clone());
        closed_loop(
            clients,
            Budget::count(registered.len() as u64),
            &ctx.progress,
            move |c, i| {
                let (mut kv, mut lc) = (kvs[c].clone(), lcs[c].clone());
                let acks = acks.clone();
                let (seq, lease) = registered[i as usize];
                let service = seq % services;
                async move {
                    let sent_ns = since(epoch);
                    let resp = kv
                        .delete_range(DeleteRangeRequest {
                            key: instance_key(service, seq),
                            ..Default::default()
                        })
                        .await
                        .map_err(|s| rpc_err("deregister delete", s))?
                        .into_inner();
                    let at_ns = since(epoch);
                    if resp.deleted != 1 {
                        anyhow::bail!("deregister deleted {} keys (lease lost?)", resp.deleted);
                    }
                    let rev = resp.header.map_or(0, |h| h.revision);
                    acks.lock().unwrap_or_else(|e| e.into_inner()).insert(
                        rev,
                        Ack {
                            sent_ns,
                            at_ns,
                            group: service as usize,
                        },
                    );
                    lc.lease_revoke(LeaseRevokeRequest { id: lease })
                        .await
                        .map_err(|s| rpc_err("lease revoke", s))?;
                    Ok(())
                }
            },
        )
        .await
    };
    let elapsed = started.elapsed();

    // 5. Every event in?
    let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(|e| e.into_inner()));
    let mut watchers_of = vec![0u64; services as usize + 1];
    for i in 0..args.watchers {
        watchers_of[i % services as usize] += 1;
    }
    watchers_of[config_group] = args.subscribers as u64;
    let expected: u64 = acks.values().map(|a| watchers_of[a.group]).sum();
    ctx.progress.phase("draining events", None);
    watchers.drain(expected, args.drain_timeout).await;
    let mut class_of = vec![0usize; services as usize];
    class_of.push(1);
    let (classes, total, watch_errors, watch_first) = watchers.finish(&acks, &class_of, 2).await;

    let mut all = Outcome::default();
    for o in [&register, &heartbeats, &config_out, &deregister] {
        all.absorb(o);
    }
    let mut report = Report::new(
        "registry",
        all.ops,
        all.errors + watch_errors,
        elapsed,
        all.latency.summary(),
    );
    report.first_error = all.first_error.or(watch_first);
    report.watch = Some(total);
    report.parts = vec![
        part("register", &register),
        part("heartbeat", &heartbeats),
        part("config-publish", &config_out),
        part("deregister", &deregister),
        Part {
            name: "service-watch".into(),
            watch: classes.first().cloned(),
            ..Part::default()
        },
        Part {
            name: "config-watch".into(),
            watch: classes.get(1).cloned(),
            ..Part::default()
        },
    ];
    Ok(ctx.report(
        report,
        params([
            ("instances", json!(args.instances)),
            ("services", json!(services)),
            ("watchers", json!(args.watchers)),
            ("subscribers", json!(args.subscribers)),
            ("config_rate", json!(args.config_rate)),
            ("configs", json!(args.configs)),
            ("config_size", json!(args.config_size)),
            ("ttl", json!(args.ttl)),
            ("heartbeat_s", json!(heartbeat.as_secs_f64())),
            ("duration_s", json!(duration.as_secs_f64())),
            ("streams", json!(args.streams)),
        ]),
    ))
}

/// `/services/svc-<service>/inst-<n>`.
fn instance_key(service: u64, n: u64) -> Bytes {
    Bytes::from(format!("/services/svc-{service}/inst-{n:06}"))
}

/// The instance record, as the seeds store it: JSON with address, weight and metadata.
fn instance_value(service: u64, n: u64) -> Bytes {
    let v = json!({
        "service": format!("svc-{service}"),
        "instanceId": format!("inst-{n:06}"),
        "host": format!("127.0.{}.{}", (n / 250) % 250, n % 250 + 1),
        "port": 8080,
        "weight": 1.0,
        "enabled": true,
        "healthy": true,
        "metadata": {"version": "1.0.0", "zone": "local"},
    });
    Bytes::from(v.to_string())
}

/// A config body of `size` bytes whose first line names the change.
fn config_value(seq: u64, size: usize) -> Bytes {
    let head = format!("# change {seq}\n");
    let mut v = head.into_bytes();
    v.extend_from_slice(&value(size.saturating_sub(v.len())));
    Bytes::from(v)
}
