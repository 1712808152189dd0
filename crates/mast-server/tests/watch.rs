//! Watch behaviour through a real gRPC connection to an in-process server: replay, filters,
//! prev_kv, cancel, progress, compaction, fragments, and a slow watcher that must neither miss
//! events nor hold up writers.

use std::time::Duration;

use mast_proto::etcdserverpb::{
    CompactionRequest, PutRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse, kv_client::KvClient, watch_client::WatchClient,
    watch_create_request::FilterType, watch_request::RequestUnion,
};
use mast_proto::mvccpb::event::EventType;
use mast_server::{Server, ServerConfig};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

struct TestServer {
    server: Option<Server>,
    url: String,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    async fn start_with(f: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(dir.path());
        cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
        f(&mut cfg);
        let server = Server::start(cfg).await.unwrap();
        let url = format!("http://{}", server.local_addrs()[0]);
        TestServer {
            server: Some(server),
            url,
            _dir: dir,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await;
    }
}

struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

impl WatchStream {
    async fn open(ch: Channel) -> WatchStream {
        let (tx, rx) = mpsc::channel(16);
        let rx = WatchClient::new(ch)
            .watch(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        WatchStream { tx, rx }
    }

    async fn send(&self, r: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .unwrap();
    }

    async fn create(&mut self, c: WatchCreateRequest) -> WatchResponse {
        self.send(RequestUnion::CreateRequest(c)).await;
        let r = self.next().await;
        assert!(r.created, "expected a created response, got {r:?}");
        r
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.next())
            .await
            .expect("a watch response within 10 s")
            .expect("stream open")
            .expect("no error")
    }
}

async fn put(kv: &mut KvClient<Channel>, k: &str, v: &str) -> i64 {
    kv.put(PutRequest {
        key: k.to_string().into(),
        value: v.to_string().into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

async fn delete(kv: &mut KvClient<Channel>, k: &str) {
    kv.delete_range(mast_proto::etcdserverpb::DeleteRangeRequest {
        key: k.to_string().into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

fn prefix_end(p: &str) -> bytes::Bytes {
    let mut e = p.as_bytes().to_vec();
    *e.last_mut().unwrap() += 1;
    e.into()
}

#[tokio::test]
async fn replay_filters_prev_kv_and_cancel() {
    let s = TestServer::start().await;
    let mut kv = KvClient::new(s.channel().await);
    put(&mut kv, "/svc/a", "1").await; // rev 2
    put(&mut kv, "/svc/a", "2").await; // rev 3
    delete(&mut kv, "/svc/a").await; // rev 4
    put(&mut kv, "/other", "x").await; // rev 5

    let mut w = WatchStream::open(s.channel().await).await;
    let created = w
        .create(WatchCreateRequest {
            key: "/svc/".into(),
            range_end: prefix_end("/svc/"),
            start_revision: 2,
            prev_kv: true,
            ..Default::default()
        })
        .await;
    assert_eq!(created.watch_id, 0);
    assert_eq!(created.header.unwrap().revision, 5);
    let mut events = Vec::new();
    while events.len() < 3 {
        events.extend(w.next().await.events);
    }
    let revs: Vec<i64> = events
        .iter()
        .map(|e| e.kv.as_ref().unwrap().mod_revision)
        .collect();
    assert_eq!(revs, vec![2, 3, 4]);
    assert_eq!(events[2].r#type, EventType::Delete as i32);
    assert_eq!(events[1].prev_kv.as_ref().unwrap().value, &b"1"[..]);
    assert_eq!(events[2].prev_kv.as_ref().unwrap().value, &b"2"[..]);

    // A second watcher on the same stream that ignores puts.
    let created = w
        .create(WatchCreateRequest {
            key: "/svc/b".into(),
            filters: vec![FilterType::Noput as i32],
            ..Default::default()
        })
        .await;
    assert_eq!(created.watch_id, 1);
    put(&mut kv, "/svc/b", "1").await; // rev 6: only watcher 0
    delete(&mut kv, "/svc/b").await; // rev 7: both
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = w.next().await;
        for e in r.events {
            seen.push((r.watch_id, e.kv.unwrap().mod_revision));
        }
    }
    seen.sort();
    assert_eq!(seen, vec![(0, 6), (0, 7), (1, 7)]);

    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 1,
    }))
    .await;
    let r = w.next().await;
    assert!(r.canceled);
    assert_eq!(r.watch_id, 1);

    w.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let r = w.next().await;
    assert_eq!(r.watch_id, -1);
    assert_eq!(r.header.unwrap().revision, 7);
    s.stop().await;
}

#[tokio::test]
async fn compacted_start_revision_cancels_with_compact_revision() {
    let s = TestServer::start().await;
    let mut kv = KvClient::new(s.channel().await);
    for i in 0..5 {
        put(&mut kv, "k", &i.to_string()).await;
    }
    kv.compact(CompactionRequest {
        revision: 4,
        physical: true,
    })
    .await
    .unwrap();
    let mut w = WatchStream::open(s.channel().await).await;
    w.create(WatchCreateRequest {
        key: "k".into(),
        start_revision: 2,
        ..Default::default()
    })
    .await;
    let r = w.next().await;
    assert!(r.canceled);
    assert_eq!(r.compact_revision, 4);
    // Exactly the compacted revision is still allowed.
    let created = w
        .create(WatchCreateRequest {
            key: "k".into(),
            start_revision: 4,
            ..Default::default()
        })
        .await;
    let r = w.next().await;
    assert_eq!(r.watch_id, created.watch_id);
    assert_eq!(
        r.events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    s.stop().await;
}

#[tokio::test]
async fn fragmented_responses_stay_under_the_request_limit() {
    let s = TestServer::start_with(|c| c.max_request_bytes = 64 * 1024).await;
    let mut kv = KvClient::new(s.channel().await);
    // Eight 20 KiB values, then one delete of all of them: a single revision whose events,
    // with prev_kv, are far above the 64 KiB limit.
    for i in 0..8 {
        kv.put(PutRequest {
            key: format!("f{i}").into(),
            value: vec![b'x'; 20 * 1024].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut w = WatchStream::open(s.channel().await).await;
    w.create(WatchCreateRequest {
        key: "f".into(),
        range_end: "g".into(),
        fragment: true,
        prev_kv: true,
        ..Default::default()
    })
    .await;
    kv.delete_range(mast_proto::etcdserverpb::DeleteRangeRequest {
        key: "f".into(),
        range_end: "g".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut got = 0;
    let mut parts = 0;
    loop {
        let r = w.next().await;
        parts += 1;
        got += r.events.len();
        if !r.fragment {
            break;
        }
    }
    assert_eq!(got, 8);
    assert!(parts > 1, "expected several fragments, got {parts}");
    s.stop().await;
}

#[tokio::test]
async fn slow_watcher_misses_nothing_and_does_not_block_writers() {
    let s = TestServer::start().await;
    let mut slow = WatchStream::open(s.channel().await).await;
    slow.create(WatchCreateRequest {
        key: "load/".into(),
        range_end: prefix_end("load/"),
        ..Default::default()
    })
    .await;
    let mut fast = WatchStream::open(s.channel().await).await;
    fast.create(WatchCreateRequest {
        key: "load/".into(),
        range_end: prefix_end("load/"),
        ..Default::default()
    })
    .await;

    // Writers run while the slow stream is not read at all.
    const N: usize = 6000;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let ch = s.channel().await;
        tasks.push(tokio::spawn(async move {
            let mut kv = KvClient::new(ch);
            for i in 0..N / 8 {
                put(&mut kv, &format!("load/{t}/{i}"), "v").await;
            }
        }));
    }
    let mut fast_count = 0;
    let fast_task = tokio::spawn(async move {
        while fast_count < N {
            fast_count += fast.next().await.events.len();
        }
        fast_count
    });
    tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("writers finish while a watcher stalls");
    assert_eq!(fast_task.await.unwrap(), N);

    // Now drain the slow stream: every event, in revision order, exactly once.
    let mut revs = Vec::with_capacity(N);
    while revs.len() < N {
        for e in slow.next().await.events {
            revs.push(e.kv.unwrap().mod_revision);
        }
    }
    assert_eq!(revs.len(), N);
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "events out of order or repeated"
    );
    assert_eq!(revs[0], 2);
    assert_eq!(*revs.last().unwrap(), N as i64 + 1);
    s.stop().await;
}

/// A client that closes its sending side after creating a watcher (gRPC CloseSend; the JSON
/// gateway's `curl -d '{"create_request": …}' /v3/watch`) keeps receiving events, as etcd.
#[tokio::test]
async fn watchers_outlive_the_clients_closed_sending_side() {
    let s = TestServer::start().await;
    let ch = s.channel().await;
    let mut kv = KvClient::new(ch.clone());
    let mut w = WatchStream::open(ch).await;
    w.create(WatchCreateRequest {
        key: "/half".into(),
        ..Default::default()
    })
    .await;
    let WatchStream { tx, rx } = w;
    drop(tx);
    let mut w = WatchStream {
        tx: mpsc::channel(1).0,
        rx,
    };
    let rev = put(&mut kv, "/half", "still watched").await;
    let r = w.next().await;
    assert_eq!(r.events.len(), 1, "{r:?}");
    assert_eq!(r.events[0].kv.as_ref().unwrap().mod_revision, rev);
    drop(w);
    s.stop().await;
}
