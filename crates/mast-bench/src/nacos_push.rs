//! `nacos-push`: N Nacos 2.x gRPC clients listen to one config; a publisher changes it K times
//! and every client's `ConfigChangeNotifyRequest` is timed from the moment the publish was
//! sent. The same protocol against any Nacos 2.x server (Nacos, r-nacos, Mast), so the
//! figures compare like for like.
//!
//! Each client is its own HTTP/2 connection (servers tell connections apart by them), set up
//! as the Java client does: `ServerCheckRequest`, then the bi-stream with
//! `ConnectionSetupRequest`, then `ConfigBatchListenRequest` with the current md5. A round
//! waits until every client has been notified (or `--round-timeout`) before the next publish,
//! so each notification belongs to one round; a client not notified in time is counted as
//! missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use mast_proto::nacospb::bi_request_stream_client::BiRequestStreamClient;
use mast_proto::nacospb::request_client::RequestClient;
use mast_proto::nacospb::{Metadata, Payload};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::stats::{Recorder, Report};
use crate::workload::parse_duration;

/// Flags of `nacos-push`.
#[derive(Args, Debug, Clone)]
pub struct PushArgs {
    /// The server's Nacos gRPC address (the HTTP port + 1000).
    #[arg(long, default_value = "127.0.0.1:9848")]
    pub grpc: String,
    /// Listening clients, one connection each.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Publishes (rounds).
    #[arg(long, default_value_t = 20)]
    pub publishes: usize,
    /// How long a round waits for every client before counting the rest as missed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub round_timeout: Duration,
    /// Connections set up at once.
    #[arg(long, default_value_t = 50)]
    pub connect_concurrency: usize,
    /// The config's namespace (tenant), group and data id.
    #[arg(long, default_value = "bench")]
    pub tenant: String,
    #[arg(long, default_value = "DEFAULT_GROUP")]
    pub group: String,
    #[arg(long, default_value = "push-target")]
    pub data_id: String,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Allow an address outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_non_loopback: bool,
}

fn payload(kind: &str, body: &Value) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: kind.to_string(),
            client_ip: "127.0.0.1".into(),
            headers: HashMap::new(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: serde_json::to_vec(body).unwrap_or_default(),
        }),
    }
}

fn kind_of(p: &Payload) -> &str {
    p.metadata.as_ref().map_or("", |m| m.r#type.as_str())
}

fn body_of(p: &Payload) -> Value {
    p.body
        .as_ref()
        .and_then(|b| serde_json::from_slice(&b.value).ok())
        .unwrap_or(Value::Null)
}

/// One unary request; the answer's body, which must say success.
async fn call(ch: &Channel, kind: &str, body: Value) -> anyhow::Result<Value> {
    let resp = RequestClient::new(ch.clone())
        .request(payload(kind, &body))
        .await
        .with_context(|| kind.to_string())?
        .into_inner();
    let v = body_of(&resp);
    if v["resultCode"] != json!(200) {
        bail!("{kind} answered {} {v}", kind_of(&resp));
    }
    Ok(v)
}

fn md5_hex(s: &str) -> String {
    use md5::Digest;
    md5::Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Connects client `i`, listens to the config, and forwards the arrival time of every
/// change notification to `seen` (as (client, instant)).
async fn client(
    args: Arc<PushArgs>,
    i: usize,
    md5: String,
    seen: mpsc::UnboundedSender<(usize, Instant)>,
) -> anyhow::Result<()> {
    let ch = Endpoint::from_shared(format!("http://{}", args.grpc))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("client {i}: connect"))?;
    call(
        &ch,
        "ServerCheckRequest",
        json!({"headers": {}, "module": "internal"}),
    )
    .await?;
    let (up, up_rx) = mpsc::channel::<Payload>(16);
    up.send(payload(
        "ConnectionSetupRequest",
        &json!({
            "clientVersion": "Nacos-Java-Client:v2.4.3",
            "tenant": args.tenant,
            "labels": {"source": "sdk", "module": "config"},
            "headers": {},
            "module": "internal",
        }),
    ))
    .await?;
    let mut down = BiRequestStreamClient::new(ch.clone())
        .request_bi_stream(ReceiverStream::new(up_rx))
        .await
        .with_context(|| format!("client {i}: bi-stream"))?
        .into_inner();
    // The server registers the connection when the setup arrives: retry the listen briefly.
    let listen = json!({
        "listen": true,
        "configListenContexts": [{
            "dataId": args.data_id, "group": args.group, "tenant": args.tenant, "md5": md5,
        }],
        "headers": {},
        "module": "config",
    });
    let mut tries = 0;
    loop {
        match call(&ch, "ConfigBatchListenRequest", listen.clone()).await {
            Ok(_) => break,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.context(format!("client {i}: listen"))),
        }
    }
    tokio::spawn(async move {
        while let Some(Ok(p)) = down.next().await {
            if kind_of(&p) != "ConfigChangeNotifyRequest" {
                continue;
            }
            let at = Instant::now();
            let _ = seen.send((i, at));
            let rid = body_of(&p)["requestId"].clone();
            let _ = up
                .send(payload(
                    "ConfigChangeNotifyResponse",
                    &json!({"resultCode": 200, "errorCode": 0, "success": true, "requestId": rid}),
                ))
                .await;
        }
        drop(ch);
    });
    Ok(())
}

