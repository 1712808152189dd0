//! Serving the connections of one listener: HTTP/1.1 or HTTP/2 (by the client's first bytes),
//! each request carrying the [`ClientAddr`] of its connection, with a graceful shutdown — what
//! `axum::serve` does — plus the HTTP/2 settings `axum::serve` cannot take: the limit of
//! concurrent streams per connection (`--max-concurrent-streams`, as etcd's, unlimited by
//! default where hyper would stop at 200).

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::serve::ClientAddr;

/// The default of `--max-concurrent-streams`: as etcd's (`math.MaxUint32`), no limit.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = u32::MAX;

/// A listener whose connections tell who the client is.
pub trait ClientListener: axum::serve::Listener<Addr = SocketAddr> {
    /// The client of a connection just accepted from `addr`.
    fn client(io: &Self::Io, addr: SocketAddr) -> ClientAddr;
}

impl ClientListener for crate::authority::FixListener {
    fn client(_io: &Self::Io, addr: SocketAddr) -> ClientAddr {
        ClientAddr(addr, None)
    }
}

impl ClientListener for crate::tls::TlsListener {
    fn client(io: &Self::Io, addr: SocketAddr) -> ClientAddr {
        ClientAddr(addr, crate::tls::peer_common_name(io.get_ref().get_ref()))
    }
}

/// Serves `app` on every connection `listener` accepts, each connection on its own task of
/// the current runtime, until `stop` turns true; then stops accepting, lets open
/// connections finish what they are doing (HTTP/2 GOAWAY, HTTP/1.1 close after the current
/// request; long streams end through the node's shutdown signal) and returns once all have
/// closed. `max_streams` bounds the concurrent HTTP/2 streams of one connection (a client
/// opening more waits, as HTTP/2 says).
pub async fn serve<L: ClientListener>(
    mut listener: L,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
    max_streams: u32,
) {
    // Every connection task holds a receiver; the sender's `closed` is the last one ending.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let (io, addr) = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let client = L::client(&io, addr);
        let app = app.clone();
        let service = hyper::service::service_fn(
            move |req: http::Request<hyper::body::Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(client.clone()));
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.oneshot(req).await.unwrap_or_else(|e| match e {})) }
            },
        );
        let mut stop = stop.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http2()
                .enable_connect_protocol()
                .max_concurrent_streams(max_streams);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::trace!(client = %addr, error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = stop.wait_for(|s| *s), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(open);
        });
    }
    drop(open_rx);
    open_tx.closed().await;
}
