//! `etcdserverpb.Cluster`: MemberList, MemberAdd, MemberRemove, MemberUpdate, MemberPromote,
//! with etcd's checks and errors. A membership change is made by the leader (through
//! openraft's joint consensus); a follower hands it to the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mast_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, ResponseHeader, cluster_server::Cluster,
};
use mast_proto::mastraftpb as pb;
use mast_raft::types::{Member as RaftMember, MemberId, StoredMembership};
use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use super::unary;
use crate::authz::Caller;
use crate::error::EtcdError;
use crate::node::Node;

const SVC: &str = "etcdserverpb.Cluster";

/// At most this many learners, as etcd's `maxLearners`.
const MAX_LEARNERS: usize = 1;

/// A learner may be promoted once it holds this share of the leader's log, as etcd's
/// `readyPercent`.
const READY_PERCENT: f64 = 0.9;

/// How long every voter must have answered this member before a member is added, and the
/// quorum counted when one is removed (etcd's `HealthInterval`).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// Voters that have answered this member for at least [`HEALTH_INTERVAL`], this member
/// included (etcd's `numConnectedSince`).
fn connected_voters(node: &Node, voters: &BTreeSet<MemberId>) -> usize {
    let since = std::time::Instant::now().checked_sub(HEALTH_INTERVAL);
    voters
        .iter()
        .filter(|id| {
            **id == node.consensus.member_id
                || node
                    .consensus
                    .peers
                    .active_since(**id)
                    .is_some_and(|t| since.is_some_and(|s| t <= s))
        })
        .count()
}

const OP_ADD: u32 = 1;
const OP_REMOVE: u32 = 2;
const OP_UPDATE: u32 = 3;
const OP_PROMOTE: u32 = 4;
const OP_PUBLISH: u32 = 5;

/// The Cluster service.
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// A Cluster service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

/// The header of a Cluster response: as etcd's, without a revision.
fn header(node: &Node) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision: 0,
        ..node.header_at(0)
    })
}

/// The members of `m`, sorted by ID, as etcd's `MemberList` shows them: a member that has not
/// started yet has no name and no client URLs.
pub fn members_of(m: &StoredMembership) -> Vec<Member> {
    let voters: BTreeSet<MemberId> = m.voter_ids().collect();
    m.nodes()
        .map(|(id, n)| Member {
            id: *id,
            name: n.name.clone(),
            peer_ur_ls: n.peer_urls.clone(),
            client_ur_ls: n.client_urls.clone(),
            is_learner: !voters.contains(id),
        })
        .collect()
}

/// MemberList, as etcd's: with `linearizable`, after a read index round. As etcd 3.4's, it
/// needs no authentication.
///
/// # Errors
/// No-leader / timeout errors of a linearizable list.
pub async fn member_list(
    node: &Node,
    _caller: &Caller,
    req: MemberListRequest,
) -> Result<MemberListResponse, EtcdError> {
    if req.linearizable {
        node.linearize().await?;
    }
    Ok(MemberListResponse {
        header: header(node),
        members: members_of(&node.consensus.membership()),
    })
}

/// Checks peer URLs as etcd's `types.NewURLs`: at least one, each `http`, `https`, `unix` or
/// `unixs`, with a `host:port` for http(s) and no path.
fn check_urls(urls: &[String]) -> Result<Vec<String>, EtcdError> {
    if urls.is_empty() {
        return Err(EtcdError::MemberBadUrls);
    }
    let mut out = Vec::with_capacity(urls.len());
    for u in urls {
        let u = u.trim();
        let (scheme, rest) = u.split_once("://").ok_or(EtcdError::MemberBadUrls)?;
        match scheme {
            "http" | "https" => {
                let (host, port) = rest.rsplit_once(':').ok_or(EtcdError::MemberBadUrls)?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(EtcdError::MemberBadUrls);
                }
            }
            "unix" | "unixs" => {}
            _ => return Err(EtcdError::MemberBadUrls),
        }
        if rest.contains('/') {
            return Err(EtcdError::MemberBadUrls);
        }
        out.push(u.to_string());
    }
    out.sort();
    Ok(out)
}

