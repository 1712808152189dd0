//! The peer network: openraft's RPCs, snapshots and forwarded client requests over gRPC
//! (`mastraftpb.Peer`, see `crates/mast-proto/proto/mastraftpb/peer.proto`) on the peer port.
//!
//! [`Peers`] is the client side: one lazily connected channel per member, used by openraft
//! through [`PeerNetwork`] and by the server to hand requests to the leader. [`PeerService`]
//! is the server side: it checks that a request is meant for this cluster and member, feeds
//! Raft's messages to the local [`Raft`], assembles received snapshots into a store file, and
//! hands forwarded client requests to a [`ForwardHandler`] (the server).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mast_mvcc::codec::Reader;
use mast_mvcc::snapshot::{SnapshotChunk, SnapshotWriter, TableId};
use mast_mvcc::{Command, CommandResult, MvccError};
use mast_proto::mastraftpb as pb;
use mast_proto::mastraftpb::peer_client::PeerClient;
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::types::{
    Member, MemberId, Raft, SnapshotData, SnapshotMeta, TypeConfig, decode_entry, get_opt_log_id,
    get_stored_membership, get_vote, put_entry, put_opt_log_id, put_stored_membership, put_vote,
};

/// Rows per snapshot message, about.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A request to a peer that failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The member is not known, or has no peer URL.
    #[error("member {0:x} has no peer URL")]
    NoUrl(MemberId),
    /// The peer could not be reached.
    #[error("peer {member:x} unreachable: {message}")]
    Unreachable {
        /// The member.
        member: MemberId,
        /// What went wrong.
        message: String,
        /// False when no connection was made, so the request certainly never reached the
        /// peer and can be sent elsewhere without being applied twice.
        maybe_sent: bool,
    },
    /// The peer answered with an error.
    #[error("peer {member:x} answered {status}")]
    Remote {
        /// The member.
        member: MemberId,
        /// Its answer.
        status: Status,
    },
    /// The peer's answer does not decode.
    #[error("peer {member:x} answered bytes that do not decode: {message}")]
    BadAnswer {
        /// The member.
        member: MemberId,
        /// What does not decode.
        message: String,
    },
}

/// `t` in milliseconds since the Unix epoch (0 before it).
fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Connections to the other members. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    cluster_id: u64,
    member_id: MemberId,
    /// Member → (peer URL, channel).
    channels: Mutex<HashMap<MemberId, (String, Channel)>>,
    /// For `https://` peer URLs (`--peer-cert-file` and friends).
    tls: Option<ClientTlsConfig>,
    /// Member → since when every RPC sent to it has been answered (etcd's transport
    /// `ActiveSince`); absent while it does not answer.
    active_since: Mutex<HashMap<MemberId, std::time::Instant>>,
}

fn route(cluster_id: u64, from: MemberId, to: MemberId) -> Option<pb::Route> {
    Some(pb::Route {
        cluster_id,
        from,
        to,
    })
}

