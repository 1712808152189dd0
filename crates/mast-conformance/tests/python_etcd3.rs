//! python-etcd3 (PyPI `etcd3` 0.12, `tests/python/etcd3_lock.py`) — its lock: taken, refused
//! while held, handed over, and mutual exclusion under contention — against a real etcd 3.4
//! first, then against Mast.
//!
//! Needs the virtualenv `scripts/install-test-deps.sh` makes at `tests/python/.venv`, and the
//! Mast binary (`cargo build -p mast`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mast_conformance::{Background, Server, ServerKind};

#[test]
fn python_etcd3_lock() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        python.display()
    );
    for kind in [ServerKind::Etcd, ServerKind::Mast] {
        let server = Server::start(kind);
        let hostport = server.endpoint().trim_start_matches("http://").to_string();
        let mut cmd = Command::new(&python);
        cmd.arg(dir.join("etcd3_lock.py"))
            .arg(&hostport)
            // etcd3 0.12's generated protobuf code predates protobuf 4's C++ checks.
            .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
            .current_dir(env!("CARGO_TARGET_TMPDIR"));
        let out = Background::spawn(cmd, None)
            .expect("start python")
            .finish(Duration::from_secs(120));
        assert!(
            out.success() && out.stdout.trim_end().ends_with("ok"),
            "etcd3_lock.py against {kind}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}
