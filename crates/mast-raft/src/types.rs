//! The Raft type configuration: what an entry carries ([`Proposal`]), what applying it
//! answers ([`Outcome`]), what a member is ([`Member`]) and what a snapshot is
//! ([`SnapshotData`]), with the binary encoding of openraft's own types used by the log file
//! and the peer protocol.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use mast_mvcc::codec::{Reader, put_bytes, put_u32, put_u64};
use mast_mvcc::snapshot::StoreView;
use mast_mvcc::{CodecError, Command, CommandResult, MvccError};

openraft::declare_raft_types!(
    /// Mast's Raft types: member IDs are etcd's `u64` member IDs.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A member ID, as etcd's (see [`crate::identity`]).
pub type MemberId = u64;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log entry's ID: the term and node of the leader that proposed it, and its index.
pub type LogId = openraft::LogId<MemberId>;
/// A vote: a term, the candidate, and whether a quorum granted it.
pub type Vote = openraft::Vote<MemberId>;
/// A cluster configuration: voter sets (two during a joint change) and every member's
/// [`Member`].
pub type Membership = openraft::Membership<MemberId, Member>;
/// A membership with the ID of the entry that set it.
pub type StoredMembership = openraft::StoredMembership<MemberId, Member>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<MemberId, Member>;
/// A storage failure as openraft reports it.
pub type StorageError = openraft::StorageError<MemberId>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// What a member is known by: its name and URLs, as etcd's `Member` (the ID is the key it is
/// stored under). A member added by `MemberAdd` has no name and no client URLs until it
/// starts and publishes them, as in etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    /// `--name`; empty until the member has started.
    pub name: String,
    /// Peer URLs (`--initial-advertise-peer-urls`).
    pub peer_urls: Vec<String>,
    /// Client URLs (`--advertise-client-urls`); empty until the member has started.
    pub client_urls: Vec<String>,
}

/// The commands of one log entry: encoded once, by the proposer, and carried as bytes through
/// the log, the network and the log's in-memory tail; decoded when applied.
///
/// The proposer does not keep its decoded commands: their byte fields are slices of the
/// buffers their requests arrived in (prost's `Bytes`), so keeping them for as long as the
/// entry stays cached would pin kilobytes of receive buffer per command (a bulk load held
/// over a gigabyte that way). The encoded entry is one exact-size buffer.
#[derive(Clone)]
pub struct Proposal {
    data: Bytes,
}

impl Proposal {
    /// A proposal of `commands`, encoded by [`mast_mvcc::encode_entry`].
    pub fn new(commands: Vec<Command>) -> Proposal {
        let mut buf = Vec::with_capacity(mast_mvcc::command::entry_len(&commands));
        mast_mvcc::encode_entry(&commands, &mut buf);
        Proposal { data: buf.into() }
    }

    /// A proposal read back from the log or the network.
    pub fn from_bytes(data: Bytes) -> Proposal {
        Proposal { data }
    }

    /// The encoded entry.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// The commands, decoded.
    ///
    /// # Errors
    /// [`CodecError`] when the bytes are not an entry this build reads.
    pub fn commands(&self) -> Result<Vec<Command>, CodecError> {
        mast_mvcc::decode_entry(&self.data)
    }
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proposal({} bytes)", self.data.len())
    }
}

impl PartialEq for Proposal {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl Eq for Proposal {}

/// What applying an entry answers its proposer: one result per command, and the store
/// revision after the entry. Blank and membership entries answer no results.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// One result per command of the entry, in order.
    pub results: Vec<Result<CommandResult, MvccError>>,
    /// The store revision after the entry.
    pub revision: i64,
}

/// A snapshot's data, as openraft hands it around (`generic-snapshot-data`).
pub enum SnapshotData {
    /// A consistent view of a live store: what a leader streams to a follower.
    View(StoreView),
    /// A store file received from a leader, complete, waiting to be installed.
    File(std::path::PathBuf),
    /// Nothing yet: what receiving starts with, and what a built snapshot carries (openraft
    /// keeps only a built snapshot's metadata).
    Empty,
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::View(v) => write!(f, "View({v:?})"),
            SnapshotData::File(p) => write!(f, "File({})", p.display()),
            SnapshotData::Empty => f.write_str("Empty"),
        }
    }
}

