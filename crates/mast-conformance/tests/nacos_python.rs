//! nacos-sdk-python 2.x — a Nacos 2.x gRPC client, unchanged — against `mast serve`
//! (`tests/python/nacos_grpc.py`): config get / publish / listen with a change made through
//! etcd, invalid content refused; naming register / list / subscribe with a pushed change,
//! and a closed connection's ephemeral instances removed; the same data read through etcd. And
//! against three members (`tests/python/nacos_failover.py`): the member the client is
//! connected to is killed, the client registers again through another and its config listener
//! keeps getting changes.
//!
//! Needs the virtualenv `scripts/install-test-deps.sh` makes at `tests/python/.venv`, and the
//! Mast binary (`cargo build -p mast`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mast_conformance::cluster::Cluster;
use mast_conformance::{Background, Server, ServerKind, ServerOptions, free_port_pair};

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python")
}

/// A Nacos HTTP port whose gRPC port (1000 above) is free too.
fn nacos_port() -> u16 {
    free_port_pair(1000)
}

#[test]
fn nacos_sdk_python_works_unchanged_over_grpc() {
    let python = python_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        python.display()
    );
    let port = nacos_port();
    let nacos = format!("127.0.0.1:{port}");
    let server = Server::start_with(
        ServerKind::Mast,
        ServerOptions::default().args(&["--nacos-addr", nacos.as_str()]),
    );
    let mut cmd = Command::new(&python);
    cmd.arg(python_dir().join("nacos_grpc.py"))
        .arg(&nacos)
        .arg(server.endpoint())
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    let out = Background::spawn(cmd, None)
        .expect("start python")
        .finish(Duration::from_secs(180));
    assert!(
        out.success() && out.stdout.trim_end().ends_with("ok"),
        "nacos_grpc.py failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn a_python_client_fails_over_to_another_member_and_registers_again() {
    let python = python_dir().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        python.display()
    );
    let ports: Vec<u16> = (0..3).map(|_| nacos_port()).collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let cluster = Cluster::start_each(ServerKind::Mast, 3, |i| {
        ServerOptions::default().args(&["--nacos-addr", addrs[i].as_str()])
    })
    .expect("three members");
    let urls: Vec<String> = cluster.members.iter().map(Server::endpoint).collect();
    let pids: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.pid().expect("running").to_string())
        .collect();
    let mut cmd = Command::new(&python);
    cmd.arg(python_dir().join("nacos_failover.py"))
        .arg(addrs.join(","))
        .arg(urls.join(","))
        .arg(pids.join(","))
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    let out = Background::spawn(cmd, None)
        .expect("start python")
        .finish(Duration::from_secs(300));
    assert!(
        out.success() && out.stdout.trim_end().ends_with("ok"),
        "nacos_failover.py failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}
