//! The Raft log on disk: openraft's `RaftLogStorage` over segment files.
//!
//! ## Files (`<data-dir>/raft/`)
//! - `log/<first index, 20 digits>.seg`: segments, each created zero-filled at its full size
//!   ([`LogOptions::segment_bytes`]) and written in place, so an `fdatasync` flushes data only,
//!   never the file's size or extents. A segment holds the entries from its first index up to
//!   the next segment's.
//! - `vote`: the last vote, replaced atomically (write, fsync, rename, fsync the directory).
//!
//! A record in a segment is
//!
//! ```text
//! u32 LE  body length (0: no record here)
//! u32 LE  CRC-32 (IEEE) of the body
//! body    u8 kind, then: 1 entry (crate::types::put_entry), 2 committed log ID, 3 purged
//!         log ID (both as Option<LogId>)
//! ```
//!
//! and every write of records ends with four zero bytes, overwritten by the next write, so a
//! scan stops where the log ends. The committed and purged log IDs travel in the log itself:
//! the last of each found on open wins.
//!
//! ## Durability
//! `append` writes the records and hands the callback to the sync thread, which makes every
//! write handed to it so far durable with one `fdatasync` per segment touched and then calls
//! the callbacks: openraft answers a vote or counts an entry only after that. `save_vote`,
//! `truncate` and `purge` are durable before they return. `save_committed` is not (losing it
//! only means re-applying fewer entries at start).
//!
//! ## Recovery
//! On open every segment is scanned. A record that does not check out at the end of the last
//! segment is a write that never completed (never acknowledged): it is cut off, with a
//! warning. One anywhere else, or entries whose indexes do not follow each other, is
//! corruption: opening fails and says where.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use bytes::Bytes;
use mast_mvcc::codec::Reader;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};

use crate::types::{
    Entry, LogId, StorageError, TypeConfig, Vote, decode_entry, get_opt_log_id, get_vote,
    put_entry, put_opt_log_id, put_vote,
};

/// Default size of a log segment in bytes (64 MiB, as an etcd WAL segment).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Smallest segment accepted, in bytes.
pub const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

/// Most entries kept decoded in memory at the log's tail, for replication to read without the
/// disk.
const TAIL_CACHE_ENTRIES: usize = 8192;

/// Most bytes (encoded size) of those entries: an entry holds up to a thousand commands, so a
/// count alone would let a bulk load keep gigabytes here. A healthy follower is a few entries
/// behind and the state machine applies an entry right after it is appended, so 2 MiB (a
/// fraction of a second of writes at full speed) serves both; a follower further behind
/// reads the segment files. 8 MiB here was a seventh of the live heap of a registry with
/// 10,000 configs and 10,000 instances.
const TAIL_CACHE_BYTES: u64 = 2 << 20;

const RECORD_HEADER: usize = 8;
const KIND_ENTRY: u8 = 1;
const KIND_COMMITTED: u8 = 2;
const KIND_PURGED: u8 = 3;

