//! The server's side of consensus: who leads and in which term, what applying an entry does
//! to the server (watch events, lease deadlines, tokens), linearizable reads, and the answers
//! this member gives to requests followers hand it.
//!
//! - [`Consensus`] keeps what the response headers and the status report need (term, leader,
//!   role) current from openraft's metrics, promotes and demotes the lessor as leadership
//!   comes and goes, and sends the lessor's checkpoints while it leads.
//! - [`Observer`] is the state machine's [`ApplyObserver`]: it runs on every member for every
//!   applied entry, so watches, lease deadlines and token invalidation follow the log on all
//!   of them.
//! - [`ReadBarrier`] makes linearizable reads: on the leader, one quorum confirmation (openraft's
//!   read index) for every read that arrived before it started; on a follower, the leader's
//!   read index, then a wait until this member has applied that far.
//! - [`Forwarder`] answers what followers hand to this member through the peer service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mast_mvcc::{Applied, AuthCommand, Command, CommandResult, MvccError, Store};
use mast_proto::mastraftpb as pb;
use mast_raft::ApplyObserver;
use mast_raft::network::{ForwardHandler, PeerError, Peers};
use mast_raft::types::{MemberId, Raft, StoredMembership};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot};

use crate::error::EtcdError;
use crate::lessor::Lessor;
use crate::watch::WatchHub;

/// How often the leader's lessor tells the followers about renewed leases.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Who leads, in which term, and what this member is: kept from openraft's metrics.
pub struct Consensus {
    /// The Raft handle.
    pub raft: Raft,
    /// This member's ID.
    pub member_id: MemberId,
    /// The cluster's ID.
    pub cluster_id: u64,
    /// Connections to the other members.
    pub peers: Peers,
    /// `--election-timeout`.
    pub election_timeout: Duration,
    /// How long a write or a read waits for a leader and its answer, as etcd's request
    /// timeout (5 s + 2 election timeouts).
    pub request_timeout: Duration,
    term: AtomicU64,
    leader: AtomicU64,
    is_leader: AtomicBool,
    /// This member leads and is the only voter: its reads need no confirmation.
    sole_voter: AtomicBool,
    is_learner: AtomicBool,
    /// Committed Raft index as this member knows it (its last log index on the leader).
    last_log_index: AtomicU64,
    applied_index: AtomicU64,
    leader_changes: AtomicU64,
}

impl Consensus {
    /// Wraps a started member's Raft handle.
    pub fn new(member: &mast_raft::member::RaftMember, election_timeout: Duration) -> Arc<Self> {
        Arc::new(Consensus {
            raft: member.raft.clone(),
            member_id: member.identity.member_id,
            cluster_id: member.identity.cluster_id,
            peers: member.peers.clone(),
            election_timeout,
            request_timeout: Duration::from_secs(5) + 2 * election_timeout,
            term: AtomicU64::new(0),
            leader: AtomicU64::new(0),
            is_leader: AtomicBool::new(false),
            sole_voter: AtomicBool::new(false),
            is_learner: AtomicBool::new(false),
            last_log_index: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
        })
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    /// The leader's member ID, 0 when there is none.
    pub fn leader(&self) -> MemberId {
        self.leader.load(Ordering::Acquire)
    }

    /// Whether this member leads.
    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }

    /// Whether this member is a learner (a non-voting member).
    pub fn is_learner(&self) -> bool {
        self.is_learner.load(Ordering::Acquire)
    }

    /// The Raft index of the last entry in this member's log, counted from 1 as etcd's.
    pub fn raft_index(&self) -> u64 {
        self.last_log_index.load(Ordering::Acquire)
    }

