//! Mast's MVCC store: etcd's data model on redb, as a deterministic state machine.
//!
//! - [`command`]: the [`Command`]s a log entry carries, their results, and their versioned
//!   binary encoding.
//! - [`apply`]: applying one entry, as etcd's applier: Put, DeleteRange, Txn, Compact, leases
//!   and auth, each checked whole before it changes anything.
//! - [`store`]: the redb tables and the in-memory state, recovery, checkpoints, and the reads
//!   (Range, history for watches, hashes, snapshots), served at the last published revision.
//! - [`log`]: the write-ahead log in front of the store, and [`LoggedStore`], one member's
//!   durable write path (group commit: many entries per `fdatasync`).
//! - [`range`]: Range with etcd's semantics.
//! - [`index`]: the in-memory key index (key → generations of revisions), as etcd's
//!   `treeIndex`; values are not in memory.
//! - [`lease`]: the applied lease table (granted TTLs and attached keys; no clocks).
//! - [`auth`]: the applied auth state (users, roles, key permissions) and the permission
//!   check, as etcd's auth store; no tokens or passwords in clear.
//! - [`snapshot`]: consistent views of the whole store, cut into chunks to send, and a
//!   writer that builds a store file from them, to install in place of a live store.
//! - [`revision`]: the `(main, sub)` revision and its on-disk encoding.
//! - `rows`, `state`: the table layout and the in-memory part of the state.
//!
//! Modules depend in one direction: `log` → `store` → `apply` → `range` → `state` / `rows` /
//! `index`; `command` is below `apply` and `log`, and nothing below `store` knows it exists.
//!
//! **Architecture invariant:** this crate knows nothing of gRPC, HTTP, tokio, Raft or
//! wall-clock time. Its results depend only on the entries applied, in order, so the same
//! entries give the same state and the same `HashKV` on every member.

pub mod apply;
pub mod audit;
pub mod auth;
pub mod bolt;
pub mod codec;
pub mod command;
pub mod error;
pub mod import;
pub mod index;
pub mod lease;
pub mod log;
pub mod range;
pub mod revision;
mod rows;
pub mod snapshot;
mod state;
pub mod store;

pub use apply::MAX_LEASE_TTL;
pub use audit::{AuditAction, AuditBreak, AuditEntry, AuditReport, Origin};
pub use auth::{AuthCommand, AuthError, AuthState};
pub use command::{
    CodecError, Command, CommandResult, DuplicateKey, check_txn_intervals, decode_entry,
    decode_result, encode_entry, encode_result, is_txn_readonly, txn_puts,
};
pub use error::{MvccError, StorageError};
pub use lease::{LeaseId, LeaseKeys, LeaseRecord, LeaseTable};
pub use log::{LogOptions, LoggedStore, Staged};
pub use revision::Revision;
pub use store::{Applied, DEFAULT_CACHE_BYTES, KeyRevisions, Store, StoreOptions, StoreStatus};
