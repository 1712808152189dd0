//! Accepting the `:authority` that etcdctl 3.4 sends.
//!
//! etcdctl 3.4 dials some commands (`endpoint status`, `endpoint hashkv`, `defrag`) through a
//! gRPC "passthrough" target built from the endpoint URL, so when the user writes
//! `--endpoints http://127.0.0.1:2379` the HTTP/2 `:authority` of those requests is
//! `http://127.0.0.1:2379`. etcd's Go HTTP/2 server accepts that; the `h2` crate under hyper
//! rejects it as malformed and resets the stream. [`AuthorityFixStream`] sits between the TCP
//! socket and hyper: on an HTTP/2 connection it decodes the first request header block with
//! HPACK; if its `:authority` carries a URL scheme, it strips it and re-encodes that block and
//! every later one (so the HPACK tables of the client, this layer and h2 stay consistent);
//! otherwise the connection passes through untouched from then on. HTTP/1 connections pass
//! through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::combine::CombinedWrites;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length in bytes.
const FRAME_HEADER: usize = 9;
/// Largest frame payload we emit: the HTTP/2 default `SETTINGS_MAX_FRAME_SIZE`, which hyper
/// keeps.
const MAX_PAYLOAD: usize = 16_384;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Not yet known whether this is HTTP/2 with prior knowledge.
    Detect,
    /// HTTP/2: header blocks are rewritten.
    H2,
    /// HTTP/1 (or a broken HTTP/2 stream): bytes pass unchanged.
    Passthrough,
}

/// A header block being collected from HEADERS + CONTINUATION frames.
struct Pending {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The frames as received, replayed unchanged if the block cannot be decoded.
    original: Vec<u8>,
}

struct Hpack {
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
}

/// A client connection whose HTTP/2 `:authority` values are made acceptable to h2.
pub struct AuthorityFixStream<S = CombinedWrites<TcpStream>> {
    inner: S,
    mode: Mode,
    raw: BytesMut,
    out: BytesMut,
    hpack: Option<Box<Hpack>>,
    pending: Option<Pending>,
    eof: bool,
    /// Whether this connection's header blocks are being re-encoded (decided by its first
    /// request: only a connection that sends a scheme in `:authority` pays for rewriting).
    rewriting: bool,
    /// Read buffer for the socket.
    scratch: Box<[u8]>,
}

impl<S> AuthorityFixStream<S> {
    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        AuthorityFixStream {
            inner,
            mode: Mode::Detect,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            hpack: None,
            pending: None,
            eof: false,
            rewriting: false,
            scratch: vec![0; MAX_PAYLOAD + FRAME_HEADER].into_boxed_slice(),
        }
    }

    /// Moves whatever can be processed from `raw` to `out`.
    fn process(&mut self) {
        if self.mode == Mode::Detect {
            let n = self.raw.len().min(PREFACE.len());
            if self.raw[..n] != PREFACE[..n] {
                self.mode = Mode::Passthrough;
            } else if n == PREFACE.len() {
                self.mode = Mode::H2;
                self.hpack = Some(Box::new(Hpack {
                    decoder: loona_hpack::Decoder::new(),
                    encoder: loona_hpack::Encoder::new(),
                }));
                self.out.put(self.raw.split_to(PREFACE.len()));
            } else if self.eof {
                self.mode = Mode::Passthrough;
            } else {
                return;
            }
        }
        if self.mode == Mode::Passthrough {
            if let Some(p) = self.pending.take() {
                self.out.put_slice(&p.original);
            }
            let all = self.raw.split();
            self.out.put(all);
            return;
        }
        while self.mode == Mode::H2 && self.raw.len() >= FRAME_HEADER {
            let len = (usize::from(self.raw[0]) << 16)
                | (usize::from(self.raw[1]) << 8)
                | usize::from(self.raw[2]);
            if self.raw.len() < FRAME_HEADER + len {
                break;
            }
            let frame = self.raw.split_to(FRAME_HEADER + len);
            self.frame(&frame);
        }
        if self.mode == Mode::Passthrough {
            self.process();
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.pending.as_mut()) {
            (TYPE_HEADERS, None) => {
                let Some((priority, fragment)) = split_headers_payload(flags, payload) else {
                    self.give_up(frame);
                    return;
                };
                self.pending = Some(Pending {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    block: fragment.to_vec(),
                    original: frame.to_vec(),
                });
            }
            (TYPE_CONTINUATION, Some(p)) if p.stream_id == stream_id => {
                p.block.extend_from_slice(payload);
                p.original.extend_from_slice(frame);
            }
            (_, None) => {
                self.out.put_slice(frame);
                return;
            }
            (_, Some(_)) => {
                // Anything but a CONTINUATION inside a header block is a protocol error; let h2
                // see the bytes as sent and report it.
                self.give_up(frame);
                return;
            }
        }
        if flags & FLAG_END_HEADERS != 0 {
            let p = self.pending.take().expect("set above");
            self.finish(p);
        }
    }

    /// Stops rewriting: replays what is held and passes everything through from now on.
    fn give_up(&mut self, frame: &[u8]) {
        if let Some(p) = self.pending.take() {
            self.out.put_slice(&p.original);
        }
        self.out.put_slice(frame);
        self.mode = Mode::Passthrough;
    }

    fn finish(&mut self, p: Pending) {
        let hpack = self.hpack.as_mut().expect("H2 mode has HPACK state");
        let mut headers = match hpack.decoder.decode(&p.block) {
            Ok(h) => h,
            Err(_) => {
                self.out.put_slice(&p.original);
                self.mode = Mode::Passthrough;
                return;
            }
        };
        let mut changed = false;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority"
                && let Some(i) = value.windows(3).position(|w| w == b"://")
            {
                value.drain(..i + 3);
                while value.last() == Some(&b'/') {
                    value.pop();
                }
                changed = true;
            }
        }
        if !changed && !self.rewriting {
            // The connection's first request needs nothing: pass this block and everything
            // after it through untouched (h2 decodes the client's own encoding, so its table
            // stays in step), costing one decode per connection, not one per request.
            self.out.put_slice(&p.original);
            self.mode = Mode::Passthrough;
            return;
        }
        // From here on every block of this connection is re-encoded, so the HPACK tables of
        // this layer and of h2 stay consistent.
        self.rewriting = true;
        let block = hpack
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let prio_len = if p.priority.is_some() { 5 } else { 0 };
        let mut rest: &[u8] = &block;
        let mut first = true;
        loop {
            let room = if first {
                MAX_PAYLOAD - prio_len
            } else {
                MAX_PAYLOAD
            };
            let take = rest.len().min(room);
            let (chunk, tail) = rest.split_at(take);
            let last = tail.is_empty();
            let (kind, mut flags) = if first {
                (TYPE_HEADERS, 0)
            } else {
                (TYPE_CONTINUATION, 0)
            };
            if first && p.end_stream {
                flags |= FLAG_END_STREAM;
            }
            if first && p.priority.is_some() {
                flags |= FLAG_PRIORITY;
            }
            if last {
                flags |= FLAG_END_HEADERS;
            }
            let len = chunk.len() + if first { prio_len } else { 0 };
            self.out
                .put_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
            self.out.put_u32(p.stream_id);
            if first && let Some(prio) = p.priority {
                self.out.put_slice(&prio);
            }
            self.out.put_slice(chunk);
            rest = tail;
            first = false;
            if last {
                break;
            }
        }
    }
}

