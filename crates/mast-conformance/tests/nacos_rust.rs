//! The Rust Nacos client (the `nacos-sdk` crate, Nacos 2.x gRPC) against `mast serve`,
//! unchanged: config publish / get / listen with a change made through etcd, a CAS publish
//! with a stale md5 refused, remove; naming subscribe / register / list / deregister with the
//! pushed changes, and the same instance seen through etcd's prefix read.
//!
//! Needs the Mast binary (`cargo build -p mast`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use mast_conformance::{Server, ServerKind, ServerOptions, free_port_pair};
use nacos_sdk::api::config::{ConfigChangeListener, ConfigResponse, ConfigServiceBuilder};
use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingServiceBuilder, ServiceInstance,
};
use nacos_sdk::api::props::ClientProps;
use tokio::sync::mpsc;

/// How long a pushed change may take before the test fails.
const PUSH_WAIT: Duration = Duration::from_secs(20);

struct ConfigEvents(mpsc::UnboundedSender<ConfigResponse>);

impl ConfigChangeListener for ConfigEvents {
    fn notify(&self, config: ConfigResponse) {
        let _ = self.0.send(config);
    }
}

/// Every pushed instance list, as sorted `ip:port` strings.
struct NamingEvents(Mutex<mpsc::UnboundedSender<Vec<String>>>);

impl NamingEventListener for NamingEvents {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        let mut hosts: Vec<String> = event
            .instances
            .iter()
            .flatten()
            .map(ServiceInstance::ip_and_port)
            .collect();
        hosts.sort();
        let _ = self.0.lock().unwrap().send(hosts);
    }
}

/// Waits for a pushed instance list equal to `want` (earlier lists are skipped).
async fn wait_for_hosts(rx: &mut mpsc::UnboundedReceiver<Vec<String>>, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(hosts)) if hosts == want => return,
            Ok(Some(hosts)) => seen.push(hosts),
            Ok(None) | Err(_) => panic!("no push of {want:?}; pushed: {seen:?}"),
        }
    }
}

/// Waits until Mast's `/metrics` shows gauge `name` at `value`.
async fn wait_for_metric(endpoint: &str, name: &str, value: f64) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let body = client
            .get(format!("{endpoint}/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        last = body
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_string();
        if last
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v == value)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never reached {value}; last: {last:?}");
}

