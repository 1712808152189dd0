//! Starting a member: its identity (as etcd derives and keeps it), its log and state machine,
//! and openraft over them; bootstrapping a new cluster or joining an existing one, as etcd's
//! `--initial-cluster-state new|existing`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mast_mvcc::Store;

use crate::identity::{self, InitialMember};
use crate::log_store::{LogOptions, LogStore};
use crate::network::{PeerNetwork, Peers};
use crate::state_machine::{ApplyObserver, StateMachine, StateMachineOptions};
use crate::types::{Member, MemberId, Raft};

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `--initial-cluster`.
    New,
    /// Join a cluster that already runs (after `member add`).
    Existing,
}

/// How a member starts, from `mast serve`'s flags.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// `--name`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--initial-cluster`, parsed.
    pub initial_cluster: Vec<InitialMember>,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--initial-advertise-peer-urls`.
    pub advertise_peer_urls: Vec<String>,
    /// `--advertise-client-urls`.
    pub advertise_client_urls: Vec<String>,
    /// `--heartbeat-interval` (etcd's default 100 ms).
    pub heartbeat_interval: Duration,
    /// `--election-timeout` (etcd's default 1000 ms): followers wait between this and twice
    /// this without a heartbeat before they campaign.
    pub election_timeout: Duration,
    /// Size of each log segment in bytes.
    pub segment_bytes: u64,
    /// Bytes of applied commands between store checkpoints.
    pub checkpoint_bytes: u64,
    /// Peer TLS (`--peer-cert-file` and friends); used to dial `https://` peer URLs.
    pub peer_tls: Option<crate::tls::PeerTls>,
}

/// A member's cluster and member IDs, kept in `<data-dir>/member.json` from its first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's ID.
    pub cluster_id: u64,
    /// This member's ID.
    pub member_id: MemberId,
}

/// A member that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Files could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The log does not open.
    #[error(transparent)]
    Log(#[from] crate::log_store::LogOpenError),
    /// The flags do not describe this member, as etcd's bootstrap checks.
    #[error("{0}")]
    Config(String),
    /// No member of the existing cluster answered, or none knows this member.
    #[error("{0}")]
    Join(String),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// A running member's consensus: the Raft handle, its identity and its peer connections.
pub struct RaftMember {
    /// The openraft handle.
    pub raft: Raft,
    /// Cluster and member IDs.
    pub identity: Identity,
    /// Connections to the other members.
    pub peers: Peers,
    /// `<data-dir>/raft`.
    pub dir: PathBuf,
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member.json")
}

/// The members a new cluster starts with, as `member.json` keeps them between a snapshot
/// restore and the member's first start.
type InitialMembers = BTreeMap<MemberId, Member>;

/// `member.json`: the identity, and the initial members when a restore prepared the
/// directory and the member has not started since.
fn load_identity(
    data_dir: &Path,
) -> Result<Option<(Identity, Option<InitialMembers>)>, StartError> {
    let bytes = match std::fs::read(identity_path(data_dir)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let bad = |e: String| StartError::Config(format!("member.json: {e}"));
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("does not parse: {e}")))?;
    let get = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad(format!("has no {k}")))
    };
    let identity = Identity {
        cluster_id: get("cluster_id")?,
        member_id: get("member_id")?,
    };
    let initial = match v.get("initial_members") {
        None => None,
        Some(list) => {
            let list: Vec<(MemberId, String, Vec<String>)> =
                serde_json::from_value(list.clone())
                    .map_err(|e| bad(format!("initial_members: {e}")))?;
            Some(
                list.into_iter()
                    .map(|(id, name, peer_urls)| {
                        let m = Member {
                            name,
                            peer_urls,
                            client_urls: Vec::new(),
                        };
                        (id, m)
                    })
                    .collect(),
            )
        }
    };
    Ok(Some((identity, initial)))
}

fn save_identity(
    data_dir: &Path,
    id: Identity,
    initial: Option<&InitialMembers>,
) -> Result<(), StartError> {
    let mut body = serde_json::json!({"cluster_id": id.cluster_id, "member_id": id.member_id});
    if let Some(members) = initial {
        let list: Vec<_> = members
            .iter()
            .map(|(id, m)| serde_json::json!([id, m.name, m.peer_urls]))
            .collect();
        body["initial_members"] = serde_json::Value::Array(list);
    }
    let tmp = data_dir.join("member.json.tmp");
    std::fs::write(&tmp, body.to_string())?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, identity_path(data_dir))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

fn normalize(urls: &[String]) -> Vec<String> {
    let mut v: Vec<String> = urls
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    v.sort();
    v
}

