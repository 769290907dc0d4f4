//! Connections whose client stops reading are closed.
//!
//! An answer the client does not read fills the socket's buffers, and then each write would
//! wait forever: a live feed or an ndjson log stream would keep its slot (and ~1.5 MB of
//! buffered answer) until the server shut down, and a large answer its memory. Writes that
//! make no progress for the send timeout fail instead, which ends the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io` whose writes fail with `TimedOut` once they have been blocked for `limit` without
/// a byte accepted. Reads are untouched (idle connections are bounded by the connection caps
/// and the header-read timeout).
pub(crate) struct SendTimeout<IO> {
    io: IO,
    limit: Duration,
    /// Armed when a write is first blocked; disarmed by any write that makes progress.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<IO> SendTimeout<IO> {
    pub(crate) fn new(io: IO, limit: Duration) -> Self {
        SendTimeout {
            io,
            limit,
            blocked: None,
        }
    }

    /// Passes a ready write through (progress: the clock stops); on a blocked one, starts
    /// the clock or fails once it has run out. The timer shares the write's waker, so a
    /// connection waiting only on a stalled client is polled again when the time is up.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.blocked = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, ROOT_CAUSE)))
            }
        }
    }
}

/// What a connection closed by [`SendTimeout`] ends with.
pub(crate) const ROOT_CAUSE: &str = "the client read nothing of its answer for the send timeout";

/// Whether `err` (hyper's, wrapping the I/O error) is a [`SendTimeout`] running out.
pub(crate) fn is_send_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut && io.to_string() == ROOT_CAUSE {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

impl<IO: AsyncRead + Unpin> AsyncRead for SendTimeout<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SendTimeout<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A pipe whose reader stops reading: the writer fails after the limit, not before; a
    /// reader that keeps reading, however slowly, is never cut.
    #[tokio::test]
    async fn a_write_blocked_for_the_limit_fails_and_progress_resets_the_clock() {
        let limit = Duration::from_millis(300);
        let (near, _far) = tokio::io::duplex(64);
        let mut guarded = SendTimeout::new(near, limit);
        let started = std::time::Instant::now();
        let err = guarded
            .write_all(&[7u8; 1024])
            .await
            .expect_err("nobody reads");
        assert!(is_send_timeout(&err), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= limit && waited < Duration::from_secs(5),
            "{waited:?}"
        );

        // Slow but steady: 64 bytes every 100 ms, 1.6 s in all, each wait below the limit.
        let (near, mut far) = tokio::io::duplex(64);
        let mut guarded = SendTimeout::new(near, limit);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while got.len() < 1024 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = far.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        guarded
            .write_all(&[9u8; 1024])
            .await
            .expect("a reader that reads is not cut");
        assert_eq!(reader.await.expect("reader").len(), 1024);
    }
}
