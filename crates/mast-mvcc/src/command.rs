//! Commands: the deterministic changes a log entry carries, their results, and their binary
//! encoding.
//!
//! A log entry holds a batch of [`Command`]s. Applying the same entries in the same order to
//! the same state gives the same state and the same results on every member (see
//! [`crate::Store::apply`]), so commands carry everything that must not differ between members:
//! lease IDs are picked by the proposer, passwords are hashed before the command is made.
//!
//! ## Encoding (format version 1)
//! An entry is encoded as
//!
//! ```text
//! u8      format version (1)
//! u32 LE  number of commands
//! then per command:
//!   u8      tag
//!   u32 LE  body length in bytes
//!   body
//! ```
//!
//! | tag | command | body |
//! |---|---|---|
//! | 1 | `Put` | protobuf `etcdserverpb.PutRequest` |
//! | 2 | `DeleteRange` | protobuf `etcdserverpb.DeleteRangeRequest` |
//! | 3 | `Txn` | protobuf `etcdserverpb.TxnRequest` |
//! | 4 | `Compact` | protobuf `etcdserverpb.CompactionRequest` |
//! | 5 | `LeaseGrant` | `i64 LE` ID, `i64 LE` TTL (seconds) |
//! | 6 | `LeaseRevoke` | `i64 LE` ID |
//! | 7 | `LeaseGrantPut` | `i64 LE` ID, `i64 LE` TTL, protobuf `PutRequest` |
//! | 8 | `Auth` | `u8` auth tag, then the fields below |
//! | 9 | `LeaseCheckpoint` | `u32 LE` count, then per lease `i64 LE` ID, `i64 LE` remaining ms |
//! | 10 | `SimpleToken` | str user, str token, `u64 LE` auth revision |
//! | 11 | `Alarm` | `u8` 1 = activate / 0 = deactivate, `u64 LE` member ID, `i32 LE` etcd `AlarmType` |
//! | 12 | `Attributed` | str user, str address, str API, `u64 LE` time (ms), then one whole inner command (tag, length, body; never itself `Attributed`) |
//!
//! Auth bodies (strings are `u32 LE` length + UTF-8 bytes, byte strings the same without the
//! UTF-8 rule, booleans one byte 0/1):
//!
//! | auth tag | command | fields |
//! |---|---|---|
//! | 1 | `Enable` | — |
//! | 2 | `Disable` | — |
//! | 3 | `UserAdd` | name, password hash, no_password |
//! | 4 | `UserDelete` | name |
//! | 5 | `UserChangePassword` | name, password hash |
//! | 6 | `UserGrantRole` | user, role |
//! | 7 | `UserRevokeRole` | user, role |
//! | 8 | `RoleAdd` | name |
//! | 9 | `RoleDelete` | name |
//! | 10 | `RoleGrantPermission` | role, protobuf `authpb.Permission` as a byte string |
//! | 11 | `RoleRevokePermission` | role, key, range end |
//! | 12 | `BootstrapRoot` | password hash |
//!
//! A decoder of a later format reads version 1 as written here; an entry of an unknown version
//! or tag, or with bytes missing or left over, is refused with a [`CodecError`], never a panic.

use bytes::Bytes;
use mast_proto::authpb::Permission;
use mast_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    TxnRequest, TxnResponse, request_op,
};
use prost::Message;

use crate::auth::{AuthCommand, AuthError};
use crate::codec::{Reader, put_bytes};
use crate::error::MvccError;
use crate::lease::LeaseId;

/// The format version written by [`encode_entry`].
pub const FORMAT_VERSION: u8 = 1;

/// A deterministic change to the store. Applying the same commands in the same order to the
/// same state always gives the same state: no clock, no randomness (lease IDs are chosen by the
/// proposer).
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// As etcd's `Put`.
    Put(PutRequest),
    /// As etcd's `DeleteRange`.
    DeleteRange(DeleteRangeRequest),
    /// As etcd's `Txn`. The applier refuses a txn that puts a key twice or puts and deletes
    /// it in one branch ([`check_txn_intervals`]), so a txn applies whole or not at all.
    Txn(TxnRequest),
    /// As etcd's `Compact`.
    Compact(CompactionRequest),
    /// Creates lease `id` with `ttl` seconds (already raised to the minimum TTL).
    LeaseGrant {
        /// The new lease's ID, non-zero.
        id: LeaseId,
        /// Granted TTL in seconds.
        ttl: i64,
    },
    /// Deletes lease `id` and, in one revision, every key attached to it.
    LeaseRevoke {
        /// The lease to revoke.
        id: LeaseId,
    },
    /// Changes the auth state; never changes the store revision. The proposer has checked
    /// that the requester may (admin), and hashed any password.
    Auth(AuthCommand),
    /// The leader's lessor tells every member how long leases have left (milliseconds from
    /// when the entry is applied), as etcd's `LeaseCheckpoint`, so a new leader neither
    /// expires a lease early nor keeps one long after its owner died. Changes no store state;
    /// leases that no longer exist are skipped.
    LeaseCheckpoint {
        /// `(lease ID, remaining milliseconds)`.
        checkpoints: Vec<(LeaseId, i64)>,
    },
    /// A simple auth token the member that checked the password issued, as etcd's
    /// `InternalAuthenticateRequest`: every member learns it when it applies this, so the
    /// token works on all of them. Changes no store state.
    SimpleToken {
        /// The user the token is for.
        user: String,
        /// The token.
        token: String,
        /// The auth revision it was issued at.
        auth_revision: u64,
    },
    /// Creates lease `id` with `ttl` seconds and then applies `put` (whose `lease` must be
    /// `id`), as a `LeaseGrant` followed by a `Put` would, in one command: registering a
    /// service instance. Fails with nothing changed when lease `id` exists or the put would
    /// fail.
    LeaseGrantPut {
        /// The new lease's ID, non-zero.
        id: LeaseId,
        /// Granted TTL in seconds.
        ttl: i64,
        /// The put attached to the new lease.
        put: PutRequest,
    },
    /// Raises or clears an alarm of a member, as etcd's `AlarmRequest` ACTIVATE / DEACTIVATE
    /// applied through the log. While any member has `NOSPACE` raised, puts, txns that put
    /// and lease grants are refused with [`MvccError::NoSpace`]; while any has `CORRUPT`,
    /// puts, txns, compactions and lease grants and revokes are refused with
    /// [`MvccError::Corrupt`] (as etcd's capped and corrupt appliers). Never changes the store
    /// revision.
    Alarm {
        /// True to raise the alarm, false to clear it.
        activate: bool,
        /// The member the alarm is about.
        member: u64,
        /// etcd's `AlarmType` number (1 `NOSPACE`, 2 `CORRUPT`; others are kept but do
        /// nothing).
        alarm: i32,
    },
    /// `cmd`, applied as it would be alone, made by `origin`: when it changes an audited key
    /// or auth, the change is recorded in the audit log ([`crate::audit`]). Its result is
    /// `cmd`'s. Never nested.
    Attributed {
        /// Who made the change.
        origin: crate::audit::Origin,
        /// The change.
        cmd: Box<Command>,
    },
}

