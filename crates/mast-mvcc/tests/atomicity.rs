//! A refused command leaves nothing behind: a txn applies whole or not at all, a lease grant
//! with a put that cannot apply grants nothing, and the other commands of the same entry apply
//! as if the refused one had never been there (same revision, same `HashKV`).

use bytes::Bytes;
use mast_mvcc::{Command, CommandResult, LoggedStore, MvccError};
use mast_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op,
};

fn open(dir: &std::path::Path) -> LoggedStore {
    LoggedStore::open(dir, Default::default(), Default::default()).unwrap()
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    }
}

fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

fn get(store: &LoggedStore, k: &str) -> Option<Bytes> {
    store
        .store()
        .range(&RangeRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            ..Default::default()
        })
        .unwrap()
        .kvs
        .pop()
        .map(|kv| kv.value)
}

/// Commands that must each be refused with nothing changed, with the error they get.
fn refused() -> Vec<(Command, MvccError)> {
    vec![
        // Deletes b, then puts b keeping its value: b is gone by then. etcd refuses this shape
        // up front (a key deleted and put in one branch).
        (
            Command::Txn(TxnRequest {
                success: vec![
                    op(request_op::Request::RequestPut(put("x", "1"))),
                    op(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: Bytes::from_static(b"b"),
                            ..Default::default()
                        },
                    )),
                    op(request_op::Request::RequestPut(PutRequest {
                        ignore_value: true,
                        ..put("b", "")
                    })),
                ],
                ..Default::default()
            }),
            MvccError::DuplicateKey,
        ),
        // The second put names a lease that does not exist: the first put must not stay.
        (
            Command::Txn(TxnRequest {
                success: vec![
                    op(request_op::Request::RequestPut(put("x", "2"))),
                    op(request_op::Request::RequestPut(PutRequest {
                        lease: 999,
                        ..put("y", "2")
                    })),
                ],
                ..Default::default()
            }),
            MvccError::LeaseNotFound,
        ),
        // A nested txn's put of a missing key with ignore_value.
        (
            Command::Txn(TxnRequest {
                success: vec![
                    op(request_op::Request::RequestPut(put("x", "3"))),
                    op(request_op::Request::RequestTxn(TxnRequest {
                        success: vec![op(request_op::Request::RequestPut(PutRequest {
                            ignore_value: true,
                            ..put("missing", "")
                        }))],
                        ..Default::default()
                    })),
                ],
                ..Default::default()
            }),
            MvccError::KeyNotFound,
        ),
        // A new lease whose put cannot apply: no lease is left behind.
        (
            Command::LeaseGrantPut {
                id: 77,
                ttl: 10,
                put: PutRequest {
                    lease: 77,
                    ignore_value: true,
                    ..put("missing", "")
                },
            },
            MvccError::KeyNotFound,
        ),
        // The put names another lease than the one granted.
        (
            Command::LeaseGrantPut {
                id: 78,
                ttl: 10,
                put: PutRequest {
                    lease: 79,
                    ..put("z", "1")
                },
            },
            MvccError::LeaseNotFound,
        ),
        // A lease that exists already: the put does not happen either.
        (
            Command::LeaseGrantPut {
                id: 5,
                ttl: 10,
                put: PutRequest {
                    lease: 5,
                    ..put("z", "2")
                },
            },
            MvccError::LeaseExists,
        ),
    ]
}

#[test]
fn refused_commands_leave_nothing_behind() {
    let with = tempfile::tempdir().unwrap();
    let without = tempfile::tempdir().unwrap();
    let a = open(with.path());
    let b = open(without.path());
    let setup = vec![
        Command::Put(put("b", "old")),
        Command::LeaseGrant { id: 5, ttl: 30 },
    ];
    a.apply(&setup).unwrap();
    b.apply(&setup).unwrap();

    // One entry: a put, every refused command, a put. The refused ones fail with their
    // error; the puts around them apply at consecutive revisions.
    let mut cmds = vec![Command::Put(put("before", "1"))];
    let mut want = Vec::new();
    for (c, e) in refused() {
        cmds.push(c);
        want.push(e);
    }
    cmds.push(Command::Put(put("after", "1")));
    let applied = a.apply(&cmds).unwrap();
    let rev_before = 3; // setup put at 2, then "before" at 3
    assert!(
        matches!(&applied.results[0], Ok(CommandResult::Put(p)) if p.header.as_ref().unwrap().revision == rev_before)
    );
    for (i, e) in want.iter().enumerate() {
        assert_eq!(
            applied.results[i + 1].as_ref().unwrap_err(),
            e,
            "command {i}"
        );
    }
    assert!(
        matches!(applied.results.last().unwrap(), Ok(CommandResult::Put(p)) if p.header.as_ref().unwrap().revision == rev_before + 1)
    );
    assert_eq!(applied.revision, rev_before + 1);
    assert_eq!(applied.events.len(), 2, "only the two puts made events");

    // The same entry without the refused commands gives the same store.
    b.apply(&[
        Command::Put(put("before", "1")),
        Command::Put(put("after", "1")),
    ])
    .unwrap();
    assert_eq!(a.store().hash_kv(0).unwrap(), b.store().hash_kv(0).unwrap());
    assert_eq!(get(&a, "b").as_deref(), Some(&b"old"[..]));
    assert_eq!(get(&a, "x"), None);
    let leases: Vec<i64> = a.store().leases().iter().map(|(id, _)| id).collect();
    assert_eq!(leases, vec![5]);
    assert!(a.store().leases().get(5).unwrap().keys.is_empty());

    // And after a crash and replay of the log, still the same.
    drop(a);
    let a = open(with.path());
    assert_eq!(a.store().hash_kv(0).unwrap(), b.store().hash_kv(0).unwrap());
    let leases: Vec<i64> = a.store().leases().iter().map(|(id, _)| id).collect();
    assert_eq!(leases, vec![5]);
}
