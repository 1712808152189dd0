//! Mast's server: the etcd v3 API over the MVCC store, on one port.
//!
//! - [`error`]: [`EtcdError`], the etcd API layer's one error type, and its gRPC codes.
//! - [`node`]: a member's shared state (store, lessor, watch hub, writer) and its settings.
//! - [`writer`]: the single writer thread that batches commands into durable commits.
//! - [`lessor`]: lease deadlines from an injected clock; expiry becomes a revoke command.
//! - [`watch`]: the hub that fans committed events out, and the per-stream watch session.
//! - [`api`]: the tonic services (KV, Watch, Lease, Cluster, Maintenance, Auth).
//! - [`http`]: `/health`, `/version`, `/metrics` and etcd's JSON gateway.
//! - [`serve`]: binding the port and graceful shutdown.
//! - [`tls`]: rustls on the client port.
//! - [`tokens`]: auth tokens (simple and JWT) and login throttling.
//! - [`authority`]: makes the HTTP/2 `:authority` that etcdctl 3.4 sends acceptable to hyper.
//!
//! **Architecture invariant:** every change to the key space goes through [`writer::Writer`]
//! as a [`mast_mvcc::Command`]; services never write the store directly.
//!
//! **Architecture invariant:** operations and checks fail with [`EtcdError`]; it becomes a
//! tonic `Status` or a gateway JSON body only at those edges, and its gRPC code is chosen only
//! in [`EtcdError::code`].

pub mod api;
pub mod authority;
pub mod authz;
pub mod combine;
mod conn_threads;
pub mod consensus;
pub mod disk;
pub mod error;
pub mod guard;
pub mod http;
pub mod http_conn;
pub mod lease_ends;
pub mod lessor;
pub mod node;
pub mod serve;
pub mod tls;
pub mod tokens;
pub mod watch;
pub mod watchers;
pub mod writer;

pub use error::EtcdError;
pub use node::{AllocatorStats, Node, ServerConfig};
pub use serve::Server;
