//! `etcdserverpb.Auth`. Auth is not enabled in this version: Authenticate answers etcd's
//! `etcdserver: authentication is not enabled`, AuthStatus reports it disabled, and the user and
//! role RPCs answer Unimplemented (listed in README) until the auth issue lands.

use std::sync::Arc;

use mast_proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, auth_server::Auth,
};
use tonic::{Request, Response, Status};

use super::{handled, started, unimplemented};
use crate::node::Node;

const SVC: &str = "etcdserverpb.Auth";

/// The Auth service.
pub struct AuthService {
    node: Arc<Node>,
}

impl AuthService {
    /// An Auth service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        AuthService { node }
    }
}

/// etcd's `ErrGRPCAuthNotEnabled`.
pub fn err_auth_not_enabled() -> Status {
    Status::failed_precondition("etcdserver: authentication is not enabled")
}

/// AuthStatus: auth is off.
pub fn auth_status(node: &Node) -> AuthStatusResponse {
    AuthStatusResponse {
        header: node.header(),
        enabled: false,
        auth_revision: 0,
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_status(
        &self,
        _r: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        started(SVC, "AuthStatus", "unary");
        handled(
            SVC,
            "AuthStatus",
            "unary",
            Ok(Response::new(auth_status(&self.node))),
        )
    }

    async fn authenticate(
        &self,
        _r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        started(SVC, "Authenticate", "unary");
        handled(SVC, "Authenticate", "unary", Err(err_auth_not_enabled()))
    }

    async fn auth_enable(
        &self,
        _r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        started(SVC, "AuthEnable", "unary");
        handled(
            SVC,
            "AuthEnable",
            "unary",
            Err(unimplemented("Auth.AuthEnable")),
        )
    }

    async fn auth_disable(
        &self,
        _r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        started(SVC, "AuthDisable", "unary");
        handled(
            SVC,
            "AuthDisable",
            "unary",
            Err(unimplemented("Auth.AuthDisable")),
        )
    }

    async fn user_add(
        &self,
        _r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        started(SVC, "UserAdd", "unary");
        handled(SVC, "UserAdd", "unary", Err(unimplemented("Auth.UserAdd")))
    }

    async fn user_get(
        &self,
        _r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        started(SVC, "UserGet", "unary");
        handled(SVC, "UserGet", "unary", Err(unimplemented("Auth.UserGet")))
    }

    async fn user_list(
        &self,
        _r: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        started(SVC, "UserList", "unary");
        handled(
            SVC,
            "UserList",
            "unary",
            Err(unimplemented("Auth.UserList")),
        )
    }

    async fn user_delete(
        &self,
        _r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        started(SVC, "UserDelete", "unary");
        handled(
            SVC,
            "UserDelete",
            "unary",
            Err(unimplemented("Auth.UserDelete")),
        )
    }

    async fn user_change_password(
        &self,
        _r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        started(SVC, "UserChangePassword", "unary");
        handled(
            SVC,
            "UserChangePassword",
            "unary",
            Err(unimplemented("Auth.UserChangePassword")),
        )
    }

    async fn user_grant_role(
        &self,
        _r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        started(SVC, "UserGrantRole", "unary");
        handled(
            SVC,
            "UserGrantRole",
            "unary",
            Err(unimplemented("Auth.UserGrantRole")),
        )
    }

    async fn user_revoke_role(
        &self,
        _r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        started(SVC, "UserRevokeRole", "unary");
        handled(
            SVC,
            "UserRevokeRole",
            "unary",
            Err(unimplemented("Auth.UserRevokeRole")),
        )
    }

    async fn role_add(
        &self,
        _r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        started(SVC, "RoleAdd", "unary");
        handled(SVC, "RoleAdd", "unary", Err(unimplemented("Auth.RoleAdd")))
    }

    async fn role_get(
        &self,
        _r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        started(SVC, "RoleGet", "unary");
        handled(SVC, "RoleGet", "unary", Err(unimplemented("Auth.RoleGet")))
    }

    async fn role_list(
        &self,
        _r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        started(SVC, "RoleList", "unary");
        handled(
            SVC,
            "RoleList",
            "unary",
            Err(unimplemented("Auth.RoleList")),
        )
    }

    async fn role_delete(
        &self,
        _r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        started(SVC, "RoleDelete", "unary");
        handled(
            SVC,
            "RoleDelete",
            "unary",
            Err(unimplemented("Auth.RoleDelete")),
        )
    }

    async fn role_grant_permission(
        &self,
        _r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        started(SVC, "RoleGrantPermission", "unary");
        handled(
            SVC,
            "RoleGrantPermission",
            "unary",
            Err(unimplemented("Auth.RoleGrantPermission")),
        )
    }

    async fn role_revoke_permission(
        &self,
        _r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        started(SVC, "RoleRevokePermission", "unary");
        handled(
            SVC,
            "RoleRevokePermission",
            "unary",
            Err(unimplemented("Auth.RoleRevokePermission")),
        )
    }
}