/// What a membership change asks, after the caller's checks: made here when this member
/// leads, else handed to the leader.
async fn change(
    node: &Node,
    req: pb::MemberChangeRequest,
) -> Result<(MemberId, StoredMembership), EtcdError> {
    let deadline = tokio::time::Instant::now() + node.consensus.request_timeout;
    loop {
        let leader = node.consensus.leader();
        if leader == node.identity.member_id {
            return change_as_leader(node, req).await;
        }
        if leader != 0 {
            return node
                .consensus
                .peers
                .member_change(leader, req)
                .await
                .map_err(crate::consensus::peer_error);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(EtcdError::NoLeader);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Started voters: members that published a name (as etcd counts "started").
fn started_voters(m: &StoredMembership) -> usize {
    let voters: BTreeSet<MemberId> = m.voter_ids().collect();
    m.nodes()
        .filter(|(id, n)| voters.contains(id) && !n.name.is_empty())
        .count()
}

/// Makes a membership change on the leader, with etcd's checks.
///
/// # Errors
/// etcd's membership errors; [`EtcdError::NotLeader`] when this member stopped leading.
pub async fn change_as_leader(
    node: &Node,
    req: pb::MemberChangeRequest,
) -> Result<(MemberId, StoredMembership), EtcdError> {
    let raft = &node.consensus.raft;
    let m = node.consensus.membership();
    let voters: BTreeSet<MemberId> = m.voter_ids().collect();
    let nodes: BTreeMap<MemberId, RaftMember> = m.nodes().map(|(id, n)| (*id, n.clone())).collect();
    let learners = nodes.keys().filter(|id| !voters.contains(id)).count();
    let change = match req.op {
        OP_ADD => {
            let urls = check_urls(&req.peer_urls)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            // As etcd's MemberAdd: no token, the time of the add.
            let id = mast_raft::identity::member_id(&urls, "", Some(now));
            if !req.is_learner {
                // etcd's IsReadyToAddVotingMember (--strict-reconfig-check).
                let members = voters.len() + 1;
                let started = started_voters(&m);
                if !(started == 1 && members == 2) && started < members / 2 + 1 {
                    return Err(EtcdError::MemberNotEnoughStarted);
                }
            }
            // etcd's isConnectedFullySince: every voter answers, and has for a while.
            if connected_voters(node, &voters) < voters.len() {
                return Err(EtcdError::Unhealthy);
            }
            if nodes.contains_key(&id) {
                return Err(EtcdError::MemberExist);
            }
            if nodes
                .values()
                .any(|n| n.peer_urls.iter().any(|u| urls.contains(u)))
            {
                return Err(EtcdError::PeerUrlExist);
            }
            if req.is_learner && learners + 1 > MAX_LEARNERS {
                return Err(EtcdError::TooManyLearners);
            }
            let member = RaftMember {
                name: String::new(),
                peer_urls: urls,
                client_urls: Vec::new(),
            };
            raft.add_learner(id, member, false)
                .await
                .map_err(change_error)?;
            if !req.is_learner {
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(change_error)?;
            }
            id
        }
        OP_REMOVE => {
            let id = req.id;
            if !nodes.contains_key(&id) {
                return Err(EtcdError::MemberNotFound);
            }
            if voters.contains(&id) {
                // etcd's IsReadyToRemoveVotingMember.
                let rest = voters.len() - 1;
                let started = m
                    .nodes()
                    .filter(|(i, n)| **i != id && voters.contains(i) && !n.name.is_empty())
                    .count();
                if rest == 0 || started < rest / 2 + 1 {
                    return Err(EtcdError::MemberNotEnoughStarted);
                }
                // As etcd's mayRemoveMember: a member that does not answer is not part of
                // the active quorum and can go; otherwise the voters that answer, less the
                // one removed, must still be a quorum of the rest.
                let answers = id == node.consensus.member_id
                    || node.consensus.peers.active_since(id).is_some();
                if answers && connected_voters(node, &voters) - 1 < 1 + (voters.len() - 1) / 2 {
                    return Err(EtcdError::Unhealthy);
                }
                change_membership(node, ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await?;
            } else {
                change_membership(node, ChangeMembers::RemoveNodes(BTreeSet::from([id]))).await?;
            }
            id
        }
        OP_UPDATE => {
            let id = req.id;
            let Some(old) = nodes.get(&id) else {
                return Err(EtcdError::MemberNotFound);
            };
            // As etcd's MemberUpdate: the URLs as given, no check but collisions.
            let urls: Vec<String> = req.peer_urls.iter().map(|u| u.trim().to_string()).collect();
            if nodes
                .iter()
                .any(|(i, n)| *i != id && n.peer_urls.iter().any(|u| urls.contains(u)))
            {
                return Err(EtcdError::PeerUrlExist);
            }
            let member = RaftMember {
                peer_urls: urls,
                ..old.clone()
            };
            change_membership(
                node,
                ChangeMembers::SetNodes(BTreeMap::from([(id, member)])),
            )
            .await?;
            id
        }
        OP_PROMOTE => {
            let id = req.id;
            if !nodes.contains_key(&id) {
                return Err(EtcdError::MemberNotFound);
            }
            if voters.contains(&id) {
                return Err(EtcdError::MemberNotLearner);
            }
            let metrics = raft.metrics().borrow().clone();
            let leader_match = metrics.last_log_index.unwrap_or(0) as f64;
            let learner_match = metrics
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map_or(0.0, |l| l.index as f64);
            if learner_match < leader_match * READY_PERCENT {
                return Err(EtcdError::LearnerNotReady);
            }
            let members = voters.len() + 1;
            let started = started_voters(&m) + 1;
            if started < members / 2 + 1 {
                return Err(EtcdError::MemberNotEnoughStarted);
            }
            change_membership(node, ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await?;
            id
        }
        OP_PUBLISH => {
            let id = req.id;
            let Some(old) = nodes.get(&id) else {
                return Err(EtcdError::MemberNotFound);
            };
            let member = RaftMember {
                name: req.name.clone(),
                client_urls: req.client_urls.clone(),
                ..old.clone()
            };
            if &member != old {
                change_membership(
                    node,
                    ChangeMembers::SetNodes(BTreeMap::from([(id, member)])),
                )
                .await?;
            }
            id
        }
        other => {
            return Err(EtcdError::Internal(format!(
                "unknown membership change {other}"
            )));
        }
    };
    Ok((
        change,
        (*node.consensus.raft.metrics().borrow().membership_config).clone(),
    ))
}

/// `change_membership`, retried while another change is still being committed (etcd applies
/// configuration changes one at a time too).
async fn change_membership(
    node: &Node,
    change: ChangeMembers<MemberId, RaftMember>,
) -> Result<(), EtcdError> {
    let deadline = tokio::time::Instant::now() + node.consensus.request_timeout;
    loop {
        match node
            .consensus
            .raft
            .change_membership(change.clone(), false)
            .await
        {
            Ok(_) => return Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ),
            )) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(change_error(e)),
        }
    }
}

fn change_error(
    e: openraft::error::RaftError<
        MemberId,
        openraft::error::ClientWriteError<MemberId, RaftMember>,
    >,
) -> EtcdError {
    use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => EtcdError::LeaderChanged,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            ChangeMembershipError::InProgress(_) => EtcdError::Timeout,
            ChangeMembershipError::LearnerNotFound(_) => EtcdError::MemberNotFound,
            ChangeMembershipError::EmptyMembership(_) => EtcdError::MemberNotEnoughStarted,
        },
        RaftError::Fatal(_) => EtcdError::Stopped,
    }
}

