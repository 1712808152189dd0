//! Who is watching what on this member: every etcd watcher (gRPC, the JSON gateway, and the
//! `/mast/v1/events` streams built on them) and whatever else a protocol crate registers (the
//! Nacos API's service subscriptions), so an operator can see who depends on a key range
//! (the console's "who watches this service").
//!
//! An entry lives as long as its [`WatchingGuard`]: dropping the guard (the watcher cancelled,
//! the stream or connection gone) removes it. Per member, in memory, rebuilt by the clients as
//! they watch again after a restart — it is not state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;

/// One watch, as the registry lists it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Watching {
    /// What watches: `etcd` (a gRPC watcher), `etcd-http` (the JSON gateway), `mast` (a
    /// `/mast/v1/events` stream), `nacos-grpc` (a Nacos 2.x subscription).
    pub kind: &'static str,
    /// First key of the watched range.
    #[serde(with = "lossy")]
    pub key: Vec<u8>,
    /// End of the range as etcd gives it (empty: the one key; `\0`: every key from `key`).
    #[serde(with = "lossy")]
    pub range_end: Vec<u8>,
    /// The client's address (empty when unknown).
    pub address: String,
    /// The user (empty with auth off).
    pub user: String,
    /// Since when, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

mod lossy {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v))
    }
}

impl Watching {
    /// Whether this watch sees some key of `[key, range_end)` (etcd's range conventions on
    /// both sides).
    pub fn overlaps(&self, key: &[u8], range_end: &[u8]) -> bool {
        let (a0, a1) = bounds(&self.key, &self.range_end);
        let (b0, b1) = bounds(key, range_end);
        below(&a0, b1.as_deref()) && below(&b0, a1.as_deref())
    }
}

/// `[start, end)`, `None` for no end: a single key `k` is `[k, k + "\0")`, `\0` as the end
/// means every key from `key` on.
fn bounds(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (key.to_vec(), Some(end))
        }
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

fn below(start: &[u8], end: Option<&[u8]>) -> bool {
    end.is_none_or(|e| start < e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, end: &[u8]) -> Watching {
        Watching {
            kind: "etcd",
            key: key.as_bytes().to_vec(),
            range_end: end.to_vec(),
            address: String::new(),
            user: String::new(),
            since_ms: 0,
        }
    }

    #[test]
    fn ranges_overlap_as_etcd_reads_them() {
        let svc = (b"/services/a/".as_slice(), b"/services/a0".as_slice());
        assert!(
            w("/services/", b"/services0").overlaps(svc.0, svc.1),
            "a parent prefix"
        );
        assert!(
            w("/services/a/i1", b"").overlaps(svc.0, svc.1),
            "one key inside"
        );
        assert!(w("\0", &[0]).overlaps(svc.0, svc.1), "every key");
        assert!(
            w("/services/a/", &[0]).overlaps(svc.0, svc.1),
            "from the prefix on"
        );
        assert!(
            !w("/services/b/", b"/services/b0").overlaps(svc.0, svc.1),
            "a sibling"
        );
        assert!(
            !w("/services/a", b"").overlaps(svc.0, svc.1),
            "the key before the range"
        );
        assert!(
            !w("/services/a0", &[0]).overlaps(svc.0, svc.1),
            "from the end on"
        );
        assert!(w("/k", b"").overlaps(b"/k", b""), "the same key");
    }
}

/// The registry of a member's watches.
#[derive(Debug, Default)]
pub struct WatchRegistry {
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Watching>>,
}

/// Keeps one entry in the [`WatchRegistry`]; dropping it removes the entry.
#[derive(Debug)]
pub struct WatchingGuard {
    registry: Weak<WatchRegistry>,
    id: u64,
}

impl Drop for WatchingGuard {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.lock().remove(&self.id);
        }
    }
}

impl WatchRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watching>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `w`; it stays listed while the returned guard lives.
    pub fn register(self: &Arc<Self>, w: Watching) -> WatchingGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, w);
        WatchingGuard {
            registry: Arc::downgrade(self),
            id,
        }
    }

    /// Every watch that sees some key of `[key, range_end)`, oldest first.
    pub fn overlapping(&self, key: &[u8], range_end: &[u8]) -> Vec<Watching> {
        let mut v: Vec<Watching> = self
            .lock()
            .values()
            .filter(|w| w.overlaps(key, range_end))
            .cloned()
            .collect();
        v.sort_by_key(|w| w.since_ms);
        v
    }

    /// How many watches are listed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
