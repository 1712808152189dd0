//! Entries applied together (`Store::apply_batch`, one redb transaction) end exactly as the
//! same entries applied one at a time: the same results, events, revisions, `HashKV`, and the
//! same state after a checkpoint and a reopen; indexes that do not ascend are refused with
//! nothing applied.

use bytes::Bytes;
use mast_mvcc::{Applied, Command, Store};
use mast_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op};

fn put(k: &str, v: &str) -> Command {
    Command::Put(PutRequest {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
        prev_kv: true,
        ..Default::default()
    })
}

/// Four entries that touch the same keys, grant and use a lease, and include a refused
/// command (a put on a lease that does not exist).
fn entries() -> Vec<(u64, Vec<Command>)> {
    vec![
        (1, vec![put("a", "1"), put("b", "1")]),
        (
            2,
            vec![
                Command::LeaseGrant { id: 7, ttl: 60 },
                put("a", "2"),
                Command::Put(PutRequest {
                    lease: 999,
                    ..match put("c", "x") {
                        Command::Put(p) => p,
                        _ => unreachable!(),
                    }
                }),
            ],
        ),
        (3, vec![]),
        (
            4,
            vec![
                Command::Txn(TxnRequest {
                    success: vec![
                        RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: Bytes::from_static(b"d"),
                                value: Bytes::from_static(b"4"),
                                lease: 7,
                                ..Default::default()
                            })),
                        },
                        RequestOp {
                            request: Some(request_op::Request::RequestDeleteRange(
                                DeleteRangeRequest {
                                    key: Bytes::from_static(b"b"),
                                    ..Default::default()
                                },
                            )),
                        },
                    ],
                    ..Default::default()
                }),
                put("a", "4"),
            ],
        ),
    ]
}

fn summary(applied: &[Applied]) -> Vec<String> {
    applied
        .iter()
        .map(|a| {
            format!(
                "index {} rev {} results {:?} events {:?}",
                a.index, a.revision, a.results, a.events
            )
        })
        .collect()
}

#[test]
fn a_batch_ends_as_entries_one_at_a_time() {
    let one_dir = tempfile::tempdir().unwrap();
    let batch_dir = tempfile::tempdir().unwrap();
    let entries = entries();

    let one = Store::open(one_dir.path()).unwrap();
    let mut one_applied = Vec::new();
    for (index, cmds) in &entries {
        let a = one.apply(*index, cmds).unwrap();
        one.publish(a.revision, a.index);
        one_applied.push(a);
    }

    let batch = Store::open(batch_dir.path()).unwrap();
    let refs: Vec<(u64, &[Command])> = entries.iter().map(|(i, c)| (*i, c.as_slice())).collect();
    let batch_applied = batch.apply_batch(&refs, &[("note", b"n")]).unwrap();
    assert_eq!(batch_applied.len(), entries.len());
    for a in &batch_applied {
        batch.publish(a.revision, a.index);
    }

    assert_eq!(summary(&one_applied), summary(&batch_applied));
    // The refused put is an error result, the rest of its entry applied.
    assert!(batch_applied[1].results[2].is_err());
    let rev = one_applied.last().unwrap().revision;
    assert_eq!(one.hash_kv(rev).unwrap(), batch.hash_kv(rev).unwrap());
    assert_eq!(batch.note("note").unwrap().as_deref(), Some(&b"n"[..]));

    // Durable as one: after a checkpoint and a reopen both stores agree still.
    one.checkpoint().unwrap();
    batch.checkpoint().unwrap();
    drop((one, batch));
    let one = Store::open(one_dir.path()).unwrap();
    let batch = Store::open(batch_dir.path()).unwrap();
    assert_eq!(one.hash_kv(rev).unwrap(), batch.hash_kv(rev).unwrap());
    assert_eq!(batch.last_applied_index(), 4);
}

#[test]
fn indexes_that_do_not_ascend_are_refused_with_nothing_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = store.apply(1, &[put("a", "1")]).unwrap();
    store.publish(a.revision, a.index);
    let (two, three) = ([put("b", "2")], [put("c", "3")]);
    for bad in [
        vec![(3, &three[..]), (2, &two[..])],
        vec![(1, &two[..])],
        vec![(2, &two[..]), (2, &three[..])],
    ] {
        assert!(store.apply_batch(&bad, &[]).is_err(), "{bad:?}");
        // Refused before anything was applied: the store still takes the next entry.
        assert_eq!(store.last_applied_index(), 1);
    }
    let applied = store
        .apply_batch(&[(2, &two[..]), (3, &three[..])], &[])
        .unwrap();
    assert_eq!(
        applied
            .iter()
            .map(|a| (a.index, a.revision))
            .collect::<Vec<_>>(),
        vec![(2, 3), (3, 4)]
    );
    assert!(store.apply_batch(&[], &[]).unwrap().is_empty());
}
