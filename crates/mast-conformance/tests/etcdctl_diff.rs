//! Differential test: one `etcdctl` 3.4 script, run step by step against a real etcd 3.4 and
//! against Mast. After normalizing what must differ between two servers (IDs, terms, timings,
//! sizes), every step must print the same bytes and exit with the same code.
//!
//! Run it with `cargo build -p mast && cargo test -p mast-conformance --test etcdctl_diff`.
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
//! The script is data (see [`script`]): each [`Step`] is an etcdctl command line, optional
//! standard input, and the normalizer for its output.
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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use mast_conformance::{Output, Server, ServerKind, mast_binary, mast_binary_exists};
use regex::Regex;
use serde_json::Value;

/// How a step's output is normalized before comparison (on top of what every step gets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Norm {
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
struct Step {
    /// Why the step is there; shown with the command line when it fails.
    why: &'static str,
    action: Action,
    norm: Norm,
    /// Remember the lease ID this step prints under this name; later arguments say
    /// `{lease:NAME}` and get each server's own ID.
    capture_lease: Option<&'static str>,
    /// The exit code etcd must give, checking that the script tests what it says it tests.
    expect_code: Option<i32>,
}

/// Splits a command line into words; `"..."` quotes (so `""` is an empty argument).
fn words(line: &str) -> Vec<String> {
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
fn ctl(why: &'static str, line: &str) -> Step {
    Step {
        why,
        action: Action::Ctl {
            args: words(line),
            stdin: None,
        },
        norm: Norm::Text,
        capture_lease: None,
        expect_code: None,
    }
}

/// A `txn` step: `script` is fed on stdin (compares, blank line, success ops, blank line,
/// failure ops, blank line).
fn txn(why: &'static str, flags: &str, script: &str) -> Step {
    let mut step = ctl(why, &format!("txn {flags}"));
    if let Action::Ctl { stdin, .. } = &mut step.action {
        *stdin = Some(script.as_bytes().to_vec());
    }
    step
}

/// A watch step; `during` are etcdctl command lines run while the watch is open.
fn watch(why: &'static str, line: &str, during: &[&str]) -> Step {
    Step {
        why,
        action: Action::Watch {
            args: words(line),
            during: during.iter().map(|l| words(l)).collect(),
        },
        norm: Norm::Text,
        capture_lease: None,
        expect_code: None,
    }
}

fn sleep(why: &'static str, d: Duration) -> Step {
    Step {
        why,
        action: Action::Sleep(d),
        norm: Norm::Text,
        capture_lease: None,
        expect_code: None,
    }
}

impl Step {
    fn norm(mut self, norm: Norm) -> Self {
        self.norm = norm;
        self
    }
    fn json(self) -> Self {
        self.norm(Norm::Json)
    }
    fn stdin(mut self, bytes: Vec<u8>) -> Self {
        if let Action::Ctl { stdin, .. } = &mut self.action {
            *stdin = Some(bytes);
        }
        self
    }
    fn capture(mut self, name: &'static str) -> Self {
        self.capture_lease = Some(name);
        self
    }
    /// etcd must exit with `code` (0 = success, 1 = server error, 2 = etcdctl's
    /// "bad connection" code used by keep-alive, 5 = watch canceled).
    fn code(mut self, code: i32) -> Self {
        self.expect_code = Some(code);
        self
    }
    fn ok(self) -> Self {
        self.code(0)
    }
    fn fails(self) -> Self {
        self.code(1)
    }
    fn command_line(&self) -> String {
        match &self.action {
            Action::Ctl { args, stdin } => {
                let mut s = format!("etcdctl {}", shown(args));
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
                    "etcdctl {} (while running: {})",
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

/// The script. Revisions in comments are the store revision after the step.
fn script() -> Vec<Step> {
    use Norm::*;
    let mut s = vec![
        // --- Put and Range -----------------------------------------------------------------
        ctl("fresh store is at revision 1", "get foo -w json")
            .json()
            .ok(),
        ctl("put creates (rev 2)", "put foo bar").ok(),
        ctl("put updates (rev 3)", "put foo baz").ok(),
        ctl("rev 4", "put foo/a 1").ok(),
        ctl("rev 5", "put foo/b 2").ok(),
        ctl("rev 6", "put foo/c 3").ok(),
        ctl("rev 7", "put fop x").ok(),
        ctl("rev 8", "put zoo z").ok(),
        ctl("single key, simple format", "get foo").ok(),
        ctl(
            "single key, JSON: create/mod revision, version",
            "get foo -w json",
        )
        .json()
        .ok(),
        ctl("prefix", "get foo --prefix").ok(),
        ctl("prefix, JSON", "get foo --prefix -w json").json().ok(),
        ctl("from-key", "get foo/ --from-key --keys-only").ok(),
        ctl("explicit range end (exclusive)", "get foo/a foo/c").ok(),
        ctl(
            "historical read: old value, header at current revision",
            "get foo --rev 2 -w json",
        )
        .json()
        .ok(),
        ctl(
            "historical read at the update",
            "get foo --rev 3 --print-value-only",
        )
        .ok(),
        ctl(
            "historical read before creation",
            "get foo/a --rev 3 -w json",
        )
        .json()
        .ok(),
        ctl(
            "limit: more=true, count ignores the limit",
            "get foo --prefix --limit 2 -w json",
        )
        .json()
        .ok(),
        ctl("all keys", "get \"\" --prefix --keys-only").ok(),
        ctl("print-value-only", "get foo --prefix --print-value-only").ok(),
        ctl(
            "keys-only, JSON (no value field)",
            "get foo --prefix --keys-only -w json",
        )
        .json()
        .ok(),
        ctl("missing key: count 0", "get nokey -w json").json().ok(),
        ctl("serializable read", "get foo --consistency=s").ok(),
        ctl("fields format", "get foo/b -w fields")
            .norm(Fields)
            .ok(),
        // --- Sorting: data whose key, create, mod, value and version orders all differ --------
        ctl("rev 9", "put sort/b v1").ok(),
        ctl("rev 10", "put sort/a v3").ok(),
        ctl("rev 11", "put sort/c v2").ok(),
        ctl("rev 12", "put sort/a v0").ok(),
        ctl("rev 13", "put sort/b v4").ok(),
        ctl("rev 14", "put sort/b v5").ok(),
        ctl("rev 15: the smallest value on the last key", "put sort/d a").ok(),
    ];
    for target in ["KEY", "CREATE", "MODIFY", "VALUE", "VERSION"] {
        for order in ["", " --order=ASCEND", " --order=DESCEND"] {
            s.push(
                ctl(
                    "sort",
                    &format!("get sort/ --prefix --sort-by={target}{order}"),
                )
                .ok(),
            );
        }
    }
    s.extend([
        ctl("order without sort-by sorts by key", "get sort/ --prefix --order=DESCEND").ok(),
        ctl("sort with limit, no order", "get sort/ --prefix --sort-by=VALUE --limit 2").ok(),
        ctl("sort with limit and order", "get sort/ --prefix --sort-by=VALUE --order=ASCEND --limit 2").ok(),
        ctl(
            "sort descending with limit, JSON",
            "get sort/ --prefix --sort-by=VERSION --order=DESCEND --limit 2 -w json",
        )
            .json()
            .ok(),
        ctl(
            "sort by modify descending, keys only",
            "get \"\" --prefix --sort-by=MODIFY --order=DESCEND --keys-only",
        )
        .ok(),
        // --- Put options -------------------------------------------------------------------
        ctl("prev-kv prints the old pair (rev 16)", "put --prev-kv foo qux").ok(),
        ctl("prev-kv on a new key prints nothing more (rev 17)", "put --prev-kv newkey v").ok(),
        ctl("prev-kv, JSON (rev 18)", "put --prev-kv foo quux -w json").json().ok(),
        ctl("ignore-value keeps the value, bumps version (rev 19)", "put --ignore-value foo").ok(),
        ctl("after ignore-value", "get foo -w json").json().ok(),
        ctl("ignore-value on a missing key", "put --ignore-value nokey").fails(),
        ctl("ignore-lease on a key without lease (rev 20)", "put --ignore-lease foo v19").ok(),
        ctl("ignore-lease on a missing key", "put --ignore-lease nokey v").fails(),
        ctl("same value again still bumps (rev 21)", "put foo v19").ok(),
        ctl("after failed puts: revision 21", "get foo -w json").json().ok(),
        // --- DeleteRange -------------------------------------------------------------------
        ctl("deleting nothing prints 0 and keeps the revision", "del nokey").ok(),
        ctl("revision still 21", "get foo -w json").json().ok(),
        ctl("del with prev-kv (rev 22)", "del foo/a --prev-kv").ok(),
        ctl("del prefix: count (rev 23)", "del foo --prefix").ok(),
        ctl("del range with prev-kv, JSON (rev 24)", "del --prev-kv sort/a sort/c -w json").json().ok(),
        ctl("del from-key matching nothing", "del zz --from-key").ok(),
        ctl("del from-key (rev 25)", "del z --from-key").ok(),
        ctl("what is left", "get \"\" --prefix -w json").json().ok(),
        // --- Txn -----------------------------------------------------------------------------
        ctl("rev 26", "put tk v1").ok(),
        txn(
            "mod and value compares true: success branch, JSON (rev 27)",
            "-w json",
            "mod(\"tk\") > \"0\"\nvalue(\"tk\") = \"v1\"\n\nput tk v2\nget tk\ndel nokey\n\nput tk failed\n\n",
        )
        .json()
        .ok(),
        txn(
            "value compare false: failure branch (rev 28)",
            "",
            "value(\"tk\") = \"v1\"\n\nput tk never\n\nput tk2 f\nget tk\n\n",
        )
        .ok(),
        txn("create == 0 means absent (rev 29)", "", "create(\"absent\") = \"0\"\n\nput absent here\n\n\n").ok(),
        txn(
            "create == 0 fails once present",
            "-w json",
            "create(\"absent\") = \"0\"\n\nput absent again\n\n\n",
        )
        .json()
        .ok(),
        txn("version compare (rev 30)", "", "version(\"tk\") = \"2\"\n\nput tk v3\nget --prefix tk\n\n\n").ok(),
        txn("version of a missing key is 0", "-w json", "version(\"missing\") = \"0\"\n\nget missing\n\n\n")
            .json()
            .ok(),
        txn(
            "value compare on a missing key is false even with !=",
            "-w json",
            "value(\"missing\") != \"x\"\n\n\n\nget tk\n\n",
        )
            .json()
            .ok(),
        txn(
            "mod less-than and several compares",
            "-w json",
            "mod(\"tk\") < \"1000\"\nversion(\"tk\") > \"1\"\ncreate(\"tk\") = \"26\"\n\nget tk\n\n\n",
        )
            .json()
            .ok(),
        txn(
            "inner headers: a get before the put sees the old revision, after it the new (rev 31)",
            "-w json",
            "mod(\"tk\") > \"0\"\n\nget tk\nput --prev-kv tk v4\nget tk\ndel --prev-kv tk2\n\n\n",
        )
        .json()
        .ok(),
        txn("read-only txn does not bump the revision", "-w json", "\nget tk\nget nokey\n\n\n").json().ok(),
        txn("empty txn", "", "\n\n\n").ok(),
        txn("empty txn, JSON", "-w json", "\n\n\n").json().ok(),
        txn("same key put twice", "", "\nput dup 1\nput dup 2\n\n\n").fails(),
        txn("same key put and deleted", "", "\nput dup 1\ndel dup\n\n\n").fails(),
        ctl("revision still 31", "get tk -w json").json().ok(),
        // --- Watch: replay (before any compaction) --------------------------------------------
        watch("replay all history", "watch --rev 1 --prefix \"\"", &[]),
        watch("replay with prev-kv", "watch --rev 1 --prefix \"\" --prev-kv", &[]),
        watch("replay, JSON", "watch --rev 1 --prefix \"\" -w json", &[]).norm(WatchJson),
        watch("replay of one key from a revision", "watch --rev 21 foo", &[]),
        watch(
            "live events on one key",
            "watch tk --rev {next_rev}",
            &["put tk live1", "del tk", "put tk live2"],
        ),
        watch(
            "live events with prev-kv on a prefix",
            "watch --prefix w/ --prev-kv --rev {next_rev}",
            &["put w/1 a", "put w/1 b", "put w/2 c", "del w/ --prefix"],
        ),
        ctl("after the live watches (rev 38)", "get \"\" --prefix --keys-only -w json").json().ok(),
        // --- Leases ------------------------------------------------------------------------
        ctl("grant, the longest TTL first", "lease grant 300").capture("L3").ok(),
        ctl("grant", "lease grant 100").capture("L1").ok(),
        ctl("TTL above the maximum", "lease grant 9000000001").fails(),
        ctl("TTL below the minimum is raised to 2", "lease grant 1 -w json").json().capture("L2").ok(),
        ctl("grants do not bump the revision", "get nokey -w json").json().ok(),
        ctl("attach (rev 39)", "put --lease={lease:L1} lk1 v").ok(),
        ctl("attach (rev 40)", "put --lease {lease:L1} lk2 v").ok(),
        ctl("attach to the short lease (rev 41)", "put --lease {lease:L2} short v").ok(),
        ctl("the key carries the lease", "get lk1 -w json").json().ok(),
        ctl("timetolive with keys", "lease timetolive {lease:L1} --keys").norm(TimeToLive).ok(),
        ctl("timetolive with keys, JSON", "lease timetolive {lease:L1} --keys -w json").norm(TimeToLive).ok(),
        ctl("timetolive without keys", "lease timetolive {lease:L3}").norm(TimeToLive).ok(),
        ctl("keep-alive answers the granted TTL", "lease keep-alive --once {lease:L1}").ok(),
        ctl("keep-alive, JSON", "lease keep-alive --once {lease:L1} -w json").json().ok(),
        ctl("ignore-lease keeps the lease (rev 42)", "put --ignore-lease lk2 v2").ok(),
        ctl("lease kept", "get lk2 -w json").json().ok(),
        sleep("let the 2 s lease expire (etcd checks expiry every 500 ms)", Duration::from_millis(4500)),
        ctl("expiry deleted its key in one revision (rev 43)", "get short -w json").json().ok(),
        ctl("expired lease", "lease timetolive {lease:L2}").norm(TimeToLive).ok(),
        ctl("lease list is ordered by expiry", "lease list").ok(),
        ctl("lease list, JSON", "lease list -w json").json().ok(),
        ctl("revoke deletes the keys (rev 44)", "lease revoke {lease:L1}").ok(),
        ctl("keys gone", "get lk --prefix -w json").json().ok(),
        ctl("revoke twice", "lease revoke {lease:L1}").fails(),
        ctl("put with a revoked lease", "put --lease {lease:L1} x y").fails(),
        ctl("timetolive of a revoked lease, JSON", "lease timetolive {lease:L1} --keys -w json").norm(TimeToLive).ok(),
        ctl("keep-alive of a revoked lease (TTL 0 on the stream)", "lease keep-alive --once {lease:L1}").code(2),
        ctl("unknown lease: timetolive", "lease timetolive 1234").ok(),
        ctl("unknown lease: revoke", "lease revoke 1234").fails(),
        ctl("unknown lease: keep-alive", "lease keep-alive --once 1234").code(2),
        ctl("unknown lease: put", "put --lease 1234 k v").fails(),
        ctl("revoking a lease without keys does not bump the revision", "lease revoke {lease:L3}").ok(),
        ctl("revision still 44", "get nokey -w json").json().ok(),
        ctl("no leases left", "lease list").ok(),
        // --- Compaction ----------------------------------------------------------------------
        ctl("rev 45", "put c 1").ok(),
        ctl("rev 46", "put c 2").ok(),
        ctl("rev 47", "put c 3").ok(),
        ctl("compact at 46", "compaction 46").ok(),
        ctl("the compact revision itself stays readable", "get c --rev 46 -w json").json().ok(),
        ctl("below the compact revision", "get c --rev 45").fails(),
        ctl("compact again at the same revision", "compaction 46").fails(),
        ctl("compact an older revision", "compaction 30").fails(),
        ctl("compact a future revision", "compaction 999999").fails(),
        ctl("compaction does not bump the revision", "get c -w json").json().ok(),
        watch("watch from a compacted revision is canceled", "watch --rev 45 c", &[]).code(5),
        watch("watch from the compact revision replays", "watch --rev 46 c", &[]),
        ctl("physical compaction", "compaction --physical 47").ok(),
        ctl("hashkv reports the compact revision", "endpoint hashkv -w json").norm(HashKv).ok(),
        // --- Bad input -----------------------------------------------------------------------
        ctl("empty key on put", "put \"\" v").fails(),
        ctl("empty key on get", "get \"\"").fails(),
        ctl("empty key on del", "del \"\"").fails(),
        ctl("future revision", "get c --rev 999999").fails(),
        ctl("a 1.6 MiB value is over the 1.5 MiB request limit", "put big")
            .stdin(vec![b'x'; 1_677_722])
            .fails(),
        ctl("a 1.3 MiB value fits (rev 48)", "put big").stdin(vec![b'y'; 1_363_149]).ok(),
        ctl("rev 49", "del big").ok(),
        ctl("failed requests did not bump the revision", "get c -w json").json().ok(),
        // --- Cluster and maintenance ---------------------------------------------------------
        ctl("status", "endpoint status -w json").norm(EndpointStatus).ok(),
        ctl("health (etcdctl prints it on stderr)", "endpoint health").norm(EndpointHealth).ok(),
        ctl("health, JSON", "endpoint health -w json").norm(EndpointHealth).ok(),
        ctl("member list, JSON (header without revision)", "member list -w json").norm(MemberList).ok(),
        ctl("member list", "member list").norm(MemberList).ok(),
        ctl("no alarms", "alarm list").ok(),
        ctl("defragment", "defrag").ok(),
        ctl("snapshot", "snapshot save {dir}/snap.db").ok(),
        ctl("still serving after maintenance (rev 50)", "put after maintenance").ok(),
        ctl("final state", "get \"\" --prefix -w json").json().ok(),
    ]);
    s
}

/// One server with what the script learned about it.
struct Side {
    label: String,
    server: Server,
    /// Lease IDs captured by name.
    leases: BTreeMap<String, i64>,
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

fn env_flag(name: &str) -> bool {
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

    fn run(&mut self, step: &Step) -> Output {
        match &step.action {
            Action::Ctl { args, stdin } => {
                let args: Vec<String> = args.iter().map(|a| self.subst(a)).collect();
                self.server.etcdctl(&args, stdin.as_deref())
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
                let mut child = self.server.spawn_etcdctl(&args);
                if !during.is_empty() {
                    // No output says when the watcher exists; starting it at the next revision
                    // makes a late creation replay what it missed, so this pause only keeps
                    // the events mostly live.
                    std::thread::sleep(Duration::from_millis(500));
                    for cmd in during {
                        let cmd: Vec<String> = cmd.iter().map(|a| self.subst(a)).collect();
                        let out = self.server.etcdctl(&cmd, None);
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

    /// The store revision, from the header of a Range.
    fn current_revision(&self) -> i64 {
        let out = self
            .server
            .etcdctl(&["get", "conformance/revision-probe", "-w", "json"], None);
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
            Norm::EndpointHealth => normalize_took(&stdout),
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
        };
        // Health results go to stderr in etcdctl 3.4.
        let stderr = if step.norm == Norm::EndpointHealth {
            normalize_took(&stderr)
        } else {
            stderr
        };
        Normalized {
            code: out.code,
            stdout,
            stderr,
        }
    }

    /// What every output gets: endpoint, temporary directory and lease IDs.
    fn common(&self, text: &str) -> String {
        // Random client port.
        let mut t = text.replace(&self.server.endpoint(), "<endpoint>");
        t = t.replace(
            &format!("127.0.0.1:{}", self.server.client_port()),
            "<endpoint>",
        );
        // Random temporary directory.
        t = t.replace(&self.server.dir().display().to_string(), "<dir>");
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
        for entry in v.as_array_mut().into_iter().flatten() {
            let status = &mut entry["Status"];
            let member_id = status["header"]["member_id"].clone();
            // etcdctl needs a semver; Mast reports its own etcd-like version.
            let version = status["version"].as_str().unwrap_or_default().to_owned();
            status["version"] = Value::from(match semver::Version::parse(&version) {
                Ok(_) => "<semver>".to_owned(),
                Err(e) => format!("<not a semver: {version:?}: {e}>"),
            });
            // A single member leads itself.
            if status["leader"] == member_id && !member_id.is_null() {
                status["leader"] = Value::from("<member_id>");
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
                for m in v["members"].as_array_mut().into_iter().flatten() {
                    if m["ID"] == member_id {
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

#[test]
fn etcdctl_outputs_match_etcd() {
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
    let mut reference = Side {
        label: "etcd".into(),
        server: Server::start(ServerKind::Etcd),
        leases: BTreeMap::new(),
    };
    let mut candidate = Side {
        label: if against_etcd {
            "etcd #2 (MAST_DIFF_AGAINST_ETCD)".into()
        } else {
            "mast".into()
        },
        server: Server::start(candidate_kind),
        leases: BTreeMap::new(),
    };

    let steps = script();
    let mut failures = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let n = n + 1;
        if let Action::Sleep(d) = step.action {
            std::thread::sleep(d);
            continue;
        }
        let raw_ref = reference.run(step);
        let raw_cand = candidate.run(step);
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

#[test]
fn words_split_like_a_shell() {
    assert_eq!(words(r#"put "" v"#), vec!["put", "", "v"]);
    assert_eq!(words(r#"get "a b"  c"#), vec!["get", "a b", "c"]);
}
