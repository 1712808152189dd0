//! The audit log: who changed what in the registry and config key spaces and in auth, kept
//! beside the key space in its own table, hash-chained so an altered entry is detected.
//!
//! A command the server wraps in [`Command::Attributed`](crate::Command::Attributed) carries
//! its [`Origin`] (user, client address, API, the proposer's wall-clock time). When such a
//! command changes a key under one of [`AUDITED_PREFIXES`], or is an auth command, applying
//! it appends one [`AuditEntry`] per changed key (or one for the auth change) to the `audit`
//! table, in the same redb transaction as the change: every member records the same entries
//! with the same sequence numbers and hashes, and an entry exists exactly when its change
//! does. The key space, its revisions and its events are untouched.
//!
//! Each entry's hash is SHA-256 over the previous entry's hash and the entry's own encoding
//! (everything but the hash), so changing, removing or inserting an entry breaks the chain
//! at that point ([`verify`]). The chain is tamper-evident, not tamper-proof: someone who can
//! write the database file can rewrite every later entry too, which moves the head hash; an
//! operator who records the head ([`AuditReport::head`]) elsewhere detects that as well.
//!
//! Retention: once more than the retention count of entries exist, the oldest are deleted
//! while applying (the first kept entry's `prev_hash` then refers to a deleted entry and is
//! taken as the anchor). The count is a setting of each member; set the same one everywhere.

use bytes::Bytes;
use redb::{ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};

use crate::codec::{Reader, put_bytes, put_u64};
use crate::command::CodecError;

/// The audit table: sequence number (from 1) → entry (32-byte hash, then the body).
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Entries kept by default.
pub const DEFAULT_AUDIT_RETENTION: u64 = 100_000;

/// Key prefixes whose changes are audited: configs, instances, service settings, operator
/// overrides, namespaces and gray releases.
pub const AUDITED_PREFIXES: [&[u8]; 6] = [
    b"/configs/",
    b"/services/",
    b"/service-meta/",
    b"/instance-overrides/",
    b"/namespaces/",
    b"/config-gray/",
];

/// Whether changes of `key` are audited.
pub fn is_audited(key: &[u8]) -> bool {
    AUDITED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Whether `[key, range_end)` (etcd's conventions: empty end = the one key, `\0` = every key
/// from `key`) may hold an audited key.
pub fn range_may_hold_audited(key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        return is_audited(key);
    }
    AUDITED_PREFIXES.iter().any(|p| {
        let p_end = prefix_end(p);
        // [key, range_end) meets [p, p_end).
        key < p_end.as_slice() && (range_end == [0] || range_end > *p)
    })
}

/// Whether any op of `t` (either branch, nested txns included) may change an audited key.
pub fn txn_may_touch_audited(t: &mast_proto::etcdserverpb::TxnRequest) -> bool {
    use mast_proto::etcdserverpb::request_op::Request;
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(Request::RequestPut(p)) => is_audited(&p.key),
            Some(Request::RequestDeleteRange(d)) => range_may_hold_audited(&d.key, &d.range_end),
            Some(Request::RequestTxn(n)) => txn_may_touch_audited(n),
            _ => false,
        })
}

fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Who made a change, as the member that took the request saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The authenticated user (empty with auth off).
    pub user: String,
    /// The client's address (`ip:port`), or empty when unknown.
    pub addr: String,
    /// Which API the request came through: `etcd` (gRPC), `etcd-http` (the JSON gateway),
    /// `mast` (`/mast/v1`), `nacos`, or `system` for the server's own work.
    pub api: String,
    /// The proposer's wall-clock time, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

impl Origin {
    /// Bytes of the encoding.
    pub(crate) fn encoded_len(&self) -> usize {
        12 + self.user.len() + self.addr.len() + self.api.len() + 8
    }

    /// Appends the encoding: user, addr, api (length-prefixed), `u64 LE` time.
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        put_bytes(buf, self.user.as_bytes());
        put_bytes(buf, self.addr.as_bytes());
        put_bytes(buf, self.api.as_bytes());
        put_u64(buf, self.time_ms);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Origin, CodecError> {
        Ok(Origin {
            user: r.string()?,
            addr: r.string()?,
            api: r.string()?,
            time_ms: r.u64()?,
        })
    }
}

/// What an audit entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    /// A key was created or changed.
    Put,
    /// A key was deleted.
    Delete,
    /// Users, roles, permissions or the auth switch changed.
    Auth,
}

