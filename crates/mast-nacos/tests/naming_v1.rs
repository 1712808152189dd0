//! The Nacos v1 naming API through real HTTP against an in-process server: Nacos's JSON shapes
//! and field order, beats (codes 10200 / 20404), health from the beat age, the mapping of
//! namespaces and groups onto instance keys, and UDP push to a subscribed client.

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;

use common::Nacos as Base;

/// The common server, with this file's helpers.
struct Nacos(Base);

impl std::ops::Deref for Nacos {
    type Target = Base;
    fn deref(&self) -> &Base {
        &self.0
    }
}

impl Nacos {
    async fn start() -> Nacos {
        Nacos(Base::start_with(None).await)
    }

    /// A naming call with every parameter in the query string (as `nacos-naming` sends them).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        q: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let r = self
            .http
            .request(method, format!("{}/ns{path}", self.base))
            .query(q)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn json(&self, path: &str, q: &[(&str, &str)]) -> Value {
        let (s, body) = self.call(reqwest::Method::GET, path, q).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn etcd_keys(&self, prefix: &str) -> Vec<String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let v: Value = self
            .http
            .post(format!("{}/v3/kv/range", self.etcd))
            .json(&json!({"key": b64.encode(prefix), "range_end": b64.encode(end), "keys_only": true}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| {
                        String::from_utf8(b64.decode(kv["key"].as_str().unwrap()).unwrap()).unwrap()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

use reqwest::Method;

#[tokio::test]
async fn instances_are_listed_in_nacos_shape_on_mast_keys() {
    let n = Nacos::start().await;
    let reg = |q: &'static [(&'static str, &'static str)]| n.call(Method::POST, "/instance", q);
    assert_eq!(
        reg(&[
            ("serviceName", "orders"),
            ("ip", "10.0.0.1"),
            ("port", "80")
        ])
        .await,
        (StatusCode::OK, "ok".into())
    );
    assert_eq!(
        reg(&[
            ("serviceName", "orders"),
            ("ip", "10.0.0.2"),
            ("port", "80"),
            ("weight", "3"),
            ("metadata", r#"{"zone":"eu"}"#),
            ("clusterName", "BJ"),
            ("ephemeral", "false"),
        ])
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        reg(&[
            ("serviceName", "PAY@@pay"),
            ("ip", "10.0.0.3"),
            ("port", "81"),
            ("namespaceId", "dev")
        ])
        .await
        .0,
        StatusCode::OK
    );
    // The keys: default group and namespace as the seeds', the others encoded.
    assert_eq!(
        n.etcd_keys("/services/").await,
        [
            "/services/dev#PAY@@pay/10.0.0.3#81#DEFAULT",
            "/services/orders/10.0.0.1#80#DEFAULT",
            "/services/orders/10.0.0.2#80#BJ",
        ]
    );

    let (_, body) = n
        .call(
            Method::GET,
            "/instance/list",
            &[("serviceName", "DEFAULT_GROUP@@orders")],
        )
        .await;
    // Field order as Nacos's ServiceInfo and Instance.
    assert!(
        body.starts_with(r#"{"name":"DEFAULT_GROUP@@orders","groupName":"DEFAULT_GROUP","clusters":"","cacheMillis":10000,"hosts":[{"instanceId":"10.0.0.1#80#DEFAULT#DEFAULT_GROUP@@orders","ip":"10.0.0.1","port":80,"weight":1.0,"healthy":true,"enabled":true,"ephemeral":true,"clusterName":"DEFAULT","serviceName":"DEFAULT_GROUP@@orders","metadata":{},"instanceHeartBeatInterval":5000,"instanceIdGenerator":"simple","instanceHeartBeatTimeOut":15000,"ipDeleteTimeout":30000}"#),
        "{body}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["hosts"][1]["ephemeral"], false);
    assert_eq!(v["hosts"][1]["metadata"]["zone"], "eu");
    assert_eq!(v["hosts"][1]["weight"], 3.0);
    assert_eq!(
        (v["allIPs"].clone(), v["valid"].clone()),
        (json!(false), json!(true))
    );
    let v = n
        .json(
            "/instance/list",
            &[("serviceName", "orders"), ("clusters", "BJ")],
        )
        .await;
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1);
    let v = n
        .json(
            "/instance/list",
            &[
                ("serviceName", "pay"),
                ("groupName", "PAY"),
                ("namespaceId", "dev"),
            ],
        )
        .await;
    assert_eq!(v["hosts"][0]["instanceId"], "10.0.0.3#81#DEFAULT#PAY@@pay");
    assert_eq!(
        n.json("/instance/list", &[("serviceName", "nobody")]).await["hosts"],
        json!([])
    );

    // Disabled instances leave the list; a persistent one's health is what was set.
    let upd = [
        ("serviceName", "orders"),
        ("ip", "10.0.0.2"),
        ("port", "80"),
        ("clusterName", "BJ"),
        ("weight", "3"),
        ("healthy", "false"),
    ];
    assert_eq!(n.call(Method::PUT, "/instance", &upd).await.1, "ok");
    let one = n
        .json(
            "/instance",
            &[
                ("serviceName", "orders"),
                ("ip", "10.0.0.2"),
                ("port", "80"),
                ("clusterName", "BJ"),
            ],
        )
        .await;
    assert_eq!(one["healthy"], false);
    assert_eq!(one["service"], "DEFAULT_GROUP@@orders");
    let v = n
        .json(
            "/instance/list",
            &[("serviceName", "orders"), ("healthyOnly", "true")],
        )
        .await;
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1);
    let mut off = upd.to_vec();
    off.push(("enabled", "false"));
    assert_eq!(n.call(Method::PUT, "/instance", &off).await.1, "ok");
    let v = n.json("/instance/list", &[("serviceName", "orders")]).await;
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1);

    // Not found, in Nacos's words; a deregister of nothing is still ok.
    let (s, body) = n
        .call(
            Method::GET,
            "/instance",
            &[("serviceName", "orders"), ("ip", "9.9.9.9"), ("port", "1")],
        )
        .await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::NOT_FOUND, "no matched ip found!")
    );
    let (s, body) = n
        .call(
            Method::GET,
            "/instance",
            &[("serviceName", "nobody"), ("ip", "9.9.9.9"), ("port", "1")],
        )
        .await;
    assert_eq!(
        (s, body.as_str()),
        (
            StatusCode::NOT_FOUND,
            "no ips found for cluster DEFAULT in service DEFAULT_GROUP@@nobody"
        )
    );
    let del = [
        ("serviceName", "orders"),
        ("ip", "10.0.0.1"),
        ("port", "80"),
    ];
    assert_eq!(n.call(Method::DELETE, "/instance", &del).await.1, "ok");
    assert_eq!(n.call(Method::DELETE, "/instance", &del).await.1, "ok");

    // Service list: one page of names with instances, in a namespace and group.
    let v = n
        .json("/service/list", &[("pageNo", "1"), ("pageSize", "10")])
        .await;
    assert_eq!(v, json!({"count": 1, "doms": ["orders"]}));
    let v = n
        .json(
            "/service/list",
            &[
                ("pageNo", "1"),
                ("pageSize", "10"),
                ("namespaceId", "dev"),
                ("groupName", "PAY"),
            ],
        )
        .await;
    assert_eq!(v, json!({"count": 1, "doms": ["pay"]}));
    let (s, body) = n
        .call(Method::GET, "/service/list", &[("pageSize", "10")])
        .await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::BAD_REQUEST, "Param 'pageNo' is required.")
    );
    let (s, body) = n
        .call(
            Method::POST,
            "/instance",
            &[("ip", "1.1.1.1"), ("port", "1")],
        )
        .await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::BAD_REQUEST, "Param 'serviceName' is required.")
    );
}

