//! Crash loop: `kill -9` Mast again and again under a mixed load — puts, txns, leases with
//! keys, deletes, service registrations and config publishes through `/mast/v1` — keeping a
//! ledger of every acknowledged write, and after every restart check the ledger against the
//! store:
//!
//! - every acknowledged put, txn, delete, lease, registration and config publish is there, at
//!   the revision its answer reported (a write not acknowledged may or may not be);
//! - the store opened, and its history has an event at every revision up to the current one
//!   (a write bumps the revision by one, none is half there);
//! - at the end, the whole history (every event from revision 1), replayed revision by
//!   revision into a fresh Mast, gives the same `HashKV`: the rows on disk are exactly what
//!   their own history says.
//!
//! `MAST_CRASH_TRIALS` sets the number of kill -9 trials (default 3, what CI runs;
//! `scripts/crash-loop.sh` runs 100 and commits the figures). Every loop is bounded: at most
//! 2.5 s of load per trial, 2 s per request, 4 load tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use mast_conformance::{Server, ServerKind};
use serde_json::Value;

const TASKS: usize = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Lease TTL of every lease the load makes: nothing expires during the run.
const TTL: i64 = 3600;

/// One acknowledged write, as its answer reported it.
#[derive(Clone, Debug)]
enum Ack {
    Put {
        key: String,
        value: String,
        rev: i64,
        lease: i64,
    },
    Txn {
        keys: [String; 2],
        rev: i64,
    },
    Lease {
        id: i64,
    },
    Delete {
        key: String,
        rev: i64,
    },
    /// A delete sent but not acknowledged: the key may be gone.
    MaybeDelete {
        key: String,
    },
    Register {
        service: String,
        id: String,
        rev: i64,
    },
    Config {
        data_id: String,
        version: u64,
        rev: i64,
    },
}

impl Ack {
    fn kind(&self) -> &'static str {
        match self {
            Ack::Put { .. } => "put",
            Ack::Txn { .. } => "txn",
            Ack::Lease { .. } => "lease",
            Ack::Delete { .. } => "delete",
            Ack::MaybeDelete { .. } => "delete-unacknowledged",
            Ack::Register { .. } => "register",
            Ack::Config { .. } => "config",
        }
    }
}