impl Peers {
    /// Connections of member `member_id` of cluster `cluster_id`; `tls` is used for every
    /// `https://` peer URL.
    pub fn new(cluster_id: u64, member_id: MemberId, tls: Option<ClientTlsConfig>) -> Peers {
        Peers {
            inner: Arc::new(PeersInner {
                cluster_id,
                member_id,
                channels: Mutex::new(HashMap::new()),
                tls,
                active_since: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// An endpoint for `url`, with TLS when it is `https://`.
    fn endpoint(&self, url: &str) -> Result<Endpoint, String> {
        let e = Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
        if !url.starts_with("https://") {
            return Ok(e);
        }
        let Some(tls) = &self.inner.tls else {
            return Err(format!(
                "peer URL {url} is https but this member has no --peer-cert-file / --peer-key-file"
            ));
        };
        e.tls_config(tls.clone()).map_err(|e| e.to_string())
    }

    /// Remembers (or updates) where `member` listens.
    pub fn set_member(&self, id: MemberId, member: &Member) {
        let Some(url) = member.peer_urls.first() else {
            return;
        };
        let mut ch = self.inner.channels.lock().expect("peers lock");
        if ch.get(&id).is_some_and(|(u, _)| u == url) {
            return;
        }
        match self.endpoint(url) {
            Ok(e) => {
                let channel = e
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .connect_lazy();
                ch.insert(id, (url.clone(), channel));
            }
            Err(e) => tracing::warn!(member = %format!("{id:x}"), url, error = %e, "bad peer URL"),
        }
    }

    /// Since when `id` has answered every RPC this member sent it, as etcd's transport
    /// `ActiveSince`; `None` when its last RPC failed or none was sent yet. Only a member
    /// that sends (the leader, and candidates) keeps this current.
    pub fn active_since(&self, id: MemberId) -> Option<std::time::Instant> {
        self.inner
            .active_since
            .lock()
            .expect("peers lock")
            .get(&id)
            .copied()
    }

    /// Records the outcome of an RPC sent to `id`.
    fn answered(&self, id: MemberId, ok: bool) {
        let mut active = self.inner.active_since.lock().expect("peers lock");
        if ok {
            active.entry(id).or_insert_with(std::time::Instant::now);
        } else {
            active.remove(&id);
        }
    }

    fn client(&self, id: MemberId) -> Result<PeerClient<Channel>, PeerError> {
        let ch = self.inner.channels.lock().expect("peers lock");
        let (_, c) = ch.get(&id).ok_or(PeerError::NoUrl(id))?;
        Ok(PeerClient::new(c.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    fn route_to(&self, to: MemberId) -> Option<pb::Route> {
        route(self.inner.cluster_id, self.inner.member_id, to)
    }

    fn status_error(member: MemberId, status: Status) -> PeerError {
        if status.code() == tonic::Code::FailedPrecondition
            && status.message() == "cluster ID mismatch"
        {
            tracing::error!(
                peer = %format!("{member:x}"),
                "request sent was ignored by remote peer due to cluster ID mismatch \
                 (check --initial-cluster and --initial-cluster-token)"
            );
        }
        // A status decoded from the peer's answer has no source; one made here from a
        // transport failure carries that failure as its source.
        let Some(source) = std::error::Error::source(&status) else {
            return PeerError::Remote { member, status };
        };
        let mut connect_failed = false;
        let mut cause = Some(source);
        while let Some(e) = cause {
            if e.downcast_ref::<tonic::ConnectError>().is_some() {
                connect_failed = true;
                break;
            }
            cause = e.source();
        }
        PeerError::Unreachable {
            member,
            message: status.message().to_string(),
            maybe_sent: !connect_failed,
        }
    }

    /// Hands `commands` to the leader `leader` and returns its results, one per command, and
    /// the Raft log index (counted from 1; 0 if the leader did not say) of the entry holding
    /// them. The leader refuses them if they reach it after `deadline` (compared with its wall
    /// clock).
    ///
    /// # Errors
    /// [`PeerError`] when the leader cannot be reached or refuses (it may no longer lead, or
    /// the deadline passed: `DeadlineExceeded`).
    pub async fn propose(
        &self,
        leader: MemberId,
        commands: &[Command],
        deadline: std::time::SystemTime,
    ) -> Result<(Vec<Result<CommandResult, MvccError>>, u64), PeerError> {
        let mut buf = Vec::with_capacity(mast_mvcc::command::entry_len(commands));
        mast_mvcc::encode_entry(commands, &mut buf);
        let resp = self
            .client(leader)?
            .propose(pb::ProposeRequest {
                route: self.route_to(leader),
                commands: buf.into(),
                deadline_unix_ms: unix_ms(deadline),
            })
            .await
            .map_err(|s| Self::status_error(leader, s))?
            .into_inner();
        let results = resp
            .results
            .iter()
            .map(|r| {
                mast_mvcc::decode_result(r).map_err(|e| PeerError::BadAnswer {
                    member: leader,
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((results, resp.index))
    }

    /// Asks the leader for a read index (the store's entry index a linearizable read waits
    /// for).
    ///
    /// # Errors
    /// [`PeerError`] when the leader cannot be reached or cannot confirm its leadership.
    pub async fn read_index(&self, leader: MemberId) -> Result<u64, PeerError> {
        Ok(self
            .client(leader)?
            .read_index(pb::ReadIndexRequest {
                route: self.route_to(leader),
            })
            .await
            .map_err(|s| Self::status_error(leader, s))?
            .into_inner()
            .index)
    }

    /// Hands a lease keepalive (`keepalive`) or TTL query to the leader's lessor.
    ///
    /// # Errors
    /// [`PeerError`] when the leader cannot be reached or refuses.
    pub async fn lease(
        &self,
        leader: MemberId,
        id: i64,
        keepalive: bool,
        keys: bool,
    ) -> Result<pb::LeaseResponse, PeerError> {
        Ok(self
            .client(leader)?
            .lease(pb::LeaseRequest {
                route: self.route_to(leader),
                id,
                keys,
                keepalive,
            })
            .await
            .map_err(|s| Self::status_error(leader, s))?
            .into_inner())
    }

    /// Hands a membership change to the leader; returns the member changed and the
    /// membership after the change.
    ///
    /// # Errors
    /// [`PeerError`] when the leader cannot be reached or refuses the change.
    pub async fn member_change(
        &self,
        leader: MemberId,
        mut req: pb::MemberChangeRequest,
    ) -> Result<(MemberId, crate::types::StoredMembership), PeerError> {
        req.route = self.route_to(leader);
        let resp = self
            .client(leader)?
            .member_change(req)
            .await
            .map_err(|s| Self::status_error(leader, s))?
            .into_inner();
        let m = get_stored_membership(&mut Reader(&resp.membership)).map_err(|e| {
            PeerError::BadAnswer {
                member: leader,
                message: e.to_string(),
            }
        })?;
        Ok((resp.id, m))
    }

    /// Asks whoever listens at `url` for its cluster's ID and membership (a member joining an
    /// existing cluster does this before it knows anyone's ID).
    ///
    /// # Errors
    /// [`PeerError`] when nothing answers there or the answer does not decode.
    pub async fn members_at(
        &self,
        url: &str,
    ) -> Result<(u64, MemberId, MemberId, crate::types::StoredMembership), PeerError> {
        let bad = |message: String| PeerError::Unreachable {
            member: 0,
            message,
            maybe_sent: false,
        };
        let channel = self
            .endpoint(url)
            .map_err(bad)?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|e| bad(e.to_string()))?;
        let resp = PeerClient::new(channel)
            .members(pb::MembersRequest {
                route: route(self.inner.cluster_id, self.inner.member_id, 0),
            })
            .await
            .map_err(|s| Self::status_error(0, s))?
            .into_inner();
        let m = get_stored_membership(&mut Reader(&resp.membership)).map_err(|e| {
            PeerError::BadAnswer {
                member: resp.member_id,
                message: e.to_string(),
            }
        })?;
        Ok((resp.cluster_id, resp.member_id, resp.leader, m))
    }
}

/// openraft's network factory over [`Peers`].
#[derive(Clone)]
pub struct PeerNetwork {
    peers: Peers,
}

impl PeerNetwork {
    /// A factory over `peers`.
    pub fn new(peers: Peers) -> PeerNetwork {
        PeerNetwork { peers }
    }
}

/// openraft's connection to one member.
pub struct PeerConnection {
    peers: Peers,
    target: MemberId,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: MemberId, node: &Member) -> Self::Network {
        self.peers.set_member(target, node);
        PeerConnection {
            peers: self.peers.clone(),
            target,
        }
    }
}

fn enc_vote(v: &crate::types::Vote) -> Bytes {
    let mut b = Vec::with_capacity(17);
    put_vote(&mut b, v);
    b.into()
}

fn enc_opt_log_id(id: &Option<crate::types::LogId>) -> Bytes {
    let mut b = Vec::with_capacity(25);
    put_opt_log_id(&mut b, id);
    b.into()
}

fn encode_meta(meta: &SnapshotMeta) -> Bytes {
    let mut b = Vec::new();
    put_opt_log_id(&mut b, &meta.last_log_id);
    put_stored_membership(&mut b, &meta.last_membership);
    mast_mvcc::codec::put_bytes(&mut b, meta.snapshot_id.as_bytes());
    b.into()
}

fn decode_meta(b: &[u8]) -> Result<SnapshotMeta, mast_mvcc::CodecError> {
    let mut r = Reader(b);
    let last_log_id = get_opt_log_id(&mut r)?;
    let last_membership = get_stored_membership(&mut r)?;
    let snapshot_id = r.string()?;
    r.finish()?;
    Ok(SnapshotMeta {
        last_log_id,
        last_membership,
        snapshot_id,
    })
}

impl PeerConnection {
    fn rpc_error<E: std::error::Error>(&self, e: PeerError) -> RPCError<MemberId, Member, E> {
        match e {
            PeerError::Unreachable { .. } | PeerError::NoUrl(_) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>>
    {
        let mut entries = Vec::with_capacity(rpc.entries.len());
        for e in &rpc.entries {
            let mut b = Vec::new();
            put_entry(&mut b, e);
            entries.push(Bytes::from(b));
        }
        let req = pb::AppendEntriesRequest {
            route: self.peers.route_to(self.target),
            vote: enc_vote(&rpc.vote),
            prev_log_id: enc_opt_log_id(&rpc.prev_log_id),
            entries,
            leader_commit: enc_opt_log_id(&rpc.leader_commit),
        };
        let heartbeat = req.entries.is_empty();
        let mut client = self
            .peers
            .client(self.target)
            .map_err(|e| self.rpc_error(e))?;
        let sent = std::time::Instant::now();
        let resp = client.append_entries(req).await;
        self.peers.answered(self.target, resp.is_ok());
        let resp = resp
            .map_err(|s| self.rpc_error(Peers::status_error(self.target, s)))?
            .into_inner();
        if heartbeat {
            // An empty AppendEntries (a heartbeat) costs the follower no disk write, so its
            // answer time is the peer round trip etcd reports.
            metrics::histogram!(
                "etcd_network_peer_round_trip_time_seconds",
                "To" => format!("{:x}", self.target)
            )
            .record(sent.elapsed().as_secs_f64());
        }
        let bad = |e: mast_mvcc::CodecError| {
            RPCError::Network(NetworkError::new(&PeerError::BadAnswer {
                member: self.target,
                message: e.to_string(),
            }))
        };
        Ok(match resp.result {
            Some(pb::append_entries_response::Result::Success(_)) | None => {
                AppendEntriesResponse::Success
            }
            Some(pb::append_entries_response::Result::PartialSuccess(b)) => {
                AppendEntriesResponse::PartialSuccess(get_opt_log_id(&mut Reader(&b)).map_err(bad)?)
            }
            Some(pb::append_entries_response::Result::Conflict(_)) => {
                AppendEntriesResponse::Conflict
            }
            Some(pb::append_entries_response::Result::HigherVote(b)) => {
                AppendEntriesResponse::HigherVote(get_vote(&mut Reader(&b)).map_err(bad)?)
            }
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<MemberId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<MemberId>, RPCError<MemberId, Member, RaftError<MemberId>>> {
        let req = pb::VoteRequest {
            route: self.peers.route_to(self.target),
            vote: enc_vote(&rpc.vote),
            last_log_id: enc_opt_log_id(&rpc.last_log_id),
        };
        let mut client = self
            .peers
            .client(self.target)
            .map_err(|e| self.rpc_error(e))?;
        let resp = client.vote(req).await;
        self.peers.answered(self.target, resp.is_ok());
        let resp = resp
            .map_err(|s| self.rpc_error(Peers::status_error(self.target, s)))?
            .into_inner();
        let bad = |e: mast_mvcc::CodecError| {
            RPCError::Network(NetworkError::new(&PeerError::BadAnswer {
                member: self.target,
                message: e.to_string(),
            }))
        };
        Ok(VoteResponse {
            vote: get_vote(&mut Reader(&resp.vote)).map_err(bad)?,
            vote_granted: resp.vote_granted,
            last_log_id: get_opt_log_id(&mut Reader(&resp.last_log_id)).map_err(bad)?,
        })
    }

    async fn full_snapshot(
        &mut self,
        vote: crate::types::Vote,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<MemberId>, StreamingError<TypeConfig, Fatal<MemberId>>> {
        let Snapshot { meta, snapshot } = snapshot;
        let SnapshotData::View(view) = *snapshot else {
            return Err(StreamingError::Network(NetworkError::new(
                &std::io::Error::other("only a store view can be sent"),
            )));
        };
        let mut client = self
            .peers
            .client(self.target)
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let first = pb::SnapshotChunk {
            route: self.peers.route_to(self.target),
            vote: enc_vote(&vote),
            meta: encode_meta(&meta),
            ..Default::default()
        };
        tx.send(first).await.map_err(|_| {
            StreamingError::Network(NetworkError::new(&std::io::Error::other("closed")))
        })?;
        let reader = tokio::task::spawn_blocking(move || {
            view.for_each_chunk(SNAPSHOT_CHUNK_BYTES, |c| {
                let (keys, values) = c
                    .rows
                    .into_iter()
                    .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
                    .unzip();
                tx.blocking_send(pb::SnapshotChunk {
                    table: c.table as u32,
                    keys,
                    values,
                    ..Default::default()
                })
                .map_err(|_| mast_mvcc::StorageError("snapshot receiver went away".into()))
            })
        });
        tracing::info!(to = %format!("{:x}", self.target), snapshot = %meta.snapshot_id, "sending a snapshot");
        let send = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = tokio::select! {
            r = send => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let read = reader.await;
        let resp = resp
            .map_err(|s| {
                StreamingError::Network(NetworkError::new(&Peers::status_error(self.target, s)))
            })?
            .into_inner();
        if let Ok(Err(e)) = read {
            tracing::warn!(error = %e, "reading the snapshot view failed");
        }
        let vote = get_vote(&mut Reader(&resp.vote))
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        Ok(SnapshotResponse { vote })
    }
}

/// What the server does with client requests a follower hands to this member (the leader).
pub trait ForwardHandler: Send + Sync + 'static {
    /// Proposes `commands` (through the same batching as local writes) and returns one result
    /// per command, and the highest Raft log index (counted from 1) of the entries they went
    /// into.
    fn propose(
        &self,
        commands: Vec<Command>,
    ) -> impl Future<Output = Result<(Vec<Result<CommandResult, MvccError>>, u64), Status>> + Send;

    /// Confirms leadership with a quorum and returns the Raft index (counted from 1) a
    /// linearizable read must see applied.
    fn read_index(&self) -> impl Future<Output = Result<u64, Status>> + Send;

    /// A lease keepalive or TTL query, answered by this member's lessor.
    fn lease(
        &self,
        req: pb::LeaseRequest,
    ) -> impl Future<Output = Result<pb::LeaseResponse, Status>> + Send;

    /// A membership change, made by this member (the leader).
    fn member_change(
        &self,
        req: pb::MemberChangeRequest,
    ) -> impl Future<Output = Result<pb::MemberChangeResponse, Status>> + Send;
}

/// The peer gRPC service of one member.
pub struct PeerService<H> {
    raft: Raft,
    cluster_id: u64,
    member_id: MemberId,
    /// Where received snapshots are assembled.
    dir: PathBuf,
    handler: Arc<H>,
    /// Where the leader's AppendEntries come from, to see the leader go away.
    watch: Arc<crate::leader_watch::LeaderWatch>,
}

impl<H: ForwardHandler> PeerService<H> {
    /// The service of member `member_id` of cluster `cluster_id`, assembling snapshots under
    /// `dir` (`<data-dir>/raft`).
    pub fn new(
        raft: Raft,
        cluster_id: u64,
        member_id: MemberId,
        dir: PathBuf,
        handler: Arc<H>,
    ) -> Self {
        PeerService {
            watch: crate::leader_watch::LeaderWatch::new(raft.clone()),
            raft,
            cluster_id,
            member_id,
            dir,
            handler,
        }
    }

    /// What wraps accepted peer connections so that their closing is noticed: when one
    /// carried the current leader's AppendEntries and the leader's peer port then refuses
    /// connections, this member campaigns at once (see [`crate::leader_watch`]). Serve the
    /// service over wrapped connections (`serve_with_incoming`) to get that; unwrapped ones
    /// work as before.
    pub fn connection_watcher(&self) -> crate::leader_watch::ConnectionWatcher {
        crate::leader_watch::ConnectionWatcher(self.watch.clone())
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::peer_server::PeerServer<Self> {
        pb::peer_server::PeerServer::new(self)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Refuses a request from another cluster or meant for another member, as etcd's peer
    /// handler answers `cluster ID mismatch`.
    fn check(&self, route: &Option<pb::Route>) -> Result<(), Status> {
        let Some(r) = route else {
            return Err(Status::invalid_argument("request without a route"));
        };
        if r.cluster_id != self.cluster_id {
            tracing::warn!(
                local_cluster = %format!("{:x}", self.cluster_id),
                remote_cluster = %format!("{:x}", r.cluster_id),
                from = %format!("{:x}", r.from),
                "request cluster ID mismatch"
            );
            return Err(Status::failed_precondition("cluster ID mismatch"));
        }
        if r.to != 0 && r.to != self.member_id {
            return Err(Status::failed_precondition("to field mismatch"));
        }
        Ok(())
    }
}

fn bad_request(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("peer request does not decode: {e}"))
}

fn raft_status<E: std::fmt::Display>(e: E) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl<H: ForwardHandler> pb::peer_server::Peer for PeerService<H> {
    async fn append_entries(
        &self,
        req: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let from = req.remote_addr();
        let req = req.into_inner();
        self.check(&req.route)?;
        let mut entries = Vec::with_capacity(req.entries.len());
        for e in &req.entries {
            entries.push(decode_entry(e).map_err(bad_request)?);
        }
        let rpc = AppendEntriesRequest {
            vote: get_vote(&mut Reader(&req.vote)).map_err(bad_request)?,
            prev_log_id: get_opt_log_id(&mut Reader(&req.prev_log_id)).map_err(bad_request)?,
            entries,
            leader_commit: get_opt_log_id(&mut Reader(&req.leader_commit)).map_err(bad_request)?,
        };
        let sender = rpc.vote.leader_id().voted_for();
        let committed = rpc.vote.is_committed();
        let resp = self.raft.append_entries(rpc).await.map_err(raft_status)?;
        if let Some(leader) = sender.filter(|_| committed)
            && !matches!(resp, AppendEntriesResponse::HigherVote(_))
        {
            self.watch.accepted(from, leader);
        }
        use pb::append_entries_response::Result as R;
        let result = match resp {
            AppendEntriesResponse::Success => R::Success(true),
            AppendEntriesResponse::PartialSuccess(id) => R::PartialSuccess(enc_opt_log_id(&id)),
            AppendEntriesResponse::Conflict => R::Conflict(true),
            AppendEntriesResponse::HigherVote(v) => R::HigherVote(enc_vote(&v)),
        };
        Ok(Response::new(pb::AppendEntriesResponse {
            result: Some(result),
        }))
    }

    async fn vote(
        &self,
        req: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let req = req.into_inner();
        self.check(&req.route)?;
        let rpc = VoteRequest {
            vote: get_vote(&mut Reader(&req.vote)).map_err(bad_request)?,
            last_log_id: get_opt_log_id(&mut Reader(&req.last_log_id)).map_err(bad_request)?,
        };
        let resp = self.raft.vote(rpc).await.map_err(raft_status)?;
        Ok(Response::new(pb::VoteResponse {
            vote: enc_vote(&resp.vote),
            vote_granted: resp.vote_granted,
            last_log_id: enc_opt_log_id(&resp.last_log_id),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check(&first.route)?;
        let vote = get_vote(&mut Reader(&first.vote)).map_err(bad_request)?;
        let meta = decode_meta(&first.meta).map_err(bad_request)?;
        tracing::info!(snapshot = %meta.snapshot_id, "receiving a snapshot");
        let path = self.dir.join(format!("recv-{}.redb", meta.snapshot_id));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        let writer_path = path.clone();
        let writer =
            tokio::task::spawn_blocking(move || -> Result<PathBuf, mast_mvcc::StorageError> {
                let mut w = SnapshotWriter::create(&writer_path)?;
                while let Some(c) = rx.blocking_recv() {
                    w.write_chunk(&c)?;
                }
                w.finish()
            });
        let mut msg = Some(first);
        loop {
            if let Some(m) = msg.take()
                && !m.keys.is_empty()
            {
                let table = TableId::from_u8(m.table as u8)
                    .ok_or_else(|| bad_request(format!("unknown table {}", m.table)))?;
                let rows = m
                    .keys
                    .into_iter()
                    .zip(m.values)
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect();
                if tx.send(SnapshotChunk { table, rows }).await.is_err() {
                    break;
                }
            }
            match stream.message().await? {
                Some(m) => msg = Some(m),
                None => break,
            }
        }
        drop(tx);
        let path = writer
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("writing the snapshot failed: {e}")))?;
        let resp = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: Box::new(SnapshotData::File(path)),
                },
            )
            .await
            .map_err(raft_status)?;
        Ok(Response::new(pb::SnapshotResponse {
            vote: enc_vote(&resp.vote),
        }))
    }

    async fn propose(
        &self,
        req: Request<pb::ProposeRequest>,
    ) -> Result<Response<pb::ProposeResponse>, Status> {
        let req = req.into_inner();
        self.check(&req.route)?;
        if req.deadline_unix_ms != 0 && unix_ms(std::time::SystemTime::now()) > req.deadline_unix_ms
        {
            return Err(Status::deadline_exceeded(
                "proposal arrived after its sender stopped waiting",
            ));
        }
        let commands = mast_mvcc::decode_entry(&req.commands).map_err(bad_request)?;
        let (results, index) = self.handler.propose(commands).await?;
        let results = results
            .iter()
            .map(|r| {
                let mut b = Vec::new();
                mast_mvcc::encode_result(r, &mut b);
                Bytes::from(b)
            })
            .collect();
        Ok(Response::new(pb::ProposeResponse { results, index }))
    }

    async fn read_index(
        &self,
        req: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        self.check(&req.get_ref().route)?;
        let index = self.handler.read_index().await?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }

    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let req = req.into_inner();
        self.check(&req.route)?;
        Ok(Response::new(self.handler.lease(req).await?))
    }

    async fn member_change(
        &self,
        req: Request<pb::MemberChangeRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let req = req.into_inner();
        self.check(&req.route)?;
        Ok(Response::new(self.handler.member_change(req).await?))
    }

    async fn members(
        &self,
        req: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        // A member joining with --initial-cluster-state existing does not know the cluster
        // ID yet: it may ask with 0.
        let r = req.get_ref().route.unwrap_or_default();
        if r.cluster_id != 0 && r.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition("cluster ID mismatch"));
        }
        let m = self.raft.metrics().borrow().clone();
        let mut membership = Vec::new();
        put_stored_membership(&mut membership, &m.membership_config);
        Ok(Response::new(pb::MembersResponse {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            leader: m.current_leader.unwrap_or(0),
            membership: membership.into(),
        }))
    }
}
