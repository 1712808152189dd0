//! The Nacos layer's one error type. Nacos's v1 open API answers errors with an HTTP status and
//! a plain-text body (`caused: <message>;` for the config API), and auth failures with Spring's
//! JSON error body; every failure of this crate is a [`NacosError`], made from the registry's
//! [`ApiError`] (and so from the server's `EtcdError`) by its code, never by its message, and
//! turned into a response only by [`IntoResponse`] (plus [`spring_error_bodies`], which adds
//! the request path Spring's body carries).

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mast_registry::{ApiError, ErrorCode};

/// Why a Nacos request failed; each variant has one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NacosError {
    /// 500: a required parameter is absent. Nacos's config API lets Spring's
    /// `MissingServletRequestParameterException` reach its catch-all handler, which answers
    /// 500 with the HTML-escaped message; Mast answers the same.
    #[error(
        "caused: Required request parameter &#39;{0}&#39; for method parameter type String is not present;"
    )]
    MissingParam(String),
    /// 400: a parameter is malformed; the text is Nacos's for the same check.
    #[error("{0}")]
    BadRequest(String),
    /// 403: no token or a token Mast does not accept (`user not found!`, `token invalid!`),
    /// or a role that does not allow the config (`authorization failed!`). Sent as Spring's
    /// JSON error body, as Nacos's auth filter does.
    #[error("{0}")]
    Forbidden(String),
    /// 403 `user not found!` in plain text: a login whose user name or password is wrong.
    #[error("user not found!")]
    LoginFailed,
    /// 404: the config does not exist (`config data not exist`).
    #[error("{0}")]
    NotFound(String),
    /// 409: the config changed under the request too many times.
    #[error("{0}")]
    Conflict(String),
    /// 501: a Nacos feature Mast does not serve (listed in README).
    #[error("{0}")]
    NotImplemented(String),
    /// 503: no leader, shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// 400: a service operation refused by the service's state (the text is Nacos's v1 one;
    /// the v2 API answers each kind with its own code).
    #[error("{1}")]
    Service(ServiceRefusal, String),
    /// 500: a bug or a storage failure.
    #[error("caused: {0};")]
    Internal(String),
}

/// Why a service operation was refused (Nacos's `ErrorCode` of the v2 API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceRefusal {
    /// Creating a service that exists (21007 `service already exist`).
    Exists,
    /// Changing, deleting or reading a service that does not exist (21008
    /// `service not exist`).
    NotFound,
    /// Deleting a service that still has instances (21009 `service delete failure`).
    NotEmpty,
}

impl ServiceRefusal {
    /// The v2 API's code and message.
    pub fn v2(self) -> (i32, &'static str) {
        match self {
            ServiceRefusal::Exists => (21007, "service already exist"),
            ServiceRefusal::NotFound => (21008, "service not exist"),
            ServiceRefusal::NotEmpty => (21009, "service delete failure"),
        }
    }
}

/// The result of a handler step.
pub type NacosResult<T> = Result<T, NacosError>;

impl NacosError {
    /// The HTTP status the error is sent with.
    pub fn status(&self) -> StatusCode {
        match self {
            NacosError::MissingParam(_) | NacosError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            NacosError::BadRequest(_) | NacosError::Service(..) => StatusCode::BAD_REQUEST,
            NacosError::Forbidden(_) | NacosError::LoginFailed => StatusCode::FORBIDDEN,
            NacosError::NotFound(_) => StatusCode::NOT_FOUND,
            NacosError::Conflict(_) => StatusCode::CONFLICT,
            NacosError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            NacosError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A 400 in the config API's words: `caused: <message>;`.
    pub fn caused(message: impl std::fmt::Display) -> NacosError {
        NacosError::BadRequest(format!("caused: {message};"))
    }

    /// A 500 for the required parameter `name`.
    pub fn missing(name: &str) -> NacosError {
        NacosError::MissingParam(name.to_string())
    }

    /// The error for an [`ApiError`], where `had_token` tells whether the request named a
    /// caller (Nacos says `user not found!` without one, `token invalid!` with one it refuses).
    pub fn from_api(e: ApiError, had_token: bool) -> NacosError {
        let m = e.message;
        match e.code {
            ErrorCode::InvalidArgument
            | ErrorCode::InvalidContent
            | ErrorCode::SchemaViolation
            | ErrorCode::InvalidSchema
            | ErrorCode::TooLarge
            | ErrorCode::MethodNotAllowed => NacosError::caused(m),
            ErrorCode::Unauthenticated if had_token => {
                NacosError::Forbidden("token invalid!".into())
            }
            ErrorCode::Unauthenticated => NacosError::Forbidden("user not found!".into()),
            ErrorCode::PermissionDenied => NacosError::Forbidden("authorization failed!".into()),
            ErrorCode::NotFound | ErrorCode::LeaseExpired => NacosError::NotFound(m),
            ErrorCode::Conflict | ErrorCode::NoLease => NacosError::Conflict(m),
            ErrorCode::Compacted | ErrorCode::Internal => NacosError::Internal(m),
            ErrorCode::Unavailable => NacosError::Unavailable(m),
        }
    }
}

impl From<ApiError> for NacosError {
    fn from(e: ApiError) -> Self {
        NacosError::from_api(e, true)
    }
}

impl From<mast_server::EtcdError> for NacosError {
    fn from(e: mast_server::EtcdError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<mast_model::NameError> for NacosError {
    fn from(e: mast_model::NameError) -> Self {
        NacosError::caused(e)
    }
}

/// Marks a response whose body [`spring_error_bodies`] writes: Spring's JSON error, which
/// names the request path.
#[derive(Clone, Debug)]
struct SpringError(String);

impl IntoResponse for NacosError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "text/plain;charset=UTF-8")],
            self.to_string(),
        )
            .into_response();
        if let NacosError::Forbidden(message) = self {
            resp.extensions_mut().insert(SpringError(message));
        }
        resp
    }
}

/// Spring's error body: `{"timestamp","status","error","message","path"}`.
#[derive(serde::Serialize)]
struct SpringBody<'a> {
    timestamp: String,
    status: u16,
    error: &'a str,
    message: &'a str,
    path: &'a str,
}

/// Middleware: gives a [`NacosError::Forbidden`] answer Spring's JSON error body with the
/// request's path, as Nacos's auth filter answers (`sendError(403, message)`).
pub async fn spring_error_bodies(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let mut resp = next.run(req).await;
    let Some(SpringError(message)) = resp.extensions_mut().remove::<SpringError>() else {
        return resp;
    };
    let status = resp.status();
    let body = SpringBody {
        timestamp: chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false),
        status: status.as_u16(),
        error: status.canonical_reason().unwrap_or(""),
        message: &message,
        path: &path,
    };
    let json = serde_json::to_string(&body).unwrap_or_default();
    let mut out = (status, json).into_response();
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}