/// The result of one applied [`Command`]. Response headers carry only `revision`; the
/// server fills in the cluster fields of the top-level header.
#[derive(Clone, Debug, PartialEq)]
pub enum CommandResult {
    /// Result of a Put.
    Put(PutResponse),
    /// Result of a DeleteRange.
    DeleteRange(DeleteRangeResponse),
    /// Result of a Txn.
    Txn(TxnResponse),
    /// Result of a Compact; `revision` is the store revision (unchanged by compaction).
    Compact {
        /// Current store revision.
        revision: i64,
    },
    /// A lease was created.
    LeaseGrant {
        /// Its ID.
        id: LeaseId,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// A lease was revoked; `revision` is the store revision after deleting its keys.
    LeaseRevoke {
        /// Store revision after the revoke.
        revision: i64,
    },
    /// A lease was created and a put attached to it (`Command::LeaseGrantPut`).
    LeaseGrantPut {
        /// The lease's ID.
        id: LeaseId,
        /// Its TTL in seconds.
        ttl: i64,
        /// The put's result.
        put: PutResponse,
    },
    /// An auth command was applied (or was a no-op); the store revision is unchanged.
    Auth {
        /// The auth revision after the command.
        revision: u64,
    },
    /// A lease checkpoint was applied; nothing in the store changed.
    LeaseCheckpoint,
    /// A simple token was passed on; nothing in the store changed.
    SimpleToken,
    /// An alarm command was applied: `(member, alarm type)` raised or cleared, or `None` when
    /// a clear named an alarm that was not raised (as etcd's empty `AlarmResponse`).
    Alarm(Option<(u64, i32)>),
}

/// An encoded entry that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The entry's format version is not one this build reads.
    #[error("unknown entry format version {0}")]
    UnknownVersion(u8),
    /// A command tag (or auth tag) this build does not know.
    #[error("unknown command tag {0}")]
    UnknownTag(u8),
    /// The bytes end before the entry does.
    #[error("entry truncated")]
    Truncated,
    /// Bytes follow the last command, or a command's body is longer than its fields.
    #[error("trailing bytes in entry")]
    Trailing,
    /// A string field is not UTF-8.
    #[error("string field is not UTF-8")]
    NotUtf8,
    /// A protobuf body does not decode.
    #[error("bad protobuf body: {0}")]
    Protobuf(String),
}

impl From<prost::DecodeError> for CodecError {
    fn from(e: prost::DecodeError) -> Self {
        CodecError::Protobuf(e.to_string())
    }
}

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_TXN: u8 = 3;
const TAG_COMPACT: u8 = 4;
const TAG_LEASE_GRANT: u8 = 5;
const TAG_LEASE_REVOKE: u8 = 6;
const TAG_GRANT_PUT: u8 = 7;
const TAG_AUTH: u8 = 8;
const TAG_LEASE_CHECKPOINT: u8 = 9;
const TAG_SIMPLE_TOKEN: u8 = 10;
const TAG_ALARM: u8 = 11;
const TAG_ATTRIBUTED: u8 = 12;

const AUTH_ENABLE: u8 = 1;
const AUTH_DISABLE: u8 = 2;
const AUTH_USER_ADD: u8 = 3;
const AUTH_USER_DELETE: u8 = 4;
const AUTH_USER_PASSWORD: u8 = 5;
const AUTH_USER_GRANT: u8 = 6;
const AUTH_USER_REVOKE: u8 = 7;
const AUTH_ROLE_ADD: u8 = 8;
const AUTH_ROLE_DELETE: u8 = 9;
const AUTH_ROLE_GRANT: u8 = 10;
const AUTH_ROLE_REVOKE: u8 = 11;
const AUTH_BOOTSTRAP_ROOT: u8 = 12;

/// Bytes before the first command of an encoded entry.
const ENTRY_HEADER: usize = 5;

/// Bytes of a string or byte-string field holding `n` bytes.
fn str_len(n: usize) -> usize {
    4 + n
}

