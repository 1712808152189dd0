//! `mast snapshot restore` and `mast snapshot status`: snapshot files read offline, as
//! `etcdctl snapshot restore` / `status` read them.
//!
//! Two formats are read, told apart by their first bytes: Mast's own (a store file, what
//! `Maintenance.Snapshot` streams from Mast) and etcd's (a bbolt file, what
//! `etcdctl snapshot save` writes from etcd, or an etcd member's `member/snap/db`). Either
//! may end with the SHA-256 of what comes before it, as the snapshot stream sends it; as
//! etcd, a file whose size leaves 32 bytes over a multiple of 512 has one, it must match, and
//! a file without one is refused unless `--skip-hash-check` is given.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mast_mvcc::import::{ImportSummary, StoreBuilder};
use mast_proto::authpb::{Role, User};
use mast_proto::leasepb::Lease;
use mast_proto::mvccpb::KeyValue;
use prost::Message;
use sha2::Digest;

use crate::cli::Format;
use mast_mvcc::bolt::Bolt;

/// First bytes of a redb file: a Mast snapshot.
const REDB_MAGIC: &[u8] = b"redb\x1a\x0a\xa9\x0d\x0a";
/// bbolt's magic number, little-endian at byte 16 of its first meta page: an etcd snapshot.
const BOLT_MAGIC: u32 = 0xED0C_DAED;
/// Bytes of the SHA-256 a snapshot may end with.
const HASH_LEN: u64 = 32;

/// The format of a snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    /// A Mast store file.
    Mast,
    /// An etcd backend (bbolt) file.
    Etcd,
}

impl std::fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotKind::Mast => "mast",
            SnapshotKind::Etcd => "etcd",
        })
    }
}

/// Flags of `mast snapshot restore`, as `etcdctl snapshot restore`'s.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot file: from `mast snapshot save`, `etcdctl snapshot save` (against Mast
    /// or etcd), or an etcd member's `member/snap/db` (with `--skip-hash-check`).
    pub path: PathBuf,
    /// The data directory to create; it must not exist.
    #[arg(long, default_value = "mast-data")]
    pub data_dir: PathBuf,
    /// Name of the member this directory is for.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The new cluster's members, `name=peerURL,…` (default: this member alone).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// The new cluster's token: with the members, it gives the cluster and member IDs.
    #[arg(long, default_value = mast_raft::identity::DEFAULT_CLUSTER_TOKEN)]
    pub initial_cluster_token: String,
    /// This member's peer URLs, comma-separated.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Restore a file that carries no SHA-256 (or a wrong one).
    #[arg(long)]
    pub skip_hash_check: bool,
}

/// What `mast snapshot status` shows, as `etcdctl snapshot status`.
#[derive(Debug, serde::Serialize)]
struct Status {
    /// CRC-32 (Castagnoli) of every table or bucket name, key and value, in order.
    hash: u32,
    /// The store revision.
    revision: i64,
    /// Rows in every table or bucket.
    #[serde(rename = "totalKey")]
    total_keys: u64,
    /// Bytes of the database (without the trailing hash).
    #[serde(rename = "totalSize")]
    total_size: u64,
    /// `mast` or `etcd`.
    format: String,
}

/// A snapshot file's database, copied out without its hash.
struct Opened {
    kind: SnapshotKind,
    /// The copy (a scratch file the caller removes).
    db: PathBuf,
    /// Bytes of the database.
    size: u64,
}

fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what:>10} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}}"
        ))
        .expect("valid template"),
    );
    bar
}

