//! The node: everything one Mast member shares between its gRPC services and its HTTP routes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mast_mvcc::{Command, CommandResult, LoggedStore, MvccError, Store};
use mast_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use tokio::sync::watch;

use crate::authz::Caller;
use crate::authz::Identity as CallerIdentity;
use crate::error::EtcdError;
use crate::lessor::{LeaseTiming, Lessor, SystemClock};
use crate::watch::WatchHub;
use crate::writer::Writer;

/// The largest request accepted, in bytes, as etcd's `--max-request-bytes` default (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// The backend quota when `--quota-backend-bytes` is 0, as etcd's `DefaultQuotaBytes` (2 GiB).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// What the heap allocator reports about itself, in bytes (see
/// [`ServerConfig::allocator_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes the program holds in live allocations.
    pub allocated: u64,
    /// Bytes of the allocator's pages resident in memory: live allocations, the allocator's
    /// own metadata and freed pages not yet returned to the OS.
    pub resident: u64,
}

/// Settings of one server, as given by `mast serve` flags.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Human-readable member name (`--name`).
    pub name: String,
    /// Directory holding the database and the member identity (`--data-dir`).
    pub data_dir: PathBuf,
    /// Addresses to listen on for clients, as `host:port` (from `--listen-client-urls`).
    pub listen: Vec<std::net::SocketAddr>,
    /// Client URLs announced in `MemberList` (`--advertise-client-urls`).
    pub advertise_client_urls: Vec<String>,
    /// Largest request in bytes; larger ones get `etcdserver: request is too large`.
    pub max_request_bytes: usize,
    /// Most compares, or ops in one branch, of a txn (`--max-txn-ops`, etcd's default 128);
    /// more get `etcdserver: too many operations in txn request`.
    pub max_txn_ops: usize,
    /// `--quota-backend-bytes`, as etcd: 0 is etcd's default of 2 GiB, a negative value turns
    /// the quota off. A put, a txn that puts or a lease grant that would take the database
    /// file to this size raises this member's `NOSPACE` alarm and is refused.
    pub quota_backend_bytes: i64,
    /// Concurrent HTTP/2 streams one client connection may have open
    /// (`--max-concurrent-streams`, as etcd's; default unlimited).
    pub max_concurrent_streams: u32,
    /// `--disk-reserve-bytes`: free space kept on the data directory's file system (0: not
    /// watched). A put, a txn that puts or a lease grant that would leave less free raises
    /// `NOSPACE` as the backend quota does, before the disk itself runs out ([`crate::disk`]).
    pub disk_reserve_bytes: u64,
    /// How often idle watchers that asked for progress notifications get one.
    pub watch_progress_notify_interval: Duration,
    /// Size of the store's page cache in bytes.
    pub cache_bytes: usize,
    /// Audit log entries kept (`--audit-retention`); the oldest beyond are deleted. Set the
    /// same on every member.
    pub audit_retention: u64,
    /// Size of each Raft log segment file in bytes (`--wal-size-mb`).
    pub wal_bytes: u64,
    /// Bytes of applied commands between store checkpoints (durable redb commits)
    /// (`--checkpoint-mb`).
    pub checkpoint_bytes: u64,
    /// Reads the heap allocator's own counters when `/metrics` is scraped (exported as
    /// `mast_allocator_allocated_bytes` and `mast_allocator_resident_bytes`); `None` when the
    /// binary's allocator keeps none (the `mast` binary sets it for jemalloc).
    pub allocator_stats: Option<fn() -> Option<AllocatorStats>>,
    /// `--initial-cluster` (`name=peerURL,…`); `None`: this member alone, at its advertised
    /// peer URLs.
    pub initial_cluster: Option<String>,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: mast_raft::member::ClusterState,
    /// `--initial-cluster-token` (etcd's default `etcd-cluster`).
    pub initial_cluster_token: String,
    /// `--initial-advertise-peer-urls` (etcd's default `http://localhost:2380`).
    pub advertise_peer_urls: Vec<String>,
    /// Addresses to listen on for peers (`--listen-peer-urls`); none: no peer listener (a
    /// member alone needs none).
    pub listen_peer: Vec<std::net::SocketAddr>,
    /// `--heartbeat-interval` (100 ms, as etcd's).
    pub heartbeat_interval: Duration,
    /// `--election-timeout` (1000 ms, as etcd's).
    pub election_timeout: Duration,
    /// The clock lease deadlines are read from (tests inject a manual one).
    pub lease_clock: LeaseClock,
    /// TLS on the client port; plain TCP when `None`.
    pub tls: Option<crate::tls::TlsConfig>,
    /// TLS on the peer port and for dialling `https://` peer URLs (`--peer-cert-file` and
    /// friends); `None`: plain peer traffic.
    pub peer_tls: Option<mast_raft::tls::PeerTls>,
    /// How auth tokens are made (`--auth-token`).
    pub auth_token: crate::tokens::TokenConfig,
    /// Idle lifetime of simple tokens (`--auth-token-ttl`, seconds in etcd; default 300 s).
    pub auth_token_ttl: Duration,
    /// Root password to bootstrap auth with at first start (`MAST_ROOT_PASSWORD`).
    pub root_password: Option<Secret>,
    /// Threads that serve plain-TCP client connections, each with a single-threaded runtime
    /// of its own (`--worker-threads`; default one per CPU core), for each plain-TCP listener
    /// (the client port and every [`crate::Server::serve_router`] listener); 0 serves them on the
    /// calling tokio runtime instead. TLS connections are always served on the calling
    /// runtime.
    pub conn_threads: usize,
}