impl Command {
    /// Bytes of this command's body in an entry (after its tag and length).
    pub fn body_len(&self) -> usize {
        match self {
            Command::Put(p) => p.encoded_len(),
            Command::DeleteRange(d) => d.encoded_len(),
            Command::Txn(t) => t.encoded_len(),
            Command::Compact(c) => c.encoded_len(),
            Command::LeaseGrant { .. } => 16,
            Command::LeaseRevoke { .. } => 8,
            Command::LeaseGrantPut { put, .. } => 16 + put.encoded_len(),
            Command::Auth(a) => 1 + auth_body_len(a),
            Command::LeaseCheckpoint { checkpoints } => 4 + 16 * checkpoints.len(),
            Command::SimpleToken { user, token, .. } => {
                str_len(user.len()) + str_len(token.len()) + 8
            }
            Command::Alarm { .. } => 13,
            Command::Attributed { origin, cmd } => origin.encoded_len() + cmd.encoded_len(),
        }
    }

    /// The command itself: `cmd` of an [`Command::Attributed`], else this one.
    pub fn inner(&self) -> &Command {
        match self {
            Command::Attributed { cmd, .. } => cmd,
            c => c,
        }
    }

    /// Bytes this command takes in an entry: tag, length and body.
    pub fn encoded_len(&self) -> usize {
        5 + self.body_len()
    }

    fn tag(&self) -> u8 {
        match self {
            Command::Put(_) => TAG_PUT,
            Command::DeleteRange(_) => TAG_DELETE,
            Command::Txn(_) => TAG_TXN,
            Command::Compact(_) => TAG_COMPACT,
            Command::LeaseGrant { .. } => TAG_LEASE_GRANT,
            Command::LeaseRevoke { .. } => TAG_LEASE_REVOKE,
            Command::LeaseGrantPut { .. } => TAG_GRANT_PUT,
            Command::Auth(_) => TAG_AUTH,
            Command::LeaseCheckpoint { .. } => TAG_LEASE_CHECKPOINT,
            Command::SimpleToken { .. } => TAG_SIMPLE_TOKEN,
            Command::Alarm { .. } => TAG_ALARM,
            Command::Attributed { .. } => TAG_ATTRIBUTED,
        }
    }

    /// Appends tag, body length and body to `buf`.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let len = self.body_len();
        buf.push(self.tag());
        buf.extend_from_slice(&(len as u32).to_le_bytes());
        let start = buf.len();
        match self {
            Command::Put(p) => p.encode_raw(buf),
            Command::DeleteRange(d) => d.encode_raw(buf),
            Command::Txn(t) => t.encode_raw(buf),
            Command::Compact(c) => c.encode_raw(buf),
            Command::LeaseGrant { id, ttl } => {
                buf.extend_from_slice(&id.to_le_bytes());
                buf.extend_from_slice(&ttl.to_le_bytes());
            }
            Command::LeaseRevoke { id } => buf.extend_from_slice(&id.to_le_bytes()),
            Command::LeaseGrantPut { id, ttl, put } => {
                buf.extend_from_slice(&id.to_le_bytes());
                buf.extend_from_slice(&ttl.to_le_bytes());
                put.encode_raw(buf);
            }
            Command::Auth(a) => encode_auth(a, buf),
            Command::LeaseCheckpoint { checkpoints } => {
                buf.extend_from_slice(&(checkpoints.len() as u32).to_le_bytes());
                for (id, ms) in checkpoints {
                    buf.extend_from_slice(&id.to_le_bytes());
                    buf.extend_from_slice(&ms.to_le_bytes());
                }
            }
            Command::SimpleToken {
                user,
                token,
                auth_revision,
            } => {
                put_bytes(buf, user.as_bytes());
                put_bytes(buf, token.as_bytes());
                buf.extend_from_slice(&auth_revision.to_le_bytes());
            }
            Command::Alarm {
                activate,
                member,
                alarm,
            } => {
                buf.push(u8::from(*activate));
                buf.extend_from_slice(&member.to_le_bytes());
                buf.extend_from_slice(&alarm.to_le_bytes());
            }
            Command::Attributed { origin, cmd } => {
                origin.encode(buf);
                cmd.encode(buf);
            }
        }
        debug_assert_eq!(buf.len() - start, len);
    }

    /// Decodes one command from the front of `r`.
    fn decode(r: &mut Reader<'_>) -> Result<Command, CodecError> {
        let tag = r.u8()?;
        let len = r.u32()? as usize;
        let mut body = Reader(r.take(len)?);
        let cmd = match tag {
            TAG_PUT => Command::Put(PutRequest::decode(body.rest())?),
            TAG_DELETE => Command::DeleteRange(DeleteRangeRequest::decode(body.rest())?),
            TAG_TXN => Command::Txn(TxnRequest::decode(body.rest())?),
            TAG_COMPACT => Command::Compact(CompactionRequest::decode(body.rest())?),
            TAG_LEASE_GRANT => Command::LeaseGrant {
                id: body.i64()?,
                ttl: body.i64()?,
            },
            TAG_LEASE_REVOKE => Command::LeaseRevoke { id: body.i64()? },
            TAG_GRANT_PUT => Command::LeaseGrantPut {
                id: body.i64()?,
                ttl: body.i64()?,
                put: PutRequest::decode(body.rest())?,
            },
            TAG_AUTH => Command::Auth(decode_auth(&mut body)?),
            TAG_LEASE_CHECKPOINT => {
                let n = body.u32()? as usize;
                let mut checkpoints = Vec::with_capacity(n.min(body.0.len() / 16));
                for _ in 0..n {
                    checkpoints.push((body.i64()?, body.i64()?));
                }
                Command::LeaseCheckpoint { checkpoints }
            }
            TAG_SIMPLE_TOKEN => Command::SimpleToken {
                user: body.string()?,
                token: body.string()?,
                auth_revision: body.u64()?,
            },
            TAG_ALARM => Command::Alarm {
                activate: body.bool()?,
                member: body.u64()?,
                alarm: body.u32()? as i32,
            },
            TAG_ATTRIBUTED => {
                let origin = crate::audit::Origin::decode(&mut body)?;
                // Refused before decoding, so nested bytes cannot recurse without bound.
                if body.0.first() == Some(&TAG_ATTRIBUTED) {
                    return Err(CodecError::UnknownTag(TAG_ATTRIBUTED));
                }
                let cmd = Command::decode(&mut body)?;
                Command::Attributed {
                    origin,
                    cmd: Box::new(cmd),
                }
            }
            t => return Err(CodecError::UnknownTag(t)),
        };
        body.finish()?;
        Ok(cmd)
    }
}

