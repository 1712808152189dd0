//! `etcdserverpb.Auth`: enabling auth, Authenticate (tokens), and user and role management.
//!
//! Changes go through the writer as `AuthCommand`s (applied and persisted by the store, bumping
//! the auth revision); passwords are hashed with bcrypt here, before the command, so the
//! applied state never sees a clear password and applying stays deterministic. When auth is on,
//! every RPC but Authenticate and AuthStatus needs the root role, as etcd.

use std::sync::Arc;

use mast_mvcc::auth::AuthCommand;
use mast_mvcc::{Command, CommandResult};
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

use super::unary;
use crate::authz::Caller;
use crate::error::{AuthError, EtcdError};
use crate::node::Node;

const SVC: &str = "etcdserverpb.Auth";

/// bcrypt cost for new passwords, as etcd's default (`bcrypt.DefaultCost`).
pub const BCRYPT_COST: u32 = 10;

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

/// AuthStatus: whether auth is on, and the auth revision.
pub fn auth_status(node: &Node) -> AuthStatusResponse {
    let auth = node.store.auth();
    AuthStatusResponse {
        header: node.header(),
        enabled: auth.enabled(),
        auth_revision: auth.revision(),
    }
}

/// Hashes a password with bcrypt off the async workers.
///
/// # Errors
/// Internal when hashing fails.
pub async fn hash_password(password: String) -> Result<String, EtcdError> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, BCRYPT_COST))
        .await?
        .map_err(|e| EtcdError::Internal(e.to_string()))
}

/// Applies an auth change through the writer, attributed to `caller` in the audit log.
///
/// # Errors
/// The auth store's refusal with etcd's message and code.
pub async fn apply(node: &Node, caller: &Caller, cmd: AuthCommand) -> Result<u64, EtcdError> {
    let who = node.check_token_if_any(caller).unwrap_or(None);
    match node
        .write(node.attribute(&who, caller, Command::Auth(cmd)))
        .await?
    {
        CommandResult::Auth { revision } => Ok(revision),
        other => Err(EtcdError::unexpected_result(&other)),
    }
}

/// Authenticate: checks the password (slowed down after repeated failures for the user or the
/// client address) and issues a token.
///
/// # Errors
/// `etcdserver: authentication is not enabled`, or
/// `etcdserver: authentication failed, invalid user ID or password`.
pub async fn authenticate(
    node: &Node,
    caller: &Caller,
    req: AuthenticateRequest,
) -> Result<AuthenticateResponse, EtcdError> {
    if !node.store.auth().enabled() {
        return Err(AuthError::AuthNotEnabled.into());
    }
    let addr = caller.addr_string();
    let wait = node.throttle.reserve(&req.name, &addr);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let (hash, revision, no_password) = {
        let auth = node.store.auth();
        let no_password = auth.user(&req.name).is_some() && auth.password_hash(&req.name).is_none();
        (
            auth.password_hash(&req.name).map(<[u8]>::to_vec),
            auth.revision(),
            no_password,
        )
    };
    if no_password {
        node.throttle.record(&req.name, &addr, false);
        return Err(EtcdError::NoPasswordUser);
    }
    let ok = match hash {
        Some(hash) => {
            let password = req.password.clone();
            tokio::task::spawn_blocking(move || {
                std::str::from_utf8(&hash)
                    .ok()
                    .is_some_and(|h| bcrypt::verify(password, h).unwrap_or(false))
            })
            .await
            .unwrap_or(false)
        }
        // Unknown users and users without a password cannot log in with one.
        None => false,
    };
    node.throttle.record(&req.name, &addr, ok);
    if !ok {
        // Never the password; the user name and address only.
        tracing::warn!(user = %req.name, client = %addr, "authentication failed");
        return Err(AuthError::AuthFailed.into());
    }
    let token = match node.tokens.new_simple_token() {
        // A simple token goes through the log, so every member knows it, and carries the
        // index of its entry, so a member that has not applied it yet waits (as etcd's).
        Some(prefix) => {
            let (_, index) = node
                .write_indexed(Command::SimpleToken {
                    user: req.name.clone(),
                    token: prefix.clone(),
                    auth_revision: revision,
                })
                .await?;
            format!("{prefix}.{index}")
        }
        None => node
            .tokens
            .assign(&req.name, revision)
            .map_err(|e| EtcdError::Internal(e.to_string()))?,
    };
    Ok(AuthenticateResponse {
        header: node.header(),
        token,
    })
}

