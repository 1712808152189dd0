//! The API's one error type, and extractors whose rejections are that error, so that every
//! failure — a bad path, query or body included — answers `{"error": "...", "code": "..."}`.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use mast_model::{NameError, ValidationError};
use mast_server::error::{AuthError, EtcdError, MvccError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What went wrong, as a stable machine-readable code; each has one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed (path, query or body).
    InvalidArgument,
    /// Config content does not parse in its format.
    InvalidContent,
    /// Config content does not satisfy the config's JSON Schema.
    SchemaViolation,
    /// The JSON Schema given is not usable.
    InvalidSchema,
    /// No token, or an invalid or outdated one, while auth is on.
    Unauthenticated,
    /// The caller's roles do not allow the keys involved.
    PermissionDenied,
    /// The service instance, config or version does not exist.
    NotFound,
    /// The state changed under the request (a version check failed, concurrent writers).
    Conflict,
    /// The instance has no lease (a persistent instance cannot heartbeat).
    NoLease,
    /// The instance's lease is gone: it must register again.
    LeaseExpired,
    /// The write is larger than the server accepts.
    TooLarge,
    /// The requested revision was compacted.
    Compacted,
    /// The path exists but not with this method.
    MethodNotAllowed,
    /// Too many streams, or the store is unavailable.
    Unavailable,
    /// A bug or a storage failure.
    Internal,
}

impl ErrorCode {
    /// The code as sent in the body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::InvalidContent => "invalid_content",
            ErrorCode::SchemaViolation => "schema_violation",
            ErrorCode::InvalidSchema => "invalid_schema",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NoLease => "no_lease",
            ErrorCode::LeaseExpired => "lease_expired",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Compacted => "compacted",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the code is sent with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument
            | ErrorCode::InvalidContent
            | ErrorCode::SchemaViolation
            | ErrorCode::InvalidSchema => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::LeaseExpired => StatusCode::NOT_FOUND,
            ErrorCode::Conflict | ErrorCode::NoLease => StatusCode::CONFLICT,
            ErrorCode::Compacted => StatusCode::GONE,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer: its code (which fixes the status) and a message for people.
#[derive(Debug)]
pub struct ApiError {
    /// What went wrong.
    pub code: ErrorCode,
    /// Why, in words.
    pub message: String,
}

/// The result of a handler step.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// A 400 `invalid_argument`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// A 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// A 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code == ErrorCode::Internal {
            // Logged here, where it is answered; the client sees only the message.
            tracing::error!(error = %self.message, "registry/config API request failed");
        }
        let body = ErrorBody {
            error: &self.message,
            code: self.code.as_str(),
        };
        (self.code.status(), axum::Json(body)).into_response()
    }
}

