//! The state machine: openraft's `RaftStateMachine` over the MVCC store.
//!
//! A committed entry is applied to the [`Store`] as the store's entry `log index + 1` (Raft
//! indexes start at 0 here, the store's at 1), with the entry's log ID noted in the same commit
//! (and, for a membership entry, the membership), then published to readers, and then shown
//! to the [`ApplyObserver`] (the server: watch events, lease deadlines, tokens). The store's
//! commits are not durable: the Raft log is. Every [`StateMachineOptions::checkpoint_bytes`] of
//! applied commands the store is checkpointed, and building a snapshot checkpoints it too, so
//! the log before a snapshot is never needed again: on start the store opens at its last
//! checkpoint and openraft applies the committed entries after it again.
//!
//! A snapshot is not a copy: [`RaftStateMachine::get_current_snapshot`] takes a consistent
//! [`mast_mvcc::snapshot::StoreView`] of the live store, which the network streams in chunks
//! to a follower (see `crate::network`); the follower writes the chunks into a new store file
//! and [`RaftStateMachine::install_snapshot`] puts it in place of its own.

use std::path::PathBuf;
use std::sync::Arc;

use mast_mvcc::codec::Reader;
use mast_mvcc::snapshot::SnapshotWriter;
use mast_mvcc::{Applied, Command, Store};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};

use crate::types::{
    Entry, LogId, Membership, Outcome, SnapshotData, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, get_opt_log_id, get_stored_membership, put_opt_log_id, put_stored_membership,
};

/// Store note: the log ID of the last applied entry.
const NOTE_APPLIED: &str = "raft.applied";
/// Store note: the last applied membership.
const NOTE_MEMBERSHIP: &str = "raft.membership";
/// Store note: the store's entry index before the Raft log's first entry (`u64 LE`): a
/// store written by a single member before it ran Raft continues from its own count.
const NOTE_BASE: &str = "raft.base";
/// File under the raft directory that says a snapshot exists, with its metadata.
const SNAPSHOT_FILE: &str = "snapshot";
/// Where a snapshot built from another store's view is written before it is installed.
const INCOMING_FILE: &str = "incoming.redb";

/// Default [`StateMachineOptions::checkpoint_bytes`]: 8 MiB.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

/// What the server does with what the state machine applies. Called on the state machine's
/// task, in log order; must not block for long.
pub trait ApplyObserver: Send + Sync + 'static {
    /// An entry's commands were applied and published: deliver `applied.events` to watchers
    /// (take them), note lease grants and revokes, drop tokens of changed users.
    fn applied(&self, commands: &[Command], applied: &mut Applied);

    /// The whole store was replaced by a snapshot: watchers, leases and caches start again
    /// from the store.
    fn replaced(&self);

    /// A membership entry was applied.
    fn membership(&self, membership: &StoredMembership) {
        let _ = membership;
    }
}

/// Options of the state machine.
#[derive(Clone, Copy, Debug)]
pub struct StateMachineOptions {
    /// Bytes of applied entries after which the store is checkpointed (a durable redb
    /// commit). Smaller: shorter pauses and less replay at start, more fsyncs.
    pub checkpoint_bytes: u64,
}

impl Default for StateMachineOptions {
    fn default() -> Self {
        StateMachineOptions {
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
        }
    }
}