/// Options of [`LogStore::open`].
#[derive(Clone, Copy, Debug)]
pub struct LogOptions {
    /// Size of each segment file in bytes (at least [`MIN_SEGMENT_BYTES`]).
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// A log that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    /// Reading or writing the files failed.
    #[error("raft log: {0}")]
    Io(#[from] std::io::Error),
    /// A record in the middle of the log does not check out, or entries do not follow each
    /// other.
    #[error("raft log is corrupt: {what} in {file} at offset {offset}")]
    Corrupt {
        /// The segment file.
        file: String,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

/// One segment file.
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
}

/// Where an entry is.
#[derive(Clone, Copy)]
struct Loc {
    /// First index of the segment (its key).
    segment: u64,
    offset: u64,
    len: u32,
    log_id: LogId,
}

struct State {
    dir: PathBuf,
    segment_bytes: u64,
    /// By first index.
    segments: BTreeMap<u64, Segment>,
    /// Key of the segment written to.
    active: u64,
    /// Where the next record goes in the active segment.
    offset: u64,
    /// Locations of the entries present, the first at index `first`.
    locs: VecDeque<Loc>,
    first: u64,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
    vote: Option<Vote>,
    /// The newest entries, decoded; `tail[i]` has index `tail_first + i`.
    tail: VecDeque<Entry>,
    tail_first: u64,
    /// Encoded size of the entries in `tail`, in bytes.
    tail_bytes: u64,
    /// Reused encoding buffer.
    buf: Vec<u8>,
}

struct Shared {
    state: Mutex<State>,
}

/// The Raft log storage. Cheap to clone handles come from [`RaftLogStorage::get_log_reader`].
pub struct LogStore {
    shared: Arc<Shared>,
    sync: mpsc::Sender<SyncJob>,
}

/// A reader of the log for a replication stream.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// Files to make durable, then a callback to call.
struct SyncJob {
    files: Vec<Arc<File>>,
    callback: LogFlushed<TypeConfig>,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates a zero-filled segment file of `size` bytes and makes it and its directory entry
/// durable.
fn create_segment(dir: &Path, first: u64, size: u64) -> std::io::Result<Segment> {
    let path = dir.join(segment_name(first));
    let tmp = dir.join(format!("{}.tmp", segment_name(first)));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(Segment {
        file: Arc::new(f),
        path,
        size,
    })
}

/// Appends a record (header and body) to `buf`.
fn put_record(buf: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER]);
    buf.push(kind);
    body(buf);
    let len = (buf.len() - start - RECORD_HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + RECORD_HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

impl State {
    fn last_log_id(&self) -> Option<LogId> {
        self.locs.back().map(|l| l.log_id).or(self.last_purged)
    }

    fn next_index(&self) -> u64 {
        self.last_log_id().map_or(0, |l| l.index + 1)
    }

    fn active_segment(&self) -> &Segment {
        self.segments
            .get(&self.active)
            .expect("the active segment exists")
    }

    /// Writes `self.buf` (whole records) at the end of the log, starting a new segment first
    /// when they do not fit; `first_entry` names a new segment. Returns the offset written at
    /// and whether a new segment was started (the previous one may hold writes not yet
    /// synced).
    fn write_records(&mut self, first_entry: u64) -> std::io::Result<(u64, Option<Arc<File>>)> {
        let need = self.buf.len() as u64 + 4;
        let mut previous = None;
        if self.offset + need > self.active_segment().size {
            let size = self.segment_bytes.max(need);
            let seg = create_segment(&self.dir.join("log"), first_entry, size)?;
            previous = Some(self.active_segment().file.clone());
            self.segments.insert(first_entry, seg);
            self.active = first_entry;
            self.offset = 0;
        }
        self.buf.extend_from_slice(&[0u8; 4]);
        let at = self.offset;
        self.active_segment().file.write_all_at(&self.buf, at)?;
        self.offset += self.buf.len() as u64 - 4;
        Ok((at, previous))
    }

    /// The encoded size of entry `index`, which must be present.
    fn entry_len(&self, index: u64) -> u64 {
        u64::from(self.locs[(index - self.first) as usize].len)
    }

    /// Drops the oldest cached entries until the cache is within its bounds.
    fn trim_tail(&mut self) {
        while self.tail.len() > 1
            && (self.tail.len() > TAIL_CACHE_ENTRIES || self.tail_bytes > TAIL_CACHE_BYTES)
        {
            self.tail_bytes -= self.entry_len(self.tail_first);
            self.tail.pop_front();
            self.tail_first += 1;
        }
    }

    /// Counts `tail_bytes` again after entries left the cache some other way.
    fn recount_tail(&mut self) {
        self.tail_bytes = (0..self.tail.len() as u64)
            .map(|i| self.entry_len(self.tail_first + i))
            .sum();
    }

    fn read_entry(&self, index: u64) -> Result<Entry, StorageError> {
        if index >= self.tail_first && ((index - self.tail_first) as usize) < self.tail.len() {
            return Ok(self.tail[(index - self.tail_first) as usize].clone());
        }
        let loc = self.locs[(index - self.first) as usize];
        let seg = self
            .segments
            .get(&loc.segment)
            .ok_or_else(|| read_err(format!("segment of entry {index} is gone")))?;
        let mut buf = vec![0u8; RECORD_HEADER + loc.len as usize];
        seg.file
            .read_exact_at(&mut buf, loc.offset)
            .map_err(read_err)?;
        let body = Bytes::from(buf).slice(RECORD_HEADER + 1..);
        decode_entry(&body).map_err(read_err)
    }

    /// Appends a committed or purged record (no sync).
    fn put_marker(&mut self, kind: u8, id: Option<LogId>) -> std::io::Result<Arc<File>> {
        self.buf.clear();
        put_record(&mut self.buf, kind, |b| put_opt_log_id(b, &id));
        let next = self.next_index();
        let (_, previous) = self.write_records(next)?;
        if let Some(p) = previous {
            p.sync_data()?;
        }
        Ok(self.active_segment().file.clone())
    }
}

impl LogStore {
    /// Opens (or creates) the log under `dir` (`<data-dir>/raft`), checking every record, and
    /// starts its sync thread.
    ///
    /// # Errors
    /// [`LogOpenError`] when the files cannot be read or the log is corrupt.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<LogStore, LogOpenError> {
        let log_dir = dir.join("log");
        std::fs::create_dir_all(&log_dir)?;
        let segment_bytes = opts.segment_bytes.max(MIN_SEGMENT_BYTES);
        let vote = read_vote_file(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(&log_dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                names.push((first, e.path()));
            } else if name.ends_with(".tmp") {
                // A segment whose creation did not finish.
                std::fs::remove_file(e.path())?;
            }
        }
        names.sort();
        let mut st = State {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: BTreeMap::new(),
            active: 0,
            offset: 0,
            locs: VecDeque::new(),
            first: 0,
            last_purged: None,
            committed: None,
            vote,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_first: 0,
            buf: Vec::new(),
        };
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let last_segment = i + 1 == count;
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let size = file.metadata()?.len();
            let seg = Segment {
                file: Arc::new(file),
                path,
                size,
            };
            let end = scan_segment(&seg, first, last_segment, &mut st)?;
            st.segments.insert(first, seg);
            st.active = first;
            st.offset = end;
        }
        if st.segments.is_empty() {
            let seg = create_segment(&log_dir, 0, segment_bytes)?;
            st.segments.insert(0, seg);
        }
        // Entries a purge covered whose segment was not deleted yet.
        if let Some(p) = st.last_purged {
            while st.locs.front().is_some_and(|l| l.log_id.index <= p.index) {
                st.locs.pop_front();
                st.first += 1;
            }
            if st.locs.is_empty() {
                st.first = p.index + 1;
            }
            delete_purged_segments(&mut st, p.index)?;
        }
        st.tail_first = st.first + st.locs.len() as u64;
        tracing::info!(
            segments = st.segments.len(),
            first = st.first,
            last = ?st.last_log_id().map(|l| l.index),
            purged = ?st.last_purged.map(|l| l.index),
            committed = ?st.committed.map(|l| l.index),
            "raft log opened"
        );
        let (tx, rx) = mpsc::channel::<SyncJob>();
        std::thread::Builder::new()
            .name("mast-log-sync".into())
            .spawn(move || sync_loop(rx))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                state: Mutex::new(st),
            }),
            sync: tx,
        })
    }
}

