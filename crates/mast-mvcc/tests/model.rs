//! Property test: the store against a simple model that keeps a full copy of the key space at
//! every revision. Random puts, deletes (single and range), txns, compactions, reads at past
//! revisions, and reopening the store from disk must all agree with the model.

use std::collections::BTreeMap;

use bytes::Bytes;

use mast_mvcc::{Command, CommandResult, LogOptions, LoggedStore, MvccError};
use mast_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op,
};
use mast_proto::mvccpb::KeyValue;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    DeleteRange(u8, u8),
    /// If key's version equals v, put key2 = val, else delete key2.
    Txn(u8, i64, u8, u8),
    Compact(u8),
    RangeAt(u8, u8, u8),
    Reopen,
    /// Copy the live store's files (what a process killed now leaves on disk) and open the
    /// copy: the write-ahead log replays every acknowledged batch.
    Crash,
}

fn key(k: u8) -> Bytes {
    format!("k{:02}", k % 12).into_bytes().into()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => any::<u8>().prop_map(Op::Delete),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::DeleteRange(a, b)),
        2 => (any::<u8>(), 0i64..3, any::<u8>(), any::<u8>()).prop_map(|(a, v, b, c)| Op::Txn(a, v, b, c)),
        1 => any::<u8>().prop_map(Op::Compact),
        3 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, r)| Op::RangeAt(a, b, r)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

/// The key space at every revision; index 0 is unused (revisions start at 1).
struct Model {
    states: Vec<BTreeMap<Bytes, KeyValue>>,
    compact: i64,
}