/// The RPCs that change or read auth state, shared by gRPC and the JSON gateway.
pub mod ops {
    use super::*;

    /// AuthEnable (needs root with the root role to exist).
    ///
    /// # Errors
    /// etcd's root-user errors, or permission denied for a non-root caller.
    pub async fn enable(
        node: &Node,
        caller: &Caller,
        _r: AuthEnableRequest,
    ) -> Result<AuthEnableResponse, EtcdError> {
        node.require_admin(caller)?;
        apply(node, caller, AuthCommand::Enable).await?;
        Ok(AuthEnableResponse {
            header: node.header(),
        })
    }

    /// AuthDisable.
    ///
    /// # Errors
    /// Permission denied for a non-root caller.
    pub async fn disable(
        node: &Node,
        caller: &Caller,
        _r: AuthDisableRequest,
    ) -> Result<AuthDisableResponse, EtcdError> {
        node.require_admin(caller)?;
        // Applying it drops every simple token, on every member.
        apply(node, caller, AuthCommand::Disable).await?;
        Ok(AuthDisableResponse {
            header: node.header(),
        })
    }

    /// UserAdd: with a password (hashed here), a pre-hashed bcrypt password, or none.
    ///
    /// # Errors
    /// etcd's user errors.
    pub async fn user_add(
        node: &Node,
        caller: &Caller,
        r: AuthUserAddRequest,
    ) -> Result<AuthUserAddResponse, EtcdError> {
        node.require_admin(caller)?;
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            String::new()
        } else if !r.hashed_password.is_empty() {
            r.hashed_password
        } else {
            hash_password(r.password).await?
        };
        apply(
            node,
            caller,
            AuthCommand::UserAdd {
                name: r.name,
                password_hash,
                no_password,
            },
        )
        .await?;
        Ok(AuthUserAddResponse {
            header: node.header(),
        })
    }

    /// UserGet: the user's roles.
    ///
    /// # Errors
    /// `etcdserver: user name not found`.
    pub fn user_get(
        node: &Node,
        caller: &Caller,
        r: AuthUserGetRequest,
    ) -> Result<AuthUserGetResponse, EtcdError> {
        // Admins, or a user asking about themselves, as etcd.
        let who = node.authenticate_caller(caller)?;
        if who.as_ref().is_some_and(|w| w.user != r.name) {
            node.check_admin(&who)?;
        }
        let auth = node.store.auth();
        let user = auth
            .user(&r.name)
            .ok_or(EtcdError::Auth(AuthError::UserNotFound))?;
        Ok(AuthUserGetResponse {
            header: node.header(),
            roles: user.roles.clone(),
        })
    }

    /// UserList: every user name, sorted.
    ///
    /// # Errors
    /// Permission denied for a non-root caller.
    pub fn user_list(node: &Node, caller: &Caller) -> Result<AuthUserListResponse, EtcdError> {
        node.require_admin(caller)?;
        Ok(AuthUserListResponse {
            header: node.header(),
            users: node.store.auth().user_names(),
        })
    }

    /// UserDelete.
    ///
    /// # Errors
    /// etcd's user errors.
    pub async fn user_delete(
        node: &Node,
        caller: &Caller,
        r: AuthUserDeleteRequest,
    ) -> Result<AuthUserDeleteResponse, EtcdError> {
        node.require_admin(caller)?;
        apply(
            node,
            caller,
            AuthCommand::UserDelete {
                name: r.name.clone(),
            },
        )
        .await?;
        Ok(AuthUserDeleteResponse {
            header: node.header(),
        })
    }

    /// UserChangePassword.
    ///
    /// # Errors
    /// etcd's user errors.
    pub async fn user_change_password(
        node: &Node,
        caller: &Caller,
        r: AuthUserChangePasswordRequest,
    ) -> Result<AuthUserChangePasswordResponse, EtcdError> {
        node.require_admin(caller)?;
        if node.store.auth().user(&r.name).is_none() {
            return Err(AuthError::UserNotFound.into());
        }
        let password_hash = if r.hashed_password.is_empty() {
            hash_password(r.password).await?
        } else {
            r.hashed_password
        };
        apply(
            node,
            caller,
            AuthCommand::UserChangePassword {
                name: r.name.clone(),
                password_hash,
            },
        )
        .await?;
        Ok(AuthUserChangePasswordResponse {
            header: node.header(),
        })
    }

    /// UserGrantRole.
    ///
    /// # Errors
    /// etcd's user and role errors.
    pub async fn user_grant_role(
        node: &Node,
        caller: &Caller,
        r: AuthUserGrantRoleRequest,
    ) -> Result<AuthUserGrantRoleResponse, EtcdError> {
        node.require_admin(caller)?;
        apply(
            node,
            caller,
            AuthCommand::UserGrantRole {
                user: r.user,
                role: r.role,
            },
        )
        .await?;
        Ok(AuthUserGrantRoleResponse {
            header: node.header(),
        })
    }

    /// UserRevokeRole.
    ///
    /// # Errors
    /// etcd's user and role errors.
    pub async fn user_revoke_role(
        node: &Node,
        caller: &Caller,
        r: AuthUserRevokeRoleRequest,
    ) -> Result<AuthUserRevokeRoleResponse, EtcdError> {
        node.require_admin(caller)?;
        apply(
            node,
            caller,
            AuthCommand::UserRevokeRole {
                user: r.name,
                role: r.role,
            },
        )
        .await?;
        Ok(AuthUserRevokeRoleResponse {
            header: node.header(),
        })
    }

    /// RoleAdd.
    ///
    /// # Errors
    /// etcd's role errors.
    pub async fn role_add(
        node: &Node,
        caller: &Caller,
        r: AuthRoleAddRequest,
    ) -> Result<AuthRoleAddResponse, EtcdError> {
        node.require_admin(caller)?;
        apply(node, caller, AuthCommand::RoleAdd { name: r.name }).await?;
        Ok(AuthRoleAddResponse {
            header: node.header(),
        })
    }

    /// RoleGet: the role's permissions.
    ///
    /// # Errors
    /// `etcdserver: role name not found`.
    pub fn role_get(
        node: &Node,
        caller: &Caller,
        r: AuthRoleGetRequest,
    ) -> Result<AuthRoleGetResponse, EtcdError> {
        // Admins, or a user holding the role, as etcd.
        let who = node.authenticate_caller(caller)?;
        let auth = node.store.auth();
        if let Some(w) = &who
            && !auth
                .user(&w.user)
                .is_some_and(|u| u.roles.contains(&r.role))
        {
            drop(auth);
            node.check_admin(&who)?;
            return role_get_unchecked(node, &r.role);
        }
        drop(auth);
        role_get_unchecked(node, &r.role)
    }

    fn role_get_unchecked(node: &Node, name: &str) -> Result<AuthRoleGetResponse, EtcdError> {
        let auth = node.store.auth();
        let role = auth
            .role(name)
            .ok_or(EtcdError::Auth(AuthError::RoleNotFound))?;
        // etcd answers for the root role with one permission over every key.
        // As etcd 3.4: the stored permissions (the root role's power is implicit, not listed).
        let perm = role.key_permission.clone();
        Ok(AuthRoleGetResponse {
            header: node.header(),
            perm,
        })
    }

    /// RoleList: every role name, sorted.
    ///
    /// # Errors
    /// Permission denied for a non-root caller.
    pub fn role_list(node: &Node, caller: &Caller) -> Result<AuthRoleListResponse, EtcdError> {
        node.require_admin(caller)?;
        Ok(AuthRoleListResponse {
            header: node.header(),
            roles: node.store.auth().role_names(),
        })
    }

    /// RoleDelete.
    ///
    /// # Errors
    /// etcd's role errors.
    pub async fn role_delete(
        node: &Node,
        caller: &Caller,
        r: AuthRoleDeleteRequest,
    ) -> Result<AuthRoleDeleteResponse, EtcdError> {
        node.require_admin(caller)?;
        apply(node, caller, AuthCommand::RoleDelete { name: r.role }).await?;
        Ok(AuthRoleDeleteResponse {
            header: node.header(),
        })
    }

    /// RoleGrantPermission.
    ///
    /// # Errors
    /// etcd's role errors; `etcdserver: permission not given` without a permission.
    pub async fn role_grant_permission(
        node: &Node,
        caller: &Caller,
        r: AuthRoleGrantPermissionRequest,
    ) -> Result<AuthRoleGrantPermissionResponse, EtcdError> {
        node.require_admin(caller)?;
        let perm = r
            .perm
            .ok_or(EtcdError::Auth(AuthError::PermissionNotGiven))?;
        apply(
            node,
            caller,
            AuthCommand::RoleGrantPermission { role: r.name, perm },
        )
        .await?;
        Ok(AuthRoleGrantPermissionResponse {
            header: node.header(),
        })
    }

    /// RoleRevokePermission.
    ///
    /// # Errors
    /// etcd's role errors.
    pub async fn role_revoke_permission(
        node: &Node,
        caller: &Caller,
        r: AuthRoleRevokePermissionRequest,
    ) -> Result<AuthRoleRevokePermissionResponse, EtcdError> {
        node.require_admin(caller)?;
        apply(
            node,
            caller,
            AuthCommand::RoleRevokePermission {
                role: r.role,
                key: r.key,
                range_end: r.range_end,
            },
        )
        .await?;
        Ok(AuthRoleRevokePermissionResponse {
            header: node.header(),
        })
    }
}

