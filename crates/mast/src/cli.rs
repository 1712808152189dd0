//! The client side of the `mast` binary: etcdctl's everyday verbs, plus `service` and `config`
//! commands over Mast's data model. Output is etcdctl-like text (`-w simple`), JSON for scripts
//! (`-w json`), or a table for humans (`-w table`).

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::Table;
use futures::StreamExt;
use mast_model::config::{ConfigHistoryEntry, META_PREFIX};
use mast_model::{ConfigFormat, ConfigId, ConfigMeta, Instance, prefix_end};
use mast_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseTimeToLiveRequest,
    PutRequest, RangeRequest, SnapshotRequest, WatchCreateRequest, WatchRequest,
    watch_request::RequestUnion,
};
use mast_proto::mvccpb::{KeyValue, event::EventType};
use mast_sdk::{Client, ClientOptions};

/// Output format, as etcdctl's `-w`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// etcdctl's plain text.
    #[default]
    Simple,
    /// One JSON document.
    Json,
    /// A table.
    Table,
}

/// Flags every client command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Comma-separated endpoints (default from MAST_ENDPOINTS / ETCDCTL_ENDPOINTS, else
    /// 127.0.0.1:2379).
    #[arg(long, global = true)]
    pub endpoints: Option<String>,
    /// `user` or `user:password` (default from MAST_USER / ETCDCTL_USER).
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Password, when not given in `--user`.
    #[arg(long, global = true)]
    pub password: Option<String>,
    /// Output format.
    #[arg(short = 'w', long = "write-out", global = true, value_enum, default_value_t = Format::Simple)]
    pub write_out: Format,
}

impl Global {
    /// The endpoints given (`--endpoints`, else the environment's, else the default).
    pub(crate) fn endpoint_list(&self) -> Vec<String> {
        match &self.endpoints {
            Some(e) => e
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => ClientOptions::from_env().endpoints,
        }
    }

    /// The user and password given (`--user`, `--password`, else the environment's).
    pub(crate) fn credentials(&self) -> (Option<String>, Option<String>) {
        let o = ClientOptions::from_env();
        let (mut user, mut password) = (o.user, o.password);
        if let Some(u) = &self.user {
            match u.split_once(':') {
                Some((n, p)) => {
                    user = Some(n.to_string());
                    password = Some(p.to_string());
                }
                None => user = Some(u.clone()),
            }
        }
        if let Some(p) = &self.password {
            password = Some(p.clone());
        }
        (user, password)
    }

    /// A client over the endpoints and credentials given.
    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        let mut o = ClientOptions::from_env();
        o.endpoints = self.endpoint_list();
        (o.user, o.password) = self.credentials();
        Client::connect(o).await.context("connecting")
    }
}

/// `mast lease …`.
#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// Grants a lease of TTL seconds.
    Grant {
        /// Seconds.
        ttl: i64,
    },
    /// Revokes a lease (hex ID, as etcdctl prints it).
    Revoke {
        /// Lease ID in hex.
        id: String,
    },
    /// Keeps a lease alive (once, or until interrupted).
    KeepAlive {
        /// Lease ID in hex.
        id: String,
        /// Send one keepalive and exit.
        #[arg(long)]
        once: bool,
    },
    /// Shows a lease's remaining TTL.
    Timetolive {
        /// Lease ID in hex.
        id: String,
        /// Also list the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// Lists the leases.
    List,
}

/// `mast snapshot …`.
#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Streams a snapshot of the database to a file, with a progress bar.
    Save {
        /// Destination file.
        path: std::path::PathBuf,
    },
    /// Creates a new data directory from a snapshot file (Mast's or etcd's), for a member of
    /// a new cluster, as `etcdctl snapshot restore`; offline, no server needed.
    Restore(crate::snapshot_file::RestoreArgs),
    /// Shows a snapshot file's hash, revision, row count and size, as `etcdctl snapshot
    /// status`; offline.
    Status {
        /// The snapshot file.
        path: std::path::PathBuf,
    },
}

