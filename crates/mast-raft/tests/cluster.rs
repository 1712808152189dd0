//! Three members in one process on loopback, over the real peer gRPC service: a leader is
//! elected, writes reach every store in the same order, a new leader takes over when the old
//! one stops, and a member that missed purged entries catches up by snapshot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mast_mvcc::{Applied, Command, Store};
use mast_proto::etcdserverpb::{PutRequest, RangeRequest};
use mast_proto::mastraftpb as pb;
use mast_raft::identity::InitialMember;
use mast_raft::member::{ClusterState, MemberConfig, RaftMember};
use mast_raft::network::{ForwardHandler, PeerService};
use mast_raft::{ApplyObserver, Proposal};
use tonic::Status;

struct Quiet;

impl ApplyObserver for Quiet {
    fn applied(&self, _commands: &[Command], _applied: &mut Applied) {}
    fn replaced(&self) {}
}

struct NoForward;

impl ForwardHandler for NoForward {
    async fn propose(
        &self,
        _commands: Vec<Command>,
    ) -> Result<
        (
            Vec<Result<mast_mvcc::CommandResult, mast_mvcc::MvccError>>,
            u64,
        ),
        Status,
    > {
        Err(Status::unimplemented("not in this test"))
    }
    async fn read_index(&self) -> Result<u64, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn lease(&self, _req: pb::LeaseRequest) -> Result<pb::LeaseResponse, Status> {
        Err(Status::unimplemented("not in this test"))
    }
    async fn member_change(
        &self,
        _req: pb::MemberChangeRequest,
    ) -> Result<pb::MemberChangeResponse, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

struct Running {
    member: RaftMember,
    store: Arc<Store>,
    server: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config(name: &str, dir: &std::path::Path, cluster: &[(String, SocketAddr)]) -> MemberConfig {
    let me = cluster.iter().find(|(n, _)| n == name).unwrap().1;
    MemberConfig {
        name: name.into(),
        data_dir: dir.to_path_buf(),
        initial_cluster: cluster
            .iter()
            .map(|(n, a)| InitialMember {
                name: n.clone(),
                peer_urls: vec![format!("http://{a}")],
            })
            .collect(),
        initial_cluster_state: ClusterState::New,
        initial_cluster_token: "test-cluster".into(),
        advertise_peer_urls: vec![format!("http://{me}")],
        advertise_client_urls: vec![],
        heartbeat_interval: Duration::from_millis(50),
        election_timeout: Duration::from_millis(300),
        segment_bytes: mast_raft::log_store::MIN_SEGMENT_BYTES,
        checkpoint_bytes: 64 * 1024,
        peer_tls: None,
    }
}

async fn start(cfg: MemberConfig, addr: SocketAddr) -> Running {
    let store = Arc::new(Store::open(&cfg.data_dir.join("store")).unwrap());
    let member = RaftMember::start(&cfg, store.clone(), Arc::new(Quiet))
        .await
        .unwrap();
    let svc = PeerService::new(
        member.raft.clone(),
        member.identity.cluster_id,
        member.identity.member_id,
        member.dir.clone(),
        Arc::new(NoForward),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc.into_server())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    Running {
        member,
        store,
        server,
        stop,
    }
}

async fn stop(r: Running) {
    r.member.raft.shutdown().await.unwrap();
    let _ = r.stop.send(());
    let _ = r.server.await;
}

async fn wait_leader(members: &[&Running], timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        for m in members {
            let metrics = m.member.raft.metrics().borrow().clone();
            if metrics.state == openraft::ServerState::Leader {
                return metrics.id;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn put(k: &str, v: &str) -> Command {
    Command::Put(PutRequest {
        key: k.as_bytes().to_vec().into(),
        value: v.as_bytes().to_vec().into(),
        ..Default::default()
    })
}

fn get(store: &Store, k: &str) -> Option<Vec<u8>> {
    store
        .range(&RangeRequest {
            key: k.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .unwrap()
        .kvs
        .pop()
        .map(|kv| kv.value.to_vec())
}

async fn wait_applied(store: &Store, revision: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while store.revision() < revision {
        assert!(
            Instant::now() < deadline,
            "store at revision {} after {timeout:?}, waiting for {revision}",
            store.revision()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_replicate_fail_over_and_catch_up() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let names = ["m1", "m2", "m3"];
    let cluster: Vec<(String, SocketAddr)> =
        names.iter().map(|n| (n.to_string(), free_port())).collect();
    let mut running: BTreeMap<&str, Running> = BTreeMap::new();
    for (i, n) in names.iter().enumerate() {
        let cfg = config(n, dirs[i].path(), &cluster);
        running.insert(n, start(cfg, cluster[i].1).await);
    }
    let all: Vec<&Running> = running.values().collect();
    let leader = wait_leader(&all, Duration::from_secs(10)).await;
    let ids: Vec<u64> = all.iter().map(|r| r.member.identity.member_id).collect();
    assert!(ids.contains(&leader));
    // Every member derived the same cluster ID from the same flags.
    assert!(
        all.iter()
            .all(|r| r.member.identity.cluster_id == all[0].member.identity.cluster_id)
    );

    // Writes through the leader reach every store.
    let leader_name = *running
        .iter()
        .find(|(_, r)| r.member.identity.member_id == leader)
        .unwrap()
        .0;
    let mut last_rev = 0;
    for i in 0..50 {
        let out = running[leader_name]
            .member
            .raft
            .client_write(Proposal::new(vec![put(&format!("k{i}"), &format!("v{i}"))]))
            .await
            .unwrap();
        assert!(out.data.results[0].is_ok());
        last_rev = out.data.revision;
    }
    for r in running.values() {
        wait_applied(&r.store, last_rev, Duration::from_secs(10)).await;
        assert_eq!(get(&r.store, "k49").as_deref(), Some(&b"v49"[..]));
    }
    let hashes: Vec<u32> = running
        .values()
        .map(|r| r.store.hash_kv(last_rev).unwrap().0)
        .collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");

    // The leader stops: the other two elect one of themselves and keep taking writes.
    let old = running.remove(leader_name).unwrap();
    let old_dir_index = names.iter().position(|n| *n == leader_name).unwrap();
    stop(old).await;
    let rest: Vec<&Running> = running.values().collect();
    let new_leader = wait_leader(&rest, Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    let new_name = *running
        .iter()
        .find(|(_, r)| r.member.identity.member_id == new_leader)
        .unwrap()
        .0;
    for i in 50..80 {
        let out = running[new_name]
            .member
            .raft
            .client_write(Proposal::new(vec![put(&format!("k{i}"), "after")]))
            .await
            .unwrap();
        last_rev = out.data.revision;
    }
    // A snapshot on the new leader, and the log behind it purged, so the old leader can
    // only catch up by snapshot.
    running[new_name]
        .member
        .raft
        .trigger()
        .snapshot()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = running[new_name].member.raft.metrics().borrow().clone();
        if m.snapshot.is_some_and(|s| s.index >= 80) {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot: {:?}", m.snapshot);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = running[new_name]
        .member
        .raft
        .metrics()
        .borrow()
        .snapshot
        .unwrap();
    running[new_name]
        .member
        .raft
        .trigger()
        .purge_log(snap.index)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = running[new_name].member.raft.metrics().borrow().clone();
        if m.purged
            .is_some_and(|p| p.index >= snap.index.saturating_sub(1))
        {
            break;
        }
        assert!(Instant::now() < deadline, "not purged: {:?}", m.purged);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The old leader comes back (same data dir): it follows and catches up.
    let cfg = config(leader_name, dirs[old_dir_index].path(), &cluster);
    running.insert(leader_name, start(cfg, cluster[old_dir_index].1).await);
    for r in running.values() {
        wait_applied(&r.store, last_rev, Duration::from_secs(20)).await;
        assert_eq!(get(&r.store, "k79").as_deref(), Some(&b"after"[..]));
    }
    let hashes: Vec<u32> = running
        .values()
        .map(|r| r.store.hash_kv(last_rev).unwrap().0)
        .collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // It got there by installing the snapshot: its log starts after the purged entries.
    // (Metrics are published after the install: wait for them, bounded.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let back = running[leader_name].member.raft.metrics().borrow().clone();
        if back.snapshot.is_some_and(|s| s.index >= 80) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the returning member installed no snapshot: {:?}",
            back.snapshot
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (_, r) in running {
        stop(r).await;
    }
}
