//! The applied auth state: users, roles and their key permissions, as etcd 3.5's `authStore`
//! (`server/auth/store.go`).
//!
//! Only what is replicated lives here: the enabled flag, the auth revision, users (with their
//! bcrypt password hash, computed by the server before the command is applied, as etcd 3.5
//! does) and roles. Tokens, password checks and the decision of *which* request needs which
//! permission belong to the server. The permission check itself ([`AuthState::is_permitted`])
//! is here because it runs on every request and reads the merged permissions kept next to the
//! state.
//!
//! Every change that succeeds bumps the auth revision by one, as etcd's `commitRevision`;
//! requests that change nothing (enabling auth twice, granting a role the user has) do not. A
//! new store starts at revision 1.

mod range_perm;

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use mast_proto::authpb::{Permission, Role, User, UserAddOptions};

use range_perm::{UserPerms, is_valid_permission_range};

/// The user that must exist, with [`ROOT_ROLE`], before auth can be enabled.
pub const ROOT_USER: &str = "root";
/// The role that allows everything, whether or not a role of that name exists.
pub const ROOT_ROLE: &str = "root";

/// A deterministic change to the auth state, one per etcd `Auth*` request that writes.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthCommand {
    /// As `AuthEnable`: needs user `root` with role `root`; a no-op when already enabled.
    Enable,
    /// As `AuthDisable`; a no-op when already disabled.
    Disable,
    /// As `UserAdd`.
    UserAdd {
        /// The new user's name.
        name: String,
        /// bcrypt hash of the password; ignored (stored empty) for a `no_password` user.
        password_hash: String,
        /// The user has no password and cannot `Authenticate` with one.
        no_password: bool,
    },
    /// As `UserDelete`.
    UserDelete {
        /// The user to delete.
        name: String,
    },
    /// As `UserChangePassword`; a `no_password` user keeps an empty password.
    UserChangePassword {
        /// The user whose password changes.
        name: String,
        /// bcrypt hash of the new password.
        password_hash: String,
    },
    /// As `UserGrantRole`. Role `root` may be granted even when no such role exists.
    UserGrantRole {
        /// The user receiving the role.
        user: String,
        /// The role granted.
        role: String,
    },
    /// As `UserRevokeRole`.
    UserRevokeRole {
        /// The user losing the role.
        user: String,
        /// The role revoked.
        role: String,
    },
    /// As `RoleAdd`.
    RoleAdd {
        /// The new role's name.
        name: String,
    },
    /// As `RoleDelete`; the role is also revoked from every user.
    RoleDelete {
        /// The role to delete.
        name: String,
    },
    /// As `RoleGrantPermission`: adds the permission, or changes the type of the role's
    /// permission with the same key and range end.
    RoleGrantPermission {
        /// The role receiving the permission.
        role: String,
        /// The permission (type, key, range end).
        perm: Permission,
    },
    /// The first start's root, as `MAST_ROOT_PASSWORD` asks: when no user `root` exists,
    /// creates it with this password hash, creates role `root` if missing, grants it and
    /// enables auth — all in one command, so a cluster bootstraps root exactly once however
    /// many members start with the variable. A no-op when `root` exists.
    BootstrapRoot {
        /// bcrypt hash of root's password.
        password_hash: String,
    },
    /// As `RoleRevokePermission`: removes the permission with exactly this key and range end.
    RoleRevokePermission {
        /// The role losing the permission.
        role: String,
        /// The permission's key.
        key: Bytes,
        /// The permission's range end.
        range_end: Bytes,
    },
}

/// An auth request refused, or an auth check failed. `Display` is etcd's message without the
/// `etcdserver: ` prefix (from `api/v3rpc/rpctypes/error.go`); the gRPC code to answer with is
/// noted on each variant. [`AuthCommand`]s return the variants from `RootUserNotExist` to
/// `InvalidAuthMgmt`; the rest are for the server's own checks, so that every auth failure has
/// one type and one message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `AuthEnable` without user `root` (FailedPrecondition).
    #[error("root user does not exist")]
    RootUserNotExist,
    /// `AuthEnable` while user `root` lacks role `root` (FailedPrecondition).
    #[error("root user does not have root role")]
    RootRoleNotExist,
    /// `UserAdd` of an existing user (FailedPrecondition).
    #[error("user name already exists")]
    UserAlreadyExist,
    /// `UserAdd` with an empty name; also a request without a token while auth is on
    /// (InvalidArgument).
    #[error("user name is empty")]
    UserEmpty,
    /// The user does not exist (FailedPrecondition).
    #[error("user name not found")]
    UserNotFound,
    /// `RoleAdd` of an existing role (FailedPrecondition).
    #[error("role name already exists")]
    RoleAlreadyExist,
    /// The role does not exist (FailedPrecondition).
    #[error("role name not found")]
    RoleNotFound,
    /// `RoleAdd` with an empty name (InvalidArgument).
    #[error("role name is empty")]
    RoleEmpty,
    /// `UserRevokeRole` of a role the user does not have (FailedPrecondition).
    #[error("role is not granted to the user")]
    RoleNotGranted,
    /// `RoleRevokePermission` of a permission the role does not have (FailedPrecondition).
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    /// Deleting user or role `root`, or revoking `root` from `root`, while auth is on; or
    /// granting a permission with an empty key or an empty range (InvalidArgument).
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    /// `RoleGrantPermission` without a permission (InvalidArgument).
    #[error("permission not given")]
    PermissionNotGiven,
    /// `Authenticate` with an unknown user, a wrong password, or a no-password user
    /// (InvalidArgument).
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The user may not do this (PermissionDenied).
    #[error("permission denied")]
    PermissionDenied,
    /// `Authenticate` while auth is off (FailedPrecondition).
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    /// A token the server does not know or that has expired (Unauthenticated).
    #[error("invalid auth token")]
    InvalidAuthToken,
    /// A token issued at an auth revision older than the current one (InvalidArgument).
    #[error("revision of auth store is old")]
    AuthOldRevision,
}

