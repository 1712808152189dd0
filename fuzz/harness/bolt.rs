//! bbolt files (etcd snapshots) read from arbitrary bytes: an error for anything damaged,
//! never a panic or a walk that does not end.

use mast_mvcc::bolt::{Bolt, BoltError};

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let Ok(bolt) = Bolt::from_bytes(data.to_vec()) else {
        return;
    };
    let Ok(buckets) = bolt.buckets() else {
        return;
    };
    for name in buckets {
        let mut n = 0usize;
        let _ = bolt.for_each(&name, |_, _| {
            n += 1;
            Ok::<(), BoltError>(())
        });
        let _ = bolt.get(&name, b"key");
    }
}
