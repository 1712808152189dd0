//! Who is calling and what they may do: the token from the request, checked against the
//! applied auth state, as etcd's `AuthInfoFromCtx` + `isOpPermitted`.
//!
//! When auth is off every call is allowed and no token is looked at. When it is on, a call
//! without a token is refused with `etcdserver: user name is empty`, an unknown or expired token
//! with `etcdserver: invalid auth token`, a token older than the current auth revision with
//! `etcdserver: revision of auth store is old`, and a call outside the user's permissions with
//! `etcdserver: permission denied`: each an [`AuthError`] variant carried by
//! [`EtcdError::Auth`].

use std::net::SocketAddr;

use mast_proto::etcdserverpb::{RequestOp, TxnRequest, request_op};

use crate::error::{AuthError, EtcdError};
use crate::node::Node;
use crate::tokens::AuthInfo;

/// What a request says about its caller: the token it carries and where it comes from.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The auth token (gRPC metadata `token` or `authorization`, or HTTP `Authorization`).
    pub token: Option<String>,
    /// The client's address, when known.
    pub addr: Option<SocketAddr>,
    /// The common name of the client's verified TLS certificate, when it sent one.
    pub cert_cn: Option<std::sync::Arc<str>>,
    /// The API the request came through, as the audit log names it: `etcd` (gRPC),
    /// `etcd-http` (the JSON gateway), `mast`, `nacos`, `dns`; empty counts as `etcd`.
    pub api: &'static str,
}

impl Caller {
    /// Reads the caller of a gRPC request.
    pub fn from_grpc<T>(req: &tonic::Request<T>) -> Caller {
        let md = req.metadata();
        let token = md
            .get("token")
            .or_else(|| md.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(strip_bearer);
        let info = req
            .extensions()
            .get::<axum::extract::ConnectInfo<crate::serve::ClientAddr>>();
        let addr = info.map(|c| c.0.0).or_else(|| req.remote_addr());
        let cert_cn = info.and_then(|c| c.0.1.clone());
        Caller {
            token,
            addr,
            cert_cn,
            api: "etcd",
        }
    }

    /// Reads the caller of an HTTP request (the JSON gateway).
    pub fn from_http(
        headers: &http::HeaderMap,
        client: Option<&crate::serve::ClientAddr>,
    ) -> Caller {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .or_else(|| headers.get("token"))
            .and_then(|v| v.to_str().ok())
            .map(strip_bearer);
        Caller {
            token,
            addr: client.map(|c| c.0),
            cert_cn: client.and_then(|c| c.1.clone()),
            api: "etcd-http",
        }
    }

    /// The address as text, for logs and throttling.
    pub fn addr_string(&self) -> String {
        self.addr
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "unknown".into())
    }
}

fn strip_bearer(v: &str) -> String {
    v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string()
}

/// The checked identity of a caller: `None` when auth is off (everything is allowed).
pub type Identity = Option<AuthInfo>;

impl Node {
    /// Resolves the caller's token. With auth off this is `Ok(None)`.
    ///
    /// # Errors
    /// [`AuthError::UserEmpty`] without a token (or a known certificate name),
    /// [`AuthError::InvalidAuthToken`] for an unknown or expired one,
    /// [`AuthError::AuthOldRevision`] for one older than the auth state, and
    /// [`AuthError::PermissionDenied`] when its user no longer exists.
    pub fn authenticate_caller(&self, caller: &Caller) -> Result<Identity, EtcdError> {
        let auth = self.store.auth();
        if !auth.enabled() {
            return Ok(None);
        }
        let Some(token) = caller.token.as_deref().filter(|t| !t.is_empty()) else {
            // As etcd with --client-cert-auth: the certificate's common name is the user.
            if let Some(cn) = &caller.cert_cn
                && auth.user(cn).is_some()
            {
                return Ok(Some(AuthInfo {
                    user: cn.to_string(),
                    revision: auth.revision(),
                }));
            }
            return Err(AuthError::UserEmpty.into());
        };
        let info = self
            .tokens
            .info(token)
            .ok_or(EtcdError::Auth(AuthError::InvalidAuthToken))?;
        if !self.tokens.follows_current_revision() && info.revision < auth.revision() {
            return Err(AuthError::AuthOldRevision.into());
        }
        if auth.user(&info.user).is_none() {
            return Err(AuthError::PermissionDenied.into());
        }
        Ok(Some(info))
    }