/// Copies the database of snapshot `path` into `scratch`, checking its trailing SHA-256 as
/// etcd's restore does.
fn open_snapshot(path: &Path, scratch: &Path, skip_hash_check: bool) -> anyhow::Result<Opened> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let has_hash = len % 512 == HASH_LEN && len > HASH_LEN;
    let size = if has_hash { len - HASH_LEN } else { len };
    let mut head = [0u8; 20];
    file.read_exact(&mut head)
        .with_context(|| format!("{} is too short to be a snapshot", path.display()))?;
    let kind = if head.starts_with(REDB_MAGIC) {
        SnapshotKind::Mast
    } else if u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) == BOLT_MAGIC {
        SnapshotKind::Etcd
    } else {
        bail!(
            "{} is neither a Mast nor an etcd snapshot (unknown file format)",
            path.display()
        );
    };
    let mut file = std::fs::File::open(path)?;
    let mut out = std::fs::File::create(scratch)
        .with_context(|| format!("creating {}", scratch.display()))?;
    let bar = progress_bar(size, "reading");
    let mut sha = sha2::Sha256::new();
    let mut left = size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        file.read_exact(&mut buf[..n])?;
        sha.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.sync_all()?;
    if has_hash {
        let mut want = [0u8; HASH_LEN as usize];
        file.read_exact(&mut want)?;
        let got = sha.finalize();
        if got.as_slice() != want && !skip_hash_check {
            bail!(
                "snapshot file integrity check failed: expected sha256 {}, got {}",
                hex(&want),
                hex(&got)
            );
        }
    } else if !skip_hash_check {
        bail!("snapshot missing hash but --skip-hash-check=false");
    }
    Ok(Opened {
        kind,
        db: scratch.to_path_buf(),
        size,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A revision as etcd's backend writes it in its key bucket: 8 bytes big-endian main, `_`,
/// 8 bytes big-endian sub, and a `t` for a delete.
fn etcd_revision(k: &[u8]) -> anyhow::Result<(i64, i64, bool)> {
    if !(k.len() == 17 || k.len() == 18) || k[8] != b'_' {
        bail!("etcd key bucket: {} is not a revision", hex(k));
    }
    let main = i64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
    let sub = i64::from_be_bytes(k[9..17].try_into().expect("8 bytes"));
    Ok((main, sub, k.len() == 18 && k[17] == b't'))
}

/// Writes the contents of etcd backend `db` into a new store file at `dest`: every kept
/// key revision, the leases, users, roles, auth flag and revision, and the compacted
/// revision. Membership, alarms and etcd's consistent index stay behind.
fn import_etcd(db: &Path, dest: &Path, size: u64) -> anyhow::Result<ImportSummary> {
    let bolt = Bolt::open(db).context("opening the etcd database")?;
    let mut builder = StoreBuilder::create(dest)?;
    let bar = progress_bar(size, "restoring");
    bolt.for_each(b"key", |k, v| -> anyhow::Result<()> {
        let (main, sub, tombstone) = etcd_revision(k)?;
        let kv = KeyValue::decode(v).context("etcd key bucket: a value")?;
        builder.key_revision(main, sub, tombstone, kv)?;
        bar.inc((k.len() + v.len()) as u64);
        Ok(())
    })?;
    bolt.for_each(b"lease", |_, v| -> anyhow::Result<()> {
        let l = Lease::decode(v).context("etcd lease bucket: a value")?;
        Ok(builder.lease(l.id, l.ttl)?)
    })?;
    bolt.for_each(b"authUsers", |_, v| -> anyhow::Result<()> {
        Ok(builder.user(&User::decode(v).context("etcd authUsers bucket")?)?)
    })?;
    bolt.for_each(b"authRoles", |_, v| -> anyhow::Result<()> {
        Ok(builder.role(&Role::decode(v).context("etcd authRoles bucket")?)?)
    })?;
    let enabled = bolt.get(b"auth", b"authEnabled")?.is_some_and(|v| v == [1]);
    let revision = bolt
        .get(b"auth", b"authRevision")?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(1, u64::from_be_bytes);
    builder.auth(enabled, revision);
    if let Some(v) = bolt.get(b"meta", b"finishedCompactRev")? {
        builder.compacted(etcd_revision(&v)?.0);
    }
    bar.finish_and_clear();
    let (_, summary) = builder.finish()?;
    Ok(summary)
}

/// `mast snapshot restore`: a new data directory from a snapshot file, ready to start a new
/// cluster (see [`RestoreArgs`]); prints what it holds.
///
/// # Errors
/// When the data directory exists, the file is not a snapshot or fails its hash check, or
/// the flags do not describe this member.
pub fn restore(args: &RestoreArgs, out: Format) -> anyhow::Result<()> {
    if args.data_dir.exists() {
        bail!("data-dir {:?} exists", args.data_dir.display().to_string());
    }
    let mut config = mast_server::ServerConfig::new(&args.data_dir);
    config.name = args.name.clone();
    config.initial_cluster = args.initial_cluster.clone();
    config.initial_cluster_token = args.initial_cluster_token.clone();
    config.advertise_peer_urls = args
        .initial_advertise_peer_urls
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    // Everything is built beside the data directory and moved into place at the end, so a
    // failed restore leaves nothing that looks like a data directory.
    let building = args.data_dir.with_extension("restoring");
    if building.exists() {
        std::fs::remove_dir_all(&building)?;
    }
    std::fs::create_dir_all(&building)?;
    let result = (|| -> anyhow::Result<(SnapshotKind, ImportSummary, u64)> {
        let mut member = config.member_config()?;
        member.data_dir = building.clone();
        let scratch = building.join("snapshot.source");
        let opened = open_snapshot(&args.path, &scratch, args.skip_hash_check)?;
        let dest = building.join("mast.redb");
        let summary = match opened.kind {
            SnapshotKind::Mast => {
                let bar = progress_bar(opened.size, "restoring");
                let s =
                    mast_mvcc::import::restore_copy(&opened.db, &dest, |n| bar.set_position(n))?;
                bar.finish_and_clear();
                s
            }
            SnapshotKind::Etcd => import_etcd(&opened.db, &dest, opened.size)?,
        };
        std::fs::remove_file(&scratch)?;
        // The store must open as a member would open it.
        let store = mast_mvcc::Store::open(&building).context("opening the restored store")?;
        let keys = store
            .range(&mast_proto::etcdserverpb::RangeRequest {
                key: vec![0].into(),
                range_end: vec![0].into(),
                count_only: true,
                ..Default::default()
            })?
            .count as u64;
        store.close()?;
        drop(store);
        let id = mast_raft::member::prepare_restored(&member)?;
        tracing::info!(member_id = %format!("{:x}", id.member_id), cluster_id = %format!("{:x}", id.cluster_id), "restored");
        Ok((opened.kind, summary, keys))
    })();
    let (kind, summary, keys) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            return Err(e);
        }
    };
    std::fs::rename(&building, &args.data_dir)?;
    if let Some(parent) = args.data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    let rows = [
        ("format", kind.to_string()),
        ("revision", summary.revision.to_string()),
        ("compacted revision", summary.compact_revision.to_string()),
        ("keys", keys.to_string()),
        ("key revisions", summary.key_revisions.to_string()),
        ("leases", summary.leases.to_string()),
        ("users", summary.users.to_string()),
        ("roles", summary.roles.to_string()),
        ("auth enabled", summary.auth_enabled.to_string()),
    ];
    crate::cli::print_summary("RESTORED", &rows, out);
    if out != Format::Json {
        println!(
            "Restored into {}; start it with `mast serve --name {} --data-dir {}` and its \
             listen flags (the --initial-cluster flags are no longer needed).",
            args.data_dir.display(),
            args.name,
            args.data_dir.display()
        );
    }
    Ok(())
}

