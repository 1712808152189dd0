//! The `mast` binary: `mast serve` runs a server; the other subcommands are a client (etcdctl's
//! everyday verbs plus `service` and `config`), see [`cli`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mast_server::{Server, ServerConfig};

mod alloc;
mod cli;
mod cli_cluster;
mod cli_http;
mod migrate;
mod snapshot_file;
mod txn_script;

/// Mast: config center and service registry that speaks the etcd v3 API.
#[derive(Parser, Debug)]
#[command(name = "mast", version, about)]
struct Cli {
    #[command(flatten)]
    global: cli::Global,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a server (one embedded, durable member).
    Serve(Box<ServeArgs>),
    #[command(flatten)]
    Client(cli::ClientCmd),
}

/// Flags of `mast serve`, named as etcd's; each can also come from a `MAST_*` variable.
#[derive(Parser, Debug)]
struct ServeArgs {
    /// Human-readable name of this member.
    #[arg(long, env = "MAST_NAME", default_value = "default")]
    name: String,
    /// Directory for the database and the member identity.
    #[arg(long, env = "MAST_DATA_DIR", default_value = "mast-data")]
    data_dir: PathBuf,
    /// Comma-separated URLs to listen on for client traffic (gRPC and HTTP on each).
    #[arg(
        long,
        env = "MAST_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    listen_client_urls: String,
    /// Comma-separated client URLs announced to clients in MemberList (default: the listen
    /// URLs).
    #[arg(long, env = "MAST_ADVERTISE_CLIENT_URLS")]
    advertise_client_urls: Option<String>,
    /// Largest request in bytes (etcd's default: 1.5 MiB).
    #[arg(long, env = "MAST_MAX_REQUEST_BYTES", default_value_t = mast_server::node::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Most compares, or operations in one branch, of a txn (etcd's `--max-txn-ops`).
    #[arg(long, env = "MAST_MAX_TXN_OPS", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    max_txn_ops: u32,
    /// Size of the database file, in bytes, past which writes that grow it are refused and
    /// the `NOSPACE` alarm is raised (etcd's `--quota-backend-bytes`; 0 is etcd's default of
    /// 2 GiB, a negative value turns the quota off).
    #[arg(
        long,
        env = "MAST_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    quota_backend_bytes: i64,
    /// Audit log entries kept: who changed configs, instances, service settings, overrides,
    /// namespaces, users, roles and permissions (the oldest beyond are deleted; set the same
    /// on every member).
    #[arg(long, env = "MAST_AUDIT_RETENTION", default_value_t = mast_mvcc::audit::DEFAULT_AUDIT_RETENTION, value_parser = clap::value_parser!(u64).range(1..))]
    audit_retention: u64,
    /// Concurrent HTTP/2 streams (calls and watch / keepalive streams) one client connection
    /// may have open; a client opening more waits for one to end, as HTTP/2 says (etcd's
    /// `--max-concurrent-streams`; default unlimited, as etcd's).
    #[arg(long, env = "MAST_MAX_CONCURRENT_STREAMS", default_value_t = mast_server::http_conn::DEFAULT_MAX_CONCURRENT_STREAMS, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,
    /// Bytes kept free on the data directory's file system: a write that would leave less
    /// raises the `NOSPACE` alarm and is refused, as past the quota, before the disk itself
    /// runs out (0: free space is not watched). Default 64 MiB.
    #[arg(long, env = "MAST_DISK_RESERVE_BYTES", default_value_t = mast_server::disk::DEFAULT_DISK_RESERVE_BYTES)]
    disk_reserve_bytes: u64,
    /// Seconds between progress notifications to idle watchers that asked for them.
    #[arg(
        long,
        env = "MAST_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value_t = 600
    )]
    watch_progress_notify_interval: u64,
    /// Threads that serve client connections (gRPC and HTTP), each connection on one of them
    /// for its whole life; default: one per CPU core. The client port, the Nacos HTTP port
    /// and the Nacos gRPC port each have this many. Writes are applied and synced on two
    /// threads of their own besides these. On a machine shared with a busy neighbour (a load
    /// generator, say), fewer than the cores can serve more.
    #[arg(long, env = "MAST_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// Size of the store's page cache in MiB (the operating system caches the data file too;
    /// raise it for a working set much larger than the default).
    #[arg(long, env = "MAST_CACHE_MB", default_value_t = mast_mvcc::DEFAULT_CACHE_BYTES / (1024 * 1024))]
    cache_mb: usize,
    /// Size of each Raft log segment file in MiB, zero-filled when created.
    #[arg(long, env = "MAST_WAL_SIZE_MB", default_value_t = 64)]
    wal_size_mb: u64,
    /// MiB of applied commands between store checkpoints (durable redb commits): smaller
    /// means shorter pauses and less replay at start, larger fewer redb fsyncs.
    #[arg(long, env = "MAST_CHECKPOINT_MB", default_value_t = 8)]
    checkpoint_mb: u64,
    /// The initial cluster, `name=peerURL,…` (default: this member alone, at its advertised
    /// peer URLs). Ignored once the data directory holds a member.
    #[arg(long, env = "MAST_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join one after `member add`.
    #[arg(long, env = "MAST_INITIAL_CLUSTER_STATE", default_value = "new")]
    initial_cluster_state: String,
    /// Token that tells clusters apart: members of one cluster must share it.
    #[arg(
        long,
        env = "MAST_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    initial_cluster_token: String,
    /// This member's peer URLs as the other members reach it.
    #[arg(
        long,
        env = "MAST_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    initial_advertise_peer_urls: String,
    /// Comma-separated URLs to listen on for peer traffic (none: no peer listener, for a
    /// member alone).
    #[arg(long, env = "MAST_LISTEN_PEER_URLS")]
    listen_peer_urls: Option<String>,
    /// Milliseconds between the leader's heartbeats.
    #[arg(long, env = "MAST_HEARTBEAT_INTERVAL", default_value_t = 100)]
    heartbeat_interval: u64,
    /// Milliseconds a follower waits without a heartbeat before it campaigns (at least five
    /// heartbeat intervals, as etcd).
    #[arg(long, env = "MAST_ELECTION_TIMEOUT", default_value_t = 1000)]
    election_timeout: u64,
    /// How auth tokens are made: `simple`, or
    /// `jwt,pub-key=<path>,priv-key=<path>,sign-method=<RS256|ES256|HS256|…>[,ttl=5m]`.
    #[arg(long, env = "MAST_AUTH_TOKEN", default_value = "simple")]
    auth_token: String,
    /// Seconds a simple token stays valid without being used (renewed on use).
    #[arg(long, env = "MAST_AUTH_TOKEN_TTL", default_value_t = 300)]
    auth_token_ttl: u64,
    /// TLS certificate (PEM) for the client port; with `--key-file`, clients must use https.
    #[arg(long, env = "MAST_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// TLS private key (PEM) for the client port.
    #[arg(long, env = "MAST_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates are checked against.
    #[arg(long, env = "MAST_TRUSTED_CA_FILE")]
    trusted_ca_file: Option<PathBuf>,
    /// Refuse clients that present no certificate signed by `--trusted-ca-file`.
    #[arg(long, env = "MAST_CLIENT_CERT_AUTH")]
    client_cert_auth: bool,
    /// TLS certificate (PEM) for peer traffic, both as the peer listener's certificate and as
    /// the client certificate when dialling other members; peer URLs are then https.
    #[arg(long, env = "MAST_PEER_CERT_FILE")]
    peer_cert_file: Option<PathBuf>,
    /// TLS private key (PEM) for peer traffic.
    #[arg(long, env = "MAST_PEER_KEY_FILE")]
    peer_key_file: Option<PathBuf>,
    /// CA bundle (PEM) peer certificates are checked against (both directions); without it
    /// the system's roots.
    #[arg(long, env = "MAST_PEER_TRUSTED_CA_FILE")]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse members that dial in without a certificate signed by `--peer-trusted-ca-file`.
    #[arg(long, env = "MAST_PEER_CLIENT_CERT_AUTH")]
    peer_client_cert_auth: bool,
    /// Where the Nacos HTTP API listens (`host:port`), or `off`; the Nacos 2.x gRPC protocol
    /// listens on the same host at port + 1000, as clients expect. Unset: 127.0.0.1:8848 (and
    /// 9848), and when 8848 is taken Mast serves without the Nacos API and says so in its log
    /// (an address given here must be free).
    #[arg(long, env = "MAST_NACOS_ADDR")]
    nacos_addr: Option<String>,
    /// Where DNS is answered (`host:port`, UDP and TCP), or `off` (the default): A, AAAA and
    /// SRV records of services' healthy, enabled instances (see the `mast-dns` crate).
    #[arg(long, env = "MAST_DNS_ADDR", default_value = "off")]
    dns_addr: String,
    /// The DNS zone names are answered under.
    #[arg(long, env = "MAST_DNS_ZONE", default_value = mast_dns::DEFAULT_ZONE)]
    dns_zone: String,
    /// TTL of DNS answers, in seconds.
    #[arg(long, env = "MAST_DNS_TTL", default_value_t = mast_dns::DEFAULT_TTL)]
    dns_ttl: u32,
    /// With auth on, the Mast user whose permissions DNS queries are answered with (DNS
    /// carries no credentials); unset, DNS refuses queries while auth is on.
    #[arg(long, env = "MAST_DNS_USER")]
    dns_user: Option<String>,
    /// Log format: `text` or `json`. The level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "MAST_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

