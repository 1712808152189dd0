//! The Java Nacos client (`com.alibaba.nacos:nacos-client` 2.4, gRPC) against `mast serve`,
//! unchanged (`tests/java`, `mast.NacosJava`): config publish / get / listen with a change made
//! through etcd, naming register / list / subscribe / deregister; and, with auth on, a login
//! as a Mast user (right password: served; wrong: refused with 403).
//!
//! Needs a JDK and the classpath `scripts/install-test-deps.sh` resolves with Maven into
//! `tests/java/target/cp.txt`, and the Mast binary (`cargo build -p mast`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mast_conformance::{Background, Server, ServerKind, ServerOptions, free_port_pair};

fn java_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/java")
}

/// A Nacos HTTP port whose gRPC port (1000 above) is free too.
fn nacos_port() -> u16 {
    free_port_pair(1000)
}

/// Compiles `mast.NacosJava` and runs it against a fresh Mast (`env`: its environment) with
/// `extra` arguments after the Nacos address and the etcd URL.
fn run_java(env: &[(&str, &str)], extra: &[&str]) {
    let cp_file = java_dir().join("target/cp.txt");
    let deps = std::fs::read_to_string(&cp_file).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run scripts/install-test-deps.sh",
            cp_file.display()
        )
    });
    let scratch = tempfile::Builder::new()
        .prefix("nacos-java")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let classes = scratch.path().join("classes");
    std::fs::create_dir_all(&classes).unwrap();
    let status = Command::new("javac")
        .arg("-d")
        .arg(&classes)
        .arg("-cp")
        .arg(deps.trim())
        .arg(java_dir().join("src/main/java/mast/NacosJava.java"))
        .status()
        .expect("javac (a JDK is needed)");
    assert!(status.success(), "javac failed");

    let port = nacos_port();
    let nacos = format!("127.0.0.1:{port}");
    let mut options = ServerOptions::default().args(&["--nacos-addr", nacos.as_str()]);
    for (k, v) in env {
        options = options.env(k, v);
    }
    let server = Server::start_with(ServerKind::Mast, options);
    let mut cmd = Command::new("java");
    cmd.arg(format!(
        "-DJM.LOG.PATH={}",
        scratch.path().join("logs").display()
    ))
    .arg(format!(
        "-DJM.SNAPSHOT.PATH={}",
        scratch.path().join("snapshot").display()
    ))
    .arg("-cp")
    .arg(format!("{}:{}", classes.display(), deps.trim()))
    .arg("mast.NacosJava")
    .arg(&nacos)
    .arg(server.endpoint())
    .args(extra);
    let out = Background::spawn(cmd, None)
        .expect("start java")
        .finish(Duration::from_secs(180));
    assert!(
        out.success() && out.stdout.trim_end().ends_with("ok"),
        "mast.NacosJava {extra:?} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn the_java_nacos_client_works_unchanged_over_grpc() {
    run_java(&[], &[]);
}

#[test]
fn the_java_nacos_client_logs_in_as_a_mast_user() {
    run_java(&[("MAST_ROOT_PASSWORD", "guang")], &["auth"]);
}
