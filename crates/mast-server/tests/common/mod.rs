//! Helpers shared by the server's integration tests: a server on a loopback port and a client
//! connection to it.

use mast_server::{Server, ServerConfig};
use tonic::transport::Channel;

/// A server on `127.0.0.1:0` over `dir`, serving connections on `threads` connection threads
/// (0: on the main runtime), with `edit` applied to its configuration last.
pub async fn start(
    dir: &std::path::Path,
    threads: usize,
    edit: impl FnOnce(&mut ServerConfig),
) -> Server {
    let mut cfg = ServerConfig::new(dir);
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.conn_threads = threads;
    edit(&mut cfg);
    Server::start(cfg).await.unwrap()
}

/// One TCP connection to `server` (a tonic `Channel` built with `connect`): every call made on
/// it, and on its clones, shares that connection.
pub async fn connect(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.local_addrs()[0]))
        .unwrap()
        .connect()
        .await
        .unwrap()
}
