//! A lean unary gRPC client for the KV workloads (put, range, txn), on the `h2` crate directly.
//!
//! The load generator shares the machine with the server it measures, so every microsecond it
//! spends per request is a microsecond the server does not get. Through a tonic `Channel`, a
//! unary call hops through a tower buffer task and hyper's body pipe, and its HEADERS and DATA
//! frames usually leave in separate writes: 2.0 `writev` calls and 34–48 µs of client CPU per
//! put over 10 connections (benchmarks/notes.md, item 19). Here a call encodes its message,
//! queues HEADERS and DATA (with END_STREAM) together and waits for the answer, so one write of
//! the connection carries every call queued since the previous one.
//!
//! Only unary calls go this way; watch and lease keepalive streams keep tonic. The wire is plain
//! gRPC over HTTP/2 (a 5-byte length prefix, `grpc-status` in the trailers), so any etcd v3
//! endpoint answers it exactly as it answers tonic or grpc-go.

use std::time::Duration;

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::uri::{Authority, PathAndQuery, Scheme};
use mast_proto::etcdserverpb::{
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use prost::Message;
use tonic::{Code, Status};

use crate::endpoint::Target;

/// Flow-control window of each stream (1 MiB), so range answers rarely wait on a WINDOW_UPDATE.
const STREAM_WINDOW: u32 = 1 << 20;
/// Flow-control window of each connection (16 MiB).
const CONN_WINDOW: u32 = 16 << 20;

/// One HTTP/2 connection to an etcd v3 endpoint, cheap to clone: clones multiplex their calls
/// over the same connection, as clients sharing one of etcd `benchmark`'s `--conns` do.
#[derive(Clone)]
pub struct KvConn {
    send: SendRequest<Bytes>,
    authority: Authority,
}

impl KvConn {
    /// Opens a connection to `target` and spawns its I/O task on the current runtime.
    ///
    /// # Errors
    /// The TCP connect or the HTTP/2 handshake fails or takes longer than `timeout`.
    pub async fn connect(target: &Target, timeout: Duration) -> anyhow::Result<KvConn> {
        let open = async {
            let tcp = tokio::net::TcpStream::connect(target.addr).await?;
            tcp.set_nodelay(true)?;
            let (send, conn) = h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONN_WINDOW)
                .handshake::<_, Bytes>(Unvectored(tcp))
                .await?;
            anyhow::Ok((send, conn))
        };
        let (send, conn) = tokio::time::timeout(timeout, open)
            .await
            .with_context(|| format!("connecting to {}: timed out", target.label))?
            .with_context(|| format!("connecting to {}", target.label))?;
        // The connection task ends when every clone of `send` is dropped or the peer goes away.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = Authority::try_from(target.addr.to_string()).context("authority")?;
        Ok(KvConn { send, authority })
    }

    /// `etcdserverpb.KV/Put`.
    ///
    /// # Errors
    /// The server's gRPC status, or `Unavailable` when the connection fails.
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse, Status> {
        self.call("/etcdserverpb.KV/Put", &req).await
    }

    /// `etcdserverpb.KV/Range`.
    ///
    /// # Errors
    /// As [`KvConn::put`].
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        self.call("/etcdserverpb.KV/Range", &req).await
    }

    /// `etcdserverpb.KV/Txn`.
    ///
    /// # Errors
    /// As [`KvConn::put`].
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        self.call("/etcdserverpb.KV/Txn", &req).await
    }

    /// One unary call: the request framed as gRPC (flag byte 0, big-endian u32 length, message)
    /// and sent with END_STREAM; the answer's single message decoded; a non-OK `grpc-status`
    /// (in the headers of a trailers-only answer, or in the trailers) returned as the error.
    async fn call<Q: Message, R: Message + Default>(
        &self,
        path: &'static str,
        req: &Q,
    ) -> Result<R, Status> {
        let len = req.encoded_len();
        let mut body = BytesMut::with_capacity(5 + len);
        body.put_u8(0);
        body.put_u32(u32::try_from(len).map_err(|_| Status::internal("request too large"))?);
        req.encode(&mut body)
            .map_err(|e| Status::internal(e.to_string()))?;
        let uri = http::Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        let request = http::Request::post(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| Status::internal(e.to_string()))?;

        let mut send = self.send.clone().ready().await.map_err(h2_status)?;
        let (answer, mut stream) = send.send_request(request, false).map_err(h2_status)?;
        stream.send_data(body.freeze(), true).map_err(h2_status)?;

        let (head, mut recv) = answer.await.map_err(h2_status)?.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(Status::unknown(format!("HTTP status {}", head.status)));
        }
        if let Some(status) = Status::from_header_map(&head.headers) {
            // A trailers-only answer: the status is all there is.
            return match status.code() {
                Code::Ok => Err(Status::internal("answer without a message")),
                _ => Err(status),
            };
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(h2_status)?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.map_err(h2_status)?;
        match trailers.as_ref().and_then(Status::from_header_map) {
            Some(status) if status.code() != Code::Ok => return Err(status),
            Some(_) => {}
            None => return Err(Status::internal("answer without grpc-status")),
        }
        decode_message(&buf)
    }
}

