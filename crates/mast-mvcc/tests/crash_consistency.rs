//! Crash consistency of the store: the redb file lives on a test backend that remembers what
//! was synced, and a crash keeps every synced byte but only a random part (4 KiB pieces) of
//! what was written since — what a disk may do to writes not yet fsynced. After each crash,
//! at a random entry, with checkpoints at random entries before it, the store must open, at
//! an entry no older than its last checkpoint, with exactly the state a fresh store reaches
//! by applying the entries up to there (same `HashKV`, revision, compaction and leases); and
//! replaying the rest of the entries, as the Raft log does on start, must give the state of
//! a store that never crashed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use mast_mvcc::{Command, Store, StoreOptions};
use mast_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, compare,
    request_op,
};

/// Piece of an unsynced write that a crash keeps or loses as a whole.
const PIECE: usize = 4096;
const TRIALS: u64 = 40;
const ENTRIES: u64 = 250;

/// One write or resize not yet synced.
#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Disk {
    /// What a crash keeps for certain: the bytes as of the last sync.
    synced: Vec<u8>,
    /// What readers see now.
    current: Vec<u8>,
    /// Changes since the last sync, in order.
    unsynced: Vec<Op>,
}

/// A redb storage backend in memory that can crash.
#[derive(Debug, Clone, Default)]
struct CrashDisk(Arc<Mutex<Disk>>);

fn out_of_range() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "past the end of the disk",
    )
}

impl redb::StorageBackend for CrashDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.lock().expect("disk").current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let d = self.0.lock().expect("disk");
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let src = d
            .current
            .get(start..start + out.len())
            .ok_or_else(out_of_range)?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().expect("disk");
        d.current
            .resize(usize::try_from(len).map_err(|_| out_of_range())?, 0);
        d.unsynced.push(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().expect("disk");
        d.synced = d.current.clone();
        d.unsynced.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut d = self.0.lock().expect("disk");
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        d.current
            .get_mut(start..start + data.len())
            .ok_or_else(out_of_range)?
            .copy_from_slice(data);
        d.unsynced.push(Op::Write(offset, data.to_vec()));
        Ok(())
    }
}

impl CrashDisk {
    /// The disk as a crash now could leave it: the synced bytes, then each unsynced resize
    /// and each 4 KiB piece of each unsynced write kept or lost at random, in order.
    fn crash(&self, rng: &mut Rng) -> CrashDisk {
        let d = self.0.lock().expect("disk");
        let mut img = d.synced.clone();
        for op in &d.unsynced {
            match op {
                Op::SetLen(len) => {
                    if rng.below(2) == 0 {
                        img.resize(*len as usize, 0);
                    }
                }
                Op::Write(offset, data) => {
                    for (i, piece) in data.chunks(PIECE).enumerate() {
                        if rng.below(2) == 0 {
                            continue;
                        }
                        let at = *offset as usize + i * PIECE;
                        if img.len() < at + piece.len() {
                            img.resize(at + piece.len(), 0);
                        }
                        img[at..at + piece.len()].copy_from_slice(piece);
                    }
                }
            }
        }
        CrashDisk(Arc::new(Mutex::new(Disk {
            synced: img.clone(),
            current: img,
            unsynced: Vec::new(),
        })))
    }
}

/// xorshift64*: reproducible from the trial's seed, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn key(rng: &mut Rng) -> Bytes {
    Bytes::from(format!("k{:02}", rng.below(40)))
}

fn put(rng: &mut Rng, index: u64) -> PutRequest {
    PutRequest {
        key: key(rng),
        // Some values span pages, so a crash can tear them.
        value: Bytes::from(format!("{index}-").repeat(1 + rng.below(3) as usize * 700)),
        lease: if rng.below(4) == 0 {
            1 + rng.below(4) as i64
        } else {
            0
        },
        ..Default::default()
    }
}

