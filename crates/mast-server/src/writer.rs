//! The write path: a writer thread that groups concurrent commands into batches, and a sync
//! thread that makes them durable.
//!
//! Requests send a [`Command`] with a reply channel. The writer thread takes every command that
//! is waiting (up to [`MAX_BATCH`]) and stages them as one log entry ([`LoggedStore::stage`]:
//! applied to memory and redb, written to the write-ahead log, not yet synced or visible), then
//! hands the entry to the sync thread and goes on to the next. The sync thread takes every
//! staged entry that is waiting, syncs the log once for all of them ([`LoggedStore::sync`]),
//! and then, entry by entry in order, makes them visible ([`LoggedStore::publish`]), publishes
//! their events to the watch hub and replies. So the fsync of one group overlaps the applying of the next, and the fsync
//! rate bounds groups, not writes.
//!
//! Replies to requests served on a connection thread go through that thread's [`Mailbox`]: the
//! sync thread leaves them there and wakes the thread once per group, and a task on the thread
//! hands them out. Waking each request's task from the sync thread cost a system call per reply
//! (the runtime's I/O driver is woken through an eventfd), and the tasks woken one by one
//! answered one by one, an HTTP/2 frame write each.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use mast_mvcc::{Command, CommandResult, LoggedStore, MvccError, Staged};
use tokio::sync::{mpsc, oneshot};

use crate::lessor::Lessor;
use crate::watch::WatchHub;

/// Most commands applied in one batch (one redb transaction, one log record).
pub const MAX_BATCH: usize = 1024;

/// Most staged batches waiting for the sync thread; the writer waits beyond that.
const MAX_STAGED: usize = 8;

type Outcome = Result<CommandResult, MvccError>;

/// Where a command's result goes: the waiting task's channel, and the mailbox of the
/// connection thread the task runs on, if any.
struct Reply {
    tx: oneshot::Sender<Outcome>,
    mailbox: Option<Arc<Mailbox>>,
}

/// Results for the tasks of one connection thread, handed over with one wake-up per group
/// (see the module docs).
pub(crate) struct Mailbox {
    waiting: Mutex<Vec<(oneshot::Sender<Outcome>, Outcome)>>,
    ready: tokio::sync::Notify,
}

thread_local! {
    /// The mailbox of the connection thread this is, if it is one.
    static HOME: RefCell<Option<Arc<Mailbox>>> = const { RefCell::new(None) };
}

impl Mailbox {
    /// Makes the calling thread a mailbox's home: replies to commands submitted from it come
    /// through the mailbox, so [`Mailbox::deliver`] must run on this thread's runtime.
    pub(crate) fn install() -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox {
            waiting: Mutex::new(Vec::new()),
            ready: tokio::sync::Notify::new(),
        });
        HOME.with(|h| *h.borrow_mut() = Some(mailbox.clone()));
        mailbox
    }

    /// Hands out the replies left in the mailbox as they come. Runs until its runtime stops.
    pub(crate) async fn deliver(self: Arc<Self>) {
        let mut batch = Vec::new();
        loop {
            self.ready.notified().await;
            std::mem::swap(&mut batch, &mut *self.waiting.lock().expect("mailbox lock"));
            for (tx, outcome) in batch.drain(..) {
                let _ = tx.send(outcome);
            }
        }
    }
}

/// Sends results and remembers which mailboxes to wake; [`Outbox::wake`] wakes each once.
#[derive(Default)]
struct Outbox {
    touched: Vec<Arc<Mailbox>>,
}

impl Outbox {
    fn send(&mut self, reply: Reply, outcome: Outcome) {
        match reply.mailbox {
            None => {
                let _ = reply.tx.send(outcome);
            }
            Some(m) => {
                m.waiting
                    .lock()
                    .expect("mailbox lock")
                    .push((reply.tx, outcome));
                if !self.touched.iter().any(|t| Arc::ptr_eq(t, &m)) {
                    self.touched.push(m);
                }
            }
        }
    }

    fn wake(&mut self) {
        for m in self.touched.drain(..) {
            m.ready.notify_one();
        }
    }
}

/// A staged batch on its way to the sync thread.
struct Pending {
    staged: Staged,
    /// Leases the batch revoked (the lessor forgets them once the batch is durable).
    revoked: Vec<i64>,
    replies: Vec<Reply>,
}