/// etcd's bootstrap checks for `--initial-cluster-state new`: this member is in the initial
/// cluster under its name, with the URLs it advertises. Returns every member's ID and info.
fn bootstrap_members(cfg: &MemberConfig) -> Result<BTreeMap<MemberId, Member>, StartError> {
    let me = cfg
        .initial_cluster
        .iter()
        .find(|m| m.name == cfg.name)
        .ok_or_else(|| {
            StartError::Config(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                cfg.name
            ))
        })?;
    let adv = normalize(&cfg.advertise_peer_urls);
    let listed = normalize(&me.peer_urls);
    if adv != listed {
        return Err(StartError::Config(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
            me.name,
            me.peer_urls.join(","),
            cfg.advertise_peer_urls.join(",")
        )));
    }
    let mut out = BTreeMap::new();
    for m in &cfg.initial_cluster {
        let id = identity::member_id(&m.peer_urls, &cfg.initial_cluster_token, None);
        // Every member must initialize with the same membership (the entry has the same
        // log ID everywhere): client URLs come later, when each member publishes its own.
        let member = Member {
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            client_urls: Vec::new(),
        };
        if out.insert(id, member).is_some() {
            return Err(StartError::Config(format!(
                "member exists with identical ID {id:x}"
            )));
        }
    }
    Ok(out)
}

/// Prepares `cfg.data_dir` (which holds a restored store and nothing else) to start a new
/// cluster, as `etcdctl snapshot restore` does with `--name`, `--initial-cluster`,
/// `--initial-cluster-token` and `--initial-advertise-peer-urls`: checks the flags as a new
/// member's first start would, derives the cluster and member IDs, and writes `member.json`
/// with the initial members, so the first `mast serve` on the directory starts the cluster
/// without those flags (they are ignored from then on, as after etcd's restore).
///
/// # Errors
/// [`StartError::Config`] when the flags do not describe this member; [`StartError::Io`]
/// when `member.json` cannot be written.
pub fn prepare_restored(cfg: &MemberConfig) -> Result<Identity, StartError> {
    let members = bootstrap_members(cfg)?;
    let ids: Vec<u64> = members.keys().copied().collect();
    let id = Identity {
        cluster_id: identity::cluster_id(&ids),
        member_id: identity::member_id(&cfg.advertise_peer_urls, &cfg.initial_cluster_token, None),
    };
    save_identity(&cfg.data_dir, id, Some(&members))?;
    Ok(id)
}

/// The openraft configuration for these flags.
fn raft_config(cfg: &MemberConfig) -> Result<Arc<openraft::Config>, StartError> {
    let hb = cfg.heartbeat_interval.as_millis().max(1) as u64;
    let et = cfg.election_timeout.as_millis() as u64;
    // openraft's follower campaigns after a random timeout in [min, max) *plus* a leader lease
    // of `max` (during which it also refuses to vote for others, so a partitioned member
    // cannot disrupt a healthy leader, as etcd's pre-vote). With min = ¼ and max = ½ of the
    // election timeout, a follower campaigns ¾ to 1 election timeout after the last
    // heartbeat, about when an etcd follower would.
    let max = (et / 2).max(hb * 2 + 2);
    let min = (et / 4).max(hb + 1).min(max - 1);
    let c = openraft::Config {
        cluster_name: cfg.initial_cluster_token.clone(),
        heartbeat_interval: hb,
        election_timeout_min: min,
        election_timeout_max: max,
        // An entry is a batch of commands: a few hundred of them are plenty per message.
        max_payload_entries: 256,
        // A snapshot is a checkpoint of the store; the log behind it goes.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 1_000,
        purge_batch_size: 256,
        install_snapshot_timeout: 60_000,
        ..Default::default()
    };
    Ok(Arc::new(
        c.validate()
            .map_err(|e| StartError::Config(e.to_string()))?,
    ))
}