/// Bytes [`encode_entry`] writes for `cmds`.
pub fn entry_len(cmds: &[Command]) -> usize {
    ENTRY_HEADER + cmds.iter().map(Command::encoded_len).sum::<usize>()
}

/// Appends the encoding of an entry holding `cmds` (format [`FORMAT_VERSION`]) to `buf`.
pub fn encode_entry(cmds: &[Command], buf: &mut Vec<u8>) {
    buf.reserve(entry_len(cmds));
    buf.push(FORMAT_VERSION);
    buf.extend_from_slice(&(cmds.len() as u32).to_le_bytes());
    for c in cmds {
        c.encode(buf);
    }
}

/// Decodes an entry written by [`encode_entry`].
///
/// # Errors
/// [`CodecError`] when the bytes are not a whole entry of a known format.
pub fn decode_entry(bytes: &[u8]) -> Result<Vec<Command>, CodecError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let count = r.u32()? as usize;
    // Each command takes at least 5 bytes: a count beyond that is a lie, not a reservation.
    let mut out = Vec::with_capacity(count.min(r.0.len() / 5));
    for _ in 0..count {
        out.push(Command::decode(&mut r)?);
    }
    r.finish()?;
    Ok(out)
}

fn auth_body_len(a: &AuthCommand) -> usize {
    match a {
        AuthCommand::Enable | AuthCommand::Disable => 0,
        AuthCommand::UserAdd {
            name,
            password_hash,
            ..
        } => str_len(name.len()) + str_len(password_hash.len()) + 1,
        AuthCommand::UserDelete { name } | AuthCommand::RoleAdd { name } => str_len(name.len()),
        AuthCommand::BootstrapRoot { password_hash } => str_len(password_hash.len()),
        AuthCommand::RoleDelete { name } => str_len(name.len()),
        AuthCommand::UserChangePassword {
            name,
            password_hash,
        } => str_len(name.len()) + str_len(password_hash.len()),
        AuthCommand::UserGrantRole { user, role } | AuthCommand::UserRevokeRole { user, role } => {
            str_len(user.len()) + str_len(role.len())
        }
        AuthCommand::RoleGrantPermission { role, perm } => {
            str_len(role.len()) + str_len(perm.encoded_len())
        }
        AuthCommand::RoleRevokePermission {
            role,
            key,
            range_end,
        } => str_len(role.len()) + str_len(key.len()) + str_len(range_end.len()),
    }
}

fn encode_auth(a: &AuthCommand, buf: &mut Vec<u8>) {
    match a {
        AuthCommand::Enable => buf.push(AUTH_ENABLE),
        AuthCommand::Disable => buf.push(AUTH_DISABLE),
        AuthCommand::UserAdd {
            name,
            password_hash,
            no_password,
        } => {
            buf.push(AUTH_USER_ADD);
            put_bytes(buf, name.as_bytes());
            put_bytes(buf, password_hash.as_bytes());
            buf.push(u8::from(*no_password));
        }
        AuthCommand::UserDelete { name } => {
            buf.push(AUTH_USER_DELETE);
            put_bytes(buf, name.as_bytes());
        }
        AuthCommand::UserChangePassword {
            name,
            password_hash,
        } => {
            buf.push(AUTH_USER_PASSWORD);
            put_bytes(buf, name.as_bytes());
            put_bytes(buf, password_hash.as_bytes());
        }
        AuthCommand::UserGrantRole { user, role } => {
            buf.push(AUTH_USER_GRANT);
            put_bytes(buf, user.as_bytes());
            put_bytes(buf, role.as_bytes());
        }
        AuthCommand::UserRevokeRole { user, role } => {
            buf.push(AUTH_USER_REVOKE);
            put_bytes(buf, user.as_bytes());
            put_bytes(buf, role.as_bytes());
        }
        AuthCommand::RoleAdd { name } => {
            buf.push(AUTH_ROLE_ADD);
            put_bytes(buf, name.as_bytes());
        }
        AuthCommand::BootstrapRoot { password_hash } => {
            buf.push(AUTH_BOOTSTRAP_ROOT);
            put_bytes(buf, password_hash.as_bytes());
        }
        AuthCommand::RoleDelete { name } => {
            buf.push(AUTH_ROLE_DELETE);
            put_bytes(buf, name.as_bytes());
        }
        AuthCommand::RoleGrantPermission { role, perm } => {
            buf.push(AUTH_ROLE_GRANT);
            put_bytes(buf, role.as_bytes());
            put_bytes(buf, &perm.encode_to_vec());
        }
        AuthCommand::RoleRevokePermission {
            role,
            key,
            range_end,
        } => {
            buf.push(AUTH_ROLE_REVOKE);
            put_bytes(buf, role.as_bytes());
            put_bytes(buf, key);
            put_bytes(buf, range_end);
        }
    }
}

