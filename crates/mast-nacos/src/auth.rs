//! Nacos logins on Mast users. `POST /nacos/v1/auth/login` (and `/nacos/v1/auth/users/login`)
//! takes `username` and `password`, checks them as etcd's `Authenticate` does (same users,
//! same throttle) and answers Nacos's `{"accessToken", "tokenTtl", "globalAdmin"}`; the
//! access token is a Mast token, so every later call is checked by Mast's roles whichever API
//! it comes through.
//!
//! A call names its caller as Nacos clients do: `accessToken` (query or form), an
//! `Authorization: Bearer` header, or — as the npm `nacos-config` client does on every
//! request — `username` and `password` parameters, which log in once and reuse the token while
//! it stays valid (tokens are cached by user and a SHA-256 of the password, never the password).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use mast_proto::etcdserverpb::AuthenticateRequest;
use mast_server::authz::Caller;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::error::{NacosError, NacosResult};
use crate::params::Params;

/// A cached login's key: the user and a SHA-256 of the password.
type LoginKey = (String, [u8; 32]);

/// Tokens made from `username` / `password` parameters, kept while valid and younger than
/// half the token TTL.
#[derive(Default)]
pub struct LoginCache {
    tokens: Mutex<HashMap<LoginKey, (String, Instant)>>,
}

/// Most cached logins; the oldest half is dropped beyond it.
const MAX_CACHED_LOGINS: usize = 4096;

impl LoginCache {
    fn key(user: &str, password: &str) -> LoginKey {
        (user.to_string(), Sha256::digest(password.as_bytes()).into())
    }

    fn get(&self, user: &str, password: &str, max_age: Duration) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(&Self::key(user, password))
            .filter(|(_, at)| at.elapsed() < max_age)
            .map(|(t, _)| t.clone())
    }

    fn put(&self, user: &str, password: &str, token: String) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= MAX_CACHED_LOGINS {
            let mut ages: Vec<Instant> = tokens.values().map(|(_, at)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            tokens.retain(|_, (_, at)| *at > cut);
        }
        tokens.insert(Self::key(user, password), (token, Instant::now()));
    }

    /// Forgets every cached login of `user` (its password changed or it was deleted).
    pub fn forget_user(&self, user: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|(u, _), _| u != user);
    }

    fn forget(&self, user: &str, password: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.remove(&Self::key(user, password));
    }
}

/// What a request carries about its caller before its parameters are read: the
/// `Authorization` header and the connection's address and certificate name.
pub struct NacosCaller(Caller);

impl<S: Send + Sync> FromRequestParts<S> for NacosCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Self, std::convert::Infallible> {
        let mast_registry::error::Call(caller) =
            mast_registry::error::Call::from_request_parts(parts, state).await?;
        Ok(NacosCaller(Caller {
            api: "nacos",
            ..caller
        }))
    }
}

impl NacosCaller {
    /// The caller with its token: `accessToken`, else the `Authorization` header, else a
    /// login with `username` / `password` (cached); and whether the request named a caller at
    /// all. With auth off, whatever was sent.
    ///
    /// # Errors
    /// [`NacosError::Forbidden`] `user not found!` when `username` / `password` do not log in.
    pub async fn caller(self, st: &AppState, p: &Params) -> NacosResult<(Caller, bool)> {
        let mut caller = self.0;
        if let Some(token) = p.opt("accessToken") {
            caller.token = Some(token.to_string());
            return Ok((caller, true));
        }
        if caller.token.is_some() || !st.node.auth_enabled() {
            let named = caller.token.is_some();
            return Ok((caller, named));
        }
        let (Some(user), Some(password)) = (p.opt("username"), p.get("password")) else {
            return Ok((caller, false));
        };
        let max_age = st.node.token_ttl() / 2;
        if let Some(token) = st.logins.get(user, password, max_age) {
            let probe = Caller {
                token: Some(token.clone()),
                ..caller.clone()
            };
            if st.node.authenticate_caller(&probe).is_ok() {
                return Ok((probe, true));
            }
            st.logins.forget(user, password);
        }
        let token = login(st, &caller, user, password)
            .await
            .map_err(|e| match e {
                NacosError::LoginFailed => NacosError::Forbidden("user not found!".into()),
                other => other,
            })?;
        st.logins.put(user, password, token.clone());
        caller.token = Some(token);
        Ok((caller, true))
    }
}

async fn login(st: &AppState, caller: &Caller, user: &str, password: &str) -> NacosResult<String> {
    let req = AuthenticateRequest {
        name: user.to_string(),
        password: password.to_string(),
    };
    match mast_server::api::auth::authenticate(&st.node, caller, req).await {
        Ok(resp) => Ok(resp.token),
        Err(e) => match mast_registry::ApiError::from(e).code {
            mast_registry::ErrorCode::Unauthenticated
            | mast_registry::ErrorCode::PermissionDenied
            | mast_registry::ErrorCode::InvalidArgument => Err(NacosError::LoginFailed),
            _ => Err(NacosError::Unavailable("login failed; try again".into())),
        },
    }
}

/// Nacos's login answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// The token to send as `accessToken` (a Mast token).
    pub access_token: String,
    /// Its lifetime in seconds.
    pub token_ttl: u64,
    /// Whether the user is `root` (Mast's all-powerful user).
    pub global_admin: bool,
    /// The user.
    pub username: String,
}

/// The token a login answers while auth is off, as Nacos's (`AUTH_DISABLED`).
pub const AUTH_DISABLED_TOKEN: &str = "AUTH_DISABLED";

/// The token lifetime a login answers while auth is off (Nacos's default, 18,000 s).
const AUTH_DISABLED_TTL_SECS: u64 = 18_000;

/// `POST /nacos/v1/auth/login` and `/nacos/v1/auth/users/login` (`username`, `password`):
/// `{"accessToken","tokenTtl","globalAdmin","username"}` and an `Authorization: Bearer`
/// header. With auth off, Nacos's `AUTH_DISABLED` token (every call is allowed anyway; Mast
/// has no password to check then, as etcd refuses `Authenticate` without auth).
///
/// # Errors
/// 500 without `username` or `password` (Nacos's missing-parameter answer); 403
/// `user not found!` when they do not log in.
pub async fn login_handler(
    State(st): State<AppState>,
    who: NacosCaller,
    p: Params,
) -> NacosResult<Response> {
    let user = p.required("username")?.trim().to_string();
    let password = p.required("password")?;
    if user.is_empty() || password.is_empty() {
        return Err(NacosError::LoginFailed);
    }
    let (token, ttl) = if st.node.auth_enabled() {
        let token = login(&st, &who.0, &user, password).await?;
        (token, st.node.token_ttl().as_secs())
    } else {
        (AUTH_DISABLED_TOKEN.to_string(), AUTH_DISABLED_TTL_SECS)
    };
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| NacosError::Internal(e.to_string()))?;
    let body = LoginResponse {
        access_token: token,
        token_ttl: ttl,
        global_admin: user == "root",
        username: user,
    };
    Ok(([(header::AUTHORIZATION, bearer)], Json(body)).into_response())
}