/// Splits a HEADERS payload into its priority fields and header block fragment, dropping
/// padding. `None` when the payload is too short for its flags.
fn split_headers_payload(flags: u8, mut payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = payload.split_first()?;
        payload = rest.get(..rest.len().checked_sub(usize::from(pad))?)?;
    }
    let priority = if flags & FLAG_PRIORITY != 0 {
        let p: [u8; 5] = payload.get(..5)?.try_into().ok()?;
        payload = &payload[5..];
        Some(p)
    } else {
        None
    };
    Some((priority, payload))
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for AuthorityFixStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Passthrough && this.raw.is_empty() && this.pending.is_none() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.eof {
                // Whatever is left is an incomplete frame: hand it over as it is.
                if let Some(p) = this.pending.take() {
                    this.out.put_slice(&p.original);
                }
                let rest = this.raw.split();
                this.out.put(rest);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut rb = ReadBuf::new(&mut this.scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
            } else {
                this.raw.put_slice(rb.filled());
            }
            this.process();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AuthorityFixStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections are [`AuthorityFixStream`]s over [`CombinedWrites`], with
/// `TCP_NODELAY` set.
pub struct FixListener(pub TcpListener);

impl axum::serve::Listener for FixListener {
    type Io = AuthorityFixStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    return (AuthorityFixStream::new(CombinedWrites::new(tcp)), addr);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_frame(stream: u32, block: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![
            (block.len() >> 16) as u8,
            (block.len() >> 8) as u8,
            block.len() as u8,
            TYPE_HEADERS,
            flags,
        ];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(block);
        f
    }

    #[test]
    fn split_payload_handles_padding_and_priority() {
        let p = [2u8, 1, 2, 3, 4, 5, b'h', b'i', 0, 0];
        let (prio, frag) = split_headers_payload(FLAG_PADDED | FLAG_PRIORITY, &p).unwrap();
        assert_eq!(prio, Some([1, 2, 3, 4, 5]));
        assert_eq!(frag, b"hi");
        assert!(split_headers_payload(FLAG_PADDED, &[9, 1]).is_none());
    }

    #[tokio::test]
    async fn scheme_is_stripped_from_authority() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (server, _) = listener.accept().await.unwrap();
        let _client = client.await.unwrap();
        let mut s = AuthorityFixStream::new(server);
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
        ]);
        s.raw.put_slice(PREFACE);
        s.raw.put_slice(&headers_frame(1, &block, FLAG_END_HEADERS));
        s.process();
        assert_eq!(&s.out[..PREFACE.len()], PREFACE);
        let frame = &s.out[PREFACE.len()..];
        let len = (usize::from(frame[1]) << 8) | usize::from(frame[2]);
        assert_eq!(frame[3], TYPE_HEADERS);
        assert_eq!(frame[4], FLAG_END_HEADERS);
        let mut dec = loona_hpack::Decoder::new();
        let headers = dec.decode(&frame[9..9 + len]).unwrap();
        assert!(headers.contains(&(b":authority".to_vec(), b"127.0.0.1:2379".to_vec())));
        assert!(headers.contains(&(
            b":path".to_vec(),
            b"/etcdserverpb.Maintenance/Status".to_vec()
        )));
    }

    #[tokio::test]
    async fn plain_authority_passes_the_connection_through() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (server, _) = listener.accept().await.unwrap();
        let _client = client.await.unwrap();
        let mut s = AuthorityFixStream::new(server);
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"127.0.0.1:2379"),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&headers_frame(1, &block, FLAG_END_HEADERS));
        s.raw.put_slice(&input);
        s.process();
        assert_eq!(&s.out[..], &input[..], "bytes unchanged");
        assert_eq!(s.mode, Mode::Passthrough);
    }
}