/// A TCP stream that tells h2 it has no vectored writes.
///
/// h2 copies a DATA payload into its write buffer only below a threshold: 256 bytes when the
/// stream writes vectored, 1 KiB when it does not. Bigger payloads are chained, and h2 holds
/// one chained payload at a time, so each becomes its own `writev`: a put of a 256-byte value
/// (a 283-byte DATA frame) cost one system call per request however many were queued. Without
/// vectored writes the frames of many calls share one plain write.
struct Unvectored(tokio::net::TcpStream);

impl tokio::io::AsyncRead for Unvectored {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Unvectored {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Decodes the one length-prefixed message of a unary answer.
fn decode_message<R: Message + Default>(buf: &[u8]) -> Result<R, Status> {
    let Some((head, rest)) = buf.split_first_chunk::<5>() else {
        return Err(Status::internal("answer without a message"));
    };
    if head[0] != 0 {
        return Err(Status::unimplemented(
            "compressed answers are not supported",
        ));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let msg = rest
        .get(..len)
        .ok_or_else(|| Status::internal("answer shorter than its length prefix"))?;
    R::decode(msg).map_err(|e| Status::internal(format!("decoding the answer: {e}")))
}

/// An HTTP/2 failure as the status tonic would give it.
fn h2_status(e: h2::Error) -> Status {
    Status::unavailable(format!("HTTP/2: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mast_proto::etcdserverpb::kv_server::{Kv, KvServer};
    use mast_proto::etcdserverpb::{
        CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
        ResponseHeader,
    };
    use mast_proto::mvccpb::KeyValue;
    use tonic::{Request, Response};

    /// A KV service with scripted answers, served by tonic, to check the client's side of the
    /// wire against another implementation of it.
    struct Scripted;

    #[tonic::async_trait]
    impl Kv for Scripted {
        /// `limit` keys of 1 KiB each: the answer spans several DATA frames.
        async fn range(
            &self,
            req: Request<RangeRequest>,
        ) -> Result<Response<RangeResponse>, Status> {
            let n = req.into_inner().limit;
            let kvs = (0..n)
                .map(|i| KeyValue {
                    key: format!("k{i:05}").into_bytes().into(),
                    value: vec![b'v'; 1024].into(),
                    mod_revision: i + 1,
                    ..Default::default()
                })
                .collect();
            Ok(Response::new(RangeResponse {
                kvs,
                count: n,
                ..Default::default()
            }))
        }

        /// etcd's refusal of an empty key; otherwise revision 7.
        async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
            if req.get_ref().key.is_empty() {
                return Err(Status::invalid_argument("etcdserver: key is not provided"));
            }
            Ok(Response::new(PutResponse {
                header: Some(ResponseHeader {
                    revision: 7,
                    ..Default::default()
                }),
                ..Default::default()
            }))
        }

        async fn delete_range(
            &self,
            _: Request<DeleteRangeRequest>,
        ) -> Result<Response<DeleteRangeResponse>, Status> {
            Err(Status::unimplemented("not scripted"))
        }

        async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
            Err(Status::unimplemented("not scripted"))
        }

        async fn compact(
            &self,
            _: Request<CompactionRequest>,
        ) -> Result<Response<CompactionResponse>, Status> {
            Err(Status::unimplemented("not scripted"))
        }
    }

    #[tokio::test]
    async fn calls_answers_and_errors_cross_the_wire() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = futures::stream::unfold(listener, |l| async move {
            Some((l.accept().await.map(|(s, _)| s), l))
        });
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KvServer::new(Scripted))
                .serve_with_incoming(incoming),
        );
        let target = Target {
            label: addr.to_string(),
            addr,
        };
        let kv = KvConn::connect(&target, Duration::from_secs(5))
            .await
            .unwrap();

        let put = kv
            .put(PutRequest {
                key: Bytes::from_static(b"a"),
                value: Bytes::from(vec![b'x'; 300]),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(put.header.unwrap().revision, 7);

        let err = kv.put(PutRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.message(), "etcdserver: key is not provided");
        assert_eq!(
            kv.txn(TxnRequest::default()).await.unwrap_err().code(),
            Code::Unimplemented
        );

        // 100 KiB over 16 KiB frames, and many calls at once on one connection.
        let calls = (0..20).map(|_| {
            kv.range(RangeRequest {
                limit: 100,
                ..Default::default()
            })
        });
        for got in futures::future::join_all(calls).await {
            let got = got.unwrap();
            assert_eq!(got.kvs.len(), 100);
            assert_eq!(got.kvs[99].key, Bytes::from_static(b"k00099"));
            assert_eq!(got.kvs[99].value.len(), 1024);
        }
        server.abort();
    }

    #[test]
    fn messages_are_framed_and_checked() {
        let resp = PutResponse::default();
        let mut buf = vec![0, 0, 0, 0, 0];
        let ok: PutResponse = decode_message(&buf).unwrap();
        assert_eq!(ok, resp);
        buf.push(1);
        buf[4] = 2; // claims two bytes, has one
        assert_eq!(
            decode_message::<PutResponse>(&buf).unwrap_err().code(),
            Code::Internal
        );
        assert_eq!(
            decode_message::<PutResponse>(&[1, 0, 0, 0, 0])
                .unwrap_err()
                .code(),
            Code::Unimplemented
        );
        assert!(decode_message::<PutResponse>(&[0, 0]).is_err());
    }
}
