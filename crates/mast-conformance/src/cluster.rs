//! Clusters of servers on loopback: several `mast serve` (or `etcd`) processes that bootstrap
//! one cluster from the same `--initial-cluster`, for the cluster tests and the 3-member
//! benchmarks.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{MemberSpec, Server, ServerKind, ServerOptions};

/// A cluster's members, in the order they were made (`m0`, `m1`, …). Dropping it stops every
/// member by its PID.
#[derive(Debug)]
pub struct Cluster {
    kind: ServerKind,
    token: String,
    /// The members; a test may kill, restart, remove and add them.
    pub members: Vec<Server>,
}

/// What `endpoint status` says of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's ID.
    pub id: u64,
    /// The leader it sees (0: none).
    pub leader: u64,
    /// The Raft term.
    pub term: u64,
    /// Its last Raft index.
    pub raft_index: u64,
    /// Its store revision.
    pub revision: i64,
    /// Whether it is a learner.
    pub is_learner: bool,
}

impl Cluster {
    /// Starts `n` members of `kind` as one new cluster and waits until every one answers.
    ///
    /// # Errors
    /// When a member cannot start or does not answer within the harness's timeout.
    pub fn start(kind: ServerKind, n: usize) -> anyhow::Result<Cluster> {
        Self::start_with(kind, n, &[] as &[&str])
    }

    /// As [`Cluster::start`], with extra flags for every member.
    ///
    /// # Errors
    /// When a member cannot start or does not answer within the harness's timeout.
    pub fn start_with<S: AsRef<str>>(
        kind: ServerKind,
        n: usize,
        args: &[S],
    ) -> anyhow::Result<Cluster> {
        Self::start_with_options(kind, n, &ServerOptions::default().args(args))
    }

    /// As [`Cluster::start`], every member with `options` (its name and cluster flags are the
    /// harness's).
    ///
    /// # Errors
    /// When a member cannot start or does not answer within the harness's timeout.
    pub fn start_with_options(
        kind: ServerKind,
        n: usize,
        options: &ServerOptions,
    ) -> anyhow::Result<Cluster> {
        Self::start_each(kind, n, |_| options.clone())
    }

    /// As [`Cluster::start`], member `i` with `options(i)` (its name and cluster flags are the
    /// harness's): for flags that differ per member, such as a port.
    ///
    /// # Errors
    /// When a member cannot start or does not answer within the harness's timeout.
    pub fn start_each(
        kind: ServerKind,
        n: usize,
        options: impl Fn(usize) -> ServerOptions,
    ) -> anyhow::Result<Cluster> {
        Self::start_prepared(kind, n, options, |_, _, _| Ok(()))
    }