/// `mast service …`.
#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Lists services and their instance counts.
    List,
    /// Shows a service's instances.
    Get {
        /// Service name.
        service: String,
    },
    /// Registers an instance and keeps it alive until interrupted.
    Register {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// `host:port` of the instance.
        address: String,
        /// Lease TTL in seconds.
        #[arg(long, default_value_t = 10)]
        ttl: u64,
        /// Weight for balancing.
        #[arg(long, default_value_t = 1.0)]
        weight: f64,
        /// Metadata as `key=value` (repeatable).
        #[arg(long = "meta")]
        metadata: Vec<String>,
    },
    /// Deregisters an instance (deletes its key).
    Deregister {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// Sets an operator's weight and / or enabled on an instance; they stay in force when the
    /// instance registers again, until `unset` (stored at `/instance-overrides/…`).
    Set {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// Weight in force.
        #[arg(long)]
        weight: Option<f64>,
        /// Enabled in force (`true` or `false`).
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Clears the operator's override of an instance: it gets back what it registered.
    Unset {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// Prints the instance set after every change, until interrupted.
    Watch {
        /// Service name.
        service: String,
    },
}

/// Which config.
#[derive(Args, Debug, Clone)]
pub struct ConfigRef {
    /// Data id, e.g. `app.yaml`.
    pub data_id: String,
    /// Namespace.
    #[arg(long, short = 'n', default_value = "public")]
    pub namespace: String,
    /// Group.
    #[arg(long, short = 'g', default_value = "DEFAULT_GROUP")]
    pub group: String,
}

impl ConfigRef {
    pub(crate) fn id(&self) -> anyhow::Result<ConfigId> {
        Ok(ConfigId::new(&self.namespace, &self.group, &self.data_id)?)
    }
}

/// `mast config …`.
#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Prints a config's content.
    Get(ConfigRef),
    /// Shows which clients hold which version, who lags, and how long the last change took
    /// to reach everyone (from the clients' reports; over HTTP on the first endpoint).
    Rollout(ConfigRef),
    /// Gray releases: other content for the clients a rule chooses (over HTTP on the first
    /// endpoint).
    #[command(subcommand)]
    Gray(crate::cli_http::GrayCmd),
    /// Publishes content (from a file, or `-` for stdin) as the next version.
    Set {
        #[command(flatten)]
        config: ConfigRef,
        /// File with the content, or `-`.
        file: String,
        /// Format (json, yaml, toml, properties, text); default from the data id's extension.
        #[arg(long)]
        format: Option<String>,
        /// Author recorded in history.
        #[arg(long, default_value = "mast-cli")]
        author: String,
    },
    /// Lists configs (of a namespace).
    List {
        /// Only this namespace.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Lists a config's versions.
    History(ConfigRef),
    /// Unified diff of two versions.
    Diff {
        #[command(flatten)]
        config: ConfigRef,
        /// Older version.
        from: u64,
        /// Newer version.
        to: u64,
    },
    /// Publishes an old version's content again as a new version.
    Rollback {
        #[command(flatten)]
        config: ConfigRef,
        /// The version to restore.
        version: u64,
    },
}

/// A client command.
#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    /// Gets a key or range, as `etcdctl get`.
    Get {
        /// Key.
        key: String,
        /// Range end (exclusive).
        range_end: Option<String>,
        /// Every key with this prefix.
        #[arg(long)]
        prefix: bool,
        /// Read at this revision.
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// At most this many keys.
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Keys only.
        #[arg(long)]
        keys_only: bool,
    },
    /// Puts a key, as `etcdctl put`.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Attach to this lease (hex).
        #[arg(long)]
        lease: Option<String>,
    },
    /// Deletes a key or range, as `etcdctl del`.
    Del {
        /// Key.
        key: String,
        /// Range end (exclusive).
        range_end: Option<String>,
        /// Every key with this prefix.
        #[arg(long)]
        prefix: bool,
    },
    /// Runs a transaction read from stdin, in etcdctl's `txn` format (compares, blank line,
    /// success ops, blank line, failure ops).
    Txn,
    /// Watches a key or prefix, as `etcdctl watch`.
    Watch {
        /// Key.
        key: String,
        /// Every key with this prefix.
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (replays history).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
    /// Lease commands.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Member commands.
    #[command(subcommand)]
    Member(crate::cli_cluster::MemberCmd),
    /// Endpoint commands.
    #[command(subcommand)]
    Endpoint(crate::cli_cluster::EndpointCmd),
    /// Snapshot commands.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Service registry commands.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Config center commands.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The audit log: who changed what (admin only).
    #[command(subcommand)]
    Audit(crate::cli_http::AuditCmd),
    /// Copies a live etcd into Mast (`--endpoints`): roles, users, leases and keys, as of one
    /// revision of the source.
    Migrate(crate::migrate::MigrateArgs),
}

fn range_end(key: &str, end: &Option<String>, prefix: bool) -> Bytes {
    if prefix {
        Bytes::from(prefix_end(key.as_bytes()))
    } else {
        end.clone().map(Bytes::from).unwrap_or_default()
    }
}

fn parse_lease(hex: &str) -> anyhow::Result<i64> {
    i64::from_str_radix(hex.trim_start_matches("0x"), 16)
        .with_context(|| format!("{hex:?} is not a hex lease ID"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Prints `v` as one line of JSON.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Prints a summary of a long operation (`snapshot restore`, `migrate`): with `-w json` one
/// JSON object of `rows` (every value a string), otherwise a two-column table headed
/// `title` / `VALUE`.
pub(crate) fn print_summary(title: &str, rows: &[(&str, String)], out: Format) {
    if out == Format::Json {
        let map: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, v)| ((*k).to_string(), serde_json::Value::String(v.clone())))
            .collect();
        println!("{}", serde_json::Value::Object(map));
        return;
    }
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::ASCII_FULL_CONDENSED);
    t.set_header([title, "VALUE"]);
    for (k, v) in rows {
        t.add_row([(*k).to_string(), v.clone()]);
    }
    println!("{t}");
}

fn kv_table(kvs: &[KeyValue]) -> Table {
    let mut t = Table::new();
    t.set_header(["KEY", "VALUE", "CREATE", "MOD", "VERSION", "LEASE"]);
    for kv in kvs {
        t.add_row([
            text(&kv.key),
            text(&kv.value),
            kv.create_revision.to_string(),
            kv.mod_revision.to_string(),
            kv.version.to_string(),
            format!("{:x}", kv.lease),
        ]);
    }
    t
}

/// Runs a client command.
///
/// # Errors
/// Connection and server errors, with etcd's messages.
pub async fn run(g: Global, cmd: ClientCmd) -> anyhow::Result<()> {
    // Snapshot files are read offline.
    let cmd = match cmd {
        ClientCmd::Snapshot(SnapshotCmd::Restore(args)) => {
            return tokio::task::spawn_blocking(move || {
                crate::snapshot_file::restore(&args, g.write_out)
            })
            .await?;
        }
        ClientCmd::Snapshot(SnapshotCmd::Status { path }) => {
            let out = g.write_out;
            return tokio::task::spawn_blocking(move || crate::snapshot_file::status(&path, out))
                .await?;
        }
        ClientCmd::Migrate(args) => return crate::migrate::run(&g, &args).await,
        ClientCmd::Audit(a) => return crate::cli_http::run(&g, a).await,
        ClientCmd::Config(ConfigCmd::Rollout(r)) => return crate::cli_http::rollout(&g, &r).await,
        ClientCmd::Config(ConfigCmd::Gray(cmd)) => return crate::cli_http::gray(&g, cmd).await,
        cmd => cmd,
    };
    let c = g.connect().await?;
    let out = g.write_out;
    match cmd {
        ClientCmd::Get {
            key,
            range_end: end,
            prefix,
            rev,
            limit,
            keys_only,
        } => {
            let r = c
                .range(RangeRequest {
                    key: key.clone().into(),
                    range_end: range_end(&key, &end, prefix),
                    revision: rev,
                    limit,
                    keys_only,
                    ..Default::default()
                })
                .await?;
            match out {
                Format::Json => print_json(&r)?,
                Format::Table => println!("{}", kv_table(&r.kvs)),
                Format::Simple => {
                    for kv in &r.kvs {
                        println!("{}", text(&kv.key));
                        if !keys_only {
                            println!("{}", text(&kv.value));
                        }
                    }
                }
            }
        }
        ClientCmd::Put { key, value, lease } => {
            let lease = lease.as_deref().map(parse_lease).transpose()?.unwrap_or(0);
            let rev = c
                .put(PutRequest {
                    key: key.into(),
                    value: value.into(),
                    lease,
                    ..Default::default()
                })
                .await?;
            match out {
                Format::Json => print_json(&serde_json::json!({"revision": rev}))?,
                _ => println!("OK"),
            }
        }
        ClientCmd::Del {
            key,
            range_end: end,
            prefix,
        } => {
            let n = c
                .delete(DeleteRangeRequest {
                    key: key.clone().into(),
                    range_end: range_end(&key, &end, prefix),
                    ..Default::default()
                })
                .await?;
            match out {
                Format::Json => print_json(&serde_json::json!({"deleted": n}))?,
                _ => println!("{n}"),
            }
        }
        ClientCmd::Watch { key, prefix, rev } => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: key.clone().into(),
                    range_end: range_end(&key, &None, prefix),
                    start_revision: rev,
                    ..Default::default()
                })),
            })
            .await?;
            let mut stream = c
                .watch_client()
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            while let Some(resp) = stream.next().await {
                let resp = resp?;
                if resp.canceled {
                    bail!(
                        "watch was canceled ({})",
                        if resp.compact_revision > 0 {
                            "etcdserver: mvcc: required revision has been compacted".to_string()
                        } else {
                            resp.cancel_reason
                        }
                    );
                }
                for ev in &resp.events {
                    let Some(kv) = &ev.kv else { continue };
                    match out {
                        Format::Json => print_json(ev)?,
                        _ => {
                            let ty = if ev.r#type == EventType::Delete as i32 {
                                "DELETE"
                            } else {
                                "PUT"
                            };
                            println!("{ty}\n{}\n{}", text(&kv.key), text(&kv.value));
                        }
                    }
                }
                std::io::stdout().flush()?;
            }
        }
        ClientCmd::Txn => {
            let mut script = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut script)?;
            let req = crate::txn_script::parse(&script)?;
            let r = c.txn(req).await?;
            match out {
                Format::Json => print_json(&r)?,
                _ => {
                    println!("{}\n", if r.succeeded { "SUCCESS" } else { "FAILURE" });
                    for op in &r.responses {
                        use mast_proto::etcdserverpb::response_op::Response;
                        match &op.response {
                            Some(Response::ResponsePut(_)) => println!("OK"),
                            Some(Response::ResponseDeleteRange(d)) => println!("{}", d.deleted),
                            Some(Response::ResponseRange(rr)) => {
                                for kv in &rr.kvs {
                                    println!("{}\n{}", text(&kv.key), text(&kv.value));
                                }
                            }
                            Some(Response::ResponseTxn(_)) | None => {}
                        }
                        println!();
                    }
                }
            }
        }
        ClientCmd::Lease(l) => lease(&c, out, l).await?,
        ClientCmd::Member(m) => crate::cli_cluster::member(&g, out, m).await?,
        ClientCmd::Endpoint(e) => crate::cli_cluster::endpoint(&g, out, e).await?,
        ClientCmd::Snapshot(SnapshotCmd::Save { path }) => snapshot(&c, &path).await?,
        ClientCmd::Snapshot(SnapshotCmd::Restore(_) | SnapshotCmd::Status { .. })
        | ClientCmd::Migrate(_)
        | ClientCmd::Audit(_) => {
            bail!("served before connecting")
        }
        ClientCmd::Service(s) => service(&c, out, s).await?,
        ClientCmd::Config(cfg) => config(&c, out, cfg).await?,
    }
    Ok(())
}