/// `mast snapshot status`: the hash, revision, row count and size of a snapshot file, as
/// `etcdctl snapshot status` shows them (for an etcd file, the same numbers etcdctl shows).
///
/// # Errors
/// When the file is not a snapshot.
pub fn status(path: &Path, out: Format) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let result = (|| -> anyhow::Result<Status> {
        let opened = open_snapshot(path, &dir.join("snapshot.db"), true)?;
        let mut h = Crc32c::default();
        let mut total_keys = 0u64;
        let mut total_size = opened.size;
        let revision = match opened.kind {
            SnapshotKind::Etcd => {
                let bolt = Bolt::open(&opened.db).context("opening the etcd database")?;
                // etcd counts the pages its newest meta page covers.
                total_size = bolt.size;
                let mut revision = 0;
                for name in bolt.buckets()? {
                    h.update(&name);
                    bolt.for_each(&name, |k, v| -> anyhow::Result<()> {
                        h.update(k);
                        h.update(v);
                        if name == b"key" {
                            revision = etcd_revision(k)?.0;
                        }
                        total_keys += 1;
                        Ok(())
                    })?;
                }
                revision
            }
            SnapshotKind::Mast => {
                let (_db, view) = mast_mvcc::snapshot::file_view(&opened.db)?;
                let mut last = None;
                view.for_each_chunk(4 << 20, |chunk| {
                    if last != Some(chunk.table) {
                        h.update(format!("{:?}", chunk.table).as_bytes());
                        last = Some(chunk.table);
                    }
                    for (k, v) in &chunk.rows {
                        h.update(k);
                        h.update(v);
                    }
                    total_keys += chunk.rows.len() as u64;
                    Ok(())
                })?;
                view.revision()
            }
        };
        Ok(Status {
            hash: h.finish(),
            revision,
            total_keys,
            total_size,
            format: opened.kind.to_string(),
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let s = result?;
    match out {
        Format::Json => println!("{}", serde_json::to_string(&s)?),
        Format::Table => {
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::ASCII_FULL_CONDENSED);
            t.set_header(["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE", "FORMAT"]);
            t.add_row([
                format!("{:x}", s.hash),
                s.revision.to_string(),
                s.total_keys.to_string(),
                indicatif::DecimalBytes(s.total_size).to_string(),
                s.format.clone(),
            ]);
            println!("{t}");
        }
        Format::Simple => println!(
            "{:x}, {}, {}, {}, {}",
            s.hash,
            s.revision,
            s.total_keys,
            indicatif::DecimalBytes(s.total_size),
            s.format
        ),
    }
    Ok(())
}

/// A scratch directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("mast-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// CRC-32C (Castagnoli), the checksum etcd's `snapshot status` prints.
#[derive(Default)]
struct Crc32c(u32);

impl Crc32c {
    fn update(&mut self, bytes: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, bytes);
    }

    fn finish(&self) -> u32 {
        self.0
    }
}
