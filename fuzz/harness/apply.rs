//! Arbitrary commands (an entry decoded from the input) applied to one store, entry after
//! entry: the applier refuses what it must with an error and never panics or fails the disk
//! write (a storage error would stop the member).

use std::sync::{LazyLock, Mutex};

struct World {
    _dir: tempfile::TempDir,
    store: mast_mvcc::Store,
    index: u64,
}

static WORLD: LazyLock<Mutex<World>> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = mast_mvcc::Store::open(dir.path()).expect("store");
    Mutex::new(World {
        _dir: dir,
        store,
        index: 0,
    })
});

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    let Ok(cmds) = mast_mvcc::decode_entry(data) else {
        return;
    };
    let mut w = WORLD.lock().expect("world");
    w.index += 1;
    let index = w.index;
    let applied = w
        .store
        .apply(index, &cmds)
        .expect("applying never fails the disk");
    assert_eq!(applied.results.len(), cmds.len());
    w.store.publish(applied.revision, index);
    // Reads over what was written still work.
    w.store.hash_kv(0).expect("hash_kv");
}