fn props(port: u16, scratch: &std::path::Path) -> ClientProps {
    ClientProps::new()
        .server_addr(format!("127.0.0.1:{port}"))
        .namespace("dev")
        .app_name("mast-conformance")
        .env_first(false)
        .load_cache_at_start(false)
        .cache_dir(scratch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_sdk_rust_works_unchanged_over_grpc() {
    let port = free_port_pair(1000);
    let nacos = format!("127.0.0.1:{port}");
    let server = Server::start_with(
        ServerKind::Mast,
        ServerOptions::default().args(&["--nacos-addr", nacos.as_str()]),
    );
    let scratch = tempfile::Builder::new()
        .prefix("nacos-rust")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let mut etcd = Client::connect([server.endpoint()], None).await.unwrap();

    // Configs.
    let config = ConfigServiceBuilder::new(props(port, scratch.path()))
        .build()
        .await
        .expect("config client");
    let (data_id, group) = ("rs.json".to_string(), "DEFAULT_GROUP".to_string());
    assert!(
        config
            .publish_config(
                data_id.clone(),
                group.clone(),
                r#"{"v":1}"#.into(),
                Some("json".into())
            )
            .await
            .expect("publish")
    );
    let got = config
        .get_config(data_id.clone(), group.clone())
        .await
        .expect("get");
    assert_eq!(got.content(), r#"{"v":1}"#);
    let key = "/configs/dev/DEFAULT_GROUP/rs.json";
    let kv = etcd.get(key, None).await.unwrap();
    assert_eq!(kv.kvs()[0].value_str().unwrap(), r#"{"v":1}"#);

    // Invalid content for its type is refused, and nothing is stored.
    let bad = config
        .publish_config(
            data_id.clone(),
            group.clone(),
            "{not json".into(),
            Some("json".into()),
        )
        .await;
    assert!(!matches!(bad, Ok(true)), "invalid JSON accepted: {bad:?}");
    let kv = etcd.get(key, None).await.unwrap();
    assert_eq!(kv.kvs()[0].value_str().unwrap(), r#"{"v":1}"#);

    // A CAS publish with a stale md5 is refused; with the current one it succeeds.
    let stale = config
        .publish_config_cas(
            data_id.clone(),
            group.clone(),
            r#"{"v":9}"#.into(),
            Some("json".into()),
            "0123456789abcdef0123456789abcdef".into(),
        )
        .await;
    assert!(!matches!(stale, Ok(true)), "stale CAS accepted: {stale:?}");
    assert!(
        config
            .publish_config_cas(
                data_id.clone(),
                group.clone(),
                r#"{"v":2}"#.into(),
                Some("json".into()),
                got.md5().clone(),
            )
            .await
            .expect("CAS publish")
    );

    // A listener gets a change made through etcd.
    let (tx, mut rx) = mpsc::unbounded_channel();
    config
        .add_listener(data_id.clone(), group.clone(), Arc::new(ConfigEvents(tx)))
        .await
        .expect("listen");
    // The client sends its listen in the background: a change before it arrives would reach
    // this client only at its next full check (a minute later, against Nacos too).
    wait_for_metric(&server.endpoint(), "mast_nacos_grpc_config_listens", 1.0).await;
    etcd.put(key, r#"{"v":3}"#, None).await.unwrap();
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    loop {
        let pushed = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no change pushed after an etcd put")
            .expect("listener channel open");
        if pushed.content() == r#"{"v":3}"# {
            break;
        }
    }

    assert!(
        config
            .remove_config(data_id.clone(), group.clone())
            .await
            .expect("remove")
    );
    assert!(etcd.get(key, None).await.unwrap().kvs().is_empty());
    // A listening client answers `get_config` from its cache (as against Nacos): ask with a
    // fresh one.
    let fresh = ConfigServiceBuilder::new(props(port, scratch.path()))
        .build()
        .await
        .expect("second config client");
    let gone = fresh.get_config(data_id.clone(), group.clone()).await;
    assert!(
        matches!(gone, Err(nacos_sdk::api::error::Error::ConfigNotFound(_))),
        "{gone:?}"
    );

    // Naming.
    // By default the client ignores a push of no instances (its "push empty protection").
    let naming =
        NamingServiceBuilder::new(props(port, scratch.path()).naming_push_empty_protection(false))
            .build()
            .await
            .expect("naming client");
    let (service, group) = ("rs-svc".to_string(), Some("G".to_string()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    naming
        .subscribe(
            service.clone(),
            group.clone(),
            Vec::new(),
            Arc::new(NamingEvents(Mutex::new(tx))),
        )
        .await
        .expect("subscribe");
    let instance = |ip: &str, port: i32| ServiceInstance {
        ip: ip.into(),
        port,
        weight: 2.0,
        metadata: HashMap::from([("zone".to_string(), "eu".to_string())]),
        ..Default::default()
    };
    naming
        .batch_register_instance(
            service.clone(),
            group.clone(),
            vec![instance("10.8.0.1", 80), instance("10.8.0.2", 80)],
        )
        .await
        .expect("batch register");
    wait_for_hosts(&mut rx, &["10.8.0.1:80", "10.8.0.2:80"]).await;

    // The subscription is listed under who watches the service (what the console shows).
    let watchers: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/mast/v1/services/dev%23G%40%40rs-svc/watchers",
            server.endpoint()
        ))
        .send()
        .await
        .expect("GET watchers")
        .json()
        .await
        .expect("watchers JSON");
    let kinds: Vec<&str> = watchers["watchers"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|w| w["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"nacos-grpc"), "{watchers}");

    let listed = naming
        .get_all_instances(service.clone(), group.clone(), Vec::new(), false)
        .await
        .expect("list");
    let mut hosts: Vec<(String, f64, Option<String>)> = listed
        .iter()
        .map(|i| (i.ip_and_port(), i.weight, i.metadata.get("zone").cloned()))
        .collect();
    hosts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        hosts,
        vec![
            ("10.8.0.1:80".to_string(), 2.0, Some("eu".to_string())),
            ("10.8.0.2:80".to_string(), 2.0, Some("eu".to_string())),
        ]
    );

    // The same instances through etcd, at the documented keys.
    let prefix = "/services/dev#G@@rs-svc/";
    let kvs = etcd
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    let keys: Vec<&str> = kvs.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(
        keys,
        vec![
            "/services/dev#G@@rs-svc/10.8.0.1#80#DEFAULT",
            "/services/dev#G@@rs-svc/10.8.0.2#80#DEFAULT",
        ]
    );

    // A batch register replaces this client's set: one left.
    naming
        .batch_register_instance(
            service.clone(),
            group.clone(),
            vec![instance("10.8.0.1", 80)],
        )
        .await
        .expect("batch register again");
    wait_for_hosts(&mut rx, &["10.8.0.1:80"]).await;
    naming
        .deregister_instance(service.clone(), group.clone(), instance("10.8.0.1", 80))
        .await
        .expect("deregister");
    wait_for_hosts(&mut rx, &[]).await;
    let kvs = etcd
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert!(kvs.kvs().is_empty(), "{:?}", kvs.kvs());
    drop(server);
}
