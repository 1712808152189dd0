//! `mast migrate`: copies a live etcd (any etcd v3 endpoint) into Mast through the etcd API —
//! roles with their permissions, users with their roles, leases with their IDs and TTLs, and
//! every key (or every key under a prefix) as of one revision of the source, attached to the
//! same leases. Shows progress and ends with a summary table.
//!
//! What the API cannot carry: revisions (the keys get Mast's next revisions, as
//! `etcdctl make-mirror` gives them), the history before the copied revision, and passwords
//! (etcd never returns them), so users are created without one and need a password set
//! before they can log in; the summary says so. Running it again copies the keys again and
//! adds only the roles, users, permissions and leases Mast lacks.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::Context;
use mast_proto::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthStatusRequest, AuthUserAddRequest, AuthUserGetRequest, AuthUserGrantRoleRequest,
    AuthUserListRequest, LeaseGrantRequest, LeaseLeasesRequest, LeaseTimeToLiveRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest, request_op,
};
use mast_sdk::{Client, ClientOptions};

use crate::cli::{Format, Global};

/// Flags of `mast migrate`; the destination is `--endpoints` / `--user`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The etcd endpoints to copy from, comma-separated.
    #[arg(long)]
    pub from: String,
    /// `user:password` on the source; needed to read users and roles when auth is on there.
    #[arg(long)]
    pub from_user: Option<String>,
    /// Copy only the keys under this prefix (default: every key).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Keys read per page and written per txn (at most the destination's --max-txn-ops).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
}

/// What a migration copied.
#[derive(Default, Debug)]
struct Summary {
    revision: i64,
    keys: u64,
    bytes: u64,
    skipped: u64,
    leases: u64,
    leases_there: u64,
    roles: u64,
    roles_there: u64,
    permissions: u64,
    users: u64,
    users_there: u64,
    source_auth: bool,
}

fn source_options(args: &MigrateArgs) -> ClientOptions {
    let mut o = ClientOptions::from_lookup(|_| None);
    o.endpoints = args
        .from
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(u) = &args.from_user {
        match u.split_once(':') {
            Some((n, p)) => {
                o.user = Some(n.to_string());
                o.password = Some(p.to_string());
            }
            None => o.user = Some(u.clone()),
        }
    }
    o
}

/// The end of the key range `[key, end)` a prefix (or everything, for `None`) covers.
fn key_range(prefix: &Option<String>) -> (Vec<u8>, Vec<u8>) {
    match prefix {
        None => (vec![0], vec![0]),
        Some(p) => {
            let mut end = p.as_bytes().to_vec();
            while let Some(last) = end.pop() {
                if last < 0xff {
                    end.push(last + 1);
                    return (p.as_bytes().to_vec(), end);
                }
            }
            (p.as_bytes().to_vec(), vec![0])
        }
    }
}

/// Roles and their permissions, then users and their roles.
async fn copy_auth(src: &Client, dst: &Client, s: &mut Summary) -> anyhow::Result<()> {
    let mut from = src.auth_client();
    let mut to = dst.auth_client();
    // etcd 3.4 has no AuthStatus (3.5 added it): then the note about auth is left out.
    s.source_auth = match from.auth_status(AuthStatusRequest {}).await {
        Ok(r) => r.into_inner().enabled,
        Err(e) if e.code() == tonic::Code::Unimplemented => false,
        Err(e) => return Err(e).context("source: auth status"),
    };
    let roles = from
        .role_list(AuthRoleListRequest {})
        .await
        .context("source: role list (with auth on, give --from-user with the root role)")?
        .into_inner()
        .roles;
    let have: BTreeSet<String> = to
        .role_list(AuthRoleListRequest {})
        .await
        .context("destination: role list")?
        .into_inner()
        .roles
        .into_iter()
        .collect();
    for role in roles {
        if have.contains(&role) {
            s.roles_there += 1;
        } else {
            to.role_add(AuthRoleAddRequest { name: role.clone() })
                .await
                .with_context(|| format!("destination: role add {role}"))?;
            s.roles += 1;
        }
        let perms = from
            .role_get(AuthRoleGetRequest { role: role.clone() })
            .await
            .with_context(|| format!("source: role get {role}"))?
            .into_inner()
            .perm;
        for perm in perms {
            to.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: role.clone(),
                perm: Some(perm),
            })
            .await
            .with_context(|| format!("destination: grant a permission to {role}"))?;
            s.permissions += 1;
        }
    }
    let users = from
        .user_list(AuthUserListRequest {})
        .await
        .context("source: user list")?
        .into_inner()
        .users;
    let have: BTreeSet<String> = to
        .user_list(AuthUserListRequest {})
        .await
        .context("destination: user list")?
        .into_inner()
        .users
        .into_iter()
        .collect();
    for user in users {
        let roles = from
            .user_get(AuthUserGetRequest { name: user.clone() })
            .await
            .with_context(|| format!("source: user get {user}"))?
            .into_inner()
            .roles;
        if have.contains(&user) {
            s.users_there += 1;
        } else {
            to.user_add(AuthUserAddRequest {
                name: user.clone(),
                options: Some(mast_proto::authpb::UserAddOptions { no_password: true }),
                ..Default::default()
            })
            .await
            .with_context(|| format!("destination: user add {user}"))?;
            s.users += 1;
        }
        for role in roles {
            to.user_grant_role(AuthUserGrantRoleRequest {
                user: user.clone(),
                role: role.clone(),
            })
            .await
            .with_context(|| format!("destination: grant {role} to {user}"))?;
        }
    }
    Ok(())
}

