//! cargo-fuzz entry for `harness/snapshot_chunks.rs` (shared with the corpus replay test,
//! `crates/mast/tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../harness/snapshot_chunks.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