/// What a successful command changed, so the store writes exactly those rows.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    /// Users written or deleted (look each up to know which).
    pub(crate) users: Vec<String>,
    /// Roles written or deleted.
    pub(crate) roles: Vec<String>,
}

/// The applied auth state, with every user's permissions merged for [`AuthState::is_permitted`].
///
/// Users' role lists are kept sorted and roles' permissions sorted by key, as etcd keeps them.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthState {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Every user's merged permissions, rebuilt after each change (as etcd's
    /// `refreshRangePermCache`): changes are rare, checks run on every request.
    perms: HashMap<String, UserPerms>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            perms: HashMap::new(),
        }
    }
}

impl AuthState {
    /// A fresh state: auth off, revision 1, no users or roles.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the state read back from disk.
    pub(crate) fn restore(
        enabled: bool,
        revision: u64,
        users: impl IntoIterator<Item = User>,
        roles: impl IntoIterator<Item = Role>,
    ) -> Self {
        let mut s = AuthState {
            enabled,
            revision,
            users: users
                .into_iter()
                .map(|u| (String::from_utf8_lossy(&u.name).into_owned(), u))
                .collect(),
            roles: roles
                .into_iter()
                .map(|r| (String::from_utf8_lossy(&r.name).into_owned(), r))
                .collect(),
            perms: HashMap::new(),
        };
        s.refresh_perms();
        s
    }

    /// True when auth is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: 1 on a new store, +1 for every change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The user, with its password hash in `password` and its sorted roles.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// The role, with its permissions sorted by key. For role `root` this is what is stored
    /// (normally no permissions); etcd's `RoleGet` shows it as one READWRITE permission on
    /// every key instead.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// The bcrypt hash to check a password against; `None` for an unknown user or a user
    /// created with `no_password`.
    pub fn password_hash(&self, name: &str) -> Option<&[u8]> {
        let u = self.users.get(name)?;
        if u.options.is_some_and(|o| o.no_password) {
            return None;
        }
        Some(&u.password)
    }

    /// True when the user exists and has role `root` (etcd's `IsAdminPermitted`, without the
    /// enabled check).
    pub fn is_admin(&self, user: &str) -> bool {
        self.perms.get(user).is_some_and(|p| p.admin)
    }

    /// True when `user` may read (or, with `write`, write) every key of the request's range, as
    /// etcd's `isOpPermitted`: a user with role `root` may do anything; otherwise the union of
    /// the READ/READWRITE (or WRITE/READWRITE) permissions of the user's roles must cover the
    /// range. An empty `range_end` asks for the single key `key`; `range_end == "\0"` for every
    /// key from `key` on. An unknown user may do nothing.
    ///
    /// This does not look at [`AuthState::enabled`]: with auth off, the caller skips checks.
    pub fn is_permitted(&self, user: &str, key: &[u8], range_end: &[u8], write: bool) -> bool {
        self.perms
            .get(user)
            .is_some_and(|p| p.permits(key, range_end, write))
    }

    /// Applies one command, returning the auth revision after it.
    ///
    /// # Errors
    /// The [`AuthError`] etcd answers with; the state is then unchanged.
    pub fn apply(&mut self, cmd: &AuthCommand) -> Result<u64, AuthError> {
        self.apply_tracked(cmd).map(|_| self.revision)
    }

