//! The step-list differential runner: one `etcdctl` 3.4 script, run step by step against a real
//! etcd 3.4 and against Mast. After normalizing what must differ between two servers (IDs,
//! terms, timings, sizes), every step must print the same bytes and exit with the same code.
//!
//! A script is data: each [`Step`] is an etcdctl command line (made with [`ctl`], [`txn`],
//! [`watch`] or [`sleep`]), optional standard input and environment, the normalizer for its
//! output ([`Norm`]), and the exit code etcd itself must give (so the script tests what it says
//! it tests). [`run`] starts both servers, runs every step on both, and fails with a diff of the
//! first differing step. The scripts live in `tests/etcdctl_diff.rs` (KV, txn, watch, lease,
//! maintenance) and `tests/etcdctl_auth_diff.rs` (users, roles, permissions, auth on and off).
//!
//! Switches (environment):
//! - `MAST_DIFF_AGAINST_ETCD=1`: the "Mast" side is a second etcd. The script then proves itself:
//!   etcd against etcd must agree, so the normalizations are sufficient.
//! - `MAST_DIFF_NO_NORMALIZE=1`: compare raw outputs (lease IDs in arguments are still
//!   substituted). With `MAST_DIFF_AGAINST_ETCD=1 MAST_DIFF_KEEP_GOING=1` this lists the steps
//!   that two etcds print differently, i.e. where each normalization is needed.
//! - `MAST_DIFF_KEEP_GOING=1`: run the whole script and report every differing step instead of
//!   stopping at the first (later steps may then differ only because an earlier one did).
//! - `MAST_DIFF_TRACE=1`: print every step's normalized etcd output (a readable transcript of
//!   what etcd 3.4 answers).
//!
//! Normalizations, and why each is needed (each is applied to both sides alike):
//! - every output: the server's client URL → `<endpoint>` (random port); its temporary directory
//!   → `<dir>`; each lease ID (16 hex digits in text, decimal `ID`/`id`/`lease` in JSON) →
//!   `<lease:NAME>` (each server picks its own IDs).
//! - stderr: etcdctl's JSON log lines. The client retry interceptor's warning carries a
//!   timestamp, a random client UUID and the port: only its message, attempt and error (gRPC code
//!   and description) are kept. Info-level lines (only `snapshot save` prints them) carry
//!   timestamps, sizes and durations: dropped.
//! - JSON output: `cluster_id`, `member_id` (random per cluster) and `raft_term` (Mast has no
//!   Raft; etcd is at term 2 after its first election) → placeholders. Revisions are compared
//!   exactly.
//! - `lease timetolive`: the remaining TTL depends on when the command ran → `<remaining>` if it
//!   is within (0, granted TTL]; the attached keys are listed in Go map order, which is random
//!   even between two runs against one etcd → sorted.
//! - `watch -w json`: how events are grouped into responses is the server's choice → only the
//!   events are compared, in order (and any canceled/compacted response).
//! - `endpoint status -w json`: database sizes (storage engine), raft index/term → placeholders
//!   (set even when absent, as etcdctl omits zeros);
//!   `leader` must equal the member ID; `version` must parse as semver (etcdctl and clients
//!   require it) and is then replaced.
//! - `endpoint health`: `took = <duration>` (timing).
//! - `endpoint hashkv`: the hash depends on the storage encoding → `<hash>`; `compact_revision`
//!   is compared.
//! - `-w fields`: `ClusterID`, `MemberID`, `RaftTerm`, lease IDs, as for JSON.
//! - `member list`: member ID (random) and peer URLs (etcd's random peer port; Mast has no peers,
//!   and may list none, which etcdctl's JSON then omits) → placeholders; name and client URLs are
//!   compared.
//! - `snapshot save`: only the exit code and the line `Snapshot saved at <dir>/snap.db` (the
//!   file's format is the storage engine's).
//!
//! With [`Setup::members`] = 3 both sides are 3-member clusters and etcdctl gets every member's
//! endpoint, so steps land on different members; on top of the above:
//! - every member's endpoint and directory → `<endpoint>` / `<dir>` (rows keep their order);
//! - `endpoint status`: `leader` → `<a member>` when it is one of the members answering (which
//!   member wins the election is not the point);
//! - `member list`: every ID → `<member_id>`, members sorted by name (etcd lists them in ID
//!   order, and IDs are random per cluster);
//! - `endpoint health`: lines (and JSON array items) sorted, as etcdctl prints each result when
//!   its check ends.
//! - `lease list`: sorted (a follower's lessor keeps no expiry, so etcd's expiry order holds
//!   only on the leader);
//! - `snapshot save` goes to the first member only ([`Step::one_member`]): etcdctl refuses
//!   several endpoints for it.
//! - a step marked [`Step::not_in_cluster`] is left out on both sides, with its reason (etcd
//!   3.4 behaviour seen only in a cluster that Mast does not copy).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;

