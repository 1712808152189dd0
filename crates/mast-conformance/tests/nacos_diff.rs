//! Differential test of the Nacos v1 open API: the same requests, in the same order, against
//! r-nacos (the `rnacos` crate, a Nacos server written in Rust) and against Mast; every answer
//! is compared after normalizing what two servers may pick differently (timestamps, checksums,
//! instance ids, JSON key order, fields one server adds).
//!
//! r-nacos is not Nacos: where it answers differently from Nacos itself, the step says so
//! ([`Cmp::Diverges`], with the reason and Nacos's own answer, which Mast must give). Those
//! answers of Mast are checked against Nacos's source in `crates/mast-nacos/tests`.
//!
//! r-nacos applies writes asynchronously, so a read that differs is asked again of r-nacos
//! (bounded, 5 s) before the step fails. Needs `rnacos` 0.8 (`RNACOS_BIN`, `rnacos` on PATH,
//! `~/.cargo/bin/rnacos` or `target/rnacos/bin/rnacos`, which `scripts/install-test-deps.sh`
//! builds) and the Mast binary (`cargo build -p mast`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mast_conformance::{Background, Server, ServerKind, ServerOptions, free_port_pair};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// How a step's two answers are compared.
enum Cmp {
    /// Status, `Content-Type` and body, byte for byte (content reads, where clients use the
    /// type).
    Exact,
    /// Status and body, byte for byte (r-nacos answers writes with other content types than
    /// Nacos's `application/json` for a Boolean and `text/plain;charset=UTF-8` for "ok").
    Body,
    /// Status only: both refuse, with texts of their own (Mast's is Nacos's, checked elsewhere).
    Status,
    /// Status, and the bodies as JSON after `norm` (applied to both alike).
    Json(fn(&mut Value)),
    /// r-nacos answers differently from Nacos; Mast must answer Nacos's `status` with a body
    /// containing `body`.
    Diverges {
        /// Where r-nacos departs from Nacos (printed when Mast does not answer as Nacos).
        why: &'static str,
        status: u16,
        body: &'static str,
    },
}

struct Step {
    /// Sent to Mast only: r-nacos cannot take part (it would hold the request for long). Reads
    /// only, so the two servers' states stay alike; `cmp` is then a [`Cmp::Diverges`].
    mast_only: bool,
    method: Method,
    path: &'static str,
    params: &'static [(&'static str, &'static str)],
    headers: &'static [(&'static str, &'static str)],
    cmp: Cmp,
}

const fn step(
    method: Method,
    path: &'static str,
    params: &'static [(&'static str, &'static str)],
    cmp: Cmp,
) -> Step {
    Step {
        mast_only: false,
        method,
        path,
        params,
        headers: &[],
        cmp,
    }
}

/// One server's answer.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: String,
}

/// Keeps only `keep` of a JSON object's fields.
fn project(v: &mut Value, keep: &[&str]) {
    if let Value::Object(m) = v {
        m.retain(|k, _| keep.contains(&k.as_str()));
    }
}

/// An instance as both servers describe it (r-nacos's instance id is `ip#port`, Nacos's
/// `ip#port#cluster#group@@service`; r-nacos adds `marked`, Nacos's `instanceHeartBeat*`).
const INSTANCE_FIELDS: &[&str] = &[
    "ip",
    "port",
    "weight",
    "healthy",
    "enabled",
    "ephemeral",
    "clusterName",
    "serviceName",
    "metadata",
];

/// An instance list: name, clusters, cacheMillis and the hosts (by ip and port); the refresh
/// time and checksum are the server's own.
fn instance_list(v: &mut Value) {
    project(v, &["name", "clusters", "cacheMillis", "hosts"]);
    if let Some(Value::Array(hosts)) = v.get_mut("hosts") {
        for h in hosts.iter_mut() {
            project(h, INSTANCE_FIELDS);
        }
        hosts.sort_by_key(|h| (h["ip"].to_string(), h["port"].to_string()));
    }
}

/// One instance (`GET /nacos/v1/ns/instance`).
fn one_instance(v: &mut Value) {
    project(
        v,
        &[
            "service",
            "ip",
            "port",
            "clusterName",
            "weight",
            "healthy",
            "metadata",
        ],
    );
}

/// A service's detail; r-nacos lists a `DEFAULT` cluster for a service without instances and
/// adds `contextType` to the selector, so clusters and the selector are left out.
fn service_detail(v: &mut Value) {
    project(
        v,
        &[
            "namespaceId",
            "groupName",
            "name",
            "protectThreshold",
            "metadata",
        ],
    );
}