/// Leases with their IDs and granted TTLs (those Mast lacks).
async fn copy_leases(src: &Client, dst: &Client, s: &mut Summary) -> anyhow::Result<()> {
    let mut from = src.lease_client();
    let mut to = dst.lease_client();
    let leases = from
        .lease_leases(LeaseLeasesRequest {})
        .await
        .context("source: lease list")?
        .into_inner()
        .leases;
    let have: BTreeSet<i64> = to
        .lease_leases(LeaseLeasesRequest {})
        .await
        .context("destination: lease list")?
        .into_inner()
        .leases
        .into_iter()
        .map(|l| l.id)
        .collect();
    for l in leases {
        if have.contains(&l.id) {
            s.leases_there += 1;
            continue;
        }
        let ttl = from
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: l.id,
                keys: false,
            })
            .await
            .context("source: lease time-to-live")?
            .into_inner();
        if ttl.ttl < 0 {
            // Expired since it was listed.
            continue;
        }
        to.lease_grant(LeaseGrantRequest {
            id: l.id,
            ttl: ttl.granted_ttl,
        })
        .await
        .with_context(|| format!("destination: lease grant {:x}", l.id))?;
        s.leases += 1;
    }
    Ok(())
}

/// Every key of the range as of one source revision, page by page, each page one txn.
async fn copy_keys(
    src: &Client,
    dst: &Client,
    args: &MigrateArgs,
    s: &mut Summary,
) -> anyhow::Result<()> {
    let (mut key, end) = key_range(&args.prefix);
    let first = src
        .range(RangeRequest {
            key: key.clone().into(),
            range_end: end.clone().into(),
            count_only: true,
            ..Default::default()
        })
        .await
        .context("source: count keys")?;
    s.revision = first.header.map_or(0, |h| h.revision);
    let bar = indicatif::ProgressBar::new(first.count.max(0) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} keys {per_sec} eta {eta}")
            .expect("valid template"),
    );
    let leases: BTreeSet<i64> = dst
        .lease_client()
        .lease_leases(LeaseLeasesRequest {})
        .await
        .context("destination: lease list")?
        .into_inner()
        .leases
        .into_iter()
        .map(|l| l.id)
        .collect();
    loop {
        let page = src
            .range(RangeRequest {
                key: key.clone().into(),
                range_end: end.clone().into(),
                limit: i64::from(args.batch),
                revision: s.revision,
                ..Default::default()
            })
            .await
            .context("source: read keys")?;
        let Some(last) = page.kvs.last() else { break };
        let mut next = last.key.to_vec();
        next.push(0);
        let mut ops = Vec::with_capacity(page.kvs.len());
        for kv in &page.kvs {
            // A key whose lease expired between the lease copy and now went with it.
            if kv.lease != 0 && !leases.contains(&kv.lease) {
                s.skipped += 1;
                continue;
            }
            s.bytes += (kv.key.len() + kv.value.len()) as u64;
            ops.push(RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                    lease: kv.lease,
                    ..Default::default()
                })),
            });
        }
        let n = ops.len() as u64;
        if !ops.is_empty() {
            dst.txn(TxnRequest {
                success: ops,
                ..Default::default()
            })
            .await
            .context("destination: write keys")?;
        }
        s.keys += n;
        bar.inc(page.kvs.len() as u64);
        if !page.more {
            break;
        }
        key = next;
    }
    bar.finish_and_clear();
    Ok(())
}

/// `mast migrate`.
///
/// # Errors
/// When either side cannot be reached, or refuses a read or write.
pub async fn run(g: &Global, args: &MigrateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let src = Client::connect(source_options(args))
        .await
        .context("connecting to the source")?;
    let dst = g.connect().await.context("connecting to Mast")?;
    let mut s = Summary::default();
    copy_auth(&src, &dst, &mut s).await?;
    copy_leases(&src, &dst, &mut s).await?;
    copy_keys(&src, &dst, args, &mut s).await?;
    let rows = [
        ("source revision", s.revision.to_string()),
        ("keys copied", s.keys.to_string()),
        ("bytes copied", indicatif::DecimalBytes(s.bytes).to_string()),
        ("keys skipped (lease gone)", s.skipped.to_string()),
        ("leases copied", s.leases.to_string()),
        ("leases already there", s.leases_there.to_string()),
        ("roles copied", s.roles.to_string()),
        ("roles already there", s.roles_there.to_string()),
        ("permissions granted", s.permissions.to_string()),
        ("users copied (no password)", s.users.to_string()),
        ("users already there", s.users_there.to_string()),
        ("seconds", format!("{:.1}", started.elapsed().as_secs_f64())),
    ];
    crate::cli::print_summary("MIGRATED", &rows, g.write_out);
    if g.write_out != Format::Json {
        if s.users > 0 {
            println!(
                "Users were created without passwords (etcd does not reveal them): set them with \
                 `etcdctl user passwd` before they log in."
            );
        }
        if s.source_auth {
            println!("Auth is enabled on the source; enable it on Mast once passwords are set.");
        }
    }
    Ok(())
}