use crate::{Output, Server, ServerKind, mast_binary, mast_binary_exists};

/// No extra environment for an etcdctl call.
const NO_ENV: &[(&str, &str)] = &[];

/// How a step's output is normalized before comparison (on top of what every step gets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// Plain text.
    Text,
    /// Every stdout line that parses as JSON is normalized as JSON.
    Json,
    /// `lease timetolive`, simple or JSON.
    TimeToLive,
    /// `watch -w json`: events only.
    WatchJson,
    /// `endpoint status -w json`.
    EndpointStatus,
    /// `endpoint health`, simple or JSON.
    EndpointHealth,
    /// `endpoint hashkv -w json`.
    HashKv,
    /// `member list`, simple or JSON.
    MemberList,
    /// `-w fields`: `"Name" : value` lines.
    Fields,
    /// `lease list`, simple or JSON: in expiry order on one member; in a cluster, a
    /// follower's leases have no expiry (only the leader's lessor counts), so sorted there.
    LeaseList,
}

/// What a step does.
#[derive(Clone, Debug)]
enum Action {
    /// Run etcdctl with these arguments and standard input.
    Ctl {
        args: Vec<String>,
        stdin: Option<Vec<u8>>,
    },
    /// Start `etcdctl watch <args>` (`{next_rev}` = the revision after the current one), run
    /// each of `during` (each must succeed), wait until its output settles, stop it, and compare
    /// what it printed.
    Watch {
        args: Vec<String>,
        during: Vec<Vec<String>>,
    },
    /// Wait, for both servers at once (lease expiry).
    Sleep(Duration),
}

/// One step of the script.
#[derive(Clone, Debug)]
pub struct Step {
    /// Why the step is there; shown with the command line when it fails.
    why: &'static str,
    action: Action,
    norm: Norm,
    /// In a cluster run, etcdctl gets only the first member's endpoint (`snapshot save`
    /// refuses several).
    one_member: bool,
    /// Why the step is left out of cluster runs, if it is (an etcd behaviour in a cluster that
    /// Mast does not copy).
    not_in_cluster: Option<&'static str>,
    /// Remember the lease ID this step prints under this name; later arguments say
    /// `{lease:NAME}` and get each server's own ID.
    capture_lease: Option<&'static str>,
    /// The exit code etcd must give, checking that the script tests what it says it tests.
    expect_code: Option<i32>,
    /// Environment variables for the etcdctl command (such as `ETCDCTL_USER`).
    env: Vec<(String, String)>,
}

/// Splits a command line into words; `"..."` quotes (so `""` is an empty argument).
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// An etcdctl step; `line` is split with [`words`].
pub fn ctl(why: &'static str, line: &str) -> Step {
    Step {
        why,
        action: Action::Ctl {
            args: words(line),
            stdin: None,
        },
        norm: Norm::Text,
        one_member: false,
        not_in_cluster: None,
        capture_lease: None,
        expect_code: None,
        env: Vec::new(),
    }
}

/// A `txn` step: `script` is fed on stdin (compares, blank line, success ops, blank line,
/// failure ops, blank line).
pub fn txn(why: &'static str, flags: &str, script: &str) -> Step {
    let mut step = ctl(why, &format!("txn {flags}"));
    if let Action::Ctl { stdin, .. } = &mut step.action {
        *stdin = Some(script.as_bytes().to_vec());
    }
    step
}

/// A watch step; `during` are etcdctl command lines run while the watch is open.
pub fn watch(why: &'static str, line: &str, during: &[&str]) -> Step {
    Step {
        why,
        action: Action::Watch {
            args: words(line),
            during: during.iter().map(|l| words(l)).collect(),
        },
        norm: Norm::Text,
        one_member: false,
        not_in_cluster: None,
        capture_lease: None,
        expect_code: None,
        env: Vec::new(),
    }
}