/// The service list, names sorted.
fn service_list(v: &mut Value) {
    if let Some(Value::Array(doms)) = v.get_mut("doms") {
        doms.sort_by_key(Value::to_string);
    }
}

/// The namespace list: ids, names and quotas (r-nacos reports `configCount` 0, no description
/// for public and type 6 for a custom namespace, where Nacos gives 2).
fn namespaces(v: &mut Value) {
    if let Some(Value::Array(items)) = v.get_mut("data") {
        for n in items.iter_mut() {
            project(n, &["namespace", "namespaceShowName", "quota"]);
        }
    }
}

/// The beat answer as JSON (key order differs).
fn as_is(_: &mut Value) {}

const JSON_CONTENT: &str = r#"{"v":1}"#;

fn script() -> Vec<Step> {
    use Cmp::*;
    let get = Method::GET;
    let post = Method::POST;
    let put = Method::PUT;
    let delete = Method::DELETE;
    const CS: &str = "/nacos/v1/cs/configs";
    const LISTEN: &str = "/nacos/v1/cs/configs/listener";
    const INST: &str = "/nacos/v1/ns/instance";
    const LIST: &str = "/nacos/v1/ns/instance/list";
    const SVC: &str = "/nacos/v1/ns/service";
    vec![
        // Configs.
        step(
            post.clone(),
            CS,
            &[
                ("dataId", "a.json"),
                ("group", "DEFAULT_GROUP"),
                ("content", JSON_CONTENT),
                ("type", "json"),
            ],
            Body,
        ),
        step(
            get.clone(),
            CS,
            &[("dataId", "a.json"), ("group", "DEFAULT_GROUP")],
            Exact,
        ),
        step(
            get.clone(),
            CS,
            &[("dataId", "missing"), ("group", "DEFAULT_GROUP")],
            Status,
        ),
        step(
            post.clone(),
            CS,
            &[
                ("dataId", "b.txt"),
                ("group", "G"),
                ("content", "hello"),
                ("tenant", "dev"),
            ],
            Body,
        ),
        step(
            get.clone(),
            CS,
            &[("dataId", "b.txt"), ("group", "G"), ("tenant", "dev")],
            Body,
        ),
        step(
            get.clone(),
            CS,
            &[("dataId", "b.txt"), ("group", "G")],
            Status,
        ),
        step(
            post.clone(),
            CS,
            &[
                ("dataId", "b.txt"),
                ("group", "G"),
                ("content", "hello again"),
                ("tenant", "dev"),
            ],
            Body,
        ),
        step(
            get.clone(),
            CS,
            &[("dataId", "b.txt"), ("group", "G"), ("tenant", "dev")],
            Body,
        ),
        // A long-polling listener with a stale md5 answers at once with the changed key.
        Step {
            mast_only: false,
            method: post.clone(),
            path: LISTEN,
            params: &[(
                "Listening-Configs",
                "b.txt\u{2}G\u{2}00000000000000000000000000000000\u{2}dev\u{1}",
            )],
            headers: &[("Long-Pulling-Timeout", "30000")],
            cmp: Body,
        },
        // With the current md5 (of "hello again") and `No-Hangup`, nothing changed: an empty
        // answer at once.
        Step {
            mast_only: true,
            method: post.clone(),
            path: LISTEN,
            params: &[(
                "Listening-Configs",
                "b.txt\u{2}G\u{2}44997f87b891f89472b7f2bbe4e000c3\u{2}dev\u{1}",
            )],
            headers: &[
                ("Long-Pulling-Timeout", "30000"),
                ("Long-Pulling-Timeout-No-Hangup", "true"),
            ],
            cmp: Diverges {
                why: "r-nacos ignores Long-Pulling-Timeout-No-Hangup and holds the request \
                      (Nacos answers at once, empty, when nothing changed)",
                status: 200,
                body: "",
            },
        },
        step(
            post.clone(),
            CS,
            &[("dataId", "a.json"), ("group", "DEFAULT_GROUP")],
            Diverges {
                why: "no content: Nacos's missing @RequestParam is a 500 'caused: Required \
                      request parameter ...'; r-nacos says 'content is blank'",
                status: 500,
                body: "Required request parameter",
            },
        ),
        step(
            get.clone(),
            CS,
            &[("dataId", "a.json")],
            Diverges {
                why: "no group: Nacos's v1 requires it (500, missing parameter); r-nacos \
                      defaults to DEFAULT_GROUP",
                status: 500,
                body: "Required request parameter",
            },
        ),
        step(
            delete.clone(),
            CS,
            &[("dataId", "b.txt"), ("group", "G"), ("tenant", "dev")],
            Body,
        ),
        step(
            get.clone(),
            CS,
            &[("dataId", "b.txt"), ("group", "G"), ("tenant", "dev")],
            Status,
        ),
        step(
            delete.clone(),
            CS,
            &[("dataId", "b.txt"), ("group", "G"), ("tenant", "dev")],
            Body,
        ),
        // Naming.
        step(
            post.clone(),
            INST,
            &[
                ("serviceName", "svc"),
                ("ip", "10.0.0.1"),
                ("port", "80"),
                ("weight", "2"),
                ("metadata", r#"{"k":"v"}"#),
            ],
            Body,
        ),
        step(
            post.clone(),
            INST,
            &[
                ("serviceName", "svc"),
                ("ip", "10.0.0.2"),
                ("port", "80"),
                ("enabled", "false"),
            ],
            Body,
        ),
        step(
            post.clone(),
            INST,
            &[
                ("serviceName", "svc"),
                ("ip", "10.0.0.3"),
                ("port", "81"),
                ("ephemeral", "false"),
            ],
            Body,
        ),
        step(
            post.clone(),
            INST,
            &[
                ("serviceName", "svc-down"),
                ("ip", "10.0.0.4"),
                ("port", "80"),
                ("healthy", "false"),
                ("ephemeral", "false"),
            ],
            Body,
        ),
        step(
            get.clone(),
            LIST,
            &[("serviceName", "svc-down")],
            Diverges {
                why: "a persistent instance registered with healthy=false: Nacos keeps it \
                      unhealthy (v1 register reads `healthy`); r-nacos lists it healthy",
                status: 200,
                body: r#""healthy":false"#,
            },
        ),
        step(
            get.clone(),
            LIST,
            &[("serviceName", "svc")],
            Json(instance_list),
        ),
        step(
            get.clone(),
            LIST,
            &[("serviceName", "svc"), ("healthyOnly", "true")],
            Json(instance_list),
        ),
        step(
            get.clone(),
            INST,
            &[("serviceName", "svc"), ("ip", "10.0.0.1"), ("port", "80")],
            Json(one_instance),
        ),
        step(
            get.clone(),
            INST,
            &[("serviceName", "svc"), ("ip", "10.0.0.9"), ("port", "80")],
            Diverges {
                why: "an unknown instance: Nacos answers 404 'no matched ip found!'; r-nacos \
                      500 'error'",
                status: 404,
                body: "no matched ip found!",
            },
        ),
        step(
            put.clone(),
            INST,
            &[
                ("serviceName", "svc"),
                ("ip", "10.0.0.1"),
                ("port", "80"),
                ("weight", "5"),
            ],
            Body,
        ),
        step(
            get.clone(),
            LIST,
            &[("serviceName", "svc")],
            Json(instance_list),
        ),
        step(
            put.clone(),
            "/nacos/v1/ns/instance/beat",
            &[
                ("serviceName", "svc"),
                (
                    "beat",
                    r#"{"ip":"10.0.0.1","port":80,"serviceName":"svc","cluster":"DEFAULT"}"#,
                ),
            ],
            Json(as_is),
        ),
        step(
            delete.clone(),
            INST,
            &[("serviceName", "svc"), ("ip", "10.0.0.2"), ("port", "80")],
            Body,
        ),
        step(
            get.clone(),
            LIST,
            &[("serviceName", "svc")],
            Json(instance_list),
        ),
        step(
            get.clone(),
            LIST,
            &[("serviceName", "nosuch")],
            Json(instance_list),
        ),
        step(
            post.clone(),
            INST,
            &[
                ("serviceName", "svc"),
                ("ip", "10.0.0.1"),
                ("port", "99999"),
            ],
            Diverges {
                why: "a port out of range: Nacos's checker refuses it (400); r-nacos stores it",
                status: 400,
                body: "Param 'port' is illegal",
            },
        ),
        step(
            post.clone(),
            INST,
            &[("serviceName", "svc"), ("ip", "10.0.0.1")],
            Diverges {
                why: "no port: Nacos 400 'Param 'port' is required.'; r-nacos 500",
                status: 400,
                body: "Param 'port' is required.",
            },
        ),
        // Services.
        step(
            post.clone(),
            SVC,
            &[("serviceName", "s2"), ("protectThreshold", "0.5")],
            Body,
        ),
        step(
            get.clone(),
            SVC,
            &[("serviceName", "s2")],
            Json(service_detail),
        ),
        step(
            post.clone(),
            SVC,
            &[("serviceName", "s2")],
            Diverges {
                why: "creating an existing service: Nacos 400 'specified service ... already \
                      exists!'; r-nacos 'ok'",
                status: 400,
                body: "already exists!",
            },
        ),
        step(
            put.clone(),
            SVC,
            &[("serviceName", "s2"), ("protectThreshold", "0.8")],
            Body,
        ),
        step(
            get.clone(),
            SVC,
            &[("serviceName", "s2")],
            Json(service_detail),
        ),
        step(
            get.clone(),
            "/nacos/v1/ns/service/list",
            &[("pageNo", "1"), ("pageSize", "10")],
            Json(service_list),
        ),
        step(delete.clone(), SVC, &[("serviceName", "s2")], Body),
        step(
            get.clone(),
            SVC,
            &[("serviceName", "s2")],
            Diverges {
                why: "a deleted service: Nacos 400 'service not found, ...'; r-nacos 500",
                status: 400,
                body: "service not found",
            },
        ),
        step(
            get.clone(),
            "/nacos/v1/ns/service/list",
            &[("pageNo", "1"), ("pageSize", "10")],
            Json(service_list),
        ),
        // Namespaces.
        step(
            post.clone(),
            "/nacos/v1/console/namespaces",
            &[
                ("customNamespaceId", "dev"),
                ("namespaceName", "Dev"),
                ("namespaceDesc", "for development"),
            ],
            Body,
        ),
        step(
            get.clone(),
            "/nacos/v1/console/namespaces",
            &[],
            Json(namespaces),
        ),
    ]
}

async fn send(http: &reqwest::Client, base: &str, s: &Step) -> Answer {
    let url = format!("{base}{}", s.path);
    let mut req = http.request(s.method.clone(), &url);
    req = if s.method == Method::GET || s.method == Method::DELETE {
        req.query(s.params)
    } else {
        req.form(s.params)
    };
    for (k, v) in s.headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {url}: {e}", s.method));
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.text().await.unwrap_or_default();
    Answer {
        status,
        content_type,
        body,
    }
}

/// Whether two answers agree under `cmp` (`Ok`), or how they differ.
fn agree(cmp: &Cmp, nacos: &Answer, mast: &Answer) -> Result<(), String> {
    let json = |a: &Answer, norm: fn(&mut Value)| -> Result<Value, String> {
        let mut v: Value =
            serde_json::from_str(&a.body).map_err(|e| format!("not JSON ({e}): {}", a.body))?;
        norm(&mut v);
        Ok(v)
    };
    let same = match cmp {
        Cmp::Exact => nacos == mast,
        Cmp::Body => nacos.status == mast.status && nacos.body == mast.body,
        Cmp::Status => nacos.status == mast.status,
        Cmp::Json(norm) => nacos.status == mast.status && json(nacos, *norm)? == json(mast, *norm)?,
        Cmp::Diverges { why, status, body } => {
            return if mast.status.as_u16() == *status && mast.body.contains(body) {
                Ok(())
            } else {
                Err(format!(
                    "({why}) Mast should answer Nacos's {status} with {body:?}; it answered \
                     {mast:?}"
                ))
            };
        }
    };
    if same {
        Ok(())
    } else if let Cmp::Json(norm) = cmp {
        Err(format!(
            "r-nacos: {} {}\n   Mast: {} {}",
            nacos.status,
            json(nacos, *norm).map_or_else(|e| e, |v| v.to_string()),
            mast.status,
            json(mast, *norm).map_or_else(|e| e, |v| v.to_string()),
        ))
    } else {
        Err(format!("r-nacos: {nacos:?}\n   Mast: {mast:?}"))
    }
}

fn rnacos_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RNACOS_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("rnacos"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string())
    }) {
        candidates.push(PathBuf::from(home).join("bin/rnacos"));
    }
    candidates.push(mast_conformance::workspace_root().join("target/rnacos/bin/rnacos"));
    candidates.into_iter().find(|p| p.is_file())
}