    /// The Raft index of the last entry applied here, counted from 1 as etcd's.
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// How many times a new leader was seen since start.
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Acquire)
    }

    /// The membership as this member applied it.
    pub fn membership(&self) -> Arc<StoredMembership> {
        self.raft.metrics().borrow().membership_config.clone()
    }

    /// Follows openraft's metrics until the member stops: updates the atomics above,
    /// promotes the lessor when this member becomes leader and demotes it when it stops
    /// leading, and runs the lessor's checkpoints while it leads.
    pub fn spawn_watch(self: &Arc<Self>, lessor: Arc<Lessor>) {
        let me = self.clone();
        let mut metrics = self.raft.metrics();
        tokio::spawn(async move {
            let mut checkpoints: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                let (leading, sole) = {
                    let m = metrics.borrow_and_update();
                    let leader = m.current_leader.unwrap_or(0);
                    let old = me.leader.swap(leader, Ordering::AcqRel);
                    if leader != 0 && leader != old {
                        me.leader_changes.fetch_add(1, Ordering::AcqRel);
                        metrics::counter!("etcd_server_leader_changes_seen_total").increment(1);
                    }
                    me.term.store(m.current_term, Ordering::Release);
                    me.last_log_index
                        .store(m.last_log_index.map_or(0, |i| i + 1), Ordering::Release);
                    me.applied_index
                        .store(m.last_applied.map_or(0, |l| l.index + 1), Ordering::Release);
                    let leading = m.state == ServerState::Leader;
                    let voters: Vec<u64> = m.membership_config.voter_ids().collect();
                    let sole = leading && voters == [me.member_id];
                    // Before the first membership is known a member is nothing yet, not a
                    // learner: only a member listed as a learner is refused as one.
                    let learner = m
                        .membership_config
                        .membership()
                        .learner_ids()
                        .any(|id| id == me.member_id);
                    me.is_learner.store(learner, Ordering::Release);
                    me.is_leader.store(leading, Ordering::Release);
                    me.sole_voter.store(sole, Ordering::Release);
                    metrics::gauge!("etcd_server_has_leader").set(f64::from(u8::from(leader != 0)));
                    metrics::gauge!("etcd_server_is_leader").set(f64::from(u8::from(leading)));
                    metrics::gauge!("etcd_server_is_learner").set(f64::from(u8::from(learner)));
                    if m.state == ServerState::Shutdown {
                        lessor.demote();
                        return;
                    }
                    (leading, sole)
                };
                if leading && !lessor.is_primary() {
                    lessor.promote(me.election_timeout);
                    tracing::info!(term = me.term(), "leading: lease expiry is ours now");
                } else if !leading && lessor.is_primary() {
                    lessor.demote();
                    tracing::info!("no longer leading: lease expiry stops here");
                }
                // Checkpoints matter only to followers.
                match (leading && !sole, &checkpoints) {
                    (true, None) => {
                        checkpoints =
                            Some(tokio::spawn(run_checkpoints(me.clone(), lessor.clone())));
                    }
                    (false, Some(h)) => {
                        h.abort();
                        checkpoints = None;
                    }
                    _ => {}
                }
                if metrics.changed().await.is_err() {
                    lessor.demote();
                    return;
                }
            }
        });
    }

    /// Proposes `commands` as one entry: on the leader through openraft, on a follower by
    /// handing them to the leader. Waits for a leader for up to the request timeout. A
    /// hand-over that certainly never reached the leader (no connection) is sent again to
    /// the next leader, within the same timeout, while `wanted()` says someone still waits.
    ///
    /// # Errors
    /// [`EtcdError::Timeout`] when no leader took them in time, [`EtcdError::LeaderChanged`]
    /// when leadership moved while they were in flight (they may or may not have been
    /// applied, as etcd's), [`EtcdError::Stopped`] when Raft has stopped, the leader's answer
    /// for a refused hand-over.
    ///
    /// On a follower the answer waits until this member has applied the entry itself, as
    /// etcd's proposer waits for its own apply: a client that reads (serializable), watches or
    /// uses a token on the member that took its write then sees the write.
    pub async fn propose(
        &self,
        commands: Vec<Command>,
        wanted: impl Fn() -> bool,
    ) -> Result<Proposed, EtcdError> {
        let accepted = self.submit(commands, wanted).await?;
        self.settle(accepted).await
    }

    /// The first half of [`Consensus::propose`]: the entry is applied on the leader and its
    /// results are known, but on a follower this member may not have applied it yet —
    /// [`Consensus::settle`] waits for that. The writer frees its slot for the next entry
    /// in between: a follower's next hand-over need not wait for the commit index to
    /// reach it (the leader tells followers with its next append, one round trip later).
    ///
    /// # Errors
    /// As [`Consensus::propose`].
    pub async fn submit(
        &self,
        commands: Vec<Command>,
        wanted: impl Fn() -> bool,
    ) -> Result<Accepted, EtcdError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let wall_deadline = std::time::SystemTime::now() + self.request_timeout;
        let mut leader = self.wait_leader(deadline).await?;
        // A leader that just died is still this member's leader until an election says
        // otherwise; a hand-over that never reached it is safe to send to the next one — if
        // someone still waits for it: a write its client gave up on (etcdctl's command timeout)
        // must not be applied later, when a partition heals.
        while leader != self.member_id {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.peers.propose(leader, &commands, wall_deadline))
                .await
            {
                Ok(Ok((results, index))) => {
                    return Ok(Accepted {
                        proposed: Proposed { results, index },
                        local_wait: Some(deadline),
                    });
                }
                Ok(Err(e)) if never_sent(&e) => {
                    match self.wait_leader_other_than(leader, deadline).await {
                        Some(next) if wanted() => leader = next,
                        _ => return Err(peer_error(e)),
                    }
                }
                Ok(Err(e)) => return Err(peer_error(e)),
                Err(_) => return Err(EtcdError::TimeoutDueToLeaderFail),
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let proposal = mast_raft::Proposal::new(commands);
        match tokio::time::timeout(left, self.raft.client_write(proposal)).await {
            Ok(Ok(r)) => Ok(Accepted {
                proposed: Proposed {
                    results: r.data.results,
                    index: r.log_id.index + 1,
                },
                local_wait: None,
            }),
            Ok(Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(_),
            ))) => Err(EtcdError::LeaderChanged),
            Ok(Err(openraft::error::RaftError::APIError(e))) => {
                Err(EtcdError::Internal(e.to_string()))
            }
            Ok(Err(openraft::error::RaftError::Fatal(_))) => Err(EtcdError::Stopped),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// The second half of [`Consensus::propose`]: waits until this member has applied the
    /// entry of `accepted` (at once on the leader, which answered after its own apply).
    ///
    /// # Errors
    /// [`EtcdError::Timeout`] when the request's deadline passes first.
    pub async fn settle(&self, accepted: Accepted) -> Result<Proposed, EtcdError> {
        if let Some(deadline) = accepted.local_wait {
            self.wait_applied(accepted.proposed.index, deadline).await?;
        }
        Ok(accepted.proposed)
    }

    /// Waits until this member has applied the entry at `index` (counted from 1; 0 waits for
    /// nothing), or `deadline`.
    ///
    /// # Errors
    /// [`EtcdError::Timeout`] at the deadline (the entry is committed, as with etcd's
    /// `request timed out` after a proposal).
    pub(crate) async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), EtcdError> {
        if index == 0 {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index - 1), "forwarded write")
            .await
            .map(drop)
            .map_err(|_| EtcdError::Timeout)
    }

    /// Waits until a member other than `old` leads, or `deadline` (then `None`).
    async fn wait_leader_other_than(
        &self,
        old: MemberId,
        deadline: tokio::time::Instant,
    ) -> Option<MemberId> {
        let mut metrics = self.raft.metrics();
        loop {
            match metrics.borrow_and_update().current_leader {
                Some(l) if l != old => return Some(l),
                _ => {}
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Waits until some member leads, or `deadline`.
    async fn wait_leader(&self, deadline: tokio::time::Instant) -> Result<MemberId, EtcdError> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(l) = metrics.borrow_and_update().current_leader {
                return Ok(l);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(EtcdError::Stopped),
                Err(_) => return Err(EtcdError::Timeout),
            }
        }
    }

    /// Confirms this member's leadership with a quorum (openraft's read index) and returns the
    /// Raft index every linearizable read must see applied, counted from 1.
    ///
    /// # Errors
    /// [`EtcdError::NotLeader`] when this member does not lead, [`EtcdError::Timeout`] when
    /// no quorum answered.
    pub async fn leader_read_index(&self) -> Result<u64, EtcdError> {
        match tokio::time::timeout(self.request_timeout, self.raft.ensure_linearizable()).await {
            Ok(Ok(id)) => Ok(id.map_or(0, |l| l.index + 1)),
            Ok(Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(_),
            ))) => Err(EtcdError::NotLeader),
            Ok(Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::QuorumNotEnough(_),
            ))) => Err(EtcdError::Timeout),
            Ok(Err(openraft::error::RaftError::Fatal(_))) => Err(EtcdError::Stopped),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// One linearizable-read confirmation for this member: the leader's read index, then a
    /// wait until this member applied that far.
    async fn confirm_read(&self) -> Result<(), EtcdError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let leader = self.wait_leader(deadline).await?;
        let index = if leader == self.member_id {
            // ensure_linearizable waits for the apply itself.
            return self.leader_read_index().await.map(drop);
        } else {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.peers.read_index(leader)).await {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => return Err(peer_error(e)),
                Err(_) => return Err(EtcdError::Timeout),
            }
        };
        if index == 0 {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index - 1), "read index")
            .await
            .map(drop)
            .map_err(|_| EtcdError::Timeout)
    }

    /// A lease keepalive (`keepalive`) or TTL query answered by the leader's lessor.
    ///
    /// # Errors
    /// No leader in time, or the leader unreachable.
    pub async fn lease_at_leader(
        &self,
        id: i64,
        keepalive: bool,
        keys: bool,
    ) -> Result<pb::LeaseResponse, EtcdError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let leader = self.wait_leader(deadline).await?;
        if leader == self.member_id {
            // Leadership came between the caller's look at the lessor and now.
            return Err(EtcdError::LeaderChanged);
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, self.peers.lease(leader, id, keepalive, keys)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(peer_error(e)),
            Err(_) => Err(EtcdError::Timeout),
        }
    }

    /// Whether reads need no confirmation: this member leads and is the only voter, so no
    /// other member can have taken writes it has not applied.
    pub fn reads_are_local(&self) -> bool {
        self.sole_voter.load(Ordering::Acquire)
    }
}

