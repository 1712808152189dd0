//! `mast member …` and `mast endpoint …`: etcdctl's cluster commands, with its output.

use anyhow::{Context, bail};
use clap::Subcommand;
use comfy_table::Table;
use mast_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest, RangeRequest, StatusRequest,
};
use mast_sdk::Client;

use crate::cli::{Format, Global, print_json};

/// `mast member …`.
#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// Lists the members.
    List,
    /// Adds a member (voter, or learner with --learner); then start it with
    /// --initial-cluster-state existing and the settings printed.
    Add {
        /// The new member's name.
        name: String,
        /// Its peer URLs, comma-separated.
        #[arg(long = "peer-urls")]
        peer_urls: String,
        /// Add it as a learner (it does not vote until promoted).
        #[arg(long)]
        learner: bool,
    },
    /// Removes a member (hex ID, as `member list` prints it).
    Remove {
        /// Member ID in hex.
        id: String,
    },
    /// Changes a member's peer URLs.
    Update {
        /// Member ID in hex.
        id: String,
        /// The new peer URLs, comma-separated.
        #[arg(long = "peer-urls")]
        peer_urls: String,
    },
    /// Makes a learner a voting member once it has caught up.
    Promote {
        /// Member ID in hex.
        id: String,
    },
}

/// `mast endpoint …`.
#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// Status of each endpoint (or, with --cluster, of every member).
    Status {
        /// Ask every member found in the member list, not only --endpoints.
        #[arg(long)]
        cluster: bool,
    },
    /// Whether each endpoint serves a linearizable read.
    Health {
        /// Check every member found in the member list, not only --endpoints.
        #[arg(long)]
        cluster: bool,
    },
}

/// Parses a member ID as etcdctl does (hex).
fn parse_id(s: &str) -> anyhow::Result<u64> {
    u64::from_str_radix(s, 16)
        .map_err(|_| anyhow::anyhow!("bad member ID arg ({s}), expecting ID in Hex"))
}

fn urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

fn status_word(m: &Member) -> &'static str {
    if m.name.is_empty() {
        "unstarted"
    } else {
        "started"
    }
}

fn cluster_id(h: &Option<mast_proto::etcdserverpb::ResponseHeader>) -> u64 {
    h.as_ref().map_or(0, |h| h.cluster_id)
}

/// Runs a member command.
///
/// # Errors
/// Connection and server errors.
pub async fn member(g: &Global, out: Format, cmd: MemberCmd) -> anyhow::Result<()> {
    let c = g.connect().await?;
    let mut cluster = c.cluster_client();
    match cmd {
        MemberCmd::List => {
            let r = cluster
                .member_list(MemberListRequest { linearizable: true })
                .await?
                .into_inner();
            match out {
                Format::Json => print_json(&r)?,
                Format::Table => {
                    let mut t = Table::new();
                    t.set_header([
                        "ID",
                        "STATUS",
                        "NAME",
                        "PEER ADDRS",
                        "CLIENT ADDRS",
                        "IS LEARNER",
                    ]);
                    for m in &r.members {
                        t.add_row([
                            format!("{:x}", m.id),
                            status_word(m).into(),
                            m.name.clone(),
                            m.peer_ur_ls.join(","),
                            m.client_ur_ls.join(","),
                            m.is_learner.to_string(),
                        ]);
                    }
                    println!("{t}");
                }
                Format::Simple => {
                    for m in &r.members {
                        println!(
                            "{:x}, {}, {}, {}, {}, {}",
                            m.id,
                            status_word(m),
                            m.name,
                            m.peer_ur_ls.join(", "),
                            m.client_ur_ls.join(", "),
                            m.is_learner
                        );
                    }
                }
            }
        }
        MemberCmd::Add {
            name,
            peer_urls,
            learner,
        } => {
            let peer = urls(&peer_urls);
            let r = cluster
                .member_add(MemberAddRequest {
                    peer_ur_ls: peer.clone(),
                    is_learner: learner,
                })
                .await?
                .into_inner();
            if out == Format::Json {
                return print_json(&r);
            }
            let id = r.member.as_ref().map_or(0, |m| m.id);
            println!(
                "Member {id:16x} added to cluster {:16x}",
                cluster_id(&r.header)
            );
            let mut initial = Vec::new();
            for m in &r.members {
                let n = if m.id == id {
                    name.as_str()
                } else {
                    m.name.as_str()
                };
                for u in &m.peer_ur_ls {
                    initial.push(format!("{n}={u}"));
                }
            }
            println!();
            println!("MAST_NAME=\"{name}\"");
            println!("MAST_INITIAL_CLUSTER=\"{}\"", initial.join(","));
            println!("MAST_INITIAL_ADVERTISE_PEER_URLS=\"{}\"", peer.join(","));
            println!("MAST_INITIAL_CLUSTER_STATE=\"existing\"");
        }
        MemberCmd::Remove { id } => {
            let id = parse_id(&id)?;
            let r = cluster
                .member_remove(MemberRemoveRequest { id })
                .await?
                .into_inner();
            match out {
                Format::Json => print_json(&r)?,
                _ => println!(
                    "Member {id:16x} removed from cluster {:16x}",
                    cluster_id(&r.header)
                ),
            }
        }
        MemberCmd::Update { id, peer_urls } => {
            let id = parse_id(&id)?;
            let r = cluster
                .member_update(MemberUpdateRequest {
                    id,
                    peer_ur_ls: urls(&peer_urls),
                })
                .await?
                .into_inner();
            match out {
                Format::Json => print_json(&r)?,
                _ => println!(
                    "Member {id:16x} updated in cluster {:16x}",
                    cluster_id(&r.header)
                ),
            }
        }
        MemberCmd::Promote { id } => {
            let id = parse_id(&id)?;
            let r = cluster
                .member_promote(MemberPromoteRequest { id })
                .await?
                .into_inner();
            match out {
                Format::Json => print_json(&r)?,
                _ => println!(
                    "Member {id:16x} promoted in cluster {:16x}",
                    cluster_id(&r.header)
                ),
            }
        }
    }
    Ok(())
}

