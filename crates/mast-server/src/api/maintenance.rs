//! `etcdserverpb.Maintenance`: Status, Hash, HashKV, Alarm, Defragment, Snapshot.

use std::sync::Arc;

use mast_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, alarm_request::AlarmAction, maintenance_server::Maintenance,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status};

use super::{GrpcStream, grpc_stream, record_code, started, unary};
use crate::authz::Caller;
use crate::error::EtcdError;
use crate::node::Node;
use mast_mvcc::{Command, CommandResult};

const SVC: &str = "etcdserverpb.Maintenance";

/// The etcd API version Mast reports in `Status` and `/version`: a plain semver, so clients
/// that gate features on the server version treat Mast as etcd 3.5.
pub const ETCD_VERSION: &str = "3.5.0";

/// Bytes per Snapshot message, as etcd (32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// The Maintenance service.
pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    /// A Maintenance service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService { node }
    }
}

/// Status of this member, as etcd's: the leader it sees, the Raft term, its last log index
/// and applied index (counted from 1), and `etcdserver: no leader` among the errors when it
/// sees none.
///
/// # Errors
/// Unavailable when the database file cannot be inspected.
pub fn status(node: &Node) -> Result<StatusResponse, EtcdError> {
    let s = node.store.status()?;
    let c = &node.consensus;
    let leader = c.leader();
    let mut errors = Vec::new();
    if leader == 0 {
        errors.push(EtcdError::NoLeader.to_string());
    }
    errors.extend(
        node.store
            .alarms()
            .into_iter()
            .map(|(m, a)| alarm_text(m, a)),
    );
    Ok(StatusResponse {
        header: Some(node.header_at(s.revision)),
        version: ETCD_VERSION.into(),
        db_size: s.db_size as i64,
        leader,
        raft_index: c.raft_index(),
        raft_term: c.term(),
        raft_applied_index: c.applied_index(),
        errors,
        db_size_in_use: s.db_size_in_use as i64,
        is_learner: c.is_learner(),
        ..Default::default()
    })
}

/// HashKV at `revision` (0 = current), as etcd.
///
/// # Errors
/// etcd's compacted / future revision errors.
pub fn hash_kv(node: &Node, req: HashKvRequest) -> Result<HashKvResponse, EtcdError> {
    let (hash, rev, compact) = node.store.hash_kv(req.revision)?;
    Ok(HashKvResponse {
        header: node.header(),
        hash,
        compact_revision: compact,
        hash_revision: rev,
    })
}

/// Hash of the whole key space at the current revision, as etcd's `Maintenance.Hash`.
///
/// # Errors
/// A storage failure while reading.
pub fn hash(node: &Node) -> Result<HashResponse, EtcdError> {
    let hash = node.store.hash()?;
    Ok(HashResponse {
        header: node.header(),
        hash,
    })
}

/// Alarm, as etcd's: `GET` lists the raised alarms (every one for alarm `NONE`, else those
/// of that type); `ACTIVATE` / `DEACTIVATE` raise or clear `(member_id, alarm)` on every
/// member through the log and answer it (nothing when clearing an alarm not raised). A
/// raised `NOSPACE` refuses puts, txns that put and lease grants; a raised `CORRUPT` refuses
/// every write but deletes. As etcd, no permission is checked.
///
/// # Errors
/// The proposal's failure (no leader, timeout).
pub async fn alarm(node: &Node, req: AlarmRequest) -> Result<AlarmResponse, EtcdError> {
    let member = |(member_id, alarm): (u64, i32)| AlarmMember { member_id, alarm };
    let alarms = match AlarmAction::try_from(req.action) {
        Ok(AlarmAction::Get) => node
            .store
            .alarms()
            .into_iter()
            .filter(|(_, a)| req.alarm == AlarmType::None as i32 || *a == req.alarm)
            .map(member)
            .collect(),
        Ok(action) => {
            let cmd = Command::Alarm {
                activate: action == AlarmAction::Activate,
                member: req.member_id,
                alarm: req.alarm,
            };
            match node.write(cmd).await? {
                CommandResult::Alarm(a) => a.into_iter().map(member).collect(),
                other => return Err(EtcdError::unexpected_result(&other)),
            }
        }
        Err(_) => Vec::new(),
    };
    Ok(AlarmResponse {
        header: node.header(),
        alarms,
    })
}

