//! Leases through gRPC against an in-process server: expiry deletes every attached key in one
//! revision, keepalive answers, and a restart gives every lease its full TTL again.

use std::time::{Duration, Instant};

use mast_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest,
    WatchCreateRequest, WatchRequest, kv_client::KvClient, lease_client::LeaseClient,
    watch_client::WatchClient, watch_request::RequestUnion,
};
use mast_proto::mvccpb::event::EventType;
use mast_server::{Server, ServerConfig};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

async fn start(dir: &std::path::Path) -> (Server, Channel) {
    let mut cfg = ServerConfig::new(dir);
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let server = Server::start(cfg).await.unwrap();
    let url = format!("http://{}", server.local_addrs()[0]);
    let ch = Channel::from_shared(url).unwrap().connect().await.unwrap();
    (server, ch)
}

async fn put_with_lease(kv: &mut KvClient<Channel>, key: &str, lease: i64) {
    kv.put(PutRequest {
        key: key.to_string().into(),
        value: "v".into(),
        lease,
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn count(kv: &mut KvClient<Channel>, prefix: &str) -> i64 {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    kv.range(RangeRequest {
        key: prefix.to_string().into(),
        range_end: end.into(),
        count_only: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .count
}

#[tokio::test]
async fn expiry_deletes_all_keys_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ch) = start(dir.path()).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch.clone());
    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.ttl, 2, "TTL below the minimum is raised to 2 s, as etcd");
    assert!(g.id > 0);
    for k in ["/e/a", "/e/b", "/e/c"] {
        put_with_lease(&mut kv, k, g.id).await;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "/e/".into(),
            range_end: "/e0".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut watch = WatchClient::new(ch.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(watch.next().await.unwrap().unwrap().created);
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("expiry within 10 s")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "expired too early"
    );
    assert_eq!(resp.events.len(), 3, "one response with all three deletes");
    let revs: Vec<i64> = resp
        .events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect();
    assert!(
        revs.iter().all(|r| *r == revs[0]),
        "one revision for the whole revoke: {revs:?}"
    );
    assert!(
        resp.events
            .iter()
            .all(|e| e.r#type == EventType::Delete as i32)
    );
    assert_eq!(count(&mut kv, "/e/").await, 0);
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.ttl, -1);
    drop(tx);
    server.shutdown().await;
}

#[tokio::test]
async fn keepalive_and_restart_renew_to_full_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ch) = start(dir.path()).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch.clone());
    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner();
    put_with_lease(&mut kv, "/r/a", g.id).await;

    let reqs = tokio_stream::iter(vec![
        LeaseKeepAliveRequest { id: g.id },
        LeaseKeepAliveRequest { id: 12345 },
    ]);
    let mut ka = lease.lease_keep_alive(reqs).await.unwrap().into_inner();
    let first = ka.next().await.unwrap().unwrap();
    assert_eq!((first.id, first.ttl), (g.id, 60));
    let unknown = ka.next().await.unwrap().unwrap();
    assert_eq!(
        (unknown.id, unknown.ttl),
        (12345, 0),
        "unknown lease: TTL 0, not an error"
    );
    server.shutdown().await;

    let (server, ch) = start(dir.path()).await;
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch);
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: g.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.granted_ttl, 60);
    assert!(
        t.ttl >= 58,
        "after a restart the lease starts a full TTL again, got {}",
        t.ttl
    );
    assert_eq!(t.keys, vec![bytes::Bytes::from_static(b"/r/a")]);
    assert_eq!(count(&mut kv, "/r/").await, 1);
    server.shutdown().await;
}