impl AuditAction {
    /// The action's name: `put`, `delete` or `auth`.
    pub fn name(self) -> &'static str {
        match self {
            AuditAction::Put => "put",
            AuditAction::Delete => "delete",
            AuditAction::Auth => "auth",
        }
    }

    fn code(self) -> u8 {
        match self {
            AuditAction::Put => 1,
            AuditAction::Delete => 2,
            AuditAction::Auth => 3,
        }
    }

    fn from_code(c: u8) -> Result<AuditAction, CodecError> {
        match c {
            1 => Ok(AuditAction::Put),
            2 => Ok(AuditAction::Delete),
            3 => Ok(AuditAction::Auth),
            t => Err(CodecError::UnknownTag(t)),
        }
    }
}

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Sequence number, from 1, one per entry.
    pub seq: u64,
    /// The store revision of the change (for auth changes, the revision at the time).
    pub revision: i64,
    /// Who, from where, through which API, when.
    pub origin: Origin,
    /// What kind of change.
    pub action: AuditAction,
    /// The key changed (empty for auth changes).
    pub key: Bytes,
    /// The value before (`None`: the key did not exist, or an auth change).
    pub before: Option<Bytes>,
    /// The value after (`None`: deleted, or an auth change).
    pub after: Option<Bytes>,
    /// For auth changes, what changed (`user add alice`, `role grant-permission …`); never a
    /// password.
    pub detail: String,
    /// The previous entry's hash (zeros for the first entry ever).
    pub prev_hash: [u8; 32],
    /// SHA-256 of `prev_hash` and this entry's body.
    pub hash: [u8; 32],
}

fn put_opt(buf: &mut Vec<u8>, v: &Option<Bytes>) {
    match v {
        Some(b) => {
            buf.push(1);
            put_bytes(buf, b);
        }
        None => buf.push(0),
    }
}

fn read_opt(r: &mut Reader<'_>) -> Result<Option<Bytes>, CodecError> {
    Ok(if r.bool()? {
        Some(Bytes::copy_from_slice(r.bytes()?))
    } else {
        None
    })
}

impl AuditEntry {
    /// The body: every field but the hash.
    fn body(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(
            96 + self.key.len()
                + self.before.as_ref().map_or(0, Bytes::len)
                + self.after.as_ref().map_or(0, Bytes::len)
                + self.detail.len(),
        );
        put_u64(&mut buf, self.seq);
        buf.extend_from_slice(&self.revision.to_le_bytes());
        self.origin.encode(&mut buf);
        buf.push(self.action.code());
        put_bytes(&mut buf, &self.key);
        put_opt(&mut buf, &self.before);
        put_opt(&mut buf, &self.after);
        put_bytes(&mut buf, self.detail.as_bytes());
        buf.extend_from_slice(&self.prev_hash);
        buf
    }

    /// The hash of `prev_hash` followed by `body`.
    fn hash_of(body: &[u8]) -> [u8; 32] {
        Sha256::digest(body).into()
    }

    /// Seals the entry: computes its hash. Returns the stored row (hash, then body).
    fn seal(&mut self) -> Vec<u8> {
        let body = self.body();
        self.hash = Self::hash_of(&body);
        let mut row = Vec::with_capacity(32 + body.len());
        row.extend_from_slice(&self.hash);
        row.extend_from_slice(&body);
        row
    }

    /// Decodes a stored row, without checking its hash.
    ///
    /// # Errors
    /// [`CodecError`] when the row is not an entry.
    pub fn decode(row: &[u8]) -> Result<AuditEntry, CodecError> {
        let mut r = Reader(row);
        let hash: [u8; 32] = r.take(32)?.try_into().expect("took 32 bytes");
        let seq = r.u64()?;
        let revision = r.i64()?;
        let origin = Origin::decode(&mut r)?;
        let action = AuditAction::from_code(r.u8()?)?;
        let key = Bytes::copy_from_slice(r.bytes()?);
        let before = read_opt(&mut r)?;
        let after = read_opt(&mut r)?;
        let detail = r.string()?;
        let prev_hash: [u8; 32] = r.take(32)?.try_into().expect("took 32 bytes");
        r.finish()?;
        Ok(AuditEntry {
            seq,
            revision,
            origin,
            action,
            key,
            before,
            after,
            detail,
            prev_hash,
            hash,
        })
    }

    /// Whether the stored hash is the hash of the entry's fields.
    pub fn hash_holds(&self) -> bool {
        Self::hash_of(&self.body()) == self.hash
    }
}

/// A change to record, before it has a sequence number and hashes.
pub(crate) struct Pending {
    pub(crate) action: AuditAction,
    pub(crate) key: Bytes,
    pub(crate) before: Option<Bytes>,
    pub(crate) after: Option<Bytes>,
    pub(crate) detail: String,
}

