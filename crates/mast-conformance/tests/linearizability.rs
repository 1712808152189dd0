//! Linearizability of a Mast cluster, checked with porcupine (porcupine-rs): concurrent
//! clients put, get (linearizable), compare-and-set (Txn) and delete a few keys through every
//! member while members are killed with `kill -9` and restarted; the recorded history must have
//! a sequential explanation that respects real time. An operation whose outcome is unknown (an
//! error or a timeout: it may or may not have happened) is kept with an infinite return time,
//! as porcupine's users do, so it may take effect at any later point or never.
//!
//! Also checked, on every member: watch events arrive in revision order, with no gap and no
//! duplicate, and the same on all members.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, Txn, TxnOp, WatchOptions,
};
use mast_conformance::ServerKind;
use mast_conformance::cluster::Cluster;
use porcupine_rs::{CheckResult, Model, Operation};

/// Keys the clients fight over.
const KEYS: [&str; 3] = ["lin/a", "lin/b", "lin/c"];
const CLIENTS: usize = 5;
const RUN: Duration = Duration::from_secs(8);
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// One operation on one key, with what the client saw.
#[derive(Clone, Debug)]
enum KvOp {
    /// Put `v`.
    Put(u32),
    /// Get, which saw `Some(v)` or nothing.
    Get(Option<u32>),
    /// If the value is `expected`, put `new`; `Some(true/false)`: whether it did; `None`:
    /// unknown.
    Cas(Option<u32>, u32, Option<bool>),
    /// Delete.
    Delete,
}

/// A key's value as a sequential register (0: absent).
#[derive(Clone, Debug)]
struct Register;

impl Model for Register {
    type State = Option<u32>;
    type Op = (usize, KvOp);
    type Metadata = ();

    fn partition_operations(history: &[Operation<Self>]) -> Vec<Vec<Operation<Self>>> {
        let mut by_key: BTreeMap<usize, Vec<Operation<Self>>> = BTreeMap::new();
        for op in history {
            by_key.entry(op.op.0).or_default().push(op.clone());
        }
        by_key.into_values().collect()
    }

    fn init() -> Option<u32> {
        None
    }

    fn step(state: &Option<u32>, op: &(usize, KvOp)) -> (bool, Option<u32>) {
        match &op.1 {
            KvOp::Put(v) => (true, Some(*v)),
            KvOp::Get(v) => (v == state, *state),
            KvOp::Delete => (true, None),
            KvOp::Cas(expected, new, result) => {
                let matches = expected == state;
                match result {
                    Some(true) => (matches, Some(*new)),
                    Some(false) => (!matches, *state),
                    // Unknown: it did whatever the state made it do.
                    None => (true, if matches { Some(*new) } else { *state }),
                }
            }
        }
    }
}

