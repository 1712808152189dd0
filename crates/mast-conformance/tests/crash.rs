//! Crash test: `kill -9` Mast in the middle of a concurrent put load, restart it on the same data
//! directory, and check that nothing it acknowledged was lost.
//!
//! Invariants checked after every restart:
//! - **Acknowledged puts are durable**: every put that returned OK is present with its value and
//!   exactly the `mod_revision` its response header reported.
//! - **Recovery is a prefix of history**: the workload only puts fresh keys, one revision each,
//!   so the keys present carry exactly the revisions `2..=current`, each once, with the value the
//!   workload sent. (A put that was not acknowledged may or may not be there; if it is, it is
//!   whole.)
//!
//! The same test runs against etcd too, proving the test itself (etcd fsyncs its WAL before it
//! answers). Everything is bounded: 3 rounds, 8 tasks, at most 2,000 puts per task and round,
//! the kill after at most 1.2 s, each put at most 2 s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use mast_conformance::{Server, ServerKind};

const ROUNDS: usize = 3;
const TASKS: usize = 8;
const PUTS_PER_TASK: usize = 2_000;
/// Upper bound on one round's load, should the kill not stop it.
const LOAD_TIME: Duration = Duration::from_secs(5);
const PUT_TIMEOUT: Duration = Duration::from_secs(2);

/// One acknowledged put.
#[derive(Clone, Debug)]
struct Ack {
    value: String,
    revision: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mast_keeps_acknowledged_puts_across_kill_9() {
    crash_rounds(ServerKind::Mast).await;
}

/// The reference run: etcd must pass the same test, or the test is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_keeps_acknowledged_puts_across_kill_9() {
    crash_rounds(ServerKind::Etcd).await;
}

async fn connect(server: &Server) -> Client {
    let options = ConnectOptions::new()
        .with_timeout(PUT_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(5));
    Client::connect([server.endpoint()], Some(options))
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", server.endpoint()))
}

/// The value the workload writes under `key`, so a recovered unacknowledged put can be checked.
fn value_for(key: &str) -> String {
    format!("value-of-{key}")
}

async fn crash_rounds(kind: ServerKind) {
    let mut server = tokio::task::spawn_blocking(move || Server::try_start(kind))
        .await
        .expect("start task")
        .unwrap_or_else(|e| panic!("could not start {kind}: {e:#}"));
    let mut acked: BTreeMap<String, Ack> = BTreeMap::new();
    for round in 0..ROUNDS {
        let client = connect(&server).await;
        let deadline = Instant::now() + LOAD_TIME;
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..PUTS_PER_TASK {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let key = format!("crash/r{round}/t{task}/{i:05}");
                    let value = value_for(&key);
                    match tokio::time::timeout(
                        PUT_TIMEOUT,
                        client.put(key.clone(), value.clone(), None),
                    )
                    .await
                    {
                        Ok(Ok(resp)) => {
                            let revision = resp.header().map_or(0, |h| h.revision());
                            acks.push((key, Ack { value, revision }));
                        }
                        // The server is gone (or hung): this put may or may not have landed.
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
                acks
            }));
        }
        // Vary the moment of the kill between rounds.
        tokio::time::sleep(Duration::from_millis(400 + 400 * round as u64)).await;
        server.kill9();
        let mut round_acks = 0;
        for t in tasks {
            for (key, ack) in t.await.expect("load task") {
                assert!(
                    ack.revision > 1,
                    "acknowledged put of {key} reported revision {}",
                    ack.revision
                );
                acked.insert(key, ack);
                round_acks += 1;
            }
        }
        assert!(
            round_acks > 0,
            "round {round}: no put was acknowledged before the kill; is {kind} that slow?"
        );
        // Each acknowledged put got its own revision.
        let mut seen = BTreeMap::new();
        for (key, ack) in &acked {
            if let Some(other) = seen.insert(ack.revision, key) {
                panic!(
                    "{kind}: puts of {other} and {key} were both acknowledged at revision {}",
                    ack.revision
                );
            }
        }

        server = tokio::task::spawn_blocking(move || {
            server
                .restart()
                .unwrap_or_else(|e| panic!("restarting {kind} after kill -9: {e:#}"));
            server
        })
        .await
        .expect("restart task");
        verify(kind, round, &connect(&server).await, &acked).await;
        eprintln!(
            "{kind} round {round}: {round_acks} puts acknowledged before kill -9, all {} acknowledged so far intact",
            acked.len()
        );
    }
}

/// Checks both invariants of the module doc against the restarted server.
async fn verify(kind: ServerKind, round: usize, client: &Client, acked: &BTreeMap<String, Ack>) {
    let mut client = client.clone();
    let resp = client
        .get("crash/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap_or_else(|e| {
            panic!("{kind} round {round}: reading back after restart: {e}");
        });
    let current = resp.header().map_or(0, |h| h.revision());
    let present: BTreeMap<String, (String, i64)> = resp
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            (
                key,
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.mod_revision(),
                ),
            )
        })
        .collect();

    let mut lost = Vec::new();
    for (key, ack) in acked {
        match present.get(key) {
            Some((value, rev)) if *value == ack.value && *rev == ack.revision => {}
            Some((value, rev)) => lost.push(format!(
                "{key}: acknowledged {:?} at revision {}, found {value:?} at revision {rev}",
                ack.value, ack.revision
            )),
            None => lost.push(format!(
                "{key}: acknowledged at revision {}, missing",
                ack.revision
            )),
        }
    }
    assert!(
        lost.is_empty(),
        "{kind} round {round}: {} of {} acknowledged puts lost or changed after kill -9 and restart:\n  {}",
        lost.len(),
        acked.len(),
        lost.iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );

    let mut revisions: Vec<i64> = Vec::with_capacity(present.len());
    for (key, (value, rev)) in &present {
        assert_eq!(
            *value,
            value_for(key),
            "{kind} round {round}: {key} holds a value the workload never wrote"
        );
        revisions.push(*rev);
    }
    revisions.sort_unstable();
    let expected: Vec<i64> = (2..=current).collect();
    if revisions != expected {
        let have: std::collections::BTreeSet<i64> = revisions.iter().copied().collect();
        let missing: Vec<i64> = expected
            .iter()
            .copied()
            .filter(|r| !have.contains(r))
            .take(20)
            .collect();
        panic!(
            "{kind} round {round}: the recovered store is not a prefix of history: current revision {current}, \
             {} keys; revisions without a key (first 20): {missing:?}",
            revisions.len()
        );
    }
}
