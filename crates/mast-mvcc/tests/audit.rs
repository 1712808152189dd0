//! The audit log: attributed changes of audited keys and auth are recorded with who, before
//! and after; nothing else is; the chain survives a reopen and a snapshot, and an altered,
//! removed or inserted entry is found.

use bytes::Bytes;
use mast_mvcc::{AuditAction, AuditBreak, AuthCommand, Command, LoggedStore, Origin, StoreOptions};
use mast_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op};
use redb::{ReadableDatabase, ReadableTable};

fn open(dir: &std::path::Path, retention: u64) -> LoggedStore {
    let opts = StoreOptions {
        audit_retention: retention,
        ..Default::default()
    };
    LoggedStore::open(dir, opts, Default::default()).unwrap()
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    }
}

fn by(user: &str, cmd: Command) -> Command {
    Command::Attributed {
        origin: Origin {
            user: user.into(),
            addr: "127.0.0.1:40000".into(),
            api: "etcd".into(),
            time_ms: 1_800_000_000_000,
        },
        cmd: Box::new(cmd),
    }
}

fn apply(store: &LoggedStore, cmd: Command) {
    store.apply(&[cmd]).unwrap().results.remove(0).unwrap();
}

#[test]
fn attributed_changes_are_recorded_and_chained() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1000);
    let cfg = "/configs/public/DEFAULT_GROUP/app.json";
    apply(&store, by("alice", Command::Put(put(cfg, "{\"v\":1}"))));
    apply(&store, by("bob", Command::Put(put(cfg, "{\"v\":2}"))));
    // Not audited: an unattributed change, and a key outside the audited spaces.
    apply(&store, Command::Put(put(cfg, "{\"v\":3}")));
    apply(&store, by("alice", Command::Put(put("/app/x", "1"))));
    // A txn touching two audited keys and one other: two entries, one revision.
    apply(
        &store,
        by(
            "carol",
            Command::Txn(TxnRequest {
                success: vec![
                    RequestOp {
                        request: Some(request_op::Request::RequestPut(put(
                            "/services/pay/i1",
                            "{\"host\":\"h\",\"port\":1}",
                        ))),
                    },
                    RequestOp {
                        request: Some(request_op::Request::RequestPut(put("/other", "x"))),
                    },
                    RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: Bytes::copy_from_slice(cfg.as_bytes()),
                                ..Default::default()
                            },
                        )),
                    },
                ],
                ..Default::default()
            }),
        ),
    );
    // Auth: recorded without the password hash; a refused command records nothing.
    apply(
        &store,
        by(
            "root",
            Command::Auth(AuthCommand::UserAdd {
                name: "dave".into(),
                password_hash: "$2b$10$secret".into(),
                no_password: false,
            }),
        ),
    );
    let refused = store
        .apply(&[by(
            "root",
            Command::Auth(AuthCommand::UserDelete {
                name: "nobody".into(),
            }),
        )])
        .unwrap();
    assert!(refused.results[0].is_err());

    let entries = store.store().audit_entries(0, 100).unwrap();
    let summary: Vec<(u64, &str, AuditAction, String)> = entries
        .iter()
        .map(|e| {
            (
                e.seq,
                e.origin.user.as_str(),
                e.action,
                String::from_utf8_lossy(&e.key).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "alice", AuditAction::Put, cfg.to_string()),
            (2, "bob", AuditAction::Put, cfg.to_string()),
            (3, "carol", AuditAction::Put, "/services/pay/i1".to_string()),
            (4, "carol", AuditAction::Delete, cfg.to_string()),
            (5, "root", AuditAction::Auth, String::new()),
        ]
    );
    assert_eq!(entries[0].before, None);
    assert_eq!(entries[1].before.as_deref(), Some(&b"{\"v\":1}"[..]));
    assert_eq!(entries[1].after.as_deref(), Some(&b"{\"v\":2}"[..]));
    // The delete's "before" is the unattributed put's value: the store's truth, not the log's.
    assert_eq!(entries[3].before.as_deref(), Some(&b"{\"v\":3}"[..]));
    assert_eq!(entries[3].after, None);
    assert_eq!(entries[2].revision, entries[3].revision);
    assert_eq!(entries[4].detail, "user add dave");
    assert!(entries.iter().all(|e| e.origin.addr == "127.0.0.1:40000"));
    for w in entries.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    let report = store.store().verify_audit().unwrap().unwrap();
    assert_eq!((report.entries, report.first, report.last), (5, 1, 5));
    assert_eq!(report.head, entries[4].hash);
    assert_eq!(store.store().audit_entries(3, 1).unwrap()[0].seq, 4);

    // A reopen and a snapshot keep the chain.
    store.close().unwrap();
    let store = open(dir.path(), 1000);
    assert_eq!(store.store().verify_audit().unwrap().unwrap(), report);
    let snap = tempfile::tempdir().unwrap();
    store
        .store()
        .snapshot_to(&snap.path().join("mast.redb"))
        .unwrap();
    let copy = open(snap.path(), 1000);
    assert_eq!(copy.store().verify_audit().unwrap().unwrap(), report);
}

