//! The Go etcd client (`go.etcd.io/etcd/client/v3`, the program in `tests/go/failover`) given
//! the endpoints of all three members keeps working across a `kill -9` of the leader: its puts
//! go on after a short failover, every acknowledged put is read back linearizably and is seen
//! by its watch (opened `WithRequireLeader`, so the `hasleader` metadata is sent) in revision
//! order with none twice, and afterwards every acknowledged put is on both survivors.
//!
//! Needs `go` on the PATH and the module's dependencies (`scripts/install-test-deps.sh` runs
//! `go mod download` in `tests/go`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mast_conformance::cluster::Cluster;
use mast_conformance::{Background, ServerKind};

const WRITES: usize = 300;

fn go_module() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/go")
}

/// Builds the Go program once into this test's scratch directory.
fn build_failover() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-failover");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./failover")
        .current_dir(go_module())
        .status()
        .expect("the go command (install Go; scripts/install-test-deps.sh fetches the module)");
    assert!(status.success(), "go build of tests/go/failover failed");
    out
}

fn acked(stdout: &str) -> Vec<(String, i64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("acked ")?.split(' ');
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn go_client_with_every_endpoint_keeps_working_across_a_leader_kill() {
    let bin = build_failover();
    let mut c = Cluster::start(ServerKind::Mast, 3).expect("a 3-member cluster");
    let leader = c.wait_leader(Duration::from_secs(10)).expect("a leader");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "-endpoints",
        &c.endpoints(),
        "-writes",
        &WRITES.to_string(),
        "-timeout",
        "60s",
    ]);
    let go = Background::spawn(cmd, None).expect("start the Go client");

    // Kill the leader once the client is well under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked(&go.output_so_far().0).len() < WRITES / 5 {
        assert!(
            Instant::now() < deadline,
            "the Go client made no progress: {:?}",
            go.output_so_far()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.members[leader].kill9();
    let before_kill = acked(&go.output_so_far().0).len();

    let out = go.finish(Duration::from_secs(90));
    let summary = out.stdout.lines().last().unwrap_or_default();
    eprintln!("Go client: {summary} ({before_kill} puts acknowledged before the kill)");
    assert!(
        out.success(),
        "the Go client saw a problem: {summary}\n{}",
        out.stderr
    );
    let ledger = acked(&out.stdout);
    assert_eq!(ledger.len(), WRITES, "{summary}");
    let v: serde_json::Value = serde_json::from_str(summary).expect("the JSON summary");
    assert!(v["watched"].as_u64() >= Some(WRITES as u64), "{summary}");

    // Every acknowledged put is on both survivors, at its revision.
    for (i, m) in c.members.iter().enumerate() {
        if i == leader {
            continue;
        }
        let got = m.etcdctl(&["get", "go/failover/", "--prefix", "-w", "json"], None);
        assert!(got.success(), "get on m{i}: {}", got.stderr);
        let v: serde_json::Value = serde_json::from_str(&got.stdout).expect("etcdctl json");
        let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
        let on_member: std::collections::HashMap<String, i64> = kvs
            .iter()
            .filter_map(|kv| {
                use base64::Engine as _;
                let key = base64::engine::general_purpose::STANDARD
                    .decode(kv["key"].as_str()?)
                    .ok()?;
                Some((String::from_utf8(key).ok()?, kv["mod_revision"].as_i64()?))
            })
            .collect();
        for (key, rev) in &ledger {
            assert_eq!(
                on_member.get(key),
                Some(rev),
                "acknowledged {key} at {rev} on m{i}"
            );
        }
    }
}

#[test]
fn a_member_without_leader_refuses_require_leader_calls_at_once() {
    let bin = build_failover();
    let mut c = Cluster::start(ServerKind::Mast, 3).expect("a 3-member cluster");
    let leader = c.wait_leader(Duration::from_secs(10)).expect("a leader");
    let probe = |endpoint: &str| {
        let mut cmd = Command::new(&bin);
        cmd.args(["-endpoints", endpoint, "-probe-require-leader"]);
        let out = Background::spawn(cmd, None)
            .expect("start the Go client")
            .finish(Duration::from_secs(30));
        assert!(out.success(), "the probe failed: {}", out.stderr);
        out.stdout.trim().to_string()
    };
    let survivor = (leader + 1) % 3;
    assert_eq!(probe(&c.members[survivor].endpoint()), "ok");
    // Without a quorum the survivor has no leader after its election timeout.
    c.members[leader].kill9();
    c.members[(leader + 2) % 3].kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status(survivor).map_or(true, |s| s.leader != 0) {
        assert!(
            Instant::now() < deadline,
            "the survivor still names a leader"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        probe(&c.members[survivor].endpoint()),
        "etcdserver: no leader"
    );
}

/// Builds `tests/go/concurrency` once into this test's scratch directory.
fn build_concurrency() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-concurrency");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg("./concurrency")
        .current_dir(go_module())
        .status()
        .expect("the go command (install Go; scripts/install-test-deps.sh fetches the module)");
    assert!(status.success(), "go build of tests/go/concurrency failed");
    out
}

/// The Go client's `concurrency` package — `Mutex` (no lost increment under contention,
/// `TryLock`), `Election` (campaign, observe, proclaim, resign) and serializable `STM`
/// transfers (the total is kept) — against a real etcd first, then against Mast, then against
/// three Mast members with every endpoint given (the client spreads its calls over them, so
/// locks, campaigns and transactions go through followers too).
#[test]
fn go_concurrency_mutex_election_and_stm() {
    let bin = build_concurrency();
    let run = |what: &str, endpoints: String| {
        let mut cmd = Command::new(&bin);
        cmd.arg("-endpoint").arg(endpoints);
        let out = Background::spawn(cmd, None)
            .expect("start the Go program")
            .finish(Duration::from_secs(120));
        assert!(
            out.success() && out.stdout.trim_end().ends_with("ok"),
            "Go concurrency against {what}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    };
    for kind in [ServerKind::Etcd, ServerKind::Mast] {
        let server = mast_conformance::Server::start(kind);
        run(&kind.to_string(), server.endpoint());
    }
    let mut c = Cluster::start(ServerKind::Mast, 3).expect("a 3-member cluster");
    let endpoints = c.endpoints();
    run("three Mast members", endpoints);
}