/// An alarm as etcd 3.4's `Status` lists it among its errors: the text form of its
/// `AlarmMember` (`memberID:<id> alarm:<TYPE> `).
fn alarm_text(member: u64, alarm: i32) -> String {
    let name = AlarmType::try_from(alarm)
        .map_or_else(|_| alarm.to_string(), |t| t.as_str_name().to_string());
    format!("memberID:{member} alarm:{name} ")
}

/// Defragment: rewrites the database file.
///
/// # Errors
/// Unavailable when redb cannot compact the file.
pub async fn defragment(node: &Node) -> Result<DefragmentResponse, EtcdError> {
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || store.defragment()).await??;
    // etcd's answer has no header.
    Ok(DefragmentResponse { header: None })
}

/// Streams a consistent copy of the database, followed by its SHA-256 as the last message
/// (as etcd appends the hash for `snapshot restore` to check).
pub fn snapshot_stream(node: Arc<Node>) -> mpsc::Receiver<Result<SnapshotResponse, EtcdError>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let code = match send_snapshot(&node, &tx).await {
            Ok(()) => Code::Ok,
            Err(e) => {
                let code = e.code();
                let _ = tx.send(Err(e)).await;
                code
            }
        };
        record_code(SVC, "Snapshot", "server_stream", code);
    });
    rx
}

async fn send_snapshot(
    node: &Node,
    tx: &mpsc::Sender<Result<SnapshotResponse, EtcdError>>,
) -> Result<(), EtcdError> {
    let path = node
        .config
        .data_dir
        .join(format!("snapshot-{}.tmp", rand::random::<u32>()));
    let store = node.store.clone();
    let p = path.clone();
    let made = tokio::task::spawn_blocking(move || store.snapshot_to(&p)).await?;
    let result = async {
        made?;
        let mut file = tokio::fs::File::open(&path).await?;
        let total = file.metadata().await?.len();
        let mut sent = 0u64;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            sent += n as u64;
            let msg = SnapshotResponse {
                header: node.header(),
                remaining_bytes: total.saturating_sub(sent),
                blob: bytes::Bytes::copy_from_slice(&buf[..n]),
                ..Default::default()
            };
            if tx.send(Ok(msg)).await.is_err() {
                return Ok(());
            }
        }
        let msg = SnapshotResponse {
            header: node.header(),
            remaining_bytes: 0,
            blob: bytes::Bytes::copy_from_slice(&hasher.finalize()),
            ..Default::default()
        };
        let _ = tx.send(Ok(msg)).await;
        Ok(())
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    result
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, r: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        unary(SVC, "Alarm", alarm(&self.node, r.into_inner())).await
    }

    async fn status(&self, _r: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        unary(SVC, "Status", async { status(&self.node) }).await
    }

    async fn defragment(
        &self,
        r: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let caller = Caller::from_grpc(&r);
        unary(SVC, "Defragment", async {
            self.node.require_admin_maintenance(&caller)?;
            defragment(&self.node).await
        })
        .await
    }

    async fn hash(&self, r: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let caller = Caller::from_grpc(&r);
        unary(SVC, "Hash", async {
            self.node.require_admin_maintenance(&caller)?;
            hash(&self.node)
        })
        .await
    }

    async fn hash_kv(&self, r: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let caller = Caller::from_grpc(&r);
        unary(SVC, "HashKV", async {
            self.node.require_admin_maintenance(&caller)?;
            hash_kv(&self.node, r.into_inner())
        })
        .await
    }

    type SnapshotStream = GrpcStream<SnapshotResponse>;

    async fn snapshot(
        &self,
        r: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        started(SVC, "Snapshot", "server_stream");
        if let Err(e) = self.node.require_admin_maintenance(&Caller::from_grpc(&r)) {
            record_code(SVC, "Snapshot", "server_stream", e.code());
            return Err(e.into());
        }
        let rx = snapshot_stream(self.node.clone());
        Ok(Response::new(grpc_stream(rx)))
    }

    async fn move_leader(
        &self,
        _r: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        unary(SVC, "MoveLeader", async {
            Err(EtcdError::unimplemented("MoveLeader (clustering)"))
        })
        .await
    }

    async fn downgrade(
        &self,
        _r: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        unary(SVC, "Downgrade", async {
            Err(EtcdError::unimplemented("Downgrade"))
        })
        .await
    }
}