/// A handle for submitting commands to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl Writer {
    /// Starts the writer and sync threads over `store`. They stop when every handle is dropped.
    pub fn start(store: Arc<LoggedStore>, hub: Arc<WatchHub>, lessor: Arc<Lessor>) -> Writer {
        let (tx, rx) = mpsc::channel::<(Command, Reply)>(4 * MAX_BATCH);
        let (staged_tx, staged_rx) = std::sync::mpsc::sync_channel::<Pending>(MAX_STAGED);
        let sync_store = store.clone();
        std::thread::Builder::new()
            .name("mast-sync".into())
            .spawn(move || sync_loop(sync_store, hub, lessor, staged_rx))
            .expect("spawn sync thread");
        std::thread::Builder::new()
            .name("mast-writer".into())
            .spawn(move || write_loop(store, rx, staged_tx))
            .expect("spawn writer thread");
        Writer { tx }
    }

    /// Applies `cmd` durably and returns its result once it is on disk.
    ///
    /// # Errors
    /// The store's refusal ([`MvccError`]), or [`MvccError::Storage`] when the disk failed or
    /// the writer has stopped.
    pub async fn submit(&self, cmd: Command) -> Result<CommandResult, MvccError> {
        let (tx, rx) = oneshot::channel();
        let mailbox = HOME.with(|h| h.borrow().clone());
        self.tx
            .send((cmd, Reply { tx, mailbox }))
            .await
            .map_err(|_| MvccError::Storage("writer stopped".into()))?;
        rx.await
            .map_err(|_| MvccError::Storage("writer stopped".into()))?
    }
}

fn write_loop(
    store: Arc<LoggedStore>,
    mut rx: mpsc::Receiver<(Command, Reply)>,
    staged_tx: std::sync::mpsc::SyncSender<Pending>,
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
        metrics::histogram!("mast_writer_batch_size").record(cmds.len() as f64);
        match store.stage(&cmds) {
            Ok(staged) => {
                if staged.durable {
                    // A checkpoint: redb's own fsync.
                    metrics::counter!("mast_fsyncs_total").increment(1);
                }
                let revoked = cmds
                    .iter()
                    .filter_map(|c| match c {
                        Command::LeaseRevoke { id } => Some(*id),
                        _ => None,
                    })
                    .collect();
                // Moved out at its exact size; `replies` keeps its capacity (which `mem::take`
                // would not).
                #[allow(clippy::drain_collect)]
                let moved: Vec<Reply> = replies.drain(..).collect();
                let pending = Pending {
                    staged,
                    revoked,
                    replies: moved,
                };
                if staged_tx.send(pending).is_err() {
                    return;
                }
            }
            Err(e) => {
                let mut outbox = Outbox::default();
                for reply in replies.drain(..) {
                    outbox.send(reply, Err(MvccError::Storage(e.0.clone())));
                }
                outbox.wake();
            }
        }
        cmds.clear();
    }
}

fn sync_loop(
    store: Arc<LoggedStore>,
    hub: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    rx: std::sync::mpsc::Receiver<Pending>,
) {
    let mut group = Vec::with_capacity(MAX_STAGED);
    let mut outbox = Outbox::default();
    while let Ok(first) = rx.recv() {
        group.push(first);
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let synced = if group.iter().all(|p| p.staged.durable) {
            Ok(())
        } else {
            metrics::histogram!("mast_sync_group_batches").record(group.len() as f64);
            metrics::counter!("mast_fsyncs_total").increment(1);
            store.sync()
        };
        for p in group.drain(..) {
            let Pending {
                staged,
                revoked,
                replies,
            } = p;
            if let Err(e) = &synced {
                for reply in replies {
                    outbox.send(reply, Err(MvccError::Storage(e.0.clone())));
                }
                continue;
            }
            let applied = staged.applied;
            store.publish(&applied);
            lessor.granted_all(applied.results.iter().flatten().filter_map(|r| match r {
                CommandResult::LeaseGrant { id, ttl }
                | CommandResult::LeaseGrantPut { id, ttl, .. } => Some((*id, *ttl)),
                _ => None,
            }));
            for id in revoked {
                lessor.revoked(id);
            }
            // Events go to watchers before the replies: a client that sees its put
            // acknowledged and then creates a watch never misses its own write.
            hub.publish(applied.revision, applied.events);
            for (reply, result) in replies.into_iter().zip(applied.results) {
                outbox.send(reply, result);
            }
        }
        outbox.wake();
    }
}