/// Scans one segment's records into `st`; returns where the valid records end. A bad record
/// ends the scan quietly only at the end of the last segment.
fn scan_segment(
    seg: &Segment,
    seg_first: u64,
    last_segment: bool,
    st: &mut State,
) -> Result<u64, LogOpenError> {
    let mut offset = 0u64;
    let mut header = [0u8; RECORD_HEADER];
    let corrupt = |offset: u64, what: String| LogOpenError::Corrupt {
        file: seg.path.display().to_string(),
        offset,
        what,
    };
    loop {
        if offset + RECORD_HEADER as u64 > seg.size {
            break;
        }
        seg.file.read_exact_at(&mut header, offset)?;
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if len == 0 {
            break;
        }
        let bad = if offset + RECORD_HEADER as u64 + len > seg.size {
            Some("record runs past the end of the segment".to_string())
        } else {
            None
        };
        let body = if bad.is_none() {
            let mut body = vec![0u8; len as usize];
            seg.file
                .read_exact_at(&mut body, offset + RECORD_HEADER as u64)?;
            Some(body)
        } else {
            None
        };
        let bad = bad.or_else(|| {
            let b = body.as_ref().expect("read above");
            (crc32fast::hash(b) != crc).then(|| "CRC mismatch".to_string())
        });
        if let Some(what) = bad {
            if last_segment {
                tracing::warn!(
                    file = %seg.path.display(),
                    offset,
                    what,
                    "raft log ends in an incomplete write; cutting it off"
                );
                seg.file.write_all_at(&[0u8; 4], offset)?;
                seg.file.sync_data()?;
                break;
            }
            return Err(corrupt(offset, what));
        }
        let body = Bytes::from(body.expect("read above"));
        let mut r = Reader(&body);
        let kind = r.u8().map_err(|e| corrupt(offset, e.to_string()))?;
        match kind {
            KIND_ENTRY => {
                let e =
                    decode_entry(&body.slice(1..)).map_err(|e| corrupt(offset, e.to_string()))?;
                let index = e.log_id.index;
                match st.locs.back() {
                    Some(prev) if prev.log_id.index + 1 != index => {
                        return Err(corrupt(
                            offset,
                            format!("entry {index} follows entry {}", prev.log_id.index),
                        ));
                    }
                    None => st.first = index,
                    _ => {}
                }
                if st.locs.is_empty() && index < seg_first {
                    return Err(corrupt(
                        offset,
                        format!("entry {index} in a segment starting at {seg_first}"),
                    ));
                }
                st.locs.push_back(Loc {
                    segment: seg_first,
                    offset,
                    len: len as u32,
                    log_id: e.log_id,
                });
            }
            KIND_COMMITTED => {
                st.committed =
                    get_opt_log_id(&mut r).map_err(|e| corrupt(offset, e.to_string()))?;
            }
            KIND_PURGED => {
                st.last_purged =
                    get_opt_log_id(&mut r).map_err(|e| corrupt(offset, e.to_string()))?;
            }
            k => return Err(corrupt(offset, format!("unknown record kind {k}"))),
        }
        offset += RECORD_HEADER as u64 + len;
    }
    Ok(offset)
}

