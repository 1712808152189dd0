//! Snapshot chunks as a peer streams them (table, rows of keys and values), from arbitrary
//! bytes: the writer refuses rows that do not decode, and a file it finishes opens as a store
//! or fails to with an error — never a panic.

use mast_mvcc::snapshot::{SnapshotChunk, SnapshotWriter, TableId};

/// Chunks from the input: per row `table u8, key len u8, key, value len u8, value`.
fn chunks(mut data: &[u8]) -> Vec<SnapshotChunk> {
    let mut out: Vec<SnapshotChunk> = Vec::new();
    while data.len() >= 3 {
        let Some(table) = TableId::from_u8(data[0] % 7) else {
            data = &data[1..];
            continue;
        };
        let klen = data[1] as usize;
        let Some(key) = data.get(2..2 + klen) else {
            break;
        };
        let Some(&vlen) = data.get(2 + klen) else {
            break;
        };
        let start = 3 + klen;
        let Some(value) = data.get(start..start + vlen as usize) else {
            break;
        };
        match out.last_mut() {
            Some(c) if c.table == table => c.rows.push((key.to_vec(), value.to_vec())),
            _ => out.push(SnapshotChunk {
                table,
                rows: vec![(key.to_vec(), value.to_vec())],
            }),
        }
        data = &data[start + vlen as usize..];
    }
    out
}

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mast.redb");
    let mut writer = SnapshotWriter::create(&path).expect("create");
    for c in chunks(data) {
        if writer.write_chunk(&c).is_err() {
            return;
        }
    }
    if writer.finish().is_ok() {
        let _ = mast_mvcc::Store::open(dir.path());
    }
}
