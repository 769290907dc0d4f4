//! Connections whose client stops reading are closed.
//!
//! An answer the client does not read fills the socket's buffers; then every write waits, and
//! a live feed or an ndjson log stream would keep its slot (and the answer's buffered memory)
//! until the server shut down. The kernel knows better than a timer around our writes whether
//! the client still reads: with `TCP_USER_TIMEOUT` it closes a connection whose peer has kept
//! its receive window shut (or left sent data unacknowledged) for the send timeout. A client
//! that reads, however slowly, opens its window now and then and is never cut; a client on a
//! slow link keeps acknowledging. (A timer that restarted on each completed write cut steady
//! slow readers: the kernel wakes a blocked writer only once a third of a send buffer of up to
//! 4 MB has drained.)

use std::time::Duration;

/// Sets the send timeout of an accepted connection (`TCP_USER_TIMEOUT`); a failure is logged
/// and leaves the connection without one (as on a platform without the option).
pub(crate) fn set_send_timeout(stream: &tokio::net::TcpStream, limit: Duration) {
    let millis = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX).max(1);
    if let Err(e) = rustix::net::sockopt::set_tcp_user_timeout(stream, millis) {
        tracing::warn!(error = %e, "cannot set the send timeout (TCP_USER_TIMEOUT) of a connection");
    }
}

/// What a connection closed by the send timeout is logged with.
pub(crate) const CUT: &str = "the client took nothing of its answer for the send timeout";

/// Whether `err` (hyper's, wrapping the I/O error) is the kernel's `TCP_USER_TIMEOUT` abort.
pub(crate) fn is_send_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cause = e.source();
    }
    false
}