/// Tells the cluster this member's name and client URLs once it has started, as etcd's
/// `publish`: a member added by `MemberAdd` shows as unstarted until then. Retries until it
/// is done or the node stops; the returned task ends then.
pub fn spawn_publish(node: Arc<Node>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let me = node.identity.member_id;
        for attempt in 0..3000u32 {
            let m = node.consensus.membership();
            let published = m.nodes().any(|(id, n)| {
                *id == me
                    && n.name == node.config.name
                    && n.client_urls == node.config.advertise_client_urls
            });
            if published {
                return;
            }
            let known = m.nodes().any(|(id, _)| *id == me);
            if known && node.consensus.leader() != 0 {
                let req = pb::MemberChangeRequest {
                    op: OP_PUBLISH,
                    id: me,
                    name: node.config.name.clone(),
                    client_urls: node.config.advertise_client_urls.clone(),
                    ..Default::default()
                };
                match change(&node, req).await {
                    Ok(_) => {
                        tracing::info!("published local member to cluster");
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, attempt, "publishing this member failed"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = node.shutting_down() => return,
            }
        }
    })
}

fn op_request(
    op: u32,
    id: u64,
    peer_urls: Vec<String>,
    is_learner: bool,
) -> pb::MemberChangeRequest {
    pb::MemberChangeRequest {
        op,
        id,
        peer_urls,
        is_learner,
        ..Default::default()
    }
}

