//! Alarms as etcd's alarm store and appliers: a raised `NOSPACE` refuses what grows the
//! store and lets the rest through, `CORRUPT` refuses every write but deletes, and raised
//! alarms are state like any other (they survive a reopen and travel in a snapshot).

use bytes::Bytes;
use mast_mvcc::{Command, CommandResult, LoggedStore, MvccError};
use mast_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    request_op,
};

const NOSPACE: i32 = 1;
const CORRUPT: i32 = 2;
const MEMBER: u64 = 0x8e9e_05c5_2164_694d;

fn open(dir: &std::path::Path) -> LoggedStore {
    LoggedStore::open(dir, Default::default(), Default::default()).unwrap()
}

fn put(k: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::from_static(b"v"),
        ..Default::default()
    }
}

fn alarm(activate: bool, alarm: i32) -> Command {
    Command::Alarm {
        activate,
        member: MEMBER,
        alarm,
    }
}

fn txn(ops: Vec<request_op::Request>) -> Command {
    Command::Txn(TxnRequest {
        success: ops
            .into_iter()
            .map(|r| RequestOp { request: Some(r) })
            .collect(),
        ..Default::default()
    })
}

fn one(store: &LoggedStore, cmd: Command) -> Result<CommandResult, MvccError> {
    store.apply(&[cmd]).expect("disk").results.remove(0)
}

#[test]
fn nospace_refuses_growth_and_lets_deletes_reads_and_compaction_through() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    one(&store, Command::Put(put("a"))).unwrap();
    one(&store, Command::Put(put("b"))).unwrap();
    assert_eq!(
        one(&store, alarm(true, NOSPACE)).unwrap(),
        CommandResult::Alarm(Some((MEMBER, NOSPACE)))
    );
    assert_eq!(store.store().alarms(), vec![(MEMBER, NOSPACE)]);
    let rev = store.store().revision();

    let grows = [
        Command::Put(put("c")),
        Command::LeaseGrant { id: 7, ttl: 10 },
        Command::LeaseGrantPut {
            id: 8,
            ttl: 10,
            put: PutRequest {
                lease: 8,
                ..put("d")
            },
        },
        txn(vec![request_op::Request::RequestPut(put("e"))]),
        // A put nested in an inner txn grows the store as well.
        txn(vec![request_op::Request::RequestTxn(TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put("f"))),
            }],
            ..Default::default()
        })]),
    ];
    for cmd in grows {
        assert_eq!(one(&store, cmd.clone()), Err(MvccError::NoSpace), "{cmd:?}");
    }
    assert_eq!(
        store.store().revision(),
        rev,
        "nothing refused changed the store"
    );
    assert!(store.store().leases().is_empty());

    // What does not grow the store still applies.
    assert!(
        one(
            &store,
            txn(vec![request_op::Request::RequestRange(RangeRequest {
                key: Bytes::from_static(b"a"),
                ..Default::default()
            })])
        )
        .is_ok()
    );
    one(
        &store,
        Command::DeleteRange(DeleteRangeRequest {
            key: Bytes::from_static(b"a"),
            ..Default::default()
        }),
    )
    .unwrap();
    one(
        &store,
        Command::Compact(CompactionRequest {
            revision: store.store().revision(),
            physical: false,
        }),
    )
    .unwrap();

    // Raising it again answers it again and keeps one; clearing it lets writes in.
    assert_eq!(
        one(&store, alarm(true, NOSPACE)).unwrap(),
        CommandResult::Alarm(Some((MEMBER, NOSPACE)))
    );
    assert_eq!(store.store().alarms().len(), 1);
    assert_eq!(
        one(&store, alarm(false, NOSPACE)).unwrap(),
        CommandResult::Alarm(Some((MEMBER, NOSPACE)))
    );
    assert_eq!(
        one(&store, alarm(false, NOSPACE)).unwrap(),
        CommandResult::Alarm(None),
        "clearing an alarm that is not raised answers nothing"
    );
    assert!(store.store().alarms().is_empty());
    one(&store, Command::Put(put("c"))).unwrap();
}

#[test]
fn corrupt_refuses_every_write_but_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    one(&store, Command::LeaseGrant { id: 3, ttl: 10 }).unwrap();
    one(&store, alarm(true, CORRUPT)).unwrap();
    for cmd in [
        Command::Put(put("c")),
        Command::LeaseGrant { id: 7, ttl: 10 },
        Command::LeaseRevoke { id: 3 },
        Command::Compact(CompactionRequest {
            revision: 1,
            physical: false,
        }),
        txn(vec![]),
    ] {
        assert_eq!(one(&store, cmd.clone()), Err(MvccError::Corrupt), "{cmd:?}");
    }
    one(
        &store,
        Command::DeleteRange(DeleteRangeRequest {
            key: Bytes::from_static(b"a"),
            ..Default::default()
        }),
    )
    .unwrap();
    one(&store, alarm(false, CORRUPT)).unwrap();
    one(&store, Command::LeaseRevoke { id: 3 }).unwrap();
}

#[test]
fn alarms_survive_reopen_and_travel_in_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        one(&store, alarm(true, NOSPACE)).unwrap();
        one(
            &store,
            Command::Alarm {
                activate: true,
                member: 1,
                alarm: CORRUPT,
            },
        )
        .unwrap();
        one(&store, alarm(true, CORRUPT)).unwrap();
        one(&store, alarm(false, CORRUPT)).unwrap();
        store.close().unwrap();
    }
    let store = open(dir.path());
    let want = vec![(1, CORRUPT), (MEMBER, NOSPACE)];
    assert_eq!(store.store().alarms(), want);
    assert_eq!(one(&store, Command::Put(put("x"))), Err(MvccError::Corrupt));

    let snap = tempfile::tempdir().unwrap();
    store
        .store()
        .snapshot_to(&snap.path().join("mast.redb"))
        .unwrap();
    let restored = open(snap.path());
    assert_eq!(restored.store().alarms(), want);
}