/// The state machine over the store.
pub struct StateMachine {
    store: Arc<Store>,
    observer: Arc<dyn ApplyObserver>,
    dir: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
    opts: StateMachineOptions,
    /// Bytes applied since the last checkpoint.
    since_checkpoint: u64,
    /// The store's entry index before the log's first entry: Raft entry `i` is the store's
    /// entry `base + i + 1`.
    base: u64,
    /// Whether the store has `base` noted.
    base_noted: bool,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

fn snapshot_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

/// The applied log ID and membership noted in a store (or in a view of one).
fn read_notes(
    applied: Option<Vec<u8>>,
    membership: Option<Vec<u8>>,
) -> Result<(Option<LogId>, StoredMembership), mast_mvcc::CodecError> {
    let applied = match applied {
        Some(b) => get_opt_log_id(&mut Reader(&b))?,
        None => None,
    };
    let membership = match membership {
        Some(b) => get_stored_membership(&mut Reader(&b))?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

fn base_of(b: &[u8]) -> Result<u64, StorageError> {
    Ok(u64::from_le_bytes(b.try_into().map_err(|_| {
        sm_err(ErrorVerb::Read, "raft.base note is not 8 bytes")
    })?))
}

fn snapshot_id(id: &Option<LogId>) -> String {
    match id {
        Some(id) => format!(
            "{}-{}-{}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => "empty".into(),
    }
}

impl StateMachine {
    /// A state machine over `store`, keeping its snapshot marker under `dir`
    /// (`<data-dir>/raft`).
    ///
    /// # Errors
    /// A [`StorageError`] when the store's notes cannot be read.
    pub fn new(
        store: Arc<Store>,
        observer: Arc<dyn ApplyObserver>,
        dir: PathBuf,
        opts: StateMachineOptions,
    ) -> Result<StateMachine, StorageError> {
        let (applied, membership) = read_notes(
            store
                .note(NOTE_APPLIED)
                .map_err(|e| sm_err(ErrorVerb::Read, e))?,
            store
                .note(NOTE_MEMBERSHIP)
                .map_err(|e| sm_err(ErrorVerb::Read, e))?,
        )
        .map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let (base, base_noted) = match store
            .note(NOTE_BASE)
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
        {
            Some(b) => (base_of(&b)?, true),
            // Entries the store took before it was under Raft.
            None if applied.is_none() => (store.last_applied_index(), false),
            None => (0, false),
        };
        Ok(StateMachine {
            store,
            observer,
            dir,
            applied,
            membership,
            opts,
            since_checkpoint: 0,
            base,
            base_noted,
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Applies normal and blank entries (no membership entry among them) in one store
    /// transaction, then publishes and reports each in order; their outcomes go to `out`.
    fn apply_run(&mut self, run: Vec<Entry>, out: &mut Vec<Outcome>) -> Result<(), StorageError> {
        let Some(last) = run.last().map(|e| e.log_id) else {
            return Ok(());
        };
        let mut decoded: Vec<(u64, Vec<Command>)> = Vec::with_capacity(run.len());
        for e in &run {
            let commands = match &e.payload {
                EntryPayload::Normal(p) => {
                    self.since_checkpoint += p.bytes().len() as u64;
                    p.commands().map_err(|e| sm_err(ErrorVerb::Read, e))?
                }
                _ => Vec::new(),
            };
            decoded.push((self.base + e.log_id.index + 1, commands));
        }
        let mut applied_note = Vec::with_capacity(25);
        put_opt_log_id(&mut applied_note, &Some(last));
        let base_note = self.base.to_le_bytes();
        let mut notes: Vec<(&str, &[u8])> = vec![(NOTE_APPLIED, &applied_note)];
        if !self.base_noted {
            notes.push((NOTE_BASE, &base_note));
        }
        let batch: Vec<(u64, &[Command])> =
            decoded.iter().map(|(i, c)| (*i, c.as_slice())).collect();
        let applied = self
            .store
            .apply_batch(&batch, &notes)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.base_noted = true;
        for ((e, (_, commands)), mut applied) in run.iter().zip(&decoded).zip(applied) {
            self.applied = Some(e.log_id);
            self.store.publish(applied.revision, applied.index);
            self.observer.applied(commands, &mut applied);
            out.push(Outcome {
                revision: applied.revision,
                results: applied.results,
            });
        }
        Ok(())
    }

    /// Applies a membership entry: no commands, the membership noted in the same commit.
    fn apply_membership(
        &mut self,
        log_id: LogId,
        membership: &Membership,
    ) -> Result<Outcome, StorageError> {
        let index = self.base + log_id.index + 1;
        let mut applied_note = Vec::with_capacity(25);
        put_opt_log_id(&mut applied_note, &Some(log_id));
        let base_note = self.base.to_le_bytes();
        let stored = StoredMembership::new(Some(log_id), membership.clone());
        let mut membership_note = Vec::new();
        put_stored_membership(&mut membership_note, &stored);
        let mut notes: Vec<(&str, &[u8])> = vec![
            (NOTE_APPLIED, &applied_note),
            (NOTE_MEMBERSHIP, &membership_note),
        ];
        if !self.base_noted {
            notes.push((NOTE_BASE, &base_note));
        }
        let mut applied = self
            .store
            .apply_noted(index, &[], &notes)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.base_noted = true;
        self.membership = stored;
        self.observer.membership(&self.membership);
        self.applied = Some(log_id);
        self.store.publish(applied.revision, applied.index);
        self.observer.applied(&[], &mut applied);
        Ok(Outcome {
            revision: applied.revision,
            results: applied.results,
        })
    }

    fn current_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: snapshot_id(&self.applied),
        }
    }
}

/// Builds a snapshot: a checkpoint of the store (so the log before it can go) and the marker
/// file; the data is a view taken when the snapshot is sent.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    dir: PathBuf,
    meta: SnapshotMeta,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let store = self.store.clone();
        let dir = self.dir.clone();
        let meta = self.meta.clone();
        let marker = meta.snapshot_id.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            // Everything applied so far, which includes `meta`'s entry, is durable after this.
            store
                .checkpoint()
                .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
            write_marker(&dir, &marker).map_err(|e| snapshot_err(ErrorVerb::Write, e))
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))??;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot built (store checkpointed)");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::Empty),
        })
    }
}

