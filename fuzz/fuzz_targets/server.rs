//! cargo-fuzz entry for `harness/server.rs` (shared with the corpus replay test,
//! `crates/mast/tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../harness/server.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