fn value_of(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

async fn connect(endpoint: &str) -> Option<Client> {
    let o = ConnectOptions::new()
        .with_timeout(OP_TIMEOUT)
        .with_connect_timeout(Duration::from_millis(500));
    Client::connect([endpoint.to_string()], Some(o)).await.ok()
}

/// A small deterministic generator (xorshift), so a failing run can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_kills_are_linearizable_and_watches_agree() {
    let mut c = tokio::task::spawn_blocking(|| {
        Cluster::start(ServerKind::Mast, 3).unwrap_or_else(|e| panic!("cluster: {e:#}"))
    })
    .await
    .unwrap();
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let origin = Instant::now();
    let micros = move || origin.elapsed().as_micros() as i64;
    let history: Arc<Mutex<Vec<Operation<Register>>>> = Arc::new(Mutex::new(Vec::new()));

    // A watcher on every member, recording (revision, key, value) of every event.
    let mut watchers = Vec::new();
    for ep in &endpoints {
        let mut cl = connect(ep).await.expect("connect a watcher");
        let mut stream = cl
            .watch("lin/", Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        watchers.push(tokio::spawn(async move {
            let mut seen: Vec<(i64, String, EventType)> = Vec::new();
            let deadline = Instant::now() + RUN + Duration::from_secs(20);
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                    Ok(Ok(Some(resp))) => {
                        for ev in resp.events() {
                            if let Some(kv) = ev.kv() {
                                seen.push((
                                    kv.mod_revision(),
                                    kv.key_str().unwrap_or("").to_string(),
                                    ev.event_type(),
                                ));
                            }
                        }
                    }
                    // The stream ended: its member was killed; what it saw stands.
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                    Err(_) => {}
                }
            }
            seen
        }));
    }

    let stop = Instant::now() + RUN;
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let endpoints = endpoints.clone();
        let history = history.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1));
            let mut at = id % endpoints.len();
            let mut cl = connect(&endpoints[at]).await;
            let mut n = 0u32;
            while Instant::now() < stop {
                let Some(client) = cl.as_mut() else {
                    at = (at + 1) % endpoints.len();
                    cl = connect(&endpoints[at]).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let key = rng.below(KEYS.len() as u64) as usize;
                let k = KEYS[key];
                n += 1;
                let v = (id as u32) * 1_000_000 + n;
                let call = micros();
                let (op, ok) = match rng.below(10) {
                    0..=3 => {
                        let r = client.put(k, v.to_string(), None).await;
                        (KvOp::Put(v), r.is_ok())
                    }
                    4..=6 => match client.get(k, None).await {
                        Ok(r) => (
                            KvOp::Get(r.kvs().first().and_then(|kv| value_of(kv.value()))),
                            true,
                        ),
                        // A failed read changed nothing: leave it out.
                        Err(_) => {
                            at = (at + 1) % endpoints.len();
                            cl = connect(&endpoints[at]).await;
                            continue;
                        }
                    },
                    7..=8 => {
                        // Compare with a value this client may have seen: any of the last few.
                        let expected = if rng.below(4) == 0 {
                            None
                        } else {
                            Some(
                                (rng.below(CLIENTS as u64) as u32) * 1_000_000
                                    + (n.saturating_sub(rng.below(3) as u32)),
                            )
                        };
                        let cmp = match expected {
                            Some(e) => Compare::value(k, CompareOp::Equal, e.to_string()),
                            None => Compare::create_revision(k, CompareOp::Equal, 0),
                        };
                        let txn =
                            Txn::new()
                                .when([cmp])
                                .and_then([TxnOp::put(k, v.to_string(), None)]);
                        match client.txn(txn).await {
                            Ok(r) => (KvOp::Cas(expected, v, Some(r.succeeded())), true),
                            Err(_) => (KvOp::Cas(expected, v, None), false),
                        }
                    }
                    _ => {
                        let r = client.delete(k, None).await;
                        (KvOp::Delete, r.is_ok())
                    }
                };
                let ret = if ok { micros() } else { i64::MAX };
                history.lock().unwrap().push(Operation {
                    client_id: Some(id as u32),
                    call_time: call,
                    return_time: ret,
                    op: (key, op),
                    metadata: None,
                });
                if !ok {
                    // An unknown outcome ends this client's turn with that connection; the
                    // next operation is a new "client" as far as ordering goes.
                    at = (at + 1) % endpoints.len();
                    cl = connect(&endpoints[at]).await;
                }
            }
        }));
    }

    // Faults: kill -9 a member (the leader first), restart it, then another.
    let c = tokio::task::spawn_blocking(move || {
        for round in 0..2 {
            std::thread::sleep(Duration::from_millis(2000));
            let victim = if round == 0 {
                c.wait_leader(Duration::from_secs(5)).unwrap_or(0)
            } else {
                (c.wait_leader(Duration::from_secs(5)).unwrap_or(0) + 1) % c.members.len()
            };
            c.members[victim].kill9();
            std::thread::sleep(Duration::from_millis(1500));
            c.members[victim].restart().expect("restart");
        }
        c
    })
    .await
    .unwrap();
    for t in clients {
        t.await.unwrap();
    }
    let history = std::mem::take(&mut *history.lock().unwrap());
    let total = history.len();
    let unknown = history.iter().filter(|o| o.return_time == i64::MAX).count();
    eprintln!("history: {total} operations, {unknown} with unknown outcome");
    assert!(total > 200, "too few operations: {total}");
    let result = tokio::task::spawn_blocking(move || {
        porcupine_rs::check_operations_timeout(&history, Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert!(
        result == CheckResult::Ok,
        "the history is not linearizable ({result:?})"
    );

    // Watches: in revision order, no duplicate, and the same events wherever both saw them.
    let mut per_member = Vec::new();
    for w in watchers {
        per_member.push(w.await.unwrap());
    }
    let mut merged: BTreeMap<i64, Vec<(String, EventType)>> = BTreeMap::new();
    for (m, seen) in per_member.iter().enumerate() {
        assert!(
            seen.windows(2).all(|p| p[0].0 <= p[1].0),
            "m{m}: events out of revision order"
        );
        let mut keys: Vec<(i64, &str)> = seen.iter().map(|e| (e.0, e.1.as_str())).collect();
        let before = keys.len();
        keys.dedup();
        assert_eq!(before, keys.len(), "m{m}: an event delivered twice");
        let mut by_rev: BTreeMap<i64, Vec<(String, EventType)>> = BTreeMap::new();
        for (rev, k, t) in seen {
            by_rev.entry(*rev).or_default().push((k.clone(), *t));
        }
        for (rev, evs) in by_rev {
            match merged.get(&rev) {
                Some(other) => assert_eq!(&evs, other, "members disagree at revision {rev}"),
                None => {
                    merged.insert(rev, evs);
                }
            }
        }
    }
    // A member that was never killed saw a gapless stream: every revision from its first to
    // its last event that changed a watched key is there (other keys never change here).
    let longest = per_member.iter().max_by_key(|s| s.len()).unwrap();
    let revs: Vec<i64> = longest.iter().map(|e| e.0).collect();
    let mut distinct = revs.clone();
    distinct.dedup();
    assert!(
        distinct.windows(2).all(|w| w[1] == w[0] + 1),
        "gap in the watch stream of the member that saw most"
    );
    drop(c);
}

/// The checker and the model do catch a stale read: a get that returns the old value after a
/// put completed is refused, and the same get overlapping the put is accepted.
#[test]
fn the_model_refuses_a_stale_read() {
    let op = |call, ret, op| Operation::<Register> {
        client_id: Some(0),
        call_time: call,
        return_time: ret,
        op: (0, op),
        metadata: None,
    };
    let stale = vec![op(0, 10, KvOp::Put(1)), op(20, 30, KvOp::Get(None))];
    assert_eq!(
        porcupine_rs::check_operations_timeout(&stale, Duration::from_secs(5)),
        CheckResult::Illegal
    );
    let overlapping = vec![op(0, 25, KvOp::Put(1)), op(20, 30, KvOp::Get(None))];
    assert_eq!(
        porcupine_rs::check_operations_timeout(&overlapping, Duration::from_secs(5)),
        CheckResult::Ok
    );
    let unknown_cas = vec![
        op(0, 10, KvOp::Put(1)),
        op(11, i64::MAX, KvOp::Cas(Some(1), 2, None)),
        op(20, 30, KvOp::Get(Some(2))),
    ];
    assert_eq!(
        porcupine_rs::check_operations_timeout(&unknown_cas, Duration::from_secs(5)),
        CheckResult::Ok
    );
}