fn write_marker(dir: &std::path::Path, id: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join("snapshot.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(id.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Runs of normal and blank entries are applied in one store transaction each; a
        // membership entry alone, as it changes what the next entries are applied under.
        let mut out = Vec::new();
        let mut run: Vec<Entry> = Vec::new();
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                self.apply_run(std::mem::take(&mut run), &mut out)?;
                out.push(self.apply_membership(e.log_id, m)?);
            } else {
                run.push(e);
            }
        }
        self.apply_run(run, &mut out)?;
        if self.since_checkpoint >= self.opts.checkpoint_bytes {
            self.since_checkpoint = 0;
            self.store
                .checkpoint()
                .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            dir: self.dir.clone(),
            meta: self.current_meta(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(SnapshotData::Empty))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let store = self.store.clone();
        let dir = self.dir.clone();
        let data = *snapshot;
        let marker = meta.snapshot_id.clone();
        let (applied, membership, base) =
            tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
                let path = match data {
                    SnapshotData::File(p) => p,
                    SnapshotData::View(view) => {
                        let path = dir.join(INCOMING_FILE);
                        let mut w = SnapshotWriter::create(&path)
                            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
                        view.for_each_chunk(4 << 20, |c| w.write_chunk(&c))
                            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
                        w.finish().map_err(|e| snapshot_err(ErrorVerb::Write, e))?
                    }
                    SnapshotData::Empty => {
                        return Err(snapshot_err(
                            ErrorVerb::Read,
                            "installing an empty snapshot",
                        ));
                    }
                };
                store
                    .replace_with(&path)
                    .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
                write_marker(&dir, &marker).map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
                let base = match store
                    .note(NOTE_BASE)
                    .map_err(|e| sm_err(ErrorVerb::Read, e))?
                {
                    Some(b) => base_of(&b)?,
                    None => 0,
                };
                let (applied, membership) = read_notes(
                    store
                        .note(NOTE_APPLIED)
                        .map_err(|e| sm_err(ErrorVerb::Read, e))?,
                    store
                        .note(NOTE_MEMBERSHIP)
                        .map_err(|e| sm_err(ErrorVerb::Read, e))?,
                )
                .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
                Ok((applied, membership, base))
            })
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))??;
        if applied != meta.last_log_id {
            return Err(snapshot_err(
                ErrorVerb::Read,
                format!(
                    "snapshot holds entry {:?}, its metadata says {:?}",
                    applied, meta.last_log_id
                ),
            ));
        }
        self.applied = applied;
        self.membership = membership;
        self.base = base;
        self.base_noted = true;
        self.since_checkpoint = 0;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        self.observer.replaced();
        self.observer.membership(&self.membership);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        if !self.dir.join(SNAPSHOT_FILE).exists() {
            return Ok(None);
        }
        let view = self
            .store
            .view()
            .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        let (applied, membership) = read_notes(
            view.note(NOTE_APPLIED)
                .map_err(|e| snapshot_err(ErrorVerb::Read, e))?,
            view.note(NOTE_MEMBERSHIP)
                .map_err(|e| snapshot_err(ErrorVerb::Read, e))?,
        )
        .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id: snapshot_id(&applied),
            },
            snapshot: Box::new(SnapshotData::View(view)),
        }))
    }
}

/// The voters and learners of a membership, for display.
pub fn members_of(m: &Membership) -> Vec<(u64, bool)> {
    let voters: std::collections::BTreeSet<u64> = m.voter_ids().collect();
    m.nodes()
        .map(|(id, _)| (*id, !voters.contains(id)))
        .collect()
}
