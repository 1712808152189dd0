//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and every input that once
//! found a bug (`fuzz/regressions/<target>/`) through the same checks the cargo-fuzz targets
//! run (`fuzz/harness/`), on the stable toolchain: what `scripts/fuzz.sh` found stays fixed.
//!
//! A panic anywhere — in the check or in a task or thread the server spawned — fails the test
//! and names the input file.

#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "../../../fuzz/harness/apply.rs"]
mod apply;
#[path = "../../../fuzz/harness/authority.rs"]
mod authority;
#[path = "../../../fuzz/harness/bolt.rs"]
mod bolt;
#[path = "../../../fuzz/harness/entry_codec.rs"]
mod entry_codec;
#[path = "../../../fuzz/harness/server.rs"]
mod server;
#[path = "../../../fuzz/harness/snapshot_chunks.rs"]
mod snapshot_chunks;

/// A fuzz target's check: runs one input, panics on a finding.
type Check = fn(&[u8]);

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The corpus and regression inputs of `target`, in a stable order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("corpus entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn committed_fuzz_inputs_replay_without_a_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let targets: [(&str, Check); 6] = [
        ("entry_codec", entry_codec::check),
        ("apply", apply::check),
        ("bolt", bolt::check),
        ("snapshot_chunks", snapshot_chunks::check),
        ("authority", authority::check),
        ("server", server::check),
    ];
    let mut failed = Vec::new();
    let mut total = 0;
    for (target, check) in targets {
        let files = inputs(target);
        assert!(
            !files.is_empty(),
            "no committed corpus for {target} under fuzz/corpus/{target}"
        );
        for path in files {
            let data = std::fs::read(&path).expect("read input");
            let before = PANICS.load(Ordering::SeqCst);
            let caught = std::panic::catch_unwind(|| check(&data));
            if caught.is_err() || PANICS.load(Ordering::SeqCst) != before {
                failed.push(path.display().to_string());
            }
            total += 1;
        }
    }
    eprintln!("replayed {total} fuzz inputs");
    assert!(failed.is_empty(), "inputs that panicked: {failed:#?}");
}
