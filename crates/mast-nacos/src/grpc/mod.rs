//! The Nacos 2.x client protocol over gRPC, on the HTTP port + 1000 (9848 by default): the
//! unary `Request/request` and the `BiRequestStream/requestBiStream` connection, both carrying
//! [`Payload`]s whose body is JSON and whose metadata names the class.
//!
//! A client first asks `ServerCheckRequest` (unary), then opens the bi-stream with
//! `ConnectionSetupRequest`. From then on this member knows the connection (by the client's
//! address, which the unary calls share with the stream: one HTTP/2 connection), pushes config
//! changes and subscribed services' instances down the stream, and keeps the connection's
//! ephemeral instances alive on one lease that ends with the stream.
//!
//! - [`conn`]: connections, their pushes, their lease and what they listen to.
//! - [`config`]: config query / publish / remove / batch listen, and change pushes.
//! - [`naming`]: instance register / deregister (single, batch, persistent), service query,
//!   subscribe and list, and subscriber pushes.

pub mod config;
pub mod conn;
pub mod naming;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use mast_proto::nacospb::bi_request_stream_server::{BiRequestStream, BiRequestStreamServer};
use mast_proto::nacospb::request_server::{Request as RequestService, RequestServer};
use mast_proto::nacospb::{Metadata, Payload};
use mast_server::authz::Caller;
use serde::Serialize;
use serde_json::Value;
use tonic::{Request, Response, Status, Streaming};

use crate::AppState;
use crate::error::NacosError;

/// How long a request waits for its connection's setup.
const SETUP_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How far the gRPC port is from the HTTP port (Nacos clients add it themselves).
pub const GRPC_PORT_OFFSET: u16 = 1000;

/// A response's common fields (`resultCode` 200 / 500, `errorCode`, `message`,
/// `requestId`), flattened into every response body.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// 200 on success, 500 on failure.
    pub result_code: u16,
    /// 0 on success, else a Nacos error code.
    pub error_code: i32,
    /// Why, on failure (`""` on success: some clients refuse a JSON null here).
    pub message: String,
    /// The request's id.
    pub request_id: String,
    /// Whether it succeeded.
    pub success: bool,
}

impl Outcome {
    /// Success for `request_id`.
    pub fn ok(request_id: &str) -> Outcome {
        Outcome {
            result_code: 200,
            error_code: 0,
            message: String::new(),
            request_id: request_id.to_string(),
            success: true,
        }
    }

    /// Failure with a Nacos error code.
    pub fn fail(request_id: &str, error_code: i32, message: impl Into<String>) -> Outcome {
        Outcome {
            result_code: 500,
            error_code,
            message: message.into(),
            request_id: request_id.to_string(),
            success: false,
        }
    }
}

/// Builds a payload of class `kind` with `body` as its JSON.
pub fn payload(kind: &str, body: &impl Serialize) -> Payload {
    payload_of_json(kind, serde_json::to_vec(body).unwrap_or_default())
}