fn decode_auth(r: &mut Reader<'_>) -> Result<AuthCommand, CodecError> {
    Ok(match r.u8()? {
        AUTH_ENABLE => AuthCommand::Enable,
        AUTH_DISABLE => AuthCommand::Disable,
        AUTH_USER_ADD => AuthCommand::UserAdd {
            name: r.string()?,
            password_hash: r.string()?,
            no_password: r.bool()?,
        },
        AUTH_USER_DELETE => AuthCommand::UserDelete { name: r.string()? },
        AUTH_USER_PASSWORD => AuthCommand::UserChangePassword {
            name: r.string()?,
            password_hash: r.string()?,
        },
        AUTH_USER_GRANT => AuthCommand::UserGrantRole {
            user: r.string()?,
            role: r.string()?,
        },
        AUTH_USER_REVOKE => AuthCommand::UserRevokeRole {
            user: r.string()?,
            role: r.string()?,
        },
        AUTH_ROLE_ADD => AuthCommand::RoleAdd { name: r.string()? },
        AUTH_BOOTSTRAP_ROOT => AuthCommand::BootstrapRoot {
            password_hash: r.string()?,
        },
        AUTH_ROLE_DELETE => AuthCommand::RoleDelete { name: r.string()? },
        AUTH_ROLE_GRANT => AuthCommand::RoleGrantPermission {
            role: r.string()?,
            perm: Permission::decode(r.bytes()?)?,
        },
        AUTH_ROLE_REVOKE => AuthCommand::RoleRevokePermission {
            role: r.string()?,
            key: Bytes::copy_from_slice(r.bytes()?),
            range_end: Bytes::copy_from_slice(r.bytes()?),
        },
        t => return Err(CodecError::UnknownTag(t)),
    })
}

const RESULT_ERR: u8 = 0;
const RESULT_PUT: u8 = 1;
const RESULT_DELETE: u8 = 2;
const RESULT_TXN: u8 = 3;
const RESULT_COMPACT: u8 = 4;
const RESULT_LEASE_GRANT: u8 = 5;
const RESULT_LEASE_REVOKE: u8 = 6;
const RESULT_GRANT_PUT: u8 = 7;
const RESULT_AUTH: u8 = 8;
const RESULT_LEASE_CHECKPOINT: u8 = 9;
const RESULT_SIMPLE_TOKEN: u8 = 10;
const RESULT_ALARM: u8 = 11;

/// The auth errors a result can carry, by their number on the wire (their order here).
const AUTH_ERRORS: [AuthError; 17] = [
    AuthError::RootUserNotExist,
    AuthError::RootRoleNotExist,
    AuthError::UserAlreadyExist,
    AuthError::UserEmpty,
    AuthError::UserNotFound,
    AuthError::RoleAlreadyExist,
    AuthError::RoleNotFound,
    AuthError::RoleEmpty,
    AuthError::RoleNotGranted,
    AuthError::PermissionNotGranted,
    AuthError::InvalidAuthMgmt,
    AuthError::PermissionNotGiven,
    AuthError::AuthFailed,
    AuthError::PermissionDenied,
    AuthError::AuthNotEnabled,
    AuthError::InvalidAuthToken,
    AuthError::AuthOldRevision,
];

/// Appends a command's result, so a member that handed a command to the leader gets the
/// result the leader's apply gave:
///
/// ```text
/// u8 kind: 0 error, then u8 error code (1 compacted, 2 future revision, 3 key not found,
///          4 lease not found, 5 lease exists, 6 duplicate key, 7 TTL too large,
///          8 auth + u8 auth error number, 9 storage + str message, 10 no space,
///          11 corrupt)
///          1 Put, 2 DeleteRange, 3 Txn: the protobuf response
///          4 Compact, 6 LeaseRevoke: i64 revision; 8 Auth: u64 auth revision
///          5 LeaseGrant: i64 ID, i64 TTL; 7 LeaseGrantPut: i64 ID, i64 TTL, protobuf PutResponse
///          9 LeaseCheckpoint, 10 SimpleToken: nothing
///          11 Alarm: u8 0 none / 1 some, then u64 member, i32 alarm type
/// ```
pub fn encode_result(r: &Result<CommandResult, MvccError>, buf: &mut Vec<u8>) {
    match r {
        Err(e) => {
            buf.push(RESULT_ERR);
            match e {
                MvccError::Compacted => buf.push(1),
                MvccError::FutureRevision => buf.push(2),
                MvccError::KeyNotFound => buf.push(3),
                MvccError::LeaseNotFound => buf.push(4),
                MvccError::LeaseExists => buf.push(5),
                MvccError::DuplicateKey => buf.push(6),
                MvccError::LeaseTtlTooLarge => buf.push(7),
                MvccError::Auth(a) => {
                    buf.push(8);
                    let n = AUTH_ERRORS.iter().position(|x| x == a).unwrap_or(0);
                    buf.push(n as u8);
                }
                MvccError::Storage(s) => {
                    buf.push(9);
                    put_bytes(buf, s.as_bytes());
                }
                MvccError::NoSpace => buf.push(10),
                MvccError::Corrupt => buf.push(11),
            }
        }
        Ok(CommandResult::Put(p)) => {
            buf.push(RESULT_PUT);
            p.encode_raw(buf);
        }
        Ok(CommandResult::DeleteRange(d)) => {
            buf.push(RESULT_DELETE);
            d.encode_raw(buf);
        }
        Ok(CommandResult::Txn(t)) => {
            buf.push(RESULT_TXN);
            t.encode_raw(buf);
        }
        Ok(CommandResult::Compact { revision }) => {
            buf.push(RESULT_COMPACT);
            buf.extend_from_slice(&revision.to_le_bytes());
        }
        Ok(CommandResult::LeaseGrant { id, ttl }) => {
            buf.push(RESULT_LEASE_GRANT);
            buf.extend_from_slice(&id.to_le_bytes());
            buf.extend_from_slice(&ttl.to_le_bytes());
        }
        Ok(CommandResult::LeaseRevoke { revision }) => {
            buf.push(RESULT_LEASE_REVOKE);
            buf.extend_from_slice(&revision.to_le_bytes());
        }
        Ok(CommandResult::LeaseGrantPut { id, ttl, put }) => {
            buf.push(RESULT_GRANT_PUT);
            buf.extend_from_slice(&id.to_le_bytes());
            buf.extend_from_slice(&ttl.to_le_bytes());
            put.encode_raw(buf);
        }
        Ok(CommandResult::Auth { revision }) => {
            buf.push(RESULT_AUTH);
            buf.extend_from_slice(&revision.to_le_bytes());
        }
        Ok(CommandResult::LeaseCheckpoint) => buf.push(RESULT_LEASE_CHECKPOINT),
        Ok(CommandResult::SimpleToken) => buf.push(RESULT_SIMPLE_TOKEN),
        Ok(CommandResult::Alarm(a)) => {
            buf.push(RESULT_ALARM);
            match a {
                None => buf.push(0),
                Some((member, alarm)) => {
                    buf.push(1);
                    buf.extend_from_slice(&member.to_le_bytes());
                    buf.extend_from_slice(&alarm.to_le_bytes());
                }
            }
        }
    }
}

