//! The etcd v3 gRPC services. Each service is a thin adapter from tonic to the [`Node`]; the
//! checks etcd makes before a request reaches its store live here, with etcd's error strings.
//!
//! [`Node`]: crate::node::Node

pub mod auth;
pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use mast_mvcc::MvccError;
use tonic::{Code, Status};

/// etcd's `ErrGRPCEmptyKey`.
pub fn err_empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

/// etcd's `ErrGRPCRequestTooLarge`.
pub fn err_too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

/// etcd's `ErrGRPCTooManyOps`.
pub fn err_too_many_ops() -> Status {
    Status::invalid_argument("etcdserver: too many operations in txn request")
}

/// etcd's `ErrGRPCDuplicateKey`.
pub fn err_duplicate_key() -> Status {
    Status::invalid_argument("etcdserver: duplicate key given in txn request")
}

/// Maps a store error to the gRPC status etcd answers with.
pub fn status_of(e: MvccError) -> Status {
    let code = match e {
        MvccError::Compacted | MvccError::FutureRevision | MvccError::LeaseTtlTooLarge => {
            Code::OutOfRange
        }
        MvccError::KeyNotFound | MvccError::DuplicateKey => Code::InvalidArgument,
        MvccError::LeaseNotFound => Code::NotFound,
        MvccError::LeaseExists => Code::FailedPrecondition,
        MvccError::Storage(_) => Code::Unavailable,
        MvccError::Auth(ref a) => auth_code(&a.to_string()),
    };
    Status::new(code, format!("etcdserver: {e}"))
}

/// The gRPC code etcd's `rpctypes` gives an auth error message.
pub fn auth_code(message: &str) -> Code {
    match message {
        "user name is empty"
        | "role name is empty"
        | "invalid auth management"
        | "permission not given"
        | "authentication failed, invalid user ID or password"
        | "revision of auth store is old" => Code::InvalidArgument,
        "permission denied" => Code::PermissionDenied,
        "invalid auth token" => Code::Unauthenticated,
        _ => Code::FailedPrecondition,
    }
}

/// Records `grpc_server_started_total` for a call that is starting.
pub fn started(service: &'static str, method: &'static str, kind: &'static str) {
    metrics::counter!("grpc_server_started_total", "grpc_type" => kind, "grpc_service" => service, "grpc_method" => method).increment(1);
}

/// Records `grpc_server_handled_total` for a finished call, as etcd's go-grpc-prometheus
/// interceptor, and passes the result through.
pub fn handled<T>(
    service: &'static str,
    method: &'static str,
    kind: &'static str,
    r: Result<T, Status>,
) -> Result<T, Status> {
    let code = match &r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    record_code(service, method, kind, code);
    r
}

/// Records `grpc_server_handled_total` with an explicit code (for streams).
pub fn record_code(service: &'static str, method: &'static str, kind: &'static str, code: Code) {
    metrics::counter!(
        "grpc_server_handled_total",
        "grpc_type" => kind,
        "grpc_service" => service,
        "grpc_method" => method,
        "grpc_code" => code_name(code),
    )
    .increment(1);
}

/// The name go-grpc uses for a code (`OK`, `NotFound`, …).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The answer for an RPC Mast does not serve yet.
pub fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by Mast yet"))
}