/// Runs the workload.
///
/// # Errors
/// A client that cannot connect or listen, a publish the server refuses.
pub async fn nacos_push(args: PushArgs) -> anyhow::Result<Report> {
    crate::endpoint::parse_endpoints(&args.grpc, args.allow_non_loopback)?;
    let args = Arc::new(args);
    let publisher = Endpoint::from_shared(format!("http://{}", args.grpc))?
        .connect()
        .await
        .context("publisher: connect")?;
    call(
        &publisher,
        "ServerCheckRequest",
        json!({"headers": {}, "module": "internal"}),
    )
    .await?;
    let (up, up_rx) = mpsc::channel::<Payload>(4);
    up.send(payload(
        "ConnectionSetupRequest",
        &json!({"clientVersion": "Nacos-Java-Client:v2.4.3", "tenant": args.tenant,
            "labels": {"source": "sdk", "module": "config"}, "headers": {}, "module": "internal"}),
    ))
    .await?;
    let _publisher_stream = BiRequestStreamClient::new(publisher.clone())
        .request_bi_stream(ReceiverStream::new(up_rx))
        .await?
        .into_inner();
    let publish = |content: String| {
        let publisher = publisher.clone();
        let args = args.clone();
        async move {
            let mut tries = 0;
            loop {
                let r = call(
                    &publisher,
                    "ConfigPublishRequest",
                    json!({"dataId": args.data_id, "group": args.group, "tenant": args.tenant,
                        "content": content, "additionMap": {}, "headers": {}, "module": "config"}),
                )
                .await;
                match r {
                    Ok(_) => return Ok::<(), anyhow::Error>(()),
                    Err(_) if tries < 50 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(e.context("publish")),
                }
            }
        }
    };
    let initial = "push-round-0".to_string();
    publish(initial.clone()).await?;
    let md5 = md5_hex(&initial);

    let bar = ProgressBar::new(args.clients as u64).with_style(ProgressStyle::with_template(
        "connecting {bar:40} {pos}/{len} clients ({elapsed})",
    )?);
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let started = Instant::now();
    {
        let mut pending = futures::stream::iter(0..args.clients)
            .map(|i| client(args.clone(), i, md5.clone(), seen_tx.clone()))
            .buffer_unordered(args.connect_concurrency.max(1));
        while let Some(r) = pending.next().await {
            r?;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let setup = started.elapsed();
    drop(seen_tx);

    let mut latency = Recorder::new();
    let mut reach_all = Recorder::new();
    let mut missed = 0u64;
    let bar = ProgressBar::new(args.publishes as u64).with_style(ProgressStyle::with_template(
        "publishing {bar:40} {pos}/{len} ({elapsed})",
    )?);
    let run_started = Instant::now();
    for round in 1..=args.publishes {
        let mut got = vec![false; args.clients];
        let mut n = 0;
        let sent = Instant::now();
        publish(format!("push-round-{round}")).await?;
        let deadline = tokio::time::Instant::now() + args.round_timeout;
        let mut last = sent;
        while n < args.clients {
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Ok(Some((i, at))) if !got[i] => {
                    got[i] = true;
                    n += 1;
                    latency.record(at.saturating_duration_since(sent));
                    last = last.max(at);
                }
                Ok(Some(_)) => {} // a second notify of the round (a duplicate push)
                Ok(None) | Err(_) => break,
            }
        }
        missed += (args.clients - n) as u64;
        if n == args.clients {
            reach_all.record(last.saturating_duration_since(sent));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let elapsed = run_started.elapsed();
    // ops: notifications received; errors: notifications missed.
    let mut report = Report::new(
        "nacos-push",
        latency.count(),
        missed,
        elapsed,
        latency.summary(),
    );
    report.params.insert("clients".into(), json!(args.clients));
    report.endpoints = vec![args.grpc.clone()];
    let all = reach_all.summary();
    report
        .extra
        .insert("setup_ms".into(), json!(setup.as_secs_f64() * 1000.0));
    report
        .extra
        .insert("publishes".into(), json!(args.publishes));
    report.extra.insert("missed".into(), json!(missed));
    report
        .extra
        .insert("reach_all_p50_ms".into(), json!(all.p50_ms));
    report
        .extra
        .insert("reach_all_max_ms".into(), json!(all.max_ms));
    Ok(report)
}
