//! The registry and config HTTP API through real HTTP against an in-process server (the same
//! `Server::start_with(config, router)` the binary runs), checked also through the etcd JSON
//! gateway on the same port so both views of the data agree.

use std::time::{Duration, Instant};

use base64::Engine;
use futures::StreamExt;
use mast_registry::RegistryConfig;
use mast_server::node::Secret;
use mast_server::{Server, ServerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct TestServer {
    server: Option<Server>,
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        Self::start_with(|_| {}, RegistryConfig::default()).await
    }

    async fn start_with(f: impl FnOnce(&mut ServerConfig), rc: RegistryConfig) -> TestServer {
        Self::start_in(tempfile::tempdir().unwrap(), f, rc).await
    }

    /// A server on the data directory `dir` (a restart, when it holds a store).
    async fn start_in(
        dir: tempfile::TempDir,
        f: impl FnOnce(&mut ServerConfig),
        rc: RegistryConfig,
    ) -> TestServer {
        let mut cfg = ServerConfig::new(dir.path());
        cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
        f(&mut cfg);
        let server = Server::start_with(cfg, move |node| mast_registry::router_with(node, rc))
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addrs()[0]);
        TestServer {
            server: Some(server),
            base,
            http: reqwest::Client::new(),
            token: None,
            _dir: dir,
        }
    }

    fn node(&self) -> &std::sync::Arc<mast_server::Node> {
        self.server.as_ref().unwrap().node()
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.header("Authorization", t),
            None => r,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut r = self.request(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {status}: {text:?}"));
        (status, v)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// The current store revision, through the etcd JSON gateway.
    async fn revision(&self) -> i64 {
        let (s, v) = self
            .call(Method::POST, "/v3/kv/range", Some(json!({"key": b64("/")})))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["header"]["revision"].as_str().unwrap().parse().unwrap()
    }

    /// One key through the etcd JSON gateway: (value, lease).
    async fn etcd_get(&self, key: &str) -> Option<(Vec<u8>, i64)> {
        let (s, v) = self
            .call(Method::POST, "/v3/kv/range", Some(json!({"key": b64(key)})))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let kv = v["kvs"].as_array()?.first()?.clone();
        let value = base64::engine::general_purpose::STANDARD
            .decode(kv["value"].as_str().unwrap_or(""))
            .unwrap();
        let lease = kv["lease"].as_str().map_or(0, |l| l.parse().unwrap());
        Some((value, lease))
    }

    async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await;
    }

    /// Stops the server and hands back its data directory.
    async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        self.server.take().unwrap().shutdown().await;
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self._dir, dir)
    }

    /// Logs in through the etcd JSON gateway and uses the token from then on.
    async fn login(&mut self, name: &str, password: &str) {
        self.token = None;
        let (s, v) = self
            .call(
                Method::POST,
                "/v3/auth/authenticate",
                Some(json!({"name": name, "password": password})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        self.token = Some(v["token"].as_str().unwrap().to_string());
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn ids(list: &Value) -> Vec<String> {
    list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_heartbeat_expire_and_etcd_view() {
    let t = TestServer::start().await;
    let (s, v) = t
        .call(
            Method::POST,
            "/mast/v1/services/user-service/instances",
            Some(
                json!({"id": "i1", "host": "localhost", "port": 3000, "ttl": 2,
                        "metadata": {"version": "v1"}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["ephemeral"], true);
    assert_eq!(v["grantedTtl"], 2);
    let lease: i64 = v["leaseId"].as_str().unwrap().parse().unwrap();

    // The same data through the etcd KV API, at the seeds' key.
    let (value, etcd_lease) = t.etcd_get("/services/user-service/i1").await.unwrap();
    let stored: Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(stored["host"], "localhost");
    assert_eq!(stored["port"], 3000);
    assert_eq!(stored["metadata"]["version"], "v1");
    assert_eq!(etcd_lease, lease);

    let (s, v) = t
        .get("/mast/v1/services/user-service/instances?healthy=true")
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ids(&v), ["i1"]);
    assert!(v["revision"].as_i64().unwrap() > 0);
    let (_, v) = t.get("/mast/v1/services").await;
    assert_eq!(
        v["services"],
        json!([{"name": "user-service", "instances": 1, "healthyInstances": 1,
                "availableInstances": 1}])
    );

    // Heartbeats keep it past its 2 s TTL.
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        let (s, v) = t
            .call(
                Method::PUT,
                "/mast/v1/services/user-service/instances/i1/heartbeat",
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["ttl"], 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, v) = t.get("/mast/v1/services/user-service/instances").await;
    assert_eq!(ids(&v), ["i1"]);

    // Without heartbeats it is gone after its TTL, for etcd clients too.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (_, v) = t.get("/mast/v1/services/user-service/instances").await;
        if ids(&v).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "instance outlived its lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(t.etcd_get("/services/user-service/i1").await.is_none());
    let (s, v) = t
        .call(
            Method::PUT,
            "/mast/v1/services/user-service/instances/i1/heartbeat",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["code"], "not_found");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_filter_deregister() {
    let t = TestServer::start().await;
    for (id, port) in [("a", 1), ("b", 2)] {
        let (s, v) = t
            .call(
                Method::POST,
                "/mast/v1/services/orders/instances",
                Some(json!({"id": id, "host": "10.0.0.1", "port": port, "metadata": {"v": "1"}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    // Default id is host:port; a persistent instance has no lease.
    let (s, v) = t
        .call(
            Method::POST,
            "/mast/v1/services/orders/instances",
            Some(json!({"host": "10.0.0.2", "port": 8080, "ephemeral": false})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["id"], "10.0.0.2:8080");
    assert_eq!(v["ephemeral"], false);
    assert_eq!(v["healthy"], true);
    assert!(v.get("leaseId").is_none());
    let (s, v) = t
        .call(
            Method::PUT,
            "/mast/v1/services/orders/instances/10.0.0.2:8080/heartbeat",
            None,
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_lease"))
    );

    let (_, before) = t.get("/mast/v1/services/orders/instances/a").await;
    let (s, v) = t
        .call(
            Method::PATCH,
            "/mast/v1/services/orders/instances/a",
            Some(json!({"enabled": false, "weight": 5, "metadata": {"v": "2", "zone": "z1"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["enabled"], false);
    assert_eq!(v["weight"], 5.0);
    assert_eq!(v["metadata"], json!({"v": "2", "zone": "z1"}));
    assert_eq!(v["leaseId"], before["leaseId"], "update keeps the lease");

    let (_, v) = t
        .get("/mast/v1/services/orders/instances?enabled=true")
        .await;
    assert_eq!(ids(&v), ["10.0.0.2:8080", "b"]);
    let (_, v) = t
        .get("/mast/v1/services/orders/instances?enabled=false&healthy=true")
        .await;
    assert_eq!(ids(&v), ["a"]);
    let (_, v) = t.get("/mast/v1/services").await;
    assert_eq!(v["services"][0]["instances"], 3);
    assert_eq!(v["services"][0]["availableInstances"], 2);

    // Merge patch: null removes a label.
    let (s, v) = t
        .call(
            Method::PATCH,
            "/mast/v1/services/orders/instances/a",
            Some(json!({"metadata": {"zone": null}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"], json!({"v": "2"}));
    let (value, _) = t.etcd_get("/services/orders/a").await.unwrap();
    let stored: Value = serde_json::from_slice(&value).unwrap();
    assert_eq!(
        (stored["weight"].clone(), stored["enabled"].clone()),
        (json!(5.0), json!(false))
    );

    // Bad input: clear errors, never a panic.
    for (method, path, body) in [
        (
            Method::PATCH,
            "/mast/v1/services/orders/instances/a",
            json!({"weight": -1}),
        ),
        (
            Method::PATCH,
            "/mast/v1/services/orders/instances/a",
            json!({"wieght": 1}),
        ),
        (
            Method::POST,
            "/mast/v1/services/orders/instances",
            json!({"host": "h", "port": 0}),
        ),
        (
            Method::POST,
            "/mast/v1/services/orders/instances",
            json!({"host": "h"}),
        ),
        (
            Method::POST,
            "/mast/v1/services/orders/instances",
            json!({"host": "h", "port": 1, "ttl": -5}),
        ),
    ] {
        let (s, v) = t.call(method, path, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["code"], "invalid_argument");
        assert!(v["error"].as_str().unwrap().len() > 5);
    }
    let (s, v) = t
        .call(
            Method::PATCH,
            "/mast/v1/services/orders/instances/nope",
            Some(json!({"weight": 1})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // Deregister: the key and its lease go.
    let lease: i64 = before["leaseId"].as_str().unwrap().parse().unwrap();
    let (s, v) = t
        .call(Method::DELETE, "/mast/v1/services/orders/instances/a", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["leaseRevoked"], true);
    assert_eq!(t.node().lease_key_count(lease), None);
    let (s, _) = t
        .call(Method::DELETE, "/mast/v1/services/orders/instances/a", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t.get("/mast/v1/services/orders/instances/a").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    t.stop().await;
}

const CFG: &str = "/mast/v1/configs/dev/DEFAULT_GROUP";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_validates_every_format_and_schema() {
    let t = TestServer::start().await;
    let good = [
        ("app.json", "json", "{\"port\": 8080}"),
        ("app.yaml", "yaml", "port: 8080\nhosts: [a, b]\n"),
        ("app.toml", "toml", "port = 8080\n[db]\nurl = 'x'\n"),
        ("app.properties", "properties", "port=8080\nname = mast\n"),
        ("notes", "text", "anything at all {"),
    ];
    for (data_id, format, content) in good {
        let (s, v) = t
            .call(
                Method::PUT,
                &format!("{CFG}/{data_id}"),
                Some(json!({"content": content, "format": format})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{data_id}: {v}");
        assert_eq!(v["version"], 1);
        assert_eq!(v["format"], format);
        let (s, v) = t.get(&format!("{CFG}/{data_id}")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["content"], content);
        assert_eq!(v["md5"], mast_model::md5_hex(content.as_bytes()));
        // Raw content at the seeds-style key for plain etcd clients.
        let (raw, _) = t
            .etcd_get(&format!("/configs/dev/DEFAULT_GROUP/{data_id}"))
            .await
            .unwrap();
        assert_eq!(raw, content.as_bytes());
    }
    let (_, list) = t.get("/mast/v1/configs?namespace=dev").await;
    assert_eq!(list["configs"].as_array().unwrap().len(), 5);
    let (_, list) = t.get("/mast/v1/configs?search=app.").await;
    assert_eq!(list["configs"].as_array().unwrap().len(), 4);

    // Invalid content is refused and nothing changes.
    let rev = t.revision().await;
    let bad = [
        (
            "app.json",
            json!({"content": "{\"port\": 80", "format": "json"}),
            "invalid_content",
        ),
        (
            "app.yaml",
            json!({"content": "a: [1, 2\n"}),
            "invalid_content",
        ),
        (
            "app.toml",
            json!({"content": "port = \n"}),
            "invalid_content",
        ),
        (
            "new.yml",
            json!({"content": "a: [1, 2\n"}),
            "invalid_content",
        ),
        (
            "app.json",
            json!({"content": "{}", "format": "ini"}),
            "invalid_argument",
        ),
        (
            "app.json",
            json!({"content": "{}", "schema": {"type": 12}}),
            "invalid_schema",
        ),
        (
            "notes",
            json!({"content": "x", "schema": {"type": "object"}}),
            "invalid_schema",
        ),
    ];
    for (data_id, body, code) in bad {
        let (s, v) = t
            .call(Method::PUT, &format!("{CFG}/{data_id}"), Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["code"], code, "{body}: {v}");
    }
    assert_eq!(t.revision().await, rev, "refused publishes change nothing");
    let (_, v) = t.get(&format!("{CFG}/app.json")).await;
    assert_eq!(
        (v["version"].clone(), v["content"].clone()),
        (json!(1), json!("{\"port\": 8080}"))
    );

    // A schema attached with a valid publish applies to later publishes, in any format.
    let schema = json!({"type": "object", "required": ["port"],
                        "properties": {"port": {"type": "integer", "minimum": 1}}});
    let (s, v) = t
        .call(
            Method::PUT,
            &format!("{CFG}/app.yaml"),
            Some(json!({"content": "port: 9090\n", "schema": schema})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hasSchema"], true);
    assert_eq!(v["version"], 2);
    let rev = t.revision().await;
    let (s, v) = t
        .call(
            Method::PUT,
            &format!("{CFG}/app.yaml"),
            Some(json!({"content": "port: zero\n"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("schema_violation")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("port"), "{v}");
    assert_eq!(t.revision().await, rev);
    let (_, v) = t.get(&format!("{CFG}/app.yaml")).await;
    assert_eq!(v["schema"], schema);
    // A dry run answers as the publish would (the same refusal, or the version it would
    // make) and stores nothing.
    let (s, v) = t
        .call(
            Method::PUT,
            &format!("{CFG}/app.yaml?dryRun=true"),
            Some(json!({"content": "port: zero\n"})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("schema_violation")),
        "{v}"
    );
    let (s, v) = t
        .call(
            Method::PUT,
            &format!("{CFG}/app.yaml?dryRun=true"),
            Some(json!({"content": "port: 7070\n", "expectedVersion": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["dryRun"].clone(), v["version"].clone()),
        (json!(true), json!(3)),
        "{v}"
    );
    let (s, v) = t
        .call(
            Method::PUT,
            &format!("{CFG}/app.yaml?dryRun=true"),
            Some(json!({"content": "port: 7070\n", "expectedVersion": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(t.revision().await, rev, "dry runs store nothing");
    let (_, v) = t.get(&format!("{CFG}/app.yaml")).await;
    assert_eq!(
        (v["version"].clone(), v["content"].clone()),
        (json!(2), json!("port: 9090\n"))
    );
    // Detaching the schema lets anything well-formed through again.
    let (s, v) = t
        .call(
            Method::PUT,
            &format!("{CFG}/app.yaml"),
            Some(json!({"content": "port: zero\n", "schema": null})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hasSchema"], false);

    // Too large for one etcd request: refused as such, nothing written.
    let rev = t.revision().await;
    let (s, v) = t
        .call(
            Method::PUT,
            &format!("{CFG}/big.txt"),
            Some(json!({"content": "x".repeat(1_000_000)})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")),
        "{v}"
    );
    assert_eq!(t.revision().await, rev);

    // Optimistic concurrency from the client.
    let (s, v) = t
        .call(
            Method::PUT,
            &format!("{CFG}/app.json"),
            Some(json!({"content": "{}", "expectedVersion": 7})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    let (s, _) = t
        .call(
            Method::PUT,
            &format!("{CFG}/app.json"),
            Some(json!({"content": "{}", "expectedVersion": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = t.get(&format!("{CFG}/missing.json")).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_diff_rollback_survive_compaction() {
    let t = TestServer::start().await;
    let path = format!("{CFG}/svc.json");
    let versions = [
        "{\n  \"port\": 1,\n  \"host\": \"a\"\n}\n",
        "{\n  \"port\": 2,\n  \"host\": \"a\"\n}\n",
        "{\n  \"port\": 3,\n  \"host\": \"b\"\n}\n",
    ];
    for (i, content) in versions.iter().enumerate() {
        let (s, v) = t
            .call(
                Method::PUT,
                &path,
                Some(json!({"content": content, "author": "ops"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["version"], i as u64 + 1);
        assert_eq!(v["format"], "json", "format from the data id");
    }
    let (_, h) = t.get(&format!("{path}/history")).await;
    let vs: Vec<u64> = h["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(vs, [3, 2, 1]);
    assert_eq!(h["versions"][0]["op"], "publish");
    assert_eq!(h["versions"][0]["author"], "ops");
    assert_eq!(h["retention"], 100);
    let (_, h) = t.get(&format!("{path}/history?limit=1")).await;
    assert_eq!(h["versions"].as_array().unwrap().len(), 1);

    let (_, d) = t.get(&format!("{path}/diff?from=1&to=3")).await;
    assert_eq!(d["identical"], false);
    let diff = d["diff"].as_str().unwrap();
    assert!(diff.contains("--- svc.json@1"), "{diff}");
    assert!(diff.contains("+++ svc.json@3"), "{diff}");
    assert!(diff.contains("-  \"port\": 1,"), "{diff}");
    assert!(diff.contains("+  \"port\": 3,"), "{diff}");
    let (_, d) = t.get(&format!("{path}/diff?from=2")).await;
    assert_eq!(d["to"], 3, "to defaults to the latest version");

    // Compact at the current revision: history lives under its own keys and survives.
    let rev = t.revision().await;
    mast_server::api::kv::compact(
        t.node(),
        &mast_server::authz::Caller::default(),
        mast_proto::etcdserverpb::CompactionRequest {
            revision: rev,
            physical: true,
        },
    )
    .await
    .unwrap();
    let (_, h) = t.get(&format!("{path}/history")).await;
    assert_eq!(h["versions"].as_array().unwrap().len(), 3);
    let (s, v1) = t.get(&format!("{path}/history/1")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v1["content"], versions[0]);
    assert_eq!(v1["namespace"], "dev");

    // Rollback publishes version 1's content as version 4; nothing is deleted.
    let (s, v) = t
        .call(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"version": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 4);
    assert_eq!(v["rolledBackFrom"], 1);
    let (_, cur) = t.get(&path).await;
    assert_eq!(cur["content"], versions[0]);
    let (_, e4) = t.get(&format!("{path}/history/4")).await;
    assert_eq!(
        (e4["op"].clone(), e4["rolledBackFrom"].clone()),
        (json!("rollback"), json!(1))
    );
    let (_, d) = t.get(&format!("{path}/diff?from=1&to=4")).await;
    assert_eq!(
        (d["identical"].clone(), d["diff"].clone()),
        (json!(true), json!(""))
    );
    let (s, v) = t
        .call(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"version": 42})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // Delete keeps history; a new publish continues the numbering.
    let (s, v) = t.call(Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 5);
    let (s, _) = t.get(&path).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t.call(Method::DELETE, &path, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, h) = t.get(&format!("{path}/history")).await;
    assert_eq!(h["versions"][0]["op"], "delete");
    assert_eq!(h["versions"].as_array().unwrap().len(), 5);
    let (s, v) = t
        .call(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"version": 5})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "a delete record is not content: {v}"
    );
    let (s, v) = t
        .call(
            Method::POST,
            &format!("{path}/rollback"),
            Some(json!({"version": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 6);
    let (_, cur) = t.get(&path).await;
    assert_eq!(cur["content"], versions[1]);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_old_versions() {
    let rc = RegistryConfig {
        history_retention: 3,
        ..RegistryConfig::default()
    };
    let t = TestServer::start_with(|_| {}, rc).await;
    let path = format!("{CFG}/r.txt");
    for i in 1..=5 {
        let (s, v) = t
            .call(
                Method::PUT,
                &path,
                Some(json!({"content": format!("v{i}")})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, h) = t.get(&format!("{path}/history")).await;
    let vs: Vec<u64> = h["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(vs, [5, 4, 3]);
    assert_eq!(h["retention"], 3);
    let (s, v) = t.get(&format!("{path}/history/2")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = t.get(&format!("{path}/diff?from=1")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        t.etcd_get("/config-history/dev/DEFAULT_GROUP/r.txt/00000000000000000002")
            .await
            .is_none()
    );
    t.stop().await;
}

/// One parsed Server-Sent Event.
#[derive(Debug)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    async fn open(t: &TestServer, query: &str, last_event_id: Option<&str>) -> SseReader {
        let mut r = t.request(Method::GET, &format!("/mast/v1/events{query}"));
        if let Some(id) = last_event_id {
            r = r.header("Last-Event-ID", id);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        SseReader {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Sse {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                while let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let (mut event, mut id, mut data) = (String::from("message"), None, None);
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            event = v.trim().to_string();
                        } else if let Some(v) = line.strip_prefix("id:") {
                            id = Some(v.trim().to_string());
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data = Some(serde_json::from_str(v.trim()).unwrap());
                        }
                    }
                    if let Some(data) = data {
                        return Sse { event, id, data };
                    }
                }
                let chunk = self.body.next().await.expect("stream open").unwrap();
                self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        })
        .await
        .expect("an event within 10 s")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_and_resume() {
    let t = TestServer::start().await;
    let mut sse = SseReader::open(&t, "", None).await;
    let ready = sse.next().await;
    assert_eq!(ready.event, "ready");

    let (s, _) = t
        .call(
            Method::PUT,
            &format!("{CFG}/live.json"),
            Some(json!({"content": "{\"a\": 1}"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let e = sse.next().await;
    assert_eq!(e.event, "config", "{e:?}");
    assert_eq!(e.data["op"], "put");
    assert_eq!(
        (
            e.data["namespace"].clone(),
            e.data["group"].clone(),
            e.data["dataId"].clone()
        ),
        (json!("dev"), json!("DEFAULT_GROUP"), json!("live.json"))
    );
    assert_eq!(e.data["content"], "{\"a\": 1}");
    assert_eq!(e.data["version"], 1);
    assert_eq!(e.data["format"], "json");
    let config_rev = e.data["revision"].as_i64().unwrap();
    assert_eq!(e.id.as_deref(), Some(config_rev.to_string().as_str()));

    let (s, _) = t
        .call(
            Method::POST,
            "/mast/v1/services/web/instances",
            Some(json!({"id": "w1", "host": "h", "port": 80})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let e = sse.next().await;
    assert_eq!(e.event, "instance", "{e:?}");
    assert_eq!(
        (
            e.data["op"].clone(),
            e.data["service"].clone(),
            e.data["id"].clone()
        ),
        (json!("put"), json!("web"), json!("w1"))
    );
    assert_eq!(e.data["instance"]["port"], 80);
    assert!(e.id.is_some());

    // Two instances written by one etcd Txn share a revision: only the last event carries the
    // id, so a client cut off between them resumes with the whole revision again.
    let put = |k: &str| json!({"request_put": {"key": b64(k), "value": b64("{\"host\":\"h\",\"port\":1}")}});
    let (s, v) = t
        .call(
            Method::POST,
            "/v3/kv/txn",
            Some(json!({"success": [put("/services/web/t1"), put("/services/web/t2"), put("/unrelated")]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (a, b) = (sse.next().await, sse.next().await);
    assert_eq!(
        (a.data["id"].clone(), b.data["id"].clone()),
        (json!("t1"), json!("t2"))
    );
    assert_eq!(a.data["revision"], b.data["revision"]);
    assert_eq!(a.id, None);
    assert_eq!(b.id, Some(b.data["revision"].to_string()));
    let (s, _) = t
        .call(Method::DELETE, "/mast/v1/services/web/instances/t1", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = t
        .call(Method::DELETE, "/mast/v1/services/web/instances/t2", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut last_id = String::new();
    for _ in 0..2 {
        let e = sse.next().await;
        assert_eq!(e.data["op"], "delete");
        last_id = e.id.unwrap();
    }
    drop(sse);

    // Changes while disconnected arrive after a resume with Last-Event-ID.
    let (s, _) = t
        .call(
            Method::PUT,
            &format!("{CFG}/live.json"),
            Some(json!({"content": "{\"a\": 2}"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = t
        .call(Method::DELETE, "/mast/v1/services/web/instances/w1", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut sse = SseReader::open(&t, "", Some(&last_id)).await;
    assert_eq!(sse.next().await.event, "ready");
    let mut got = Vec::new();
    while got.len() < 2 {
        let e = sse.next().await;
        got.push((e.event, e.data["op"].as_str().unwrap().to_string(), e.data));
    }
    assert_eq!((got[0].0.as_str(), got[0].1.as_str()), ("config", "put"));
    assert_eq!(got[0].2["content"], "{\"a\": 2}");
    assert_eq!(got[0].2["version"], 2);
    assert_eq!(
        (got[1].0.as_str(), got[1].1.as_str()),
        ("instance", "delete")
    );
    assert_eq!(got[1].2["instance"], Value::Null);
    drop(sse);

    // ?revision=N starts at N itself; filters narrow the stream.
    let mut sse = SseReader::open(&t, &format!("?revision={config_rev}&kind=config"), None).await;
    assert_eq!(sse.next().await.event, "ready");
    let e = sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["version"].clone()),
        ("config", json!(1))
    );
    let e = sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["version"].clone()),
        ("config", json!(2))
    );
    drop(sse);

    // A resume point that was compacted away is refused with 410.
    let rev = t.revision().await;
    mast_server::api::kv::compact(
        t.node(),
        &mast_server::authz::Caller::default(),
        mast_proto::etcdserverpb::CompactionRequest {
            revision: rev,
            physical: true,
        },
    )
    .await
    .unwrap();
    let (s, v) = t
        .get(&format!("/mast/v1/events?revision={config_rev}"))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::GONE, Some("compacted")),
        "{v}"
    );
    let (s, v) = t.get("/mast/v1/events?kind=nope").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // The stream ends when the server shuts down.
    let mut sse = SseReader::open(&t, "", None).await;
    assert_eq!(sse.next().await.event, "ready");
    let stop = tokio::spawn(t.stop());
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = sse.body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "stream ended on shutdown");
    stop.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_applies_when_on() {
    let mut t = TestServer::start_with(
        |c| c.root_password = Some(Secret("guang".into())),
        RegistryConfig::default(),
    )
    .await;
    for (method, path, body) in [
        (Method::GET, "/mast/v1/services".to_string(), None),
        (
            Method::POST,
            "/mast/v1/services/s/instances".to_string(),
            Some(json!({"host": "h", "port": 1})),
        ),
        (Method::GET, "/mast/v1/configs".to_string(), None),
        (
            Method::PUT,
            format!("{CFG}/a.txt"),
            Some(json!({"content": "x"})),
        ),
        (Method::GET, "/mast/v1/events".to_string(), None),
    ] {
        let (s, v) = t.call(method.clone(), &path, body).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
        assert_eq!(v["code"], "unauthenticated");
    }
    assert!(
        mast_server::api::lease::leases(t.node()).leases.is_empty(),
        "a refused register grants no lease"
    );
    let (s, v) = t
        .call(
            Method::POST,
            "/v3/auth/authenticate",
            Some(json!({"name": "root", "password": "guang"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    t.token = Some("not-a-token".into());
    let (s, v) = t.get("/mast/v1/services").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    t.token = Some(token.clone());
    let (s, v) = t
        .call(
            Method::POST,
            "/mast/v1/services/s/instances",
            Some(json!({"id": "i", "host": "h", "port": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .call(
            Method::PUT,
            "/mast/v1/services/s/instances/i/heartbeat",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t
        .call(
            Method::PUT,
            &format!("{CFG}/a.txt"),
            Some(json!({"content": "x", "author": "someone"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["author"], "root", "the authenticated user is recorded");
    let (s, v) = t.get("/mast/v1/services").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["services"][0]["name"], "s");

    // A user whose role allows only one service's prefix gets 403 elsewhere.
    for (path, body) in [
        ("/v3/auth/role/add", json!({"name": "orders"})),
        (
            "/v3/auth/role/grant",
            json!({"name": "orders", "perm": {"permType": "READWRITE",
                "key": b64("/services/orders/"), "range_end": b64("/services/orders0")}}),
        ),
        (
            "/v3/auth/user/add",
            json!({"name": "alice", "password": "pw"}),
        ),
        (
            "/v3/auth/user/grant",
            json!({"user": "alice", "role": "orders"}),
        ),
    ] {
        let (s, v) = t.call(Method::POST, path, Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    let (_, v) = t
        .call(
            Method::POST,
            "/v3/auth/authenticate",
            Some(json!({"name": "alice", "password": "pw"})),
        )
        .await;
    t.token = Some(v["token"].as_str().unwrap().to_string());
    let (s, v) = t
        .call(
            Method::POST,
            "/mast/v1/services/orders/instances",
            Some(json!({"id": "o1", "host": "h", "port": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t.get("/mast/v1/services/orders/instances").await;
    assert_eq!((s, ids(&v)), (StatusCode::OK, vec!["o1".to_string()]));
    for (method, path, body) in [
        (
            Method::POST,
            "/mast/v1/services/payments/instances".to_string(),
            Some(json!({"host": "h", "port": 1})),
        ),
        (Method::GET, "/mast/v1/services".to_string(), None),
        (
            Method::PUT,
            format!("{CFG}/a.txt"),
            Some(json!({"content": "y"})),
        ),
        (Method::GET, "/mast/v1/events".to_string(), None),
    ] {
        let (s, v) = t.call(method.clone(), &path, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {v}");
        assert_eq!(v["code"], "permission_denied");
    }
    let mut sse = SseReader::open(&t, "?kind=instance&service=orders", None).await;
    assert_eq!(sse.next().await.event, "ready");
    drop(sse);

    // EventSource cannot send headers: the token may come as a query parameter.
    t.token = None;
    let mut sse = SseReader::open(&t, &format!("?token={token}"), None).await;
    assert_eq!(sse.next().await.event, "ready");
    drop(sse);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_routes() {
    let t = TestServer::start().await;
    let (s, doc) = t.get("/mast/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{service}", "svc")
            .replace("{id}", "i1")
            .replace("{namespace}", "public")
            .replace("{group}", "DEFAULT_GROUP")
            .replace("{dataId}", "x.json")
            .replace("{version}", "1")
            .replace("{name}", "g1");
        for method in item.as_object().unwrap().keys() {
            if method == "parameters" {
                continue;
            }
            let m: Method = method.to_uppercase().parse().unwrap();
            let resp = t
                .request(m.clone(), &concrete)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            if concrete.ends_with("/events") || concrete.ends_with("/export") {
                assert_eq!(status, StatusCode::OK);
                continue;
            }
            let body: Value = resp.json().await.unwrap();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            // The server's own fallback answers with a numeric code; ours are strings.
            assert!(
                status.is_success() || body["code"].is_string(),
                "{method} {path}: {status} {body}"
            );
        }
    }
    let (s, v) = t.call(Method::POST, "/mast/v1/services", None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    t.stop().await;
}

/// Reads are answered from a cache of rendered answers while the content and metadata keys are
/// unchanged: every change, through this API or through plain etcd writes, shows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reads_follow_every_change() {
    let t = TestServer::start().await;
    let path = format!("{CFG}/cache.json");
    let (s, v) = t
        .call(Method::PUT, &path, Some(json!({"content": "{\"a\":1}"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, first) = t.get(&path).await;
    let (_, again) = t.get(&path).await;
    assert_eq!(first, again, "a repeated read answers the same");
    assert_eq!(first["content"], "{\"a\":1}");
    assert_eq!(first["version"], 1);

    t.call(Method::PUT, &path, Some(json!({"content": "{\"a\":2}"})))
        .await;
    let (_, v) = t.get(&path).await;
    assert_eq!(
        (v["content"].clone(), v["version"].clone()),
        (json!("{\"a\":2}"), json!(2))
    );

    // A plain etcd put of the content key (metadata unchanged).
    let key = "/configs/dev/DEFAULT_GROUP/cache.json";
    let (s, r) = t
        .call(
            Method::POST,
            "/v3/kv/put",
            Some(json!({"key": b64(key), "value": b64("{\"a\":3}")})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (_, v) = t.get(&path).await;
    assert_eq!(v["content"], "{\"a\":3}");
    assert_eq!(v["revision"].as_i64().unwrap(), t.revision().await);

    // A plain etcd put of the metadata key alone (content unchanged).
    let meta_key = "/config-meta/dev/DEFAULT_GROUP/cache.json";
    let (meta, _) = t.etcd_get(meta_key).await.unwrap();
    let mut meta: Value = serde_json::from_slice(&meta).unwrap();
    meta["description"] = json!("changed by etcd");
    let (s, r) = t
        .call(
            Method::POST,
            "/v3/kv/put",
            Some(json!({"key": b64(meta_key), "value": b64(&meta.to_string())})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (_, v) = t.get(&path).await;
    assert_eq!(v["description"], "changed by etcd");

    // Delete: gone; publish again: back, with the next version.
    let (s, _) = t.call(Method::DELETE, &path, None).await;
    assert!(s.is_success());
    let (s, _) = t.get(&path).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    t.call(Method::PUT, &path, Some(json!({"content": "{\"a\":4}"})))
        .await;
    let (_, v) = t.get(&path).await;
    assert_eq!(v["content"], "{\"a\":4}");
    assert_eq!(v["version"], 4);
    t.stop().await;
}

/// `GET {svc}/instances{query}`, which must succeed.
async fn list(t: &TestServer, query: &str) -> Value {
    let (s, v) = t
        .get(&format!("/mast/v1/services/cached/instances{query}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// An instance as listed, without `ttl` (whole seconds left, which may tick between two reads).
fn without_ttl(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("ttl");
    v
}

/// A list's instances, each without `ttl`.
fn instances_without_ttl(list: &Value) -> Vec<Value> {
    list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .map(without_ttl)
        .collect()
}

/// Instance lists are assembled from kept renderings while the service's keys are unchanged:
/// they must equal the single-instance answer field for field, and every change, through this
/// API or through plain etcd writes, shows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_lists_follow_every_change() {
    let t = TestServer::start().await;
    let svc = "/mast/v1/services/cached";
    let (s, v) = t
        .call(
            Method::POST,
            &format!("{svc}/instances"),
            // A label named like a lease field must not confuse the list.
            Some(
                json!({"id": "i1", "host": "h1", "port": 1, "ttl": 60, "zone": "z\"1",
                        "metadata": {"healthy": "label", "ttl": "x"}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let lease = v["leaseId"].as_str().unwrap().to_string();
    // The registration's answer is the instance as a read shows it.
    let (_, read) = t.get(&format!("{svc}/instances/i1")).await;
    assert_eq!(without_ttl(v.clone()), without_ttl(read));
    let (s, v) = t
        .call(
            Method::POST,
            &format!("{svc}/instances"),
            Some(json!({"id": "i2", "host": "h2", "port": 2, "ephemeral": false, "weight": 0.5})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let first = list(&t, "").await;
    assert_eq!(ids(&first), ["i1", "i2"]);
    assert_eq!(first["service"], "cached");
    assert_eq!(first["revision"].as_i64().unwrap(), t.revision().await);
    for inst in first["instances"].as_array().unwrap() {
        let id = inst["id"].as_str().unwrap();
        let (s, one) = t.get(&format!("{svc}/instances/{id}")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(without_ttl(inst.clone()), without_ttl(one), "instance {id}");
    }
    assert_eq!(first["instances"][0]["leaseId"], lease.as_str());
    assert!(first["instances"][0]["ttl"].as_i64().unwrap() > 50);
    assert_eq!(first["instances"][0]["metadata"]["healthy"], "label");
    assert!(first["instances"][1].get("ttl").is_none());
    assert!(first["instances"][1].get("leaseId").is_none());
    let again = list(&t, "").await;
    assert_eq!(
        instances_without_ttl(&first),
        instances_without_ttl(&again),
        "a repeated list answers the same"
    );

    // A plain etcd put of i2's key.
    let (s, r) = t
        .call(
            Method::POST,
            "/v3/kv/put",
            Some(json!({"key": b64("/services/cached/i2"),
                        "value": b64(r#"{"host":"h2","port":9999}"#)})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let v = list(&t, "").await;
    assert_eq!(v["instances"][1]["port"], 9999);
    assert_eq!(v["revision"].as_i64().unwrap(), t.revision().await);

    // A key that is not an instance: not listed, and the list still follows the revision.
    t.call(
        Method::POST,
        "/v3/kv/put",
        Some(json!({"key": b64("/services/cached/zz"), "value": b64("not json")})),
    )
    .await;
    let v = list(&t, "").await;
    assert_eq!(ids(&v), ["i1", "i2"]);
    assert_eq!(v["revision"].as_i64().unwrap(), t.revision().await);

    // Disabled: the filters see it at once.
    let (s, r) = t
        .call(
            Method::PATCH,
            &format!("{svc}/instances/i1"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(ids(&list(&t, "?enabled=false").await), ["i1"]);
    assert_eq!(ids(&list(&t, "?enabled=true").await), ["i2"]);
    assert_eq!(ids(&list(&t, "?healthy=true").await), ["i1", "i2"]);

    // A new instance put and deleted again leaves the same keys: the same list.
    for (method, path) in [("put", "/v3/kv/put"), ("delete", "/v3/kv/deleterange")] {
        let body = if method == "put" {
            json!({"key": b64("/services/cached/i3"), "value": b64(r#"{"host":"h3","port":3}"#)})
        } else {
            json!({"key": b64("/services/cached/i3")})
        };
        let (s, r) = t.call(Method::POST, path, Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        if method == "put" {
            assert_eq!(ids(&list(&t, "").await), ["i1", "i2", "i3"]);
        }
    }
    assert_eq!(ids(&list(&t, "").await), ["i1", "i2"]);

    // Revoking i1's lease through etcd deletes its key: gone from the list.
    let (s, r) = t
        .call(Method::POST, "/v3/lease/revoke", Some(json!({"ID": lease})))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(ids(&list(&t, "").await), ["i2"]);
    // A plain etcd delete of i2.
    t.call(
        Method::POST,
        "/v3/kv/deleterange",
        Some(json!({"key": b64("/services/cached/i2")})),
    )
    .await;
    assert!(ids(&list(&t, "").await).is_empty());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_threshold_answers_every_enabled_instance() {
    let t = TestServer::start().await;
    // Four persistent instances, as `etcdctl put` or the Nacos API store them; three marked
    // unhealthy, one disabled.
    for (id, body) in [
        ("a", r#"{"host":"10.0.0.1","port":1}"#),
        ("b", r#"{"host":"10.0.0.2","port":2,"healthy":false}"#),
        ("c", r#"{"host":"10.0.0.3","port":3,"healthy":false}"#),
        ("d", r#"{"host":"10.0.0.4","port":4,"healthy":false}"#),
        (
            "e",
            r#"{"host":"10.0.0.5","port":5,"healthy":false,"enabled":false}"#,
        ),
    ] {
        etcd_put(&t, &format!("/services/guarded/{id}"), body).await;
    }
    let path = "/mast/v1/services/guarded/instances";
    let (_, all) = t.get(path).await;
    let healthy: Vec<bool> = all["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["healthy"].as_bool().unwrap())
        .collect();
    assert_eq!(
        healthy,
        [true, false, false, false, false],
        "stored health: {all}"
    );
    let (_, v) = t.get(&format!("{path}?healthy=true")).await;
    assert_eq!(ids(&v), ["a"]);
    assert!(v.get("protectionThresholdReached").is_none(), "{v}");

    // 1 of 4 enabled instances healthy, at or below 0.5: every enabled one is answered.
    etcd_put(&t, "/service-meta/guarded", r#"{"protectThreshold":0.5}"#).await;
    let (_, v) = t.get(&format!("{path}?healthy=true")).await;
    assert_eq!(ids(&v), ["a", "b", "c", "d"], "{v}");
    assert_eq!(v["protectionThresholdReached"], true);
    assert_eq!(
        v["instances"][1]["healthy"], false,
        "each keeps its own health"
    );
    let (_, v) = t.get(&format!("{path}?healthy=false")).await;
    assert_eq!(
        ids(&v),
        ["b", "c", "d", "e"],
        "the unhealthy filter is unchanged"
    );

    // Back above the threshold (3 of 4): healthy instances only again.
    etcd_put(&t, "/services/guarded/b", r#"{"host":"10.0.0.2","port":2}"#).await;
    let (_, v) = t.get(&format!("{path}?healthy=true")).await;
    assert_eq!(
        ids(&v),
        ["a", "b", "c", "d"],
        "2 of 4 is 0.5, still at the threshold: {v}"
    );
    assert_eq!(v["protectionThresholdReached"], true);
    etcd_put(&t, "/services/guarded/c", r#"{"host":"10.0.0.3","port":3}"#).await;
    let (_, v) = t.get(&format!("{path}?healthy=true")).await;
    assert_eq!(ids(&v), ["a", "b", "c"]);
    assert!(v.get("protectionThresholdReached").is_none(), "{v}");
}

/// A put through etcd's JSON gateway, as any etcd client would make it.
async fn etcd_put(t: &TestServer, key: &str, value: &str) {
    let body = json!({"key": b64(key), "value": b64(value)});
    let (s, r) = t.call(Method::POST, "/v3/kv/put", Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{r}");
}

/// Waits (up to 10 s) for a commit that puts `key` with a value for which `ok` holds, and
/// returns that value; `rx` was subscribed before the write that should lead to it.
async fn commit_where(
    rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<mast_server::watch::Batch>>,
    key: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no commit of {key} as expected within 10 s"))
            .unwrap();
        for ev in &batch.events {
            let Some(kv) = ev.kv.as_ref() else { continue };
            if kv.key == key.as_bytes()
                && let Ok(v) = serde_json::from_slice::<Value>(&kv.value)
                && ok(&v)
            {
                return v;
            }
        }
    }
}

/// An operator's weight / enabled stay in force when the instance registers again — through
/// this API and through a plain etcd put — until the operator clears them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_overrides_survive_reregistration() {
    let t = TestServer::start().await;
    let path = "/mast/v1/services/orders/instances";
    let register =
        |weight: f64| json!({"id": "o1", "host": "10.1.0.1", "port": 80, "weight": weight});
    let (s, v) = t.call(Method::POST, path, Some(register(3.0))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    // Bad input changes nothing.
    let one = format!("{path}/o1");
    let (s, v) = t
        .call(Method::PATCH, &one, Some(json!({"weight": -1})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = t.get(&format!("{one}/override")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t
        .call(
            Method::PATCH,
            &format!("{path}/nobody"),
            Some(json!({"weight": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        t.etcd_get("/instance-overrides/orders/nobody")
            .await
            .is_none()
    );

    // The operator drains it.
    let (s, v) = t
        .call(
            Method::PATCH,
            &one,
            Some(json!({"weight": 0.5, "enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["weight"].as_f64(), v["enabled"].as_bool()),
        (Some(0.5), Some(false))
    );
    assert_eq!(
        v["extra"]["registered"],
        json!({"weight": 3.0, "enabled": true})
    );
    let (s, ov) = t.get(&format!("{one}/override")).await;
    assert_eq!(s, StatusCode::OK, "{ov}");
    assert_eq!(
        (ov["weight"].as_f64(), ov["enabled"].as_bool()),
        (Some(0.5), Some(false))
    );
    assert!(ov["setAt"].as_u64().unwrap() > 0);

    // The instance registers again with its own weight: the operator's values hold.
    let (s, v) = t.call(Method::POST, path, Some(register(4.0))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["weight"].as_f64(), v["enabled"].as_bool()),
        (Some(0.5), Some(false))
    );
    assert_eq!(v["extra"]["registered"]["weight"], 4.0);
    let (_, list) = t.get(&format!("{path}?enabled=true")).await;
    assert!(
        ids(&list).is_empty(),
        "a drained instance stays out: {list}"
    );

    // It dies and comes back through a plain etcd put (as the seeds' code registers): the
    // leader's reconciler puts the override in force again.
    let (s, _) = t.call(Method::DELETE, &one, None).await;
    assert_eq!(s, StatusCode::OK);
    let mut rx = t.node().subscribe_commits();
    etcd_put(
        &t,
        "/services/orders/o1",
        r#"{"host":"10.1.0.1","port":80,"weight":5}"#,
    )
    .await;
    let fixed = commit_where(&mut rx, "/services/orders/o1", |v| v["weight"] == 0.5).await;
    assert_eq!(fixed["enabled"], false);
    assert_eq!(fixed["registered"], json!({"weight": 5.0, "enabled": true}));

    // An override written by etcdctl is put in force too.
    let mut rx = t.node().subscribe_commits();
    etcd_put(&t, "/instance-overrides/orders/o1", r#"{"weight":2}"#).await;
    let fixed = commit_where(&mut rx, "/services/orders/o1", |v| v["weight"] == 2.0).await;
    assert!(
        fixed.get("enabled").is_none(),
        "enabled is the registered true: {fixed}"
    );

    // Cleared: back to what it registered, in the same write.
    let (s, v) = t
        .call(Method::DELETE, &format!("{one}/override"), None)
        .await;
    assert_eq!(
        (s, v["cleared"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{v}"
    );
    let (_, v) = t.get(&one).await;
    assert_eq!(
        (v["weight"].as_f64(), v["enabled"].as_bool()),
        (Some(5.0), Some(true))
    );
    assert!(v["extra"].get("registered").is_none(), "{v}");
    let (s, v) = t
        .call(Method::DELETE, &format!("{one}/override"), None)
        .await;
    assert_eq!((s, v["cleared"].as_bool()), (StatusCode::OK, Some(false)));
    // Re-registering now keeps the instance's own values.
    let (_, v) = t.call(Method::POST, path, Some(register(6.0))).await;
    assert_eq!(v["weight"], 6.0);

    // Metadata entries an operator sets stick too; a null removes one for good.
    let with_meta = json!({"id": "o1", "host": "10.1.0.1", "port": 80,
                           "metadata": {"build": "41", "zone": "eu"}});
    let (s, v) = t.call(Method::POST, path, Some(with_meta)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .call(
            Method::PATCH,
            &one,
            Some(json!({"metadata": {"canary": "true", "zone": null}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"], json!({"build": "41", "canary": "true"}));
    let (_, ov) = t.get(&format!("{one}/override")).await;
    assert_eq!(
        ov["metadata"],
        json!({"canary": "true", "zone": null}),
        "{ov}"
    );
    let again = json!({"id": "o1", "host": "10.1.0.1", "port": 80,
                       "metadata": {"build": "42", "zone": "eu"}});
    let (_, v) = t.call(Method::POST, path, Some(again)).await;
    assert_eq!(v["metadata"], json!({"build": "42", "canary": "true"}));
    assert_eq!(
        v["extra"]["registered"]["metadata"],
        json!({"build": "42", "zone": "eu"})
    );
    let (s, _) = t
        .call(Method::DELETE, &format!("{one}/override"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = t.get(&one).await;
    assert_eq!(v["metadata"], json!({"build": "42", "zone": "eu"}));
    t.stop().await;
}

/// Accepts connections on `listener` and closes each at once, until aborted (the listener
/// closes with the task).
fn accept_and_close(listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while listener.accept().await.is_ok() {} })
}

/// Persistent instances are probed by the leader: TCP, HTTP and gRPC checks from the
/// service's settings or the instance's own JSON; a failing instance is marked unhealthy
/// (never deleted) within interval × threshold, and healthy again when it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_mark_persistent_instances() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, Ordering};
    let mut t = TestServer::start().await;
    let settings = "/mast/v1/services/probed";

    // Bad settings are refused with the field named, and nothing is stored.
    for (bad, field) in [
        (json!({"healthCheck": {"type": "udp"}}), "malformed"),
        (
            json!({"healthCheck": {"type": "tcp", "intervalMs": 0}}),
            "intervalMs",
        ),
        (
            json!({"healthCheck": {"type": "tcp", "intervalMs": 200, "timeoutMs": 300}}),
            "timeoutMs",
        ),
        (
            json!({"healthCheck": {"type": "tcp", "path": "/x"}}),
            "path",
        ),
        (
            json!({"healthCheck": {"type": "tcp"}, "protectThreshold": 1.5}),
            "protectThreshold",
        ),
    ] {
        let (s, v) = t.call(Method::PUT, settings, Some(bad)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{v}");
    }
    assert!(t.etcd_get("/service-meta/probed").await.is_none());
    let (s, v) = t
        .call(
            Method::POST,
            "/mast/v1/services/probed/instances",
            Some(json!({"host": "127.0.0.1", "port": 1, "healthCheck": {"type": "tcp"}})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "an ephemeral instance lives by its lease: {v}"
    );

    // TCP, from the service's settings.
    let interval = 200;
    let threshold = 2;
    let check = json!({"type": "tcp", "intervalMs": interval, "timeoutMs": 150,
                       "unhealthyThreshold": threshold});
    let (s, v) = t
        .call(
            Method::PUT,
            settings,
            Some(json!({"healthCheck": check, "protectThreshold": 0.1})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["healthCheck"]["healthyThreshold"], 1,
        "defaults filled in: {v}"
    );
    let (_, v) = t.get(settings).await;
    assert_eq!(v["protectThreshold"], 0.1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = accept_and_close(listener);
    let register = |id: &str, port: u16, check: Option<Value>| {
        let mut b = json!({"id": id, "host": "127.0.0.1", "port": port, "ephemeral": false});
        if let Some(c) = check {
            b["healthCheck"] = c;
        }
        b
    };
    let (s, v) = t
        .call(
            Method::POST,
            "/mast/v1/services/probed/instances",
            Some(register("p1", port, None)),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["healthy"], true);

    // The port closes: unhealthy within interval × threshold (plus the phase of the first
    // probe and the write), with the reason; the instance stays registered.
    let mut rx = t.node().subscribe_commits();
    accept.abort();
    let _ = accept.await;
    let closed = Instant::now();
    let v = commit_where(&mut rx, "/services/probed/p1", |v| v["healthy"] == false).await;
    let took = closed.elapsed();
    eprintln!(
        "tcp: unhealthy {took:?} after the port closed (interval {interval} ms × {threshold})"
    );
    assert!(
        took < Duration::from_millis(interval * (threshold + 1) + 1000),
        "{took:?}"
    );
    let detail = v["healthDetail"].as_str().unwrap();
    assert!(detail.contains(&format!("127.0.0.1:{port}")), "{detail}");
    let (_, list) = t
        .get("/mast/v1/services/probed/instances?healthy=false")
        .await;
    assert_eq!(ids(&list), ["p1"]);

    // It reopens: healthy again, the reason gone.
    let mut rx = t.node().subscribe_commits();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let accept = accept_and_close(listener);
    let v = commit_where(&mut rx, "/services/probed/p1", |v| {
        v.get("healthy") == Some(&json!(true))
    })
    .await;
    assert!(v.get("healthDetail").is_none(), "{v}");

    // HTTP, from the instance's own check (it wins over the service's).
    let status = Arc::new(AtomicU16::new(200));
    let answer = status.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let code = answer.load(Ordering::SeqCst);
            async move { StatusCode::from_u16(code).unwrap() }
        }),
    );
    let http = t
        .server
        .as_mut()
        .unwrap()
        .serve_router("127.0.0.1:0".parse().unwrap(), app)
        .await
        .unwrap();
    let http_check = json!({"type": "http", "path": "/health", "intervalMs": 200,
                            "timeoutMs": 150, "unhealthyThreshold": 1});
    let (s, v) = t
        .call(
            Method::POST,
            "/mast/v1/services/probed/instances",
            Some(register("p2", http.port(), Some(http_check))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut rx = t.node().subscribe_commits();
    status.store(503, Ordering::SeqCst);
    let v = commit_where(&mut rx, "/services/probed/p2", |v| v["healthy"] == false).await;
    assert!(
        v["healthDetail"].as_str().unwrap().contains("status 503"),
        "{v}"
    );
    let mut rx = t.node().subscribe_commits();
    status.store(204, Ordering::SeqCst);
    commit_where(&mut rx, "/services/probed/p2", |v| {
        v.get("healthy") == Some(&json!(true))
    })
    .await;

    // A server that accepts and never answers: the probe times out, and writes go on
    // meanwhile.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let mut rx = t.node().subscribe_commits();
    let hanging =
        json!({"type": "http", "intervalMs": 300, "timeoutMs": 100, "unhealthyThreshold": 1});
    t.call(
        Method::POST,
        "/mast/v1/services/probed/instances",
        Some(register("p3", silent_port, Some(hanging))),
    )
    .await;
    etcd_put(&t, "/unrelated", "written while a probe hangs").await;
    let v = commit_where(&mut rx, "/services/probed/p3", |v| v["healthy"] == false).await;
    assert!(
        v["healthDetail"]
            .as_str()
            .unwrap()
            .contains("timed out after 100 ms"),
        "{v}"
    );
    hold.abort();

    // gRPC, against this server's own grpc.health.v1 service: an instance stored unhealthy
    // turns healthy; one naming an unknown service turns unhealthy.
    let grpc_port: u16 = t.base.rsplit(':').next().unwrap().parse().unwrap();
    let mut rx = t.node().subscribe_commits();
    let mut rx2 = t.node().subscribe_commits();
    let grpc_instance = |svc: &str, healthy: bool| {
        json!({"host": "127.0.0.1", "port": grpc_port, "healthy": healthy,
               "healthCheck": {"type": "grpc", "intervalMs": 200, "timeoutMs": 150,
                               "unhealthyThreshold": 1, "grpcService": svc}})
        .to_string()
    };
    etcd_put(&t, "/services/probed/g1", &grpc_instance("", false)).await;
    etcd_put(
        &t,
        "/services/probed/g2",
        &grpc_instance("no.such.Service", true),
    )
    .await;
    commit_where(&mut rx, "/services/probed/g1", |v| v["healthy"] == true).await;
    let v = commit_where(&mut rx2, "/services/probed/g2", |v| v["healthy"] == false).await;
    assert!(
        v["healthDetail"].as_str().unwrap().contains("NotFound"),
        "{v}"
    );

    // The service's check removed, the port closed, then a check set again: the change of
    // settings alone starts the probe that marks p1.
    let (s, _) = t
        .call(Method::PUT, settings, Some(json!({"healthCheck": null})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = t.get(settings).await;
    assert!(v.get("healthCheck").is_none(), "{v}");
    accept.abort();
    let _ = accept.await;
    let mut rx = t.node().subscribe_commits();
    let again =
        json!({"type": "tcp", "intervalMs": 200, "timeoutMs": 150, "unhealthyThreshold": 1});
    let (s, _) = t
        .call(Method::PUT, settings, Some(json!({"healthCheck": again})))
        .await;
    assert_eq!(s, StatusCode::OK);
    commit_where(&mut rx, "/services/probed/p1", |v| v["healthy"] == false).await;
    t.stop().await;
}

/// Every change to configs, instances, service settings and auth is in the audit log with
/// its author, address and API, before and after; only root reads it; an entry altered in
/// the store file is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_names_who_changed_what_and_detects_tampering() {
    let root_pw = |c: &mut ServerConfig| c.root_password = Some(Secret("guang".into()));
    let mut t = TestServer::start_with(root_pw, RegistryConfig::default()).await;
    t.login("root", "guang").await;
    // An operator limited to configs and services, made through the etcd JSON gateway.
    for (path, body) in [
        (
            "/v3/auth/user/add",
            json!({"name": "ops", "password": "pw"}),
        ),
        ("/v3/auth/role/add", json!({"name": "ops"})),
        (
            "/v3/auth/role/grant",
            json!({"name": "ops", "perm": {"permType": "READWRITE", "key": b64("/"), "range_end": b64("0")}}),
        ),
        ("/v3/auth/user/grant", json!({"user": "ops", "role": "ops"})),
    ] {
        let (s, v) = t.call(Method::POST, path, Some(body)).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    t.login("ops", "pw").await;
    let (s, v) = t
        .call(
            Method::PUT,
            &format!("{CFG}/app.json"),
            Some(json!({"content": "{\"v\":1}"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    t.call(
        Method::PUT,
        &format!("{CFG}/app.json"),
        Some(json!({"content": "{\"v\":2}"})),
    )
    .await;
    let (s, _) = t
        .call(
            Method::POST,
            "/mast/v1/services/pay/instances",
            Some(json!({"id": "p1", "host": "10.0.0.1", "port": 80, "ephemeral": false})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    etcd_put(&t, "/service-meta/pay", r#"{"protectThreshold":0.5}"#).await;
    etcd_put(&t, "/app/untracked", "not audited").await;
    // Only root reads the log.
    let (s, v) = t.get("/mast/v1/audit").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    t.login("root", "guang").await;
    let (s, page) = t.get("/mast/v1/audit?limit=1000").await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let rows: Vec<(String, String, String, String)> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap().to_string(),
                e["api"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["key"]
                    .as_str()
                    .or(e["detail"].as_str())
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    let row = |u: &str, api: &str, action: &str, what: &str| {
        (
            u.to_string(),
            api.to_string(),
            action.to_string(),
            what.to_string(),
        )
    };
    let content = "/configs/dev/DEFAULT_GROUP/app.json";
    for want in [
        row("", "system", "auth", "user add root (bootstrap)"),
        row("root", "etcd-http", "auth", "user add ops"),
        row(
            "root",
            "etcd-http",
            "auth",
            "role grant-permission ops readwrite / 0",
        ),
        row("root", "etcd-http", "auth", "user grant-role ops ops"),
        row("ops", "mast", "put", content),
        row("ops", "mast", "put", "/services/pay/p1"),
        row("ops", "etcd-http", "put", "/service-meta/pay"),
    ] {
        assert!(rows.contains(&want), "{want:?} missing from {rows:#?}");
    }
    assert!(!rows.iter().any(|r| r.3 == "/app/untracked"), "{rows:#?}");
    let puts: Vec<&Value> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == content)
        .collect();
    assert_eq!(puts.len(), 2);
    assert!(puts[0].get("before").is_none());
    assert_eq!(
        (puts[1]["before"].as_str(), puts[1]["after"].as_str()),
        (Some("{\"v\":1}"), Some("{\"v\":2}"))
    );
    assert!(
        puts[1]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(puts[1]["time"].as_u64().unwrap() > 0);
    // Filters and paging.
    let (_, v) = t.get("/mast/v1/audit?user=ops&prefix=/configs/").await;
    assert_eq!(v["entries"].as_array().unwrap().len(), 2, "{v}");
    let first = page["entries"][0]["seq"].as_u64().unwrap();
    let (_, v) = t
        .get(&format!("/mast/v1/audit?after={first}&limit=1"))
        .await;
    assert_eq!(v["entries"][0]["seq"].as_u64(), Some(first + 1));
    assert_eq!(v["next"].as_u64(), Some(first + 1));
    let (s, _) = t.get("/mast/v1/audit?action=rename").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = t.get("/mast/v1/audit/verify").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ok"], true, "{v}");
    let last = v["last"].as_u64().unwrap();

    // Someone with the database file rewrites who published version 2.
    let seq = puts[1]["seq"].as_u64().unwrap();
    let dir = t.stop_keeping_data().await;
    {
        let db = redb::Database::open(dir.path().join("mast.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            use redb::ReadableTable;
            let mut table = w
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("audit"))
                .unwrap();
            let mut row = table.get(seq).unwrap().unwrap().value().to_vec();
            // The user name "ops" follows the hash (32), seq and revision (16), its length (4).
            assert_eq!(&row[52..55], b"ops");
            row[52..55].copy_from_slice(b"eve");
            table.insert(seq, row.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let mut t = TestServer::start_in(dir, root_pw, RegistryConfig::default()).await;
    t.login("root", "guang").await;
    let (_, v) = t.get("/mast/v1/audit/verify").await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["brokenAt"].as_u64(), Some(seq), "{v}");
    assert!(v["error"].as_str().unwrap().contains("altered"), "{v}");
    assert!(last > seq);
    t.stop().await;
}

/// Waits (up to 10 s) until the rollout view of `path` satisfies `ok`, and returns it.
async fn rollout_where(t: &TestServer, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = Value::Null;
    let mut rx = t.node().subscribe_commits();
    while Instant::now() < deadline {
        let (s, v) = t.get(path).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if ok(&v) {
            return v;
        }
        last = v;
        // The view changes only with a commit (a report, a publish, a lease going).
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, rx.recv()).await;
    }
    panic!("rollout never got there: {last}");
}

/// Four SDK clients apply a config and report it; after a publish the view shows who holds
/// which version, and names the client that was killed before it could apply the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_names_who_holds_which_version() {
    let t = TestServer::start().await;
    let cfg = format!("{CFG}/flags.json");
    let rollout = format!("{cfg}/rollout");
    let (s, v) = t
        .call(
            Method::PUT,
            &cfg,
            Some(json!({"content": "{\"on\":false}"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t.get(&rollout).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["clients"].as_u64(), v["complete"].as_bool()),
        (Some(0), Some(false))
    );
    let (s, _) = t.get(&format!("{CFG}/nothing.json/rollout")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let id = mast_sdk::ConfigId::new("dev", "DEFAULT_GROUP", "flags.json").unwrap();
    let mut clients = Vec::new();
    for n in 1..=4 {
        let c = mast_sdk::Client::connect(mast_sdk::ClientOptions {
            endpoints: vec![t.base.clone()],
            client_id: format!("c{n}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let typed = c.typed_config::<Value>(&id, None).await.unwrap();
        clients.push((c, typed));
    }
    let v = rollout_where(&t, &rollout, |v| v["onCurrent"] == 4).await;
    assert_eq!(v["complete"], true, "{v}");
    assert_eq!(v["versions"][0]["clients"], json!(["c1", "c2", "c3", "c4"]));
    assert_eq!(v["versions"][0]["version"], 1);
    assert!(v["tookMs"].as_u64().is_some(), "{v}");
    let old_md5 = v["md5"].as_str().unwrap().to_string();

    // c4 is killed (no deregistration: its report stays until its lease runs out), then v2.
    drop(clients.pop());
    let (s, _) = t
        .call(Method::PUT, &cfg, Some(json!({"content": "{\"on\":true}"})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let v = rollout_where(&t, &rollout, |v| v["onCurrent"] == 3).await;
    assert_eq!(v["version"], 2);
    assert_eq!(
        (v["clients"].as_u64(), v["complete"].as_bool()),
        (Some(4), Some(false))
    );
    assert!(v.get("tookMs").is_none(), "{v}");
    assert_eq!(v["versions"][0]["clients"], json!(["c1", "c2", "c3"]));
    assert_eq!(v["versions"][1]["md5"], old_md5.as_str());
    let lagging = v["lagging"].as_array().unwrap();
    assert_eq!(lagging.len(), 1, "{v}");
    assert_eq!(
        (lagging[0]["clientId"].as_str(), lagging[0]["via"].as_str()),
        (Some("c4"), Some("sdk"))
    );
    assert_eq!(lagging[0]["version"], 1);
    for (_, typed) in &clients {
        assert_eq!(typed.get()["on"], true);
    }
    t.stop().await;
}

/// Waits (up to 10 s) until `typed`'s value satisfies `ok`.
async fn value_where(
    typed: &mut mast_sdk::TypedConfig<Value>,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok(&typed.get()) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            tokio::time::timeout(left, typed.changed()).await.is_ok(),
            "{what}: still {}",
            typed.get()
        );
    }
}

/// Gray releases: by label only the canaries get it; widened to a stable 50 % then promoted,
/// everyone converges; stopped, its clients fall back; by IP through `/mast/v1`; bad rules
/// change nothing; history records each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gray_releases_reach_the_clients_meant_for_them() {
    let t = TestServer::start().await;
    let cfg = format!("{CFG}/feature.json");
    let gray = |name: &str| format!("{cfg}/gray/{name}");
    let (s, _) = t
        .call(
            Method::PUT,
            &cfg,
            Some(json!({"content": "{\"feature\":\"old\"}"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // Bad input: refused, nothing stored.
    for (body, status) in [
        (
            json!({"content": "{}", "rule": {"type": "percentage", "percentage": 101}}),
            400,
        ),
        (
            json!({"content": "{}", "rule": {"type": "percentage", "percentage": -5}}),
            400,
        ),
        (
            json!({"content": "{}", "rule": {"type": "zone", "zone": "eu"}}),
            400,
        ),
        (
            json!({"content": "{}", "rule": {"type": "ip", "ips": ["not-an-ip"]}}),
            400,
        ),
        (
            json!({"rule": {"type": "labels", "labels": {"canary": "true"}}}),
            400,
        ),
        (
            json!({"content": "{oops", "rule": {"type": "labels", "labels": {"canary": "true"}}}),
            400,
        ),
    ] {
        let (s, v) = t.call(Method::PUT, &gray("bad"), Some(body)).await;
        assert_eq!(s.as_u16(), status, "{v}");
    }
    let (s, _) = t
        .call(
            Method::PUT,
            &format!("{CFG}/absent.json/gray/g"),
            Some(json!({"content": "{}", "rule": {"type": "percentage", "percentage": 5}})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = t.get(&format!("{cfg}/gray")).await;
    assert_eq!(v["grays"], json!([]));

    // Two canaries, two not.
    let id = mast_sdk::ConfigId::new("dev", "DEFAULT_GROUP", "feature.json").unwrap();
    let mut clients = Vec::new();
    for (n, canary) in [("c1", true), ("c2", true), ("c3", false), ("c4", false)] {
        let mut labels = std::collections::BTreeMap::new();
        if canary {
            labels.insert("canary".to_string(), "true".to_string());
        }
        let c = mast_sdk::Client::connect(mast_sdk::ClientOptions {
            endpoints: vec![t.base.clone()],
            client_id: n.into(),
            labels,
            ..Default::default()
        })
        .await
        .unwrap();
        let typed = c.typed_config::<Value>(&id, None).await.unwrap();
        clients.push((n, canary, c, typed));
    }
    let feature = |v: &Value| v["feature"].as_str().unwrap_or("").to_string();
    let (s, v) = t
        .call(
            Method::PUT,
            &gray("canary"),
            Some(json!({"content": "{\"feature\":\"new\"}", "rule": {"type": "labels", "labels": {"canary": "true"}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for (n, canary, _, typed) in clients.iter_mut().filter(|c| c.1) {
        value_where(typed, n, |v| feature(v) == "new").await;
        assert!(*canary);
    }
    for (n, _, _, typed) in clients.iter().filter(|c| !c.1) {
        assert_eq!(feature(&typed.get()), "old", "{n} is no canary");
    }
    // The rollout view counts gray holders as settled, by gray.
    let on_canary = |v: &Value| {
        v["versions"].as_array().is_some_and(|a| {
            a.iter().any(|r| {
                r["gray"] == "canary" && r["clients"].as_array().is_some_and(|c| c.len() == 2)
            })
        })
    };
    let v = rollout_where(&t, &format!("{cfg}/rollout"), on_canary).await;
    assert_eq!(
        (v["clients"].as_u64(), v["complete"].as_bool()),
        (Some(4), Some(true)),
        "{v}"
    );
    let on_gray: Vec<&Value> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["gray"] == "canary")
        .collect();
    assert_eq!(on_gray[0]["clients"], json!(["c1", "c2"]));

    // Widened to a stable 50 % of client ids.
    let (s, _) = t
        .call(
            Method::PUT,
            &gray("canary"),
            Some(json!({"rule": {"type": "percentage", "percentage": 50}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let half = mast_model::GrayRule::Percentage { percentage: 50.0 };
    let model_id = mast_model::ConfigId::new("dev", "DEFAULT_GROUP", "feature.json").unwrap();
    for (n, _, _, typed) in clients.iter_mut() {
        let facts = mast_model::ClientFacts {
            id: n.to_string(),
            ..Default::default()
        };
        let want = if half.matches(&model_id, &facts) {
            "new"
        } else {
            "old"
        };
        value_where(typed, n, |v| feature(v) == want).await;
    }
    // Promoted: one new version, everyone on it, the gray gone.
    let (s, v) = t
        .call(Method::POST, &format!("{}/promote", gray("canary")), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for (n, _, _, typed) in clients.iter_mut() {
        value_where(typed, n, |v| feature(v) == "new").await;
    }
    let (_, v) = t.get(&format!("{cfg}/gray")).await;
    assert_eq!(v["grays"], json!([]));

    // Stopped instead: the canaries fall back.
    t.call(
        Method::PUT,
        &gray("trial"),
        Some(json!({"content": "{\"feature\":\"trial\"}", "rule": {"type": "labels", "labels": {"canary": "true"}}, "priority": 3})),
    )
    .await;
    for (n, _, _, typed) in clients.iter_mut().filter(|c| c.1) {
        value_where(typed, n, |v| feature(v) == "trial").await;
    }
    let (s, _) = t.call(Method::DELETE, &gray("trial"), None).await;
    assert_eq!(s, StatusCode::OK);
    for (n, _, _, typed) in clients.iter_mut().filter(|c| c.1) {
        value_where(typed, n, |v| feature(v) == "new").await;
    }

    // By IP, through /mast/v1 (this test's connections come from 127.0.0.1).
    t.call(
        Method::PUT,
        &gray("beta"),
        Some(json!({"content": "{\"feature\":\"beta\"}", "rule": {"type": "ip", "ips": ["127.0.0.1"]}})),
    )
    .await;
    let (_, v) = t.get(&format!("{cfg}?clientId=x")).await;
    assert_eq!(
        (v["gray"].as_str(), v["content"].as_str()),
        (Some("beta"), Some("{\"feature\":\"beta\"}"))
    );
    t.call(
        Method::PUT,
        &gray("beta"),
        Some(json!({"rule": {"type": "ip", "ips": ["10.9.9.9"]}})),
    )
    .await;
    let (_, v) = t.get(&cfg).await;
    assert!(v.get("gray").is_none(), "{v}");
    let (s, _) = t.get(&format!("{cfg}?labels=nope")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // History: each step, in order.
    let (_, h) = t.get(&format!("{cfg}/history")).await;
    let ops: Vec<(String, String)> = h["versions"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["gray"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("publish", ""),
        ("gray-publish", "canary"),
        ("gray-publish", "canary"),
        ("gray-promote", "canary"),
        ("gray-publish", "trial"),
        ("gray-stop", "trial"),
        ("gray-publish", "beta"),
        ("gray-publish", "beta"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(ops, want, "{h}");
    let (_, v) = t.get(&cfg).await;
    assert_eq!(v["version"], 4, "the promotion is the current version: {v}");
    t.stop().await;
}

/// An event stream that names its client gets the version meant for it: a gray release's
/// content while one matches, and the normal content again when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_carry_the_clients_gray_version() {
    let t = TestServer::start().await;
    let cfg = format!("{CFG}/streamed.json");
    t.call(Method::PUT, &cfg, Some(json!({"content": "{\"v\":1}"})))
        .await;
    let mut canary = SseReader::open(
        &t,
        "?kind=config&namespace=dev&clientId=s1&labels=canary=true",
        None,
    )
    .await;
    assert_eq!(canary.next().await.event, "ready");
    let (s, _) = t
        .call(
            Method::PUT,
            &format!("{cfg}/gray/canary"),
            Some(json!({"content": "{\"v\":2}", "rule": {"type": "labels", "labels": {"canary": "true"}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let e = canary.next().await;
    assert_eq!(
        (e.data["gray"].as_str(), e.data["content"].as_str()),
        (Some("canary"), Some("{\"v\":2}")),
        "{e:?}"
    );
    // A normal publish meanwhile: the canary still gets the gray.
    t.call(Method::PUT, &cfg, Some(json!({"content": "{\"v\":3}"})))
        .await;
    let e = canary.next().await;
    assert_eq!(e.data["content"], "{\"v\":2}", "{e:?}");
    // Stopped: the normal content again.
    let (s, _) = t
        .call(Method::DELETE, &format!("{cfg}/gray/canary"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let e = canary.next().await;
    assert_eq!(e.data["content"], "{\"v\":3}", "{e:?}");
    assert!(e.data.get("gray").is_none(), "{e:?}");
    t.stop().await;
}

/// The config list is searched by exact data id, prefix, substring and content, and paged
/// (`total` counts every match), as the console asks for it with tens of thousands of configs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_list_searches_and_pages() {
    let t = TestServer::start().await;
    for i in 0..25 {
        let id = if i % 5 == 0 {
            format!("db-{i:02}.yaml")
        } else {
            format!("app-{i:02}.yaml")
        };
        let content = if i == 7 {
            "needle: here\n".to_string()
        } else {
            format!("n: {i}\n")
        };
        let (s, v) = t
            .call(
                Method::PUT,
                &format!("{CFG}/{id}"),
                Some(json!({"content": content})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let ids = |v: &Value| -> Vec<String> {
        v["configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["dataId"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, v) = t
        .get("/mast/v1/configs?namespace=dev&limit=10&offset=0")
        .await;
    assert_eq!((v["total"].clone(), ids(&v).len()), (json!(25), 10), "{v}");
    assert_eq!(ids(&v)[0], "app-01.yaml");
    let (_, last) = t
        .get("/mast/v1/configs?namespace=dev&limit=10&offset=20")
        .await;
    assert_eq!(ids(&last).len(), 5, "{last}");
    assert_eq!(ids(&last)[4], "db-20.yaml");
    let (_, v) = t
        .get("/mast/v1/configs?namespace=dev&dataIdPrefix=db-")
        .await;
    assert_eq!(
        ids(&v),
        [
            "db-00.yaml",
            "db-05.yaml",
            "db-10.yaml",
            "db-15.yaml",
            "db-20.yaml"
        ]
    );
    assert_eq!(v["total"], 5);
    let (_, v) = t.get("/mast/v1/configs?dataId=app-07.yaml").await;
    assert_eq!(ids(&v), ["app-07.yaml"]);
    let (_, v) = t.get("/mast/v1/configs?dataId=app-07").await;
    assert_eq!(v["total"], 0, "dataId is exact");
    let (_, v) = t.get("/mast/v1/configs?content=needle").await;
    assert_eq!(ids(&v), ["app-07.yaml"]);
    assert_eq!(
        v["configs"][0]["version"], 1,
        "the page carries its metadata"
    );
    let (_, v) = t.get("/mast/v1/configs?search=-0&content=needle").await;
    assert_eq!(ids(&v), ["app-07.yaml"], "both filters apply");
    let (_, v) = t.get("/mast/v1/configs?search=-1&content=needle").await;
    assert_eq!(v["total"], 0, "{v}");
    let (s, v) = t.get("/mast/v1/configs?limit=0").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument")),
        "{v}"
    );
    t.stop().await;
}

/// Export writes Nacos's zip layout (`<group>/<dataId>` + `.metadata.yml`); an import of it,
/// or of a zip made by hand in that layout, publishes each config with its format and
/// description; `abort` refuses (storing nothing) when any config exists, `skip` and
/// `overwrite` do what they say; invalid content is listed, not stored; clone copies a
/// namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configs_export_import_and_clone_in_nacos_zip_layout() {
    use std::io::{Read, Write};
    let t = TestServer::start().await;
    for (id, content, desc) in [
        ("app.yaml", "port: 1\n", "the app"),
        ("db.json", "{\"url\": \"x\"}", ""),
    ] {
        let (s, v) = t
            .call(
                Method::PUT,
                &format!("{CFG}/{id}"),
                Some(json!({"content": content, "description": desc})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let resp = t
        .request(Method::GET, "/mast/v1/configs/export?namespace=dev")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/zip");
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("nacos_config_export_dev.zip")
    );
    let zip_bytes = resp.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes.to_vec())).unwrap();
    let mut names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".metadata.yml",
            "DEFAULT_GROUP/app.yaml",
            "DEFAULT_GROUP/db.json"
        ]
    );
    let mut meta = String::new();
    zip.by_name(".metadata.yml")
        .unwrap()
        .read_to_string(&mut meta)
        .unwrap();
    assert!(meta.starts_with("metadata:"), "{meta}");
    assert!(
        meta.contains("dataId: app.yaml")
            && meta.contains("type: yaml")
            && meta.contains("desc: the app"),
        "{meta}"
    );

    let import = |ns: &str, policy: &str, body: Vec<u8>| {
        t.request(
            Method::POST,
            &format!("/mast/v1/configs/import?namespace={ns}&policy={policy}"),
        )
        .header("content-type", "application/zip")
        .body(body)
    };
    let send = |r: reqwest::RequestBuilder| async move {
        let resp = r.send().await.unwrap();
        let s = resp.status();
        (s, resp.json::<Value>().await.unwrap())
    };
    let (s, v) = send(import("prod", "abort", zip_bytes.to_vec())).await;
    assert_eq!(
        (s, v["succeeded"].clone()),
        (StatusCode::OK, json!(2)),
        "{v}"
    );
    let (_, v) = t.get("/mast/v1/configs/prod/DEFAULT_GROUP/app.yaml").await;
    assert_eq!(
        (
            v["content"].clone(),
            v["format"].clone(),
            v["description"].clone()
        ),
        (json!("port: 1\n"), json!("yaml"), json!("the app"))
    );
    let rev = t.revision().await;
    let (s, v) = send(import("prod", "abort", zip_bytes.to_vec())).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{v}"
    );
    assert_eq!(t.revision().await, rev, "abort stores nothing");
    let (_, v) = send(import("prod", "skip", zip_bytes.to_vec())).await;
    assert_eq!(
        (
            v["succeeded"].clone(),
            v["skipped"].as_array().unwrap().len()
        ),
        (json!(0), 2),
        "{v}"
    );
    let (_, v) = send(import("prod", "overwrite", zip_bytes.to_vec())).await;
    assert_eq!(v["succeeded"], 2, "{v}");
    let (_, v) = t.get("/mast/v1/configs/prod/DEFAULT_GROUP/db.json").await;
    assert_eq!(v["version"], 2);

    // A zip made by hand in Nacos's layout: a typed config, and one whose JSON is broken.
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    w.start_file("G1/svc.conf", opts).unwrap();
    w.write_all(b"a: [1, 2]\n").unwrap();
    w.start_file("G1/bad.json", opts).unwrap();
    w.write_all(b"{oops").unwrap();
    w.start_file(".metadata.yml", opts).unwrap();
    w.write_all(b"metadata:\n- dataId: svc.conf\n  group: G1\n  type: yaml\n  appName: ''\n")
        .unwrap();
    let hand = w.finish().unwrap().into_inner();
    let (s, v) = send(import("nacos", "abort", hand)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["succeeded"], 1, "{v}");
    assert_eq!(v["failed"][0]["dataId"], "bad.json", "{v}");
    assert!(
        v["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("invalid json"),
        "{v}"
    );
    let (_, v) = t.get("/mast/v1/configs/nacos/G1/svc.conf").await;
    assert_eq!(v["format"], "yaml", "{v}");
    let (s, _) = t.get("/mast/v1/configs/nacos/G1/bad.json").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = send(import("x", "abort", b"not a zip".to_vec())).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument")),
        "{v}"
    );

    // Clone one group of a namespace into another.
    let (s, v) = t
        .call(
            Method::POST,
            "/mast/v1/configs/clone",
            Some(json!({"from": {"namespace": "dev", "dataIdPrefix": "app"}, "toNamespace": "staging"})),
        )
        .await;
    assert_eq!(
        (s, v["succeeded"].clone()),
        (StatusCode::OK, json!(1)),
        "{v}"
    );
    let (_, v) = t.get("/mast/v1/configs?namespace=staging").await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["configs"][0]["dataId"], "app.yaml");
    let (s, _) = t
        .call(
            Method::POST,
            "/mast/v1/configs/clone",
            Some(json!({"from": {"namespace": "dev"}, "toNamespace": "dev"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    t.stop().await;
}

/// Who watches a service: an event stream on it, a JSON-gateway watch of every service, not a
/// watch of another service; each leaves the list when its client goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_watchers_are_listed_while_they_watch() {
    let t = TestServer::start().await;
    let (_, v) = t.get("/mast/v1/services/orders/watchers").await;
    assert_eq!(v["watchers"], json!([]), "{v}");

    let mut sse = SseReader::open(&t, "?kind=instance&service=orders", None).await;
    assert_eq!(sse.next().await.event, "ready");
    let gateway = t
        .request(Method::POST, "/v3/watch")
        .body(
            json!({"create_request": {"key": b64("/services/"), "range_end": b64("/services0")}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let mut gateway_body = gateway.bytes_stream();
    let created = tokio::time::timeout(Duration::from_secs(10), gateway_body.next())
        .await
        .unwrap();
    assert!(created.is_some());
    let other = t
        .request(Method::POST, "/v3/watch")
        .body(json!({"create_request": {"key": b64("/services/billing/")}}).to_string())
        .send()
        .await
        .unwrap();
    let mut other_body = other.bytes_stream();
    tokio::time::timeout(Duration::from_secs(10), other_body.next())
        .await
        .unwrap();

    let (s, v) = t.get("/mast/v1/services/orders/watchers").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut kinds: Vec<&str> = v["watchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["etcd-http", "mast"], "{v}");
    assert!(
        v["watchers"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{v}"
    );
    assert!(v["member"].is_string());

    // Clients gone, entries gone.
    drop(sse);
    drop(gateway_body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = t.get("/mast/v1/services/orders/watchers").await;
        if v["watchers"] == json!([]) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still listed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(other_body);
    t.stop().await;
}

/// A clock the test moves by hand, for lease expiry without waiting out a TTL.
#[derive(Default)]
struct ManualClock(std::sync::atomic::AtomicU64);

impl mast_server::lessor::Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// `GET /mast/v1/leases/{id}`: an alive lease as LeaseTimeToLive shows it; an ended one says
/// whether it expired or was revoked and at which revision its keys were deleted.
#[tokio::test]
async fn a_lease_says_whether_it_expired_or_was_revoked() {
    let clock = std::sync::Arc::new(ManualClock::default());
    let c = clock.clone();
    let t = TestServer::start_with(
        move |cfg| cfg.lease_clock = mast_server::node::LeaseClock(c),
        RegistryConfig::default(),
    )
    .await;
    let grant = |ttl: i64| {
        let t = &t;
        async move {
            let (s, v) = t
                .call(Method::POST, "/v3/lease/grant", Some(json!({"TTL": ttl})))
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v["ID"].as_str().unwrap().to_string()
        }
    };
    let put_on = |key: &'static str, lease: String| {
        let t = &t;
        async move {
            let (s, v) = t
                .call(
                    Method::POST,
                    "/v3/kv/put",
                    Some(json!({"key": b64(key), "value": b64("x"), "lease": lease})),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    };
    let short = grant(5).await;
    let long = grant(600).await;
    put_on("/feature/a", short.clone()).await;
    put_on("/feature/b", long.clone()).await;

    let (s, v) = t.get(&format!("/mast/v1/leases/{short}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["alive"], true);
    assert_eq!(v["ttl"], 5);
    assert_eq!(v["keys"], 1);
    assert!(v.get("ended").is_none(), "{v}");
    let hex = format!("{:x}", short.parse::<i64>().unwrap());
    assert_eq!(v["idHex"], hex.as_str());
    let (s, same) = t.get(&format!("/mast/v1/leases/0x{hex}")).await;
    assert_eq!((s, &same["id"]), (StatusCode::OK, &v["id"]));

    // The short lease runs out: the lessor revokes it.
    clock
        .0
        .fetch_add(6_000, std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.etcd_get("/feature/a").await.is_some() {
        assert!(Instant::now() < deadline, "the lease did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone_at = t.revision().await;
    let (s, v) = t.get(&format!("/mast/v1/leases/{short}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["alive"], false);
    assert_eq!(v["ended"]["cause"], "expired", "{v}");
    assert_eq!(v["ended"]["revision"], gone_at);
    assert!(v.get("ttl").is_none(), "{v}");

    // The other is revoked by a client.
    let (s, v) = t
        .call(Method::POST, "/v3/lease/revoke", Some(json!({"ID": long})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t.get(&format!("/mast/v1/leases/{long}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ended"]["cause"], "revoked", "{v}");
    assert_eq!(v["ended"]["revision"], t.revision().await);

    // Never granted, and bad ids.
    let (s, v) = t.get("/mast/v1/leases/12345").await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    for bad in ["abc", "0", "-3"] {
        let (s, v) = t.get(&format!("/mast/v1/leases/{bad}")).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_argument")),
            "{bad}: {v}"
        );
    }
    t.stop().await;
}
