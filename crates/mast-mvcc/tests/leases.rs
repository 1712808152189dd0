//! Leases survive a crash, a reopen and a snapshot whether or not a checkpoint wrote their rows.
//!
//! Lease rows reach redb's lease table only at a checkpoint; between checkpoints the
//! write-ahead log is what brings them back. These tests grant, attach and revoke leases, then
//! open a copy of the live files (what a killed process leaves), reopen after a clean close,
//! and open a snapshot, and compare the lease table each time with what was acknowledged.

use std::collections::BTreeMap;
use std::path::Path;

use mast_mvcc::{Command, LogOptions, LoggedStore, Store};
use mast_proto::etcdserverpb::PutRequest;

/// Lease ID -> (TTL, attached keys), as the store reports it.
type Leases = BTreeMap<i64, (i64, Vec<Vec<u8>>)>;

fn leases_of(store: &Store) -> Leases {
    store
        .leases()
        .iter()
        .map(|(id, rec)| (id, (rec.ttl, rec.keys.iter().cloned().collect())))
        .collect()
}

fn grant_put(id: i64, ttl: i64, key: &str) -> Command {
    Command::LeaseGrantPut {
        id,
        ttl,
        put: PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            lease: id,
            ..Default::default()
        },
    }
}

/// Copies the live files into a new directory, as a crash would leave them.
fn crash_copy(from: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for f in ["mast.redb", "wal.log"] {
        std::fs::copy(from.join(f), copy.path().join(f)).unwrap();
    }
    copy
}

/// Grants `n` leases (half with a key), revokes every third, and returns the store's view.
fn load(store: &LoggedStore, n: i64) -> Leases {
    for i in 1..=n {
        // Spread IDs the way random lease IDs are, so rows land all over the table.
        let id = (i * 7_919_111) % 1_000_003 + 1;
        let cmd = if i % 2 == 0 {
            grant_put(id, 30 + i, &format!("/services/s/i{i}"))
        } else {
            Command::LeaseGrant { id, ttl: 30 + i }
        };
        let applied = store.apply(&[cmd]).unwrap();
        assert!(
            applied.results[0].is_ok(),
            "grant {id}: {:?}",
            applied.results
        );
        if i % 3 == 0 {
            let applied = store.apply(&[Command::LeaseRevoke { id }]).unwrap();
            assert!(applied.results[0].is_ok(), "revoke {id}");
        }
    }
    leases_of(store.store())
}

#[test]
fn leases_come_back_from_the_log_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // Large checkpoint interval: no checkpoint happens, every row is only in the log.
    let store = LoggedStore::open(dir.path(), Default::default(), LogOptions::default()).unwrap();
    let want = load(&store, 200);
    assert_eq!(want.len(), 200 - 200 / 3);
    assert_eq!(store.store().status().unwrap().checkpoints, 0);
    let copy = crash_copy(dir.path());
    let reopened =
        LoggedStore::open(copy.path(), Default::default(), LogOptions::default()).unwrap();
    assert_eq!(leases_of(reopened.store()), want);
    // The replay ended in a checkpoint: a second crash finds the rows in redb itself.
    let copy2 = crash_copy(copy.path());
    drop(reopened);
    let again = LoggedStore::open(copy2.path(), Default::default(), LogOptions::default()).unwrap();
    assert_eq!(leases_of(again.store()), want);
}

#[test]
fn leases_survive_checkpoints_crashes_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        wal_bytes: mast_mvcc::log::MIN_WAL_BYTES,
        checkpoint_bytes: 2 * 1024,
    };
    let store = LoggedStore::open(dir.path(), Default::default(), opts).unwrap();
    let want = load(&store, 300);
    assert!(
        store.store().status().unwrap().checkpoints > 2,
        "the small interval makes checkpoints happen between grants"
    );
    let copy = crash_copy(dir.path());
    let crashed = LoggedStore::open(copy.path(), Default::default(), opts).unwrap();
    assert_eq!(leases_of(crashed.store()), want);
    drop(crashed);

    store.close().unwrap();
    drop(store);
    let reopened = LoggedStore::open(dir.path(), Default::default(), opts).unwrap();
    assert_eq!(leases_of(reopened.store()), want);
}

