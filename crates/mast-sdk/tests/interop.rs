//! The SDK against the real `mast` binary, run as a process (`MAST_BIN`, else
//! `<workspace>/target/debug/mast`; build it with `cargo build -p mast`): registrations come
//! back after `kill -9` and a restart, and configs published, rolled back and compacted over
//! the HTTP API reach typed SDK watchers. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use mast_proto::etcdserverpb::CompactionRequest;
use mast_sdk::{Client, ClientOptions, ConfigId, Instance};
use serde::Deserialize;
use serde_json::{Value, json};

fn mast_bin() -> PathBuf {
    let bin = std::env::var_os("MAST_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/mast"),
        PathBuf::from,
    );
    assert!(
        bin.is_file(),
        "the mast binary is missing at {}: run `cargo build -p mast` or set MAST_BIN",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `mast serve` process; SIGKILLed (by its PID) and reaped when dropped.
struct MastProcess {
    child: Child,
    log: PathBuf,
}

impl MastProcess {
    /// Starts `mast serve` on `port` with `dir` and waits (≤ 20 s) until the HTTP API answers.
    async fn start(dir: &Path, port: u16) -> MastProcess {
        let url = format!("http://127.0.0.1:{port}");
        let log = dir.with_extension("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(mast_bin())
            .args(["serve", "--name", "interop", "--data-dir"])
            .arg(dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn mast");
        let mut p = MastProcess { child, log };
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("mast exited early ({status}):\n{}", p.log_tail());
            }
            let probe = http
                .get(format!("{url}/mast/v1/services"))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if matches!(probe, Ok(r) if r.status().is_success()) {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mast did not answer within 20 s:\n{}",
                p.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s[s.len().saturating_sub(4000)..].to_string()
    }

    /// `kill -9` and reap.
    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }
}

impl Drop for MastProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn client(port: u16) -> Client {
    let opts = ClientOptions {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    Client::connect(opts).await.unwrap()
}

/// Waits (≤ 5 s) until the typed value equals `want` (a change may be announced more than once).
async fn until<
    T: PartialEq + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
>(
    typed: &mut mast_sdk::TypedConfig<T>,
    want: T,
    what: &str,
) {
    within(5, what, async {
        while *typed.get() != want {
            typed.changed().await;
        }
    })
    .await;
}

async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {secs} s"))
}

#[tokio::test]
async fn registrations_survive_kill_9_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let port = free_port();
    let mut server = MastProcess::start(&dir, port).await;
    let c = client(port).await;

    let mut regs = Vec::new();
    for i in 0..3u16 {
        let inst = Instance::new("127.0.0.1", 7000 + i);
        let reg = c
            .register("orders", &format!("i{i}"), inst, Duration::from_secs(2))
            .await
            .unwrap();
        regs.push(reg);
    }
    // The watch stream, followed in the background: every set it yields, in order.
    let (seen_tx, mut seen) = tokio::sync::watch::channel(Vec::<usize>::new());
    let mut stream = Box::pin(c.watch_service("orders"));
    let follower = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            if let Ok(set) = item {
                seen_tx.send_modify(|v| v.push(set.len()));
            }
        }
    });
    within(
        5,
        "watch sees 3 instances",
        seen.wait_for(|v| v.last() == Some(&3)),
    )
    .await
    .unwrap();

    server.kill9();
    let killed_at = seen.borrow().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let _server = MastProcess::start(&dir, port).await;

    // Back within one TTL (2 s) and a little: the SDK keeps alive or registers again.
    within(8, "3 registrations back after the restart", async {
        loop {
            if let Ok(set) = c.discover("orders").await
                && set.len() == 3
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // The watch stream resumed on the new process: a 4th instance added and removed over HTTP
    // shows in it, and it converges to the full set of 3 (no late deletions from expiring
    // leases either).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let api = format!("http://127.0.0.1:{port}/mast/v1/services/orders/instances");
    let r = http
        .post(&api)
        .json(&json!({"id": "probe", "host": "127.0.0.1", "port": 7999, "ttl": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    within(
        8,
        "the watch sees 4 after the restart",
        seen.wait_for(|v| v[killed_at..].contains(&4)),
    )
    .await
    .unwrap();
    let r = http.delete(format!("{api}/probe")).send().await.unwrap();
    assert!(r.status().is_success(), "deregister: {}", r.status());
    within(
        8,
        "watch converges to 3 after the restart",
        seen.wait_for(|v| v.last() == Some(&3)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let sizes = seen.borrow().clone();
    assert_eq!(sizes.last(), Some(&3), "sets seen: {sizes:?}");
    eprintln!(
        "watch sets before the kill: {:?}, after: {:?}",
        &sizes[..killed_at],
        &sizes[killed_at..]
    );
    follower.abort();
    assert!(started.elapsed() < Duration::from_secs(12));
    let mut ports: Vec<u16> = c
        .discover("orders")
        .await
        .unwrap()
        .iter()
        .map(|s| s.instance.port)
        .collect();
    ports.sort_unstable();
    assert_eq!(ports, [7000, 7001, 7002]);
    for r in regs {
        r.shutdown().await;
    }
}

#[derive(Debug, Deserialize, PartialEq)]
struct Limits {
    max: u32,
}

#[tokio::test]
async fn http_publish_rollback_and_compact_reach_the_sdk() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = MastProcess::start(&tmp.path().join("data"), port).await;
    let c = client(port).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}/mast/v1/configs/prod/app/limits.json");
    let publish = |content: &'static str| {
        let req = http
            .put(&base)
            .json(&json!({"content": content, "format": "json"}));
        async move {
            let r = req.send().await.unwrap();
            assert!(r.status().is_success(), "publish: {}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };

    // (b) Published over HTTP, seen by the typed SDK watcher.
    assert_eq!(publish(r#"{"max": 1}"#).await["version"], 1);
    let id = ConfigId::new("prod", "app", "limits.json").unwrap();
    let mut typed = c.typed_config::<Limits>(&id, None).await.unwrap();
    assert_eq!(*typed.get(), Limits { max: 1 });
    assert_eq!(publish(r#"{"max": 2}"#).await["version"], 2);
    until(&mut typed, Limits { max: 2 }, "v2 reaches the SDK").await;

    // (c) Rollback to v1 over HTTP: a new version 3 with v1's content.
    let r = http
        .post(format!("{base}/rollback"))
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "rollback: {}", r.status());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["version"], 3);
    assert_eq!(body["rolledBackFrom"], 1);
    until(
        &mut typed,
        Limits { max: 1 },
        "the rollback reaches the SDK",
    )
    .await;
    let cfg = c.get_config(&id).await.unwrap().unwrap();
    assert_eq!(&cfg.content[..], br#"{"max": 1}"#);
    assert_eq!(cfg.meta.unwrap().version, 3);

    // (d) Compact at the current revision (raw etcd API); history is its own keys, so it stays.
    let mut kv = c.kv_client();
    kv.compact(CompactionRequest {
        revision: cfg.revision,
        physical: true,
    })
    .await
    .unwrap();
    let history: Value = http
        .get(format!("{base}/history"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let versions: Vec<u64> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    let v1: Value = http
        .get(format!("{base}/history/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v1["content"], r#"{"max": 1}"#);
    // A publish after the compaction still reaches the watcher.
    assert_eq!(publish(r#"{"max": 4}"#).await["version"], 4);
    until(&mut typed, Limits { max: 4 }, "v4 reaches the SDK").await;
}
