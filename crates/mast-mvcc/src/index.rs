//! The in-memory key index: key → generations of revisions, as etcd's `treeIndex`.
//!
//! The index holds no values. A value lives on disk under its revision; the index answers
//! "which revision of this key is visible at revision R" so a read can fetch exactly the rows it
//! needs. A key's life is a list of generations: a generation starts with the put that creates
//! the key and ends with the tombstone that deletes it; a later put starts a new generation.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use smallvec::SmallVec;

use crate::lease::LeaseId;
use crate::revision::Revision;

/// Keys of at most this many bytes are stored inline in the index (no heap allocation).
pub const INLINE_KEY_BYTES: usize = 40;

/// A key as the index stores it; ordered as its bytes.
type IndexKey = SmallVec<[u8; INLINE_KEY_BYTES]>;

/// One life of a key: from its creating put to its tombstone (if any).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Generation {
    /// Number of puts in this generation, including those compacted away.
    ver: i64,
    /// Revision of the put that created the key.
    created: Revision,
    /// Revisions still indexed, oldest first; the last one is the tombstone in a closed
    /// generation. Inline while there is one (most keys of a registry or config center are
    /// written once between compactions), so such a key costs no allocation here.
    revs: SmallVec<[Revision; 1]>,
}

/// The history of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyHistory {
    lives: Lives,
    /// The lease the key's newest put attached it to; 0 for none and after a tombstone. Kept
    /// here so that moving a key between leases needs no key → lease map of its own.
    lease: LeaseId,
}

/// The generations of a key. Most keys of a registry or config center, and every key of a
/// bulk load, are written once between compactions: for them only the revision is kept,
/// 16 bytes inside the index's node instead of a generation of 48. A million keys written
/// once take about 65 MiB less than before this form (benchmarks/notes.md).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Lives {
    /// One open generation with one put, at this revision: created and last modified there,
    /// version 1.
    Once(Revision),
    /// Any other history: generations oldest first; the last one is open (maybe empty, after
    /// a tombstone). Empty for a key with nothing indexed.
    Many(Vec<Generation>),
}

impl Default for Lives {
    fn default() -> Self {
        Lives::Many(Vec::new())
    }
}

impl Generation {
    /// The generation of a key written once, at `rev`.
    fn once(rev: Revision) -> Generation {
        Generation {
            ver: 1,
            created: rev,
            revs: smallvec::smallvec![rev],
        }
    }

    /// The revision of its only put when this is what [`Generation::once`] makes.
    fn as_once(&self) -> Option<Revision> {
        match self.revs.as_slice() {
            [rev] if self.ver == 1 && self.created == *rev => Some(*rev),
            _ => None,
        }
    }
}

/// What [`Index::put`] reports about the key it just updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// Revision that created the key's current generation (`create_revision`).
    pub created: Revision,
    /// Puts in the current generation including this one (`version`).
    pub version: i64,
    /// The lease the key was attached to before this put (0 for none).
    pub prev_lease: LeaseId,
}

/// What the index knows about the version of a key visible at some revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Revision of the visible put (the row to fetch; its main part is the `mod_revision`).
    pub modified: Revision,
    /// Revision that created the key (`create_revision`).
    pub created: Revision,
    /// Number of puts since creation (`version`).
    pub version: i64,
}

impl KeyHistory {
    /// The generations, to change them (leaving the `Once` form).
    fn generations_mut(&mut self) -> &mut Vec<Generation> {
        if let Lives::Once(rev) = self.lives {
            self.lives = Lives::Many(vec![Generation::once(rev)]);
        }
        match &mut self.lives {
            Lives::Many(g) => g,
            Lives::Once(_) => unreachable!("replaced just above"),
        }
    }

