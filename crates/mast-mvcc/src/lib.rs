//! Mast's MVCC store: etcd's data model on redb.
//!
//! - [`revision`]: the `(main, sub)` revision and its on-disk encoding.
//! - [`index`]: the in-memory key index (key → generations of revisions), as etcd's
//!   `treeIndex`; values are not in memory.
//! - [`store`]: the redb tables and the write path: a batch of [`Command`]s applied in one
//!   redb transaction and logged, with reads served at the last durable revision.
//! - [`wal`]: the write-ahead log that makes a batch durable with one `fdatasync`, replayed
//!   on open after the last checkpoint.
//! - [`txn`]: Range, Put, DeleteRange and Txn with etcd's semantics.
//! - [`lease`]: the applied lease table (granted TTLs and attached keys; no clocks).
//! - [`auth`]: the applied auth state (users, roles, key permissions) and the permission
//!   check, as etcd's auth store; no tokens or passwords in clear.
//!
//! **Architecture invariant:** this crate knows nothing of gRPC, HTTP, tokio or wall-clock
//! time. It uses the etcd protobuf *messages* as its request and result types, and its results
//! depend only on the commands applied, so a Raft log can later sit in front of [`Store::apply`].

pub mod auth;
pub mod error;
pub mod index;
pub mod lease;
pub mod revision;
pub mod store;
pub mod txn;
pub mod wal;

pub use auth::{AuthCommand, AuthError, AuthState};
pub use error::{MvccError, StorageError};
pub use lease::{LeaseId, LeaseKeys, LeaseRecord, LeaseTable};
pub use revision::Revision;
pub use store::{
    Applied, Command, DEFAULT_CACHE_BYTES, MAX_LEASE_TTL, Staged, Store, StoreOptions, StoreStatus,
};
pub use txn::{CommandResult, is_txn_readonly};
