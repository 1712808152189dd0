//! A Mast server with the Nacos API, in process, for the Nacos API tests.

#![allow(dead_code)]

use mast_server::node::Secret;
use mast_server::{Server, ServerConfig};

/// A server serving etcd on one port and the Nacos HTTP API on another.
pub struct Nacos {
    server: Option<Server>,
    /// The etcd client URL (`http://127.0.0.1:<port>`).
    pub etcd: String,
    /// The Nacos v1 base URL (`http://127.0.0.1:<port>/nacos/v1`).
    pub base: String,
    /// A client.
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Nacos {
    /// Starts one, with auth on and root's password when `root_password` is given.
    pub async fn start_with(root_password: Option<&str>) -> Nacos {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(dir.path());
        cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
        cfg.root_password = root_password.map(|p| Secret(p.into()));
        let mut server = Server::start_with(cfg, mast_registry::router)
            .await
            .unwrap();
        let router = mast_nacos::router(server.node().clone(), 100);
        let addr = server
            .serve_router("127.0.0.1:0".parse().unwrap(), router)
            .await
            .unwrap();
        Nacos {
            etcd: format!("http://{}", server.local_addrs()[0]),
            server: Some(server),
            base: format!("http://{addr}/nacos/v1"),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }
}

impl Drop for Nacos {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            drop(tokio::spawn(s.shutdown()));
        }
    }
}