async fn lease(c: &Client, out: Format, cmd: LeaseCmd) -> anyhow::Result<()> {
    match cmd {
        LeaseCmd::Grant { ttl } => {
            let r = c
                .lease_client()
                .lease_grant(mast_proto::etcdserverpb::LeaseGrantRequest { ttl, id: 0 })
                .await?
                .into_inner();
            match out {
                Format::Json => print_json(&r)?,
                _ => println!("lease {:016x} granted with TTL({}s)", r.id, r.ttl),
            }
        }
        LeaseCmd::Revoke { id } => {
            let id = parse_lease(&id)?;
            c.revoke(id).await?;
            println!("lease {id:016x} revoked");
        }
        LeaseCmd::KeepAlive { id, once } => {
            let id = parse_lease(&id)?;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let mut stream = c
                .lease_client()
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            loop {
                tx.send(LeaseKeepAliveRequest { id }).await?;
                let Some(r) = stream.next().await else {
                    bail!("keepalive stream closed")
                };
                let r = r?;
                if r.ttl <= 0 {
                    bail!("lease {id:016x} expired or revoked");
                }
                println!("lease {id:016x} keepalived with TTL({})", r.ttl);
                if once {
                    break;
                }
                tokio::time::sleep(Duration::from_secs((r.ttl as u64 / 3).max(1))).await;
            }
        }
        LeaseCmd::Timetolive { id, keys } => {
            let id = parse_lease(&id)?;
            let r = c
                .lease_client()
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                .await?
                .into_inner();
            match out {
                Format::Json => print_json(&r)?,
                _ if r.ttl == -1 => println!("lease {id:016x} already expired"),
                _ => {
                    let ks: Vec<String> = r.keys.iter().map(|k| text(k)).collect();
                    if keys {
                        println!(
                            "lease {id:016x} granted with TTL({}s), remaining({}s), attached keys({ks:?})",
                            r.granted_ttl, r.ttl
                        );
                    } else {
                        println!(
                            "lease {id:016x} granted with TTL({}s), remaining({}s)",
                            r.granted_ttl, r.ttl
                        );
                    }
                }
            }
        }
        LeaseCmd::List => {
            let r = c
                .lease_client()
                .lease_leases(LeaseLeasesRequest {})
                .await?
                .into_inner();
            match out {
                Format::Json => print_json(&r)?,
                _ => {
                    println!("found {} leases", r.leases.len());
                    for l in &r.leases {
                        println!("{:016x}", l.id);
                    }
                }
            }
        }
    }
    Ok(())
}