    /// Checks that the caller may read (or write) `[key, range_end)`.
    ///
    /// # Errors
    /// `etcdserver: permission denied`.
    pub fn check_range(
        &self,
        who: &Identity,
        key: &[u8],
        range_end: &[u8],
        write: bool,
    ) -> Result<(), EtcdError> {
        let Some(info) = who else { return Ok(()) };
        if self
            .store
            .auth()
            .is_permitted(&info.user, key, range_end, write)
        {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied.into())
        }
    }

    /// Checks that the caller has the root role.
    ///
    /// # Errors
    /// `etcdserver: permission denied`.
    pub fn check_admin(&self, who: &Identity) -> Result<(), EtcdError> {
        let Some(info) = who else { return Ok(()) };
        if self.store.auth().is_admin(&info.user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied.into())
        }
    }

    /// Validates the caller's token only if one is given; a call without one passes. etcd
    /// checks Status, Alarm, LeaseGrant, LeaseKeepAlive and MemberList this way.
    ///
    /// # Errors
    /// Token errors for a bad token.
    pub fn check_token_if_any(&self, caller: &Caller) -> Result<Identity, EtcdError> {
        if caller.token.as_deref().is_none_or(str::is_empty) && caller.cert_cn.is_none() {
            return Ok(None);
        }
        self.authenticate_caller(caller)
    }

    /// Resolves the caller and requires the root role (when auth is on).
    ///
    /// # Errors
    /// Token errors, or `etcdserver: permission denied`.
    pub fn require_admin(&self, caller: &Caller) -> Result<Identity, EtcdError> {
        let who = self.authenticate_caller(caller)?;
        self.check_admin(&who)?;
        Ok(who)
    }

    /// As [`Node::require_admin`], with the error etcd 3.4 gives on Maintenance RPCs (Defragment,
    /// Hash, HashKV, Snapshot) to a user without the root role: its internal error, unmapped
    /// (code Unknown, `auth: permission denied`).
    ///
    /// # Errors
    /// Token errors, or [`EtcdError::MaintenancePermissionDenied`].
    pub fn require_admin_maintenance(&self, caller: &Caller) -> Result<Identity, EtcdError> {
        let who = self.authenticate_caller(caller)?;
        match self.check_admin(&who) {
            Ok(()) => Ok(who),
            Err(_) => Err(EtcdError::MaintenancePermissionDenied),
        }
    }

    /// Checks every compare and op of a txn (both branches, nested txns included), as etcd's
    /// `checkTxnReqsPermission`.
    ///
    /// # Errors
    /// `etcdserver: permission denied` on the first refused key or range.
    pub fn check_txn(&self, who: &Identity, t: &TxnRequest) -> Result<(), EtcdError> {
        if who.is_none() {
            return Ok(());
        }
        for c in &t.compare {
            self.check_range(who, &c.key, &c.range_end, false)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            self.check_op(who, op)?;
        }
        Ok(())
    }

    fn check_op(&self, who: &Identity, op: &RequestOp) -> Result<(), EtcdError> {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                self.check_range(who, &r.key, &r.range_end, false)
            }
            Some(request_op::Request::RequestPut(p)) => {
                self.check_range(who, &p.key, &[], true)?;
                if p.prev_kv {
                    self.check_range(who, &p.key, &[], false)?;
                }
                Ok(())
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                self.check_range(who, &d.key, &d.range_end, true)?;
                if d.prev_kv {
                    self.check_range(who, &d.key, &d.range_end, false)?;
                }
                Ok(())
            }
            Some(request_op::Request::RequestTxn(n)) => self.check_txn(who, n),
            None => Ok(()),
        }
    }

    /// Checks that the caller may write (or read) every key attached to `lease`, as etcd 3.5
    /// does for LeaseRevoke (write), LeaseTimeToLive with keys (read) and a Put that attaches a
    /// key to a lease (write). Admins skip the check.
    ///
    /// # Errors
    /// `etcdserver: permission denied`.
    pub fn check_lease_keys(
        &self,
        who: &Identity,
        lease: i64,
        write: bool,
    ) -> Result<(), EtcdError> {
        let Some(info) = who else { return Ok(()) };
        let auth = self.store.auth();
        if auth.is_admin(&info.user) {
            return Ok(());
        }
        let keys: Vec<Vec<u8>> = self
            .store
            .leases()
            .get(lease)
            .map(|r| r.keys.iter().cloned().collect())
            .unwrap_or_default();
        if keys
            .iter()
            .all(|k| auth.is_permitted(&info.user, k, &[], write))
        {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied.into())
        }
    }
}
