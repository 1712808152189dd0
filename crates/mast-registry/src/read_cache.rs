//! Rendered answers of `GET /mast/v1/configs/{namespace}/{group}/{dataId}`, kept while they are
//! current.
//!
//! A config's answer depends only on its content key and its metadata key. An entry remembers
//! the `mod_revision` of each (the metadata's `None` when absent) it was rendered from; a read
//! looks both up in the store's in-memory index ([`mast_server::Node::mod_revisions`]) and uses
//! the entry only when they are unchanged, so a cached answer is always the one a fresh read
//! would give. Auth is checked on every read, before the cache.
//!
//! Bounded: answers over [`MAX_ENTRY_BYTES`] are not kept, and when the kept bytes pass
//! [`MAX_TOTAL_BYTES`] or the entries [`MAX_ENTRIES`], the cache starts empty again.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

/// Largest answer kept, in bytes.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024;
/// Most bytes of answers kept.
pub const MAX_TOTAL_BYTES: usize = 8 * 1024 * 1024;
/// Most answers kept.
pub const MAX_ENTRIES: usize = 4096;

struct Entry {
    content_rev: i64,
    meta_rev: Option<i64>,
    body: Bytes,
}

/// The cache; one per API router.
#[derive(Default)]
pub struct ReadCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
}

impl ReadCache {
    /// The answer for content key `key` rendered from exactly these revisions, if kept.
    pub fn get(&self, key: &str, content_rev: i64, meta_rev: Option<i64>) -> Option<Bytes> {
        let inner = self.inner.lock().expect("read cache lock");
        inner
            .entries
            .get(key)
            .filter(|e| e.content_rev == content_rev && e.meta_rev == meta_rev)
            .map(|e| e.body.clone())
    }

    /// Keeps `body`, rendered from these revisions, as the answer for `key` (replacing an
    /// older one), unless it is too large.
    pub fn put(&self, key: &str, content_rev: i64, meta_rev: Option<i64>, body: Bytes) {
        if body.len() > MAX_ENTRY_BYTES {
            return;
        }
        let mut inner = self.inner.lock().expect("read cache lock");
        if let Some(old) = inner.entries.get(key)
            && old.content_rev > content_rev
        {
            // A slower reader rendered an older version; keep the newer one.
            return;
        }
        if inner.bytes + body.len() > MAX_TOTAL_BYTES || inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.bytes += body.len();
        let entry = Entry {
            content_rev,
            meta_rev,
            body,
        };
        if let Some(old) = inner.entries.insert(key.to_string(), entry) {
            inner.bytes -= old.body.len();
        }
    }

    /// Answers kept now.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("read cache lock").entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_for_the_same_revisions_and_stays_bounded() {
        let c = ReadCache::default();
        c.put("k", 5, Some(5), Bytes::from_static(b"v5"));
        assert_eq!(c.get("k", 5, Some(5)).as_deref(), Some(&b"v5"[..]));
        assert_eq!(c.get("k", 6, Some(6)), None);
        assert_eq!(c.get("k", 5, None), None);
        // An older rendering does not replace a newer one.
        c.put("k", 4, Some(4), Bytes::from_static(b"v4"));
        assert_eq!(c.get("k", 5, Some(5)).as_deref(), Some(&b"v5"[..]));
        // Too large: not kept.
        c.put("big", 1, None, Bytes::from(vec![0u8; MAX_ENTRY_BYTES + 1]));
        assert_eq!(c.get("big", 1, None), None);
        for i in 0..(MAX_ENTRIES + 10) {
            c.put(&format!("k{i}"), 1, None, Bytes::from_static(b"x"));
        }
        assert!(c.len() <= MAX_ENTRIES);
        assert!(!c.is_empty());
    }
}
