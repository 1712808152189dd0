//! Request/response workloads on the KV service: `put`, `range`, `txn-put` and `load`.
//!
//! Each is a closed loop (see [`crate::driver::closed_loop`]): `--clients` tasks, each with one
//! request outstanding, share `--conns` connections until `--total` or `--duration` is spent.

use std::sync::Arc;

use clap::Args;
use mast_proto::etcdserverpb::request_op::Request as OpRequest;
use mast_proto::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest};
use rand::Rng;
use serde_json::json;

use super::{Common, Ctx, key, params, rpc_err, value};
use crate::driver::{Budget, closed_loop};
use crate::stats::Report;

/// Flags of `put`.
#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    /// Endpoints, connections, clients, budget, output.
    #[command(flatten)]
    pub common: Common,
    /// Key size in bytes (prefix + zero-padded number).
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Keys are drawn at random from this many.
    #[arg(long, default_value_t = 100_000)]
    key_space_size: u64,
    /// Write keys 0, 1, 2, ... instead of random ones.
    #[arg(long)]
    sequential_keys: bool,
    /// Prefix of every key.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// Runs `put`: single-key writes.
pub async fn put(args: PutArgs) -> anyhow::Result<Report> {
    let budget = args.common.budget(10_000);
    let ctx = Ctx::open_kv(&args.common, "put", budget.total).await?;
    let kvs = Arc::new(ctx.kv_clients(args.common.clients));
    let val = value(args.val_size);
    let prefix = args.prefix.clone().into_bytes();
    let (key_size, space, seq_keys) = (
        args.key_size,
        args.key_space_size.max(1),
        args.sequential_keys,
    );
    let out = closed_loop(
        args.common.clients,
        budget,
        &ctx.progress,
        move |client, seq| {
            let kv = kvs[client].clone();
            let n = if seq_keys {
                seq
            } else {
                rand::rng().random_range(0..space)
            };
            let req = PutRequest {
                key: key(&prefix, n, key_size),
                value: val.clone(),
                ..Default::default()
            };
            async move {
                kv.put(req).await.map_err(|s| rpc_err("put", s))?;
                Ok(())
            }
        },
    )
    .await;
    let report = out.into_report("put");
    Ok(ctx.report(
        report,
        params([
            ("key_size", json!(args.key_size)),
            ("val_size", json!(args.val_size)),
            ("key_space_size", json!(args.key_space_size)),
            ("sequential_keys", json!(args.sequential_keys)),
            ("prefix", json!(args.prefix)),
            ("total", json!(args.common.total)),
            (
                "duration_s",
                json!(args.common.duration.map(|d| d.as_secs_f64())),
            ),
        ]),
    ))
}