    /// Applies one command and names the users and roles it wrote or deleted. Every check runs
    /// before anything changes, so a refused command leaves the state as it was.
    pub(crate) fn apply_tracked(&mut self, cmd: &AuthCommand) -> Result<Touched, AuthError> {
        let mut touched = Touched::default();
        match cmd {
            AuthCommand::BootstrapRoot { password_hash } => {
                if self.users.contains_key(ROOT_USER) {
                    return Ok(touched);
                }
                // The steps an operator would take, on a copy: all of them or none.
                let mut next = self.clone();
                let mut steps = vec![AuthCommand::UserAdd {
                    name: ROOT_USER.into(),
                    password_hash: password_hash.clone(),
                    no_password: false,
                }];
                if !next.roles.contains_key(ROOT_ROLE) {
                    steps.push(AuthCommand::RoleAdd {
                        name: ROOT_ROLE.into(),
                    });
                }
                steps.push(AuthCommand::UserGrantRole {
                    user: ROOT_USER.into(),
                    role: ROOT_ROLE.into(),
                });
                steps.push(AuthCommand::Enable);
                for step in &steps {
                    let t = next.apply_tracked(step)?;
                    touched.users.extend(t.users);
                    touched.roles.extend(t.roles);
                }
                *self = next;
                return Ok(touched);
            }
            AuthCommand::Enable => {
                if self.enabled {
                    return Ok(touched);
                }
                let root = self
                    .users
                    .get(ROOT_USER)
                    .ok_or(AuthError::RootUserNotExist)?;
                if !has_role(root, ROOT_ROLE) {
                    return Err(AuthError::RootRoleNotExist);
                }
                // etcd's AuthEnable saves the flag but does not commit a new revision.
                self.enabled = true;
                return Ok(touched);
            }
            AuthCommand::Disable => {
                if !self.enabled {
                    return Ok(touched);
                }
                self.enabled = false;
            }
            AuthCommand::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let password = if *no_password {
                    Bytes::new()
                } else {
                    Bytes::copy_from_slice(password_hash.as_bytes())
                };
                self.users.insert(
                    name.clone(),
                    User {
                        name: Bytes::copy_from_slice(name.as_bytes()),
                        password,
                        roles: Vec::new(),
                        options: Some(UserAddOptions {
                            no_password: *no_password,
                        }),
                    },
                );
                touched.users.push(name.clone());
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.users.remove(name).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                touched.users.push(name.clone());
            }
            AuthCommand::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                // etcd: users from before 3.4 have no options and count as having a password.
                user.password = if user.options.is_some_and(|o| o.no_password) {
                    Bytes::new()
                } else {
                    Bytes::copy_from_slice(password_hash.as_bytes())
                };
                touched.users.push(name.clone());
            }
            AuthCommand::UserGrantRole { user, role } => {
                let u = self.users.get(user).ok_or(AuthError::UserNotFound)?;
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let Err(at) = u.roles.binary_search(role) else {
                    // Already granted: etcd answers OK and changes nothing.
                    return Ok(touched);
                };
                let u = self.users.get_mut(user).expect("looked up above");
                u.roles.insert(at, role.clone());
                touched.users.push(user.clone());
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                let before = u.roles.len();
                u.roles.retain(|r| r != role);
                if u.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
                touched.users.push(user.clone());
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(
                    name.clone(),
                    Role {
                        name: Bytes::copy_from_slice(name.as_bytes()),
                        key_permission: Vec::new(),
                    },
                );
                touched.roles.push(name.clone());
            }
            AuthCommand::RoleDelete { name } => {
                if self.enabled && name == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.roles.remove(name).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                touched.roles.push(name.clone());
                for (uname, u) in &mut self.users {
                    let before = u.roles.len();
                    u.roles.retain(|r| r != name);
                    if u.roles.len() != before {
                        touched.users.push(uname.clone());
                    }
                }
            }
            AuthCommand::RoleGrantPermission { role, perm } => {
                if !is_valid_permission_range(&perm.key, &perm.range_end) {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                match r
                    .key_permission
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        // After every permission with a key <= the new one: a stable insert,
                        // as etcd's append + sort by key.
                        let at = r.key_permission.partition_point(|p| p.key <= perm.key);
                        r.key_permission.insert(
                            at,
                            Permission {
                                perm_type: perm.perm_type,
                                key: perm.key.clone(),
                                range_end: perm.range_end.clone(),
                            },
                        );
                    }
                }
                touched.roles.push(role.clone());
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.key_permission.len();
                r.key_permission
                    .retain(|p| p.key != *key || p.range_end != *range_end);
                if r.key_permission.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                touched.roles.push(role.clone());
            }
        }
        self.revision += 1;
        self.refresh_perms();
        Ok(touched)
    }

    /// Merges every user's permissions again, as etcd's `refreshRangePermCache`.
    fn refresh_perms(&mut self) {
        let roles = &self.roles;
        self.perms = self
            .users
            .iter()
            .map(|(name, u)| {
                let perms = u
                    .roles
                    .iter()
                    .filter_map(|r| roles.get(r))
                    .flat_map(|r| &r.key_permission);
                (
                    name.clone(),
                    UserPerms::build(has_role(u, ROOT_ROLE), perms),
                )
            })
            .collect();
    }
}

/// True when the user has `role`.
fn has_role(u: &User, role: &str) -> bool {
    u.roles.iter().any(|r| r == role)
}

#[cfg(test)]
mod tests;