/// One random command; refusals (a missing lease, a compacted or future revision) are part
/// of the mix, and deterministic.
fn command(rng: &mut Rng, index: u64) -> Command {
    match rng.below(10) {
        0..=3 => Command::Put(put(rng, index)),
        4 => Command::DeleteRange(DeleteRangeRequest {
            key: key(rng),
            range_end: if rng.below(2) == 0 {
                Bytes::new()
            } else {
                key(rng)
            },
            ..Default::default()
        }),
        5 | 6 => Command::Txn(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Greater as i32,
                target: compare::CompareTarget::Version as i32,
                key: key(rng),
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put(rng, index))),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: key(rng),
                        ..Default::default()
                    },
                )),
            }],
        }),
        7 => Command::LeaseGrant {
            id: 1 + rng.below(4) as i64,
            ttl: 60,
        },
        8 => Command::LeaseRevoke {
            id: 1 + rng.below(4) as i64,
        },
        _ => Command::Compact(CompactionRequest {
            revision: (index / 2) as i64 + rng.below(10) as i64,
            physical: false,
        }),
    }
}

fn entries(rng: &mut Rng) -> Vec<Vec<Command>> {
    (1..=ENTRIES)
        .map(|index| (0..1 + rng.below(3)).map(|_| command(rng, index)).collect())
        .collect()
}

fn apply_all(store: &Store, entries: &[Vec<Command>], first_index: u64) {
    for (i, cmds) in entries.iter().enumerate() {
        let index = first_index + i as u64;
        let applied = store.apply(index, cmds).expect("apply");
        store.publish(applied.revision, index);
    }
}

/// What must match: `HashKV` over all history, the revision, the compacted revision, and the
/// leases with their keys.
#[derive(Debug, PartialEq)]
struct State {
    hash: u32,
    revision: i64,
    compacted: i64,
    leases: Vec<(i64, Vec<Vec<u8>>)>,
}

fn state(store: &Store) -> State {
    let (hash, rev, compact) = store.hash_kv(0).expect("hash_kv");
    let leases = store
        .leases()
        .iter()
        .map(|(id, r)| {
            let mut keys: Vec<Vec<u8>> = r.keys.iter().cloned().collect();
            keys.sort();
            (id, keys)
        })
        .collect();
    State {
        hash,
        revision: rev,
        compacted: compact,
        leases,
    }
}

fn open(dir: &Path, disk: CrashDisk) -> Store {
    Store::open_with_backend(dir, StoreOptions::default(), disk).expect("open")
}

#[test]
fn a_crash_keeps_the_last_checkpoint_and_the_log_replays_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut opened_past_checkpoint = 0;
    for trial in 0..TRIALS {
        let seed = 0x9E37_79B9_7F4A_7C15 ^ (trial + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut rng = Rng(seed);
        let log = entries(&mut rng);
        let crash_at = 1 + rng.below(ENTRIES);

        let disk = CrashDisk::default();
        let store = open(dir.path(), disk.clone());
        let mut checkpoint = 0;
        for (i, cmds) in log[..crash_at as usize].iter().enumerate() {
            let index = i as u64 + 1;
            let applied = store.apply(index, cmds).expect("apply");
            store.publish(applied.revision, index);
            if rng.below(25) == 0 {
                store.checkpoint().expect("checkpoint");
                checkpoint = index;
            }
        }
        let image = disk.crash(&mut rng);
        // A crash: no close, no last commit.
        std::mem::forget(store);

        let reopened = open(dir.path(), image);
        let at = reopened.durable_index();
        assert!(
            (checkpoint..=crash_at).contains(&at),
            "trial {trial} (seed {seed:#x}): opened at entry {at}, last checkpoint {checkpoint}, crash after {crash_at}"
        );
        if at > checkpoint {
            opened_past_checkpoint += 1;
        }
        let reference = open(dir.path(), CrashDisk::default());
        apply_all(&reference, &log[..at as usize], 1);
        assert_eq!(
            state(&reopened),
            state(&reference),
            "trial {trial} (seed {seed:#x}): state after opening at entry {at}"
        );

        // The log replays what the store lost, then the rest arrives.
        apply_all(&reopened, &log[at as usize..], at + 1);
        apply_all(&reference, &log[at as usize..], at + 1);
        assert_eq!(
            state(&reopened),
            state(&reference),
            "trial {trial} (seed {seed:#x}): state after replaying entries {}..={ENTRIES}",
            at + 1
        );
        assert_eq!(reopened.last_applied_index(), ENTRIES);
    }
    eprintln!(
        "{TRIALS} crashes; {opened_past_checkpoint} opened past their last checkpoint (a later non-durable commit survived whole)"
    );
}