async fn snapshot(c: &Client, path: &std::path::Path) -> anyhow::Result<()> {
    let mut stream = c
        .maintenance_client()
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    let part = path.with_extension("part");
    let mut file =
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("valid template"),
    );
    let mut chunks: Vec<Bytes> = Vec::new();
    while let Some(msg) = stream.next().await {
        let msg = msg?;
        if bar.length() == Some(0) {
            bar.set_length(msg.blob.len() as u64 + msg.remaining_bytes);
        }
        bar.inc(msg.blob.len() as u64);
        chunks.push(msg.blob);
    }
    bar.finish_and_clear();
    // The last message is the SHA-256 of the database, as etcd's stream; it stays at the
    // end of the file, as etcdctl keeps it, so a restore can check it.
    let hash = chunks.pop().context("empty snapshot stream")?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    for ch in &chunks {
        sha2::Digest::update(&mut hasher, ch);
        file.write_all(ch)?;
    }
    if sha2::Digest::finalize(hasher).as_slice() != hash.as_ref() {
        bail!("snapshot checksum mismatch");
    }
    file.write_all(&hash)?;
    file.sync_all()?;
    std::fs::rename(&part, path)?;
    println!("Snapshot saved at {}", path.display());
    Ok(())
}

async fn service(c: &Client, out: Format, cmd: ServiceCmd) -> anyhow::Result<()> {
    match cmd {
        ServiceCmd::List => {
            let r = c
                .range(RangeRequest {
                    key: mast_model::SERVICES_PREFIX.into(),
                    range_end: prefix_end(mast_model::SERVICES_PREFIX.as_bytes()).into(),
                    keys_only: true,
                    ..Default::default()
                })
                .await?;
            let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
            for kv in &r.kvs {
                if let Some((svc, _)) = mast_model::parse_instance_key(&kv.key) {
                    *counts.entry(svc.to_string()).or_default() += 1;
                }
            }
            match out {
                Format::Json => print_json(&counts)?,
                Format::Table => {
                    let mut t = Table::new();
                    t.set_header(["SERVICE", "INSTANCES"]);
                    for (s, n) in &counts {
                        t.add_row([s.clone(), n.to_string()]);
                    }
                    println!("{t}");
                }
                Format::Simple => {
                    for (s, n) in &counts {
                        println!("{s} {n}");
                    }
                }
            }
        }
        ServiceCmd::Get { service } => {
            let set = c.discover(&service).await?;
            match out {
                Format::Json => print_json(&set.iter().map(|s| serde_json::json!({"id": s.id, "instance": s.instance, "lease": format!("{:x}", s.lease)})).collect::<Vec<_>>())?,
                _ => {
                    let mut t = Table::new();
                    t.set_header(["ID", "ADDRESS", "WEIGHT", "ENABLED", "ZONE", "METADATA", "LEASE"]);
                    for s in &set {
                        let meta: Vec<String> = s.instance.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        t.add_row([s.id.clone(), s.instance.address(), s.instance.weight.to_string(), s.instance.enabled.to_string(), s.instance.zone.clone().unwrap_or_default(), meta.join(","), format!("{:x}", s.lease)]);
                    }
                    println!("{t}");
                }
            }
        }
        ServiceCmd::Register {
            service,
            id,
            address,
            ttl,
            weight,
            metadata,
        } => {
            let (host, port) = address
                .rsplit_once(':')
                .context("address must be host:port")?;
            let mut inst = Instance::new(
                host.trim_matches(['[', ']']),
                port.parse().context("bad port")?,
            );
            inst.weight = weight;
            for m in metadata {
                let (k, v) = m.split_once('=').context("--meta takes key=value")?;
                inst.metadata.insert(k.into(), v.into());
            }
            let reg = c
                .register(&service, &id, inst, Duration::from_secs(ttl))
                .await?;
            println!("registered {} (Ctrl-C to deregister)", reg.key());
            let _ = tokio::signal::ctrl_c().await;
            reg.shutdown().await;
            println!("deregistered");
        }
        ServiceCmd::Deregister { service, id } => {
            let n = c
                .delete(DeleteRangeRequest {
                    key: mast_model::instance_key(&service, &id).into(),
                    ..Default::default()
                })
                .await?;
            if n == 0 {
                bail!("no instance {id} in {service}");
            }
            println!("deregistered");
        }
        ServiceCmd::Set {
            service,
            id,
            weight,
            enabled,
        } => {
            if weight.is_none() && enabled.is_none() {
                bail!("give --weight, --enabled or both");
            }
            let inst = c
                .set_instance_override(&service, &id, weight, enabled)
                .await?;
            match out {
                Format::Json => print_json(&inst)?,
                _ => println!(
                    "{service}/{id}: weight {} enabled {} (held until `mast service unset`)",
                    inst.weight, inst.enabled
                ),
            }
        }
        ServiceCmd::Unset { service, id } => {
            if c.clear_instance_override(&service, &id).await? {
                println!("{service}/{id}: override cleared");
            } else {
                println!("{service}/{id}: no override");
            }
        }
        ServiceCmd::Watch { service } => {
            let mut stream = Box::pin(c.watch_service(&service));
            while let Some(set) = stream.next().await {
                let set = set?;
                let addrs: Vec<String> = set
                    .iter()
                    .map(|s| format!("{}={}", s.id, s.instance.address()))
                    .collect();
                match out {
                    Format::Json => print_json(
                        &set.iter()
                            .map(|s| serde_json::json!({"id": s.id, "instance": s.instance}))
                            .collect::<Vec<_>>(),
                    )?,
                    _ => println!("{service}: [{}]", addrs.join(", ")),
                }
                std::io::stdout().flush()?;
            }
        }
    }
    Ok(())
}