#[test]
fn a_snapshot_holds_leases_not_yet_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let store = LoggedStore::open(dir.path(), Default::default(), LogOptions::default()).unwrap();
    let want = load(&store, 50);
    let snap_dir = tempfile::tempdir().unwrap();
    store
        .store()
        .snapshot_to(&snap_dir.path().join("mast.redb"))
        .unwrap();
    let restored =
        LoggedStore::open(snap_dir.path(), Default::default(), LogOptions::default()).unwrap();
    assert_eq!(leases_of(restored.store()), want);
}

#[test]
fn leases_written_between_checkpoints_come_back_after_a_crash() {
    // More grants than wait in memory (4096): a non-durable batch writes them into the table
    // before any checkpoint, and a crash must still leave every acknowledged lease and no
    // revoked one.
    let dir = tempfile::tempdir().unwrap();
    let store = LoggedStore::open(dir.path(), Default::default(), LogOptions::default()).unwrap();
    let ids: Vec<i64> = (1..=6000i64)
        .map(|i| (i * 7_919_111) % 1_000_003 + 1)
        .collect();
    for chunk in ids.chunks(200) {
        let cmds: Vec<Command> = chunk
            .iter()
            .map(|&id| Command::LeaseGrant { id, ttl: 60 })
            .collect();
        let applied = store.apply(&cmds).unwrap();
        assert!(applied.results.iter().all(|r| r.is_ok()));
    }
    let revoked: Vec<Command> = ids
        .iter()
        .step_by(5)
        .map(|&id| Command::LeaseRevoke { id })
        .collect();
    for chunk in revoked.chunks(200) {
        let applied = store.apply(chunk).unwrap();
        assert!(applied.results.iter().all(|r| r.is_ok()));
    }
    assert_eq!(store.store().status().unwrap().checkpoints, 0);
    let want = leases_of(store.store());
    assert_eq!(want.len(), 6000 - 1200);
    let copy = crash_copy(dir.path());
    // A clean close checkpoints and empties the log: the rows written early must be there.
    store.close().unwrap();
    drop(store);
    let closed = LoggedStore::open(dir.path(), Default::default(), LogOptions::default()).unwrap();
    assert_eq!(leases_of(closed.store()), want);
    let reopened =
        LoggedStore::open(copy.path(), Default::default(), LogOptions::default()).unwrap();
    assert_eq!(leases_of(reopened.store()), want);
    drop(reopened);
    // And once more from the table alone, after the replay's checkpoint.
    let copy2 = crash_copy(copy.path());
    let again = LoggedStore::open(copy2.path(), Default::default(), LogOptions::default()).unwrap();
    assert_eq!(leases_of(again.store()), want);
}

#[test]
fn a_view_sent_in_chunks_replaces_another_store_whole() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = LoggedStore::open(src_dir.path(), Default::default(), LogOptions::default()).unwrap();
    let want = load(&src, 40);
    src.apply(&[Command::Auth(mast_mvcc::AuthCommand::RoleAdd {
        name: "reader".into(),
    })])
    .unwrap();
    let view = src.store().view().unwrap();
    let chunks = view.chunks(512).unwrap();
    assert!(chunks.len() > 3, "small chunks: {}", chunks.len());
    // Writes after the view are not in it.
    src.apply(&[grant_put(9999, 30, "after")]).unwrap();

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = LoggedStore::open(dst_dir.path(), Default::default(), LogOptions::default()).unwrap();
    dst.apply(&[grant_put(1, 30, "to-be-replaced")]).unwrap();
    let scratch = dst_dir.path().join("incoming.redb");
    let mut w = mast_mvcc::snapshot::SnapshotWriter::create(&scratch).unwrap();
    for c in &chunks {
        w.write_chunk(c).unwrap();
    }
    let file = w.finish().unwrap();
    dst.store().replace_with(&file).unwrap();
    assert_eq!(leases_of(dst.store()), want);
    assert_eq!(dst.store().revision(), view.revision());
    assert_eq!(dst.store().last_applied_index(), view.index());
    assert!(dst.store().auth().role("reader").is_some());
    assert_eq!(
        dst.store().hash_kv(view.revision()).unwrap(),
        src.store().hash_kv(view.revision()).unwrap()
    );
}