/// Deletes every segment whose entries all have indexes at or below `upto`, except the
/// active one.
fn delete_purged_segments(st: &mut State, upto: u64) -> std::io::Result<()> {
    let keys: Vec<u64> = st.segments.keys().copied().collect();
    let mut removed = false;
    for w in keys.windows(2) {
        let (seg, next) = (w[0], w[1]);
        if next <= upto + 1
            && seg != st.active
            && let Some(s) = st.segments.remove(&seg)
        {
            std::fs::remove_file(&s.path)?;
            removed = true;
        }
    }
    if removed {
        sync_dir(&st.dir.join("log"))?;
    }
    Ok(())
}

fn read_vote_file(dir: &Path) -> Result<Option<Vote>, LogOpenError> {
    let path = dir.join("vote");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let corrupt = |what: &str| LogOpenError::Corrupt {
        file: path.display().to_string(),
        offset: 0,
        what: what.into(),
    };
    if bytes.len() < 4 {
        return Err(corrupt("short vote file"));
    }
    let crc = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[4..]) != crc {
        return Err(corrupt("CRC mismatch"));
    }
    let mut r = Reader(&bytes[4..]);
    let v = get_vote(&mut r).map_err(|e| corrupt(&e.to_string()))?;
    Ok(Some(v))
}

fn write_vote_file(dir: &Path, vote: &Vote) -> std::io::Result<()> {
    let mut body = Vec::new();
    put_vote(&mut body, vote);
    let mut bytes = crc32fast::hash(&body).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let tmp = dir.join("vote.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("vote"))?;
    sync_dir(dir)
}

fn sync_loop(rx: mpsc::Receiver<SyncJob>) {
    let mut jobs = Vec::new();
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        let mut files: Vec<Arc<File>> = Vec::new();
        for j in &mut jobs {
            for f in j.files.drain(..) {
                if !files.iter().any(|g| Arc::ptr_eq(g, &f)) {
                    files.push(f);
                }
            }
        }
        let mut result = Ok(());
        for f in &files {
            if let Err(e) = f.sync_data() {
                tracing::error!(error = %e, "raft log sync failed");
                result = Err(e);
                break;
            }
        }
        metrics::counter!("mast_fsyncs_total").increment(files.len() as u64);
        for j in jobs.drain(..) {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            j.callback.log_io_completed(r);
        }
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_range(&self.shared, range)
    }
}