/// A string that never shows in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl ServerConfig {
    /// The defaults of `mast serve`: member `default`, data in `./mast-data`, clients on
    /// `127.0.0.1:2379`, one connection thread per CPU core.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            name: "default".into(),
            data_dir: data_dir.into(),
            listen: vec!["127.0.0.1:2379".parse().expect("valid address")],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: crate::api::kv::MAX_TXN_OPS,
            quota_backend_bytes: 0,
            disk_reserve_bytes: crate::disk::DEFAULT_DISK_RESERVE_BYTES,
            max_concurrent_streams: crate::http_conn::DEFAULT_MAX_CONCURRENT_STREAMS,
            watch_progress_notify_interval: Duration::from_secs(600),
            cache_bytes: mast_mvcc::DEFAULT_CACHE_BYTES,
            audit_retention: mast_mvcc::audit::DEFAULT_AUDIT_RETENTION,
            wal_bytes: mast_raft::log_store::DEFAULT_SEGMENT_BYTES,
            checkpoint_bytes: mast_raft::state_machine::DEFAULT_CHECKPOINT_BYTES,
            allocator_stats: None,
            initial_cluster: None,
            initial_cluster_state: mast_raft::member::ClusterState::New,
            initial_cluster_token: mast_raft::identity::DEFAULT_CLUSTER_TOKEN.into(),
            advertise_peer_urls: vec!["http://localhost:2380".into()],
            listen_peer: Vec::new(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            lease_clock: LeaseClock::default(),
            tls: None,
            peer_tls: None,
            auth_token: crate::tokens::TokenConfig::Simple,
            auth_token_ttl: Duration::from_secs(300),
            root_password: None,
            conn_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// The clock of lease deadlines: the system's monotonic clock unless a test injects one.
#[derive(Clone)]
pub struct LeaseClock(pub Arc<dyn crate::lessor::Clock>);

impl Default for LeaseClock {
    fn default() -> Self {
        LeaseClock(Arc::new(SystemClock::default()))
    }
}

impl std::fmt::Debug for LeaseClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseClock")
    }
}

/// This member's cluster and member IDs, as etcd derives them (see
/// [`mast_raft::identity`]), kept in `<data-dir>/member.json` from the first start.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// Cluster ID shown in every response header.
    pub cluster_id: u64,
    /// This member's ID.
    pub member_id: u64,
}

impl ServerConfig {
    /// The member settings these flags give.
    ///
    /// # Errors
    /// When `--initial-cluster` does not parse.
    pub fn member_config(&self) -> anyhow::Result<mast_raft::member::MemberConfig> {
        let initial = match &self.initial_cluster {
            Some(s) => s.clone(),
            None => self
                .advertise_peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(","),
        };
        Ok(mast_raft::member::MemberConfig {
            name: self.name.clone(),
            data_dir: self.data_dir.clone(),
            initial_cluster: mast_raft::identity::parse_initial_cluster(&initial)?,
            initial_cluster_state: self.initial_cluster_state,
            initial_cluster_token: self.initial_cluster_token.clone(),
            advertise_peer_urls: self.advertise_peer_urls.clone(),
            advertise_client_urls: self.advertise_client_urls.clone(),
            heartbeat_interval: self.heartbeat_interval,
            election_timeout: self.election_timeout,
            segment_bytes: self.wal_bytes,
            checkpoint_bytes: self.checkpoint_bytes,
            peer_tls: self.peer_tls.clone(),
        })
    }
}