/// Whether a failed hand-over certainly never reached the peer (no connection was made).
fn never_sent(e: &PeerError) -> bool {
    matches!(
        e,
        PeerError::NoUrl(_)
            | PeerError::Unreachable {
                maybe_sent: false,
                ..
            }
    )
}

/// What a failed hand-over to the leader answers.
pub(crate) fn peer_error(e: PeerError) -> EtcdError {
    match e {
        PeerError::Remote { status, .. } => EtcdError::Relayed {
            code: status.code(),
            message: status.message().to_string(),
        },
        PeerError::NoUrl(_) | PeerError::Unreachable { .. } => {
            EtcdError::TimeoutDueToConnectionLost
        }
        PeerError::BadAnswer { message, .. } => EtcdError::Internal(message),
    }
}

/// What [`Consensus::propose`] answers: one result per command, and the Raft log index of
/// the entry they went into, counted from 1.
#[derive(Debug)]
pub struct Proposed {
    /// One result per command, in order.
    pub results: Vec<Result<CommandResult, MvccError>>,
    /// The entry's log index, counted from 1.
    pub index: u64,
}

/// What [`Consensus::submit`] answers: the leader's results, and until when this member (a
/// follower) may wait to apply the entry itself (`None` on the leader).
#[derive(Debug)]
pub struct Accepted {
    proposed: Proposed,
    local_wait: Option<tokio::time::Instant>,
}

