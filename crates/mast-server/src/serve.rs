//! Starting and stopping a server: one port serving gRPC (HTTP/2) and HTTP/1.1 routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mast_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Builds the router that serves every gRPC service and HTTP route of `node`.
pub fn app(node: Arc<Node>) -> axum::Router {
    let max_in = node.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // One member that is always its own leader: serving as soon as the store is open.
    drop(health_reporter.set_service_status("", tonic_health::ServingStatus::Serving));
    tonic::service::Routes::from(crate::http::router(node.clone()))
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
        .add_service(AuthServer::new(AuthService::new(node)).max_decoding_message_size(max_in))
        .add_service(health_service)
        .prepare()
        .into_axum_router()
}

impl Server {
    /// Opens the store and starts listening on every address of `config.listen`.
    ///
    /// # Errors
    /// When the store cannot be opened or an address cannot be bound.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        crate::http::prometheus();
        let (stop, stop_rx) = watch::channel(false);
        let node = Node::open(config, stop_rx.clone())?;
        node.spawn_lease_expiry();
        let app = app(node.clone());
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for addr in node.config.listen.clone() {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            addrs.push(local);
            let listener = crate::authority::FixListener(listener);
            let app = app.clone();
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "client listener failed");
                }
            }));
            tracing::info!(address = %local, "serving etcd v3 gRPC, JSON gateway, /health and /metrics");
        }
        Ok(Server {
            node,
            addrs,
            stop,
            tasks,
        })
    }

    /// The bound client addresses (useful when the config asked for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The node behind the server.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Stops accepting connections, ends open streams and waits (at most a few seconds) for
    /// connections to close. Every acknowledged write is already on disk.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, t).await.is_err() {
                abort.abort();
            }
        }
        // Close the database now (waiting for in-flight reads and the current write batch),
        // so the file is released even if a connection task still holds the node.
        if let Err(e) = self.node.store.close() {
            tracing::warn!(error = %e, "closing the store failed");
        }
        drop(self.node);
        tracing::info!("server stopped");
    }
}
