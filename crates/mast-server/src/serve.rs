//! Starting and stopping a server: one port serving gRPC (HTTP/2) and HTTP/1.1 routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mast_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use mast_proto::v3electionpb::election_server::ElectionServer;
use mast_proto::v3lockpb::lock_server::LockServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::concurrency::{ElectionService, LockService};
use crate::api::{
    auth::AuthService, cluster::ClusterService, kv::KvService, lease::LeaseService,
    maintenance::MaintenanceService, watch::WatchService,
};
use crate::node::{Node, ServerConfig};

/// gRPC framing and metadata allowance on top of the largest request, as etcd's
/// `grpcOverheadBytes` (512 KiB).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How long a shutdown waits for open connections before it closes them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running server.
pub struct Server {
    node: Arc<Node>,
    addrs: Vec<SocketAddr>,
    peer_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    /// Turned true when the shutdown grace is over: connection threads drop what is left.
    force: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    conns: Vec<crate::conn_threads::ConnThreads>,
}

/// Builds the router that serves every gRPC service and HTTP route of `node`.
pub fn app(node: Arc<Node>) -> axum::Router {
    app_with(node, axum::Router::new())
}

/// Builds the router of `node` with `extra` routes (Mast's registry and config API) merged in.
/// `extra` must not define a fallback.
pub fn app_with(node: Arc<Node>, extra: axum::Router) -> axum::Router {
    let max_in = node.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // One member that is always its own leader: serving as soon as the store is open.
    drop(health_reporter.set_service_status("", tonic_health::ServingStatus::Serving));
    tonic::service::Routes::from(crate::http::router(node.clone()).merge(extra))
        .add_service(
            KvServer::new(KvService::new(node.clone()))
                .max_decoding_message_size(max_in)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            WatchServer::new(WatchService::new(node.clone()))
                .max_decoding_message_size(max_in)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            LeaseServer::new(LeaseService::new(node.clone())).max_decoding_message_size(max_in),
        )
        .add_service(
            ClusterServer::new(ClusterService::new(node.clone())).max_decoding_message_size(max_in),
        )
        .add_service(
            MaintenanceServer::new(MaintenanceService::new(node.clone()))
                .max_decoding_message_size(max_in)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            AuthServer::new(AuthService::new(node.clone())).max_decoding_message_size(max_in),
        )
        .add_service(
            LockServer::new(LockService::new(node.clone())).max_decoding_message_size(max_in),
        )
        .add_service(
            ElectionServer::new(ElectionService::new(node.clone()))
                .max_decoding_message_size(max_in),
        )
        .add_service(health_service)
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            node,
            crate::guard::check,
        ))
}

/// What is known of a connection's client, put in each request's extensions: its address
/// (for the login throttle and logs) and, over TLS with a verified client certificate, the
/// certificate's common name (the user when no token is sent, as etcd's `--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct ClientAddr(pub std::net::SocketAddr, pub Option<Arc<str>>);

fn spawn_serve<L: crate::http_conn::ClientListener>(
    listener: L,
    app: axum::Router,
    stop: watch::Receiver<bool>,
    max_streams: u32,
) -> JoinHandle<()> {
    tokio::spawn(crate::http_conn::serve(listener, app, stop, max_streams))
}

/// Serves the peer protocol (`mastraftpb.Peer`) on `listener` until `stop`, over TLS when
/// the node has peer TLS.
///
/// # Errors
/// When the peer TLS files cannot be read or parsed.
fn spawn_peer(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let svc = mast_raft::network::PeerService::new(
        node.consensus.raft.clone(),
        node.identity.cluster_id,
        node.identity.member_id,
        node.raft_dir.clone(),
        Arc::new(crate::consensus::Forwarder {
            node: Arc::downgrade(&node),
        }),
    );
    let mut builder = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(tls) = &node.config.peer_tls {
        builder = builder
            .tls_config(tls.server_config()?)
            .context("peer TLS (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file)")?;
    }
    drop(node);
    Ok(tokio::spawn(async move {
        // `Server::tcp_nodelay` covers only listeners tonic binds itself: without it here a
        // follower's hand-over waited on Nagle and delayed ACKs (~40 ms per answer).
        // Each connection is watched: the closing of the leader's tells a follower to check
        // whether the leader is gone (`mast_raft::leader_watch`).
        let watcher = svc.connection_watcher();
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            move |conn| {
                conn.map(|tcp| {
                    let _ = tcp.set_nodelay(true);
                    watcher.watch(tcp)
                })
            },
        );
        let r = builder
            .add_service(svc.into_server())
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "peer listener failed");
        }
    }))
}

