//! Write combining for client connections: the frames of many answers leave in one system call
//! (or, over TLS, in one TLS record).
//!
//! h2 (under hyper and tonic) copies a DATA frame's payload into its write buffer only below a
//! threshold: 256 bytes when the socket has vectored writes, 1 KiB when it does not. A bigger
//! payload is chained, and h2 holds one chained payload at a time, so every answer of more
//! than 256 bytes, a range of one key with a 256-byte value or a watch event, costs a
//! `writev` of its own however many answers are ready. [`CombinedWrites`] tells h2 it has no
//! vectored writes, so payloads up to 1 KiB are copied into h2's buffer and share a write.
//! Without vectored writes h2 hands over a chained payload in two writes, its buffer then the
//! payload, so this layer keeps a write (up to [`COMBINE_BYTES`], copied) until the next write
//! or flush: the next write goes out together with it in one `writev`, uncopied, and a large
//! frame costs no more system calls than before.
//!
//! Everything written is on the socket once `poll_flush` returns ready; hyper flushes after
//! every batch of frames (HTTP/2) and after every response (HTTP/1), as the `AsyncWrite`
//! contract asks of a buffering writer's users.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest write kept for later (16 KiB, h2's write buffer); a bigger one goes out at once.
pub const COMBINE_BYTES: usize = 16 * 1024;

/// A kept buffer bigger than this is freed after a flush, so idle connections hold little.
const KEEP_CAPACITY: usize = 4 * 1024;

/// A connection that keeps a write until the next write or flush and sends both in one
/// system call; see the module documentation.
pub struct CombinedWrites<S> {
    inner: S,
    kept: Vec<u8>,
}

impl<S> CombinedWrites<S> {
    /// Wraps a connection.
    pub fn new(inner: S) -> Self {
        CombinedWrites {
            inner,
            kept: Vec::new(),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> CombinedWrites<S> {
    /// Writes what is kept until it is all on the socket (or the socket would block).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.kept.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.kept))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.kept.drain(..n);
        }
        if self.kept.capacity() > KEEP_CAPACITY {
            self.kept = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CombinedWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CombinedWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.kept.is_empty() {
                if buf.len() <= COMBINE_BYTES {
                    this.kept.extend_from_slice(buf);
                    return Poll::Ready(Ok(buf.len()));
                }
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
            // What is kept, then this write, in one system call, without copying this one.
            let slices = [IoSlice::new(&this.kept), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= this.kept.len() {
                let taken = n - this.kept.len();
                this.kept.clear();
                if taken > 0 {
                    return Poll::Ready(Ok(taken));
                }
            } else {
                this.kept.drain(..n);
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    /// No: writers then hand over small pieces one by one, and they are combined here.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes of every size, through a pipe that takes at most 100 bytes at a time, arrive
    /// whole and in order once flushed.
    #[tokio::test]
    async fn every_byte_arrives_in_order() {
        let (a, mut b) = tokio::io::duplex(100);
        let mut w = CombinedWrites::new(a);
        let sizes = [
            1usize,
            5,
            300,
            16 * 1024,
            7,
            20_000,
            1,
            16 * 1024 + 1,
            900,
            3,
        ];
        let mut expected = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            expected.extend((0..n).map(|j| (i * 31 + j) as u8));
        }
        let total = expected.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; total];
            b.read_exact(&mut got).await.unwrap();
            got
        });
        let mut at = 0;
        for (k, &n) in sizes.iter().enumerate() {
            w.write_all(&expected[at..at + n]).await.unwrap();
            at += n;
            if k % 3 == 2 {
                w.flush().await.unwrap();
            }
        }
        w.flush().await.unwrap();
        assert!(w.kept.is_empty());
        assert_eq!(reader.await.unwrap(), expected);
    }

    /// A write stays until the next write or a flush, and leaves with the next write.
    #[tokio::test]
    async fn a_write_waits_for_the_next_or_the_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = CombinedWrites::new(a);
        w.write_all(b"hello ").await.unwrap();
        let mut probe = [0u8; 1];
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut probe)).await;
        assert!(
            waited.is_err(),
            "nothing is sent before the next write or the flush"
        );
        w.write_all(b"world").await.unwrap();
        assert!(w.kept.is_empty(), "the second write took the first along");
        let mut got = [0u8; 11];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        w.write_all(b"!").await.unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut probe)).await;
        assert!(waited.is_err(), "the last write waits for the flush");
        w.flush().await.unwrap();
        b.read_exact(&mut probe).await.unwrap();
        assert_eq!(&probe, b"!");

        w.write_all(b"head").await.unwrap();
        let big = vec![7u8; COMBINE_BYTES];
        w.write_all(&big).await.unwrap();
        assert!(
            w.kept.is_empty(),
            "the large write took the kept bytes along"
        );
        let mut got = vec![0u8; 4 + COMBINE_BYTES];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..].iter().all(|&x| x == 7));
        w.shutdown().await.unwrap();
    }
}