    fn put(&mut self, rev: Revision) {
        if matches!(&self.lives, Lives::Many(g) if g.is_empty()) {
            self.lives = Lives::Once(rev);
            return;
        }
        let gens = self.generations_mut();
        if gens.is_empty() {
            gens.push(Generation::default());
        }
        let g = gens.last_mut().expect("pushed above");
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    /// Ends the current generation at `rev` and returns the lease the key had.
    fn tombstone(&mut self, rev: Revision) -> LeaseId {
        self.put(rev);
        self.generations_mut().push(Generation::default());
        std::mem::take(&mut self.lease)
    }

    /// The current generation's creation revision and version (after a put).
    fn current(&self) -> (Revision, i64) {
        match &self.lives {
            Lives::Once(rev) => (*rev, 1),
            Lives::Many(g) => g
                .last()
                .map_or((Revision::default(), 0), |g| (g.created, g.ver)),
        }
    }

    fn restore(&mut self, created: Revision, modified: Revision, ver: i64) {
        let g = Generation {
            ver,
            created,
            revs: smallvec::smallvec![modified],
        };
        let fresh = matches!(&self.lives, Lives::Many(gens) if gens.is_empty());
        match g.as_once() {
            Some(rev) if fresh => self.lives = Lives::Once(rev),
            _ => self.generations_mut().push(g),
        }
    }

    /// True when the key has no indexed revision left.
    fn is_empty(&self) -> bool {
        match &self.lives {
            Lives::Once(_) => false,
            Lives::Many(g) => g.iter().all(|g| g.revs.is_empty()),
        }
    }

    /// The generation holding the key's state at `rev`, or `None` when the key did not exist.
    fn find_generation(gens: &[Generation], rev: i64) -> Option<&Generation> {
        let last = gens.len().checked_sub(1)?;
        for (i, g) in gens.iter().enumerate().rev() {
            let Some(newest) = g.revs.last() else {
                continue;
            };
            if i != last && newest.main <= rev {
                // The generation ended with a tombstone at or before `rev`.
                return None;
            }
            if g.revs[0].main <= rev {
                return Some(g);
            }
        }
        None
    }

    /// The key's visible version at `rev`, or `None` when it did not exist then.
    pub fn get(&self, rev: i64) -> Option<IndexEntry> {
        let gens = match &self.lives {
            Lives::Once(r) => {
                return (r.main <= rev).then_some(IndexEntry {
                    modified: *r,
                    created: *r,
                    version: 1,
                });
            }
            Lives::Many(gens) => gens,
        };
        let g = Self::find_generation(gens, rev)?;
        let n = g.revs.iter().rposition(|r| r.main <= rev)?;
        Some(IndexEntry {
            modified: g.revs[n],
            created: g.created,
            version: g.ver - (g.revs.len() - n - 1) as i64,
        })
    }

    /// The newest revision of the key (a put or a tombstone), if any is indexed.
    pub fn latest(&self) -> Option<Revision> {
        match &self.lives {
            Lives::Once(rev) => Some(*rev),
            Lives::Many(g) => g.iter().rev().find_map(|g| g.revs.last().copied()),
        }
    }

    /// The indexed revision just before `rev` (used for a watch event's `prev_kv`): the put
    /// visible at `rev.main - 1`, or `None` when the key did not exist then.
    pub fn previous(&self, rev: Revision) -> Option<IndexEntry> {
        // Changes inside one write never touch the same key twice, so `main - 1` is exact.
        self.get(rev.main - 1)
    }

    /// Drops revisions older than what is visible at `at_rev`, as etcd's `keyIndex.compact`.
    /// Revisions that stay on disk are added to `keep`.
    fn compact(&mut self, at_rev: i64, keep: &mut HashSet<Revision>) {
        match &mut self.lives {
            Lives::Once(rev) => {
                if rev.main <= at_rev {
                    keep.insert(*rev);
                }
            }
            Lives::Many(gens) => {
                Self::compact_generations(gens, at_rev, keep);
                // A key left with one put in one open generation takes the small form again.
                if let [g] = gens.as_slice()
                    && let Some(rev) = g.as_once()
                {
                    self.lives = Lives::Once(rev);
                }
            }
        }
    }

    fn compact_generations(gens: &mut Vec<Generation>, at_rev: i64, keep: &mut HashSet<Revision>) {
        if gens.is_empty() {
            return;
        }
        // The first generation that includes `at_rev` or was created after it.
        let mut gen_idx = 0;
        while gen_idx < gens.len() - 1 {
            let g = &gens[gen_idx];
            match g.revs.last() {
                Some(tomb) if tomb.main > at_rev => break,
                _ => gen_idx += 1,
            }
        }
        let is_last = gen_idx == gens.len() - 1;
        let g = &mut gens[gen_idx];
        if !g.revs.is_empty() {
            if let Some(i) = g.revs.iter().rposition(|r| r.main <= at_rev) {
                keep.insert(g.revs[i]);
                g.revs.drain(..i);
            }
            // A generation reduced to its tombstone is over: drop the tombstone too.
            if g.revs.len() == 1 && !is_last && g.revs[0].main <= at_rev {
                keep.remove(&g.revs[0]);
                gen_idx += 1;
            }
        }
        gens.drain(..gen_idx);
    }
}

/// The key index of the whole store: an ordered map from key to its history.
#[derive(Debug, Default)]
pub struct Index {
    /// Keys up to [`INLINE_KEY_BYTES`] bytes live inside the map's nodes, without an allocation.
    keys: BTreeMap<IndexKey, KeyHistory>,
}

/// The end of a range request, decoded from etcd's `range_end` conventions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeEnd<'a> {
    /// Empty `range_end`: exactly the one key.
    Single,
    /// `range_end` = `"\0"`: every key greater than or equal to the key.
    Unbounded,
    /// Keys in `[key, end)`.
    Before(&'a [u8]),
}

impl<'a> RangeEnd<'a> {
    /// Decodes a request's `range_end`, as etcd's `mkGteRange`.
    pub fn from_request(range_end: &'a [u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end),
        }
    }