impl Server {
    /// Opens the store and starts listening on every address of `config.listen`.
    ///
    /// # Errors
    /// When the store cannot be opened or an address cannot be bound.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        Self::start_with(config, |_| axum::Router::new()).await
    }

    /// As [`Server::start`], serving also the routes `extra` builds for the node (used by the
    /// `mast` binary for the registry and config HTTP API).
    ///
    /// # Errors
    /// When the store cannot be opened or an address cannot be bound.
    pub async fn start_with(
        config: ServerConfig,
        extra: impl FnOnce(Arc<Node>) -> axum::Router,
    ) -> anyhow::Result<Server> {
        crate::http::prometheus();
        let (stop, stop_rx) = watch::channel(false);
        let (force, force_rx) = watch::channel(false);
        let node = Node::open(config, stop_rx.clone()).await?;
        node.spawn_lease_expiry();
        let mut tasks = Vec::new();
        // The exporter keeps every histogram sample until it is drained: drain every 5 s, so
        // memory stays flat when nobody scrapes /metrics.
        let mut upkeep_stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => crate::http::prometheus().run_upkeep(),
                    _ = upkeep_stop.changed() => return,
                }
            }
        }));
        let mut peer_addrs = Vec::new();
        for addr in node.config.listen_peer.clone() {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            peer_addrs.push(local);
            tasks.push(spawn_peer(node.clone(), listener, stop_rx.clone())?);
            tracing::info!(address = %local, "serving peers");
        }
        // As etcd, clients are served once this member has published its name and client URLs
        // (a member list read right after start shows them), but a member that cannot reach
        // a quorum serves anyway after a bound, so its status and serializable reads answer.
        let mut publish = crate::api::cluster::spawn_publish(node.clone());
        let bound = 3 * node.config.election_timeout + Duration::from_secs(1);
        if tokio::time::timeout(bound, &mut publish).await.is_err() {
            tracing::warn!(
                waited = ?bound,
                "not yet published to the cluster (no quorum?); serving clients anyway"
            );
        }
        // Unlike etcd, no peer listener is the default (a member alone needs none): a member
        // of a larger cluster restarted without one runs, but the others cannot reach it.
        // Checked once the membership is loaded (by now: published, or waited for).
        let members = node.consensus.membership().nodes().count();
        if node.config.listen_peer.is_empty() && members > 1 {
            tracing::warn!(
                members,
                "this member belongs to a cluster of {members} members but listens for no \
                 peers: the others cannot reach it; start it with --listen-peer-urls"
            );
        }
        if let Some(password) = node.config.root_password.clone() {
            let alone = node.consensus.membership().nodes().count() <= 1;
            let boot = {
                let node = node.clone();
                async move {
                    match crate::api::auth::bootstrap_root(&node, &password.0).await {
                        Ok(true) => {
                            tracing::info!("created user root with role root and enabled auth");
                            Ok(())
                        }
                        Ok(false) => {
                            tracing::info!(
                                "root user exists; root password from the environment not applied"
                            );
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if alone {
                if let Err(e) = boot.await {
                    anyhow::bail!("bootstrapping root failed: {e}");
                }
            } else {
                // A cluster's first leader may need the other members to start first.
                tokio::spawn(async move {
                    if let Err(e) = boot.await {
                        tracing::error!(error = %e, "bootstrapping root failed");
                    }
                });
            }
        }
        let app = app_with(node.clone(), extra(node.clone()));
        let mut addrs = Vec::new();
        let mut conns = Vec::new();
        let tls = match &node.config.tls {
            Some(t) => Some(t.server_config()?),
            None => None,
        };
        for addr in node.config.listen.clone() {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            addrs.push(local);
            let rx = stop_rx.clone();
            match &tls {
                Some(cfg) => tasks.push(spawn_serve(
                    crate::tls::TlsListener::new(listener, cfg.clone())?,
                    app.clone(),
                    rx,
                    node.config.max_concurrent_streams,
                )),
                None if node.config.conn_threads > 0 => {
                    conns.push(crate::conn_threads::ConnThreads::start(
                        listener,
                        node.config.conn_threads,
                        app.clone(),
                        rx,
                        force_rx.clone(),
                        node.config.max_concurrent_streams,
                    )?);
                }
                None => tasks.push(spawn_serve(
                    crate::authority::FixListener(listener),
                    app.clone(),
                    rx,
                    node.config.max_concurrent_streams,
                )),
            }
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(address = %local, scheme, "serving etcd v3 gRPC, JSON gateway, /health and /metrics");
        }
        Ok(Server {
            node,
            addrs,
            peer_addrs,
            stop,
            force,
            tasks,
            conns,
        })
    }

    /// The bound client addresses (useful when the config asked for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serves `router` (a protocol of its own, such as the Nacos API) on `addr` until the
    /// server shuts down, over TLS when the client port has TLS (same certificate and client
    /// certificate check), with the client address in each request's extensions as on the
    /// client port, and plain-TCP connections on connection threads of its own as there
    /// (`ServerConfig::conn_threads`). Returns the bound address.
    ///
    /// # Errors
    /// When `addr` cannot be bound (the `std::io::Error` is in the chain, so a caller can tell
    /// `AddrInUse`), or the TLS files cannot be read.
    pub async fn serve_router(
        &mut self,
        addr: SocketAddr,
        router: axum::Router,
    ) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        let rx = self.stop.subscribe();
        let max_streams = self.node.config.max_concurrent_streams;
        let task = match &self.node.config.tls {
            Some(t) => spawn_serve(
                crate::tls::TlsListener::new(listener, t.server_config()?)?,
                router,
                rx,
                max_streams,
            ),
            None if self.node.config.conn_threads > 0 => {
                // As the client port: each connection lives on one connection thread.
                self.conns.push(crate::conn_threads::ConnThreads::start(
                    listener,
                    self.node.config.conn_threads,
                    router,
                    rx,
                    self.force.subscribe(),
                    max_streams,
                )?);
                return Ok(local);
            }
            None => spawn_serve(
                crate::authority::FixListener(listener),
                router,
                rx,
                max_streams,
            ),
        };
        self.tasks.push(task);
        Ok(local)
    }

    /// The bound peer addresses.
    pub fn peer_addrs(&self) -> &[SocketAddr] {
        &self.peer_addrs
    }

    /// The node behind the server.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Stops accepting connections, ends open streams and waits (at most a few seconds) for
    /// connections to close. Every acknowledged write is already on disk.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let aborts: Vec<_> = self.tasks.iter().map(|t| t.abort_handle()).collect();
        let (tasks, conns) = (self.tasks, self.conns);
        let mut all_done = std::pin::pin!(async move {
            for t in tasks {
                let _ = t.await;
            }
            for c in conns {
                c.join().await;
            }
        });
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut all_done)
            .await
            .is_err()
        {
            for a in aborts {
                a.abort();
            }
            let _ = self.force.send(true);
            // Connection threads drop their runtimes now; that takes moments, not seconds.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, all_done).await;
        }
        // Raft stops before the store closes: nothing is applied to a closed store.
        self.node.stop_consensus().await;
        // Close the database now (waiting for in-flight reads and the current write batch),
        // so the file is released even if a connection task still holds the node.
        if let Err(e) = self.node.store.close() {
            tracing::warn!(error = %e, "closing the store failed");
        }
        drop(self.node);
        tracing::info!("server stopped");
    }
}
