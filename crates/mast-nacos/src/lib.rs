//! The Nacos API on Mast, served on its own port (8848 by default, as Nacos): Nacos clients
//! read and write the same configs (and, later in this crate, services) that etcd clients,
//! the Mast SDK and `/mast/v1` see.
//!
//! - [`config_v1`]: the v1 open API for configs — get, publish, delete and the long-polling
//!   listener (`/nacos/v1/cs/configs`, `/nacos/v1/cs/configs/listener`).
//! - [`auth`]: `/nacos/v1/auth/login`, and how a call names its caller.
//! - [`listen`]: which held listeners wait on which config, woken by the node's commits.
//! - [`params`]: parameters from the query string and a form body, as Nacos reads them.
//! - [`error`]: the one error type, with Nacos's statuses and plain-text bodies.
//!
//! **Architecture invariant:** this crate owns no state a restart or failover would lose. It
//! translates: every read and write goes through the server's etcd operations (and the
//! registry's config writes, so a Nacos publish is the same one Txn with history as a
//! `/mast/v1` publish) with the caller's token, so auth applies exactly as for etcd clients.
//! Held listeners and cached logins are per-member, in memory, and rebuilt by clients' next
//! requests.

pub mod auth;
pub mod config_v1;
pub mod error;
pub mod listen;
pub mod params;

use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use mast_server::Node;

pub use error::{NacosError, NacosResult};

/// The Nacos HTTP port clients default to.
pub const DEFAULT_HTTP_PORT: u16 = 8848;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The node whose etcd operations the API uses.
    pub node: Arc<Node>,
    /// Config versions kept in history (as `/mast/v1`'s).
    pub retention: u64,
    /// Held config listeners.
    pub listeners: Arc<listen::ListenHub>,
    /// Tokens from `username` / `password` parameters.
    pub logins: Arc<auth::LoginCache>,
}

/// The Nacos API's routes for `node`, keeping `retention` versions of each config (the
/// registry's `MAST_CONFIG_HISTORY_RETENTION`). Must be called inside a tokio runtime: it
/// starts the task that wakes held listeners.
pub fn router(node: Arc<Node>, retention: u64) -> Router {
    let state = AppState {
        listeners: listen::ListenHub::start(node.clone()),
        node,
        retention: retention.max(1),
        logins: Arc::default(),
    };
    Router::new()
        .route(
            "/nacos/v1/cs/configs",
            axum::routing::get(config_v1::get)
                .post(config_v1::publish)
                .delete(config_v1::delete)
                .fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/cs/configs/listener",
            post(config_v1::listener).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/auth/login",
            post(auth::login_handler).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/auth/users/login",
            post(auth::login_handler).fallback(method_not_allowed),
        )
        .fallback(not_served)
        .layer(axum::middleware::from_fn(error::spring_error_bodies))
        .with_state(state)
}

async fn method_not_allowed(method: http::Method, uri: http::Uri) -> NacosError {
    NacosError::BadRequest(format!(
        "Request method '{method}' is not supported on {}",
        uri.path()
    ))
}

/// Every path Mast does not serve: 501 with what to read (README lists the Nacos API Mast
/// serves).
async fn not_served(method: http::Method, uri: http::Uri) -> NacosError {
    NacosError::NotImplemented(format!(
        "Mast does not serve {method} {} of the Nacos API (README: Nacos clients)",
        uri.path()
    ))
}
