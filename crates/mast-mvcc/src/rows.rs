//! The redb tables and the encoding of their rows.
//!
//! - `kv`: revision (as `u128`, see [`Revision::to_u128`]) → one flag byte (1 = tombstone)
//!   and an encoded `mvccpb.KeyValue`. Ordered by revision, so watch replay and compaction are
//!   range scans.
//! - `meta`: named counters (current and compacted revision, applied index, auth flag and
//!   revision) and the raised alarms.
//! - `lease`: lease ID → granted TTL in seconds.
//! - `auth_users` / `auth_roles`: name → encoded `authpb.User` / `authpb.Role`.
//! - `notes`: name → bytes the log's owner stores with its entries (opaque to the store).

use mast_proto::mvccpb::{Event, KeyValue, event::EventType};
use prost::Message;
use redb::{ReadableTable, TableDefinition};

use crate::error::StorageError;
use crate::revision::Revision;

/// Rows of the key space: revision → flag byte + encoded `mvccpb.KeyValue`.
pub(crate) const KV: TableDefinition<u128, &[u8]> = TableDefinition::new("kv");
/// Small named counters.
pub(crate) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Leases: ID → granted TTL in seconds.
pub(crate) const LEASES: TableDefinition<i64, i64> = TableDefinition::new("lease");
/// Auth users: name → encoded `authpb.User` (password holds the bcrypt hash).
pub(crate) const AUTH_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_users");
/// Auth roles: name → encoded `authpb.Role`.
pub(crate) const AUTH_ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_roles");

/// Notes of the log's owner, written with the entries they describe: name → bytes the store
/// does not interpret (a Raft log's owner keeps the applied log ID and membership here).
pub(crate) const NOTES: TableDefinition<&str, &[u8]> = TableDefinition::new("notes");

/// `meta` key: the store revision after the last applied entry.
pub(crate) const META_REVISION: &str = "current_revision";
/// `meta` key: the compacted revision.
pub(crate) const META_COMPACT: &str = "compact_revision";
/// `meta` key: the index of the last applied log entry.
pub(crate) const META_APPLIED: &str = "applied_index";
/// `meta` key: 1 when auth is enabled.
pub(crate) const META_AUTH_ENABLED: &str = "auth_enabled";
/// `meta` key: the auth revision.
pub(crate) const META_AUTH_REVISION: &str = "auth_revision";

/// `meta` keys of raised alarms start with this: `alarm/<member ID, 16 hex digits>/<etcd
/// AlarmType number>` → 1.
pub(crate) const META_ALARM_PREFIX: &str = "alarm/";

/// The `meta` key of alarm `alarm` of member `member`.
pub(crate) fn alarm_key(member: u64, alarm: i32) -> String {
    format!("{META_ALARM_PREFIX}{member:016x}/{alarm}")
}

/// The member and alarm type of a `meta` key made by [`alarm_key`].
pub(crate) fn parse_alarm_key(key: &str) -> Option<(u64, i32)> {
    let (member, alarm) = key.strip_prefix(META_ALARM_PREFIX)?.split_once('/')?;
    Some((u64::from_str_radix(member, 16).ok()?, alarm.parse().ok()?))
}

/// Flag byte of a row that records a delete.
const TOMBSTONE: u8 = 1;

/// One row of the `kv` table, decoded.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Row {
    pub(crate) tombstone: bool,
    pub(crate) kv: KeyValue,
}

/// Encodes a `kv` row.
pub(crate) fn encode_row(tombstone: bool, kv: &KeyValue) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(if tombstone { TOMBSTONE } else { 0 });
    kv.encode_raw(&mut buf);
    buf
}

/// Decodes a row. The row is copied once into a shared buffer and the key and value are
/// slices of it, so a response that encodes them (prost clones each `Bytes` field it writes)
/// and drops them costs two allocations per row, not four.
///
/// # Errors
/// [`StorageError`] for an empty row or one whose value does not decode.
pub(crate) fn decode_row(bytes: &[u8]) -> Result<Row, StorageError> {
    let (flag, rest) = bytes
        .split_first()
        .ok_or_else(|| StorageError("empty row".into()))?;
    Ok(Row {
        tombstone: *flag == TOMBSTONE,
        kv: KeyValue::decode(bytes::Bytes::copy_from_slice(rest))?,
    })
}

/// Reads one row by revision from any redb table handle (read or write transaction).
///
/// # Errors
/// [`StorageError`] when the row is missing (the index names it) or does not decode.
pub(crate) fn read_row<T: ReadableTable<u128, &'static [u8]>>(
    table: &T,
    rev: Revision,
) -> Result<Row, StorageError> {
    let guard = table
        .get(rev.to_u128())?
        .ok_or_else(|| StorageError(format!("index names revision {rev} missing from disk")))?;
    decode_row(guard.value())
}

/// The watch event a row records.
pub(crate) fn row_to_event(row: Row) -> Event {
    Event {
        r#type: if row.tombstone {
            EventType::Delete
        } else {
            EventType::Put
        } as i32,
        kv: Some(row.kv),
        prev_kv: None,
    }
}