/// Appends `changes` made at `revision` by `origin` to the chain in `table`, then deletes the
/// oldest entries beyond `retention` (at least 1 is kept).
pub(crate) fn append(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    origin: &Origin,
    revision: i64,
    changes: Vec<Pending>,
    retention: u64,
) -> Result<(), crate::error::StorageError> {
    if changes.is_empty() {
        return Ok(());
    }
    let (mut seq, mut prev_hash) = match table.last()? {
        Some((k, v)) => {
            let hash: [u8; 32] = v
                .value()
                .get(..32)
                .and_then(|h| h.try_into().ok())
                .unwrap_or([0; 32]);
            (k.value(), hash)
        }
        None => (0, [0; 32]),
    };
    for c in changes {
        seq += 1;
        let mut entry = AuditEntry {
            seq,
            revision,
            origin: origin.clone(),
            action: c.action,
            key: c.key,
            before: c.before,
            after: c.after,
            detail: c.detail,
            prev_hash,
            hash: [0; 32],
        };
        let row = entry.seal();
        table.insert(seq, row.as_slice())?;
        prev_hash = entry.hash;
    }
    let keep_from = seq.saturating_sub(retention.max(1)) + 1;
    loop {
        let oldest = table.first()?.map(|(k, _)| k.value());
        match oldest {
            Some(k) if k < keep_from => {
                table.remove(k)?;
            }
            _ => break,
        }
    }
    Ok(())
}

/// What [`verify`] found in an intact chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Entries checked.
    pub entries: u64,
    /// Sequence number of the oldest kept entry (0: none).
    pub first: u64,
    /// Sequence number of the newest entry (0: none).
    pub last: u64,
    /// The newest entry's hash: record it elsewhere to detect a rewrite of the whole tail.
    pub head: [u8; 32],
}

/// Where the chain is broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditBreak {
    /// The row does not decode as an entry.
    #[error("audit entry {seq} is malformed: {reason}")]
    Malformed {
        /// The row's sequence number.
        seq: u64,
        /// The decoder's complaint.
        reason: String,
    },
    /// The entry's fields do not hash to its stored hash: it was altered.
    #[error("audit entry {seq} was altered: its hash does not match its contents")]
    Altered {
        /// The entry.
        seq: u64,
    },
    /// The entry does not follow the one before it (its `prev_hash` or number differs): an
    /// entry was removed, inserted or rewritten.
    #[error("audit chain broken before entry {seq}: it does not follow entry {prev}")]
    Unlinked {
        /// The entry.
        seq: u64,
        /// The entry before it in the table.
        prev: u64,
    },
}

/// Checks the chain: every entry's hash, each one's link to the one before, and numbers
/// without gaps.
///
/// # Errors
/// [`AuditBreak`] at the first broken place; [`crate::error::StorageError`] when the table
/// cannot be read (as the outer error).
pub(crate) fn verify(
    table: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Result<AuditReport, AuditBreak>, crate::error::StorageError> {
    let mut report = AuditReport::default();
    let mut prev: Option<(u64, [u8; 32])> = None;
    for row in table.iter()? {
        let (k, v) = row?;
        let seq = k.value();
        let entry = match AuditEntry::decode(v.value()) {
            Ok(e) => e,
            Err(e) => {
                return Ok(Err(AuditBreak::Malformed {
                    seq,
                    reason: e.to_string(),
                }));
            }
        };
        if entry.seq != seq || !entry.hash_holds() {
            return Ok(Err(AuditBreak::Altered { seq }));
        }
        if let Some((p, h)) = prev
            && (seq != p + 1 || entry.prev_hash != h)
        {
            return Ok(Err(AuditBreak::Unlinked { seq, prev: p }));
        }
        if report.first == 0 {
            report.first = seq;
        }
        report.entries += 1;
        report.last = seq;
        report.head = entry.hash;
        prev = Some((seq, entry.hash));
    }
    Ok(Ok(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audited_ranges() {
        assert!(is_audited(b"/configs/public/G/a"));
        assert!(!is_audited(b"/config-history/x"));
        assert!(range_may_hold_audited(b"/services/", b"/services0"));
        assert!(range_may_hold_audited(b"/", b"0"));
        assert!(range_may_hold_audited(b"\0", b"\0"));
        assert!(!range_may_hold_audited(b"/a", b"/b"));
        assert!(!range_may_hold_audited(b"key", b"\0"));
        assert!(!range_may_hold_audited(b"/config-meta/", b"/config-meta0"));
        assert!(range_may_hold_audited(b"/config", b"/configt"));
    }

    #[test]
    fn entries_round_trip_and_detect_changes() {
        let mut e = AuditEntry {
            seq: 7,
            revision: 42,
            origin: Origin {
                user: "alice".into(),
                addr: "127.0.0.1:5000".into(),
                api: "mast".into(),
                time_ms: 1_700_000_000_000,
            },
            action: AuditAction::Put,
            key: Bytes::from_static(b"/configs/public/DEFAULT_GROUP/a.json"),
            before: None,
            after: Some(Bytes::from_static(b"{}")),
            detail: String::new(),
            prev_hash: [9; 32],
            hash: [0; 32],
        };
        let row = e.seal();
        let back = AuditEntry::decode(&row).unwrap();
        assert_eq!(back, e);
        assert!(back.hash_holds());
        let mut altered = back.clone();
        altered.after = Some(Bytes::from_static(b"{\"x\":1}"));
        assert!(!altered.hash_holds());
        assert!(AuditEntry::decode(&row[..row.len() - 1]).is_err());
    }
}