#[test]
fn retention_keeps_the_newest_and_the_chain_verifies_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 3);
    for i in 0..7 {
        apply(
            &store,
            by("u", Command::Put(put("/namespaces/dev", &i.to_string()))),
        );
    }
    let seqs: Vec<u64> = store
        .store()
        .audit_entries(0, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [5, 6, 7]);
    let report = store.store().verify_audit().unwrap().unwrap();
    assert_eq!((report.first, report.last), (5, 7));
}

/// Rewrites the audit row `seq` of the closed store in `dir` with `f`.
fn tamper(dir: &std::path::Path, f: impl FnOnce(&mut redb::Table<'_, u64, &'static [u8]>)) {
    let db = redb::Database::open(dir.join("mast.redb")).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w
            .open_table(redb::TableDefinition::<u64, &[u8]>::new("audit"))
            .unwrap();
        f(&mut t);
    }
    w.commit().unwrap();
}

#[test]
fn altered_removed_and_inserted_entries_are_found() {
    let make = |dir: &std::path::Path| {
        let store = open(dir, 1000);
        for user in ["a", "b", "c", "d"] {
            apply(
                &store,
                by(user, Command::Put(put("/service-meta/pay", user))),
            );
        }
        store.close().unwrap();
    };

    // One byte of entry 2's value changed (its stored hash left as it was).
    let dir = tempfile::tempdir().unwrap();
    make(dir.path());
    tamper(dir.path(), |t| {
        let mut row = t.get(2).unwrap().unwrap().value().to_vec();
        // The row ends with the value "b", an empty detail (4 bytes) and the previous hash
        // (32): flip the value's byte.
        let value = row.len() - 37;
        assert_eq!(row[value], b'b');
        row[value] ^= 1;
        t.insert(2, row.as_slice()).unwrap();
    });
    let store = open(dir.path(), 1000);
    assert_eq!(
        store.store().verify_audit().unwrap(),
        Err(AuditBreak::Altered { seq: 2 })
    );
    drop(store);

    // Entry 3 removed.
    let dir = tempfile::tempdir().unwrap();
    make(dir.path());
    tamper(dir.path(), |t| {
        t.remove(3).unwrap();
    });
    let store = open(dir.path(), 1000);
    assert_eq!(
        store.store().verify_audit().unwrap(),
        Err(AuditBreak::Unlinked { seq: 4, prev: 2 })
    );
    drop(store);

    // Entry 2 replaced by a well-formed entry with a correct hash of its own (as someone
    // who knows the format would): the next entry no longer follows it.
    let dir = tempfile::tempdir().unwrap();
    make(dir.path());
    let forged = {
        let store = open(dir.path(), 1000);
        let mut e = store.store().audit_entries(1, 1).unwrap().remove(0);
        e.origin.user = "someone-else".into();
        store.close().unwrap();
        e
    };
    // Re-seal the forged entry through a scratch store that has the same chain up to it.
    let scratch = tempfile::tempdir().unwrap();
    {
        let s = open(scratch.path(), 1000);
        apply(&s, by("a", Command::Put(put("/service-meta/pay", "a"))));
        s.apply(&[Command::Attributed {
            origin: forged.origin.clone(),
            cmd: Box::new(Command::Put(put("/service-meta/pay", "b"))),
        }])
        .unwrap();
        s.close().unwrap();
    }
    let forged_row = {
        let db = redb::Database::open(scratch.path().join("mast.redb")).unwrap();
        let r = db.begin_read().unwrap();
        let t = r
            .open_table(redb::TableDefinition::<u64, &[u8]>::new("audit"))
            .unwrap();
        t.get(2).unwrap().unwrap().value().to_vec()
    };
    tamper(dir.path(), |t| {
        t.insert(2, forged_row.as_slice()).unwrap();
    });
    let store = open(dir.path(), 1000);
    let entries = store.store().audit_entries(1, 1).unwrap();
    assert_eq!(entries[0].origin.user, "someone-else");
    assert!(
        entries[0].hash_holds(),
        "the forged entry is consistent in itself"
    );
    assert_eq!(
        store.store().verify_audit().unwrap(),
        Err(AuditBreak::Unlinked { seq: 3, prev: 2 })
    );
}
