//! Write coalescing under the `redis` crate's multiplexed connection. Its driver task writes
//! (one `writev`, one TCP segment, one wakeup of the grid) as soon as its queue is empty for a
//! moment, which under load means nearly one write per command: tasks that are about to send
//! are runnable but have not run yet. [`Coalesce`] holds the bytes of a flush back for one
//! turn of the scheduler (the driver yields once), so the commands those tasks send go out in
//! the same write. The reply path is untouched; a lone command waits one yield, no timer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held back at most; past this a write goes out without waiting for a flush.
const MAX_HELD: usize = 64 * 1024;

/// A stream whose writes are gathered until a flush, and whose flush first yields once.
pub(crate) struct Coalesce<S> {
    inner: S,
    held: Vec<u8>,
    /// Written bytes of `held` (a partial write leaves the rest for the next call).
    sent: usize,
    /// The current flush has yielded already.
    yielded: bool,
}

impl<S> Coalesce<S> {
    pub(crate) fn new(inner: S) -> Coalesce<S> {
        Coalesce { inner, held: Vec::with_capacity(4096), sent: 0, yielded: false }
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
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.held.len() >= MAX_HELD {
            std::task::ready!(self.poll_drain(cx))?;
        }
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.len() > self.sent && !self.yielded {
            // Let the tasks that are runnable now send their commands first: the scheduler
            // polls a task that woke itself after the others in its queue.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
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