#[tokio::test]
async fn beats_keep_ephemeral_instances_and_their_age_sets_health() {
    let n = Nacos::start().await;
    let meta = r#"{"preserved.heart.beat.timeout":"1000","preserved.ip.delete.timeout":"4000","preserved.heart.beat.interval":"700"}"#;
    let beat_json = json!({"ip": "10.0.0.7", "port": 7000, "cluster": "DEFAULT", "metadata": serde_json::from_str::<Value>(meta).unwrap()}).to_string();
    // A light beat of an unknown instance: 20404 (register again); a full beat registers it.
    let v: Value = serde_json::from_str(
        &n.call(
            Method::PUT,
            "/instance/beat",
            &[
                ("serviceName", "beats"),
                ("ip", "10.0.0.7"),
                ("port", "7000"),
            ],
        )
        .await
        .1,
    )
    .unwrap();
    assert_eq!(
        v,
        json!({"clientBeatInterval": 5000, "code": 20404, "lightBeatEnabled": true})
    );
    let (s, body) = n
        .call(
            Method::PUT,
            "/instance/beat",
            &[("serviceName", "beats"), ("beat", &beat_json)],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["code"].clone(), v["clientBeatInterval"].clone()),
        (json!(10200), json!(700))
    );

    // Without beats: unhealthy after the heartbeat timeout, gone after the delete timeout.
    let healthy = || async {
        n.json("/instance/list", &[("serviceName", "beats")]).await["hosts"]
            .as_array()
            .unwrap()
            .first()
            .map(|h| h["healthy"].as_bool().unwrap())
    };
    assert_eq!(healthy().await, Some(true));
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthy().await == Some(true) {
        assert!(Instant::now() < deadline, "never turned unhealthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(healthy().await, Some(false), "listed, unhealthy");
    // A beat makes it healthy again.
    let light = [
        ("serviceName", "beats"),
        ("ip", "10.0.0.7"),
        ("port", "7000"),
    ];
    let v: Value =
        serde_json::from_str(&n.call(Method::PUT, "/instance/beat", &light).await.1).unwrap();
    assert_eq!(v["code"], 10200);
    assert_eq!(healthy().await, Some(true));
    while healthy().await.is_some() {
        assert!(Instant::now() < deadline, "never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n.etcd_keys("/services/beats/").await.is_empty());
}

#[tokio::test]
async fn a_subscribed_client_gets_changes_pushed_over_udp() {
    let n = Nacos::start().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    let reg = [("serviceName", "pushed"), ("ip", "10.0.0.1"), ("port", "1")];
    assert_eq!(n.call(Method::POST, "/instance", &reg).await.1, "ok");
    let v = n
        .json(
            "/instance/list",
            &[
                ("serviceName", "pushed"),
                ("udpPort", &port),
                ("clientIP", "127.0.0.1"),
            ],
        )
        .await;
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1);
    let second = [("serviceName", "pushed"), ("ip", "10.0.0.2"), ("port", "1")];
    assert_eq!(n.call(Method::POST, "/instance", &second).await.1, "ok");
    let mut buf = vec![0u8; 65536];
    let (len, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .expect("a push arrives")
        .unwrap();
    let packet: Value = serde_json::from_slice(&buf[..len]).unwrap();
    assert_eq!(packet["type"], "dom");
    assert!(packet["lastRefTime"].as_u64().unwrap() > 0);
    let info: Value = serde_json::from_str(packet["data"].as_str().unwrap()).unwrap();
    assert_eq!(info["name"], "DEFAULT_GROUP@@pushed");
    assert_eq!(info["hosts"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn services_carry_a_protection_threshold_that_discovery_honours() {
    let n = Nacos::start().await;
    let svc = [("serviceName", "guarded"), ("protectThreshold", "0.6")];
    assert_eq!(
        n.call(Method::POST, "/service", &svc).await,
        (StatusCode::OK, "ok".into())
    );
    assert_eq!(
        n.call(Method::POST, "/service", &svc).await,
        (
            StatusCode::BAD_REQUEST,
            "specified service DEFAULT_GROUP@@guarded already exists!".into()
        )
    );
    // A service with settings and no instance is listed.
    let v = n
        .json("/service/list", &[("pageNo", "1"), ("pageSize", "10")])
        .await;
    assert_eq!(v, json!({"count": 1, "doms": ["guarded"]}));

    for (ip, healthy) in [("10.0.0.1", "true"), ("10.0.0.2", "false")] {
        let q = [
            ("serviceName", "guarded"),
            ("ip", ip),
            ("port", "80"),
            ("ephemeral", "false"),
            ("healthy", healthy),
        ];
        assert_eq!(n.call(Method::POST, "/instance", &q).await.1, "ok");
    }
    // 1 healthy of 2 = 0.5 <= 0.6: every instance is answered, as healthy.
    let v = n
        .json(
            "/instance/list",
            &[("serviceName", "guarded"), ("healthyOnly", "true")],
        )
        .await;
    assert_eq!(v["reachProtectionThreshold"], true);
    assert_eq!(v["hosts"].as_array().unwrap().len(), 2);
    assert!(
        v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["healthy"] == true)
    );
    // Below the share: only the healthy one.
    let upd = [("serviceName", "guarded"), ("protectThreshold", "0.4")];
    assert_eq!(n.call(Method::PUT, "/service", &upd).await.1, "ok");
    let v = n
        .json(
            "/instance/list",
            &[("serviceName", "guarded"), ("healthyOnly", "true")],
        )
        .await;
    assert_eq!(v["reachProtectionThreshold"], false);
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1);
    let v = n.json("/service", &[("serviceName", "guarded")]).await;
    assert_eq!(v["protectThreshold"], 0.4);
    assert_eq!(v["clusters"][0]["name"], "DEFAULT");
    // The settings are an ordinary key.
    assert_eq!(
        n.etcd_keys("/service-meta/").await,
        ["/service-meta/guarded"]
    );

    let (s, body) = n
        .call(Method::DELETE, "/service", &[("serviceName", "guarded")])
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        body.ends_with("is not empty, can't be delete. Please unregister instance first"),
        "{body}"
    );
    for ip in ["10.0.0.1", "10.0.0.2"] {
        let q = [
            ("serviceName", "guarded"),
            ("ip", ip),
            ("port", "80"),
            ("ephemeral", "false"),
        ];
        assert_eq!(n.call(Method::DELETE, "/instance", &q).await.1, "ok");
    }
    assert_eq!(
        n.call(Method::DELETE, "/service", &[("serviceName", "guarded")])
            .await
            .1,
        "ok"
    );
    assert_eq!(
        n.call(Method::DELETE, "/service", &[("serviceName", "guarded")])
            .await,
        (
            StatusCode::BAD_REQUEST,
            "service DEFAULT_GROUP@@guarded not found!".into()
        )
    );
    let (s, body) = n
        .call(
            Method::PUT,
            "/service",
            &[("serviceName", "x"), ("protectThreshold", "2")],
        )
        .await;
    assert_eq!(
        (s, body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "Param 'protectThreshold' is illegal, it should be between 0 and 1."
        )
    );
}

/// An operator's `PUT /instance` (as Nacos's console makes it) stays in force when the
/// client registers the instance again, as Nacos 2.x keeps console edits apart; clearing it
/// through `/mast/v1` gives the client's own values back.
#[tokio::test]
async fn an_operators_update_outlives_reregistration() {
    let n = Nacos::start().await;
    let reg = [
        ("serviceName", "drain"),
        ("ip", "10.0.0.9"),
        ("port", "90"),
        ("weight", "2"),
    ];
    assert_eq!(n.call(Method::POST, "/instance", &reg).await.1, "ok");
    let upd = [
        ("serviceName", "drain"),
        ("ip", "10.0.0.9"),
        ("port", "90"),
        ("weight", "0.3"),
        ("enabled", "false"),
    ];
    assert_eq!(n.call(Method::PUT, "/instance", &upd).await.1, "ok");
    assert_eq!(
        n.etcd_keys("/instance-overrides/").await,
        ["/instance-overrides/drain/10.0.0.9#90#DEFAULT"]
    );
    // The client registers again (a restart, a reconnect) with its own weight.
    assert_eq!(n.call(Method::POST, "/instance", &reg).await.1, "ok");
    let q = [("serviceName", "drain"), ("ip", "10.0.0.9"), ("port", "90")];
    let one = n.json("/instance", &q).await;
    assert_eq!(one["weight"], 0.3, "{one}");
    let v = n.json("/instance/list", &[("serviceName", "drain")]).await;
    assert_eq!(v["hosts"], json!([]), "a disabled instance stays out: {v}");

    // An update of the metadata alone leaves the override as it is.
    let meta = [
        ("serviceName", "drain"),
        ("ip", "10.0.0.9"),
        ("port", "90"),
        ("metadata", r#"{"v":"2"}"#),
    ];
    assert_eq!(n.call(Method::PUT, "/instance", &meta).await.1, "ok");
    let one = n.json("/instance", &q).await;
    assert_eq!(
        (one["weight"].clone(), one["metadata"]["v"].clone()),
        (json!(0.3), json!("2"))
    );

    // The audit log names the Nacos API for the operator's edit.
    let audit: Value = n
        .http
        .get(format!(
            "{}/mast/v1/audit?prefix=/instance-overrides/&api=nacos",
            n.etcd
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["action"], "put");
    assert!(entries[0].get("before").is_none());

    // Cleared through /mast/v1 (on the etcd port): the client's weight and enabled return.
    let r = n
        .http
        .delete(format!(
            "{}/mast/v1/services/drain/instances/10.0.0.9%2390%23DEFAULT/override",
            n.etcd
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let one = n.json("/instance", &q).await;
    assert_eq!(one["weight"], 2.0, "{one}");
    let v = n.json("/instance/list", &[("serviceName", "drain")]).await;
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1, "{v}");
}
