//! The SDK against an in-process Mast server: registration with keepalive and re-registration,
//! discovery and watching, a server restart, and typed hot-reloading config with its cache.

use std::time::Duration;

use futures::StreamExt;
use mast_sdk::{Client, ClientOptions, ConfigFormat, ConfigId, Instance, RegistrationState};
use mast_server::{Server, ServerConfig};

async fn start(dir: &std::path::Path, port: u16) -> Server {
    let mut cfg = ServerConfig::new(dir);
    cfg.listen = vec![format!("127.0.0.1:{port}").parse().unwrap()];
    Server::start(cfg).await.unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn client(port: u16) -> Client {
    let opts = ClientOptions {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        ..Default::default()
    };
    Client::connect(opts).await.unwrap()
}

async fn eventually<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {secs} s");
}

#[tokio::test]
async fn register_discover_watch_and_reregister() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start(dir.path(), port).await;
    let c = client(port).await;

    let mut watch = Box::pin(c.watch_service("user-service"));
    assert!(watch.next().await.unwrap().unwrap().is_empty());

    let mut inst = Instance::new("127.0.0.1", 3001);
    inst.weight = 2.0;
    let reg = c
        .register("user-service", "i1", inst, Duration::from_secs(2))
        .await
        .unwrap();
    let set = watch.next().await.unwrap().unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].instance.weight, 2.0);

    // Kept alive past its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.discover("user-service").await.unwrap().len(), 1);

    // Revoked from outside: the SDK registers again under a new lease.
    let RegistrationState::Registered { lease } = reg.state() else {
        panic!("registered")
    };
    c.revoke(lease).await.unwrap();
    eventually("re-registered", 10, || {
        let state = reg.state();
        async move { matches!(state, RegistrationState::Registered { lease: l } if l != lease) }
    })
    .await;
    assert_eq!(c.discover("user-service").await.unwrap().len(), 1);

    // Server restart: the registration comes back within a TTL or so.
    server.shutdown().await;
    let server = start(dir.path(), port).await;
    eventually("registered after restart", 15, || {
        let c = c.clone();
        async move {
            c.discover("user-service")
                .await
                .map(|s| s.len() == 1)
                .unwrap_or(false)
        }
    })
    .await;

    // Shutdown deregisters; the watcher sees the set empty again.
    reg.shutdown().await;
    let mut empty = false;
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Some(Ok(set))) if set.is_empty() => {
                empty = true;
                break;
            }
            Ok(Some(_)) => continue,
            _ => break,
        }
    }
    assert!(empty, "the watcher sees the instance leave");
    server.shutdown().await;
}

#[derive(serde::Deserialize, Debug, PartialEq)]
struct AppConfig {
    port: u16,
    name: String,
}

#[tokio::test]
async fn typed_config_hot_reloads_keeps_last_good_and_uses_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start(dir.path(), port).await;
    let c = client(port).await;
    let id = ConfigId::new("dev", "", "app.yaml").unwrap();

    assert_eq!(
        c.publish_config(&id, b"port: 8080\nname: a\n", ConfigFormat::Yaml, "me")
            .await
            .unwrap(),
        1
    );
    let mut typed = c
        .typed_config::<AppConfig>(&id, Some(cache.path().to_path_buf()))
        .await
        .unwrap();
    assert_eq!(
        *typed.get(),
        AppConfig {
            port: 8080,
            name: "a".into()
        }
    );

    assert_eq!(
        c.publish_config(&id, b"port: 9090\nname: b\n", ConfigFormat::Yaml, "me")
            .await
            .unwrap(),
        2
    );
    let v = tokio::time::timeout(Duration::from_secs(5), typed.changed())
        .await
        .unwrap();
    assert_eq!(
        *v,
        AppConfig {
            port: 9090,
            name: "b".into()
        }
    );

    // Invalid YAML is refused by publish, and nothing changes.
    assert!(
        c.publish_config(&id, b"port: [9090\n", ConfigFormat::Yaml, "me")
            .await
            .is_err()
    );
    // A plain etcd put of content that does not fit the type: the last good value stays.
    c.put(mast_proto::etcdserverpb::PutRequest {
        key: id.content_key().into(),
        value: "port: notanumber\nname: c\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    eventually("error reported", 5, || {
        let e = typed.last_error();
        async move { e.is_some() }
    })
    .await;
    assert_eq!(typed.get().port, 9090);
    drop(typed);

    // The server is gone: a new typed config starts from the cache.
    server.shutdown().await;
    let c2 = Client::connect(ClientOptions {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let cached = c2
        .typed_config::<AppConfig>(&id, Some(cache.path().to_path_buf()))
        .await
        .unwrap();
    assert_eq!(
        *cached.get(),
        AppConfig {
            port: 9090,
            name: "b".into()
        }
    );
}

/// Discovery hands out healthy, enabled instances — every enabled one past the service's
/// protection threshold, and says so — as `/mast/v1`, Nacos and DNS do.
#[tokio::test]
async fn discovery_skips_unhealthy_instances_until_the_protection_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start(dir.path(), port).await;
    let c = client(port).await;
    let put = |k: &str, v: &str| {
        let c = c.clone();
        let (k, v) = (k.to_string(), v.to_string());
        async move {
            c.put(mast_proto::etcdserverpb::PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    };
    // Persistent instances as the Nacos API or a probe mark them: 1 of 4 enabled healthy.
    put("/services/guarded/a", r#"{"host":"10.0.0.1","port":1}"#).await;
    put(
        "/services/guarded/b",
        r#"{"host":"10.0.0.2","port":2,"healthy":false}"#,
    )
    .await;
    put(
        "/services/guarded/c",
        r#"{"host":"10.0.0.3","port":3,"healthy":false}"#,
    )
    .await;
    put(
        "/services/guarded/d",
        r#"{"host":"10.0.0.4","port":4,"healthy":false}"#,
    )
    .await;
    put(
        "/services/guarded/e",
        r#"{"host":"10.0.0.5","port":5,"enabled":false}"#,
    )
    .await;
    let ids = |a: &mast_sdk::Available| -> Vec<String> {
        a.instances.iter().map(|s| s.id.clone()).collect()
    };
    let a = c.discover_available("guarded").await.unwrap();
    assert_eq!(
        (ids(&a), a.protection_threshold_reached),
        (vec!["a".to_string()], false)
    );
    let mut changes = Box::pin(c.discover_changes("guarded"));
    let first = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, tower::discover::Change::Insert(ref id, _) if id == "a"));

    // A threshold of 0.5: 1 of 4 is below it, so every enabled instance is handed out.
    put("/service-meta/guarded", r#"{"protectThreshold":0.5}"#).await;
    let a = c.discover_available("guarded").await.unwrap();
    assert_eq!(ids(&a), ["a", "b", "c", "d"]);
    assert!(a.protection_threshold_reached);
    // The next change of the service brings the stream to the same answer.
    put(
        "/services/guarded/b",
        r#"{"host":"10.0.0.2","port":2,"healthy":false,"v":2}"#,
    )
    .await;
    let mut inserted = Vec::new();
    while inserted.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            tower::discover::Change::Insert(id, _) => inserted.push(id),
            tower::discover::Change::Remove(id) => panic!("{id} removed"),
        }
    }
    inserted.sort();
    assert_eq!(inserted, ["b", "c", "d"]);
    server.shutdown().await;
}