/// Decodes a result written by [`encode_result`].
///
/// # Errors
/// [`CodecError`] when the bytes are not a result.
pub fn decode_result(bytes: &[u8]) -> Result<Result<CommandResult, MvccError>, CodecError> {
    let mut r = Reader(bytes);
    let out = match r.u8()? {
        RESULT_ERR => Err(match r.u8()? {
            1 => MvccError::Compacted,
            2 => MvccError::FutureRevision,
            3 => MvccError::KeyNotFound,
            4 => MvccError::LeaseNotFound,
            5 => MvccError::LeaseExists,
            6 => MvccError::DuplicateKey,
            7 => MvccError::LeaseTtlTooLarge,
            8 => {
                let n = r.u8()? as usize;
                MvccError::Auth(
                    AUTH_ERRORS
                        .get(n)
                        .cloned()
                        .ok_or(CodecError::UnknownTag(n as u8))?,
                )
            }
            9 => MvccError::Storage(r.string()?),
            10 => MvccError::NoSpace,
            11 => MvccError::Corrupt,
            t => return Err(CodecError::UnknownTag(t)),
        }),
        RESULT_PUT => Ok(CommandResult::Put(PutResponse::decode(r.rest())?)),
        RESULT_DELETE => Ok(CommandResult::DeleteRange(DeleteRangeResponse::decode(
            r.rest(),
        )?)),
        RESULT_TXN => Ok(CommandResult::Txn(TxnResponse::decode(r.rest())?)),
        RESULT_COMPACT => Ok(CommandResult::Compact { revision: r.i64()? }),
        RESULT_LEASE_GRANT => Ok(CommandResult::LeaseGrant {
            id: r.i64()?,
            ttl: r.i64()?,
        }),
        RESULT_LEASE_REVOKE => Ok(CommandResult::LeaseRevoke { revision: r.i64()? }),
        RESULT_GRANT_PUT => Ok(CommandResult::LeaseGrantPut {
            id: r.i64()?,
            ttl: r.i64()?,
            put: PutResponse::decode(r.rest())?,
        }),
        RESULT_AUTH => Ok(CommandResult::Auth { revision: r.u64()? }),
        RESULT_LEASE_CHECKPOINT => Ok(CommandResult::LeaseCheckpoint),
        RESULT_SIMPLE_TOKEN => Ok(CommandResult::SimpleToken),
        RESULT_ALARM => Ok(CommandResult::Alarm(if r.bool()? {
            Some((r.u64()?, r.u32()? as i32))
        } else {
            None
        })),
        t => return Err(CodecError::UnknownTag(t)),
    };
    r.finish()?;
    Ok(out)
}

/// Whether any branch of `t` (nested txns included) holds a put: what a raised `NOSPACE`
/// alarm refuses, as etcd's capped applier (a txn whose quota cost is not zero).
pub fn txn_puts(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(n)) => txn_puts(n),
            _ => false,
        })
}

/// Returns true when the txn (with nested txns) writes nothing, as etcd's `isTxnReadonly`.
pub fn is_txn_readonly(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(n)) => is_txn_readonly(n),
            _ => false,
        })
}

/// A key put twice, or put and deleted, in one branch of a txn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("duplicate key given in txn request")]
pub struct DuplicateKey;

/// Deleted intervals of a txn branch: `(start, end)`, `end` empty for a single key.
#[derive(Default)]
struct Dels(Vec<(Bytes, Bytes)>);

impl Dels {
    fn intersects(&self, k: &[u8]) -> bool {
        self.0.iter().any(|(s, e)| {
            if e.is_empty() {
                s.as_ref() == k
            } else if e.as_ref() == [0] {
                k >= s.as_ref()
            } else {
                k >= s.as_ref() && k < e.as_ref()
            }
        })
    }
}

