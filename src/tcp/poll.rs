//! poll(2) with a deadline instead of a timeout.

use std::io;
use std::time::Instant;

use rustix::event::{PollFd, Timespec, poll};

/// Waits until an fd is ready or `deadline` passes (`None`: no deadline).
/// Returns how many fds are ready, 0 on timeout. Retries on EINTR.
///
/// # Errors
/// What poll(2) reports, other than EINTR.
pub fn poll_until(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<usize> {
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            // Round up so a deadline a few microseconds away is not a busy loop.
            let nanos = left
                .subsec_nanos()
                .max(if left.is_zero() { 0 } else { 1_000_000 });
            Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: nanos as i64,
            }
        });
        match poll(fds, timeout.as_ref()) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}