impl RaftMember {
    /// Starts this member's consensus over `store`: the identity as etcd's bootstrap decides
    /// it (kept from the first start; the `--initial-cluster*` flags are ignored afterwards,
    /// as etcd's), the log under `<data-dir>/raft`, and openraft. A new cluster is
    /// initialized with every `--initial-cluster` member as a voter; a member joining an
    /// existing cluster learns its ID by asking the others.
    ///
    /// # Errors
    /// [`StartError`] when the flags do not describe this member, the files cannot be
    /// opened, or no member of an existing cluster answers.
    pub async fn start(
        cfg: &MemberConfig,
        store: Arc<Store>,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<RaftMember, StartError> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let dir = cfg.data_dir.join("raft");
        std::fs::create_dir_all(&dir)?;
        let mut initial = None;
        let identity = match load_identity(&cfg.data_dir)? {
            Some((id, restored)) => {
                tracing::info!(
                    data_dir = %cfg.data_dir.display(),
                    "server has been already initialized; --initial-cluster flags are ignored"
                );
                // A directory a snapshot restore prepared: the new cluster's members.
                initial = restored;
                id
            }
            None => {
                let id = match cfg.initial_cluster_state {
                    ClusterState::New => {
                        let members = bootstrap_members(cfg)?;
                        let ids: Vec<u64> = members.keys().copied().collect();
                        let member_id = identity::member_id(
                            &cfg.advertise_peer_urls,
                            &cfg.initial_cluster_token,
                            None,
                        );
                        initial = Some(members);
                        Identity {
                            cluster_id: identity::cluster_id(&ids),
                            member_id,
                        }
                    }
                    ClusterState::Existing => join_identity(cfg).await?,
                };
                save_identity(&cfg.data_dir, id, None)?;
                id
            }
        };
        let log = LogStore::open(
            &dir,
            LogOptions {
                segment_bytes: cfg.segment_bytes,
            },
        )?;
        let sm = StateMachine::new(
            store,
            observer,
            dir.clone(),
            StateMachineOptions {
                checkpoint_bytes: cfg.checkpoint_bytes,
            },
        )
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let peers = Peers::new(
            identity.cluster_id,
            identity.member_id,
            peer_client_tls(cfg)?,
        );
        let raft = Raft::new(
            identity.member_id,
            raft_config(cfg)?,
            PeerNetwork::new(peers.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        if let Some(members) = initial {
            for (id, m) in &members {
                peers.set_member(*id, m);
            }
            match raft.initialize(members).await {
                Ok(()) => {}
                // Already initialized (a log exists): a restart that lost member.json.
                Err(openraft::error::RaftError::APIError(
                    openraft::error::InitializeError::NotAllowed(_),
                )) => {}
                Err(e) => return Err(StartError::Raft(e.to_string())),
            }
            // The membership is in the log now: a restored member's pending list goes.
            save_identity(&cfg.data_dir, identity, None)?;
        }
        // Keep the peer connections in step with the membership.
        let watch_peers = peers.clone();
        let mut metrics = raft.metrics();
        tokio::spawn(async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    for (id, node) in m.membership_config.nodes() {
                        watch_peers.set_member(*id, node);
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
        tracing::info!(
            member_id = %format!("{:x}", identity.member_id),
            cluster_id = %format!("{:x}", identity.cluster_id),
            "raft started"
        );
        Ok(RaftMember {
            raft,
            identity,
            peers,
            dir,
        })
    }
}

fn peer_client_tls(
    cfg: &MemberConfig,
) -> Result<Option<tonic::transport::ClientTlsConfig>, StartError> {
    cfg.peer_tls
        .as_ref()
        .map(crate::tls::PeerTls::client_config)
        .transpose()
        .map_err(|e| StartError::Config(e.to_string()))
}

/// `--initial-cluster-state existing`: asks the other members of `--initial-cluster` for the
/// cluster's ID and membership, and finds this member in it by its peer URLs (as etcd's
/// `VerifyJoinExisting`, which takes the IDs from the running cluster).
async fn join_identity(cfg: &MemberConfig) -> Result<Identity, StartError> {
    let mine = normalize(&cfg.advertise_peer_urls);
    let probe = Peers::new(0, 0, peer_client_tls(cfg)?);
    let mut last_error = String::from("no other member in --initial-cluster");
    for m in cfg.initial_cluster.iter().filter(|m| m.name != cfg.name) {
        for url in &m.peer_urls {
            match probe.members_at(url).await {
                Ok((cluster_id, _, _, membership)) => {
                    let found = membership
                        .nodes()
                        .find(|(_, n)| normalize(&n.peer_urls) == mine)
                        .map(|(id, _)| *id);
                    return match found {
                        Some(member_id) => Ok(Identity {
                            cluster_id,
                            member_id,
                        }),
                        None => Err(StartError::Join(format!(
                            "error validating peerURLs: no member of cluster {cluster_id:x} has \
                             peer URLs {}; add it first with `member add`",
                            cfg.advertise_peer_urls.join(",")
                        ))),
                    };
                }
                Err(e) => last_error = e.to_string(),
            }
        }
    }
    Err(StartError::Join(format!(
        "cannot fetch cluster info from peer urls: could not retrieve cluster information from \
         the given URLs ({last_error})"
    )))
}