    /// True when `key` (≥ the range's start) lies inside the range.
    pub fn contains_from(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            RangeEnd::Single => key == start,
            RangeEnd::Unbounded => key >= start,
            RangeEnd::Before(end) => key >= start && key < *end,
        }
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys with history in the index (live or not).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the index holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The history of one key.
    pub fn history(&self, key: &[u8]) -> Option<&KeyHistory> {
        self.keys.get(key)
    }

    /// Records a put of `key` at `rev` attaching it to `lease` (0 for none), with one search
    /// of the map. Returns the key's `create_revision` and `version` as of this put and the
    /// lease it had before.
    pub fn put(&mut self, key: &[u8], rev: Revision, lease: LeaseId) -> PutOutcome {
        let h = self.keys.entry(IndexKey::from_slice(key)).or_default();
        h.put(rev);
        let (created, version) = h.current();
        let prev_lease = std::mem::replace(&mut h.lease, lease);
        PutOutcome {
            created,
            version,
            prev_lease,
        }
    }

    /// Records a delete of `key` at `rev` and returns the lease the key had (0 for none).
    /// The key must be live.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> LeaseId {
        self.keys.get_mut(key).map_or(0, |h| h.tombstone(rev))
    }

    /// Live keys attached to a lease, with their lease, in key order.
    pub fn leased_keys(&self) -> impl Iterator<Item = (&[u8], LeaseId)> {
        self.keys
            .iter()
            .filter(|(_, h)| h.lease != 0)
            .map(|(k, h)| (k.as_slice(), h.lease))
    }

    /// Rebuilds a key's history from a disk row during recovery, as etcd's `restore`. Rows
    /// must come in revision order; `lease` is the row's lease.
    pub fn restore(
        &mut self,
        key: &[u8],
        created: Revision,
        modified: Revision,
        version: i64,
        tombstone: bool,
        lease: LeaseId,
    ) {
        match self.keys.get_mut(key) {
            Some(h) if tombstone => {
                h.tombstone(modified);
            }
            // After a tombstone a put starts a generation whose creation is itself.
            Some(h) => {
                h.put(modified);
                h.lease = lease;
            }
            None if tombstone => {}
            None => {
                let mut h = KeyHistory::default();
                h.restore(created, modified, version);
                h.lease = lease;
                self.keys.insert(IndexKey::from_slice(key), h);
            }
        }
    }

    /// Visits the keys in `[key, end)` visible at `rev` in key order, calling `f` with each key
    /// and its entry; stops when `f` returns false.
    pub fn visit(
        &self,
        key: &[u8],
        end: RangeEnd<'_>,
        rev: i64,
        mut f: impl FnMut(&[u8], IndexEntry) -> bool,
    ) {
        let upper = match end {
            RangeEnd::Single => {
                if let Some(e) = self.keys.get(key).and_then(|h| h.get(rev)) {
                    f(key, e);
                }
                return;
            }
            RangeEnd::Unbounded => Bound::Unbounded,
            RangeEnd::Before(e) => {
                if e <= key {
                    return;
                }
                Bound::Excluded(e)
            }
        };
        let range = self.keys.range::<[u8], _>((Bound::Included(key), upper));
        for (k, h) in range {
            if let Some(e) = h.get(rev)
                && !f(k, e)
            {
                return;
            }
        }
    }

    /// Compacts every key's history at `at_rev` and returns the revisions at or below `at_rev`
    /// that must stay on disk; every other row at or below `at_rev` can be deleted.
    pub fn compact(&mut self, at_rev: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        self.keys.retain(|_, h| {
            h.compact(at_rev, &mut keep);
            !h.is_empty()
        });
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn versions_and_generations() {
        let mut idx = Index::new();
        assert_eq!(
            idx.put(b"a", r(2), 7),
            PutOutcome {
                created: r(2),
                version: 1,
                prev_lease: 0
            }
        );
        assert_eq!(
            idx.put(b"a", r(3), 0),
            PutOutcome {
                created: r(2),
                version: 2,
                prev_lease: 7
            }
        );
        assert_eq!(idx.tombstone(b"a", r(4)), 0);
        assert_eq!(
            idx.put(b"a", r(5), 9),
            PutOutcome {
                created: r(5),
                version: 1,
                prev_lease: 0
            }
        );

        let h = idx.history(b"a").unwrap();
        assert_eq!(h.get(1), None);
        assert_eq!(
            h.get(3),
            Some(IndexEntry {
                modified: r(3),
                created: r(2),
                version: 2
            })
        );
        assert_eq!(h.get(4), None);
        assert_eq!(
            h.get(9),
            Some(IndexEntry {
                modified: r(5),
                created: r(5),
                version: 1
            })
        );
        assert_eq!(idx.leased_keys().collect::<Vec<_>>(), vec![(&b"a"[..], 9)]);
        assert_eq!(idx.tombstone(b"a", r(6)), 9);
        assert_eq!(idx.leased_keys().count(), 0);
    }

    #[test]
    fn compaction_keeps_visible_revision() {
        let mut idx = Index::new();
        idx.put(b"a", r(2), 0);
        idx.put(b"a", r(3), 0);
        idx.put(b"b", r(4), 0);
        idx.tombstone(b"b", r(5));
        let keep = idx.compact(4);
        assert!(keep.contains(&r(3)));
        assert!(keep.contains(&r(4)));
        assert_eq!(idx.history(b"a").unwrap().get(4).unwrap().version, 2);
        let keep = idx.compact(5);
        assert!(keep.contains(&r(3)));
        assert!(!keep.contains(&r(5)));
        assert!(idx.history(b"b").is_none());
    }

    #[test]
    fn a_key_written_once_takes_the_small_form_and_leaves_it_when_changed() {
        let mut idx = Index::new();
        idx.put(b"a", r(2), 0);
        assert!(matches!(idx.history(b"a").unwrap().lives, Lives::Once(_)));
        idx.put(b"a", r(3), 0);
        assert!(matches!(idx.history(b"a").unwrap().lives, Lives::Many(_)));
        let h = idx.history(b"a").unwrap();
        assert_eq!(h.get(2).unwrap().version, 1);
        assert_eq!(h.get(3).unwrap().version, 2);
        // Compaction leaves one put of version 2: still the general form.
        idx.compact(3);
        assert!(matches!(idx.history(b"a").unwrap().lives, Lives::Many(_)));
        // A key deleted and created again, compacted past the tombstone: small again.
        idx.put(b"b", r(4), 0);
        idx.tombstone(b"b", r(5));
        idx.put(b"b", r(6), 0);
        idx.compact(6);
        assert!(matches!(idx.history(b"b").unwrap().lives, Lives::Once(_)));
        assert_eq!(
            idx.history(b"b").unwrap().get(6),
            Some(IndexEntry {
                modified: r(6),
                created: r(6),
                version: 1
            })
        );
        // Recovery builds the small form from a row of version 1 created by itself.
        let mut idx = Index::new();
        idx.restore(b"c", r(7), r(7), 1, false, 0);
        idx.restore(b"d", r(7), r(8), 2, false, 0);
        assert!(matches!(idx.history(b"c").unwrap().lives, Lives::Once(_)));
        assert!(matches!(idx.history(b"d").unwrap().lives, Lives::Many(_)));
        assert_eq!(idx.history(b"d").unwrap().get(8).unwrap().version, 2);
    }

    /// What a key looked like at a revision: (modified, created, version), from the list of
    /// its changes (`true`: a put) alone.
    fn model_get(changes: &[(i64, bool)], rev: i64) -> Option<(i64, i64, i64)> {
        let mut state = None;
        for &(at, put) in changes.iter().filter(|(at, _)| *at <= rev) {
            state = match (put, state) {
                (true, Some((_, created, ver))) => Some((at, created, ver + 1)),
                (true, None) => Some((at, at, 1)),
                (false, _) => None,
            };
        }
        state
    }

    proptest::proptest! {
        /// Any sequence of puts, deletes and compactions of one key answers every read at or
        /// after the compaction revision as the list of changes says, in either form.
        #[test]
        fn histories_answer_as_their_changes_say(
            ops in proptest::collection::vec(0u8..4, 1..40),
            compact_at in proptest::collection::vec(0usize..40, 0..3),
        ) {
            let mut idx = Index::new();
            let mut changes = Vec::new();
            let mut live = false;
            let mut floor = 0;
            for (i, op) in ops.iter().enumerate() {
                let rev = i as i64 + 1;
                if *op == 0 && live {
                    idx.tombstone(b"k", r(rev));
                    changes.push((rev, false));
                    live = false;
                } else {
                    let out = idx.put(b"k", r(rev), 0);
                    changes.push((rev, true));
                    live = true;
                    let (_, created, ver) = model_get(&changes, rev).unwrap();
                    proptest::prop_assert_eq!((out.created.main, out.version), (created, ver));
                }
                if compact_at.contains(&i) {
                    idx.compact(rev);
                    floor = rev;
                }
                let last = rev;
                for at in floor..=last {
                    let got = idx
                        .history(b"k")
                        .and_then(|h| h.get(at))
                        .map(|e| (e.modified.main, e.created.main, e.version));
                    proptest::prop_assert_eq!(got, model_get(&changes, at), "at {}", at);
                }
            }
        }
    }
}