/// Parses etcd-style client URLs (`http://host:port`, comma-separated) into addresses.
fn parse_urls(urls: &str) -> anyhow::Result<(Vec<SocketAddr>, Vec<String>)> {
    let mut addrs = Vec::new();
    let mut clean = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (scheme, hostport) = if let Some(rest) = url.strip_prefix("http://") {
            ("http", rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            ("https", rest)
        } else if url.contains("://") {
            bail!("{url}: only http:// and https:// URLs are supported");
        } else {
            ("http", url)
        };
        let hostport = hostport.trim_end_matches('/');
        let addr = hostport
            .to_socket_addrs()
            .with_context(|| format!("{url}: not a host:port"))?
            .next()
            .with_context(|| format!("{url}: resolves to no address"))?;
        addrs.push(addr);
        clean.push(format!("{scheme}://{hostport}"));
    }
    if addrs.is_empty() {
        bail!("no client URL given");
    }
    Ok((addrs, clean))
}

fn init_logs(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("--log-format {other}: expected text or json"),
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(&args.log_format)?;
    let (listen, listen_urls) = parse_urls(&args.listen_client_urls)?;
    let tls = match (&args.cert_file, &args.key_file) {
        (Some(cert), Some(key)) => Some(mast_server::tls::TlsConfig {
            cert_file: cert.clone(),
            key_file: key.clone(),
            trusted_ca_file: args.trusted_ca_file.clone(),
            client_cert_auth: args.client_cert_auth,
        }),
        (None, None) => None,
        _ => bail!("--cert-file and --key-file go together"),
    };
    let wants_tls = listen_urls.iter().any(|u| u.starts_with("https://"));
    if wants_tls != tls.is_some() {
        bail!(
            "https:// client URLs need --cert-file and --key-file, and TLS files need https:// URLs"
        );
    }
    // etcd's container takes ETCD_ROOT_PASSWORD; MAST_ROOT_PASSWORD wins when both are set.
    let root_password = std::env::var("MAST_ROOT_PASSWORD")
        .or_else(|_| std::env::var("ETCD_ROOT_PASSWORD"))
        .ok()
        .filter(|p| !p.is_empty())
        .map(mast_server::node::Secret);
    let advertise = match &args.advertise_client_urls {
        Some(u) => parse_urls(u)?.1,
        None => listen_urls,
    };
    let mut config = ServerConfig::new(args.data_dir.clone());
    config.name = args.name.clone();
    config.listen = listen;
    config.advertise_client_urls = advertise;
    config.max_request_bytes = args.max_request_bytes;
    config.max_txn_ops = args.max_txn_ops as usize;
    config.quota_backend_bytes = args.quota_backend_bytes;
    config.audit_retention = args.audit_retention;
    config.disk_reserve_bytes = args.disk_reserve_bytes;
    config.max_concurrent_streams = args.max_concurrent_streams;
    config.cache_bytes = args.cache_mb.max(1) * 1024 * 1024;
    config.allocator_stats = Some(alloc::stats);
    config.wal_bytes = args.wal_size_mb.max(1) * 1024 * 1024;
    config.checkpoint_bytes = args.checkpoint_mb.max(1) * 1024 * 1024;
    config.tls = tls;
    config.auth_token = mast_server::tokens::TokenConfig::parse(&args.auth_token)?;
    config.auth_token_ttl = Duration::from_secs(args.auth_token_ttl.max(1));
    config.root_password = root_password;
    if let Some(n) = args.worker_threads {
        config.conn_threads = usize::from(n);
    }
    config.watch_progress_notify_interval =
        Duration::from_secs(args.watch_progress_notify_interval.max(1));
    config.initial_cluster = args.initial_cluster.clone();
    config.initial_cluster_state = match args.initial_cluster_state.as_str() {
        "new" => mast_raft::member::ClusterState::New,
        "existing" => mast_raft::member::ClusterState::Existing,
        other => bail!("invalid value {other:?} for --initial-cluster-state (new or existing)"),
    };
    config.initial_cluster_token = args.initial_cluster_token.clone();
    config.advertise_peer_urls = args
        .initial_advertise_peer_urls
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    let mut peer_urls: Vec<String> = config.advertise_peer_urls.clone();
    if let Some(p) = &args.listen_peer_urls {
        let (addrs, urls) = parse_urls(p)?;
        config.listen_peer = addrs;
        peer_urls.extend(urls);
    }
    config.peer_tls = match (&args.peer_cert_file, &args.peer_key_file) {
        (Some(cert), Some(key)) => Some(mast_raft::tls::PeerTls {
            cert_file: cert.clone(),
            key_file: key.clone(),
            trusted_ca_file: args.peer_trusted_ca_file.clone(),
            client_cert_auth: args.peer_client_cert_auth,
        }),
        (None, None) => None,
        _ => bail!("--peer-cert-file and --peer-key-file go together"),
    };
    let peer_https = peer_urls.iter().any(|u| u.starts_with("https://"));
    if peer_https != config.peer_tls.is_some() {
        bail!(
            "https:// peer URLs need --peer-cert-file and --peer-key-file, and peer TLS files \
             need https:// peer URLs"
        );
    }
    if args.election_timeout < 5 * args.heartbeat_interval {
        bail!(
            "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
            args.election_timeout,
            args.heartbeat_interval
        );
    }
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_interval.max(1));
    config.election_timeout = Duration::from_millis(args.election_timeout);
    tracing::info!(name = %config.name, data_dir = %config.data_dir.display(), "starting mast");
    // One port: the etcd API, the registry and config API, and the web console at /ui/.
    let mut server = Server::start_with(config, |node| {
        mast_registry::router(node).merge(mast_console::router())
    })
    .await?;
    serve_nacos(&mut server, args.nacos_addr.as_deref()).await?;
    let dns = match args.dns_addr.trim() {
        "off" => None,
        a => {
            let addr = tokio::net::lookup_host(a)
                .await
                .ok()
                .and_then(|mut it| it.next())
                .ok_or_else(|| anyhow::anyhow!("invalid --dns-addr {a:?} (host:port or off)"))?;
            let config =
                mast_dns::DnsConfig::new(&args.dns_zone, args.dns_ttl, args.dns_user.clone())?;
            let dns = mast_dns::DnsServer::start(server.node().clone(), addr, config).await?;
            tracing::info!(address = %dns.local_addr(), zone = %args.dns_zone, "serving DNS");
            Some(dns)
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some(dns) = dns {
        dns.shutdown().await;
    }
    server.shutdown().await;
    Ok(())
}

/// Starts the Nacos HTTP API on `--nacos-addr` (see [`ServeArgs::nacos_addr`]).
async fn serve_nacos(server: &mut Server, flag: Option<&str>) -> anyhow::Result<()> {
    let (addr, given) = match flag.map(str::trim) {
        Some("off") => return Ok(()),
        Some(a) => {
            let hostport = a
                .strip_prefix("http://")
                .or_else(|| a.strip_prefix("https://"))
                .unwrap_or(a);
            let addr = tokio::net::lookup_host(hostport)
                .await
                .ok()
                .and_then(|mut it| it.next())
                .ok_or_else(|| anyhow::anyhow!("invalid --nacos-addr {a:?} (host:port or off)"))?;
            (addr, true)
        }
        None => (
            SocketAddr::from(([127, 0, 0, 1], mast_nacos::DEFAULT_HTTP_PORT)),
            false,
        ),
    };
    let retention = mast_registry::RegistryConfig::from_env().history_retention;
    let (router, grpc) = mast_nacos::routers(server.node().clone(), retention);
    match server.serve_router(addr, router).await {
        Ok(local) => {
            tracing::info!(address = %local, "serving the Nacos HTTP API");
            // Nacos clients find the gRPC port themselves: the HTTP port + 1000.
            let grpc_port = local
                .port()
                .checked_add(mast_nacos::grpc::GRPC_PORT_OFFSET)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--nacos-addr port {} leaves no room for the gRPC port (+1000)",
                        local.port()
                    )
                })?;
            let grpc_addr = SocketAddr::new(local.ip(), grpc_port);
            match server.serve_router(grpc_addr, grpc).await {
                Ok(grpc_local) => {
                    tracing::info!(address = %grpc_local, "serving the Nacos 2.x gRPC protocol");
                    Ok(())
                }
                Err(e) if !given && addr_in_use(&e) => {
                    tracing::warn!(
                        address = %grpc_addr,
                        "the Nacos gRPC default port is taken; serving the Nacos HTTP API only (set --nacos-addr)"
                    );
                    Ok(())
                }
                Err(e) => Err(e.context("the Nacos gRPC port (--nacos-addr port + 1000)")),
            }
        }
        Err(e) if !given && addr_in_use(&e) => {
            tracing::warn!(
                address = %addr,
                "the Nacos API's default port is taken; serving without it (set --nacos-addr)"
            );
            Ok(())
        }
        Err(e) => Err(e.context("--nacos-addr")),
    }
}

/// Whether binding failed because the address is taken.
fn addr_in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Cmd::Serve(args) = &cli.command
        && let Some(n) = args.worker_threads
    {
        runtime.worker_threads(usize::from(n));
    }
    let result = runtime
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| match cli.command {
            Cmd::Serve(args) => rt.block_on(serve(*args)),
            Cmd::Client(cmd) => rt.block_on(cli::run(cli.global, cmd)),
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_urls_parse_like_etcd() {
        let (a, u) = parse_urls("http://127.0.0.1:2379,http://localhost:4001").unwrap();
        assert_eq!(a[0], "127.0.0.1:2379".parse().unwrap());
        assert_eq!(u[1], "http://localhost:4001");
        assert_eq!(
            parse_urls("https://127.0.0.1:2379").unwrap().1[0],
            "https://127.0.0.1:2379"
        );
        assert!(parse_urls("unix://x").is_err());
        assert!(parse_urls("").is_err());
        assert!(parse_urls("http://nohost").is_err());
    }
}