// ---- Binary encoding of openraft's types (log file and peer protocol) ----
//
// LogId:       u64 term, u64 leader node, u64 index
// Option<T>:   u8 0 (none) / 1 then T
// Vote:        u64 term, u64 node, u8 committed
// Member:      str name, u32 n + n × str peer URL, u32 n + n × str client URL
// Membership:  u32 n + n × (u32 m + m × u64 voter), u32 n + n × (u64 id, Member)
// Entry:       LogId, u8 kind (0 blank, 1 normal, 2 membership), then the rest: the
//              proposal's bytes for normal, Membership for membership
// StoredMembership: Option<LogId>, Membership

/// Appends a log ID.
pub fn put_log_id(buf: &mut Vec<u8>, id: &LogId) {
    put_u64(buf, id.leader_id.term);
    put_u64(buf, id.leader_id.node_id);
    put_u64(buf, id.index);
}

/// Reads a log ID.
///
/// # Errors
/// [`CodecError`] for truncated bytes.
pub fn get_log_id(r: &mut Reader<'_>) -> Result<LogId, CodecError> {
    let term = r.u64()?;
    let node = r.u64()?;
    let index = r.u64()?;
    Ok(LogId::new(
        openraft::CommittedLeaderId::new(term, node),
        index,
    ))
}

/// Appends an optional log ID.
pub fn put_opt_log_id(buf: &mut Vec<u8>, id: &Option<LogId>) {
    match id {
        None => buf.push(0),
        Some(id) => {
            buf.push(1);
            put_log_id(buf, id);
        }
    }
}

/// Reads an optional log ID.
///
/// # Errors
/// [`CodecError`] for truncated or bad bytes.
pub fn get_opt_log_id(r: &mut Reader<'_>) -> Result<Option<LogId>, CodecError> {
    Ok(if r.bool()? {
        Some(get_log_id(r)?)
    } else {
        None
    })
}

/// Appends a vote.
pub fn put_vote(buf: &mut Vec<u8>, v: &Vote) {
    put_u64(buf, v.leader_id.term);
    put_u64(buf, v.leader_id.node_id);
    buf.push(u8::from(v.committed));
}

/// Reads a vote.
///
/// # Errors
/// [`CodecError`] for truncated or bad bytes.
pub fn get_vote(r: &mut Reader<'_>) -> Result<Vote, CodecError> {
    let term = r.u64()?;
    let node = r.u64()?;
    let committed = r.bool()?;
    Ok(if committed {
        Vote::new_committed(term, node)
    } else {
        Vote::new(term, node)
    })
}

fn put_strs(buf: &mut Vec<u8>, v: &[String]) {
    put_u32(buf, v.len() as u32);
    for s in v {
        put_bytes(buf, s.as_bytes());
    }
}

fn get_strs(r: &mut Reader<'_>) -> Result<Vec<String>, CodecError> {
    let n = r.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(r.0.len() / 4));
    for _ in 0..n {
        out.push(r.string()?);
    }
    Ok(out)
}

/// Appends a member's name and URLs.
pub fn put_member(buf: &mut Vec<u8>, m: &Member) {
    put_bytes(buf, m.name.as_bytes());
    put_strs(buf, &m.peer_urls);
    put_strs(buf, &m.client_urls);
}

/// Reads a member's name and URLs.
///
/// # Errors
/// [`CodecError`] for truncated or bad bytes.
pub fn get_member(r: &mut Reader<'_>) -> Result<Member, CodecError> {
    Ok(Member {
        name: r.string()?,
        peer_urls: get_strs(r)?,
        client_urls: get_strs(r)?,
    })
}

/// Appends a membership.
pub fn put_membership(buf: &mut Vec<u8>, m: &Membership) {
    let configs = m.get_joint_config();
    put_u32(buf, configs.len() as u32);
    for c in configs {
        put_u32(buf, c.len() as u32);
        for id in c {
            put_u64(buf, *id);
        }
    }
    let nodes: Vec<(&MemberId, &Member)> = m.nodes().collect();
    put_u32(buf, nodes.len() as u32);
    for (id, node) in nodes {
        put_u64(buf, *id);
        put_member(buf, node);
    }
}

