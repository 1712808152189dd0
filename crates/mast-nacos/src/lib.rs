//! The Nacos API on Mast, served on its own port (8848 by default, as Nacos): Nacos clients
//! read and write the same configs (and, later in this crate, services) that etcd clients,
//! the Mast SDK and `/mast/v1` see.
//!
//! - [`config_v1`]: the v1 open API for configs — get, publish, delete and the long-polling
//!   listener (`/nacos/v1/cs/configs`, `/nacos/v1/cs/configs/listener`).
//! - [`naming_v1`]: the v1 open API for naming — instances (register, deregister, update,
//!   get, list, beat) and the service list — on Mast's instance keys.
//! - [`push`]: UDP push of a subscribed service's instances to v1 naming clients.
//! - [`grpc`]: the 2.x gRPC protocol (port + 1000): connections, configs with pushed
//!   changes, naming with pushed subscriptions, ephemeral instances living with their
//!   connection.
//! - [`history_v1`]: config history (`/nacos/v1/cs/history`) on `/config-history/…`.
//! - [`namespace_v1`]: namespaces (`/nacos/v1/console/namespaces`) on `/namespaces/<id>`.
//! - [`v2`]: the v2 open API — the same operations in the `{code, message, data}` envelope.
//! - [`auth`]: `/nacos/v1/auth/login`, and how a call names its caller.
//! - [`auth_admin`]: `/nacos/v1/auth/users`, `/roles`, `/permissions` on Mast's users and
//!   roles, Nacos resources mapped to key ranges.
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
pub mod auth_admin;
pub mod config_v1;
pub mod error;
pub mod grpc;
pub mod history_v1;
pub mod list_cache;
pub mod listen;
pub mod namespace_v1;
pub mod naming_v1;
pub mod params;
pub mod push;
pub mod reports;
pub mod v2;

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
    /// Naming clients subscribed to UDP push.
    pub push: Arc<push::PushHub>,
    /// Config reads rendered from given content and metadata revisions (`GET
    /// /nacos/v1/cs/configs`), as `/mast/v1`'s.
    pub read_cache: Arc<mast_registry::read_cache::ReadCache>,
    /// Instance list answers by what they were made from (`GET /nacos/v1/ns/instance/list`).
    pub list_cache: Arc<list_cache::ListCache>,
    /// Rollout reports written for listening clients.
    pub reports: Arc<reports::Reports>,
}

/// The Nacos API for `node`: the HTTP router and the 2.x gRPC router (for the HTTP port and
/// the port 1000 above it), sharing one state, keeping `retention` versions of each config
/// (the registry's `MAST_CONFIG_HISTORY_RETENTION`). Must be called inside a tokio runtime:
/// it starts the tasks that wake held listeners and push changes.
pub fn routers(node: Arc<Node>, retention: u64) -> (Router, Router) {
    let state = state(node, retention);
    let grpc = grpc::Grpc::new(state.clone()).router();
    (http_router(state), grpc)
}

/// The Nacos HTTP API's routes for `node` (see [`routers`]).
pub fn router(node: Arc<Node>, retention: u64) -> Router {
    http_router(state(node, retention))
}

fn state(node: Arc<Node>, retention: u64) -> AppState {
    AppState {
        listeners: listen::ListenHub::start(node.clone()),
        push: push::PushHub::start(node.clone()),
        node,
        retention: retention.max(1),
        logins: Arc::default(),
        read_cache: Arc::default(),
        list_cache: Arc::default(),
        reports: Arc::default(),
    }
}

fn http_router(state: AppState) -> Router {
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
            "/nacos/v1/ns/instance",
            axum::routing::get(naming_v1::get_instance)
                .post(naming_v1::register)
                .put(naming_v1::update)
                .delete(naming_v1::deregister)
                .fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/ns/instance/list",
            axum::routing::get(naming_v1::list).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/ns/instance/beat",
            axum::routing::put(naming_v1::beat).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/ns/service",
            axum::routing::get(naming_v1::get_service)
                .post(naming_v1::create_service)
                .put(naming_v1::update_service)
                .delete(naming_v1::delete_service)
                .fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/ns/service/list",
            axum::routing::get(naming_v1::service_list).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/ns/operator/metrics",
            axum::routing::get(naming_v1::metrics).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/cs/history",
            axum::routing::get(history_v1::history).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/cs/history/previous",
            axum::routing::get(history_v1::previous).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/console/namespaces",
            axum::routing::get(namespace_v1::list)
                .post(namespace_v1::create)
                .put(namespace_v1::update)
                .delete(namespace_v1::delete)
                .fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/cs/config",
            axum::routing::get(v2::get_config)
                .post(v2::publish_config)
                .delete(v2::delete_config)
                .fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/ns/instance",
            axum::routing::get(v2::get_instance)
                .post(v2::register)
                .put(v2::update)
                .delete(v2::deregister)
                .fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/ns/instance/list",
            axum::routing::get(v2::list).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/ns/instance/beat",
            axum::routing::put(naming_v1::beat).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/cs/history",
            axum::routing::get(v2::history_one).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/cs/history/list",
            axum::routing::get(v2::history_list).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/cs/history/previous",
            axum::routing::get(v2::history_previous).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/ns/service",
            axum::routing::get(v2::get_service)
                .post(v2::create_service)
                .put(v2::update_service)
                .delete(v2::delete_service)
                .fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/ns/service/list",
            axum::routing::get(v2::service_list).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/console/namespace",
            axum::routing::get(v2::namespace_get)
                .post(v2::namespace_create)
                .put(v2::namespace_update)
                .delete(v2::namespace_delete)
                .fallback(method_not_allowed),
        )
        .route(
            "/nacos/v2/console/namespace/list",
            axum::routing::get(v2::namespaces).fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/auth/users",
            axum::routing::get(auth_admin::list_users)
                .post(auth_admin::create_user)
                .put(auth_admin::update_user)
                .delete(auth_admin::delete_user)
                .fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/auth/roles",
            axum::routing::get(auth_admin::list_roles)
                .post(auth_admin::add_role)
                .delete(auth_admin::delete_role)
                .fallback(method_not_allowed),
        )
        .route(
            "/nacos/v1/auth/permissions",
            axum::routing::get(auth_admin::list_permissions)
                .post(auth_admin::add_permission)
                .delete(auth_admin::delete_permission)
                .fallback(method_not_allowed),
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
