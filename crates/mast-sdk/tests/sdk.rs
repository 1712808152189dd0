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