/// Flags of `range`.
#[derive(Args, Debug, Clone)]
pub struct RangeArgs {
    /// Endpoints, connections, clients, budget, output.
    #[command(flatten)]
    pub common: Common,
    /// `l` (linearizable, a quorum read) or `s` (serializable, a local read).
    #[arg(long, default_value = "l", value_parser = ["l", "s"])]
    consistency: String,
    /// Keys per range: 1 reads one key; N > 1 scans N consecutive keys, as a prefix read does.
    #[arg(long, default_value_t = 1)]
    scan: u64,
    /// Keys to write before measuring (0: read whatever is there, without checking counts).
    #[arg(long, default_value_t = 10_000)]
    prefill: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size of the prefilled keys.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Prefix of every key.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// Runs `range`: reads of one key or scans of `--scan` keys over a prefilled key space.
pub async fn range(args: RangeArgs) -> anyhow::Result<Report> {
    let budget = args.common.budget(10_000);
    let ctx = Ctx::open_kv(&args.common, "range", budget.total).await?;
    let prefix = args.prefix.clone().into_bytes();
    let space = args.prefill.max(args.scan).max(1);
    if args.prefill > 0 {
        ctx.progress.phase("range prefill", Some(args.prefill));
        let prefill = fill(&ctx, &prefix, args.key_size, args.val_size, args.prefill, 1).await;
        if prefill.errors > 0 {
            anyhow::bail!(
                "prefill failed ({} errors): {}",
                prefill.errors,
                prefill.first_error.unwrap_or_default()
            );
        }
        ctx.progress.phase("range", budget.total);
    }
    let kvs = Arc::new(ctx.kv_clients(args.common.clients));
    let serializable = args.consistency == "s";
    let (key_size, scan, check) = (args.key_size, args.scan.max(1), args.prefill > 0);
    let out = closed_loop(
        args.common.clients,
        budget,
        &ctx.progress,
        move |client, _| {
            let kv = kvs[client].clone();
            let start = rand::rng().random_range(0..=space - scan);
            let req = RangeRequest {
                key: key(&prefix, start, key_size),
                range_end: if scan > 1 {
                    key(&prefix, start + scan, key_size)
                } else {
                    Default::default()
                },
                serializable,
                ..Default::default()
            };
            async move {
                let resp = kv.range(req).await.map_err(|s| rpc_err("range", s))?;
                if check && resp.kvs.len() as u64 != scan {
                    anyhow::bail!("range returned {} keys, expected {scan}", resp.kvs.len());
                }
                Ok(())
            }
        },
    )
    .await;
    let report = out.into_report("range");
    Ok(ctx.report(
        report,
        params([
            ("consistency", json!(args.consistency)),
            ("scan", json!(args.scan)),
            ("prefill", json!(args.prefill)),
            ("key_size", json!(args.key_size)),
            ("val_size", json!(args.val_size)),
            ("total", json!(args.common.total)),
            (
                "duration_s",
                json!(args.common.duration.map(|d| d.as_secs_f64())),
            ),
        ]),
    ))
}

/// Flags of `txn-put`.
#[derive(Args, Debug, Clone)]
pub struct TxnPutArgs {
    /// Endpoints, connections, clients, budget, output.
    #[command(flatten)]
    pub common: Common,
    /// Puts per transaction (distinct keys).
    #[arg(long, default_value_t = 1)]
    txn_ops: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Keys are drawn at random from this many.
    #[arg(long, default_value_t = 100_000)]
    key_space_size: u64,
    /// Prefix of every key.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// Runs `txn-put`: transactions of `--txn-ops` puts with no compare, as etcd's `benchmark
/// txn-put`.
pub async fn txn_put(args: TxnPutArgs) -> anyhow::Result<Report> {
    let budget = args.common.budget(10_000);
    let ctx = Ctx::open_kv(&args.common, "txn-put", budget.total).await?;
    let kvs = Arc::new(ctx.kv_clients(args.common.clients));
    let val = value(args.val_size);
    let prefix = args.prefix.clone().into_bytes();
    let ops = args.txn_ops.max(1);
    let space = args.key_space_size.max(ops);
    let key_size = args.key_size;
    let out = closed_loop(
        args.common.clients,
        budget,
        &ctx.progress,
        move |client, _| {
            let kv = kvs[client].clone();
            let first = rand::rng().random_range(0..space);
            let success = (0..ops)
                .map(|i| RequestOp {
                    request: Some(OpRequest::RequestPut(PutRequest {
                        key: key(&prefix, (first + i) % space, key_size),
                        value: val.clone(),
                        ..Default::default()
                    })),
                })
                .collect();
            let req = TxnRequest {
                success,
                ..Default::default()
            };
            async move {
                let resp = kv.txn(req).await.map_err(|s| rpc_err("txn", s))?;
                if !resp.succeeded {
                    anyhow::bail!("txn without compares did not succeed");
                }
                Ok(())
            }
        },
    )
    .await;
    let report = out.into_report("txn-put");
    Ok(ctx.report(
        report,
        params([
            ("txn_ops", json!(args.txn_ops)),
            ("key_size", json!(args.key_size)),
            ("val_size", json!(args.val_size)),
            ("key_space_size", json!(args.key_space_size)),
            ("total", json!(args.common.total)),
            (
                "duration_s",
                json!(args.common.duration.map(|d| d.as_secs_f64())),
            ),
        ]),
    ))
}

/// Flags of `load`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Endpoints, connections, clients, budget, output.
    #[command(flatten)]
    pub common: Common,
    /// Keys to write: 0 .. N, each once.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Puts per request (1: plain puts; more: transactions of that many puts).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Prefix of every key.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// Runs `load`: writes keys 0 .. `--keys` once each, as fast as the clients go.
pub async fn load(args: LoadArgs) -> anyhow::Result<Report> {
    let batch = args.batch.max(1);
    let requests = args.keys.div_ceil(batch);
    let ctx = Ctx::open_kv(&args.common, "load", Some(requests)).await?;
    let prefix = args.prefix.clone().into_bytes();
    let out = fill(
        &ctx,
        &prefix,
        args.key_size,
        args.val_size,
        args.keys,
        batch,
    )
    .await;
    let (ops, elapsed) = (out.ops, out.elapsed);
    let mut report = out.into_report("load");
    report.extra.insert(
        "keys_per_sec".into(),
        json!(((ops * batch).min(args.keys)) as f64 / elapsed.as_secs_f64().max(1e-9)),
    );
    Ok(ctx.report(
        report,
        params([
            ("keys", json!(args.keys)),
            ("key_size", json!(args.key_size)),
            ("val_size", json!(args.val_size)),
            ("batch", json!(batch)),
            ("prefix", json!(args.prefix)),
        ]),
    ))
}

/// Writes keys `0 .. n` (in requests of `batch` puts) with the run's clients.
async fn fill(
    ctx: &Ctx,
    prefix: &[u8],
    key_size: usize,
    val_size: usize,
    n: u64,
    batch: u64,
) -> crate::driver::Outcome {
    let kvs = Arc::new(ctx.kv_clients(ctx.common.clients));
    let val = value(val_size);
    let prefix = prefix.to_vec();
    let budget = Budget {
        total: Some(n.div_ceil(batch)),
        duration: None,
    };
    closed_loop(
        ctx.common.clients,
        budget,
        &ctx.progress,
        move |client, seq| {
            let kv = kvs[client].clone();
            let first = seq * batch;
            let last = (first + batch).min(n);
            let puts: Vec<PutRequest> = (first..last)
                .map(|i| PutRequest {
                    key: key(&prefix, i, key_size),
                    value: val.clone(),
                    ..Default::default()
                })
                .collect();
            async move {
                if puts.len() == 1 {
                    let put = puts.into_iter().next().expect("one put");
                    kv.put(put).await.map_err(|s| rpc_err("put", s))?;
                } else {
                    let success = puts
                        .into_iter()
                        .map(|p| RequestOp {
                            request: Some(OpRequest::RequestPut(p)),
                        })
                        .collect();
                    kv.txn(TxnRequest {
                        success,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| rpc_err("txn", s))?;
                }
                Ok(())
            }
        },
    )
    .await
}