/// A pause, for both servers at once (lease expiry).
pub fn sleep(why: &'static str, d: Duration) -> Step {
    Step {
        why,
        action: Action::Sleep(d),
        norm: Norm::Text,
        one_member: false,
        not_in_cluster: None,
        capture_lease: None,
        expect_code: None,
        env: Vec::new(),
    }
}

impl Step {
    /// Sets how the output is normalized.
    pub fn norm(mut self, norm: Norm) -> Self {
        self.norm = norm;
        self
    }
    /// In a cluster run, talks to the first member only (etcdctl's `snapshot save` takes one
    /// endpoint).
    pub fn one_member(mut self) -> Self {
        self.one_member = true;
        self
    }
    /// Leaves the step out of cluster runs, for `why` (on both sides, so the state stays the
    /// same): for etcd behaviour seen only in a cluster that Mast does not copy.
    pub fn not_in_cluster(mut self, why: &'static str) -> Self {
        self.not_in_cluster = Some(why);
        self
    }
    /// Normalizes every JSON line of the output ([`Norm::Json`]).
    pub fn json(self) -> Self {
        self.norm(Norm::Json)
    }
    /// Feeds `bytes` to etcdctl's standard input.
    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        if let Action::Ctl { stdin, .. } = &mut self.action {
            *stdin = Some(bytes);
        }
        self
    }
    /// Remembers the lease ID this step prints as `{lease:NAME}`.
    pub fn capture(mut self, name: &'static str) -> Self {
        self.capture_lease = Some(name);
        self
    }
    /// etcd must exit with `code` (0 = success, 1 = server error, 2 = etcdctl's
    /// "bad connection" code used by keep-alive, 5 = watch canceled).
    pub fn code(mut self, code: i32) -> Self {
        self.expect_code = Some(code);
        self
    }
    /// etcd must succeed.
    pub fn ok(self) -> Self {
        self.code(0)
    }
    /// etcd must fail with exit code 1 (a server error).
    pub fn fails(self) -> Self {
        self.code(1)
    }
    /// Sets an environment variable for this step's etcdctl (such as `ETCDCTL_USER`).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }
    fn command_line(&self) -> String {
        let env: String = self.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        match &self.action {
            Action::Ctl { args, stdin } => {
                let mut s = format!("{env}etcdctl {}", shown(args));
                if let Some(stdin) = stdin {
                    if stdin.len() > 300 {
                        let _ = write!(s, "  <<< {} bytes on stdin", stdin.len());
                    } else {
                        let _ = write!(s, "  <<< {:?}", String::from_utf8_lossy(stdin));
                    }
                }
                s
            }
            Action::Watch { args, during } => {
                let during: Vec<String> = during.iter().map(|a| shown(a)).collect();
                format!(
                    "{env}etcdctl {} (while running: {})",
                    shown(args),
                    during.join("; ")
                )
            }
            Action::Sleep(d) => format!("sleep {d:?}"),
        }
    }
}

fn shown(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(' ') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How [`run`] is set up beyond the script.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Credentials (`user:password`) for the harness's own reads (the revision that
    /// `{next_rev}` needs) once the script has turned auth on; tried when a read without them
    /// is refused.
    pub probe_user: Option<String>,
    /// Members on each side: 0 or 1 runs one server each; 3 runs a 3-member etcd cluster and a
    /// 3-member Mast cluster, and every etcdctl call is given all of a side's endpoints (etcdctl
    /// picks among them, so consecutive steps land on different members).
    pub members: usize,
}

/// One server with what the script learned about it.
struct Side {
    label: String,
    /// The first member: its directory is `{dir}`.
    server: Server,
    /// The other members, in a cluster run.
    others: Vec<Server>,
    /// Lease IDs captured by name.
    leases: BTreeMap<String, i64>,
    /// See [`Setup::probe_user`].
    probe_user: Option<String>,
}