impl Model {
    fn rev(&self) -> i64 {
        self.states.len() as i64 - 1
    }
    fn cur(&self) -> &BTreeMap<Bytes, KeyValue> {
        self.states.last().unwrap()
    }
    fn put(&mut self, next: &mut BTreeMap<Bytes, KeyValue>, rev: i64, k: Bytes, v: Bytes) {
        let kv = match next.get(&k) {
            Some(old) => KeyValue {
                key: k.clone(),
                create_revision: old.create_revision,
                mod_revision: rev,
                version: old.version + 1,
                value: v,
                lease: 0,
            },
            None => KeyValue {
                key: k.clone(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                value: v,
                lease: 0,
            },
        };
        next.insert(k, kv);
    }
}

fn range_of(a: u8, b: u8) -> (Bytes, Bytes) {
    let (x, y) = (key(a), key(b));
    if x <= y { (x, y) } else { (y, x) }
}

fn apply_one(store: &LoggedStore, cmd: Command) -> Result<CommandResult, MvccError> {
    let mut applied = store.apply(&[cmd]).expect("disk ok");
    applied.results.pop().unwrap()
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut dir = tempfile::tempdir().unwrap();
    // A small log and checkpoint interval, so that runs reach both and checkpoint.
    let opts = LogOptions {
        wal_bytes: mast_mvcc::log::MIN_WAL_BYTES,
        checkpoint_bytes: 2048,
    };
    let mut store = LoggedStore::open(dir.path(), Default::default(), opts).unwrap();
    let mut m = Model {
        states: vec![BTreeMap::new(), BTreeMap::new()],
        compact: -1,
    };
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let r = apply_one(
                    &store,
                    Command::Put(PutRequest {
                        key: key(k),
                        value: Bytes::from(vec![v]),
                        ..Default::default()
                    }),
                )
                .unwrap();
                let rev = m.rev() + 1;
                let mut next = m.cur().clone();
                m.put(&mut next, rev, key(k), Bytes::from(vec![v]));
                m.states.push(next);
                let CommandResult::Put(p) = r else { panic!() };
                prop_assert_eq!(p.header.unwrap().revision, rev);
            }
            Op::Delete(k) => {
                let r = apply_one(
                    &store,
                    Command::DeleteRange(DeleteRangeRequest {
                        key: key(k),
                        ..Default::default()
                    }),
                )
                .unwrap();
                let CommandResult::DeleteRange(d) = r else {
                    panic!()
                };
                let existed = m.cur().contains_key(&key(k));
                prop_assert_eq!(d.deleted, existed as i64);
                if existed {
                    let mut next = m.cur().clone();
                    next.remove(&key(k));
                    m.states.push(next);
                }
                prop_assert_eq!(d.header.unwrap().revision, m.rev());
            }
            Op::DeleteRange(a, b) => {
                let (x, y) = range_of(a, b);
                let r = apply_one(
                    &store,
                    Command::DeleteRange(DeleteRangeRequest {
                        key: x.clone(),
                        range_end: y.clone(),
                        prev_kv: true,
                    }),
                )
                .unwrap();
                let CommandResult::DeleteRange(d) = r else {
                    panic!()
                };
                let doomed: Vec<KeyValue> = m.cur().range(x..y).map(|(_, v)| v.clone()).collect();
                prop_assert_eq!(&d.prev_kvs, &doomed);
                if !doomed.is_empty() {
                    let mut next = m.cur().clone();
                    for kv in &doomed {
                        next.remove(&kv.key);
                    }
                    m.states.push(next);
                }
            }
            Op::Txn(a, v, b, c) => {
                let t = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Version as i32,
                        key: key(a),
                        range_end: Bytes::new(),
                        target_union: Some(TargetUnion::Version(v)),
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key(b),
                            value: Bytes::from(vec![c]),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![
                        RequestOp {
                            request: Some(request_op::Request::RequestDeleteRange(
                                DeleteRangeRequest {
                                    key: key(b),
                                    ..Default::default()
                                },
                            )),
                        },
                        RequestOp {
                            request: Some(request_op::Request::RequestRange(RangeRequest {
                                key: key(a),
                                ..Default::default()
                            })),
                        },
                    ],
                };
                let r = apply_one(&store, Command::Txn(t)).unwrap();
                let CommandResult::Txn(resp) = r else {
                    panic!()
                };
                let version = m.cur().get(&key(a)).map_or(0, |kv| kv.version);
                prop_assert_eq!(resp.succeeded, version == v);
                if version == v {
                    let rev = m.rev() + 1;
                    let mut next = m.cur().clone();
                    m.put(&mut next, rev, key(b), Bytes::from(vec![c]));
                    m.states.push(next);
                } else if m.cur().contains_key(&key(b)) {
                    let mut next = m.cur().clone();
                    next.remove(&key(b));
                    m.states.push(next);
                }
                prop_assert_eq!(resp.header.unwrap().revision, m.rev());
            }
            Op::Compact(r) => {
                let rev = (r as i64) % (m.rev() + 2);
                let res = apply_one(
                    &store,
                    Command::Compact(CompactionRequest {
                        revision: rev,
                        physical: true,
                    }),
                );
                if rev <= m.compact {
                    prop_assert_eq!(res.unwrap_err(), MvccError::Compacted);
                } else if rev > m.rev() {
                    prop_assert_eq!(res.unwrap_err(), MvccError::FutureRevision);
                } else {
                    prop_assert!(res.is_ok());
                    m.compact = rev;
                }
            }
            Op::RangeAt(a, b, r) => {
                let (x, y) = range_of(a, b);
                let rev = (r as i64) % (m.rev() + 2);
                let req = RangeRequest {
                    key: x.clone(),
                    range_end: y.clone(),
                    revision: rev,
                    ..Default::default()
                };
                let res = store.store().range(&req);
                // A count-only range (answered from the index alone) agrees with the full one.
                let counted = store.store().range(&RangeRequest {
                    count_only: true,
                    ..req
                });
                if rev > m.rev() {
                    prop_assert_eq!(res.unwrap_err(), MvccError::FutureRevision);
                    prop_assert_eq!(counted.unwrap_err(), MvccError::FutureRevision);
                } else if rev > 0 && rev < m.compact {
                    prop_assert_eq!(res.unwrap_err(), MvccError::Compacted);
                    prop_assert_eq!(counted.unwrap_err(), MvccError::Compacted);
                } else {
                    let at = if rev == 0 { m.rev() } else { rev };
                    let want: Vec<KeyValue> = m.states[at as usize]
                        .range(x..y)
                        .map(|(_, v)| v.clone())
                        .collect();
                    let got = res.unwrap();
                    prop_assert_eq!(got.count, want.len() as i64);
                    let counted = counted.unwrap();
                    prop_assert_eq!(counted.count, want.len() as i64);
                    prop_assert!(counted.kvs.is_empty());
                    prop_assert_eq!(counted.header, got.header);
                    prop_assert_eq!(got.kvs, want);
                    prop_assert_eq!(got.header.unwrap().revision, m.rev());
                }
            }
            Op::Reopen => {
                drop(store);
                store = LoggedStore::open(dir.path(), Default::default(), opts).unwrap();
                prop_assert_eq!(store.store().revision(), m.rev());
                prop_assert_eq!(store.store().compact_revision(), m.compact);
            }
            Op::Crash => {
                let copy = tempfile::tempdir().unwrap();
                for f in ["mast.redb", "wal.log"] {
                    std::fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
                }
                drop(store);
                dir = copy;
                store = LoggedStore::open(dir.path(), Default::default(), opts).unwrap();
                prop_assert_eq!(store.store().revision(), m.rev());
                prop_assert_eq!(store.store().compact_revision(), m.compact);
            }
        }
        prop_assert_eq!(store.store().revision(), m.rev());
    }
    // Everything at the end, read in one go.
    let all = store
        .store()
        .range(&RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..Default::default()
        })
        .unwrap();
    let want: Vec<KeyValue> = m.cur().values().cloned().collect();
    prop_assert_eq!(all.kvs, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
