//! The small unsafe layer: TAP devices, socket options, control messages.
//!
//! Everything here is a thin, checked wrapper over one system call or one kernel ABI layout.
//! Policy (which offloads to want, how many queues, which socket is the DF one) belongs to
//! the callers in `dataplane`; this module only makes the calls and reports what the kernel
//! said, with the interface or socket it concerned.
//!
//! This is the one module of the crate where `unsafe` is allowed: every block says why it is
//! sound in a `// SAFETY:` line next to it.
#![allow(unsafe_code)]

pub mod cmsg;
pub mod cpu;
pub mod eventfd;
pub mod netns;
pub mod packet;
pub mod socket;
pub mod tap;

use std::io;

/// What went wrong in a system call of this layer, with the thing it was about.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// A system call failed; `target` names the interface, socket or namespace.
    #[error("{call} on {target}: {source}")]
    Syscall {
        /// The call (or ioctl/option name) that failed.
        call: &'static str,
        /// The interface, address or namespace it was made for.
        target: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// An interface name that the kernel cannot take (empty, too long, or with a NUL or '/').
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no NUL, '/' or whitespace")]
    BadIfName(String),
    /// A network namespace name that is not a plain file name under /var/run/netns.
    #[error("invalid network namespace name {0:?}")]
    BadNetnsName(String),
    /// A CPU index outside what `cpu_set_t` can hold.
    #[error("cpu index {cpu} is out of range (at most {max})")]
    CpuOutOfRange {
        /// The index asked for.
        cpu: usize,
        /// The largest index a `cpu_set_t` holds.
        max: usize,
    },
    /// The running kernel lacks a feature this layer needs.
    #[error("{what} is not supported by this kernel ({detail})")]
    Unsupported {
        /// The missing feature.
        what: &'static str,
        /// What the kernel reported.
        detail: String,
    },
}

impl SysError {
    /// The raw OS error number, when this is a failed system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Syscall { source, .. } => source.raw_os_error(),
            Self::BadIfName(_)
            | Self::BadNetnsName(_)
            | Self::CpuOutOfRange { .. }
            | Self::Unsupported { .. } => None,
        }
    }
}

/// Turns a `-1` return of a libc call into the current `errno` as an [`io::Error`].
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`cvt`] for calls returning `ssize_t`.
pub(crate) fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        // A non-negative ssize_t always fits usize.
        Ok(ret as usize)
    }
}
