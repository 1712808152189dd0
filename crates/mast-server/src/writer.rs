//! The write path: commands from every request grouped into log entries and proposed.
//!
//! Requests send a [`Command`] with a reply channel. One task takes every command that is
//! waiting (up to [`MAX_BATCH`]) and proposes them as one log entry ([`Consensus::propose`]):
//! on the leader through openraft, whose log makes the entry durable with one `fdatasync`
//! before it commits, on a follower by handing the commands to the leader. While
//! [`MAX_IN_FLIGHT`] entries are on their way, new commands wait and join the next entry, so
//! the fsync rate bounds entries, not writes (group commit). When an entry is applied its
//! results come back and each request gets its own.
//!
//! Replies to requests served on a connection thread go through that thread's [`Mailbox`]: the
//! proposing task leaves them there and wakes the thread once per entry, and a task on the
//! thread hands them out. Waking each request's task from another thread cost a system call
//! per reply (the runtime's I/O driver is woken through an eventfd), and the tasks woken one
//! by one answered one by one, an HTTP/2 frame write each.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use mast_mvcc::{Command, CommandResult};
use tokio::sync::{mpsc, oneshot};

use crate::consensus::Consensus;
use crate::error::EtcdError;

/// Most commands in one log entry.
pub const MAX_BATCH: usize = 1024;

/// Most entries proposed and not yet applied by the leader; commands wait beyond that and
/// join the next. (A follower's entries leave this count once the leader has answered, while
/// the follower still waits to apply them itself.)
pub const MAX_IN_FLIGHT: usize = 2;

type Outcome = Result<CommandResult, EtcdError>;

/// A command's outcome and the Raft log index of its entry, counted from 1 (0 when it never
/// reached the log).
type Delivered = (Outcome, u64);

/// Where a command's result goes: the waiting task's channel, and the mailbox of the
/// connection thread the task runs on, if any.
struct Reply {
    tx: oneshot::Sender<Delivered>,
    mailbox: Option<Arc<Mailbox>>,
}

/// Results for the tasks of one connection thread, handed over with one wake-up per group
/// (see the module docs).
pub(crate) struct Mailbox {
    waiting: Mutex<Vec<(oneshot::Sender<Delivered>, Delivered)>>,
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
    fn send(&mut self, reply: Reply, outcome: Delivered) {
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

/// A handle for submitting commands. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Command, Reply)>,
}

impl Writer {
    /// Starts the proposing task over `consensus`. It stops when every handle is dropped.
    pub fn start(consensus: Arc<Consensus>) -> Writer {
        let (tx, rx) = mpsc::channel::<(Command, Reply)>(4 * MAX_BATCH);
        tokio::spawn(propose_loop(consensus, rx));
        Writer { tx }
    }

    /// Proposes `cmd` and returns its result once its entry is applied.
    ///
    /// # Errors
    /// The store's refusal ([`EtcdError::Mvcc`], [`EtcdError::Auth`]), or the proposal's
    /// failure (no leader, a timeout, the leader changed, the server stopping).
    pub async fn submit(&self, cmd: Command) -> Result<CommandResult, EtcdError> {
        Ok(self.submit_indexed(cmd).await?.0)
    }

    /// As [`Writer::submit`], also returning the Raft log index (counted from 1) of the
    /// entry the command went into.
    ///
    /// # Errors
    /// As [`Writer::submit`].
    pub async fn submit_indexed(&self, cmd: Command) -> Result<(CommandResult, u64), EtcdError> {
        let (tx, rx) = oneshot::channel();
        let mailbox = HOME.with(|h| h.borrow().clone());
        self.tx
            .send((cmd, Reply { tx, mailbox }))
            .await
            .map_err(|_| EtcdError::Stopped)?;
        let (outcome, index) = rx.await.map_err(|_| EtcdError::Stopped)?;
        Ok((outcome?, index))
    }

    /// Proposes every command of `cmds`, in order, without waiting for one result before
    /// sending the next, so they join the same entries as far as [`MAX_BATCH`] allows; returns
    /// their results in the same order once their entries are applied. This is how the leader
    /// takes a follower's hand-over: one forwarded batch must not become one entry per command.
    /// Also returns the highest Raft log index (counted from 1) of the entries they went into.
    pub async fn submit_all(
        &self,
        cmds: Vec<Command>,
    ) -> (Vec<Result<CommandResult, EtcdError>>, u64) {
        let mailbox = HOME.with(|h| h.borrow().clone());
        let mut waits = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let (tx, rx) = oneshot::channel();
            let reply = Reply {
                tx,
                mailbox: mailbox.clone(),
            };
            match self.tx.send((cmd, reply)).await {
                Ok(()) => waits.push(Some(rx)),
                Err(_) => waits.push(None),
            }
        }
        let mut out = Vec::with_capacity(waits.len());
        let mut last = 0;
        for w in waits {
            let (outcome, index) = match w {
                Some(rx) => rx.await.unwrap_or((Err(EtcdError::Stopped), 0)),
                None => (Err(EtcdError::Stopped), 0),
            };
            last = last.max(index);
            out.push(outcome);
        }
        (out, last)
    }
}

async fn propose_loop(consensus: Arc<Consensus>, mut rx: mpsc::Receiver<(Command, Reply)>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    // Handles looked up once (each `metrics::…!` call searches the recorder's registry).
    let batch_size = metrics::histogram!("mast_writer_batch_size");
    let pending = metrics::gauge!("etcd_server_proposals_pending");
    let failed = metrics::counter!("etcd_server_proposals_failed_total");
    while let Some((cmd, reply)) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Everything that arrived while waiting for a slot joins this entry.
        let mut cmds = Vec::with_capacity(64);
        let mut replies = Vec::with_capacity(64);
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
        batch_size.record(cmds.len() as f64);
        pending.increment(1.0);
        let consensus = consensus.clone();
        let (pending, failed) = (pending.clone(), failed.clone());
        tokio::spawn(async move {
            // Abandoned once every client of the batch has gone (their handlers dropped).
            let accepted = consensus
                .submit(cmds, || replies.iter().any(|r| !r.tx.is_closed()))
                .await;
            pending.decrement(1.0);
            // The leader has applied the entry: the next one may go while a follower waits
            // for its own apply.
            drop(slot);
            let result = match accepted {
                Ok(accepted) => consensus.settle(accepted).await,
                Err(e) => Err(e),
            };
            let mut outbox = Outbox::default();
            match result {
                Ok(proposed) => {
                    for (reply, r) in replies.into_iter().zip(proposed.results) {
                        outbox.send(reply, (r.map_err(EtcdError::from), proposed.index));
                    }
                }
                Err(e) => {
                    failed.increment(1);
                    for reply in replies {
                        outbox.send(reply, (Err(e.clone_for_waiters()), 0));
                    }
                }
            }
            outbox.wake();
        });
    }
}
