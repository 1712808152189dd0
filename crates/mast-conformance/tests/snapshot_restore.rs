//! Snapshots and restore: an etcd 3.4 backup (`etcdctl snapshot save`) restored with
//! `mast snapshot restore` into a new three-member Mast cluster holds what etcd held — the
//! same keys with the same revisions, versions and leases, the compacted revision, users,
//! roles and permissions — and `mast snapshot status` reads it as `etcdctl snapshot status`
//! does; a Mast snapshot restores the same way; a file without its hash, or with a wrong
//! one, is refused as etcd refuses it.

use std::path::Path;
use std::time::Duration;

use mast_conformance::cluster::Cluster;
use mast_conformance::{
    Background, Output, Server, ServerKind, ServerOptions, etcdctl, mast_binary,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `mast <args>`.
fn mast<S: AsRef<str>>(args: &[S]) -> Output {
    let mut cmd = std::process::Command::new(mast_binary());
    cmd.args(args.iter().map(AsRef::as_ref));
    Background::spawn(cmd, None)
        .expect("run mast")
        .finish(TIMEOUT)
}

#[track_caller]
fn ctl(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoint, args, None, TIMEOUT);
    assert!(out.success(), "etcdctl {args:?}:\n{out}");
    out.stdout
}

/// `get "" --prefix -w json` as root, without the header (whose IDs differ by cluster).
fn all_keys(endpoint: &str) -> Value {
    let out = ctl(
        endpoint,
        &["--user=root:pw", "get", "", "--prefix", "-w", "json"],
    );
    let mut v: Value = serde_json::from_str(&out).expect("json");
    v.as_object_mut().expect("object").remove("header");
    v
}

/// etcd data with history, a compaction, a lease, a delete, users, roles and auth on.
fn fill(endpoint: &str) {
    for args in [
        &["put", "/a", "1"][..],
        &["put", "/a", "2"],
        &["put", "/b", "x"],
        &["put", "/c", "y"],
        &["del", "/b"],
        &["put", "/a", "3"],
        &["compact", "4"],
        &["user", "add", "root:pw"],
        &["role", "add", "app"],
        &[
            "role",
            "grant-permission",
            "app",
            "--prefix=true",
            "readwrite",
            "/app/",
        ],
        &["user", "add", "u1:pw1"],
        &["user", "grant-role", "u1", "app"],
        &["auth", "enable"],
    ] {
        ctl(endpoint, args);
    }
    bulk(endpoint);
    let lease = ctl(endpoint, &["--user=root:pw", "lease", "grant", "600"]);
    let id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ctl(
        endpoint,
        &[
            "--user=root:pw",
            "put",
            "/leased",
            "v",
            &format!("--lease={id}"),
        ],
    );
}

/// Enough keys that the backend's trees have branch pages, and values over a page, so the
/// reader walks more than one leaf and follows overflow pages.
fn bulk(endpoint: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let opts = etcd_client::ConnectOptions::new().with_user("root", "pw");
        let mut c = etcd_client::Client::connect([endpoint], Some(opts))
            .await
            .expect("connect");
        for i in 0..1500 {
            let value = if i % 500 == 7 {
                "L".repeat(20_000)
            } else {
                format!("value-{i}-{}", "v".repeat(300))
            };
            c.put(format!("/bulk/{i:05}"), value, None)
                .await
                .expect("put");
        }
    });
}

fn snapshot_status(out: &str) -> (u64, u64, u64, u64) {
    let v: Value = serde_json::from_str(out.trim()).expect("status json");
    (
        v["hash"].as_u64().expect("hash"),
        v["revision"].as_u64().expect("revision"),
        v["totalKey"].as_u64().expect("totalKey"),
        v["totalSize"].as_u64().expect("totalSize"),
    )
}

