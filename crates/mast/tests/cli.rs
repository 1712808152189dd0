//! The `mast` CLI against a `mast serve` process: each verb, in each output format.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mast");

struct Served {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("127.0.0.1:{port}");
    let child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--listen-client-urls", &format!("http://{endpoint}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Served {
        child,
        endpoint,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if mast(&s, &["endpoint", "health"]).status.success() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server did not start");
}

fn mast(s: &Served, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--endpoints")
        .arg(&s.endpoint)
        .args(args)
        .output()
        .unwrap()
}

fn ok(s: &Served, args: &[&str]) -> String {
    let out = mast(s, args);
    assert!(
        out.status.success(),
        "mast {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kv_verbs_in_each_format() {
    let s = serve();
    assert_eq!(ok(&s, &["put", "/a/1", "x"]), "OK\n");
    assert_eq!(ok(&s, &["put", "/a/2", "y"]), "OK\n");
    assert_eq!(ok(&s, &["get", "/a/", "--prefix"]), "/a/1\nx\n/a/2\ny\n");
    assert_eq!(
        ok(&s, &["get", "/a/", "--prefix", "--keys-only"]),
        "/a/1\n/a/2\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&s, &["get", "/a/1", "-w", "json"])).unwrap();
    assert_eq!(json["kvs"][0]["value"], "eA==");
    assert_eq!(json["header"]["revision"], "3");
    let table = ok(&s, &["get", "/a/1", "-w", "table"]);
    assert!(table.contains("KEY") && table.contains("/a/1"), "{table}");
    assert_eq!(ok(&s, &["del", "/a/", "--prefix"]), "2\n");
    let lease = ok(&s, &["lease", "grant", "30"]);
    assert!(
        lease.starts_with("lease ") && lease.ends_with("granted with TTL(30s)\n"),
        "{lease}"
    );
    assert!(ok(&s, &["member", "list"]).contains("started"));
    assert!(ok(&s, &["endpoint", "status", "-w", "json"]).contains("\"version\":\"3.5.0\""));
    let mut child = Command::new(BIN)
        .args(["--endpoints", &s.endpoint, "txn"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"create(\"t\") = \"0\"\n\nput t 1\nget t\n\nput t 2\n")
        .unwrap();
    let txn = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&txn.stdout),
        "SUCCESS\n\nOK\n\nt\n1\n\n"
    );
    let bad = mast(&s, &["get", "x", "--rev", "999"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("required revision is a future revision")
    );
    assert!(
        !String::from_utf8_lossy(&bad.stderr).contains("backtrace"),
        "no backtrace for users"
    );
}

#[test]
fn config_and_service_commands() {
    let s = serve();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("app.json");
    std::fs::write(&f, r#"{"port": 1}"#).unwrap();
    assert_eq!(
        ok(&s, &["config", "set", "app.json", f.to_str().unwrap()]),
        "published version 1\n"
    );
    std::fs::write(&f, r#"{"port": 2}"#).unwrap();
    assert_eq!(
        ok(&s, &["config", "set", "app.json", f.to_str().unwrap()]),
        "published version 2\n"
    );
    std::fs::write(&f, r#"{"port": "#).unwrap();
    let refused = mast(&s, &["config", "set", "app.json", f.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid json"));
    assert_eq!(ok(&s, &["config", "get", "app.json"]), r#"{"port": 2}"#);
    // No client has reported yet.
    let rollout: serde_json::Value =
        serde_json::from_str(&ok(&s, &["config", "rollout", "app.json", "-w", "json"])).unwrap();
    assert_eq!(
        (rollout["version"].as_u64(), rollout["clients"].as_u64()),
        (Some(2), Some(0))
    );
    assert!(ok(&s, &["config", "rollout", "app.json"]).starts_with("version 2 (md5 "));
    // A gray release for canaries, listed, then stopped; a bad rule is refused.
    let gray_file = dir.path().join("gray.json");
    std::fs::write(&gray_file, r#"{"port": 3}"#).unwrap();
    let g = gray_file.to_str().unwrap();
    let set = ["config", "gray", "set", "app.json", "--name", "canary"];
    let mut args = set.to_vec();
    args.extend(["--label", "canary=true", "--file", g]);
    assert!(ok(&s, &args).starts_with("recorded as history version 3"));
    assert!(ok(&s, &["config", "gray", "list", "app.json"]).contains("canary"));
    let mut bad = set.to_vec();
    bad.extend(["--percentage", "150"]);
    let out = mast(&s, &bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("percentage must be 0 to 100"));
    assert!(
        ok(
            &s,
            &["config", "gray", "stop", "app.json", "--name", "canary"]
        )
        .starts_with("recorded as history version 4")
    );
    let diff = ok(&s, &["config", "diff", "app.json", "1", "2"]);
    assert!(
        diff.contains("-{\"port\": 1}") && diff.contains("+{\"port\": 2}"),
        "{diff}"
    );
    assert_eq!(
        ok(&s, &["config", "rollback", "app.json", "1"]),
        "restored version 1 as version 5\n",
        "the gray entries took 3 and 4"
    );
    assert_eq!(ok(&s, &["config", "get", "app.json"]), r#"{"port": 1}"#);
    let hist: serde_json::Value =
        serde_json::from_str(&ok(&s, &["config", "history", "app.json", "-w", "json"])).unwrap();
    assert_eq!(hist.as_array().unwrap().len(), 5);
    assert_eq!(
        (hist[2]["op"].as_str(), hist[3]["op"].as_str()),
        (Some("gray-publish"), Some("gray-stop"))
    );
    assert_eq!(hist[4]["op"], "rollback");
    assert_eq!(hist[4]["rolledBackFrom"], 1);
    assert!(ok(&s, &["config", "list"]).contains("app.json"));

    // A registration made with etcd keys shows up in the service commands.
    ok(
        &s,
        &[
            "put",
            "/services/users/i1",
            r#"{"host":"10.0.0.1","port":3000}"#,
        ],
    );
    assert_eq!(ok(&s, &["service", "list"]), "users 1\n");
    let got: serde_json::Value =
        serde_json::from_str(&ok(&s, &["service", "get", "users", "-w", "json"])).unwrap();
    assert_eq!(got[0]["instance"]["host"], "10.0.0.1");
    assert!(ok(&s, &["service", "get", "users"]).contains("10.0.0.1:3000"));

    // An operator's drain, kept when the instance is put again (as a plain etcd client
    // registers), until unset.
    let set: serde_json::Value = serde_json::from_str(&ok(
        &s,
        &[
            "service",
            "set",
            "users",
            "i1",
            "--weight",
            "0",
            "--enabled",
            "false",
            "-w",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(
        (set["weight"].as_f64(), set["enabled"].as_bool()),
        (Some(0.0), Some(false))
    );
    let bad = mast(&s, &["service", "set", "users", "i1", "--weight=-2"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("weight must be a finite number >= 0"));
    let missing = mast(&s, &["service", "set", "users", "nobody", "--weight", "1"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not registered"));
    assert!(ok(&s, &["get", "/instance-overrides/users/i1"]).contains("\"weight\":0.0"));
    assert_eq!(
        ok(&s, &["service", "unset", "users", "i1"]),
        "users/i1: override cleared\n"
    );
    let got: serde_json::Value =
        serde_json::from_str(&ok(&s, &["service", "get", "users", "-w", "json"])).unwrap();
    assert_eq!(
        got[0]["instance"],
        serde_json::json!({"host": "10.0.0.1", "port": 3000})
    );
    assert_eq!(
        ok(&s, &["service", "unset", "users", "i1"]),
        "users/i1: no override\n"
    );

    // The audit log has those changes, with the API they came through.
    let page: serde_json::Value = serde_json::from_str(&ok(
        &s,
        &[
            "audit",
            "list",
            "--prefix",
            "/instance-overrides/",
            "-w",
            "json",
        ],
    ))
    .unwrap();
    let actions: Vec<(&str, &str)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["api"].as_str().unwrap()))
        .collect();
    assert_eq!(actions, [("put", "etcd"), ("delete", "etcd")], "{page}");
    assert!(ok(&s, &["audit", "list", "-w", "table"]).contains("/services/users/i1"));
    assert!(ok(&s, &["audit", "verify"]).starts_with("audit chain intact: "));
    assert_eq!(
        ok(&s, &["service", "deregister", "users", "i1"]),
        "deregistered\n"
    );
    assert_eq!(ok(&s, &["service", "list"]), "");
}