/// MemberAdd, as etcd's (root only when auth is on).
///
/// # Errors
/// etcd's membership errors.
pub async fn member_add(
    node: &Node,
    caller: &Caller,
    req: MemberAddRequest,
) -> Result<MemberAddResponse, EtcdError> {
    node.require_admin(caller)?;
    let (id, m) = change(node, op_request(OP_ADD, 0, req.peer_ur_ls, req.is_learner)).await?;
    let members = members_of(&m);
    let member = members.iter().find(|x| x.id == id).cloned();
    Ok(MemberAddResponse {
        header: header(node),
        member,
        members,
    })
}

/// MemberRemove, as etcd's.
///
/// # Errors
/// etcd's membership errors.
pub async fn member_remove(
    node: &Node,
    caller: &Caller,
    req: MemberRemoveRequest,
) -> Result<MemberRemoveResponse, EtcdError> {
    node.require_admin(caller)?;
    let (_, m) = change(node, op_request(OP_REMOVE, req.id, Vec::new(), false)).await?;
    Ok(MemberRemoveResponse {
        header: header(node),
        members: members_of(&m),
    })
}

/// MemberUpdate, as etcd's.
///
/// # Errors
/// etcd's membership errors.
pub async fn member_update(
    node: &Node,
    caller: &Caller,
    req: MemberUpdateRequest,
) -> Result<MemberUpdateResponse, EtcdError> {
    node.require_admin(caller)?;
    let (_, m) = change(node, op_request(OP_UPDATE, req.id, req.peer_ur_ls, false)).await?;
    Ok(MemberUpdateResponse {
        header: header(node),
        members: members_of(&m),
    })
}

/// MemberPromote, as etcd's.
///
/// # Errors
/// etcd's membership errors.
pub async fn member_promote(
    node: &Node,
    caller: &Caller,
    req: MemberPromoteRequest,
) -> Result<MemberPromoteResponse, EtcdError> {
    node.require_admin(caller)?;
    let (_, m) = change(node, op_request(OP_PROMOTE, req.id, Vec::new(), false)).await?;
    Ok(MemberPromoteResponse {
        header: header(node),
        members: members_of(&m),
    })
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let caller = Caller::from_grpc(&r);
        unary(
            SVC,
            "MemberAdd",
            member_add(&self.node, &caller, r.into_inner()),
        )
        .await
    }

    async fn member_remove(
        &self,
        r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let caller = Caller::from_grpc(&r);
        unary(
            SVC,
            "MemberRemove",
            member_remove(&self.node, &caller, r.into_inner()),
        )
        .await
    }

    async fn member_update(
        &self,
        r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let caller = Caller::from_grpc(&r);
        unary(
            SVC,
            "MemberUpdate",
            member_update(&self.node, &caller, r.into_inner()),
        )
        .await
    }

    async fn member_list(
        &self,
        r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let caller = Caller::from_grpc(&r);
        unary(
            SVC,
            "MemberList",
            member_list(&self.node, &caller, r.into_inner()),
        )
        .await
    }

    async fn member_promote(
        &self,
        r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let caller = Caller::from_grpc(&r);
        unary(
            SVC,
            "MemberPromote",
            member_promote(&self.node, &caller, r.into_inner()),
        )
        .await
    }
}
