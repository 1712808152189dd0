//! Where the traffic goes: endpoint parsing, the loopback guard and the gRPC connections.
//!
//! A benchmark is a load generator, so by default it refuses any address outside the loopback
//! range (127.0.0.0/8, ::1): pointing it at someone else's server by mistake must be hard.
//! `--allow-non-loopback` lifts the guard. Host names are resolved once, here, and every
//! connection goes to the address that was checked.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};

/// One server address, checked and resolved.
#[derive(Debug, Clone)]
pub struct Target {
    /// What the user wrote, for reports (`127.0.0.1:2379`).
    pub label: String,
    /// The address connections go to.
    pub addr: SocketAddr,
}

/// Parses a comma-separated endpoint list (`host:port` or `http://host:port`) and resolves
/// each; refuses non-loopback addresses unless `allow_non_loopback`.
pub fn parse_endpoints(list: &str, allow_non_loopback: bool) -> anyhow::Result<Vec<Target>> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let hostport = if let Some(rest) = raw.strip_prefix("http://") {
            rest
        } else if raw.starts_with("https://") {
            bail!("{raw}: TLS endpoints are not supported by mast-bench");
        } else if raw.contains("://") {
            bail!("{raw}: expected host:port or http://host:port");
        } else {
            raw
        };
        let hostport = hostport.trim_end_matches('/');
        let addrs: Vec<SocketAddr> = hostport
            .to_socket_addrs()
            .with_context(|| format!("{raw}: not a host:port"))?
            .collect();
        // Prefer an address that passes the guard (localhost may resolve to ::1 and 127.0.0.1).
        let addr = addrs
            .iter()
            .copied()
            .find(|a| is_loopback(a.ip()))
            .or_else(|| addrs.first().copied())
            .with_context(|| format!("{raw}: resolves to no address"))?;
        if !allow_non_loopback && !is_loopback(addr.ip()) {
            bail!(
                "{raw} resolves to {}, which is not a loopback address; \
                 pass --allow-non-loopback to benchmark it anyway",
                addr.ip()
            );
        }
        out.push(Target {
            label: hostport.to_string(),
            addr,
        });
    }
    if out.is_empty() {
        bail!("no endpoint given");
    }
    Ok(out)
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Opens `conns` HTTP/2 connections, spread round-robin over `targets`. Each tonic [`Channel`]
/// built with `connect` is one TCP connection; clients that share a channel multiplex streams
/// over it, as etcd's `benchmark --conns` does.
pub async fn connect_all(targets: &[Target], conns: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(conns.max(1));
    for i in 0..conns.max(1) {
        let target = &targets[i % targets.len()];
        channels.push(connect(target, Duration::from_secs(5)).await?);
    }
    Ok(channels)
}

/// Opens one connection to `target`, failing after `timeout`.
pub async fn connect(target: &Target, timeout: Duration) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{}", target.addr))
        .context("endpoint URL")?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_adaptive_window(true);
    endpoint
        .connect()
        .await
        .with_context(|| format!("connecting to {}", target.label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_pass_the_guard() {
        let t = parse_endpoints("127.0.0.1:2379,http://localhost:2380/", false).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].addr, "127.0.0.1:2379".parse().unwrap());
        assert!(t[1].addr.ip().is_loopback());
        assert!(parse_endpoints("[::1]:2379", false).is_ok());
        assert!(parse_endpoints("127.8.9.10:1", false).is_ok());
    }

    #[test]
    fn other_addresses_need_the_flag() {
        for bad in [
            "10.0.0.1:2379",
            "192.168.1.2:2379",
            "8.8.8.8:2379",
            "[2001:db8::1]:2379",
        ] {
            let err = parse_endpoints(bad, false).unwrap_err().to_string();
            assert!(err.contains("--allow-non-loopback"), "{bad}: {err}");
            assert!(parse_endpoints(bad, true).is_ok());
        }
        assert!(parse_endpoints("https://127.0.0.1:2379", false).is_err());
        assert!(parse_endpoints("", false).is_err());
    }
}