async fn history(c: &Client, id: &ConfigId) -> anyhow::Result<Vec<ConfigHistoryEntry>> {
    let prefix = id.history_prefix();
    let r = c
        .range(RangeRequest {
            key: prefix.clone().into(),
            range_end: prefix_end(prefix.as_bytes()).into(),
            ..Default::default()
        })
        .await?;
    r.kvs
        .iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value)
                .with_context(|| format!("bad history entry at {}", text(&kv.key)))
        })
        .collect()
}

async fn version_content(
    c: &Client,
    id: &ConfigId,
    version: u64,
) -> anyhow::Result<ConfigHistoryEntry> {
    let r = c
        .range(RangeRequest {
            key: id.history_key(version).into(),
            ..Default::default()
        })
        .await?;
    let kv = r
        .kvs
        .first()
        .with_context(|| format!("no version {version} of {}", id.data_id))?;
    Ok(serde_json::from_slice(&kv.value)?)
}

async fn config(c: &Client, out: Format, cmd: ConfigCmd) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Rollout(_) | ConfigCmd::Gray(_) => bail!("served before connecting"),
        ConfigCmd::Get(r) => {
            let id = r.id()?;
            let cfg = c
                .get_config(&id)
                .await?
                .with_context(|| format!("no config {}", id.content_key()))?;
            match out {
                Format::Json => print_json(
                    &serde_json::json!({"id": id, "content": text(&cfg.content), "meta": cfg.meta, "revision": cfg.revision}),
                )?,
                _ => print!("{}", text(&cfg.content)),
            }
        }
        ConfigCmd::Set {
            config,
            file,
            format,
            author,
        } => {
            let id = config.id()?;
            let content = if file == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            } else {
                std::fs::read(&file).with_context(|| format!("reading {file}"))?
            };
            let format: ConfigFormat = match format {
                Some(f) => f.parse()?,
                None => ConfigFormat::from_data_id(&id.data_id).unwrap_or_default(),
            };
            let v = c.publish_config(&id, &content, format, &author).await?;
            match out {
                Format::Json => print_json(&serde_json::json!({"version": v}))?,
                _ => println!("published version {v}"),
            }
        }
        ConfigCmd::List { namespace } => {
            let prefix = match &namespace {
                Some(ns) => format!("{META_PREFIX}{ns}/"),
                None => META_PREFIX.to_string(),
            };
            let r = c
                .range(RangeRequest {
                    key: prefix.clone().into(),
                    range_end: prefix_end(prefix.as_bytes()).into(),
                    ..Default::default()
                })
                .await?;
            let mut rows = Vec::new();
            for kv in &r.kvs {
                let Some((id, _)) = ConfigId::parse_key(&kv.key) else {
                    continue;
                };
                let meta: ConfigMeta = serde_json::from_slice(&kv.value)?;
                rows.push((id, meta));
            }
            match out {
                Format::Json => print_json(
                    &rows
                        .iter()
                        .map(|(id, m)| serde_json::json!({"id": id, "meta": m}))
                        .collect::<Vec<_>>(),
                )?,
                _ => {
                    let mut t = Table::new();
                    t.set_header(["NAMESPACE", "GROUP", "DATA ID", "FORMAT", "VERSION", "MD5"]);
                    for (id, m) in &rows {
                        t.add_row([
                            id.namespace.clone(),
                            id.group.clone(),
                            id.data_id.clone(),
                            m.format.name().into(),
                            m.version.to_string(),
                            m.md5.clone(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        ConfigCmd::History(r) => {
            let id = r.id()?;
            let h = history(c, &id).await?;
            match out {
                Format::Json => print_json(&h)?,
                _ => {
                    let mut t = Table::new();
                    t.set_header(["VERSION", "OP", "AUTHOR", "TIME (ms)", "MD5"]);
                    for e in &h {
                        t.add_row([
                            e.version.to_string(),
                            format!("{:?}", e.op).to_lowercase(),
                            e.author.clone(),
                            e.time.to_string(),
                            e.md5.clone(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        ConfigCmd::Diff { config, from, to } => {
            let id = config.id()?;
            let (a, b) = (
                version_content(c, &id, from).await?,
                version_content(c, &id, to).await?,
            );
            let diff = similar::TextDiff::from_lines(&a.content, &b.content);
            print!(
                "{}",
                diff.unified_diff().header(
                    &format!("{} v{from}", id.data_id),
                    &format!("{} v{to}", id.data_id)
                )
            );
        }
        ConfigCmd::Rollback { config, version } => {
            let id = config.id()?;
            let v = c.rollback_config(&id, version, "mast-cli").await?;
            println!("restored version {version} as version {v}");
        }
    }
    Ok(())
}
