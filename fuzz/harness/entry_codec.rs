//! Log entries and command results decoded from arbitrary bytes (what a damaged log segment or
//! a peer could hand a member): never a panic, and whatever decodes encodes back to the same
//! commands.

/// Runs one input; panics on a finding.
pub fn check(data: &[u8]) {
    if let Ok(cmds) = mast_mvcc::decode_entry(data) {
        let mut buf = Vec::new();
        mast_mvcc::encode_entry(&cmds, &mut buf);
        assert_eq!(buf.len(), mast_mvcc::command::entry_len(&cmds));
        assert_eq!(mast_mvcc::decode_entry(&buf).expect("re-decode"), cmds);
    }
    if let Ok(r) = mast_mvcc::decode_result(data) {
        let mut buf = Vec::new();
        mast_mvcc::encode_result(&r, &mut buf);
        assert_eq!(mast_mvcc::decode_result(&buf).expect("re-decode"), r);
    }
}