/// The leader's lessor checkpoints: every [`CHECKPOINT_INTERVAL`], the remaining time of the
/// leases renewed since the last one, as one `LeaseCheckpoint` entry.
async fn run_checkpoints(consensus: Arc<Consensus>, lessor: Arc<Lessor>) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let renewed = lessor.take_renewed();
        if renewed.is_empty() {
            continue;
        }
        let n = renewed.len();
        if let Err(e) = consensus
            .propose(
                vec![Command::LeaseCheckpoint {
                    checkpoints: renewed,
                }],
                || true,
            )
            .await
        {
            tracing::debug!(leases = n, error = %e, "lease checkpoint not proposed");
        }
    }
}

/// Linearizable reads, as etcd's read index loop: every read that arrives while no
/// confirmation runs waits for the next one, so a burst of reads costs one quorum round.
pub struct ReadBarrier {
    tx: mpsc::UnboundedSender<oneshot::Sender<Result<(), EtcdError>>>,
}

impl ReadBarrier {
    /// Starts the confirmation loop for `consensus`.
    pub fn start(consensus: Arc<Consensus>) -> ReadBarrier {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<(), EtcdError>>>();
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            while let Some(first) = rx.recv().await {
                waiting.push(first);
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                let r = consensus.confirm_read().await;
                metrics::counter!("mast_read_index_rounds_total").increment(1);
                for w in waiting.drain(..) {
                    let _ = w.send(match &r {
                        Ok(()) => Ok(()),
                        Err(e) => Err(e.clone_for_waiters()),
                    });
                }
            }
        });
        ReadBarrier { tx }
    }

    /// Waits until a read started now may be served from this member's store.
    ///
    /// # Errors
    /// As [`Consensus::confirm_read`]: no leader, a timeout, or this member stopping.
    pub async fn wait(&self) -> Result<(), EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| EtcdError::Stopped)?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }
}

