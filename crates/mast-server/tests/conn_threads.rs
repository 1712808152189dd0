//! Connection threads (`ServerConfig::conn_threads`): connections served on different
//! single-threaded runtimes share one store and one watch hub, and a shutdown ends them all,
//! open streams included.

use std::time::Duration;

use mast_proto::etcdserverpb::{
    PutRequest, RangeRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient,
    watch_client::WatchClient, watch_request::RequestUnion,
};
use mast_server::Server;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

mod common;
use common::connect;

async fn start(dir: &std::path::Path, threads: usize) -> Server {
    common::start(dir, threads, |_| {}).await
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    }
}

/// Watches `/k/` on its own connection, returns the stream after the watch is created.
async fn watch_prefix(ch: Channel) -> tonic::Streaming<mast_proto::etcdserverpb::WatchResponse> {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: bytes::Bytes::from_static(b"/k/"),
            range_end: bytes::Bytes::from_static(b"/k0"),
            ..Default::default()
        })),
    };
    let mut stream = WatchClient::new(ch)
        .watch(tokio_stream::iter([create]).chain(tokio_stream::pending()))
        .await
        .unwrap()
        .into_inner();
    let created = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("watch created in time")
        .expect("stream open")
        .unwrap();
    assert!(created.created);
    stream
}

#[tokio::test]
async fn connections_on_different_threads_share_the_store_and_the_watch_hub() {
    for threads in [0, 1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), threads).await;
        // More connections than threads, so some threads serve several.
        let mut channels = Vec::new();
        for _ in 0..6 {
            channels.push(connect(&server).await);
        }
        let mut watch = watch_prefix(channels[0].clone()).await;
        for (i, ch) in channels.iter().enumerate() {
            KvClient::new(ch.clone())
                .put(put(&format!("/k/{i}"), &format!("v{i}")))
                .await
                .unwrap();
        }
        // Every connection sees every write, whichever connection made it.
        for ch in &channels {
            let r = KvClient::new(ch.clone())
                .range(RangeRequest {
                    key: bytes::Bytes::from_static(b"/k/"),
                    range_end: bytes::Bytes::from_static(b"/k0"),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.count, 6, "threads {threads}");
        }
        // The watcher on the first connection saw the writes of all six, in order.
        let mut seen = Vec::new();
        while seen.len() < 6 {
            let resp = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .expect("events in time")
                .expect("stream open")
                .unwrap();
            seen.extend(resp.events.into_iter().map(|e| e.kv.unwrap().key));
        }
        let want: Vec<Vec<u8>> = (0..6).map(|i| format!("/k/{i}").into_bytes()).collect();
        assert_eq!(seen, want, "threads {threads}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn shutdown_ends_open_streams_and_stops_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 2).await;
    let addr = server.local_addrs()[0];
    let ch = connect(&server).await;
    let mut watch = watch_prefix(ch.clone()).await;
    let idle = connect(&server).await;
    KvClient::new(idle.clone())
        .put(put("/k/a", "1"))
        .await
        .unwrap();
    // A watch stream never ends by itself: the shutdown must end it (after its grace period).
    tokio::time::timeout(Duration::from_secs(30), server.shutdown())
        .await
        .expect("shutdown finishes with a watch stream open");
    // The stream ends (an error or the end), instead of hanging.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = watch.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the watch stream ended");
    // Nobody accepts on the address any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // The data is still there on reopen.
    let server = start(dir.path(), 2).await;
    let r = KvClient::new(connect(&server).await)
        .range(RangeRequest {
            key: bytes::Bytes::from_static(b"/k/a"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&r.kvs[0].value[..], b"1");
    server.shutdown().await;
}

#[tokio::test]
async fn concurrent_writes_on_every_thread_all_get_their_own_answer() {
    // Replies to requests on connection threads go through each thread's mailbox, one wake-up
    // per group commit: every request must still get exactly its own result.
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 2).await;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..4 {
        let ch = connect(&server).await;
        for i in 0..50 {
            let mut kv = KvClient::new(ch.clone());
            tasks.spawn(async move {
                let key = format!("/k/{c}-{i}");
                let r = kv.put(put(&key, &key)).await.unwrap().into_inner();
                (key, r.header.unwrap().revision)
            });
        }
    }
    let answers = tokio::time::timeout(Duration::from_secs(60), tasks.join_all())
        .await
        .expect("every write answered in time");
    let mut revisions: Vec<i64> = answers.iter().map(|(_, rev)| *rev).collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 200, "one revision per put");
    // Each answer's revision is the revision its own key was written at.
    let mut kv = KvClient::new(connect(&server).await);
    for (key, rev) in &answers {
        let r = kv
            .range(RangeRequest {
                key: bytes::Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.kvs[0].mod_revision, *rev, "{key}");
    }
    server.shutdown().await;
}