/// The etcd operations' errors mapped to this API's codes by variant; the message is etcd's,
/// except for a missing token and a too large write, which say what to do instead.
impl From<EtcdError> for ApiError {
    fn from(e: EtcdError) -> Self {
        use EtcdError as E;
        let code = match &e {
            E::Auth(AuthError::UserEmpty) | E::Mvcc(MvccError::Auth(AuthError::UserEmpty)) => {
                return ApiError::new(
                    ErrorCode::Unauthenticated,
                    "authentication required: send a token (from POST /v3/auth/authenticate) \
                     in the Authorization header",
                );
            }
            E::RequestTooLarge => {
                return ApiError::new(
                    ErrorCode::TooLarge,
                    "request is too large: the write (content, metadata and history entry \
                     together) exceeds the server's --max-request-bytes",
                );
            }
            E::Auth(a) | E::Mvcc(MvccError::Auth(a)) => auth_code(a),
            E::Mvcc(MvccError::Compacted) => ErrorCode::Compacted,
            E::Mvcc(
                MvccError::FutureRevision
                | MvccError::LeaseTtlTooLarge
                | MvccError::KeyNotFound
                | MvccError::DuplicateKey,
            ) => ErrorCode::InvalidArgument,
            E::Mvcc(MvccError::LeaseNotFound) => ErrorCode::NotFound,
            E::Mvcc(MvccError::LeaseExists) => ErrorCode::Conflict,
            E::Mvcc(MvccError::Storage(_) | MvccError::NoSpace | MvccError::Corrupt) => {
                ErrorCode::Unavailable
            }
            E::EmptyKey
            | E::TooManyOps
            | E::DuplicateKey
            | E::ValueProvided
            | E::LeaseProvided
            | E::InvalidSortOption
            | E::BadRequestBody(_)
            | E::MemberBadUrls => ErrorCode::InvalidArgument,
            E::NoRoute { .. } | E::MemberNotFound => ErrorCode::NotFound,
            E::NotLeader
            | E::MemberExist
            | E::PeerUrlExist
            | E::MemberNotEnoughStarted
            | E::MemberNotLearner
            | E::LearnerNotReady
            | E::TooManyLearners
            | E::BadLeaderTransferee
            | E::ElectionNotLeader
            | E::SessionExpired => ErrorCode::Conflict,
            E::MissingLeaderKey => ErrorCode::InvalidArgument,
            E::ElectionNoLeader => ErrorCode::NotFound,
            E::Storage(_)
            | E::Io(_)
            | E::NoLeader
            | E::LeaderChanged
            | E::Stopped
            | E::Timeout
            | E::TimeoutDueToLeaderFail
            | E::TimeoutDueToConnectionLost
            | E::Unhealthy
            | E::NotSupportedForLearner
            | E::NoSpace
            | E::Corrupt => ErrorCode::Unavailable,
            E::Relayed { code, .. } => match code {
                mast_server::error::Code::Unavailable
                | mast_server::error::Code::DeadlineExceeded => ErrorCode::Unavailable,
                mast_server::error::Code::InvalidArgument
                | mast_server::error::Code::OutOfRange => ErrorCode::InvalidArgument,
                mast_server::error::Code::NotFound => ErrorCode::NotFound,
                mast_server::error::Code::FailedPrecondition => ErrorCode::Conflict,
                mast_server::error::Code::PermissionDenied => ErrorCode::PermissionDenied,
                mast_server::error::Code::Unauthenticated => ErrorCode::Unauthenticated,
                _ => ErrorCode::Internal,
            },
            E::NoPasswordUser
            | E::MaintenancePermissionDenied
            | E::Unimplemented(_)
            | E::Internal(_) => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

/// This API's code for an auth error.
fn auth_code(e: &AuthError) -> ErrorCode {
    match e {
        AuthError::UserEmpty | AuthError::InvalidAuthToken | AuthError::AuthOldRevision => {
            ErrorCode::Unauthenticated
        }
        AuthError::PermissionDenied => ErrorCode::PermissionDenied,
        AuthError::RoleEmpty
        | AuthError::InvalidAuthMgmt
        | AuthError::PermissionNotGiven
        | AuthError::AuthFailed => ErrorCode::InvalidArgument,
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => ErrorCode::Conflict,
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        let code = match e {
            ValidationError::UnknownFormat(_) => ErrorCode::InvalidArgument,
            ValidationError::NotUtf8 | ValidationError::Syntax { .. } => ErrorCode::InvalidContent,
            ValidationError::Schema(_) => ErrorCode::SchemaViolation,
            ValidationError::BadSchema(_) | ValidationError::SchemaNeedsStructure => {
                ErrorCode::InvalidSchema
            }
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::internal(format!("background task failed: {e}"))
    }
}

/// A JSON request body. Unlike `axum::Json` it does not insist on a `Content-Type` (curl's
/// `-d` sends a form type), and its rejections are [`ApiError`]s.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = bytes::Bytes::from_request(req, state).await.map_err(|e| {
            let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ErrorCode::TooLarge
            } else {
                ErrorCode::InvalidArgument
            };
            ApiError::new(code, e.body_text())
        })?;
        serde_json::from_slice(&body)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Path parameters, rejected as [`ApiError`].
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Query parameters, rejected as [`ApiError`].
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// The caller of a request: the token in `Authorization` (as etcd's gateway) and the client
/// address and certificate name the server recorded for the connection.
pub struct Call(pub mast_server::authz::Caller);

impl<S: Send + Sync> FromRequestParts<S> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Self, std::convert::Infallible> {
        let client = parts
            .extensions
            .get::<axum::extract::ConnectInfo<mast_server::serve::ClientAddr>>()
            .map(|c| &c.0);
        Ok(Call(mast_server::authz::Caller {
            api: "mast",
            ..mast_server::authz::Caller::from_http(&parts.headers, client)
        }))
    }
}

/// The answer for a known path with a method it does not serve.
pub async fn method_not_allowed(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", method, uri.path()),
    )
}