/// A running r-nacos on `port` (HTTP) and `port + 1000` (gRPC), stopped by PID when dropped.
struct RNacos {
    _process: Background,
    _dir: tempfile::TempDir,
    url: String,
}

/// Starts r-nacos on a fresh data directory and waits until a write is applied. r-nacos 0.8.8
/// may panic on a first write that races its single-member Raft start-up (an unwrap in its
/// `raftapply.rs`): then it is started again on a new directory, at most three times.
async fn start_rnacos(http: &reqwest::Client) -> RNacos {
    let bin = rnacos_binary()
        .expect("rnacos is missing: run scripts/install-test-deps.sh (or set RNACOS_BIN)");
    for attempt in 1..=3 {
        let port = free_port_pair(1000);
        let grpc = port + 1000;
        let dir = tempfile::Builder::new()
            .prefix("rnacos")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let mut cmd = Command::new(&bin);
        cmd.current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .env("RNACOS_SDK_HOST", "127.0.0.1")
            .env("RNACOS_CONSOLE_HOST", "127.0.0.1")
            .env("RNACOS_HTTP_PORT", port.to_string())
            .env("RNACOS_GRPC_PORT", grpc.to_string())
            .env("RNACOS_RAFT_NODE_ADDR", format!("127.0.0.1:{grpc}"))
            .env("RNACOS_HTTP_CONSOLE_PORT", "0")
            .env("RNACOS_DATA_DIR", dir.path().join("data"))
            .env("RNACOS_ENABLE_OPEN_API_AUTH", "false");
        let mut process = Background::spawn(cmd, None).expect("start rnacos");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ready = false;
        while Instant::now() < deadline && !process.exited() {
            let probe = http
                .post(format!("{url}/nacos/v1/cs/configs"))
                .form(&[
                    ("dataId", "startup-probe"),
                    ("group", "probe"),
                    ("content", "ok"),
                ])
                .send()
                .await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                let read = http
                    .get(format!("{url}/nacos/v1/cs/configs"))
                    .query(&[("dataId", "startup-probe"), ("group", "probe")])
                    .send()
                    .await;
                if read.is_ok_and(|r| r.status().is_success()) {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let panicked = process.output_so_far().1.contains("panicked");
        if ready && !panicked {
            // Remove the probe, so config counts match.
            let _ = http
                .delete(format!("{url}/nacos/v1/cs/configs"))
                .query(&[("dataId", "startup-probe"), ("group", "probe")])
                .send()
                .await;
            return RNacos {
                _process: process,
                _dir: dir,
                url,
            };
        }
        eprintln!(
            "r-nacos attempt {attempt} not ready (panicked: {panicked}); stderr:\n{}",
            process.output_so_far().1
        );
    }
    panic!("r-nacos did not start in three attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nacos_v1_api_answers_as_r_nacos_does() {
    let http = reqwest::Client::new();
    let rnacos = start_rnacos(&http).await;
    let port = free_port_pair(1000);
    let nacos_addr = format!("127.0.0.1:{port}");
    let _mast = Server::start_with(
        ServerKind::Mast,
        ServerOptions::default().args(&["--nacos-addr", nacos_addr.as_str()]),
    );
    let mast_url = format!("http://{nacos_addr}");

    let mut failures = Vec::new();
    let mut diverging = 0;
    for (i, s) in script().iter().enumerate() {
        let started = Instant::now();
        let mast = send(&http, &mast_url, s).await;
        if s.mast_only {
            diverging += 1;
            if let Err(diff) = agree(&s.cmp, &mast, &mast) {
                failures.push(format!("step {i}: {} {}\n   {diff}", s.method, s.path));
            }
            continue;
        }
        let mut nacos = send(&http, &rnacos.url, s).await;
        if matches!(s.cmp, Cmp::Diverges { .. }) {
            diverging += 1;
        }
        // r-nacos applies writes asynchronously: ask a read again until it settles (bounded).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut verdict = agree(&s.cmp, &nacos, &mast);
        while verdict.is_err()
            && s.method == Method::GET
            && !matches!(s.cmp, Cmp::Diverges { .. })
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            nacos = send(&http, &rnacos.url, s).await;
            verdict = agree(&s.cmp, &nacos, &mast);
        }
        if started.elapsed() > Duration::from_secs(2) {
            eprintln!("step {i} took {:?}", started.elapsed());
        }
        if let Err(diff) = verdict {
            failures.push(format!(
                "step {i}: {} {} {:?}\n   {diff}",
                s.method, s.path, s.params
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} steps differ:\n{}",
        failures.len(),
        script().len(),
        failures.join("\n")
    );
    eprintln!(
        "{} steps agree with r-nacos; {diverging} where r-nacos departs from Nacos answer as Nacos",
        script().len() - diverging
    );
}
