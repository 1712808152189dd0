//! The etcd v3 gRPC services. Each service is a thin adapter from tonic to the [`Node`]; the
//! checks etcd makes before a request reaches its store live here. The public operation
//! functions fail with [`EtcdError`], shared by the gRPC services, the JSON gateway and the
//! registry; only [`handled`] (and the streams) turn it into a tonic [`Status`].
//!
//! [`Node`]: crate::node::Node

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Response, Status};

use crate::error::EtcdError;

/// Records `grpc_server_started_total` for a call that is starting.
pub fn started(service: &'static str, method: &'static str, kind: &'static str) {
    metrics::counter!("grpc_server_started_total", "grpc_type" => kind, "grpc_service" => service, "grpc_method" => method).increment(1);
}

/// Records `grpc_server_handled_total` for a finished call, as etcd's go-grpc-prometheus
/// interceptor, and turns the result into the gRPC answer: the edge where an [`EtcdError`]
/// becomes a [`Status`].
///
/// # Errors
/// The call's error as a status.
pub fn handled<T>(
    service: &'static str,
    method: &'static str,
    kind: &'static str,
    r: Result<T, EtcdError>,
) -> Result<Response<T>, Status> {
    let code = match &r {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    };
    record_code(service, method, kind, code);
    r.map(Response::new).map_err(Status::from)
}

/// Serves one unary call of `service`'s `method`: records it as started, runs `call`, records
/// its latency (`grpc_server_handling_seconds`, seconds) and answers through [`handled`], the one place its [`EtcdError`] becomes a [`Status`].
///
/// # Errors
/// The call's error as a status.
pub async fn unary<T>(
    service: &'static str,
    method: &'static str,
    call: impl Future<Output = Result<T, EtcdError>>,
) -> Result<Response<T>, Status> {
    started(service, method, "unary");
    let begun = std::time::Instant::now();
    let r = call.await;
    metrics::histogram!(
        "grpc_server_handling_seconds",
        "grpc_type" => "unary",
        "grpc_service" => service,
        "grpc_method" => method,
    )
    .record(begun.elapsed().as_secs_f64());
    handled(service, method, "unary", r)
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

/// A response stream as tonic sends it.
pub type GrpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC edge of a response stream: each [`EtcdError`] on `rx` is sent as a [`Status`].
pub fn grpc_stream<T: Send + 'static>(rx: mpsc::Receiver<Result<T, EtcdError>>) -> GrpcStream<T> {
    Box::pin(ReceiverStream::new(rx).map(|r| r.map_err(Status::from)))
}
