//! Mast as a cluster of processes on loopback: every member serves etcdctl (writes through
//! followers reach the leader, reads are linearizable on every member, watches see writes made
//! elsewhere); a `kill -9` of the leader under a concurrent write load loses no acknowledged
//! write and every member ends with the same `HashKV`; membership grows and shrinks by etcd's
//! runbook; leases survive a change of leader; a member of another cluster is refused; only the
//! leader runs health probes, and a new leader takes them over.
//!
//! Every wait is bounded; every process is stopped by its PID when its `Server` drops.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use mast_conformance::cluster::Cluster;
use mast_conformance::{Server, ServerKind};

fn start(n: usize) -> Cluster {
    Cluster::start(ServerKind::Mast, n).unwrap_or_else(|e| panic!("cluster did not start: {e:#}"))
}

fn ok(s: &Server, args: &[&str]) -> String {
    let out = s.etcdctl(args, None);
    assert!(
        out.success(),
        "etcdctl {args:?} on {} failed: {}{}",
        s.name(),
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Retries `f` until it returns `Some`, for at most `timeout`.
fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_member_serves_etcdctl() {
    let mut c = start(3);
    let leader = c.wait_leader(Duration::from_secs(10)).unwrap();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // The member list shows three started voters with their client URLs.
    let list = eventually(Duration::from_secs(10), "members published", || {
        let out = c.members[follower].etcdctl(&["member", "list"], None);
        (out.success() && out.stdout.lines().count() == 3 && !out.stdout.contains(", , "))
            .then_some(out.stdout)
    });
    for m in &c.members {
        assert!(list.contains(&m.endpoint()), "{list}");
        assert!(list.contains(&format!(", {}, ", m.name())), "{list}");
    }

    // A watch on one follower sees a put made through another.
    let watch = c.members[other].spawn_etcdctl(&["watch", "/w/", "--prefix"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ok(&c.members[follower], &["put", "/w/a", "1"]).trim(), "OK");
    // Reads are linearizable on every member: each sees the write at once.
    for m in &c.members {
        assert_eq!(ok(m, &["get", "/w/a", "--print-value-only"]).trim(), "1");
    }
    let out = watch.finish(Duration::from_secs(2));
    assert!(
        out.stdout.contains("PUT\n/w/a\n1"),
        "watch saw: {}",
        out.stdout
    );

    // The leader times its heartbeats to each follower as etcd's peer round-trip histogram.
    let follower_id = c.status(follower).unwrap().id;
    let series =
        format!("etcd_network_peer_round_trip_time_seconds_bucket{{To=\"{follower_id:x}\",le=");
    let metrics_url = format!("{}/metrics", c.members[leader].endpoint());
    eventually(Duration::from_secs(5), "peer round-trip metric", || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", &metrics_url])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains(&series)
            .then_some(())
    });

    // A txn through a follower.
    let txn = c.members[follower].etcdctl(
        &["txn"],
        Some(b"value(\"/w/a\") = \"1\"\n\nput /w/b 2\n\nput /w/b 3\n\n"),
    );
    assert!(
        txn.stdout.starts_with("SUCCESS"),
        "{}{}",
        txn.stdout,
        txn.stderr
    );
    assert_eq!(
        ok(&c.members[other], &["get", "/w/b", "--print-value-only"]).trim(),
        "2"
    );

    // Leases: granted through a follower, kept alive through the other, asked on the leader.
    let grant = ok(&c.members[follower], &["lease", "grant", "30"]);
    let id = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    let keep = ok(&c.members[other], &["lease", "keep-alive", "--once", &id]);
    assert!(keep.contains("TTL(30)"), "{keep}");
    let ttl = ok(&c.members[other], &["lease", "timetolive", &id]);
    assert!(ttl.contains("granted with TTL(30s)"), "{ttl}");

    // Every member reports the same leader and term.
    let s: Vec<_> = (0..3).map(|i| c.status(i).unwrap()).collect();
    assert!(
        s.iter()
            .all(|x| x.leader == s[0].leader && x.term == s[0].term),
        "{s:?}"
    );
    assert_eq!(s[leader].id, s[leader].leader);
}

/// One acknowledged put of the ledger.
#[derive(Clone, Debug)]
struct Ack {
    value: String,
    revision: i64,
}

async fn client(endpoint: String) -> Option<Client> {
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_secs(1));
    Client::connect([endpoint], Some(options)).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_under_load_loses_nothing_and_members_agree() {
    let mut c = tokio::task::spawn_blocking(|| start(3)).await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).unwrap();
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let killed_at = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let first_after = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let stop_at = Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    // Six writers, two on each member; a writer whose member dies moves to the next one.
    for t in 0..6usize {
        let endpoints = endpoints.clone();
        let killed_at = killed_at.clone();
        let first_after = first_after.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut at = t % endpoints.len();
            let mut cl = client(endpoints[at].clone()).await;
            for i in 0..100_000usize {
                if Instant::now() >= stop_at {
                    break;
                }
                let key = format!("ledger/{t}/{i:06}");
                let value = format!("v-{t}-{i}");
                let sent = Instant::now();
                let r = match cl.as_mut() {
                    Some(cl) => cl.put(key.clone(), value.clone(), None).await.ok(),
                    None => None,
                };
                match r {
                    Some(resp) => {
                        let rev = resp.header().map_or(0, |h| h.revision());
                        // Failover ends with the first write sent after the kill that is
                        // acknowledged.
                        if killed_at.lock().unwrap().is_some_and(|k| sent >= k) {
                            first_after.lock().unwrap().get_or_insert_with(Instant::now);
                        }
                        acks.push((
                            key,
                            Ack {
                                value,
                                revision: rev,
                            },
                        ));
                    }
                    None => {
                        at = (at + 1) % endpoints.len();
                        cl = client(endpoints[at].clone()).await;
                    }
                }
            }
            acks
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *killed_at.lock().unwrap() = Some(Instant::now());
    c.members[leader].kill9();
    let mut ledger: BTreeMap<String, Ack> = BTreeMap::new();
    for t in tasks {
        ledger.extend(t.await.unwrap());
    }
    let kill = killed_at.lock().unwrap().unwrap();
    let after = first_after
        .lock()
        .unwrap()
        .expect("no write was acknowledged after the leader was killed");
    eprintln!(
        "failover: {:?} from kill -9 of the leader to the next acknowledged write; {} writes acknowledged",
        after - kill,
        ledger.len()
    );
    assert!(ledger.len() > 100, "too few writes: {}", ledger.len());
    // The followers saw the leader's connections close and its peer port refuse: they
    // campaigned at once rather than after the election timeout (`mast_raft::leader_watch`).
    let http = reqwest::Client::new();
    let mut campaigns = 0.0;
    for (i, m) in c.members.iter().enumerate() {
        if i != leader {
            campaigns += metric_sum(&http, &m.endpoint(), "mast_server_leader_gone_total").await;
        }
    }
    assert!(
        campaigns >= 1.0,
        "no follower campaigned on seeing the leader gone"
    );

    // The killed member comes back and catches up; then every member has every acknowledged
    // write, and all agree.
    let mut c = tokio::task::spawn_blocking(move || {
        c.members[leader].restart().expect("restart the old leader");
        c.wait_leader(Duration::from_secs(15))
            .expect("a leader after restart");
        c
    })
    .await
    .unwrap();
    let top = ledger.values().map(|a| a.revision).max().unwrap();
    for (i, m) in c.members.iter().enumerate() {
        let mut cl = client(m.endpoint()).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = cl
                .get(
                    "ledger/",
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await
                .unwrap();
            let rev = r.header().map_or(0, |h| h.revision());
            if rev >= top {
                let got: BTreeMap<String, (String, i64)> = r
                    .kvs()
                    .iter()
                    .map(|kv| {
                        (
                            kv.key_str().unwrap().to_string(),
                            (kv.value_str().unwrap().to_string(), kv.mod_revision()),
                        )
                    })
                    .collect();
                for (k, a) in &ledger {
                    let (v, rev) = got
                        .get(k)
                        .unwrap_or_else(|| panic!("m{i} lost acknowledged {k}"));
                    assert_eq!((v, *rev), (&a.value, a.revision), "m{i}: {k}");
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "m{i} stuck at revision {rev} < {top}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut hashes = Vec::new();
    for m in &c.members {
        let cl = client(m.endpoint()).await.expect("connect");
        hashes.push(cl.maintenance_client().hash_kv(top).await.unwrap().hash());
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "HashKV at {top}: {hashes:?}"
    );
    let endpoints = c.endpoints();
    eprintln!("members agree at revision {top} ({endpoints})");
}

#[test]
fn membership_grows_and_shrinks_by_etcds_runbook() {
    // One member, then a learner that catches up and is promoted, then voters: 1 → 3 → 5 → 3.
    let mut c = start(1);
    ok(&c.members[0], &["put", "grow/0", "x"]);
    let learner = c.add_member(0, true).expect("add a learner");
    let id = eventually(
        Duration::from_secs(10),
        "the learner in the member list",
        || {
            let out = c.members[0].etcdctl(&["member", "list"], None);
            out.stdout
                .lines()
                .find(|l| l.ends_with(", true"))
                .map(|l| l.split(',').next().unwrap().to_string())
        },
    );
    // A learner serves serializable reads only.
    eventually(Duration::from_secs(10), "the learner caught up", || {
        let out = c.members[learner].etcdctl(
            &["get", "grow/0", "--consistency=s", "--print-value-only"],
            None,
        );
        (out.stdout.trim() == "x").then_some(())
    });
    // …and Status; writes, linearizable reads and the rest are refused with etcd's error.
    for refused in [
        &["put", "grow/l", "z"][..],
        &["get", "grow/0", "--command-timeout=2s"][..],
        &["member", "list"][..],
    ] {
        let out = c.members[learner].etcdctl(refused, None);
        assert!(
            !out.success(),
            "a learner served {refused:?}: {}",
            out.stdout
        );
        assert!(
            out.stderr
                .contains("etcdserver: rpc not supported for learner"),
            "{refused:?} on a learner: {}",
            out.stderr
        );
    }
    ok(&c.members[learner], &["endpoint", "status"]);
    eventually(Duration::from_secs(10), "the learner promoted", || {
        let out = c.members[0].etcdctl(&["member", "promote", &id], None);
        out.success().then_some(())
    });
    c.members[learner]
        .wait_ready()
        .expect("the promoted member answers");
    let third = c.add_member(0, false).expect("add a voter");
    c.wait_leader(Duration::from_secs(10))
        .expect("a leader with three voters");
    ok(&c.members[third], &["put", "grow/3", "y"]);
    let fourth = c.add_member(1, false).expect("a fourth voter");
    let fifth = c.add_member(2, false).expect("a fifth voter");
    let list = ok(&c.members[fourth], &["member", "list"]);
    assert_eq!(list.lines().count(), 5, "{list}");
    ok(&c.members[fifth], &["put", "grow/5", "z"]);

    // Back to three: remove two members (one of them maybe the leader).
    // Removing a member that answers needs the others to have answered for 5 s as well
    // (etcd's "unhealthy cluster" otherwise).
    for gone in [fifth, fourth] {
        let s = c.status(gone).unwrap();
        eventually(Duration::from_secs(20), "the member removed", || {
            let out = c.members[0].etcdctl(&["member", "remove", &format!("{:x}", s.id)], None);
            if !out.success() {
                assert!(
                    out.stderr.contains("etcdserver: unhealthy cluster"),
                    "member remove: {}",
                    out.stderr
                );
            }
            out.success().then_some(())
        });
        c.members[gone].stop();
    }
    let list = ok(&c.members[0], &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    c.wait_leader(Duration::from_secs(10)).unwrap();
    assert_eq!(
        ok(&c.members[third], &["get", "grow/5", "--print-value-only"]).trim(),
        "z"
    );

    // Replace a dead member: remove it, add a new one with a fresh data directory.
    let dead = third;
    let dead_id = c.status(dead).unwrap().id;
    c.members[dead].kill9();
    eventually(Duration::from_secs(10), "the dead member removed", || {
        c.members[0]
            .etcdctl(&["member", "remove", &format!("{dead_id:x}")], None)
            .success()
            .then_some(())
    });
    let new = c.add_member(0, false).expect("a replacement");
    assert_eq!(
        ok(&c.members[new], &["get", "grow/3", "--print-value-only"]).trim(),
        "y"
    );
    let list = ok(&c.members[new], &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
}

#[test]
fn membership_changes_are_refused_as_etcd_refuses_them() {
    let mut c = start(3);
    let m = &c.members[0];
    // Until every voter has answered the leader for 5 s, any add is "unhealthy cluster"
    // (etcd's strict reconfiguration check runs before the others).
    let taken = eventually(Duration::from_secs(20), "a healthy cluster", || {
        let out = m.etcdctl(
            &[
                "member",
                "add",
                "x",
                &format!("--peer-urls={}", c.members[1].peer_url()),
            ],
            None,
        );
        (!out.stderr.contains("etcdserver: unhealthy cluster")).then_some(out)
    });
    assert!(
        taken
            .stderr
            .contains("etcdserver: Peer URLs already exists"),
        "{}",
        taken.stderr
    );
    let missing = m.etcdctl(&["member", "remove", "1234"], None);
    assert!(
        missing.stderr.contains("etcdserver: member not found"),
        "{}",
        missing.stderr
    );
    let voter = c.status(1).unwrap().id;
    let promote = m.etcdctl(&["member", "promote", &format!("{voter:x}")], None);
    assert!(
        promote
            .stderr
            .contains("etcdserver: can only promote a learner member"),
        "{}",
        promote.stderr
    );
    ok(
        m,
        &[
            "member",
            "add",
            "l1",
            "--learner",
            "--peer-urls=http://127.0.0.1:1",
        ],
    );
    let two = m.etcdctl(
        &[
            "member",
            "add",
            "l2",
            "--learner",
            "--peer-urls=http://127.0.0.1:2",
        ],
        None,
    );
    assert!(
        two.stderr
            .contains("etcdserver: too many learner members in cluster"),
        "{}",
        two.stderr
    );

    // A voter that stops answering makes the cluster unhealthy for adds, as etcd's
    // isConnectedFullySince. (The leader notices at its next heartbeat; an add that gets in
    // before is taken back.)
    let learner = eventually(Duration::from_secs(10), "the learner listed", || {
        let list = m.etcdctl(&["member", "list"], None);
        list.stdout
            .lines()
            .find(|l| l.ends_with(", true"))
            .map(|l| l.split(',').next().unwrap().trim().to_string())
    });
    ok(m, &["member", "remove", &learner]);
    c.members[2].kill9();
    let m = &c.members[0];
    eventually(Duration::from_secs(20), "unhealthy cluster", || {
        let out = m.etcdctl(
            &[
                "member",
                "add",
                "l3",
                "--learner",
                "--peer-urls=http://127.0.0.1:3",
            ],
            None,
        );
        if out.success() {
            let id = out
                .stdout
                .split_whitespace()
                .nth(1)
                .expect("member add prints the ID")
                .to_string();
            ok(m, &["member", "remove", &id]);
            return None;
        }
        out.stderr
            .contains("etcdserver: unhealthy cluster")
            .then_some(())
    });
}

#[test]
fn a_member_of_another_cluster_is_refused_and_changes_nothing() {
    let mut c = start(3);
    c.wait_leader(Duration::from_secs(10)).unwrap();
    ok(&c.members[0], &["put", "k", "v"]);
    // A stranger that names the cluster's members in its --initial-cluster, but with another
    // token: its cluster ID differs, so the members refuse it.
    let mut initial: Vec<String> = c
        .members
        .iter()
        .map(|m| format!("{}={}", m.name(), m.peer_url()))
        .collect();
    let mut stranger = Server::unstarted(
        ServerKind::Mast,
        mast_conformance::ServerOptions {
            name: Some("intruder".into()),
            ..Default::default()
        },
    )
    .unwrap();
    initial.push(format!("intruder={}", stranger.peer_url()));
    stranger.options_mut().member = Some(mast_conformance::MemberSpec {
        initial_cluster: initial.join(","),
        token: "another-token".into(),
        state: "new".into(),
    });
    stranger.spawn().unwrap();
    eventually(
        Duration::from_secs(10),
        "the refusal in the stranger's log",
        || stranger.log().contains("cluster ID mismatch").then_some(()),
    );
    // The cluster is as it was.
    let list = ok(&c.members[1], &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains("intruder"), "{list}");
    ok(&c.members[2], &["put", "k", "v2"]);
    assert_eq!(
        ok(&c.members[1], &["get", "k", "--print-value-only"]).trim(),
        "v2"
    );

    // A member started to join an existing cluster it was never added to exits with etcd's
    // complaint.
    let mut joiner = Server::unstarted(ServerKind::Mast, Default::default()).unwrap();
    joiner.options_mut().member = Some(mast_conformance::MemberSpec {
        initial_cluster: format!(
            "{}={},conformance={}",
            c.members[0].name(),
            c.members[0].peer_url(),
            joiner.peer_url()
        ),
        token: "x".into(),
        state: "existing".into(),
    });
    joiner.spawn().unwrap();
    eventually(Duration::from_secs(10), "the joiner exits", || {
        (!joiner.running()).then_some(())
    });
    assert!(
        joiner.log().contains("add it first with `member add`"),
        "{}",
        joiner.log_tail(10)
    );
}

#[test]
fn leases_survive_a_change_of_leader_and_die_with_their_owner() {
    let mut c = start(3);
    let leader = c.wait_leader(Duration::from_secs(10)).unwrap();
    let f1 = (leader + 1) % 3;
    let f2 = (leader + 2) % 3;
    let grant = |i: usize, ttl: &str| {
        let out = ok(&c.members[i], &["lease", "grant", ttl]);
        out.split_whitespace().nth(1).unwrap().to_string()
    };
    // One lease kept alive through a follower the whole time; one left alone.
    let kept = grant(f1, "4");
    let alone = grant(f1, "4");
    ok(&c.members[f1], &["put", "kept", "1", "--lease", &kept]);
    ok(&c.members[f1], &["put", "alone", "1", "--lease", &alone]);
    let keeper = c.members[f2].spawn_etcdctl(&["lease", "keep-alive", &kept]);
    std::thread::sleep(Duration::from_millis(1500));
    let alone_since = Instant::now();
    c.members[leader].kill9();
    // A new leader, and the kept lease still alive well past its TTL.
    let rest: Vec<usize> = vec![f1, f2];
    std::thread::sleep(Duration::from_secs(6));
    let ttl = ok(&c.members[rest[0]], &["lease", "timetolive", &kept]);
    assert!(
        ttl.contains("remaining"),
        "kept lease gone after the failover: {ttl}"
    );
    assert!(!ttl.contains("already expired"), "{ttl}");
    assert_eq!(
        ok(&c.members[rest[1]], &["get", "kept", "--print-value-only"]).trim(),
        "1"
    );
    // The other lease ended within TTL + election timeout (+ the test's polling) of its last
    // keepalive (its grant).
    let gone = eventually(
        Duration::from_secs(10),
        "the unattended lease revoked",
        || {
            let out = c.members[rest[1]].etcdctl(&["get", "alone", "--print-value-only"], None);
            (out.success() && out.stdout.trim().is_empty()).then(Instant::now)
        },
    );
    assert!(
        gone - alone_since < Duration::from_secs(4 + 1 + 2 + 2),
        "revoked {:?} after the kill",
        gone - alone_since
    );
    keeper.stop();
}

/// Every member stopped at once (`kill -9`) and started again: a lease granted before keeps
/// its key; its remaining TTL is counted again from the new leader's start (as etcd's
/// `Promote`), never cut short by the time the cluster was down.
#[test]
fn no_lease_expires_early_when_every_member_restarts() {
    let mut c = start(3);
    c.wait_leader(Duration::from_secs(10)).unwrap();
    let out = ok(&c.members[0], &["lease", "grant", "20"]);
    let lease = out.split_whitespace().nth(1).unwrap().to_string();
    ok(&c.members[1], &["put", "held", "1", "--lease", &lease]);
    for m in &mut c.members {
        m.kill9();
    }
    for m in &mut c.members {
        m.spawn().expect("start again");
    }
    for m in &mut c.members {
        m.wait_ready().expect("answers after the restart");
    }
    c.wait_leader(Duration::from_secs(15))
        .expect("a leader after every member restarted");
    for m in &c.members {
        assert_eq!(
            ok(m, &["get", "held", "--print-value-only", "--consistency=s"]).trim(),
            "1",
            "the key of a live lease is gone on {}",
            m.name()
        );
    }
    let ttl = ok(&c.members[2], &["lease", "timetolive", &lease]);
    let remaining: i64 = ttl
        .split("remaining(")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no remaining TTL in: {ttl}"));
    assert!(
        remaining > 10,
        "the lease lost its TTL across the restart: {ttl}"
    );
}

/// Runs the `mast` CLI with `--endpoints <endpoints>`, killing it after 30 s.
fn mast_cli(endpoints: &str, args: &[&str]) -> mast_conformance::Output {
    let mut cmd = std::process::Command::new(mast_conformance::mast_binary());
    cmd.env_remove("MAST_ENDPOINTS")
        .env_remove("ETCDCTL_ENDPOINTS")
        .args(["--endpoints", endpoints])
        .args(args);
    mast_conformance::Background::spawn(cmd, None)
        .expect("run mast")
        .finish(Duration::from_secs(30))
}

#[test]
fn the_cli_moves_to_another_member_when_one_dies() {
    // The CLI (through the Rust SDK) given every endpoint keeps working when one member is
    // gone: a read goes to another member, a write that could not reach the dead member is
    // sent to another one (never one that may have been applied).
    let mut c = start(3);
    let leader = c.wait_leader(Duration::from_secs(10)).unwrap();
    let all: Vec<String> = c.members.iter_mut().map(|m| m.endpoint()).collect();
    let all = all.join(",");
    let out = mast_cli(&all, &["put", "cli/0", "before"]);
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    c.members[leader].kill9();
    // Each run is a new process that dials the members afresh, so a dead endpoint is picked
    // often; every one of them must succeed.
    for i in 1..=12 {
        let key = format!("cli/{i}");
        let out = mast_cli(&all, &["put", &key, "after"]);
        assert!(
            out.success(),
            "put {i} with a member down: {}{}",
            out.stdout,
            out.stderr
        );
        let out = mast_cli(&all, &["get", &key]);
        assert!(
            out.success() && out.stdout.contains("after"),
            "get {i} with a member down: {}{}",
            out.stdout,
            out.stderr
        );
    }
    let out = mast_cli(&all, &["get", "cli/0"]);
    assert!(
        out.stdout.contains("before"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn a_cli_registration_keeps_its_lease_while_members_die_in_turn() {
    // `mast service register` (the SDK's Registration) given every endpoint keeps its lease
    // alive through whichever member is up: each member is killed in turn (so the one its
    // keepalive stream uses is killed once), and over more than TTL + election timeout after
    // each kill the instance stays, under the same lease.
    let mut c = start(3);
    c.wait_leader(Duration::from_secs(10)).unwrap();
    let all: Vec<String> = c.members.iter_mut().map(|m| m.endpoint()).collect();
    let mut cmd = std::process::Command::new(mast_conformance::mast_binary());
    cmd.env_remove("MAST_ENDPOINTS")
        .env_remove("ETCDCTL_ENDPOINTS")
        .args(["--endpoints", &all.join(",")])
        .args(["service", "register", "pay", "p1", "10.0.0.1:80"])
        .args(["--ttl", "3"]);
    let reg_out = tempfile::NamedTempFile::new().unwrap();
    cmd.env("RUST_LOG", "mast_sdk=debug")
        .stdin(std::process::Stdio::null())
        .stdout(reg_out.reopen().unwrap())
        .stderr(reg_out.reopen().unwrap());
    let reg_path = reg_out.path().to_path_buf();
    let reg_log = |_: &Cluster| std::fs::read_to_string(&reg_path).unwrap_or_default();
    /// Kills the registering CLI (by PID) however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let reg = Killed(cmd.spawn().expect("run mast service register"));
    let key = "/services/pay/p1";
    // The lease ID of the instance key (`Ok(None)`: no such key), read through the members
    // that are up; `Err` with etcdctl's output when the read itself failed.
    let lease_of = |c: &mut Cluster| -> Result<Option<String>, String> {
        let eps = c.endpoints();
        let out = mast_conformance::etcdctl(
            &eps,
            &["get", key, "-w", "fields"],
            None,
            Duration::from_secs(10),
        );
        if !out.success() {
            return Err(format!("{}{}", out.stdout, out.stderr));
        }
        Ok(out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("\"Lease\" : "))
            .map(|v| v.trim().to_string())
            .filter(|v| v != "0"))
    };
    let lease = eventually(Duration::from_secs(10), "the instance registered", || {
        lease_of(&mut c).ok().flatten()
    });
    for victim in 0..3 {
        c.members[victim].kill9();
        c.wait_leader(Duration::from_secs(10))
            .expect("a leader among the other two");
        let until = Instant::now() + Duration::from_secs(5); // TTL 3 s + election timeout 1 s
        while Instant::now() < until {
            match lease_of(&mut c) {
                Ok(Some(l)) if l == lease => {}
                // A read that failed says nothing about the lease (asked again).
                Err(e) => eprintln!("read with m{victim} down failed: {e}"),
                Ok(seen) => panic!(
                    "the instance is not under its first lease {lease} with m{victim} down: \
                     {seen:?}; registration: {}",
                    reg_log(&c)
                ),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        c.members[victim].restart().expect("restart");
        c.wait_leader(Duration::from_secs(10))
            .expect("a leader after the restart");
    }
    drop(reg);
    let log = reg_log(&c);
    assert!(log.contains("registered /services/pay/p1"), "{log}");
}

/// The sum of every `mast_health_probes_total` series member `endpoint` exports (0 when it
/// has probed nothing: the counter is not registered until its first probe).
async fn probes_run(http: &reqwest::Client, endpoint: &str) -> f64 {
    metric_sum(http, endpoint, "mast_health_probes_total").await
}

/// The sum of every series of metric `name` that member `endpoint` exports (0 when none).
async fn metric_sum(http: &reqwest::Client, endpoint: &str, name: &str) -> f64 {
    let body = http
        .get(format!("{endpoint}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `GET /mast/v1/services/<service>/instances` on `endpoint` until the one instance's
/// `healthy` is `want`, for at most 15 s.
async fn wait_health(http: &reqwest::Client, endpoint: &str, service: &str, want: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut last = serde_json::Value::Null;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = http
            .get(format!("{endpoint}/mast/v1/services/{service}/instances"))
            .send()
            .await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            if v["instances"][0]["healthy"] == want {
                return;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service} never turned healthy={want} on {endpoint}: {last}");
}

/// A persistent instance's health check runs on the leader only (followers count no probe);
/// its port closing is seen once, as `healthy: false` on every member; after the leader dies
/// the new leader takes the probing over and sees the port open again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_probes_and_a_new_leader_takes_over() {
    let mut c = start(3);
    let leader = c.wait_leader(Duration::from_secs(10)).unwrap();
    let f1 = (leader + 1) % 3;
    let f2 = (leader + 2) % 3;
    let http = reqwest::Client::new();
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let base = |i: usize| endpoints[i].clone();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Registered through a follower: the write reaches the leader, which starts probing.
    let r = http
        .post(format!("{}/mast/v1/services/probed/instances", base(f1)))
        .json(&serde_json::json!({
            "id": "p1", "host": "127.0.0.1", "port": port, "ephemeral": false,
            "healthCheck": {"type": "tcp", "intervalMs": 200, "timeoutMs": 150,
                            "unhealthyThreshold": 2, "healthyThreshold": 1}
        }))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);

    // The leader probes; followers never do.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while probes_run(&http, &base(leader)).await < 3.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader runs no probes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for f in [f1, f2] {
        assert_eq!(probes_run(&http, &base(f)).await, 0.0, "m{f} probes");
    }

    // The port closes: the instance is marked unhealthy (not deleted), seen on every member.
    drop(listener);
    for i in [f2, leader, f1] {
        wait_health(&http, &base(i), "probed", false).await;
    }
    for f in [f1, f2] {
        assert_eq!(probes_run(&http, &base(f)).await, 0.0, "m{f} probes");
    }

    // The leader dies; the port opens again: one of the survivors leads and probes, and the
    // instance is healthy again.
    c.members[leader].kill9();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let new_leader = c.wait_leader(Duration::from_secs(15)).unwrap();
    let other = if new_leader == f1 { f2 } else { f1 };
    wait_health(&http, &base(other), "probed", true).await;
    assert!(probes_run(&http, &base(new_leader)).await > 0.0);
    assert_eq!(
        probes_run(&http, &base(other)).await,
        0.0,
        "m{other} probes while following"
    );
    drop(listener);

    // The audit log names the prober for both changes, the same on both survivors.
    let audit = |i: usize| {
        let http = http.clone();
        let url = format!(
            "{}/mast/v1/audit?user=health-probe&prefix=/services/probed/",
            base(i)
        );
        async move {
            let v: serde_json::Value = http.get(url).send().await.unwrap().json().await.unwrap();
            v["entries"].as_array().cloned().unwrap_or_default()
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let (a, b) = (audit(new_leader).await, audit(other).await);
        if a.len() >= 2 && a == b {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit entries differ or are missing: {a:?} / {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let healthy = |e: &serde_json::Value| -> Option<bool> {
        let after: serde_json::Value = serde_json::from_str(e["after"].as_str()?).ok()?;
        after["healthy"].as_bool()
    };
    assert_eq!(
        healthy(&entries[entries.len() - 2]),
        Some(false),
        "{entries:?}"
    );
    assert_eq!(
        healthy(&entries[entries.len() - 1]),
        Some(true),
        "{entries:?}"
    );
    assert!(entries.iter().all(|e| e["api"] == "system"), "{entries:?}");
}
