//! Seeing the leader's process go away on the peer port, so a follower campaigns at once
//! instead of after the election timeout.
//!
//! A leader sends its AppendEntries over one long-lived connection to each follower. When
//! the leader's process ends (`kill -9`, a crash, a stop), its kernel closes that connection
//! and stops listening on its peer port. A follower whose connection from the current leader
//! closes probes the leader's first peer URL with a TCP connect (a few attempts 10 ms apart:
//! a dying process may close its accepted connections a moment before its listening
//! socket). When a connection is refused (nothing listens there), the leader is certainly
//! gone, and the follower starts an election (`Raft::trigger().elect()`) at once, instead of
//! ¾–1 election timeout after the last heartbeat; `mast_server_leader_gone_total` counts
//! these.
//!
//! A follower inside its lease on the old leader refuses every vote (openraft's guard
//! against disruptive candidates, which keeps a lagging member from deposing a live leader);
//! a follower's own campaign ends that lease. So the first campaigns of the followers that
//! saw the leader go may split the vote, and the next one wins: a candidate that nobody
//! answered campaigns again, the voter with the smallest ID after [`CAMPAIGN_SPACING`], the
//! next after twice that, and so on, at most [`CAMPAIGNS`] times; one that voted for another
//! candidate or learnt of a leader stops (campaigning against a new leader would depose it).
//! Measured on one machine (`scripts/bench-cluster.sh`): 26–39 ms from `kill -9` of the
//! leader under load to the next acknowledged write, one election per kill, against about
//! 1 s by the election timeout.
//!
//! Only liveness changes; Raft's safety does not depend on when an election starts. A leader
//! that is alive is never deposed this way: a connection closed for another reason (the
//! leader re-dialling, a member change) finds the port still listening, and a dead machine
//! or a cut link refuses nothing (the connect times out), so those are left to the election
//! timeout, as etcd leaves all of them.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::ServerState;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::types::{MemberId, Raft};

/// How long the probe of the leader's peer port may take. A refusal on a reachable host comes
/// back within a round trip; anything slower is not a refusal.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The follower's view of where its leader's AppendEntries come from.
pub(crate) struct LeaderWatch {
    raft: Raft,
    /// The remote address of the connection the current leader's last accepted
    /// AppendEntries came over, and that leader; taken when that connection closes.
    from: Mutex<Option<(SocketAddr, MemberId)>>,
}

impl LeaderWatch {
    pub(crate) fn new(raft: Raft) -> Arc<LeaderWatch> {
        Arc::new(LeaderWatch {
            raft,
            from: Mutex::new(None),
        })
    }

    /// Notes that `leader`'s AppendEntries, accepted, came over the connection from `addr`.
    pub(crate) fn accepted(&self, addr: Option<SocketAddr>, leader: MemberId) {
        let Some(addr) = addr else { return };
        let mut from = self.from.lock().unwrap_or_else(|e| e.into_inner());
        if *from != Some((addr, leader)) {
            tracing::debug!(%addr, leader = %format_args!("{leader:x}"), "the leader's AppendEntries come over a new connection");
            *from = Some((addr, leader));
        }
    }