/// A payload of class `kind` whose body is `json`, already serialized.
pub fn payload_of_json(kind: &str, json: Vec<u8>) -> Payload {
    Payload {
        metadata: Some(Metadata {
            r#type: kind.to_string(),
            client_ip: String::new(),
            headers: HashMap::new(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: json,
        }),
    }
}

/// A response of class `kind`: the outcome's fields plus `extra` (a JSON object).
pub fn response(kind: &str, outcome: Outcome, extra: Value) -> Payload {
    let mut body = serde_json::to_value(&outcome).unwrap_or(Value::Null);
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    payload(kind, &body)
}

/// A decoded request: its class, its JSON body and its headers.
pub struct Incoming {
    /// The class (`metadata.type`).
    pub kind: String,
    /// The JSON body.
    pub body: Value,
    /// `metadata.headers`, merged with the body's `headers` object.
    pub headers: HashMap<String, String>,
}

impl Incoming {
    /// Decodes a payload.
    ///
    /// # Errors
    /// When there is no metadata type or the body is not a JSON object.
    pub fn decode(p: &Payload) -> Result<Incoming, String> {
        let meta = p.metadata.as_ref().ok_or("a payload without metadata")?;
        let body: Value = match &p.body {
            Some(any) if !any.value.is_empty() => serde_json::from_slice(&any.value)
                .map_err(|e| format!("the body of {} is not JSON: {e}", meta.r#type))?,
            _ => Value::Object(Default::default()),
        };
        if !body.is_object() {
            return Err(format!("the body of {} is not a JSON object", meta.r#type));
        }
        let mut headers = meta.headers.clone();
        if let Some(Value::Object(h)) = body.get("headers") {
            for (k, v) in h {
                if let Some(v) = v.as_str() {
                    headers.entry(k.clone()).or_insert_with(|| v.to_string());
                }
            }
        }
        Ok(Incoming {
            kind: meta.r#type.clone(),
            body,
            headers,
        })
    }

    /// A string field of the body (`""` when absent).
    pub fn str(&self, name: &str) -> &str {
        self.body.get(name).and_then(Value::as_str).unwrap_or("")
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        self.str("requestId")
    }

    /// The caller: the connection's address, with the `accessToken` header as its token.
    pub fn caller(&self, base: &Caller) -> Caller {
        let mut c = base.clone();
        if let Some(t) = self.headers.get("accessToken").filter(|t| !t.is_empty()) {
            c.token = Some(t.clone());
        }
        c
    }
}

/// A failed request as Nacos's `ErrorResponse`.
pub fn error_response(request_id: &str, error_code: i32, message: impl Into<String>) -> Payload {
    response(
        "ErrorResponse",
        Outcome::fail(request_id, error_code, message),
        Value::Object(Default::default()),
    )
}

/// The response for a request that failed with `e`, of class `kind`, with Nacos's codes:
/// 400 for bad parameters, 403 for auth, 404 / 300 for absent data, 500 otherwise. A refused
/// request that carried no token is `user not found!`, as Nacos says.
pub fn failed(kind: &str, request_id: &str, e: &NacosError, had_token: bool) -> Payload {
    let unnamed;
    let e = match e {
        NacosError::Forbidden(_) if !had_token => {
            unnamed = NacosError::Forbidden("user not found!".into());
            &unnamed
        }
        other => other,
    };
    let code = match e {
        NacosError::MissingParam(_) | NacosError::BadRequest(_) | NacosError::Service(..) => 400,
        NacosError::Forbidden(_) | NacosError::LoginFailed => 403,
        NacosError::NotFound(_) => 404,
        NacosError::Conflict(_) => 409,
        NacosError::NotImplemented(_) => 501,
        NacosError::Unavailable(_) => 503,
        NacosError::Internal(_) => 500,
    };
    response(
        kind,
        Outcome::fail(request_id, code, e.to_string()),
        Value::Object(Default::default()),
    )
}

/// The gRPC services, sharing the HTTP API's state.
#[derive(Clone)]
pub struct Grpc {
    st: AppState,
    conns: Arc<conn::Connections>,
}

impl Grpc {
    /// The services over `st`; starts the tasks that push config changes and subscribed
    /// services to connections.
    pub fn new(st: AppState) -> Grpc {
        let conns = conn::Connections::new();
        config::start_pushes(&st, &conns);
        naming::start_pushes(&st, &conns);
        Grpc { st, conns }
    }

    /// An axum router serving both services (HTTP/2).
    pub fn router(self) -> axum::Router {
        tonic::service::Routes::new(RequestServer::new(self.clone()))
            .add_service(BiRequestStreamServer::new(self))
            .prepare()
            .into_axum_router()
    }

    async fn handle(&self, caller: Caller, p: &Payload) -> Payload {
        let req = match Incoming::decode(p) {
            Ok(r) => r,
            Err(e) => return error_response("", 400, e),
        };
        let rid = req.request_id().to_string();
        tracing::trace!(kind = %req.kind, client = ?caller.addr, request_id = %rid, "Nacos request");
        // Every request but ServerCheck needs the connection's bi-stream set up (a client may
        // send one right after opening the stream: wait for the setup, bounded).
        let conn = match caller.addr {
            Some(a) if req.kind != "ServerCheckRequest" => {
                self.conns.wait_for(&a, SETUP_WAIT).await
            }
            _ => None,
        };
        if conn.is_none() && req.kind != "ServerCheckRequest" {
            return error_response(&rid, 301, "Connection is unregistered.");
        }
        match req.kind.as_str() {
            "ServerCheckRequest" => {
                let id = caller.addr.map(conn::connection_id).unwrap_or_default();
                response(
                    "ServerCheckResponse",
                    Outcome::ok(&rid),
                    serde_json::json!({ "connectionId": id, "supportAbilityNegotiation": false }),
                )
            }
            "HealthCheckRequest" => response(
                "HealthCheckResponse",
                Outcome::ok(&rid),
                Value::Object(Default::default()),
            ),
            k if k.starts_with("Config") => {
                config::handle(&self.st, &self.conns, conn, &caller, &req).await
            }
            "InstanceRequest"
            | "BatchInstanceRequest"
            | "PersistentInstanceRequest"
            | "ServiceQueryRequest"
            | "SubscribeServiceRequest"
            | "ServiceListRequest" => {
                naming::handle(&self.st, &self.conns, conn, &caller, &req).await
            }
            other => error_response(
                &rid,
                501,
                format!("Mast does not serve {other} (README: Nacos clients)"),
            ),
        }
    }
}

#[tonic::async_trait]
impl RequestService for Grpc {
    async fn request(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        let caller = Caller {
            api: "nacos",
            ..Caller::from_grpc(&request)
        };
        Ok(Response::new(self.handle(caller, request.get_ref()).await))
    }
}

type PayloadStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl BiRequestStream for Grpc {
    type requestBiStreamStream = PayloadStream;

    async fn request_bi_stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<PayloadStream>, Status> {
        let caller = Caller {
            api: "nacos",
            ..Caller::from_grpc(&request)
        };
        let Some(addr) = caller.addr else {
            return Err(Status::invalid_argument("no client address"));
        };
        let rx = conn::serve_stream(
            self.st.clone(),
            self.conns.clone(),
            addr,
            caller,
            request.into_inner(),
        );
        let out = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            out, Ok,
        ))))
    }
}
