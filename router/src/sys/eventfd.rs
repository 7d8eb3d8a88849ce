//! An eventfd that wakes a worker thread waiting in `poll` or on its io_uring, so a message
//! on its control channel is seen at once rather than at the next timeout.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd counter.
#[derive(Debug)]
pub struct Wake(OwnedFd);

impl Wake {
    /// A new eventfd, non-blocking and close-on-exec.
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd takes two integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd, is valid, and nothing else owns it.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable. A counter already at its maximum (EAGAIN) is readable
    /// anyway, so that error is not one.
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of a live u64 to a descriptor this struct owns.
        let _ = unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Resets the counter (nothing to read is fine: the descriptor is non-blocking).
    pub fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live, writable u64 from a descriptor this
        // struct owns.
        let _ = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut value as *mut u64).cast::<libc::c_void>(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

impl AsFd for Wake {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Wake {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(w: &Wake) -> bool {
        let mut fd = libc::pollfd {
            fd: w.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, length 1, no waiting.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n == 1 && fd.revents & libc::POLLIN != 0
    }

    #[test]
    fn notify_makes_it_readable_and_drain_resets_it() {
        let w = Wake::new().unwrap();
        assert!(!readable(&w));
        w.notify();
        w.notify();
        assert!(readable(&w));
        w.drain();
        assert!(!readable(&w));
        w.drain();
        assert!(!readable(&w), "draining an empty counter is harmless");
    }
}