/// Creates root with the root role and enables auth, once per cluster, when the store has no
/// root user: one command ([`AuthCommand::BootstrapRoot`]), so members that all start with
/// `MAST_ROOT_PASSWORD` / `ETCD_ROOT_PASSWORD` bootstrap it exactly once. Returns whether this
/// call created root.
///
/// # Errors
/// When the command cannot be applied or hashing fails.
pub async fn bootstrap_root(node: &Node, password: &str) -> Result<bool, EtcdError> {
    if node.store.auth().user("root").is_some() {
        return Ok(false);
    }
    let password_hash = hash_password(password.to_string()).await?;
    let before = node.store.auth().revision();
    let system = Caller {
        api: "system",
        ..Caller::default()
    };
    let after = apply(node, &system, AuthCommand::BootstrapRoot { password_hash }).await?;
    Ok(after != before)
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "AuthEnable",
            ops::enable(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn auth_disable(
        &self,
        r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "AuthDisable",
            ops::disable(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn auth_status(
        &self,
        _r: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        unary(SVC, "AuthStatus", async {
            Ok::<_, EtcdError>(auth_status(&self.node))
        })
        .await
    }

    async fn authenticate(
        &self,
        r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "Authenticate",
            authenticate(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn user_add(
        &self,
        r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "UserAdd",
            ops::user_add(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn user_get(
        &self,
        r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(SVC, "UserGet", async {
            ops::user_get(&self.node, &c, r.into_inner())
        })
        .await
    }

    async fn user_list(
        &self,
        r: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(SVC, "UserList", async { ops::user_list(&self.node, &c) }).await
    }

    async fn user_delete(
        &self,
        r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "UserDelete",
            ops::user_delete(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "UserChangePassword",
            ops::user_change_password(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "UserGrantRole",
            ops::user_grant_role(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "UserRevokeRole",
            ops::user_revoke_role(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn role_add(
        &self,
        r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "RoleAdd",
            ops::role_add(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn role_get(
        &self,
        r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(SVC, "RoleGet", async {
            ops::role_get(&self.node, &c, r.into_inner())
        })
        .await
    }

    async fn role_list(
        &self,
        r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(SVC, "RoleList", async { ops::role_list(&self.node, &c) }).await
    }

    async fn role_delete(
        &self,
        r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "RoleDelete",
            ops::role_delete(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "RoleGrantPermission",
            ops::role_grant_permission(&self.node, &c, r.into_inner()),
        )
        .await
    }

    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let c = Caller::from_grpc(&r);
        unary(
            SVC,
            "RoleRevokePermission",
            ops::role_revoke_permission(&self.node, &c, r.into_inner()),
        )
        .await
    }
}
