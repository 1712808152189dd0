//! cargo-fuzz entry for `harness/bolt.rs` (shared with the corpus replay test,
//! `crates/mast/tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../harness/bolt.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
