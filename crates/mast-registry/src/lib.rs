//! Mast's service registry and config center HTTP API, served under `/mast/v1` on the server's
//! one port, with JSON bodies (camelCase) and an OpenAPI document at `/mast/v1/openapi.json`.
//!
//! - [`instances`]: services and their instances — list (with health and filters), register
//!   (a lease and a put), heartbeat (a keepalive of the instance's lease), update, deregister.
//! - [`configs`]: list, get, publish (validated against the format and the config's JSON
//!   Schema), delete, history, one version, diff of two versions, rollback.
//! - [`services`]: a service's settings (protection threshold, metadata, health check).
//! - [`probes`]: the leader's TCP / HTTP / gRPC health probes of persistent instances.
//! - [`overrides`]: an operator's weight and enabled that survive re-registration, and the
//!   leader's reconciler that keeps instances in line with them.
//! - [`gray`]: gray releases of a config — publish, widen, promote, stop.
//! - [`rollout`]: which clients hold which version of a config, from their reports.
//! - [`events`]: a Server-Sent Events stream of instance and config changes that resumes from
//!   a revision.
//! - [`audit`]: the audit log (who changed what, hash-chained) and its verification.
//! - [`openapi`]: the OpenAPI document.
//! - [`error`]: the one error type (`{"error", "code"}` with an HTTP status) and extractors
//!   whose rejections are that error.
//! - [`etcd`]: small builders over the node's etcd operations.
//!
//! The data is the one [`mast_model`] describes: ordinary etcd keys, so an etcd client and this
//! API see the same instances and configs.
//!
//! **Architecture invariant:** every read and write here goes through the node's etcd API
//! functions (`mast_server::api::kv`, `lease`, `watch`) with the HTTP caller's token, so each
//! change is one ordinary durable, atomic etcd operation (a Put, a DeleteRange or a Txn) and
//! auth applies exactly as it does to etcd clients. The node's state is private to the server;
//! besides those functions the registry uses only its narrow read-only methods: lease timing
//! for health ([`Node::lease_timing`]), the request limit, the compacted revision, the shutdown
//! signal, and the index lookups ([`Node::mod_revisions`], [`Node::range_summary`]) by which
//! the read caches tell whether a rendered answer is still current, which check the caller's
//! read permission as the etcd read would. Errors arrive as [`mast_server::EtcdError`] and
//! become an [`ApiError`] by variant.
//!
//! The one exception is the server's own background work, which no request drives: the
//! override reconciler ([`overrides::spawn_reconciler`]) and the health prober
//! ([`probes::spawn_prober`]) read as the server
//! ([`Node::range_as_server`]) and writes through [`Node::write`], only on the leader, and only
//! Txns guarded by the mod revision of the key they rewrite.

pub mod audit;
pub mod configs;
pub mod error;
pub mod etcd;
pub mod events;
pub mod gray;
pub mod instances;
mod leader;
pub mod leases;
pub mod list_cache;
pub mod openapi;
pub mod overrides;
pub mod probes;
pub mod read_cache;
pub mod rollout;
pub mod services;
pub mod transfer;

use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use bytes::Bytes;
use mast_server::Node;

pub use error::{ApiError, ErrorCode};

/// How many versions of each config are kept by default.
pub const DEFAULT_HISTORY_RETENTION: u64 = 100;

/// Default cap on concurrent event streams.
pub const DEFAULT_MAX_EVENT_STREAMS: usize = 1024;

/// The environment variable that sets [`RegistryConfig::history_retention`].
pub const HISTORY_RETENTION_ENV: &str = "MAST_CONFIG_HISTORY_RETENTION";

/// Settings of the registry and config API.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Versions of each config kept under `/config-history/…`; publishing version `v` deletes
    /// every version at or below `v - history_retention`. At least 1.
    pub history_retention: u64,
    /// Concurrent `/mast/v1/events` streams; more are refused with 503.
    pub max_event_streams: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            history_retention: DEFAULT_HISTORY_RETENTION,
            max_event_streams: DEFAULT_MAX_EVENT_STREAMS,
        }
    }
}

impl RegistryConfig {
    /// The defaults, with the retention from `MAST_CONFIG_HISTORY_RETENTION` when it is set to
    /// a positive number (anything else is logged and ignored).
    pub fn from_env() -> Self {
        let mut config = RegistryConfig::default();
        if let Ok(v) = std::env::var(HISTORY_RETENTION_ENV) {
            match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => config.history_retention = n,
                _ => tracing::warn!(
                    value = %v,
                    "{HISTORY_RETENTION_ENV} must be a positive integer; keeping {DEFAULT_HISTORY_RETENTION}"
                ),
            }
        }
        config
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The node whose etcd operations the API uses.
    pub node: Arc<Node>,
    /// Settings.
    pub config: Arc<RegistryConfig>,
    /// Permits for event streams.
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Rendered config reads, kept while current.
    pub read_cache: Arc<read_cache::ReadCache>,
    /// Rendered instance lists, kept while current.
    pub list_cache: Arc<list_cache::ListCache>,
}