/// Applies what a data directory of the single-member write-ahead log (`wal.log`, before
/// Raft) still holds, checkpoints it into the store and removes the log, so the store can go
/// under the Raft log.
fn absorb_old_wal(dir: &Path, cache_bytes: usize) -> anyhow::Result<()> {
    let wal = dir.join("wal.log");
    if !wal.exists() {
        return Ok(());
    }
    let logged = LoggedStore::open(
        dir,
        mast_mvcc::StoreOptions {
            cache_bytes,
            ..Default::default()
        },
        mast_mvcc::LogOptions::default(),
    )?;
    logged.close()?;
    drop(logged);
    std::fs::remove_file(&wal)?;
    std::fs::File::open(dir)?.sync_all()?;
    tracing::info!("single-member write-ahead log applied and removed; the Raft log takes over");
    Ok(())
}

/// The component name the lessor's revokes are attributed to (the audit log's user).
pub(crate) const LEASE_EXPIRY: &str = "lease-expiry";

/// The API the server's own writes are attributed to ([`Node::write_as_system`]).
pub(crate) const SYSTEM_API: &str = "system";

/// Shared state of a running member.
///
/// Its parts are private to the server. Other crates (the registry) reach a node through the
/// etcd operations in [`crate::api`], the auth checks in [`crate::authz`], and the few
/// read-only methods below ([`Node::max_request_bytes`], [`Node::range_summary`],
/// [`Node::mod_revisions`], [`Node::compact_revision`], [`Node::lease_timing`],
/// [`Node::lease_key_count`], [`Node::lease_end`], [`Node::shutting_down`]).
pub struct Node {
    /// Settings.
    pub(crate) config: ServerConfig,
    /// Member and cluster IDs.
    pub(crate) identity: Identity,
    /// Leadership, term, proposals.
    pub(crate) consensus: Arc<crate::consensus::Consensus>,
    /// Linearizable reads.
    pub(crate) reads: crate::consensus::ReadBarrier,
    /// `<data-dir>/raft`.
    pub(crate) raft_dir: PathBuf,
    /// The MVCC store.
    pub(crate) store: Arc<Store>,
    /// Lease deadlines.
    pub(crate) lessor: Arc<Lessor>,
    /// How leases ended, as applied here.
    pub(crate) lease_ends: Arc<crate::lease_ends::LeaseEnds>,
    /// Committed events for watchers.
    pub(crate) hub: Arc<WatchHub>,
    /// Who watches what on this member (etcd watchers, Nacos subscriptions).
    pub(crate) watch_registry: Arc<crate::watchers::WatchRegistry>,
    /// The write path.
    pub(crate) writer: Writer,
    /// Flips to true when the server shuts down; long streams end on it.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Issues and checks auth tokens.
    pub(crate) tokens: Arc<crate::tokens::TokenProvider>,
    /// Slows down password guessing.
    pub(crate) throttle: crate::tokens::LoginThrottle,
    /// Picks the IDs of leases granted with ID 0.
    pub(crate) lease_ids: LeaseIds,
    /// Free space on the data directory's file system.
    pub(crate) disk: crate::disk::DiskWatch,
}

/// Picks lease IDs as etcd's `idutil.Generator` does for `LeaseGrant` with ID 0: the member
/// ID's low 16 bits, then 48 bits that start at the start time in milliseconds shifted left by
/// 8 and grow by one for every ID; the top bit is cleared so the ID is a positive `int64`.
///
/// IDs of one run grow in order, so the store's lease table takes each new one at its end
/// (random IDs dirtied a different B-tree page each). A restart starts above the last run's
/// IDs unless that run made more than 256 IDs per millisecond since it started.
pub struct LeaseIds {
    prefix: u64,
    suffix: std::sync::atomic::AtomicU64,
}

impl LeaseIds {
    /// Bits below the member prefix.
    const SUFFIX_BITS: u32 = 48;

    /// A generator for member `member_id` started at `now_ms` (milliseconds since the Unix
    /// epoch).
    pub fn new(member_id: u64, now_ms: u64) -> LeaseIds {
        LeaseIds {
            prefix: member_id << Self::SUFFIX_BITS,
            suffix: std::sync::atomic::AtomicU64::new(now_ms << 8),
        }
    }