fn restore_into(
    file: &Path,
    member: &Server,
    initial: &str,
    token: &str,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "snapshot".to_string(),
        "restore".into(),
        file.display().to_string(),
        format!("--data-dir={}", member.data_dir().display()),
        format!("--name={}", member.name()),
        format!("--initial-cluster={initial}"),
        format!("--initial-cluster-token={token}"),
        format!("--initial-advertise-peer-urls={}", member.peer_url()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    mast(&args)
}

#[test]
fn etcd_snapshot_restores_into_a_mast_cluster() {
    let etcd = Server::start(ServerKind::Etcd);
    let ep = etcd.endpoint();
    fill(&ep);
    let file = etcd.dir().join("backup.db");
    ctl(
        &ep,
        &[
            "--user=root:pw",
            "snapshot",
            "save",
            &file.display().to_string(),
        ],
    );
    let want = all_keys(&ep);
    let etcd_rev: u64 = {
        let out = ctl(&ep, &["--user=root:pw", "get", "/a", "-w", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["header"]["revision"].as_u64().unwrap()
    };

    // `snapshot status` reads the file as etcdctl does.
    let theirs = ctl(
        &ep,
        &[
            "snapshot",
            "status",
            &file.display().to_string(),
            "-w",
            "json",
        ],
    );
    let ours = mast(&[
        "snapshot",
        "status",
        &file.display().to_string(),
        "-w",
        "json",
    ]);
    assert!(ours.success(), "mast snapshot status:\n{ours}");
    assert_eq!(snapshot_status(&ours.stdout), snapshot_status(&theirs));

    // A copy without its hash, and one with a wrong hash, are refused.
    let bytes = std::fs::read(&file).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let bare = scratch.path().join("bare.db");
    std::fs::write(&bare, &bytes[..bytes.len() - 32]).unwrap();
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    let wrong = scratch.path().join("wrong.db");
    std::fs::write(&wrong, &bad).unwrap();
    let probe = Server::unstarted(ServerKind::Mast, ServerOptions::default()).unwrap();
    let one = format!("{}={}", probe.name(), probe.peer_url());
    let out = restore_into(&bare, &probe, &one, "t", &[]);
    assert!(
        !out.success()
            && out
                .stderr
                .contains("snapshot missing hash but --skip-hash-check=false"),
        "{out}"
    );
    let out = restore_into(&wrong, &probe, &one, "t", &[]);
    assert!(
        !out.success() && out.stderr.contains("integrity check failed"),
        "{out}"
    );
    assert!(
        !probe.data_dir().exists(),
        "a refused restore leaves nothing"
    );
    let out = restore_into(&bare, &probe, &one, "t", &["--skip-hash-check"]);
    assert!(out.success(), "{out}");
    let out = restore_into(&bare, &probe, &one, "t", &["--skip-hash-check"]);
    assert!(
        !out.success() && out.stderr.contains("exists"),
        "restoring over a data directory is refused: {out}"
    );
    drop(probe);

    // Three members restored from the backup start a new cluster that holds etcd's data.
    let mut cluster = Cluster::start_prepared(
        ServerKind::Mast,
        3,
        |_| ServerOptions::default(),
        |m, initial, token| {
            let out = restore_into(&file, m, initial, token, &[]);
            anyhow::ensure!(out.success(), "restore: {out}");
            Ok(())
        },
    )
    .expect("restored cluster");
    cluster
        .wait_leader(Duration::from_secs(20))
        .expect("leader");
    let endpoints = cluster.endpoints();
    for ep in endpoints.split(',') {
        assert_eq!(all_keys(ep), want, "member {ep} holds etcd's keys");
    }
    let ep = endpoints.split(',').next().unwrap().to_string();
    // History below the compaction is gone, above it is kept.
    let out = etcdctl(
        &ep,
        &["--user=root:pw", "get", "/a", "--rev=3"],
        None,
        TIMEOUT,
    );
    assert!(
        out.stderr.contains("required revision has been compacted"),
        "{out}"
    );
    assert_eq!(
        ctl(
            &ep,
            &[
                "--user=root:pw",
                "get",
                "/a",
                "--rev=5",
                "--print-value-only"
            ]
        )
        .trim(),
        "2"
    );
    // Users, roles and permissions came along.
    ctl(&ep, &["--user=u1:pw1", "put", "/app/x", "1"]);
    let out = etcdctl(&ep, &["--user=u1:pw1", "put", "/other", "1"], None, TIMEOUT);
    assert!(out.stderr.contains("permission denied"), "{out}");
    // The lease still holds its key.
    let leases = ctl(&ep, &["--user=root:pw", "lease", "list"]);
    let id = leases.lines().nth(1).expect("one lease").trim().to_string();
    let ttl = ctl(
        &ep,
        &["--user=root:pw", "lease", "timetolive", &id, "--keys"],
    );
    assert!(ttl.contains("/leased"), "{ttl}");
    // Revisions go on from etcd's: the u1 put above took the next one.
    let out = ctl(&ep, &["--user=root:pw", "get", "/app/x", "-w", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kvs"][0]["mod_revision"].as_u64(), Some(etcd_rev + 1));
}

#[test]
fn mast_snapshot_restores_into_a_new_member() {
    let src = Server::start(ServerKind::Mast);
    let ep = src.endpoint();
    fill(&ep);
    let file = src.dir().join("backup.db");
    let out = mast(&[
        "--endpoints",
        &ep,
        "--user",
        "root:pw",
        "snapshot",
        "save",
        &file.display().to_string(),
    ]);
    assert!(out.success(), "{out}");
    let want = all_keys(&ep);
    let hash = |ep: &str| {
        let out = ctl(ep, &["--user=root:pw", "endpoint", "hashkv", "-w", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0]["HashKV"]["hash"].as_u64().unwrap()
    };
    let want_hash = hash(&ep);
    let status = mast(&[
        "snapshot",
        "status",
        &file.display().to_string(),
        "-w",
        "json",
    ]);
    assert!(status.success(), "{status}");
    let v: Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(v["format"], "mast");

    let mut dest = Server::unstarted(ServerKind::Mast, ServerOptions::default()).unwrap();
    let one = format!("{}={}", dest.name(), dest.peer_url());
    let out = restore_into(&file, &dest, &one, "restored", &[]);
    assert!(out.success(), "{out}");
    dest.spawn().unwrap();
    dest.wait_ready().unwrap();
    let ep2 = dest.endpoint();
    assert_eq!(all_keys(&ep2), want);
    assert_eq!(hash(&ep2), want_hash, "the same rows, so the same HashKV");
    // A new cluster: its own ID.
    let id = |ep: &str| {
        let out = ctl(ep, &["--user=root:pw", "endpoint", "status", "-w", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0]["Status"]["header"]["cluster_id"].as_u64().unwrap()
    };
    assert_ne!(id(&ep), id(&ep2));
    ctl(&ep2, &["--user=root:pw", "put", "/after", "1"]);
}

/// Keys, values and leases of every key, without revisions (a migration gives new ones).
fn keys_values_leases(endpoint: &str, user: &str) -> Vec<(String, String, String)> {
    let out = ctl(
        endpoint,
        &[
            &format!("--user={user}"),
            "get",
            "",
            "--prefix",
            "-w",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&out).expect("json");
    v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap_or("").to_string(),
                        kv["value"].as_str().unwrap_or("").to_string(),
                        kv["lease"].to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn migrate_copies_a_live_etcd() {
    let etcd = Server::start(ServerKind::Etcd);
    let src = etcd.endpoint();
    fill(&src);
    let dest = Server::start(ServerKind::Mast);
    let dst = dest.endpoint();
    let migrate = || {
        mast(&[
            "--endpoints",
            &dst,
            "-w",
            "json",
            "migrate",
            "--from",
            &src,
            "--from-user",
            "root:pw",
            "--batch",
            "64",
        ])
    };
    let out = migrate();
    assert!(out.success(), "{out}");
    let summary: Value = serde_json::from_str(out.stdout.trim()).expect("summary json");
    assert_eq!(summary["keys copied"], "1503", "{summary}");
    assert_eq!(summary["leases copied"], "1", "{summary}");
    assert_eq!(summary["users copied (no password)"], "2", "{summary}");

    // Mast has no auth on: every key reads back as on etcd, with the same lease IDs.
    let want = keys_values_leases(&src, "root:pw");
    assert_eq!(want.len(), 1503);
    assert_eq!(keys_values_leases(&dst, "root:pw"), want);
    assert_eq!(
        ctl(&src, &["--user=root:pw", "lease", "list"]),
        ctl(&dst, &["lease", "list"])
    );
    for args in [
        &["role", "get", "app"][..],
        &["user", "get", "u1"],
        &["role", "list"],
        &["user", "list"],
    ] {
        let mut theirs = vec!["--user=root:pw"];
        theirs.extend_from_slice(args);
        assert_eq!(ctl(&src, &theirs), ctl(&dst, args), "{args:?}");
    }
    // Running it again changes nothing but the keys' revisions.
    let out = migrate();
    assert!(out.success(), "{out}");
    let again: Value = serde_json::from_str(out.stdout.trim()).expect("summary json");
    assert_eq!(again["leases copied"], "0", "{again}");
    assert_eq!(again["users already there"], "2", "{again}");
    assert_eq!(keys_values_leases(&dst, "root:pw"), want);
}