/// The API's routes for `node`, with settings from the environment
/// ([`RegistryConfig::from_env`]). No fallback: the server merges this into its router.
pub fn router(node: Arc<Node>) -> Router {
    router_with(node, RegistryConfig::from_env())
}

/// The API's routes for `node` with explicit settings. Also starts the registry's
/// background work on `node` (the override reconciler and the health prober, which act while
/// the member leads and stop when the node shuts down), so call it once per node.
pub fn router_with(node: Arc<Node>, mut config: RegistryConfig) -> Router {
    config.history_retention = config.history_retention.max(1);
    overrides::spawn_reconciler(node.clone());
    probes::spawn_prober(node.clone());
    let state = AppState {
        node,
        streams: Arc::new(tokio::sync::Semaphore::new(config.max_event_streams)),
        config: Arc::new(config),
        read_cache: Arc::default(),
        list_cache: Arc::default(),
    };
    let na = error::method_not_allowed;
    Router::new()
        .route("/mast/v1/openapi.json", get(openapi::document).fallback(na))
        .route(
            "/mast/v1/services",
            get(instances::list_services).fallback(na),
        )
        .route(
            "/mast/v1/services/{service}",
            get(services::get).put(services::put).fallback(na),
        )
        .route(
            "/mast/v1/services/{service}/instances",
            get(instances::list_instances)
                .post(instances::register)
                .fallback(na),
        )
        .route(
            "/mast/v1/services/{service}/instances/{id}",
            get(instances::get_instance)
                .patch(instances::update)
                .delete(instances::deregister)
                .fallback(na),
        )
        .route(
            "/mast/v1/services/{service}/instances/{id}/override",
            get(overrides::get).delete(overrides::clear).fallback(na),
        )
        .route(
            "/mast/v1/services/{service}/watchers",
            get(instances::watchers).fallback(na),
        )
        .route(
            "/mast/v1/services/{service}/instances/{id}/heartbeat",
            put(instances::heartbeat).fallback(na),
        )
        .route("/mast/v1/configs", get(configs::list).fallback(na))
        .route(
            "/mast/v1/configs/export",
            get(transfer::export).fallback(na),
        )
        .route(
            "/mast/v1/configs/import",
            post(transfer::import).fallback(na),
        )
        .route("/mast/v1/configs/clone", post(transfer::clone).fallback(na))
        .route(
            "/mast/v1/configs/{namespace}/{group}/{data_id}",
            get(configs::get)
                .put(configs::publish)
                .delete(configs::delete)
                .fallback(na),
        )
        .route(
            "/mast/v1/configs/{namespace}/{group}/{data_id}/history",
            get(configs::history).fallback(na),
        )
        .route(
            "/mast/v1/configs/{namespace}/{group}/{data_id}/history/{version}",
            get(configs::history_version).fallback(na),
        )
        .route(
            "/mast/v1/configs/{namespace}/{group}/{data_id}/diff",
            get(configs::diff).fallback(na),
        )
        .route(
            "/mast/v1/configs/{namespace}/{group}/{data_id}/gray",
            get(gray::list).fallback(na),
        )
        .route(
            "/mast/v1/configs/{namespace}/{group}/{data_id}/gray/{name}",
            put(gray::put).delete(gray::stop).fallback(na),
        )
        .route(
            "/mast/v1/configs/{namespace}/{group}/{data_id}/gray/{name}/promote",
            post(gray::promote).fallback(na),
        )
        .route(
            "/mast/v1/configs/{namespace}/{group}/{data_id}/rollout",
            get(rollout::get).fallback(na),
        )
        .route(
            "/mast/v1/configs/{namespace}/{group}/{data_id}/rollback",
            post(configs::rollback).fallback(na),
        )
        .route("/mast/v1/events", get(events::stream).fallback(na))
        .route("/mast/v1/leases/{id}", get(leases::get).fallback(na))
        .route("/mast/v1/audit", get(audit::list).fallback(na))
        .route("/mast/v1/audit/verify", get(audit::verify).fallback(na))
        .with_state(state)
}

/// A 200 answer with a JSON body already encoded.
pub(crate) fn json_bytes(body: Bytes) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
