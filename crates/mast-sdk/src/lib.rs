//! Rust SDK for Mast — and for any etcd v3 server, since everything is stored as ordinary keys
//! (see `mast-model` for the layout).
//!
//! - [`client`]: [`Client`] and [`ClientOptions`] (explicit, or from `MAST_ENDPOINTS`,
//!   `MAST_USER`, `MAST_PASSWORD`, falling back to `ETCDCTL_*`), login and re-login.
//! - [`registry`]: [`Client::register`] returns a [`Registration`] that keeps its lease alive,
//!   registers again when the lease is lost, and deregisters on shutdown or drop;
//!   [`Client::discover`], [`Client::watch_service`] (the instance set after every change,
//!   from one resuming watch), [`Client::discover_changes`] (a `tower::discover` stream) and
//!   [`WeightedPicker`] (smooth weighted round-robin).
//! - [`config`]: [`Client::get_config`], [`Client::publish_config`], [`Client::watch_config`]
//!   and [`Client::typed_config`], a typed value that hot-reloads, keeps the last good value
//!   when new content does not parse, and can start from a local disk cache.
//!
//! ```no_run
//! # async fn demo() -> mast_sdk::Result<()> {
//! use mast_sdk::{Client, ClientOptions, Instance};
//! let client = Client::connect(ClientOptions::from_env()).await?;
//! let reg = client
//!     .register("user-service", "i1", Instance::new("127.0.0.1", 3001), std::time::Duration::from_secs(10))
//!     .await?;
//! let peers = client.discover("order-service").await?;
//! # drop((reg, peers));
//! # Ok(()) }
//! ```

pub mod client;
pub mod config;
pub mod overrides;
pub mod registry;
pub mod rollout;

pub use client::{Client, ClientOptions, Error, Result};
pub use config::{Config, TypedConfig};
pub use mast_model::{ConfigFormat, ConfigId, ConfigMeta, Instance};
pub use registry::{Available, Registration, RegistrationState, ServiceInstance, WeightedPicker};
