//! cargo-fuzz entry for `harness/entry_codec.rs` (shared with the corpus replay test,
//! `crates/mast/tests/fuzz_corpus.rs`).
#![no_main]

#[path = "../harness/entry_codec.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
