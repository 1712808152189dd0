//! openraft's storage conformance suite against Mast's log store and state machine.

use std::sync::Arc;

use mast_mvcc::{Applied, Command, Store};
use mast_raft::types::StorageError;
use mast_raft::{ApplyObserver, LogOptions, LogStore, StateMachine, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

struct Quiet;

impl ApplyObserver for Quiet {
    fn applied(&self, _commands: &[Command], _applied: &mut Applied) {}
    fn replaced(&self) {}
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let raft_dir = dir.path().join("raft");
        let log = LogStore::open(
            &raft_dir,
            LogOptions {
                segment_bytes: mast_raft::log_store::MIN_SEGMENT_BYTES,
            },
        )
        .expect("open log");
        let store = Arc::new(Store::open(&dir.path().join("store")).expect("open store"));
        let sm = StateMachine::new(store, Arc::new(Quiet), raft_dir, Default::default())?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("storage suite failed: {e}");
    }
}