/// etcd's `checkIntervals` over both branches of `t`: no key may be put twice, or put and
/// deleted, in one branch (nested txns included; the two branches of a nested txn may put the
/// same key). A txn that passes never fails halfway: no op of a branch can see a key its
/// own branch deleted or wrote.
///
/// # Errors
/// [`DuplicateKey`] as etcd's `ErrGRPCDuplicateKey`.
pub fn check_txn_intervals(t: &TxnRequest) -> Result<(), DuplicateKey> {
    check_branch(&t.success)?;
    check_branch(&t.failure)?;
    Ok(())
}

fn check_branch(
    reqs: &[mast_proto::etcdserverpb::RequestOp],
) -> Result<(std::collections::HashSet<Bytes>, Dels), DuplicateKey> {
    let mut dels = Dels::default();
    for op in reqs {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            dels.0.push((d.key.clone(), d.range_end.clone()));
        }
    }
    let mut puts = std::collections::HashSet::new();
    for op in reqs {
        let Some(request_op::Request::RequestTxn(n)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_branch(&n.success)?;
        let (puts_else, dels_else) = check_branch(&n.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.intersects(k) {
                return Err(DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) || dels.intersects(k) {
                return Err(DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.0.extend(dels_then.0);
        dels.0.extend(dels_else.0);
    }
    for op in reqs {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.intersects(&p.key) {
            return Err(DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mast_proto::etcdserverpb::{RequestOp, compare};
    use proptest::prelude::*;

    fn put(k: &str, v: &str) -> Command {
        Command::Put(PutRequest {
            key: k.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
            ..Default::default()
        })
    }

    fn every_kind() -> Vec<Command> {
        let perm = Permission {
            perm_type: 2,
            key: Bytes::from_static(b"/a"),
            range_end: Bytes::from_static(b"/b"),
        };
        vec![
            put("a", "1"),
            Command::DeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(b"a"),
                range_end: Bytes::from_static(b"\0"),
                prev_kv: true,
            }),
            Command::Txn(TxnRequest {
                compare: vec![mast_proto::etcdserverpb::Compare {
                    key: Bytes::from_static(b"k"),
                    target: compare::CompareTarget::Value as i32,
                    target_union: Some(compare::TargetUnion::Value(Bytes::from_static(b"v"))),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: Bytes::from_static(b"k"),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            }),
            Command::Compact(CompactionRequest {
                revision: 7,
                physical: true,
            }),
            Command::LeaseGrant { id: 7, ttl: 10 },
            Command::LeaseRevoke { id: -3 },
            Command::LeaseGrantPut {
                id: 8,
                ttl: 5,
                put: PutRequest {
                    key: Bytes::from_static(b"b"),
                    lease: 8,
                    ..Default::default()
                },
            },
            Command::Auth(AuthCommand::Enable),
            Command::Auth(AuthCommand::Disable),
            Command::Auth(AuthCommand::UserAdd {
                name: "ü".into(),
                password_hash: "$2b$10$x".into(),
                no_password: true,
            }),
            Command::Auth(AuthCommand::UserDelete { name: "u".into() }),
            Command::Auth(AuthCommand::UserChangePassword {
                name: "u".into(),
                password_hash: "h".into(),
            }),
            Command::Auth(AuthCommand::UserGrantRole {
                user: "u".into(),
                role: "r".into(),
            }),
            Command::Auth(AuthCommand::UserRevokeRole {
                user: "u".into(),
                role: "r".into(),
            }),
            Command::Auth(AuthCommand::RoleAdd { name: "r".into() }),
            Command::Auth(AuthCommand::RoleDelete { name: "r".into() }),
            Command::Auth(AuthCommand::RoleGrantPermission {
                role: "r".into(),
                perm,
            }),
            Command::Auth(AuthCommand::RoleRevokePermission {
                role: "r".into(),
                key: Bytes::from_static(b"/a"),
                range_end: Bytes::new(),
            }),
            Command::LeaseCheckpoint {
                checkpoints: vec![(1, 2500), (7, 0)],
            },
            Command::LeaseCheckpoint {
                checkpoints: vec![],
            },
            Command::SimpleToken {
                user: "u".into(),
                token: "abc.1".into(),
                auth_revision: 4,
            },
            Command::Auth(AuthCommand::BootstrapRoot {
                password_hash: "$2b$".into(),
            }),
            Command::Alarm {
                activate: true,
                member: u64::MAX - 3,
                alarm: 1,
            },
            Command::Alarm {
                activate: false,
                member: 0,
                alarm: -7,
            },
            Command::Attributed {
                origin: crate::audit::Origin {
                    user: "alice".into(),
                    addr: "127.0.0.1:4000".into(),
                    api: "mast".into(),
                    time_ms: 1_700_000_000_123,
                },
                cmd: Box::new(put("/configs/public/G/a", "x")),
            },
        ]
    }

    #[test]
    fn nested_attribution_is_refused() {
        let origin = crate::audit::Origin::default();
        let inner = Command::Attributed {
            origin: origin.clone(),
            cmd: Box::new(put("a", "1")),
        };
        let mut buf = Vec::new();
        encode_entry(
            &[Command::Attributed {
                origin,
                cmd: Box::new(inner),
            }],
            &mut buf,
        );
        assert_eq!(
            decode_entry(&buf),
            Err(CodecError::UnknownTag(TAG_ATTRIBUTED))
        );
    }

    #[test]
    fn every_command_round_trips() {
        let cmds = every_kind();
        let mut buf = Vec::new();
        encode_entry(&cmds, &mut buf);
        assert_eq!(buf.len(), entry_len(&cmds));
        assert_eq!(decode_entry(&buf).unwrap(), cmds);
        for c in &cmds {
            let mut one = Vec::new();
            encode_entry(std::slice::from_ref(c), &mut one);
            assert_eq!(&decode_entry(&one).unwrap(), std::slice::from_ref(c));
        }
        let mut empty = Vec::new();
        encode_entry(&[], &mut empty);
        assert!(decode_entry(&empty).unwrap().is_empty());
    }

    #[test]
    fn results_round_trip() {
        let results: Vec<Result<CommandResult, MvccError>> = vec![
            Ok(CommandResult::Put(PutResponse::default())),
            Ok(CommandResult::DeleteRange(DeleteRangeResponse {
                deleted: 3,
                ..Default::default()
            })),
            Ok(CommandResult::Txn(TxnResponse {
                succeeded: true,
                ..Default::default()
            })),
            Ok(CommandResult::Compact { revision: 9 }),
            Ok(CommandResult::LeaseGrant { id: 4, ttl: 10 }),
            Ok(CommandResult::LeaseRevoke { revision: 11 }),
            Ok(CommandResult::LeaseGrantPut {
                id: 4,
                ttl: 10,
                put: PutResponse::default(),
            }),
            Ok(CommandResult::Auth { revision: 3 }),
            Ok(CommandResult::LeaseCheckpoint),
            Ok(CommandResult::SimpleToken),
            Ok(CommandResult::Alarm(None)),
            Ok(CommandResult::Alarm(Some((u64::MAX, 2)))),
            Err(MvccError::NoSpace),
            Err(MvccError::Corrupt),
            Err(MvccError::Compacted),
            Err(MvccError::FutureRevision),
            Err(MvccError::KeyNotFound),
            Err(MvccError::LeaseNotFound),
            Err(MvccError::LeaseExists),
            Err(MvccError::DuplicateKey),
            Err(MvccError::LeaseTtlTooLarge),
            Err(MvccError::Storage("disk".into())),
        ]
        .into_iter()
        .chain(AUTH_ERRORS.iter().cloned().map(|a| Err(MvccError::Auth(a))))
        .collect();
        for r in results {
            let mut buf = Vec::new();
            encode_result(&r, &mut buf);
            assert_eq!(decode_result(&buf).unwrap(), r);
        }
        assert!(decode_result(&[]).is_err());
        assert!(decode_result(&[0, 42]).is_err());
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut buf = Vec::new();
        encode_entry(&every_kind(), &mut buf);
        // Every strict prefix is truncated (or, cut inside a protobuf body, fails to decode).
        for n in 0..buf.len() {
            assert!(decode_entry(&buf[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert_eq!(decode_entry(&longer), Err(CodecError::Trailing));
        let mut v2 = buf.clone();
        v2[0] = 2;
        assert_eq!(decode_entry(&v2), Err(CodecError::UnknownVersion(2)));
        let mut tag = buf.clone();
        tag[5] = 99;
        assert_eq!(decode_entry(&tag), Err(CodecError::UnknownTag(99)));
        // A huge count with no commands behind it fails without reserving for it.
        let lie = [1u8, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(decode_entry(&lie), Err(CodecError::Truncated));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_entry(&bytes);
            let mut with_version = vec![FORMAT_VERSION];
            with_version.extend_from_slice(&bytes);
            let _ = decode_entry(&with_version);
        }

        #[test]
        fn puts_round_trip(key in proptest::collection::vec(any::<u8>(), 1..40),
                           value in proptest::collection::vec(any::<u8>(), 0..100),
                           lease in any::<i64>()) {
            let cmds = vec![Command::Put(PutRequest {
                key: key.into(),
                value: value.into(),
                lease,
                ..Default::default()
            })];
            let mut buf = Vec::new();
            encode_entry(&cmds, &mut buf);
            prop_assert_eq!(decode_entry(&buf).unwrap(), cmds);
        }
    }

    fn op_put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        }
    }

    fn op_del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.as_bytes().to_vec().into(),
                    range_end: end.as_bytes().to_vec().into(),
                    ..Default::default()
                },
            )),
        }
    }

    fn op_txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            success,
            ..Default::default()
        }
    }

    #[test]
    fn intervals_as_etcd() {
        assert!(check_txn_intervals(&txn(vec![op_put("a"), op_put("b")])).is_ok());
        assert_eq!(
            check_txn_intervals(&txn(vec![op_put("a"), op_put("a")])),
            Err(DuplicateKey)
        );
        assert_eq!(
            check_txn_intervals(&txn(vec![op_del("a", "c"), op_put("b")])),
            Err(DuplicateKey)
        );
        // A delete and a put in a nested txn of the same branch.
        assert_eq!(
            check_txn_intervals(&txn(vec![
                op_del("a", ""),
                op_txn(vec![op_put("a")], vec![])
            ])),
            Err(DuplicateKey)
        );
        // The two branches of a nested txn may put the same key.
        assert!(
            check_txn_intervals(&txn(vec![op_txn(vec![op_put("a")], vec![op_put("a")])])).is_ok()
        );
        // ... but not a put of that key beside the nested txn.
        assert_eq!(
            check_txn_intervals(&txn(vec![
                op_txn(vec![op_put("a")], vec![op_put("a")]),
                op_put("a")
            ])),
            Err(DuplicateKey)
        );
        // Deletes alone never clash.
        assert!(check_txn_intervals(&txn(vec![op_del("a", "z"), op_del("b", "")])).is_ok());
    }
}
