//! `etcdserverpb.Cluster`: MemberList for the one embedded member. Membership changes answer
//! Unimplemented until clustering exists.

use std::sync::Arc;

use mast_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, ResponseHeader, cluster_server::Cluster,
};
use tonic::{Request, Response, Status};

use super::{handled, started};
use crate::error::EtcdError;
use crate::node::{Node, RAFT_TERM};

const SVC: &str = "etcdserverpb.Cluster";

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

/// MemberList: this member with its advertised client URLs. As etcd, the header carries no
/// revision.
pub fn member_list(node: &Node) -> MemberListResponse {
    MemberListResponse {
        header: Some(ResponseHeader {
            cluster_id: node.identity.cluster_id,
            member_id: node.identity.member_id,
            revision: 0,
            raft_term: RAFT_TERM,
        }),
        members: vec![Member {
            id: node.identity.member_id,
            name: node.config.name.clone(),
            peer_ur_ls: Vec::new(),
            client_ur_ls: node.config.advertise_client_urls.clone(),
            is_learner: false,
        }],
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _r: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        started(SVC, "MemberAdd", "unary");
        handled(
            SVC,
            "MemberAdd",
            "unary",
            Err(EtcdError::unimplemented("MemberAdd (clustering)")),
        )
    }

    async fn member_remove(
        &self,
        _r: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        started(SVC, "MemberRemove", "unary");
        handled(
            SVC,
            "MemberRemove",
            "unary",
            Err(EtcdError::unimplemented("MemberRemove (clustering)")),
        )
    }

    async fn member_update(
        &self,
        _r: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        started(SVC, "MemberUpdate", "unary");
        handled(
            SVC,
            "MemberUpdate",
            "unary",
            Err(EtcdError::unimplemented("MemberUpdate (clustering)")),
        )
    }

    async fn member_list(
        &self,
        _r: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        started(SVC, "MemberList", "unary");
        handled(SVC, "MemberList", "unary", Ok(member_list(&self.node)))
    }

    async fn member_promote(
        &self,
        _r: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        started(SVC, "MemberPromote", "unary");
        handled(
            SVC,
            "MemberPromote",
            "unary",
            Err(EtcdError::unimplemented("MemberPromote (clustering)")),
        )
    }
}