    /// As [`Cluster::start_each`], calling `prepare(member, initial_cluster, token)` for each
    /// member before it starts (its data directory does not exist yet): to fill the
    /// directory, as a snapshot restore does.
    ///
    /// # Errors
    /// `prepare`'s error, or when a member cannot start or does not answer in time.
    pub fn start_prepared(
        kind: ServerKind,
        n: usize,
        options: impl Fn(usize) -> ServerOptions,
        prepare: impl Fn(&Server, &str, &str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Cluster> {
        let token = format!("conformance-{}-{}", std::process::id(), crate::free_port());
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let options = ServerOptions {
                name: Some(format!("m{i}")),
                member: None,
                ..options(i)
            };
            members.push(Server::unstarted(kind, options)?);
        }
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name(), m.peer_url()))
            .collect();
        let initial = initial.join(",");
        for m in &mut members {
            m.options_mut().member = Some(MemberSpec {
                initial_cluster: initial.clone(),
                token: token.clone(),
                state: "new".into(),
            });
            prepare(m, &initial, &token)?;
            m.spawn()?;
        }
        for m in &mut members {
            m.wait_ready()?;
        }
        Ok(Cluster {
            kind,
            token,
            members,
        })
    }

    /// Every running member's client URL, comma-separated (for `--endpoints`).
    pub fn endpoints(&mut self) -> String {
        let mut out = Vec::new();
        for m in &mut self.members {
            if m.running() {
                out.push(m.endpoint());
            }
        }
        out.join(",")
    }

    /// What `etcdctl endpoint status` says of member `i`.
    ///
    /// # Errors
    /// When it does not answer, or answers something that does not parse.
    pub fn status(&self, i: usize) -> anyhow::Result<MemberStatus> {
        let out = self.members[i].etcdctl(
            &["endpoint", "status", "-w", "json", "--command-timeout=2s"],
            None,
        );
        if !out.success() {
            bail!("endpoint status of m{i}: {}", out.stderr);
        }
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("endpoint status of m{i}: {}", out.stdout))?;
        let s = &v[0]["Status"];
        let u = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
        Ok(MemberStatus {
            id: u(&s["header"]["member_id"]),
            leader: u(&s["leader"]),
            term: u(&s["raft_term"]),
            raft_index: u(&s["raftIndex"]).max(u(&s["raft_index"])),
            revision: s["header"]["revision"].as_i64().unwrap_or(0),
            is_learner: s["isLearner"].as_bool().unwrap_or(false),
        })
    }

    /// The index of the member that every running member agrees leads, waiting up to
    /// `timeout` for one.
    ///
    /// # Errors
    /// When no leader is agreed on in time.
    pub fn wait_leader(&mut self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut seen = Vec::new();
            let mut ids = Vec::new();
            let running: Vec<usize> = (0..self.members.len())
                .filter(|i| self.members[*i].running())
                .collect();
            for i in running {
                if let Ok(s) = self.status_of(i) {
                    seen.push(s.leader);
                    ids.push((i, s.id));
                }
            }
            if let Some(&l) = seen.first()
                && l != 0
                && seen.iter().all(|x| *x == l)
                && let Some((i, _)) = ids.iter().find(|(_, id)| *id == l)
            {
                return Ok(*i);
            }
            if Instant::now() >= deadline {
                bail!("no agreed leader within {timeout:?}: members see {seen:x?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn status_of(&self, i: usize) -> anyhow::Result<MemberStatus> {
        self.status(i)
    }

    /// Adds a member through `etcdctl member add` (a learner with `learner`) on member `via`
    /// (asking again while the cluster answers "unhealthy cluster", for up to 30 s), then
    /// starts it with `--initial-cluster-state existing` and the cluster etcdctl printed,
    /// and waits until it answers (a learner answers serializable reads only, so a learner is
    /// not waited for). Returns its index.
    ///
    /// # Errors
    /// When the add is refused or the new member does not start.
    pub fn add_member(&mut self, via: usize, learner: bool) -> anyhow::Result<usize> {
        let name = format!("m{}", self.members.len());
        // The newcomer talks to the others as they talk to each other (peer TLS included).
        let peer_tls = self
            .members
            .first_mut()
            .and_then(|m| m.options_mut().peer_tls.clone());
        let options = ServerOptions {
            name: Some(name.clone()),
            peer_tls,
            ..ServerOptions::default()
        };
        let mut server = Server::unstarted(self.kind, options)?;
        let mut args = vec![
            "member".to_string(),
            "add".into(),
            name.clone(),
            format!("--peer-urls={}", server.peer_url()),
        ];
        if learner {
            args.push("--learner".into());
        }
        // etcd (and Mast) refuse an add until every voter has answered for 5 s ("unhealthy
        // cluster", etcd's HealthInterval): ask again until then.
        let deadline = Instant::now() + Duration::from_secs(30);
        let out = loop {
            let out = self.members[via].etcdctl(&args, None);
            if out.success() {
                break out;
            }
            if !out.stderr.contains("etcdserver: unhealthy cluster") || Instant::now() >= deadline {
                bail!("member add {name}: {}{}", out.stdout, out.stderr);
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let initial = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
            .map(|v| v.trim_matches('"').to_string())
            .with_context(|| {
                format!("member add printed no ETCD_INITIAL_CLUSTER: {}", out.stdout)
            })?;
        server.options_mut().member = Some(MemberSpec {
            initial_cluster: initial,
            token: self.token.clone(),
            state: "existing".into(),
        });
        server.spawn()?;
        if !learner {
            server.wait_ready()?;
        }
        // Ready once it has published its name, as etcd's ReadyNotify.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.members[via].etcdctl(&["member", "list"], None);
            if out.success()
                && out
                    .stdout
                    .lines()
                    .any(|l| l.contains(&format!(", started, {name}, ")))
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{name} did not publish itself: {}", out.stdout);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.members.push(server);
        Ok(self.members.len() - 1)
    }
}
