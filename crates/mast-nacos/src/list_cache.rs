//! Instance list answers (`GET /nacos/v1/ns/instance/list`) kept by what they were made from:
//! every key of the service's prefix at its mod revision, the health each instance had, and
//! the service settings' mod revision. A request first looks the keys and mod revisions up in
//! the in-memory index (with its own permissions, nothing read from disk); when all of that is
//! unchanged and every instance is as healthy as it was, the kept bytes are answered with
//! `lastRefTime` set to now, instead of reading and parsing every instance and serializing the
//! answer again. Health is re-checked on every request (an ephemeral instance turns unhealthy
//! as its last beat ages).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use mast_proto::mvccpb::KeyValue;
use mast_server::Node;

use crate::naming_v1::Health;

/// Most answers kept; all are dropped when it is reached (a new set builds up from use).
const MAX_ENTRIES: usize = 4096;

/// Where `lastRefTime`'s value goes in a kept answer (the last occurrence: the answer's own
/// field comes after its hosts, and a host's metadata value is always a quoted string).
const LAST_REF: &[u8] = b",\"lastRefTime\":";

struct Entry {
    /// `(key, mod_revision)` of every key of the prefix, in order.
    keys: Vec<(Bytes, i64)>,
    /// Per key: what decided the instance's health and what it was (`None`: not an
    /// instance).
    health: Vec<Option<(Health, bool)>>,
    meta_rev: Option<i64>,
    /// The answer before and after `lastRefTime`'s value.
    head: Bytes,
    tail: Bytes,
}

/// The cache; one per Nacos API.
#[derive(Default)]
pub struct ListCache {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn join(head: &Bytes, tail: &Bytes) -> Bytes {
    let ms = now_ms().to_string();
    let mut out = BytesMut::with_capacity(head.len() + ms.len() + tail.len());
    out.put_slice(head);
    out.put_slice(ms.as_bytes());
    out.put_slice(tail);
    out.freeze()
}

impl ListCache {
    /// The kept answer for `key` if it was made from exactly `keys` (each `(key,
    /// mod_revision)`, in key order) and `meta_rev`, and every instance is as healthy now as
    /// it was then.
    pub fn get(
        &self,
        key: &str,
        node: &Node,
        keys: &[(Vec<u8>, i64)],
        meta_rev: Option<i64>,
    ) -> Option<Bytes> {
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()?;
        let same = entry.meta_rev == meta_rev
            && entry.keys.len() == keys.len()
            && entry
                .keys
                .iter()
                .zip(keys)
                .all(|((k, rev), (key, mod_rev))| rev == mod_rev && k[..] == key[..]);
        if !same {
            return None;
        }
        let healthy_as_before = entry
            .health
            .iter()
            .all(|h| h.is_none_or(|(source, was)| source.now(node) == was));
        healthy_as_before.then(|| join(&entry.head, &entry.tail))
    }

    /// Keeps `json` (serialized with `lastRefTime` 0) as the answer made from `kvs`, `health`
    /// and `meta_rev`, and returns it with `lastRefTime` set to now.
    pub fn put(
        &self,
        key: String,
        kvs: &[KeyValue],
        health: Vec<Option<(Health, bool)>>,
        meta_rev: Option<i64>,
        json: Vec<u8>,
    ) -> Bytes {
        let json = Bytes::from(json);
        let Some(at) = json
            .windows(LAST_REF.len())
            .rposition(|w| w == LAST_REF)
            .map(|i| i + LAST_REF.len())
        else {
            return json;
        };
        // The serialized value is the `0` the caller set.
        let (head, tail) = (json.slice(..at), json.slice(at + 1..));
        let answer = join(&head, &tail);
        let entry = Arc::new(Entry {
            keys: kvs
                .iter()
                .map(|kv| (kv.key.clone(), kv.mod_revision))
                .collect(),
            health,
            meta_rev,
            head,
            tail,
        });
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, entry);
        answer
    }
}
