//! The audit log over HTTP: `GET /mast/v1/audit` lists entries (who, from where, through
//! which API, when, the key with its value before and after, or the auth change), filtered
//! and paged by sequence number; `GET /mast/v1/audit/verify` checks the hash chain. Admin
//! only (Mast's `root` role, or anyone while auth is off). See [`mast_mvcc::audit`] for what
//! is recorded.

use axum::Json;
use axum::extract::State;
use base64::Engine;
use mast_mvcc::{AuditBreak, AuditEntry};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, ApiResult, Call, QueryParams};

/// Entries answered when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;

/// Most entries answered at once.
pub const MAX_LIMIT: usize = 1000;

/// Most entries looked at for one filtered page.
const MAX_SCAN: usize = 100_000;

/// Filters of `GET /mast/v1/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditQuery {
    /// Entries with a sequence number above this (default 0: from the oldest kept).
    pub after: Option<u64>,
    /// Most entries to answer (1–1000, default 100).
    pub limit: Option<usize>,
    /// Only entries whose key starts with this.
    pub prefix: Option<String>,
    /// Only entries by this user.
    pub user: Option<String>,
    /// Only `put`, `delete` or `auth` entries.
    pub action: Option<String>,
    /// Only entries made through this API (`etcd`, `etcd-http`, `mast`, `nacos`, `system`).
    pub api: Option<String>,
}

/// A value as JSON: its text when it is UTF-8, else `{"base64": …}`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// UTF-8 text.
    Text(String),
    /// Other bytes.
    Bytes {
        /// The bytes, base64.
        base64: String,
    },
}

fn value(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(t) => Value::Text(t.to_string()),
        Err(_) => Value::Bytes {
            base64: base64::engine::general_purpose::STANDARD.encode(b),
        },
    }
}

fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryView {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Store revision of the change.
    pub revision: i64,
    /// When, in milliseconds since the Unix epoch (the clock of the member that took it).
    pub time: u64,
    /// Who (empty with auth off; `lease-expiry`, `health-probe`, … for the server's own work).
    pub user: String,
    /// The client's address, when known.
    pub address: String,
    /// Through which API.
    pub api: String,
    /// `put`, `delete` or `auth`.
    pub action: &'static str,
    /// The key (absent for auth changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Value>,
    /// The value before (absent: the key did not exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The value after (absent: deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// For auth changes, what changed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// This entry's hash, hex.
    pub hash: String,
    /// The previous entry's hash, hex.
    pub prev_hash: String,
}

impl From<&AuditEntry> for EntryView {
    fn from(e: &AuditEntry) -> Self {
        EntryView {
            seq: e.seq,
            revision: e.revision,
            time: e.origin.time_ms,
            user: e.origin.user.clone(),
            address: e.origin.addr.clone(),
            api: e.origin.api.clone(),
            action: e.action.name(),
            key: (!e.key.is_empty()).then(|| value(&e.key)),
            before: e.before.as_deref().map(value),
            after: e.after.as_deref().map(value),
            detail: e.detail.clone(),
            hash: hex(&e.hash),
            prev_hash: hex(&e.prev_hash),
        }
    }
}

/// `GET /mast/v1/audit` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    /// Matching entries, oldest first.
    pub entries: Vec<EntryView>,
    /// Pass as `after` for the next page: the last sequence number looked at.
    pub next: u64,
}

/// `GET /mast/v1/audit`.
///
/// # Errors
/// 400 for a bad filter, 401/403 for a caller without the root role, storage errors.
pub async fn list(
    State(st): State<AppState>,
    Call(caller): Call,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    if let Some(a) = &q.action
        && !["put", "delete", "auth"].contains(&a.as_str())
    {
        return Err(ApiError::bad_request("action must be put, delete or auth"));
    }
    let matches = |e: &AuditEntry| {
        q.prefix
            .as_ref()
            .is_none_or(|p| e.key.starts_with(p.as_bytes()))
            && q.user.as_ref().is_none_or(|u| e.origin.user == *u)
            && q.action.as_ref().is_none_or(|a| e.action.name() == a)
            && q.api.as_ref().is_none_or(|a| e.origin.api == *a)
    };
    let mut after = q.after.unwrap_or(0);
    let mut entries = Vec::new();
    let mut scanned = 0;
    while entries.len() < limit && scanned < MAX_SCAN {
        let batch = st.node.audit_entries(&caller, after, MAX_LIMIT)?;
        let Some(last) = batch.last() else { break };
        let last_seq = last.seq;
        for e in &batch {
            scanned += 1;
            after = e.seq;
            if matches(e) {
                entries.push(EntryView::from(e));
                if entries.len() == limit {
                    break;
                }
            }
        }
        if after < last_seq {
            break;
        }
    }
    Ok(Json(AuditPage {
        entries,
        next: after,
    }))
}

/// `GET /mast/v1/audit/verify` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// Whether the chain is intact.
    pub ok: bool,
    /// Entries checked (intact chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// Oldest kept sequence number (intact chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<u64>,
    /// Newest sequence number (intact chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<u64>,
    /// The newest entry's hash, hex: keep it elsewhere to detect a rewrite of the tail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// The entry where the chain breaks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    /// Why it is broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /mast/v1/audit/verify`: checks every kept entry's hash and link on this member.
///
/// # Errors
/// 401/403 for a caller without the root role, storage errors. A broken chain is a 200
/// answer with `ok: false`.
pub async fn verify(
    State(st): State<AppState>,
    Call(caller): Call,
) -> ApiResult<Json<VerifyReport>> {
    Ok(Json(match st.node.verify_audit(&caller)? {
        Ok(r) => VerifyReport {
            ok: true,
            entries: Some(r.entries),
            first: Some(r.first),
            last: Some(r.last),
            head: Some(hex(&r.head)),
            broken_at: None,
            error: None,
        },
        Err(b) => VerifyReport {
            ok: false,
            entries: None,
            first: None,
            last: None,
            head: None,
            broken_at: Some(match b {
                AuditBreak::Malformed { seq, .. }
                | AuditBreak::Altered { seq }
                | AuditBreak::Unlinked { seq, .. } => seq,
            }),
            error: Some(b.to_string()),
        },
    }))
}
