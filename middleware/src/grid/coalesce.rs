//! Write coalescing under the `redis` crate's multiplexed connection. Its driver task writes
//! (one `writev`, one TCP segment, one wakeup of the grid) as soon as its queue is empty for a
//! moment, which under load means nearly one write per command: tasks that are about to send
//! are runnable but have not run yet. [`Coalesce`] gathers a flush's bytes two ways:
//!
//! - while an earlier write has had no reply byte back, new commands wait for that reply (the
//!   grid answers in order, so they could not be answered before it anyway); everything sent
//!   meanwhile then goes out in one write. A busy connection so makes one write and one grid
//!   wakeup per round trip instead of one per burst of tasks. To be woken by that reply, the
//!   waiting flush reads it ahead into a small buffer the driver's next read takes first.
//! - a flush yields once to the scheduler before writing, so the commands of tasks that are
//!   runnable at that moment join the same write.
//!
//! A lone command on an idle connection waits one yield, no timer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held back at most; past this a write goes out without waiting for a flush or a reply.
const MAX_HELD: usize = 64 * 1024;

/// Size of one read ahead (a reply that arrives while a flush waits for it).
const READ_AHEAD: usize = 16 * 1024;

/// A stream whose writes are gathered until a flush, and whose flush waits for the reply to
/// the previous write, then yields once.
pub(crate) struct Coalesce<S> {
    inner: S,
    held: Vec<u8>,
    /// Written bytes of `held` (a partial write leaves the rest for the next call).
    sent: usize,
    /// The current flush has yielded already.
    yielded: bool,
    /// A write went out and no byte has come back since.
    awaiting: bool,
    /// Bytes read ahead by a waiting flush, for the next reads.
    ahead: BytesMut,
    /// The read ahead met the end of the stream (the next read, once `ahead` is empty, sees it).
    eof: bool,
}

impl<S> Coalesce<S> {
    pub(crate) fn new(inner: S) -> Coalesce<S> {
        Coalesce {
            inner,
            held: Vec::with_capacity(4096),
            sent: 0,
            yielded: false,
            awaiting: false,
            ahead: BytesMut::new(),
            eof: false,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
            self.awaiting = true;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> Coalesce<S> {
    /// Reads into `ahead` until a byte (or the end) arrives; Pending with the read waker set.
    fn poll_read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() || self.eof {
            self.awaiting = false;
            return Poll::Ready(Ok(()));
        }
        self.ahead.reserve(READ_AHEAD);
        let spare = self.ahead.spare_capacity_mut();
        let mut buf = ReadBuf::uninit(&mut spare[..READ_AHEAD]);
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
        unsafe { self.ahead.set_len(n) };
        self.eof = n == 0;
        self.awaiting = false;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        if self.eof {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.awaiting = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.held.len() >= MAX_HELD {
            std::task::ready!(self.poll_drain(cx))?;
        }
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.len() > self.sent && self.sent == 0 {
            if self.awaiting {
                // The previous write is unanswered: these commands go out with its reply.
                std::task::ready!(self.poll_read_ahead(cx))?;
            }
            if !self.yielded {
                // Let the tasks that are runnable now send their commands first: the
                // scheduler polls a task that woke itself after the others in its queue.
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        std::task::ready!(self.poll_drain(cx))?;
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_are_held_until_a_flush_and_then_sent_in_order() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Coalesce::new(a);
        c.write_all(b"PING\r\n").await.unwrap();
        c.write_all(b"ECHO x\r\n").await.unwrap();
        let mut probe = [0u8; 1];
        let nothing_yet =
            tokio::time::timeout(std::time::Duration::from_millis(20), b.read(&mut probe)).await;
        assert!(nothing_yet.is_err(), "bytes went out before the flush");
        c.flush().await.unwrap();
        let mut got = vec![0u8; 14];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PING\r\nECHO x\r\n");
    }

    #[tokio::test]
    async fn a_flush_waits_for_the_reply_to_the_previous_write_which_reads_still_see() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Coalesce::new(a);
        c.write_all(b"GET a\r\n").await.unwrap();
        c.flush().await.unwrap();
        let mut got = vec![0u8; 7];
        b.read_exact(&mut got).await.unwrap();
        // The first write is unanswered: the second waits for its reply.
        c.write_all(b"GET b\r\n").await.unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), c.flush()).await;
        assert!(waiting.is_err(), "a second write went out before the first was answered");
        let mut probe = [0u8; 1];
        let nothing = tokio::time::timeout(std::time::Duration::from_millis(20), b.read(&mut probe)).await;
        assert!(nothing.is_err());
        b.write_all(b"$1\r\n1\r\n").await.unwrap();
        c.flush().await.unwrap();
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET b\r\n");
        // The reply read ahead by the waiting flush is the next thing read.
        let mut reply = vec![0u8; 7];
        c.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"$1\r\n1\r\n");
    }

    #[tokio::test]
    async fn a_flush_waiting_for_a_reply_ends_when_the_peer_closes() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Coalesce::new(a);
        c.write_all(b"PING\r\n").await.unwrap();
        c.flush().await.unwrap();
        c.write_all(b"PING\r\n").await.unwrap();
        let flush = tokio::spawn(async move {
            let r = c.flush().await;
            (c, r)
        });
        let mut got = vec![0u8; 6];
        b.read_exact(&mut got).await.unwrap();
        drop(b);
        let (mut c, r) = flush.await.unwrap();
        assert!(r.is_err(), "a write to a closed peer");
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).await.unwrap(), 0, "the end of the stream is still seen");
    }

    #[tokio::test]
    async fn more_than_the_hold_limit_goes_out_through_a_small_pipe() {
        let (a, mut b) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut c = Coalesce::new(a);
        let data: Vec<u8> = (0..3 * MAX_HELD).map(|i| i as u8).collect();
        for chunk in data.chunks(1000) {
            c.write_all(chunk).await.unwrap();
        }
        c.shutdown().await.unwrap();
        drop(c);
        assert_eq!(reader.await.unwrap(), data);
    }
}
