//! Mast's consensus: openraft (0.9, storage v2) with Mast's own log storage and the MVCC store
//! as the state machine.
//!
//! - [`types`]: the Raft type configuration (what an entry carries, what a member is, what a
//!   snapshot is) and the binary encoding of openraft's types.
//! - [`log_store`]: the log on disk (segment files, vote, committed and purged markers), with
//!   a sync thread that makes appends durable with one `fdatasync` for all that are waiting.
//! - [`state_machine`]: applying committed entries to the store, checkpoints, and snapshots as
//!   views of the live store.
//! - [`network`]: the peer protocol, both sides; [`leader_watch`]: a follower that sees its
//!   leader's process gone (its connection closed, its peer port refusing) campaigns at once.
//!
//! **Architecture invariant:** nothing here knows about clients. The server proposes
//! [`types::Proposal`]s and observes what is applied through
//! [`state_machine::ApplyObserver`]; only this crate talks to peers.

// openraft's traits return its `StorageError` (over 200 bytes); helpers return the same type so
// errors pass through unchanged.
#![allow(clippy::result_large_err)]

pub mod identity;
pub mod leader_watch;
pub mod log_store;
pub mod member;
pub mod network;
pub mod state_machine;
pub mod tls;
pub mod types;

pub use log_store::{LogOpenError, LogOptions, LogStore};
pub use state_machine::{ApplyObserver, StateMachine, StateMachineOptions};
pub use types::{Member, MemberId, Outcome, Proposal, SnapshotData, TypeConfig};
