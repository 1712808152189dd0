//! HTTP/2 streams per client connection (`--max-concurrent-streams`): unlimited by default, as
//! etcd's (hyper alone would stop a connection at 200 open streams, so the 201st watch of a
//! client on one connection would never start); with a limit, a call past it waits until a
//! stream ends, as HTTP/2 says — on the plain listener and on the connection threads.

use std::time::Duration;

use mast_proto::etcdserverpb::{
    RangeRequest, WatchCreateRequest, WatchRequest, WatchResponse, kv_client::KvClient,
    watch_client::WatchClient, watch_request::RequestUnion,
};
use mast_server::Server;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

mod common;
use common::connect;

const BOUND: Duration = Duration::from_secs(20);

async fn start(dir: &std::path::Path, threads: usize, max_streams: Option<u32>) -> Server {
    common::start(dir, threads, |cfg| {
        if let Some(m) = max_streams {
            cfg.max_concurrent_streams = m;
        }
    })
    .await
}

/// An open watch stream: the client's sending half and the server's answers (dropping both
/// ends the stream).
type Watch = (
    tokio::sync::mpsc::Sender<WatchRequest>,
    tonic::Streaming<WatchResponse>,
);

/// Opens a watch stream on `ch` and waits until the server says it is created.
async fn open_watch(ch: Channel, n: usize) -> Watch {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: bytes::Bytes::from(format!("/w/{n}")),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = WatchClient::new(ch)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = stream.next().await.expect("stream open").unwrap();
    assert!(created.created);
    (tx, stream)
}

async fn range(ch: Channel) -> i64 {
    KvClient::new(ch)
        .range(RangeRequest {
            key: bytes::Bytes::from_static(b"/w/0"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .map_or(0, |h| h.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_watch_streams_on_one_connection_by_default() {
    for threads in [0, 1] {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), threads, None).await;
        let ch = connect(&server).await;
        let mut streams = Vec::new();
        for n in 0..300 {
            let s = tokio::time::timeout(BOUND, open_watch(ch.clone(), n))
                .await
                .unwrap_or_else(|_| panic!("watch stream {n} not started (threads {threads})"));
            streams.push(s);
        }
        let rev = tokio::time::timeout(BOUND, range(ch.clone()))
            .await
            .expect("a call beside 300 open streams");
        assert!(rev >= 1);
        drop(streams);
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_limit_waits_for_a_stream_to_end() {
    for threads in [0, 1] {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), threads, Some(3)).await;
        let ch = connect(&server).await;
        let mut streams = Vec::new();
        for n in 0..3 {
            streams.push(
                tokio::time::timeout(BOUND, open_watch(ch.clone(), n))
                    .await
                    .expect("streams up to the limit start"),
            );
        }
        let mut call = tokio::spawn(range(ch.clone()));
        // Past the limit the call is held by the client until the server has room.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut call)
                .await
                .is_err(),
            "a fourth stream ran beside three with --max-concurrent-streams 3 (threads {threads})"
        );
        // A client dropping its stream (both halves: closing only the sending side keeps the
        // watchers, as etcd) frees its slot.
        let (tx, rx) = streams.pop().expect("three streams");
        drop(tx);
        drop(rx);
        let rev = tokio::time::timeout(BOUND, call)
            .await
            .expect("the call runs once a stream ended")
            .unwrap();
        assert!(rev >= 1);
        drop(streams);
        server.shutdown().await;
    }
}