fn trials() -> usize {
    std::env::var("MAST_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

async fn connect(endpoint: &str) -> Client {
    let options = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(5));
    Client::connect([endpoint], Some(options))
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"))
}

/// One load task of one trial: writes until `deadline` or the first failure (the kill), and
/// returns what was acknowledged.
async fn load(
    mut c: Client,
    http: reqwest::Client,
    base: String,
    trial: usize,
    task: usize,
    deadline: Instant,
) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut deletable: Vec<String> = Vec::new();
    let mut pending_delete: Option<String> = None;
    for i in 0..100_000usize {
        if Instant::now() >= deadline {
            break;
        }
        let tag = format!("{trial}/{task}/{i}");
        let step = async {
            match i % 6 {
                0 => {
                    let key = format!("cl/p/{tag}");
                    let value = format!("v{tag}");
                    let r = c.put(key.as_str(), value.as_str(), None).await.ok()?;
                    deletable.push(key.clone());
                    Some(vec![Ack::Put {
                        key,
                        value,
                        rev: r.header()?.revision(),
                        lease: 0,
                    }])
                }
                1 => {
                    let a = format!("cl/x/{tag}/a");
                    let b = format!("cl/x/{tag}/b");
                    let txn = Txn::new()
                        .when([Compare::create_revision(a.as_str(), CompareOp::Equal, 0)])
                        .and_then([
                            TxnOp::put(a.as_str(), "1", None),
                            TxnOp::put(b.as_str(), "2", None),
                        ]);
                    let r = c.txn(txn).await.ok()?;
                    assert!(r.succeeded(), "txn on fresh keys {a} failed its compare");
                    Some(vec![Ack::Txn {
                        keys: [a, b],
                        rev: r.header()?.revision(),
                    }])
                }
                2 => {
                    let id = c.lease_grant(TTL, None).await.ok()?.id();
                    let mut acks = vec![Ack::Lease { id }];
                    let key = format!("cl/l/{tag}");
                    let value = format!("leased {tag}");
                    let r = c
                        .put(
                            key.as_str(),
                            value.as_str(),
                            Some(PutOptions::new().with_lease(id)),
                        )
                        .await;
                    // The lease is acknowledged even if the put was cut short.
                    if let Ok(r) = r {
                        acks.push(Ack::Put {
                            key,
                            value,
                            rev: r.header().map_or(0, |h| h.revision()),
                            lease: id,
                        });
                    }
                    Some(acks)
                }
                3 => {
                    let key = deletable.pop()?;
                    pending_delete = Some(key.clone());
                    let r = c.delete(key.as_str(), None).await.ok()?;
                    pending_delete = None;
                    assert_eq!(r.deleted(), 1, "{key} was acknowledged, then not there");
                    Some(vec![Ack::Delete {
                        key,
                        rev: r.header()?.revision(),
                    }])
                }
                4 => {
                    let service = format!("crash-{task}");
                    let id = format!("i{trial}-{i}");
                    let body = serde_json::json!({
                        "id": id, "host": "10.0.0.1", "port": 3000 + task, "ttl": TTL,
                    });
                    let r = http
                        .post(format!("{base}/mast/v1/services/{service}/instances"))
                        .body(body.to_string())
                        .send()
                        .await
                        .ok()?;
                    if !r.status().is_success() {
                        return None;
                    }
                    let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
                    Some(vec![Ack::Register {
                        service,
                        id,
                        rev: v["modRevision"].as_i64()?,
                    }])
                }
                _ => {
                    let data_id = format!("t{task}-{}.json", i % 4);
                    let body = serde_json::json!({
                        "content": format!("{{\"n\":\"{tag}\"}}"), "format": "json",
                    });
                    let r = http
                        .put(format!(
                            "{base}/mast/v1/configs/crash/DEFAULT_GROUP/{data_id}"
                        ))
                        .body(body.to_string())
                        .send()
                        .await
                        .ok()?;
                    if !r.status().is_success() {
                        return None;
                    }
                    let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
                    Some(vec![Ack::Config {
                        data_id,
                        version: v["version"].as_u64()?,
                        rev: v["revision"].as_i64()?,
                    }])
                }
            }
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, step).await {
            Ok(Some(a)) => acks.extend(a),
            // Nothing left to delete: go on with the next kind.
            Ok(None) if i % 6 == 3 && deletable.is_empty() => {}
            // The server is gone (or hung): this write may or may not have landed.
            Ok(None) | Err(_) => {
                if let Some(key) = pending_delete.take() {
                    acks.push(Ack::MaybeDelete { key });
                }
                break;
            }
        }
    }
    acks
}

/// Every key under `prefix`: key → (value, mod_revision, lease), read in pages of
/// [`PAGE_KEYS`] at the revision of the first page (one answer for a hundred trials' keys would
/// pass the client's 4 MiB message limit).
async fn keys_under(c: &mut Client, prefix: &str) -> BTreeMap<String, (Vec<u8>, i64, i64)> {
    let mut end = prefix.as_bytes().to_vec();
    let last = end.last_mut().expect("a non-empty prefix");
    *last += 1;
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut out = BTreeMap::new();
    for _page in 0..10_000 {
        let resp = c
            .get(
                from.clone(),
                Some(
                    GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(PAGE_KEYS)
                        .with_revision(revision),
                ),
            )
            .await
            .expect("read back");
        if revision == 0 {
            revision = resp.header().expect("header").revision();
        }
        for kv in resp.kvs() {
            out.insert(
                String::from_utf8_lossy(kv.key()).into_owned(),
                (kv.value().to_vec(), kv.mod_revision(), kv.lease()),
            );
        }
        match resp.kvs().last() {
            Some(kv) if resp.more() => {
                from = kv.key().to_vec();
                from.push(0);
            }
            _ => return out,
        }
    }
    panic!("more than 10,000 pages under {prefix}");
}

/// Keys per page of [`keys_under`].
const PAGE_KEYS: i64 = 10_000;