fn read_range<RB: RangeBounds<u64>>(
    shared: &Shared,
    range: RB,
) -> Result<Vec<Entry>, StorageError> {
    let st = shared.state.lock().expect("log lock");
    let end_present = st.first + st.locs.len() as u64;
    let start = match range.start_bound() {
        std::ops::Bound::Included(s) => *s,
        std::ops::Bound::Excluded(s) => s + 1,
        std::ops::Bound::Unbounded => 0,
    }
    .max(st.first);
    let end = match range.end_bound() {
        std::ops::Bound::Included(e) => e + 1,
        std::ops::Bound::Excluded(e) => *e,
        std::ops::Bound::Unbounded => end_present,
    }
    .min(end_present);
    let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
    for i in start..end {
        out.push(st.read_entry(i)?);
    }
    Ok(out)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_range(&self.shared, range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let st = self.shared.state.lock().expect("log lock");
        Ok(LogState {
            last_purged_log_id: st.last_purged,
            last_log_id: st.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let dir = self.shared.state.lock().expect("log lock").dir.clone();
        let v = *vote;
        tokio::task::spawn_blocking(move || write_vote_file(&dir, &v))
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.shared.state.lock().expect("log lock").vote = Some(v);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.shared.state.lock().expect("log lock").vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut st = self.shared.state.lock().expect("log lock");
        st.committed = committed;
        st.put_marker(KIND_COMMITTED, committed)
            .map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.shared.state.lock().expect("log lock").committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut files = Vec::new();
        {
            let mut st = self.shared.state.lock().expect("log lock");
            let st = &mut *st;
            for e in entries {
                let index = e.log_id.index;
                let expected = st.next_index();
                // An empty log may start anywhere (openraft's own tests start at 1).
                if index != expected && !st.locs.is_empty() {
                    return Err(write_err(format!(
                        "append of entry {index} where entry {expected} is next"
                    )));
                }
                st.buf.clear();
                put_record(&mut st.buf, KIND_ENTRY, |b| put_entry(b, &e));
                let len = (st.buf.len() - RECORD_HEADER) as u32;
                let (at, previous) = st.write_records(index).map_err(write_err)?;
                if let Some(p) = previous {
                    files.push(p);
                }
                if st.locs.is_empty() {
                    st.first = index;
                }
                st.locs.push_back(Loc {
                    segment: st.active,
                    offset: at,
                    len,
                    log_id: e.log_id,
                });
                if st.tail.is_empty() {
                    st.tail_first = index;
                }
                st.tail.push_back(e);
                st.tail_bytes += u64::from(len);
                st.trim_tail();
            }
            if st.buf.capacity() > 1 << 20 {
                st.buf = Vec::new();
            }
            files.push(st.active_segment().file.clone());
        }
        self.sync
            .send(SyncJob { files, callback })
            .map_err(|_| write_err("log sync thread stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut st = self.shared.state.lock().expect("log lock");
        let st = &mut *st;
        let index = log_id.index;
        if index < st.first || index >= st.first + st.locs.len() as u64 {
            return Ok(());
        }
        let loc = st.locs[(index - st.first) as usize];
        // Later segments hold only later entries.
        let later: Vec<u64> = st
            .segments
            .range(loc.segment + 1..)
            .map(|(k, _)| *k)
            .collect();
        for k in later {
            if let Some(s) = st.segments.remove(&k) {
                std::fs::remove_file(&s.path).map_err(write_err)?;
            }
        }
        sync_dir(&st.dir.join("log")).map_err(write_err)?;
        st.active = loc.segment;
        st.offset = loc.offset;
        st.locs.truncate((index - st.first) as usize);
        if index < st.tail_first {
            st.tail.clear();
            st.tail_first = index;
        } else {
            st.tail.truncate((index - st.tail_first) as usize);
        }
        st.recount_tail();
        // The committed and purged records after the cut go with it: write them again (the
        // same write ends the log at the cut).
        st.buf.clear();
        let (purged, committed) = (st.last_purged, st.committed);
        put_record(&mut st.buf, KIND_PURGED, |b| put_opt_log_id(b, &purged));
        put_record(&mut st.buf, KIND_COMMITTED, |b| {
            put_opt_log_id(b, &committed)
        });
        let next = st.next_index();
        st.write_records(next).map_err(write_err)?;
        st.active_segment().file.sync_data().map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut st = self.shared.state.lock().expect("log lock");
        let st = &mut *st;
        let index = log_id.index;
        let beyond = st.locs.back().is_none_or(|l| l.log_id.index <= index);
        st.last_purged = Some(log_id);
        while st.locs.front().is_some_and(|l| l.log_id.index <= index) {
            st.locs.pop_front();
        }
        st.first = index + 1;
        while st.tail.front().is_some_and(|e| e.log_id.index <= index) {
            st.tail.pop_front();
        }
        st.tail_first = st.tail.front().map_or(index + 1, |e| e.log_id.index);
        st.recount_tail();
        if beyond {
            // Nothing is left: start a fresh segment for what comes next, so every older one
            // can go.
            let seg = create_segment(&st.dir.join("log"), index + 1, st.segment_bytes)
                .map_err(write_err)?;
            st.segments.insert(index + 1, seg);
            st.active = index + 1;
            st.offset = 0;
        }
        // The purged record is durable before any file goes.
        let f = st
            .put_marker(KIND_PURGED, Some(log_id))
            .map_err(write_err)?;
        f.sync_data().map_err(write_err)?;
        delete_purged_segments(st, index).map_err(write_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Proposal;
    use mast_mvcc::Command;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: openraft::EntryPayload::Normal(Proposal::new(vec![Command::LeaseRevoke {
                id: index as i64,
            }])),
        }
    }

    fn append_sync(store: &LogStore, entries: Vec<Entry>) {
        let mut st = store.shared.state.lock().unwrap();
        for e in entries {
            st.buf.clear();
            put_record(&mut st.buf, KIND_ENTRY, |b| put_entry(b, &e));
            let len = (st.buf.len() - RECORD_HEADER) as u32;
            let index = e.log_id.index;
            let (at, _) = st.write_records(index).unwrap();
            if st.locs.is_empty() {
                st.first = index;
            }
            let seg = st.active;
            st.locs.push_back(Loc {
                segment: seg,
                offset: at,
                len,
                log_id: e.log_id,
            });
        }
        st.tail.clear();
        st.tail_bytes = 0;
        st.tail_first = st.first + st.locs.len() as u64;
        for s in st.segments.values() {
            s.file.sync_data().unwrap();
        }
    }

    #[test]
    fn entries_survive_reopen_across_segments_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: MIN_SEGMENT_BYTES,
        };
        let store = LogStore::open(dir.path(), opts).unwrap();
        append_sync(&store, (0..3000).map(|i| entry(1, i)).collect());
        let segments = store.shared.state.lock().unwrap().segments.len();
        assert!(segments > 1, "{segments} segments");
        drop(store);
        let store = LogStore::open(dir.path(), opts).unwrap();
        let got = read_range(&store.shared, 0..3000).unwrap();
        assert_eq!(got.len(), 3000);
        assert_eq!(got[2999], entry(1, 2999));
        // Tear the last record: it is cut off on open, the rest stays.
        let (path, offset) = {
            let st = store.shared.state.lock().unwrap();
            let loc = *st.locs.back().unwrap();
            (st.segments[&loc.segment].path.clone(), loc.offset)
        };
        drop(store);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xee], offset + 12).unwrap();
        let store = LogStore::open(dir.path(), opts).unwrap();
        let got = read_range(&store.shared, 0..3000).unwrap();
        assert_eq!(got.len(), 2999);
    }

    #[test]
    fn corruption_in_an_earlier_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: MIN_SEGMENT_BYTES,
        };
        let store = LogStore::open(dir.path(), opts).unwrap();
        append_sync(&store, (0..3000).map(|i| entry(1, i)).collect());
        let path = store.shared.state.lock().unwrap().segments[&0].path.clone();
        drop(store);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xee], 200).unwrap();
        match LogStore::open(dir.path(), opts) {
            Err(LogOpenError::Corrupt { file, .. }) => assert!(file.ends_with(".seg")),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("opened a corrupt log"),
        }
    }
}