/// What applying entries does to this member's server, on every member.
pub struct Observer {
    /// Where watch streams get events.
    pub hub: Arc<WatchHub>,
    /// Lease deadlines.
    pub lessor: Arc<Lessor>,
    /// Auth tokens.
    pub tokens: Arc<crate::tokens::TokenProvider>,
    /// The store, to reload leases after a snapshot.
    pub store: Arc<Store>,
    /// How leases ended.
    pub lease_ends: Arc<crate::lease_ends::LeaseEnds>,
}

impl ApplyObserver for Observer {
    fn applied(&self, commands: &[Command], applied: &mut Applied) {
        self.lessor
            .granted_all(applied.results.iter().flatten().filter_map(|r| match r {
                CommandResult::LeaseGrant { id, ttl }
                | CommandResult::LeaseGrantPut { id, ttl, .. } => Some((*id, *ttl)),
                _ => None,
            }));
        for (cmd, result) in commands.iter().zip(&applied.results) {
            match (cmd.inner(), result) {
                (Command::LeaseRevoke { id }, Ok(r)) => {
                    self.lessor.revoked(*id);
                    let by_lessor = matches!(cmd, Command::Attributed { origin, .. }
                        if origin.api == crate::node::SYSTEM_API && origin.user == crate::node::LEASE_EXPIRY);
                    let cause = if by_lessor {
                        crate::lease_ends::LeaseEndCause::Expired
                    } else {
                        crate::lease_ends::LeaseEndCause::Revoked
                    };
                    let revision = match r {
                        CommandResult::LeaseRevoke { revision } => *revision,
                        _ => applied.revision,
                    };
                    self.lease_ends.record(*id, revision, cause);
                }
                (Command::LeaseRevoke { id }, Err(MvccError::LeaseNotFound)) => {
                    self.lessor.revoked(*id)
                }
                (Command::LeaseCheckpoint { checkpoints }, Ok(_)) => {
                    self.lessor.checkpointed(checkpoints)
                }
                // Token invalidation is an effect of the applied change, on every member.
                (Command::Auth(AuthCommand::UserDelete { name }), Ok(_))
                | (Command::Auth(AuthCommand::UserChangePassword { name, .. }), Ok(_)) => {
                    self.tokens.invalidate_user(name)
                }
                (Command::Auth(AuthCommand::Disable), Ok(_)) => self.tokens.invalidate_all(),
                (
                    Command::SimpleToken {
                        user,
                        token,
                        auth_revision,
                    },
                    Ok(_),
                ) => self.tokens.register(token, user, *auth_revision),
                _ => {}
            }
        }
        // Events go to watchers before the proposer hears back: a client that sees its put
        // acknowledged and then creates a watch never misses its own write.
        let events = std::mem::take(&mut applied.events);
        self.hub.publish(applied.revision, events);
    }

