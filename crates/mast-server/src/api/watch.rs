//! `etcdserverpb.Watch`: one bidi stream carrying many watchers (see [`crate::watch`]).

use std::sync::Arc;

use futures::Stream;
use mast_proto::etcdserverpb::{WatchRequest, WatchResponse, watch_server::Watch};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{GrpcStream, grpc_stream, record_code, started};
use crate::authz::Caller;
use crate::error::EtcdError;
use crate::node::Node;

const SVC: &str = "etcdserverpb.Watch";

/// Responses buffered per stream before the session waits for the client to read.
const STREAM_BUFFER: usize = 256;

/// The Watch service.
pub struct WatchService {
    node: Arc<Node>,
}

impl WatchService {
    /// A Watch service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        WatchService { node }
    }
}

/// Starts a watch session over `requests` and returns its responses. The session ends when
/// `requests` ends or fails (with any error `E`). It sends no errors itself: a refused create
/// is a canceled watch response, as etcd's.
pub fn open_session<S, E>(
    node: Arc<Node>,
    caller: Caller,
    requests: S,
) -> mpsc::Receiver<Result<WatchResponse, EtcdError>>
where
    S: Stream<Item = Result<WatchRequest, E>> + Unpin + Send + 'static,
    E: Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        crate::watch::serve_stream(node, caller, requests, tx).await;
        record_code(SVC, "Watch", "bidi_stream", Code::Ok);
    });
    rx
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = GrpcStream<WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        started(SVC, "Watch", "bidi_stream");
        let caller = Caller::from_grpc(&request);
        let rx = open_session(self.node.clone(), caller, request.into_inner());
        Ok(Response::new(grpc_stream(rx)))
    }
}