/// A step's normalized result.
#[derive(Debug, PartialEq, Eq)]
struct Normalized {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Normalized {
    fn render(&self) -> String {
        format!(
            "exit code: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Whether the environment variable `name` is set to something other than empty or `0`.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

impl Side {
    /// Replaces `{lease:NAME}`, `{dir}` in an argument.
    fn subst(&self, arg: &str) -> String {
        let mut a = arg.replace("{dir}", &self.server.dir().display().to_string());
        for (name, id) in &self.leases {
            a = a.replace(&format!("{{lease:{name}}}"), &format!("{id:x}"));
        }
        a
    }

    /// Every member's client URL, comma-separated (the first member's only when `one`).
    fn endpoints(&self, one: bool) -> String {
        if one {
            return self.server.endpoint();
        }
        std::iter::once(&self.server)
            .chain(&self.others)
            .map(Server::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The etcdctl command for `args` against every member, with the TLS flags.
    fn command<S: AsRef<str>, K: AsRef<str>, V: AsRef<str>>(
        &self,
        args: &[S],
        env: &[(K, V)],
        one: bool,
    ) -> std::process::Command {
        let mut all = self.server.etcdctl_flags();
        all.extend(args.iter().map(|a| a.as_ref().to_owned()));
        let mut cmd = crate::etcdctl_command(&self.endpoints(one), &all);
        for (k, v) in env {
            cmd.env(k.as_ref(), v.as_ref());
        }
        cmd
    }

    /// Runs etcdctl against every member, bounded as [`Server::etcdctl`].
    fn etcdctl<S: AsRef<str>, K: AsRef<str>, V: AsRef<str>>(
        &self,
        args: &[S],
        env: &[(K, V)],
        stdin: Option<&[u8]>,
        one: bool,
    ) -> Output {
        match crate::Background::spawn(self.command(args, env, one), stdin) {
            Ok(child) => child.finish(crate::ETCDCTL_TIMEOUT),
            Err(e) => panic!("cannot run etcdctl: {e:#}"),
        }
    }

    fn run(&mut self, step: &Step) -> Output {
        match &step.action {
            Action::Ctl { args, stdin } => {
                let args: Vec<String> = args.iter().map(|a| self.subst(a)).collect();
                self.etcdctl(&args, &step.env, stdin.as_deref(), step.one_member)
            }
            Action::Watch { args, during } => {
                let mut args: Vec<String> = args.iter().map(|a| self.subst(a)).collect();
                if args.iter().any(|a| a.contains("{next_rev}")) {
                    let next = (self.current_revision() + 1).to_string();
                    args = args
                        .iter()
                        .map(|a| a.replace("{next_rev}", &next))
                        .collect();
                }
                let mut child =
                    crate::Background::spawn(self.command(&args, &step.env, step.one_member), None)
                        .unwrap_or_else(|e| panic!("cannot run etcdctl: {e:#}"));
                if !during.is_empty() {
                    // No output says when the watcher exists; starting it at the next revision
                    // makes a late creation replay what it missed, so this pause only keeps
                    // the events mostly live.
                    std::thread::sleep(Duration::from_millis(500));
                    for cmd in during {
                        let cmd: Vec<String> = cmd.iter().map(|a| self.subst(a)).collect();
                        let out = self.etcdctl(&cmd, NO_ENV, None, false);
                        assert!(
                            out.success(),
                            "{}: `etcdctl {}` failed during a watch:\n{out}",
                            self.label,
                            shown(&cmd)
                        );
                    }
                }
                // Replays arrive at once, live events as the commands above ran.
                child.wait_until_quiet(Duration::from_millis(500), Duration::from_secs(5));
                child.stop()
            }
            Action::Sleep(_) => Output {
                code: Some(0),
                ..Output::default()
            },
        }
    }

    /// The store revision, from the header of a Range (with [`Setup::probe_user`] when a
    /// Range without credentials is refused).
    fn current_revision(&self) -> i64 {
        let mut args = vec!["get", "conformance/revision-probe", "-w", "json"];
        let mut out = self.etcdctl(&args, NO_ENV, None, false);
        if !out.success()
            && let Some(user) = &self.probe_user
        {
            args.extend(["--user", user.as_str()]);
            out = self.etcdctl(&args, NO_ENV, None, false);
        }
        serde_json::from_str::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["header"]["revision"].as_i64())
            .unwrap_or_else(|| panic!("{}: cannot read the current revision:\n{out}", self.label))
    }

    /// Learns the lease ID a grant printed (`lease <hex> granted ...` or JSON `"ID":<dec>`).
    fn capture(&mut self, name: &str, out: &Output) {
        let hex = Regex::new(r"lease ([0-9a-f]{16}) granted").unwrap();
        let id = if let Some(c) = hex.captures(&out.stdout) {
            i64::from_str_radix(&c[1], 16).ok()
        } else {
            serde_json::from_str::<Value>(out.stdout.trim())
                .ok()
                .and_then(|v| v["ID"].as_i64())
        };
        match id {
            Some(id) => {
                self.leases.insert(name.to_owned(), id);
            }
            None => eprintln!("{}: could not read a lease ID from:\n{out}", self.label),
        }
    }

    fn normalize(&self, step: &Step, out: &Output) -> Normalized {
        if env_flag("MAST_DIFF_NO_NORMALIZE") {
            return Normalized {
                code: out.code,
                stdout: out.stdout.clone(),
                stderr: out.stderr.clone(),
            };
        }
        let stdout = self.common(&out.stdout);
        let stderr = normalize_stderr(&self.common(&out.stderr));
        let stdout = match step.norm {
            Norm::Text => stdout,
            Norm::Json => map_json_lines(&stdout, |v| self.json(v)),
            Norm::TimeToLive => self.time_to_live(&stdout),
            Norm::WatchJson => self.watch_json(&stdout),
            Norm::EndpointStatus => map_json_lines(&stdout, |v| self.endpoint_status(v)),
            Norm::EndpointHealth => self.in_any_order(normalize_took(&stdout)),
            Norm::HashKv => map_json_lines(&stdout, |v| {
                self.json(v);
                for entry in v.as_array_mut().into_iter().flatten() {
                    // The hash is over etcd's bbolt encoding of the history; Mast stores
                    // differently. The compact revision next to it must agree.
                    redact(&mut entry["HashKV"], "hash", "<hash>");
                }
            }),
            Norm::MemberList => self.member_list(&stdout),
            Norm::Fields => self.fields(&stdout),
            Norm::LeaseList => self.lease_list(&stdout),
        };
        // Health results go to stderr in etcdctl 3.4.
        let stderr = if step.norm == Norm::EndpointHealth {
            self.in_any_order(normalize_took(&stderr))
        } else {
            stderr
        };
        Normalized {
            code: out.code,
            stdout,
            stderr,
        }
    }

    /// What every output gets: endpoints, temporary directories and lease IDs.
    fn common(&self, text: &str) -> String {
        let mut t = text.to_owned();
        for m in std::iter::once(&self.server).chain(&self.others) {
            // Random client port.
            t = t.replace(&m.endpoint(), "<endpoint>");
            t = t.replace(&format!("127.0.0.1:{}", m.client_port()), "<endpoint>");
            // Random temporary directory.
            t = t.replace(&m.dir().display().to_string(), "<dir>");
        }
        // Each server picks its own lease IDs; etcdctl prints them as %016x.
        for (name, id) in &self.leases {
            t = t.replace(&format!("{id:016x}"), &format!("<lease:{name}>"));
        }
        t
    }

    /// JSON normalization shared by all JSON outputs (see the module doc).
    fn json(&self, v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    match k.as_str() {
                        // Random per cluster.
                        "cluster_id" => *val = Value::from("<cluster_id>"),
                        "member_id" => *val = Value::from("<member_id>"),
                        // Mast has no Raft; etcd is at term 2 after its first election.
                        "raft_term" => *val = Value::from("<raft_term>"),
                        // Lease IDs: each server picks its own.
                        "ID" | "id" | "lease" => {
                            if let Some(name) = val.as_i64().and_then(|n| self.lease_name(n)) {
                                *val = Value::from(format!("<lease:{name}>"));
                            }
                        }
                        _ => self.json(val),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.json(i)),
            _ => {}
        }
    }

    fn lease_name(&self, id: i64) -> Option<&str> {
        self.leases
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.as_str())
    }

    /// `lease timetolive`: remaining TTL and key order (see the module doc).
    fn time_to_live(&self, stdout: &str) -> String {
        let simple = Regex::new(r"granted with TTL\((\d+)s\), remaining\((-?\d+)s\)").unwrap();
        let keys = Regex::new(r"attached keys\(\[(.*)\]\)").unwrap();
        let remaining_ok = |granted: i64, remaining: i64| remaining > 0 && remaining <= granted;
        let mut lines = Vec::new();
        for line in stdout.lines() {
            if let Ok(mut v) = serde_json::from_str::<Value>(line) {
                self.json(&mut v);
                let granted = v["granted-ttl"].as_i64().unwrap_or(0);
                if let Some(ttl) = v["ttl"].as_i64()
                    && remaining_ok(granted, ttl)
                {
                    v["ttl"] = Value::from("<remaining>");
                }
                if let Some(keys) = v["keys"].as_array_mut() {
                    keys.sort_by_key(|k| k.to_string());
                }
                lines.push(v.to_string());
                continue;
            }
            let mut line = line.to_owned();
            if let Some(c) = simple.captures(&line) {
                let (granted, remaining): (i64, i64) =
                    (c[1].parse().unwrap(), c[2].parse().unwrap());
                if remaining_ok(granted, remaining) {
                    line = line.replace(
                        &format!("remaining({remaining}s)"),
                        "remaining(<remaining>)",
                    );
                }
            }
            if let Some(c) = keys.captures(&line.clone()) {
                let mut ks: Vec<&str> = c[1].split(' ').collect();
                ks.sort_unstable();
                line = line.replace(&c[0], &format!("attached keys([{}])", ks.join(" ")));
            }
            lines.push(line);
        }
        lines.join("\n")
    }

    /// `watch -w json`: the events of all responses, one per line, and any canceled response.
    fn watch_json(&self, stdout: &str) -> String {
        let mut out = Vec::new();
        for line in stdout.lines() {
            let Ok(mut v) = serde_json::from_str::<Value>(line) else {
                out.push(line.to_owned());
                continue;
            };
            self.json(&mut v);
            for event in v["Events"].as_array().into_iter().flatten() {
                out.push(format!("event {event}"));
            }
            if v["Canceled"] == Value::Bool(true) || v["CompactRevision"].as_i64().unwrap_or(0) != 0
            {
                out.push(format!(
                    "canceled: compact_revision {}",
                    v["CompactRevision"]
                ));
            }
        }
        out.join("\n")
    }

    /// `endpoint status -w json` (see the module doc).
    fn endpoint_status(&self, v: &mut Value) {
        let members: Vec<Value> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["Status"]["header"]["member_id"].clone())
            .collect();
        for entry in v.as_array_mut().into_iter().flatten() {
            let status = &mut entry["Status"];
            let member_id = status["header"]["member_id"].clone();
            // etcdctl needs a semver; Mast reports its own etcd-like version.
            let version = status["version"].as_str().unwrap_or_default().to_owned();
            status["version"] = Value::from(match semver::Version::parse(&version) {
                Ok(_) => "<semver>".to_owned(),
                Err(e) => format!("<not a semver: {version:?}: {e}>"),
            });
            // A single member leads itself; in a cluster the leader is one of the members
            // listed (which one is the election's choice).
            if status["leader"] == member_id && !member_id.is_null() && self.others.is_empty() {
                status["leader"] = Value::from("<member_id>");
            }
            if !self.others.is_empty() && members.contains(&status["leader"]) {
                status["leader"] = Value::from("<a member>");
            }
            // Storage engine sizes and Raft bookkeeping. Set whether present or not: a zero is
            // omitted by etcdctl's JSON, and Mast (no Raft, another storage engine) may report 0.
            for key in ["dbSize", "dbSizeInUse"] {
                status[key] = Value::from("<size>");
            }
            for key in ["raftIndex", "raftTerm", "raftAppliedIndex"] {
                status[key] = Value::from("<raft>");
            }
            self.json(entry);
        }
    }

    /// `-w fields`: the same placeholders as [`Side::json`], on `"Name" : value` lines.
    fn fields(&self, stdout: &str) -> String {
        let mut lines = Vec::new();
        for line in stdout.lines() {
            let (name, value) = line.split_once(" : ").unwrap_or((line, ""));
            let value = match name {
                "\"ClusterID\"" => "<cluster_id>".to_owned(),
                "\"MemberID\"" => "<member_id>".to_owned(),
                "\"RaftTerm\"" => "<raft_term>".to_owned(),
                "\"Lease\"" | "\"ID\"" => {
                    match value.parse().ok().and_then(|id| self.lease_name(id)) {
                        Some(name) => format!("<lease:{name}>"),
                        None => value.to_owned(),
                    }
                }
                _ => {
                    lines.push(line.to_owned());
                    continue;
                }
            };
            lines.push(format!("{name} : {value}"));
        }
        lines.join("\n")
    }

    /// `member list` (see the module doc).
    fn member_list(&self, stdout: &str) -> String {
        let mut lines = Vec::new();
        for line in stdout.lines() {
            if let Ok(mut v) = serde_json::from_str::<Value>(line) {
                let member_id = v["header"]["member_id"].clone();
                if let Some(ms) = v["members"].as_array_mut() {
                    // Listed in ID order, and IDs are random per cluster: by name instead.
                    ms.sort_by_key(|m| m["name"].as_str().unwrap_or_default().to_owned());
                }
                for m in v["members"].as_array_mut().into_iter().flatten() {
                    if m["ID"] == member_id || !self.others.is_empty() {
                        m["ID"] = Value::from("<member_id>");
                    }
                    // Present (etcd) or absent (an empty list is omitted): Mast has no peers.
                    m["peerURLs"] = Value::from("<peer-urls>");
                }
                self.json(&mut v);
                lines.push(v.to_string());
            } else {
                // "<hex id>, started, <name>, <peer urls>, <client urls>, <is learner>"
                let mut fields: Vec<String> = line.split(", ").map(str::to_owned).collect();
                if fields.len() == 6 {
                    fields[0] = "<member_id>".into();
                    fields[3] = "<peer-urls>".into();
                }
                lines.push(fields.join(", "));
            }
        }
        if !self.others.is_empty() {
            lines.sort();
        }
        lines.join("\n")
    }

    /// `lease list` (see [`Norm::LeaseList`]).
    fn lease_list(&self, stdout: &str) -> String {
        let json = map_json_lines(stdout, |v| {
            self.json(v);
            if !self.others.is_empty()
                && let Some(leases) = v["leases"].as_array_mut()
            {
                leases.sort_by_key(Value::to_string);
            }
        });
        if self.others.is_empty() {
            return json;
        }
        // "found N leases" and one ID per line.
        let mut lines: Vec<&str> = json.lines().collect();
        if lines.len() > 1 {
            lines[1..].sort_unstable();
        }
        lines.join("\n")
    }

    /// `endpoint health` of several members: etcdctl prints each result as its check ends.
    fn in_any_order(&self, text: String) -> String {
        if self.others.is_empty() {
            return text;
        }
        let mut lines: Vec<String> = text
            .lines()
            .map(|line| match serde_json::from_str::<Value>(line) {
                Ok(Value::Array(mut items)) => {
                    items.sort_by_key(Value::to_string);
                    Value::Array(items).to_string()
                }
                _ => line.to_owned(),
            })
            .collect();
        lines.sort();
        lines.join("\n")
    }
}

/// Replaces `obj[key]` with `placeholder` when present.
fn redact(obj: &mut Value, key: &str, placeholder: &str) {
    if let Some(v) = obj.get_mut(key) {
        *v = Value::from(placeholder);
    }
}

/// Applies `f` to each stdout line that parses as JSON.
fn map_json_lines(stdout: &str, f: impl Fn(&mut Value)) -> String {
    stdout
        .lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(mut v) => {
                f(&mut v);
                v.to_string()
            }
            Err(_) => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `took = 1.6ms` in simple output, `"took":"1.6ms"` in JSON: timings.
fn normalize_took(text: &str) -> String {
    let simple = Regex::new(r"took = [0-9.]+[a-zµ]+").unwrap();
    let json = Regex::new(r#""took":"[^"]*""#).unwrap();
    let t = simple.replace_all(text, "took = <duration>");
    json.replace_all(&t, r#""took":"<duration>""#).into_owned()
}

/// etcdctl's log lines on stderr (see the module doc).
fn normalize_stderr(stderr: &str) -> String {
    let mut out = Vec::new();
    for line in stderr.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            out.push(line.to_owned());
            continue;
        };
        let Some(level) = v["level"].as_str() else {
            out.push(line.to_owned());
            continue;
        };
        if level == "info" {
            continue; // timestamps, sizes and durations (snapshot save)
        }
        // Drop ts, caller and target (random client UUID and port); keep what the server said.
        let mut kept = format!("[{level}] {}", v["msg"].as_str().unwrap_or_default());
        if let Some(attempt) = v.get("attempt") {
            let _ = write!(kept, " (attempt {attempt})");
        }
        if let Some(error) = v["error"].as_str() {
            let _ = write!(kept, ": {error}");
        }
        out.push(kept);
    }
    out.join("\n")
}

/// A line diff (longest common subsequence), `-` reference, `+` candidate.
fn diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes more)", &s[..end], s.len() - end)
}

/// Runs `script` against a fresh etcd and a fresh Mast (or a second etcd with
/// `MAST_DIFF_AGAINST_ETCD=1`) and panics with a diff at the first step whose normalized output
/// differs (every differing step with `MAST_DIFF_KEEP_GOING=1`), or when etcd itself does not
/// exit as a step expects.
pub fn run(script: &[Step], setup: &Setup) {
    let against_etcd = env_flag("MAST_DIFF_AGAINST_ETCD");
    let keep_going = env_flag("MAST_DIFF_KEEP_GOING");
    let trace = env_flag("MAST_DIFF_TRACE");
    if !against_etcd && !mast_binary_exists() {
        panic!(
            "the Mast binary is not at {}: build it with `cargo build -p mast` first (or set MAST_BIN); \
             MAST_DIFF_AGAINST_ETCD=1 checks this script against a second etcd instead",
            mast_binary().display()
        );
    }
    let candidate_kind = if against_etcd {
        ServerKind::Etcd
    } else {
        ServerKind::Mast
    };
    let start = |kind: ServerKind| -> (Server, Vec<Server>) {
        if setup.members <= 1 {
            return (Server::start(kind), Vec::new());
        }
        let cluster = crate::cluster::Cluster::start(kind, setup.members)
            .unwrap_or_else(|e| panic!("{kind:?}: cannot start {} members: {e:#}", setup.members));
        let mut members = cluster.members;
        let first = members.remove(0);
        (first, members)
    };
    let (ref_first, ref_others) = start(ServerKind::Etcd);
    let (cand_first, cand_others) = start(candidate_kind);
    let suffix = if setup.members > 1 {
        format!(", {} members", setup.members)
    } else {
        String::new()
    };
    let mut reference = Side {
        label: format!("etcd{suffix}"),
        server: ref_first,
        others: ref_others,
        leases: BTreeMap::new(),
        probe_user: setup.probe_user.clone(),
    };
    let mut candidate = Side {
        label: if against_etcd {
            format!("etcd #2 (MAST_DIFF_AGAINST_ETCD){suffix}")
        } else {
            format!("mast{suffix}")
        },
        server: cand_first,
        others: cand_others,
        leases: BTreeMap::new(),
        probe_user: setup.probe_user.clone(),
    };

    let steps = script;
    let mut failures = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let n = n + 1;
        if let Action::Sleep(d) = step.action {
            std::thread::sleep(d);
            continue;
        }
        if setup.members > 1
            && let Some(why) = step.not_in_cluster
        {
            if trace {
                eprintln!(
                    "=== step {n} `{}` left out of cluster runs: {why}",
                    step.command_line()
                );
            }
            continue;
        }
        // Both servers at once: the servers are independent, and a step's time (logins,
        // watches that wait for quiet) is then paid once.
        let (raw_ref, raw_cand) = std::thread::scope(|s| {
            let on_candidate = s.spawn(|| candidate.run(step));
            let raw_ref = reference.run(step);
            let raw_cand = on_candidate
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            (raw_ref, raw_cand)
        });
        if let Some(name) = step.capture_lease {
            reference.capture(name, &raw_ref);
            candidate.capture(name, &raw_cand);
        }
        if let Some(code) = step.expect_code {
            assert_eq!(
                raw_ref.code,
                Some(code),
                "script error at step {n} `{}` ({}): etcd itself exited with {:?}, the script expects {code}:\n{raw_ref}",
                step.command_line(),
                step.why,
                raw_ref.code
            );
        }
        let norm_ref = reference.normalize(step, &raw_ref);
        let norm_cand = candidate.normalize(step, &raw_cand);
        if trace {
            eprintln!(
                "=== step {n} `{}` ({})\n{}",
                step.command_line(),
                step.why,
                norm_ref.render()
            );
        }
        if norm_ref != norm_cand {
            let message = format!(
                "step {n}/{} `{}` ({}): {} differs from etcd\n\
                 === diff of normalized outputs (- etcd, + {}) ===\n{}\
                 === raw etcd ===\n{}\n=== raw {} ===\n{}\n",
                steps.len(),
                step.command_line(),
                step.why,
                candidate.label,
                candidate.label,
                diff(&norm_ref.render(), &norm_cand.render()),
                truncate(&raw_ref.to_string(), 4000),
                candidate.label,
                truncate(&raw_cand.to_string(), 4000),
            );
            if !keep_going {
                panic!("{message}\n(set MAST_DIFF_KEEP_GOING=1 to see every differing step)");
            }
            eprintln!("{message}");
            failures.push(format!("step {n} `{}` ({})", step.command_line(), step.why));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} steps differ from etcd:\n  {}",
        failures.len(),
        steps.len(),
        failures.join("\n  ")
    );
}
