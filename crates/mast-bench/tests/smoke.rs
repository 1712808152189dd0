//! Smoke run of every `mast-bench` workload at a tiny size against a real `mast serve`, so the
//! tool keeps working: each run must print one JSON report with ops > 0 and no error, and the
//! watch workloads must miss no event. Then `report` must turn those results into a document.
//!
//! Needs the server binary: `$MAST_BIN`, or `target/debug/mast` of this workspace
//! (`cargo build -p mast`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The `mast` server binary to test against.
fn mast_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MAST_BIN") {
        return PathBuf::from(p);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = workspace.join("target/debug/mast");
    assert!(
        bin.exists(),
        "the smoke test needs the server binary at {} (build it with `cargo build -p mast`, \
         or point MAST_BIN at one)",
        bin.display()
    );
    bin
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A running `mast serve`, killed (by its PID) when dropped.
struct Server {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let endpoint = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("mast.log")).expect("log file");
        let child = Command::new(mast_bin())
            .args(["serve", "--name", "x", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &format!("http://{endpoint}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mast serve");
        let server = Server {
            child,
            endpoint,
            _dir: dir,
        };
        let ready = bench(&["wait", "--endpoints", &server.endpoint, "--timeout", "30s"]);
        assert!(ready["extra"]["ready_ms"].as_f64().is_some(), "{ready}");
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mast-bench ARGS --json` and parses its report.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mast-bench"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run mast-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "mast-bench {args:?} failed: {stderr}\n{stdout}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("mast-bench {args:?} printed no JSON report ({e}): {stdout}\n{stderr}")
    })
}

/// Checks the parts every clean run has: some ops, no error.
fn assert_clean(r: &Value, what: &str) {
    assert!(r["ops"].as_u64().unwrap_or(0) > 0, "{what}: no ops: {r}");
    assert_eq!(r["errors"].as_u64(), Some(0), "{what}: errors: {r}");
    assert!(
        r["ops_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{what}: {r}"
    );
}

/// Checks that every watcher got every event.
fn assert_no_missing(w: &Value, what: &str) {
    assert!(
        w["events_expected"].as_u64().unwrap_or(0) > 0,
        "{what}: {w}"
    );
    assert_eq!(
        w["missing"].as_u64(),
        Some(0),
        "{what}: missing events: {w}"
    );
    assert_eq!(
        w["events_received"].as_u64(),
        w["events_expected"].as_u64(),
        "{what}: {w}"
    );
}

#[test]
fn every_workload_runs_against_mast() {
    let server = Server::start();
    let ep = server.endpoint.as_str();
    let common = ["--endpoints", ep, "--conns", "2", "--clients", "4"];
    let run = |name: &str, extra: &[&str]| {
        let mut args = vec![name];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        bench(&args)
    };
    let results = tempfile::tempdir().expect("results dir");
    let runs = results.path().join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    let save = |label: &str, r: &Value| {
        // The same Mast result stands in for both servers: the report only needs the shape.
        for server in ["etcd", "mast"] {
            std::fs::write(runs.join(format!("{label}.{server}.json")), r.to_string()).unwrap();
        }
    };

    let r = run("put", &["--total", "200"]);
    assert_clean(&r, "put");
    assert_eq!(r["ops"].as_u64(), Some(200), "{r}");
    assert!(r["latency_ms"]["p99_ms"].as_f64().unwrap() > 0.0, "{r}");
    save("01-put", &r);

    // The work-stealing runtime (the default is one thread).
    let r = run("put", &["--total", "200", "--client-threads", "2"]);
    assert_clean(&r, "put --client-threads 2");
    assert_eq!(r["ops"].as_u64(), Some(200), "{r}");

    let r = run(
        "put",
        &["--total", "200", "--sequential-keys", "--prefix", "/seq/"],
    );
    assert_clean(&r, "put --sequential-keys");

    let r = run("range", &["--total", "200", "--prefill", "100"]);
    assert_clean(&r, "range l");
    save("02-range", &r);

    let r = run(
        "range",
        &[
            "--total",
            "200",
            "--prefill",
            "100",
            "--consistency",
            "s",
            "--scan",
            "10",
        ],
    );
    assert_clean(&r, "range s scan");

    let r = run("txn-put", &["--total", "200", "--txn-ops", "3"]);
    assert_clean(&r, "txn-put");
    save("03-txn-put", &r);

    let r = run(
        "watch",
        &[
            "--total",
            "50",
            "--watchers",
            "5",
            "--streams",
            "2",
            "--put-rate",
            "200",
        ],
    );
    assert_clean(&r, "watch");
    assert_no_missing(&r["watch"], "watch");
    assert_eq!(r["watch"]["events_expected"].as_u64(), Some(250), "{r}");
    save("04-watch", &r);

    let r = run(
        "lease-keepalive",
        &[
            "--leases",
            "20",
            "--ttl",
            "5",
            "--interval",
            "500ms",
            "--duration",
            "2s",
        ],
    );
    assert_clean(&r, "lease-keepalive");
    // 20 leases renewed every 0.5 s for 2 s: about 80 renewals.
    assert!(r["ops"].as_u64().unwrap() >= 40, "{r}");
    save("05-lease-keepalive", &r);

    let r = run(
        "registry",
        &[
            "--instances",
            "10",
            "--services",
            "2",
            "--watchers",
            "4",
            "--subscribers",
            "5",
            "--config-rate",
            "10",
            "--ttl",
            "5",
            "--heartbeat",
            "500ms",
            "--duration",
            "2s",
        ],
    );
    assert_clean(&r, "registry");
    assert_no_missing(&r["watch"], "registry");
    let parts = r["parts"].as_array().expect("registry parts");
    let part = |n: &str| {
        parts
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("{n}: {r}"))
    };
    assert_eq!(part("register")["ops"].as_u64(), Some(10), "{r}");
    assert_eq!(part("deregister")["ops"].as_u64(), Some(10), "{r}");
    assert!(part("heartbeat")["ops"].as_u64().unwrap() > 0, "{r}");
    assert!(part("config-publish")["ops"].as_u64().unwrap() > 0, "{r}");
    // 10 registrations + 10 deregistrations, each to the 2 watchers of its service.
    assert_eq!(
        part("service-watch")["watch"]["events_expected"].as_u64(),
        Some(40),
        "{r}"
    );
    assert_no_missing(&part("config-watch")["watch"], "registry config");
    save("06-registry", &r);

    let r = run("load", &["--keys", "200", "--prefix", "/load/"]);
    assert_clean(&r, "load");
    assert_eq!(r["ops"].as_u64(), Some(200), "{r}");
    let r = run(
        "load",
        &["--keys", "200", "--batch", "16", "--prefix", "/load16/"],
    );
    assert_clean(&r, "load --batch");
    assert_eq!(r["ops"].as_u64(), Some(13), "{r}");

    let fsync = bench(&[
        "fsync",
        "--dir",
        results.path().to_str().unwrap(),
        "--total",
        "20",
        "--duration",
        "2s",
    ]);
    assert_eq!(fsync["ops"].as_u64(), Some(20), "{fsync}");
    std::fs::write(results.path().join("fsync.json"), fsync.to_string()).unwrap();

    // The report over those results.
    let out = results.path().join("BENCHMARKS.md");
    let status = Command::new(env!("CARGO_BIN_EXE_mast-bench"))
        .args(["report", "--results"])
        .arg(results.path())
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run mast-bench report");
    assert!(status.success());
    let md = std::fs::read_to_string(&out).expect("BENCHMARKS.md written");
    for needle in [
        "| put |",
        "| watch |",
        "| registry (config-watch) |",
        "fsyncs/s",
    ] {
        assert!(md.contains(needle), "{needle} missing from:\n{md}");
    }
    assert!(results.path().join("benchmarks.svg").exists());
}

#[test]
fn non_loopback_endpoints_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_mast-bench"))
        .args([
            "put",
            "--endpoints",
            "192.0.2.1:2379",
            "--total",
            "1",
            "--json",
        ])
        .output()
        .expect("run mast-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-non-loopback"), "{stderr}");
}
