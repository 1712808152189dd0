//! The write path: a single thread that groups concurrent commands into one durable batch.
//!
//! Requests send a [`Command`] with a reply channel; the writer thread takes every command that
//! is waiting (up to [`MAX_BATCH`]), applies them with [`Store::apply`] (one fsync for all),
//! then replies to each and publishes the batch's events to the watch hub. While one batch is
//! being written the next one queues up, so the fsync rate bounds batches, not writes.

use std::sync::Arc;

use mast_mvcc::{Applied, Command, CommandResult, MvccError, Store};
use tokio::sync::{mpsc, oneshot};

use crate::lessor::Lessor;
use crate::watch::WatchHub;

/// Most commands applied in one batch (one redb transaction, one fsync).
pub const MAX_BATCH: usize = 1024;

type Reply = oneshot::Sender<Result<CommandResult, MvccError>>;

/// A handle for submitting commands to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl Writer {
    /// Starts the writer thread over `store`. It stops when every handle is dropped.
    pub fn start(store: Arc<Store>, hub: Arc<WatchHub>, lessor: Arc<Lessor>) -> Writer {
        let (tx, rx) = mpsc::channel::<(Command, Reply)>(4 * MAX_BATCH);
        std::thread::Builder::new()
            .name("mast-writer".into())
            .spawn(move || run(store, hub, lessor, rx))
            .expect("spawn writer thread");
        Writer { tx }
    }

    /// Applies `cmd` durably and returns its result once it is on disk.
    ///
    /// # Errors
    /// The store's refusal ([`MvccError`]), or [`MvccError::Storage`] when the disk failed or
    /// the writer has stopped.
    pub async fn submit(&self, cmd: Command) -> Result<CommandResult, MvccError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((cmd, reply))
            .await
            .map_err(|_| MvccError::Storage("writer stopped".into()))?;
        rx.await
            .map_err(|_| MvccError::Storage("writer stopped".into()))?
    }
}

fn run(
    store: Arc<Store>,
    hub: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    mut rx: mpsc::Receiver<(Command, Reply)>,
) {
    let mut cmds = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    while let Some((cmd, reply)) = rx.blocking_recv() {
        cmds.push(cmd);
        replies.push(reply);
        while cmds.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((cmd, reply)) => {
                    cmds.push(cmd);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let batch = cmds.len();
        metrics::histogram!("mast_writer_batch_size").record(batch as f64);
        match store.apply(&cmds) {
            Ok(Applied {
                results,
                events,
                revision,
            }) => {
                for r in results.iter().flatten() {
                    match r {
                        CommandResult::LeaseGrant { id, ttl } => lessor.granted(*id, *ttl),
                        CommandResult::LeaseRevoke { .. } => {}
                        _ => {}
                    }
                }
                for cmd in &cmds {
                    if let Command::LeaseRevoke { id } = cmd {
                        lessor.revoked(*id);
                    }
                }
                // Events go to watchers before the replies: a client that sees its put
                // acknowledged and then creates a watch never misses its own write.
                hub.publish(revision, events);
                for (reply, result) in replies.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(MvccError::Storage(e.0.clone())));
                }
            }
        }
        cmds.clear();
    }
}
