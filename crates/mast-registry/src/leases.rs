//! `GET /mast/v1/leases/{id}`: a lease as etcd's `LeaseTimeToLive` shows it (granted TTL,
//! seconds left, how many keys), and for a lease that has ended, how it ended — expired (its
//! TTL ran out and the leader's lessor revoked it) or revoked by a client — and at which
//! revision its keys were deleted. The console's event stream uses it to say why a key went.
//! How a lease ended is what this member applied and remembers ([`mast_server::lease_ends`]).

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use crate::AppState;
use crate::error::{ApiError, ApiResult, Call, PathParams};

/// How a lease ended.
#[derive(Debug, Serialize)]
pub struct Ended {
    /// The revision of its keys' deletions (the revision current then, when it had none).
    pub revision: i64,
    /// `expired` or `revoked`.
    pub cause: &'static str,
}

/// `GET /mast/v1/leases/{id}` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseView {
    /// The lease ID, decimal (as etcd's JSON gateway writes it).
    pub id: String,
    /// The lease ID in hexadecimal (as `etcdctl` prints it).
    pub id_hex: String,
    /// Whether the lease is alive.
    pub alive: bool,
    /// Granted TTL in seconds (alive leases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    /// Whole seconds left before it expires (alive leases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// How many keys are attached (alive leases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<usize>,
    /// How it ended, when it has and this member knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
}

/// A lease ID as decimal, or hexadecimal after `0x`.
fn parse_id(s: &str) -> Option<i64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
    .filter(|id| *id > 0)
}

/// `GET /mast/v1/leases/{id}`: as `LeaseTimeToLive` without keys it needs no permission,
/// only a login while auth is on.
///
/// # Errors
/// 400 for an ID that is not a positive integer; 401 without a valid token while auth is on;
/// 404 for a lease that is not alive and whose end this member does not know (never granted,
/// or ended before this member started or long ago).
pub async fn get(
    State(st): State<AppState>,
    Call(caller): Call,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<LeaseView>> {
    let Some(lease) = parse_id(&id) else {
        return Err(ApiError::bad_request(format!(
            "lease id {id:?} is not a positive integer (decimal, or hexadecimal after 0x)"
        )));
    };
    let node = &st.node;
    node.authenticate_caller(&caller)?;
    let mut view = LeaseView {
        id: lease.to_string(),
        id_hex: format!("{lease:x}"),
        alive: false,
        ttl: None,
        remaining: None,
        keys: None,
        ended: None,
    };
    if let Some(t) = node.lease_timing(lease) {
        view.alive = true;
        view.ttl = Some(t.granted_ttl);
        view.remaining = Some(t.remaining);
        view.keys = node.lease_key_count(lease);
    } else if let Some(end) = node.lease_end(lease) {
        view.ended = Some(Ended {
            revision: end.revision,
            cause: end.cause.name(),
        });
    } else {
        return Err(ApiError::not_found(format!(
            "lease {lease:x} is not alive, and this member does not know how it ended"
        )));
    }
    Ok(Json(view))
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn ids_are_decimal_or_hex_and_positive() {
        assert_eq!(parse_id("123"), Some(123));
        assert_eq!(parse_id("0x7b"), Some(123));
        assert_eq!(parse_id("0"), None);
        assert_eq!(parse_id("-5"), None);
        assert_eq!(parse_id("7b"), None);
        assert_eq!(parse_id(""), None);
    }
}