    /// A peer connection from `addr` closed: when it was the leader's, checks in the
    /// background whether the leader is gone.
    fn closed(self: &Arc<Self>, addr: SocketAddr) {
        tracing::debug!(%addr, "a peer connection closed");
        let leader = {
            let mut from = self.from.lock().unwrap_or_else(|e| e.into_inner());
            match *from {
                Some((a, leader)) if a == addr => {
                    *from = None;
                    leader
                }
                _ => return,
            }
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        runtime.spawn(async move { me.check(leader).await });
    }

    /// Campaigns when `leader` is still this follower's leader and its peer port refuses
    /// connections, again while this member is a candidate that nobody answered (at most
    /// [`CAMPAIGNS`] elections).
    async fn check(&self, leader: MemberId) {
        let (url, rank) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            if m.current_leader != Some(leader) || m.state != ServerState::Follower {
                return;
            }
            let membership = m.membership_config.membership();
            let url = match membership.get_node(&leader) {
                Some(member) => member.peer_urls.first().cloned(),
                None => None,
            };
            // This member's place among the voters that remain, smallest ID first.
            let rank = membership
                .voter_ids()
                .filter(|&v| v != leader && v < m.id)
                .count() as u32;
            (url, rank)
        };
        let Some(target) = url.as_deref().and_then(host_port) else {
            return;
        };
        if !refuses(&target).await {
            return;
        }
        tracing::warn!(
            leader = %format_args!("{leader:x}"),
            peer = %target,
            "the leader's connection closed and its peer port refuses connections: \
             campaigning now instead of after the election timeout"
        );
        metrics::counter!("mast_server_leader_gone_total").increment(1);
        // Every follower that saw it campaigns at once, which ends its lease on the old leader
        // (a follower inside that lease refuses every vote). Those first campaigns may split
        // the vote; then a candidate nobody answered campaigns again, the voter with the
        // smallest ID first and the others later, rank by rank, so that they do not split
        // again. A member that voted for another candidate, or learnt of a leader, stops: a
        // campaign against a new leader would depose it.
        let spacing = CAMPAIGN_SPACING * (rank + 1);
        for _ in 0..CAMPAIGNS {
            let term = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow();
                let me = m.id;
                let campaigning =
                    m.state == ServerState::Candidate && m.vote.leader_id().voted_for() == Some(me);
                let follows_the_dead = m.state == ServerState::Follower
                    && (m.current_leader == Some(leader) || m.current_leader.is_none())
                    && m.vote.leader_id().voted_for().is_none_or(|v| v == leader);
                if !campaigning && !follows_the_dead {
                    return;
                }
                m.current_term
            };
            if let Err(e) = self.raft.trigger().elect().await {
                tracing::debug!(error = %e, "starting an election failed");
                return;
            }
            // Until the election this started is decided one way or the other: this member
            // leads, or follows (it voted for another candidate or saw a higher term), or
            // it is still a candidate after `spacing`.
            let decided = self
                .raft
                .wait(Some(spacing))
                .metrics(
                    |m| m.current_term > term && m.state != ServerState::Candidate,
                    "the campaign decided",
                )
                .await;
            if decided.is_ok() {
                return;
            }
        }
    }
}

/// Elections a follower starts by itself once it saw its leader gone, at most.
const CAMPAIGNS: u32 = 12;

/// How long the voter with the smallest ID waits for a leader before campaigning again; the
/// next voter waits twice as long, and so on.
const CAMPAIGN_SPACING: Duration = Duration::from_millis(40);

/// Connection attempts of the probe, [`PROBE_SPACING`] apart: a dying process may close the
/// connections it accepted a moment before its listening socket.
const PROBES: u32 = 5;

/// The pause between two connection attempts of the probe.
const PROBE_SPACING: Duration = Duration::from_millis(10);

/// Whether `target` (`host:port`) refuses TCP connections: true on the first refusal within
/// [`PROBES`] attempts, false when one times out or fails otherwise, or all connect.
async fn refuses(target: &str) -> bool {
    for attempt in 0..PROBES {
        match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            Ok(Ok(_)) if attempt + 1 < PROBES => tokio::time::sleep(PROBE_SPACING).await,
            _ => return false,
        }
    }
    false
}

/// `host:port` of a peer URL (`http://10.0.0.1:2380`, `https://m1.example:2380`), or `None`
/// when it has no explicit port.
fn host_port(url: &str) -> Option<String> {
    let uri: tonic::codegen::http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let port = uri.port_u16()?;
    Some(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// Wraps accepted peer connections for one [`crate::network::PeerService`]
/// ([`crate::network::PeerService::connection_watcher`]).
#[derive(Clone)]
pub struct ConnectionWatcher(pub(crate) Arc<LeaderWatch>);

impl ConnectionWatcher {
    /// `tcp`, telling the service's leader watch when it closes.
    pub fn watch(&self, tcp: TcpStream) -> WatchedConn {
        WatchedConn::new(tcp, self.0.clone())
    }
}

/// An accepted peer connection that tells its [`LeaderWatch`] when it closes (when the
/// server drops it, after the remote end closed or failed).
pub struct WatchedConn {
    inner: TcpStream,
    remote: Option<SocketAddr>,
    watch: Arc<LeaderWatch>,
}

impl WatchedConn {
    fn new(inner: TcpStream, watch: Arc<LeaderWatch>) -> WatchedConn {
        WatchedConn {
            remote: inner.peer_addr().ok(),
            inner,
            watch,
        }
    }
}

impl Drop for WatchedConn {
    fn drop(&mut self) {
        if let Some(addr) = self.remote {
            self.watch.closed(addr);
        }
    }
}

impl AsyncRead for WatchedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WatchedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for WatchedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn peer_urls_give_the_address_to_probe() {
        assert_eq!(
            host_port("http://127.0.0.1:2380").as_deref(),
            Some("127.0.0.1:2380")
        );
        assert_eq!(
            host_port("https://m1.example:12380/").as_deref(),
            Some("m1.example:12380")
        );
        assert_eq!(
            host_port("http://[::1]:2380").as_deref(),
            Some("[::1]:2380")
        );
        assert_eq!(host_port("http://127.0.0.1"), None);
        assert_eq!(host_port("not a url"), None);
    }
}
