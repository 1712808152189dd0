//! Connection threads: every plain-TCP client connection is served, for its whole life, by one
//! of N threads that each run a single-threaded tokio runtime, the model of actix-web's workers
//! and of thread-per-core servers.
//!
//! On the shared multi-threaded runtime, a task made ready by one worker while the others sleep
//! wakes a sleeping worker to steal it; under many small requests on few cores those wake-ups
//! (futex calls and context switches) left about a fifth of the CPU idle. Here the accept loop
//! hands each accepted socket, round-robin, to one thread, whose runtime then owns its I/O, its
//! HTTP/1.1 or HTTP/2 connection task and the tasks its requests spawn (watch streams, SSE).
//! The store, the writer and the watch hub are shared as before; their channels work across
//! runtimes. Each thread has a mailbox for the writer's replies (`writer::Mailbox`), so one
//! group commit wakes each thread once, not once per reply.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::authority::AuthorityFixStream;
use crate::combine::CombinedWrites;
use crate::serve::ClientAddr;

/// A socket accepted by the accept loop, waiting for its connection thread.
type Handoff = (std::net::TcpStream, SocketAddr);

/// The threads serving plain-TCP connections of one listener, and their accept loop.
pub(crate) struct ConnThreads {
    threads: Vec<JoinHandle<()>>,
    accept: tokio::task::JoinHandle<()>,
}

impl ConnThreads {
    /// Starts `n` (at least one) connection threads serving `app`, and an accept loop on the
    /// calling runtime that gives them the connections of `listener`. Connections are served
    /// until `stop` turns true (then gracefully, as `axum::serve`'s graceful shutdown) or
    /// `force` turns true (then dropped at once).
    ///
    /// # Errors
    /// When a thread or its runtime cannot be created.
    pub(crate) fn start(
        listener: TcpListener,
        n: usize,
        app: axum::Router,
        stop: watch::Receiver<bool>,
        force: watch::Receiver<bool>,
        max_streams: u32,
    ) -> std::io::Result<ConnThreads> {
        let local = listener.local_addr()?;
        let mut senders = Vec::with_capacity(n.max(1));
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let (tx, rx) = mpsc::unbounded_channel::<Handoff>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let app = app.clone();
            let stop = stop.clone();
            let mut force = force.clone();
            let thread = std::thread::Builder::new()
                .name(format!("mast-conn-{i}"))
                .spawn(move || {
                    let mailbox = crate::writer::Mailbox::install();
                    runtime.block_on(async move {
                        tokio::spawn(mailbox.deliver());
                        let listener = ChannelListener { rx, local };
                        let serve = crate::http_conn::serve(listener, app, stop, max_streams);
                        tokio::select! {
                            _ = serve => {}
                            _ = force.wait_for(|f| *f) => {}
                        }
                    });
                    // Dropping the runtime drops whatever connection tasks are left.
                    drop(runtime);
                })?;
            senders.push(tx);
            threads.push(thread);
        }
        let accept = tokio::spawn(accept_loop(listener, senders, stop));
        Ok(ConnThreads { threads, accept })
    }

    /// Waits until the accept loop and every thread have ended (after `stop` or `force`).
    pub(crate) async fn join(self) {
        let _ = self.accept.await;
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Accepts connections and hands them round-robin to the connection threads, until `stop`.
async fn accept_loop(
    listener: TcpListener,
    senders: Vec<mpsc::UnboundedSender<Handoff>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, addr) = match accepted {
            Ok(v) => v,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Deregistered from this runtime here; the connection thread registers it with its own.
        let std = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "handing a connection over failed");
                continue;
            }
        };
        // A thread only goes away at shutdown; then the connection is dropped (closed).
        let _ = senders[next % senders.len()].send((std, addr));
        next = next.wrapping_add(1);
    }
}

/// The listener a connection thread serves: sockets handed over by the accept loop.
struct ChannelListener {
    rx: mpsc::UnboundedReceiver<Handoff>,
    local: SocketAddr,
}

impl axum::serve::Listener for ChannelListener {
    type Io = AuthorityFixStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some((std, addr)) = self.rx.recv().await else {
                // The accept loop has ended: no more connections, serve the open ones.
                return std::future::pending().await;
            };
            match tokio::net::TcpStream::from_std(std) {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return (AuthorityFixStream::new(CombinedWrites::new(tcp)), addr);
                }
                Err(e) => tracing::warn!(error = %e, "registering a connection failed"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl crate::http_conn::ClientListener for ChannelListener {
    fn client(_io: &Self::Io, addr: SocketAddr) -> ClientAddr {
        ClientAddr(addr, None)
    }
}
