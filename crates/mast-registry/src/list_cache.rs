//! Rendered instances of `GET /mast/v1/services/{service}/instances`, kept while the service's
//! keys are unchanged.
//!
//! An instance's JSON depends on its key and value, except for the lease fields (`healthy`,
//! `ttl`, …), which change with time. So each instance is kept as two pieces of JSON text, the
//! fields before the lease fields and the fields after them, and the lease fields are written
//! fresh on every read. An entry is the rendered instances of one service together with the
//! summary of the service's key range they were rendered from (key count and highest
//! `mod_revision`, [`mast_server::Node::range_summary`]); a list uses the entry only while the
//! summary at the current revision is the same, which means the keys and values are too. Auth
//! is checked on every list, before the cache.
//!
//! Bounded: services rendering to more than [`MAX_ENTRY_BYTES`] are not kept, and when the
//! kept bytes pass [`MAX_TOTAL_BYTES`] or the services [`MAX_ENTRIES`], the cache starts empty
//! again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mast_proto::mvccpb::KeyValue;
use mast_server::Node;

use crate::instances::InstanceView;

/// Largest rendered service kept, in bytes.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Most bytes of rendered services kept.
pub const MAX_TOTAL_BYTES: usize = 16 * 1024 * 1024;
/// Most services kept.
pub const MAX_ENTRIES: usize = 4096;

/// One instance's JSON without its lease fields.
#[derive(Debug)]
pub struct RenderedInstance {
    /// From `{` up to the field before `healthy`.
    head: String,
    /// From `,"createRevision"` to the closing `}`.
    tail: String,
    /// The key's lease (0: none).
    lease: i64,
    /// The instance's `enabled`.
    enabled: bool,
    /// The `healthy` its JSON holds (true when absent).
    stored_healthy: bool,
}

/// The lease fields of one instance as of now.
#[derive(Clone, Copy, Debug)]
pub struct LeaseFields {
    /// Lease alive, or no lease.
    pub healthy: bool,
    /// The key's lease (0: none).
    pub lease: i64,
    /// `(seconds left, granted TTL in seconds)` while the lease is alive.
    pub timing: Option<(i64, i64)>,
}

impl LeaseFields {
    /// The fields of an instance whose key is attached to `lease` (0: none), from the node's
    /// lessor: an ephemeral instance is healthy while its lease is alive; a persistent one
    /// (no lease) as `stored_healthy`, the `healthy` its JSON holds (true when absent; set
    /// to false by the Nacos API or an operator, as Nacos marks persistent instances).
    pub fn of(node: &Node, lease: i64, stored_healthy: bool) -> LeaseFields {
        let timing = (lease != 0).then(|| node.lease_timing(lease)).flatten();
        LeaseFields {
            healthy: if lease == 0 {
                stored_healthy
            } else {
                timing.is_some()
            },
            lease,
            timing: timing.map(|t| (t.remaining, t.granted_ttl)),
        }
    }
}

impl RenderedInstance {
    /// Renders the instance stored in `kv`, or `None` when it is not one (as
    /// [`InstanceView::from_kv`]).
    pub fn new(node: &Node, kv: &KeyValue) -> Option<RenderedInstance> {
        let view = InstanceView::from_kv(node, kv)?;
        let json = serde_json::to_string(&view).ok()?;
        // The lease fields and the revisions are the last fields and hold no objects, so the
        // last occurrences of their names are theirs (a metadata label may be named
        // `healthy`, but it comes earlier). Inside a JSON string a quote is always escaped,
        // so `,"` never appears in one.
        let mid = json.rfind(",\"healthy\":")?;
        let tail = json.rfind(",\"createRevision\":")?;
        (mid < tail).then(|| RenderedInstance {
            head: json[..mid].to_string(),
            tail: json[tail..].to_string(),
            lease: kv.lease,
            enabled: view.enabled,
            stored_healthy: crate::instances::stored_healthy(&view.extra),
        })
    }

    /// Whether the instance is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The lease fields as of now.
    pub fn lease_fields(&self, node: &Node) -> LeaseFields {
        LeaseFields::of(node, self.lease, self.stored_healthy)
    }

    /// Appends the instance's JSON with `fields` to `out`; the same text
    /// `serde_json::to_string(&InstanceView)` gives.
    pub fn write(&self, fields: LeaseFields, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str(&self.head);
        let _ = write!(
            out,
            ",\"healthy\":{},\"ephemeral\":{}",
            fields.healthy,
            fields.lease != 0
        );
        if fields.lease != 0 {
            let _ = write!(out, ",\"leaseId\":\"{}\"", fields.lease);
        }
        if let Some((remaining, granted)) = fields.timing {
            let _ = write!(out, ",\"ttl\":{remaining},\"grantedTtl\":{granted}");
        }
        out.push_str(&self.tail);
    }

    fn bytes(&self) -> usize {
        self.head.len() + self.tail.len() + 32
    }
}

/// The rendered instances of one service and the range summary they were rendered from.
#[derive(Debug)]
pub struct ServiceEntry {
    count: usize,
    max_mod_revision: i64,
    /// The service's instances in key order.
    pub instances: Vec<RenderedInstance>,
    bytes: usize,
}

impl ServiceEntry {
    /// Renders the service's keys `kvs` (a whole prefix range, in key order). Keys that are not
    /// instances are skipped but still count in the summary, as they do in the range's.
    pub fn new(node: &Node, kvs: &[KeyValue]) -> ServiceEntry {
        let instances: Vec<RenderedInstance> = kvs
            .iter()
            .filter_map(|kv| RenderedInstance::new(node, kv))
            .collect();
        ServiceEntry {
            count: kvs.len(),
            max_mod_revision: kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0),
            bytes: instances.iter().map(RenderedInstance::bytes).sum(),
            instances,
        }
    }

    /// About how many bytes the instances' JSON takes with their lease fields.
    pub fn json_len(&self) -> usize {
        self.bytes + self.instances.len() * 96
    }
}

/// The cache; one per API router.
#[derive(Default)]
pub struct ListCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Arc<ServiceEntry>>,
    bytes: usize,
}

impl ListCache {
    /// The entry for `service` rendered from a range with this summary, if kept.
    pub fn get(
        &self,
        service: &str,
        count: usize,
        max_mod_revision: i64,
    ) -> Option<Arc<ServiceEntry>> {
        let inner = self.inner.lock().expect("list cache lock");
        inner
            .entries
            .get(service)
            .filter(|e| e.count == count && e.max_mod_revision == max_mod_revision)
            .cloned()
    }

    /// Keeps `entry` for `service` (replacing an older one), unless it is too large.
    pub fn put(&self, service: &str, entry: Arc<ServiceEntry>) {
        if entry.bytes > MAX_ENTRY_BYTES {
            return;
        }
        let mut inner = self.inner.lock().expect("list cache lock");
        if inner.bytes + entry.bytes > MAX_TOTAL_BYTES || inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.bytes += entry.bytes;
        if let Some(old) = inner.entries.insert(service.to_string(), entry) {
            inner.bytes -= old.bytes;
        }
    }
}