/// The endpoints to ask: `--endpoints`, or with `cluster` every member's client URLs.
async fn endpoints(g: &Global, cluster: bool) -> anyhow::Result<Vec<String>> {
    let given = g.endpoint_list();
    if !cluster {
        return Ok(given);
    }
    let c = g.connect().await?;
    let r = c
        .cluster_client()
        .member_list(MemberListRequest { linearizable: true })
        .await
        .context("failed to fetch endpoints from etcd cluster member list")?
        .into_inner();
    Ok(r.members
        .iter()
        .flat_map(|m| m.client_ur_ls.iter().cloned())
        .collect())
}

async fn connect_one(g: &Global, ep: &str) -> anyhow::Result<Client> {
    let mut one = g.clone();
    one.endpoints = Some(ep.to_string());
    one.connect().await
}

/// Runs an endpoint command.
///
/// # Errors
/// Connection errors, and `unhealthy cluster` when an endpoint is not healthy.
pub async fn endpoint(g: &Global, out: Format, cmd: EndpointCmd) -> anyhow::Result<()> {
    match cmd {
        EndpointCmd::Status { cluster } => {
            let eps = endpoints(g, cluster).await?;
            let mut rows = Vec::new();
            let mut failed = false;
            for ep in &eps {
                let r = async {
                    connect_one(g, ep)
                        .await?
                        .maintenance_client()
                        .status(StatusRequest::default())
                        .await
                        .map(|r| r.into_inner())
                        .map_err(anyhow::Error::from)
                }
                .await;
                match r {
                    Ok(s) => rows.push((ep.clone(), s)),
                    Err(e) => {
                        eprintln!("Failed to get the status of endpoint {ep} ({e})");
                        failed = true;
                    }
                }
            }
            match out {
                Format::Json => {
                    let v: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|(ep, s)| serde_json::json!({"Endpoint": ep, "Status": s}))
                        .collect();
                    println!("{}", serde_json::to_string(&v)?);
                }
                Format::Table => {
                    let mut t = Table::new();
                    t.set_header([
                        "ENDPOINT",
                        "ID",
                        "VERSION",
                        "DB SIZE",
                        "IS LEADER",
                        "IS LEARNER",
                        "RAFT TERM",
                        "RAFT INDEX",
                        "RAFT APPLIED INDEX",
                        "ERRORS",
                    ]);
                    for (ep, s) in &rows {
                        let id = s.header.as_ref().map_or(0, |h| h.member_id);
                        t.add_row([
                            ep.clone(),
                            format!("{id:x}"),
                            s.version.clone(),
                            format!("{} B", s.db_size),
                            (s.leader == id).to_string(),
                            s.is_learner.to_string(),
                            s.raft_term.to_string(),
                            s.raft_index.to_string(),
                            s.raft_applied_index.to_string(),
                            s.errors.join(", "),
                        ]);
                    }
                    println!("{t}");
                }
                Format::Simple => {
                    for (ep, s) in &rows {
                        let id = s.header.as_ref().map_or(0, |h| h.member_id);
                        println!(
                            "{ep}, {id:x}, {}, {} B, {}, {}, {}, {}, {}, {}",
                            s.version,
                            s.db_size,
                            s.leader == id,
                            s.is_learner,
                            s.raft_term,
                            s.raft_index,
                            s.raft_applied_index,
                            s.errors.join(", ")
                        );
                    }
                }
            }
            if failed {
                bail!("failed to get the status of some endpoints");
            }
        }
        EndpointCmd::Health { cluster } => {
            let eps = endpoints(g, cluster).await?;
            let mut unhealthy = false;
            let mut report = Vec::new();
            for ep in &eps {
                let started = std::time::Instant::now();
                let r = async {
                    connect_one(g, ep)
                        .await?
                        .range(RangeRequest {
                            key: "health".into(),
                            ..Default::default()
                        })
                        .await
                        .map_err(anyhow::Error::from)
                }
                .await;
                let took = started.elapsed();
                // As etcdctl: a permission error still means the member serves reads.
                let err = r
                    .err()
                    .filter(|e| !e.to_string().contains("permission denied"));
                match (&err, out) {
                    (_, Format::Json) => {}
                    (None, _) => println!(
                        "{ep} is healthy: successfully committed proposal: took = {took:?}"
                    ),
                    (Some(e), _) => {
                        eprintln!("{ep} is unhealthy: failed to commit proposal: {e}")
                    }
                }
                unhealthy |= err.is_some();
                report.push(serde_json::json!({
                    "endpoint": ep,
                    "health": err.is_none(),
                    "took": format!("{took:?}"),
                    "error": err.map(|e| e.to_string()),
                }));
            }
            if out == Format::Json {
                println!("{}", serde_json::to_string(&report)?);
            }
            if unhealthy {
                bail!("unhealthy cluster");
            }
        }
    }
    Ok(())
}