/// Checks every acknowledged write against the restarted server, from a few whole reads
/// (the keys, the instance keys, the config history keys, the leases): the layout of
/// instances and configs is the documented one (ARCHITECTURE.md). Returns the problems.
async fn check_ledger(c: &mut Client, ledger: &[Ack]) -> Vec<String> {
    let keys = keys_under(c, "cl/").await;
    let instances = keys_under(c, "/services/crash-").await;
    let history = keys_under(c, "/config-history/crash/DEFAULT_GROUP/").await;
    let leases: BTreeSet<i64> = c
        .leases()
        .await
        .expect("lease list")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    let deleted: BTreeSet<&str> = ledger
        .iter()
        .filter_map(|a| match a {
            Ack::Delete { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let maybe_deleted: BTreeSet<&str> = ledger
        .iter()
        .filter_map(|a| match a {
            Ack::MaybeDelete { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    let mut problems = Vec::new();
    for a in ledger {
        match a {
            Ack::Put {
                key,
                value,
                rev,
                lease,
            } => {
                let k = key.as_str();
                match keys.get(k) {
                    None if deleted.contains(k) || maybe_deleted.contains(k) => {}
                    Some((v, r, l))
                        if !deleted.contains(k)
                            && v == value.as_bytes()
                            && r == rev
                            && l == lease => {}
                    found => problems.push(format!(
                        "put {key}={value} at {rev} (lease {lease:x}): found {found:?}"
                    )),
                }
            }
            Ack::Txn { keys: pair, rev } => {
                for k in pair {
                    if keys.get(k.as_str()).map(|e| e.1) != Some(*rev) {
                        problems.push(format!("txn put {k} at {rev}: not there"));
                    }
                }
            }
            Ack::Lease { id } => {
                if !leases.contains(id) {
                    problems.push(format!("lease {id:x}: gone"));
                }
            }
            Ack::MaybeDelete { .. } => {}
            Ack::Delete { key, rev } => {
                if keys.contains_key(key.as_str()) {
                    problems.push(format!("delete of {key} at {rev}: the key is back"));
                }
            }
            Ack::Register { service, id, rev } => {
                let key = format!("/services/{service}/{id}");
                if instances.get(&key).map(|e| e.1) != Some(*rev) {
                    problems.push(format!("registration {key} at {rev}: not there"));
                }
            }
            Ack::Config {
                data_id,
                version,
                rev,
            } => {
                let key = format!("/config-history/crash/DEFAULT_GROUP/{data_id}/{version:020}");
                if history.get(&key).map(|e| e.1) != Some(*rev) {
                    problems.push(format!(
                        "config {data_id} version {version} at {rev}: not in history"
                    ));
                }
            }
        }
    }
    problems
}

/// Every event from revision 1 to `upto`, grouped by revision.
async fn history(c: &mut Client, upto: i64) -> BTreeMap<i64, Vec<etcd_client::Event>> {
    let mut stream = c
        .watch(
            "",
            Some(WatchOptions::new().with_all_keys().with_start_revision(1)),
        )
        .await
        .expect("watch");
    let mut out: BTreeMap<i64, Vec<etcd_client::Event>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = 0;
    while seen < upto {
        assert!(Instant::now() < deadline, "history not read within 120 s");
        let Ok(Some(resp)) = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("history in time")
        else {
            panic!("watch ended before revision {upto}");
        };
        for ev in resp.events() {
            let rev = ev.kv().map_or(0, |kv| kv.mod_revision());
            if rev > upto {
                continue;
            }
            seen = seen.max(rev);
            out.entry(rev).or_default().push(ev.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mast_keeps_every_acknowledged_write_across_kill_9_loops() {
    let trials = trials();
    // Every config version published stays in the history to be checked: the data ids come
    // back in every trial, and the default retention (100 versions) would prune the early
    // ones by design.
    let options =
        mast_conformance::ServerOptions::default().env("MAST_CONFIG_HISTORY_RETENTION", "1000000");
    let mut server =
        tokio::task::spawn_blocking(|| Server::try_start_with(ServerKind::Mast, options))
            .await
            .expect("start task")
            .unwrap_or_else(|e| panic!("could not start mast: {e:#}"));
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client");
    let mut ledger: Vec<Ack> = Vec::new();
    let mut restart_ms = Vec::new();
    let run_started = Instant::now();
    for trial in 0..trials {
        let base = server.endpoint();
        let client = connect(&base).await;
        // Vary how long the load runs before the kill: 150 ms to 1.35 s.
        let load_for = Duration::from_millis(150 + (trial as u64 * 397) % 1200);
        let deadline = Instant::now() + load_for + Duration::from_secs(1);
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                tokio::spawn(load(
                    client.clone(),
                    http.clone(),
                    base.clone(),
                    trial,
                    task,
                    deadline,
                ))
            })
            .collect();
        tokio::time::sleep(load_for).await;
        server.kill9();
        let mut this = Vec::new();
        for t in tasks {
            this.extend(t.await.expect("load task"));
        }
        assert!(
            !this.is_empty(),
            "trial {trial}: nothing acknowledged before the kill"
        );
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &this {
            *by_kind.entry(a.kind()).or_default() += 1;
        }
        ledger.extend(this);

        let t0 = Instant::now();
        server = tokio::task::spawn_blocking(move || {
            server
                .restart()
                .unwrap_or_else(|e| panic!("restarting mast after kill -9: {e:#}"));
            server
        })
        .await
        .expect("restart task");
        restart_ms.push(t0.elapsed().as_millis() as u64);
        let mut c = connect(&server.endpoint()).await;
        let problems = check_ledger(&mut c, &ledger).await;
        assert!(
            problems.is_empty(),
            "trial {trial}: {} acknowledged writes lost or changed:\n  {}",
            problems.len(),
            problems
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
        let current = c
            .get(
                "cl/",
                Some(GetOptions::new().with_count_only().with_prefix()),
            )
            .await
            .expect("revision")
            .header()
            .map_or(0, |h| h.revision());
        eprintln!(
            "CRASH-LOOP trial={trial} load_ms={} acked={by_kind:?} ledger={} revision={current} restart_ms={}",
            load_for.as_millis(),
            ledger.len(),
            restart_ms.last().copied().unwrap_or(0)
        );
    }

    // The whole history: an event at every revision, and replayed it gives the same HashKV.
    let mut c = connect(&server.endpoint()).await;
    let current = c
        .get(
            "cl/",
            Some(GetOptions::new().with_count_only().with_prefix()),
        )
        .await
        .expect("revision")
        .header()
        .map_or(0, |h| h.revision());
    let hash = c.hash_kv(current).await.expect("hash_kv").hash();
    let events = history(&mut c, current).await;
    let missing: Vec<i64> = (2..=current).filter(|r| !events.contains_key(r)).collect();
    assert!(
        missing.is_empty(),
        "revisions without an event: {missing:?}"
    );

    let replica = tokio::task::spawn_blocking(|| Server::try_start(ServerKind::Mast))
        .await
        .expect("start task")
        .expect("replay server");
    let mut r = connect(&replica.endpoint()).await;
    let leases: BTreeSet<i64> = events
        .values()
        .flatten()
        .filter_map(|e| e.kv().map(|kv| kv.lease()))
        .filter(|l| *l != 0)
        .collect();
    for id in &leases {
        r.lease_grant(
            TTL,
            Some(etcd_client::LeaseGrantOptions::new().with_id(*id)),
        )
        .await
        .expect("replay lease");
    }
    for (rev, evs) in &events {
        let ops: Vec<TxnOp> = evs
            .iter()
            .map(|e| {
                let kv = e.kv().expect("event kv");
                match e.event_type() {
                    EventType::Put => TxnOp::put(
                        kv.key(),
                        kv.value(),
                        (kv.lease() != 0).then(|| PutOptions::new().with_lease(kv.lease())),
                    ),
                    EventType::Delete => TxnOp::delete(kv.key(), None),
                }
            })
            .collect();
        let resp = r.txn(Txn::new().and_then(ops)).await.expect("replay txn");
        assert_eq!(
            resp.header().map(|h| h.revision()),
            Some(*rev),
            "replay of revision {rev} landed elsewhere"
        );
    }
    let replayed = r.hash_kv(current).await.expect("replay hash_kv").hash();
    assert_eq!(
        replayed, hash,
        "HashKV at {current}: the store's rows differ from a replay of its history"
    );
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &ledger {
        *by_kind.entry(a.kind()).or_default() += 1;
    }
    restart_ms.sort_unstable();
    eprintln!(
        "CRASH-LOOP summary trials={trials} acked={by_kind:?} revision={current} leases={} restart_ms_median={} restart_ms_max={} hashkv={hash:08x} replayed={replayed:08x} seconds={:.0}",
        leases.len(),
        restart_ms[restart_ms.len() / 2],
        restart_ms.last().copied().unwrap_or(0),
        run_started.elapsed().as_secs_f64()
    );
}