/// Reads a membership.
///
/// # Errors
/// [`CodecError`] for truncated or bad bytes.
pub fn get_membership(r: &mut Reader<'_>) -> Result<Membership, CodecError> {
    let n = r.u32()? as usize;
    let mut configs = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        let m = r.u32()? as usize;
        let mut set = BTreeSet::new();
        for _ in 0..m {
            set.insert(r.u64()?);
        }
        configs.push(set);
    }
    let n = r.u32()? as usize;
    let mut nodes = BTreeMap::new();
    for _ in 0..n {
        let id = r.u64()?;
        nodes.insert(id, get_member(r)?);
    }
    Ok(Membership::new(configs, nodes))
}

/// Appends a stored membership.
pub fn put_stored_membership(buf: &mut Vec<u8>, m: &StoredMembership) {
    put_opt_log_id(buf, m.log_id());
    put_membership(buf, m.membership());
}

/// Reads a stored membership.
///
/// # Errors
/// [`CodecError`] for truncated or bad bytes.
pub fn get_stored_membership(r: &mut Reader<'_>) -> Result<StoredMembership, CodecError> {
    let id = get_opt_log_id(r)?;
    Ok(StoredMembership::new(id, get_membership(r)?))
}

const ENTRY_BLANK: u8 = 0;
const ENTRY_NORMAL: u8 = 1;
const ENTRY_MEMBERSHIP: u8 = 2;

/// Appends a log entry.
pub fn put_entry(buf: &mut Vec<u8>, e: &Entry) {
    put_log_id(buf, &e.log_id);
    match &e.payload {
        openraft::EntryPayload::Blank => buf.push(ENTRY_BLANK),
        openraft::EntryPayload::Normal(p) => {
            buf.push(ENTRY_NORMAL);
            buf.extend_from_slice(p.bytes());
        }
        openraft::EntryPayload::Membership(m) => {
            buf.push(ENTRY_MEMBERSHIP);
            put_membership(buf, m);
        }
    }
}

/// Reads a log entry that takes all of `bytes`.
///
/// # Errors
/// [`CodecError`] for truncated or bad bytes.
pub fn decode_entry(bytes: &Bytes) -> Result<Entry, CodecError> {
    let mut r = Reader(bytes);
    let log_id = get_log_id(&mut r)?;
    let payload = match r.u8()? {
        ENTRY_BLANK => openraft::EntryPayload::Blank,
        ENTRY_NORMAL => {
            let at = bytes.len() - r.0.len();
            openraft::EntryPayload::Normal(Proposal::from_bytes(bytes.slice(at..)))
        }
        ENTRY_MEMBERSHIP => {
            let m = get_membership(&mut r)?;
            r.finish()?;
            openraft::EntryPayload::Membership(m)
        }
        t => return Err(CodecError::UnknownTag(t)),
    };
    Ok(Entry { log_id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lid(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(openraft::CommittedLeaderId::new(term, node), index)
    }

    #[test]
    fn entries_and_memberships_round_trip() {
        let member = Member {
            name: "n1".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: vec![
                "http://127.0.0.1:2379".into(),
                "http://10.0.0.1:2379".into(),
            ],
        };
        let m = Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([(1, member.clone()), (2, Member::default()), (3, member)]),
        );
        let entries = vec![
            Entry {
                log_id: lid(1, 7, 0),
                payload: openraft::EntryPayload::Blank,
            },
            Entry {
                log_id: lid(2, 7, 1),
                payload: openraft::EntryPayload::Normal(Proposal::new(vec![Command::LeaseGrant {
                    id: 5,
                    ttl: 10,
                }])),
            },
            Entry {
                log_id: lid(3, 9, 2),
                payload: openraft::EntryPayload::Membership(m.clone()),
            },
        ];
        for e in &entries {
            let mut buf = Vec::new();
            put_entry(&mut buf, e);
            let back = decode_entry(&Bytes::from(buf.clone())).unwrap();
            assert_eq!(&back, e);
            for n in 0..buf.len().min(25) {
                assert!(decode_entry(&Bytes::from(buf[..n].to_vec())).is_err());
            }
        }
        let stored = StoredMembership::new(Some(lid(3, 9, 2)), m);
        let mut buf = Vec::new();
        put_stored_membership(&mut buf, &stored);
        let mut r = Reader(&buf);
        assert_eq!(get_stored_membership(&mut r).unwrap(), stored);
        r.finish().unwrap();
        let v = Vote::new_committed(4, 2);
        let mut buf = Vec::new();
        put_vote(&mut buf, &v);
        assert_eq!(get_vote(&mut Reader(&buf)).unwrap(), v);
    }
}