    /// The next ID: positive, and never 0.
    pub fn next(&self) -> i64 {
        let suffix = self
            .suffix
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(1);
        let low = suffix & ((1u64 << Self::SUFFIX_BITS) - 1);
        let id = ((self.prefix | low) & (i64::MAX as u64)) as i64;
        if id == 0 { 1 } else { id }
    }
}

impl Node {
    /// Opens the store in `config.data_dir`, starts this member's consensus over it (a new
    /// cluster, a joining member, or a restart, as the flags and the data directory say) and
    /// the write path.
    ///
    /// # Errors
    /// When the data directory or the database cannot be opened, or the member cannot start
    /// (see [`mast_raft::member::StartError`]).
    pub async fn open(
        config: ServerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(&config.data_dir)?;
        absorb_old_wal(&config.data_dir, config.cache_bytes)?;
        let member_config = config.member_config()?;
        let store = Arc::new(Store::open_with_options(
            &config.data_dir,
            mast_mvcc::StoreOptions {
                cache_bytes: config.cache_bytes,
                audit_retention: config.audit_retention,
            },
        )?);
        let lessor = Arc::new(Lessor::new(config.lease_clock.0.clone()));
        // After a restart every lease gets its full TTL again, as etcd's.
        lessor.granted_all(store.leases().iter().map(|(id, rec)| (id, rec.ttl)));
        let tokens = Arc::new(crate::tokens::TokenProvider::new(
            &config.auth_token,
            config.auth_token_ttl,
        )?);
        let hub = Arc::new(WatchHub::new());
        let lease_ends = Arc::new(crate::lease_ends::LeaseEnds::default());
        let observer = Arc::new(crate::consensus::Observer {
            hub: hub.clone(),
            lessor: lessor.clone(),
            tokens: tokens.clone(),
            store: store.clone(),
            lease_ends: lease_ends.clone(),
        });
        let member =
            mast_raft::member::RaftMember::start(&member_config, store.clone(), observer).await?;
        let consensus = crate::consensus::Consensus::new(&member, config.election_timeout);
        consensus.spawn_watch(lessor.clone());
        let identity = Identity {
            cluster_id: member.identity.cluster_id,
            member_id: member.identity.member_id,
        };
        let writer = Writer::start(consensus.clone());
        let reads = crate::consensus::ReadBarrier::start(consensus.clone());
        let disk = crate::disk::DiskWatch::new(&config.data_dir, config.disk_reserve_bytes);
        Ok(Arc::new(Node {
            disk,
            config,
            identity,
            consensus,
            reads,
            raft_dir: member.dir.clone(),
            store,
            lessor,
            lease_ends,
            watch_registry: Arc::default(),
            hub,
            writer,
            shutdown,
            tokens,
            throttle: crate::tokens::LoginThrottle::default(),
            lease_ids: LeaseIds::new(
                identity.member_id,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            ),
        }))
    }