    fn replaced(&self) {
        let leases: Vec<(i64, i64)> = self
            .store
            .leases()
            .iter()
            .map(|(id, r)| (id, r.ttl))
            .collect();
        self.lessor.reset(leases);
        self.tokens.invalidate_all();
        self.hub.resync(self.store.revision());
    }
}

/// Answers what followers hand to this member (the leader).
pub struct Forwarder {
    /// The node.
    pub node: std::sync::Weak<crate::node::Node>,
}

impl Forwarder {
    fn node(&self) -> Result<Arc<crate::node::Node>, tonic::Status> {
        self.node
            .upgrade()
            .ok_or_else(|| tonic::Status::unavailable("etcdserver: server stopped"))
    }
}

impl ForwardHandler for Forwarder {
    async fn propose(
        &self,
        commands: Vec<Command>,
    ) -> Result<(Vec<Result<CommandResult, MvccError>>, u64), tonic::Status> {
        let node = self.node()?;
        if !node.consensus.is_leader() {
            return Err(EtcdError::NotLeader.into());
        }
        // All at once: they join the leader's next entries together.
        let (results, index) = node.writer.submit_all(commands).await;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            out.push(match r {
                Ok(r) => Ok(r),
                Err(EtcdError::Mvcc(e)) => Err(e),
                Err(EtcdError::Auth(a)) => Err(MvccError::Auth(a)),
                Err(e) => return Err(e.into()),
            });
        }
        Ok((out, index))
    }

    async fn read_index(&self) -> Result<u64, tonic::Status> {
        let node = self.node()?;
        Ok(node.consensus.leader_read_index().await?)
    }

    async fn member_change(
        &self,
        req: pb::MemberChangeRequest,
    ) -> Result<pb::MemberChangeResponse, tonic::Status> {
        let node = self.node()?;
        if !node.consensus.is_leader() {
            return Err(EtcdError::NotLeader.into());
        }
        let (id, m) = crate::api::cluster::change_as_leader(&node, req).await?;
        let mut membership = Vec::new();
        mast_raft::types::put_stored_membership(&mut membership, &m);
        Ok(pb::MemberChangeResponse {
            id,
            membership: membership.into(),
        })
    }

    async fn lease(&self, req: pb::LeaseRequest) -> Result<pb::LeaseResponse, tonic::Status> {
        let node = self.node()?;
        if !node.lessor.is_primary() {
            return Err(EtcdError::NotLeader.into());
        }
        if req.keepalive {
            let ttl = node.lessor.renew(req.id).unwrap_or(0);
            return Ok(pb::LeaseResponse {
                ttl,
                granted_ttl: ttl,
                keys: Vec::new(),
            });
        }
        let leases = node.store.leases();
        Ok(match (leases.get(req.id), node.lessor.timing(req.id)) {
            (Some(rec), Some(t)) => pb::LeaseResponse {
                ttl: t.remaining,
                granted_ttl: t.granted_ttl,
                keys: if req.keys {
                    rec.keys.iter().map(|k| k.clone().into()).collect()
                } else {
                    Vec::new()
                },
            },
            _ => pb::LeaseResponse {
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        })
    }
}
