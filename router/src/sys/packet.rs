//! A packet socket that hears only frames with zero Ethernet addresses and type on one
//! interface: how the fast datapath receives heartbeats, which the bridge would drop (a
//! zero source address is invalid) right after the packet taps saw them.
//!
//! The kernel filters with a classic BPF program attached before the socket is bound, so
//! the pods' traffic never reaches user space; the socket only costs the filter's few
//! instructions per frame.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{cvt, cvt_size, SysError};

/// `ETH_P_ALL` in network byte order, as packet sockets take protocols.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// Accepts a frame iff its first 14 bytes (both addresses and the type) are zero.
const ZERO_HEADER_FILTER: [libc::sock_filter; 10] = [
    op(0x20, 0, 0, 0),      // ld [0]
    op(0x15, 0, 7, 0),      // jeq #0, next, drop
    op(0x20, 0, 0, 4),      // ld [4]
    op(0x15, 0, 5, 0),      // jeq #0, next, drop
    op(0x20, 0, 0, 8),      // ld [8]
    op(0x15, 0, 3, 0),      // jeq #0, next, drop
    op(0x28, 0, 0, 12),     // ldh [12]
    op(0x15, 0, 1, 0),      // jeq #0, next, drop
    op(0x06, 0, 0, 0xffff), // ret #65535: the whole frame
    op(0x06, 0, 0, 0),      // drop: ret #0
];

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A non-blocking packet socket on one interface that receives zero-header frames.
#[derive(Debug)]
pub struct ZeroHeaderSocket {
    fd: OwnedFd,
    target: String,
}

impl ZeroHeaderSocket {
    /// Opens the socket on interface `ifindex` (named `name` in errors).
    pub fn open(ifindex: u32, name: &str) -> Result<Self, SysError> {
        let target = name.to_string();
        let err = |call, source| SysError::Syscall {
            call,
            target: target.clone(),
            source,
        };
        let ty = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: socket() has no memory arguments.
        let raw = unsafe { libc::socket(libc::AF_PACKET, ty, libc::c_int::from(ETH_P_ALL_BE)) };
        let raw = cvt(raw).map_err(|e| err("socket(AF_PACKET)", e))?;
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let program = libc::sock_fprog {
            len: ZERO_HEADER_FILTER.len() as u16,
            filter: ZERO_HEADER_FILTER.as_ptr().cast_mut(),
        };
        // SAFETY: `program` points at a static array of `len` instructions, which the
        // kernel copies during the call; the option length is the struct's size.
        let ret = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&raw const program).cast(),
                size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        cvt(ret).map_err(|e| err("SO_ATTACH_FILTER", e))?;
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL_BE;
        addr.sll_ifindex =
            i32::try_from(ifindex).map_err(|_| err("bind", io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: `addr` is a sockaddr_ll and its size is passed.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        cvt(ret).map_err(|e| err("bind", e))?;
        Ok(ZeroHeaderSocket { fd, target })
    }

    /// Reads one frame into `buf`; `WouldBlock` when none is queued. A frame longer than
    /// `buf` is cut; the returned length is the frame's true length.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length for the call's duration.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        cvt_size(n)
    }

    /// Registers the socket with the running tokio reactor for readability.
    pub fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<Self>> {
        // SAFETY: the socket owns its descriptor (an OwnedFd it never gives away or
        // replaces), so the descriptor stays open and the same for the AsyncFd's life.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)
    }

    /// The interface name given at open, for messages.
    pub fn name(&self) -> &str {
        &self.target
    }
}

impl AsFd for ZeroHeaderSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for ZeroHeaderSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_jumps_land_on_the_drop() {
        for (i, ins) in ZERO_HEADER_FILTER.iter().enumerate() {
            if ins.code == 0x15 {
                assert_eq!(i + 1 + usize::from(ins.jf), ZERO_HEADER_FILTER.len() - 1);
                assert_eq!(ins.jt, 0);
            }
        }
    }
}