    /// A response header at revision `rev`.
    pub fn header_at(&self, rev: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision: rev,
            raft_term: self.consensus.term(),
        }
    }

    /// A response header at the current revision.
    pub fn header(&self) -> Option<ResponseHeader> {
        Some(self.header_at(self.store.revision()))
    }

    /// Fills the cluster fields of a header the store produced (which carries the revision).
    pub fn complete(&self, h: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let rev = h.map_or_else(|| self.store.revision(), |h| h.revision);
        Some(self.header_at(rev))
    }

    /// Waits until a linearizable read may be served from this member's store: at once when
    /// this member leads alone, else after a read index round ([`crate::consensus::ReadBarrier`]).
    ///
    /// # Errors
    /// [`EtcdError::NoLeader`], [`EtcdError::Timeout`] and the like when no leader confirms.
    pub async fn linearize(&self) -> Result<(), EtcdError> {
        if self.consensus.reads_are_local() {
            return Ok(());
        }
        self.reads.wait().await
    }

    /// Stops this member's consensus (after the listeners stop).
    pub async fn stop_consensus(&self) {
        if let Err(e) = self.consensus.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
    }

    /// Proposes a command and waits until it is applied.
    ///
    /// # Errors
    /// The store's refusal, or the proposal's failure (no leader, timeout, leader changed).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, EtcdError> {
        self.writer.submit(cmd).await
    }

    /// `cmd` as the audit log needs it: wrapped in [`Command::Attributed`] with `caller`'s
    /// user (from `who`), address and API, and the time now, when it may change an audited
    /// key or auth (see [`mast_mvcc::audit`]); unchanged otherwise, so ordinary etcd writes
    /// carry nothing extra.
    pub(crate) fn attribute(&self, who: &CallerIdentity, caller: &Caller, cmd: Command) -> Command {
        use mast_mvcc::audit::{is_audited, range_may_hold_audited, txn_may_touch_audited};
        let audited = match &cmd {
            Command::Put(p) => is_audited(&p.key),
            Command::LeaseGrantPut { put, .. } => is_audited(&put.key),
            Command::DeleteRange(d) => range_may_hold_audited(&d.key, &d.range_end),
            Command::Txn(t) => txn_may_touch_audited(t),
            Command::LeaseRevoke { .. } | Command::Auth(_) => true,
            _ => false,
        };
        if !audited {
            return cmd;
        }
        let user = match who {
            Some(info) => info.user.clone(),
            None => caller.cert_cn.as_deref().unwrap_or_default().to_string(),
        };
        Command::Attributed {
            origin: mast_mvcc::Origin {
                user,
                addr: caller.addr.map(|a| a.to_string()).unwrap_or_default(),
                api: if caller.api.is_empty() {
                    "etcd".into()
                } else {
                    caller.api.into()
                },
                time_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            },
            cmd: Box::new(cmd),
        }
    }

    /// As [`Node::write`], for the server's own work (lease expiry, health probes, operator
    /// overrides): the audit log names `component` as the user and `system` as the API.
    ///
    /// # Errors
    /// As [`Node::write`].
    pub async fn write_as_system(
        &self,
        component: &str,
        cmd: Command,
    ) -> Result<CommandResult, EtcdError> {
        let caller = Caller {
            api: SYSTEM_API,
            cert_cn: Some(component.into()),
            ..Caller::default()
        };
        let cmd = self.attribute(&None, &caller, cmd);
        self.write(cmd).await
    }

    /// The backend quota in bytes (`--quota-backend-bytes`), `None` when it is off.
    pub(crate) fn quota_bytes(&self) -> Option<u64> {
        match self.config.quota_backend_bytes {
            0 => Some(DEFAULT_QUOTA_BYTES),
            q if q < 0 => None,
            q => Some(q as u64),
        }
    }

    /// etcd's quota check in front of a write that grows the store by about `cost` bytes
    /// (its `quotaKVServer` / `quotaLeaseServer`): when the database file plus `cost` reaches
    /// the quota, or when writing `cost` would leave less than `--disk-reserve-bytes` free on
    /// the data directory's file system, raises this member's `NOSPACE` alarm through the
    /// log (once) and refuses.
    ///
    /// # Errors
    /// [`EtcdError::NoSpace`] past the quota or the reserve; the alarm proposal's failure.
    pub(crate) async fn check_quota(&self, cost: u64) -> Result<(), EtcdError> {
        let over_quota = self
            .quota_bytes()
            .filter(|q| self.store.db_size().saturating_add(cost) >= *q);
        // What a write costs on disk: its log entry, then its share of the store file.
        let disk_full = over_quota.is_none() && self.disk.would_fill(cost.saturating_mul(2));
        if over_quota.is_none() && !disk_full {
            return Ok(());
        }
        let me = self.identity.member_id;
        let raised = self
            .store
            .alarms()
            .contains(&(me, mast_proto::etcdserverpb::AlarmType::Nospace as i32));
        if !raised {
            match over_quota {
                Some(quota) => tracing::warn!(
                    db_size = self.store.db_size(),
                    quota,
                    "database space exceeded; raising the NOSPACE alarm"
                ),
                None => tracing::warn!(
                    free = self.disk.free_bytes(),
                    reserve = self.disk.reserve(),
                    data_dir = %self.config.data_dir.display(),
                    "disk nearly full; raising the NOSPACE alarm"
                ),
            }
            self.write(Command::Alarm {
                activate: true,
                member: me,
                alarm: mast_proto::etcdserverpb::AlarmType::Nospace as i32,
            })
            .await?;
        }
        Err(EtcdError::NoSpace)
    }

    /// As [`Node::write`], also returning the Raft log index (counted from 1) of the entry
    /// the command went into.
    ///
    /// # Errors
    /// As [`Node::write`].
    pub async fn write_indexed(&self, cmd: Command) -> Result<(CommandResult, u64), EtcdError> {
        self.writer.submit_indexed(cmd).await
    }

    /// The largest request accepted, in bytes (`--max-request-bytes`); larger ones are refused
    /// with [`EtcdError::RequestTooLarge`].
    pub fn max_request_bytes(&self) -> usize {
        self.config.max_request_bytes
    }

    /// A summary of `[key, range_end)` (etcd's `range_end` conventions) at the current
    /// revision, from the in-memory index: `(revision, key count, highest mod_revision)` (0
    /// for an empty range); see [`Store::range_summary`]. Equal summaries mean the range holds
    /// the same keys and values, so a caller may keep something rendered from it.
    ///
    /// # Errors
    /// [`AuthError::PermissionDenied`] when `who` may not read the range (checked as a Range
    /// would be).
    ///
    /// [`AuthError::PermissionDenied`]: crate::error::AuthError::PermissionDenied
    pub fn range_summary(
        &self,
        who: &CallerIdentity,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(i64, usize, i64), EtcdError> {
        self.check_range(who, key, range_end, false)?;
        Ok(self.store.range_summary(key, range_end))
    }

    /// A serializable Range (this member's applied state, no read index) made by the server
    /// itself, with no auth check: for the server's own background work (operator overrides,
    /// health probes), never on behalf of a client's request.
    ///
    /// # Errors
    /// The store's errors (a compacted or future revision, a failed read).
    pub fn range_as_server(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        let mut resp = self.store.range(req)?;
        resp.header = self.complete(resp.header);
        Ok(resp)
    }

    /// Up to `limit` audit entries after sequence number `after`, oldest first, as this
    /// member has applied them ([`mast_mvcc::audit`]). Only an admin may read the audit log
    /// (Mast's `root` role, or anyone while auth is off).
    ///
    /// # Errors
    /// Auth errors for a caller without the root role; the store's errors.
    pub fn audit_entries(
        &self,
        caller: &Caller,
        after: u64,
        limit: usize,
    ) -> Result<Vec<mast_mvcc::AuditEntry>, EtcdError> {
        self.require_admin(caller)?;
        Ok(self.store.audit_entries(after, limit)?)
    }

    /// Checks this member's audit chain: its report, or where it is broken. Admin only, as
    /// [`Node::audit_entries`].
    ///
    /// # Errors
    /// Auth errors for a caller without the root role; the store's errors.
    pub fn verify_audit(
        &self,
        caller: &Caller,
    ) -> Result<Result<mast_mvcc::AuditReport, mast_mvcc::AuditBreak>, EtcdError> {
        self.require_admin(caller)?;
        Ok(self.store.verify_audit()?)
    }

    /// Whether this member is the Raft leader now (a single member is, once it has elected
    /// itself). Background work done once per cluster (lease expiry, probes) runs where this
    /// holds.
    pub fn is_leader(&self) -> bool {
        self.consensus.is_leader()
    }

    /// The `mod_revision` of each of `keys` at the current revision (`None`: absent), and that
    /// revision, from the in-memory index; see [`Store::mod_revisions`].
    ///
    /// # Errors
    /// [`AuthError::PermissionDenied`] when `who` may not read one of the keys (checked in
    /// order, as a Range of each would be).
    ///
    /// [`AuthError::PermissionDenied`]: crate::error::AuthError::PermissionDenied
    pub fn mod_revisions(
        &self,
        who: &CallerIdentity,
        keys: &[&[u8]],
    ) -> Result<(i64, Vec<Option<i64>>), EtcdError> {
        for key in keys {
            self.check_range(who, key, &[], false)?;
        }
        Ok(self.store.mod_revisions(keys))
    }

    /// Every key of `[key, range_end)` at the current revision with its `mod_revision`, and
    /// that revision, from the in-memory index; see [`Store::range_mod_revisions`].
    ///
    /// # Errors
    /// [`AuthError::PermissionDenied`] when `who` may not read the range.
    ///
    /// [`AuthError::PermissionDenied`]: crate::error::AuthError::PermissionDenied
    pub fn range_mod_revisions(
        &self,
        who: &CallerIdentity,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(i64, mast_mvcc::KeyRevisions), EtcdError> {
        self.check_range(who, key, range_end, false)?;
        Ok(self.store.range_mod_revisions(key, range_end))
    }

    /// How long a token lasts: a JWT's lifetime, or how long a simple token may stay unused
    /// (`--auth-token-ttl`, as etcd's).
    pub fn token_ttl(&self) -> Duration {
        match &self.config.auth_token {
            crate::tokens::TokenConfig::Jwt { ttl, .. } => *ttl,
            crate::tokens::TokenConfig::Simple => self.config.auth_token_ttl,
        }
    }

    /// This member's name (`--name`).
    pub fn member_name(&self) -> &str {
        &self.config.name
    }

    /// Who watches what on this member: etcd watchers register themselves; other protocols
    /// (the Nacos API's subscriptions) register theirs.
    pub fn watch_registry(&self) -> &Arc<crate::watchers::WatchRegistry> {
        &self.watch_registry
    }

    /// Whether auth is enabled (etcd's `AuthStatus`).
    pub fn auth_enabled(&self) -> bool {
        self.store.auth().enabled()
    }

    /// Every committed batch of events from now on, unchecked by auth: for wake-ups only (the
    /// Nacos config listener learns that a config it holds may have changed). What a caller
    /// is shown must still be read through the checked operations in `api`. A receiver that
    /// lags, or a batch with `gap` set (a snapshot was installed), means changes were missed.
    pub fn subscribe_commits(&self) -> tokio::sync::broadcast::Receiver<Arc<crate::watch::Batch>> {
        self.hub.subscribe()
    }

    /// The compacted revision: history below it is gone (-1 before the first compaction).
    pub fn compact_revision(&self) -> i64 {
        self.store.compact_revision()
    }

    /// The timing of lease `id` (granted TTL and seconds left), `None` when it is not alive.
    /// As LeaseTimeToLive without keys, it needs no permission.
    pub fn lease_timing(&self, id: i64) -> Option<LeaseTiming> {
        self.lessor.timing(id)
    }

    /// How lease `id` ended (expired or revoked, at which revision), as this member applied
    /// it; `None` while it is alive, and when this member does not remember
    /// ([`crate::lease_ends`]).
    pub fn lease_end(&self, id: i64) -> Option<crate::lease_ends::LeaseEnd> {
        self.lease_ends.get(id)
    }

    /// How many keys are attached to lease `id`, `None` when the lease does not exist.
    pub fn lease_key_count(&self, id: i64) -> Option<usize> {
        self.store.leases().get(id).map(|r| r.keys.len())
    }

    /// Completes once the server begins shutting down (at once if it has); long streams end
    /// on it.
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        // An error means the server is gone: as good as shut down.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    /// Starts the task that revokes expired leases. It ends on shutdown.
    pub fn spawn_lease_expiry(self: &Arc<Self>) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut shutdown = node.shutdown.clone();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                for id in node.lessor.take_expired() {
                    let node = node.clone();
                    tokio::spawn(async move {
                        match node
                            .write_as_system(LEASE_EXPIRY, Command::LeaseRevoke { id })
                            .await
                        {
                            Ok(_) => tracing::debug!(lease = id, "lease expired and was revoked"),
                            Err(EtcdError::Mvcc(MvccError::LeaseNotFound)) => {
                                node.lessor.revoked(id)
                            }
                            Err(e) => {
                                tracing::warn!(lease = id, error = %e, "revoking an expired lease failed")
                            }
                        }
                    });
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::LeaseIds;

    #[test]
    fn lease_ids_grow_carry_the_member_and_stay_positive() {
        let member = 0xabcd_1234_5678_9f0e_u64;
        let ids = LeaseIds::new(member, 1_763_880_000_000);
        let picked: Vec<i64> = (0..1000).map(|_| ids.next()).collect();
        assert!(picked.windows(2).all(|w| w[0] < w[1]), "in order");
        for id in &picked {
            assert!(*id > 0);
            // The member's low 16 bits, less the sign bit.
            assert_eq!((*id as u64) >> 48, 0x9f0e & 0x7fff);
        }
        // A restart a millisecond later starts above everything the first run picked.
        let later = LeaseIds::new(member, 1_763_880_000_001);
        assert!(later.next() > picked[255]);
        // The 48 low bits wrap instead of spilling into the member bits.
        let wrap = LeaseIds::new(1, (1u64 << 40) - 1);
        for _ in 0..300 {
            assert_eq!((wrap.next() as u64) >> 48, 1);
        }
    }
}
