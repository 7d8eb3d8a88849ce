//! The system calls std does not wrap: batched UDP send and receive (one syscall per
//! [`MAX_BATCH`] datagrams keeps the load generator from being the bottleneck it measures),
//! forced socket buffer sizes, waiting for a listener with a timeout, and the timer slack of
//! paced senders.
#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Datagrams per `sendmmsg`/`recvmmsg` call.
pub(super) const MAX_BATCH: usize = 64;

/// Bytes of each received datagram kept: the header is all the server reads.
pub(super) const PEEK_LEN: usize = 64;

/// Sends `bufs` (at most [`MAX_BATCH`]) as one datagram each on a connected socket; returns
/// how many the kernel took, which may be fewer than asked.
pub(super) fn send_batch(sock: &UdpSocket, bufs: &[Vec<u8>]) -> io::Result<usize> {
    let n = bufs.len().min(MAX_BATCH);
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    for (slot, buf) in iov.iter_mut().zip(&bufs[..n]) {
        // sendmmsg only reads through iov_base; the C type has no const variant.
        slot.iov_base = buf.as_ptr() as *mut libc::c_void;
        slot.iov_len = buf.len();
    }
    // SAFETY: mmsghdr is a C struct of integers and pointers; all-zero is a valid value (null
    // name, no control data, no iovecs).
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for (msg, slot) in msgs.iter_mut().zip(iov.iter_mut()).take(n) {
        msg.msg_hdr.msg_iov = slot;
        msg.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: msgs[..n] each point at one iovec in `iov`, which points at a live buffer of
    // the stated length; `iov`, `msgs` and `bufs` outlive the call; the socket is connected,
    // so msg_name stays null.
    let sent = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Receives up to [`MAX_BATCH`] datagrams, waiting (up to the socket's read timeout) for the
/// first only; keeps the first [`PEEK_LEN`] bytes of each in `bufs` and its full length in
/// `lens`. Returns how many arrived.
pub(super) fn recv_batch(
    sock: &UdpSocket,
    bufs: &mut [[u8; PEEK_LEN]; MAX_BATCH],
    lens: &mut [usize; MAX_BATCH],
) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_BATCH];
    for (slot, buf) in iov.iter_mut().zip(bufs.iter_mut()) {
        slot.iov_base = buf.as_mut_ptr().cast();
        slot.iov_len = PEEK_LEN;
    }
    // SAFETY: as in send_batch, all-zero is a valid mmsghdr.
    let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    for (msg, slot) in msgs.iter_mut().zip(iov.iter_mut()) {
        msg.msg_hdr.msg_iov = slot;
        msg.msg_hdr.msg_iovlen = 1;
    }
    // MSG_TRUNC makes each msg_len the datagram's real length although only PEEK_LEN bytes
    // are copied; MSG_WAITFORONE blocks for the first datagram only.
    let flags = libc::MSG_WAITFORONE | libc::MSG_TRUNC;
    // SAFETY: every mmsghdr points at one iovec in `iov` describing PEEK_LEN writable bytes
    // of `bufs`; all three outlive the call; no source address or control data is asked for
    // (null name and control); a null timeout leaves waiting to SO_RCVTIMEO.
    let got = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            msgs.as_mut_ptr(),
            MAX_BATCH as libc::c_uint,
            flags as _,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = got as usize;
    for (len, msg) in lens.iter_mut().zip(&msgs).take(got) {
        *len = msg.msg_len as usize;
    }
    Ok(got)
}

/// A socket buffer direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Buffer {
    /// SO_RCVBUF.
    Receive,
    /// SO_SNDBUF.
    Send,
}

/// Asks for a socket buffer of `bytes`: the FORCE option first (root may exceed
/// net.core.[rw]mem_max), the plain one when that is refused. Returns what the kernel set.
pub(super) fn set_buffer(sock: &impl AsRawFd, which: Buffer, bytes: usize) -> io::Result<usize> {
    let (force, plain) = match which {
        Buffer::Receive => (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        Buffer::Send => (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    };
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if setsockopt_int(sock, force, value).is_err() {
        setsockopt_int(sock, plain, value)?;
    }
    getsockopt_int(sock, plain).map(|v| usize::try_from(v).unwrap_or(0))
}

fn setsockopt_int(sock: &impl AsRawFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt_int(sock: &impl AsRawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a live, writable c_int and its size; the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Waits up to `timeout` for `fd` to become readable (a listener: a connection to accept).
pub(super) fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one live pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0)
}

/// Sets the calling thread's timer slack (`PR_SET_TIMERSLACK`): how late the kernel may end
/// its sleeps to batch wake-ups. At least 1 ns; 0 would mean "the default" again.
pub(super) fn set_timer_slack(slack: Duration) -> io::Result<()> {
    let ns = libc::c_ulong::try_from(slack.as_nanos().max(1)).unwrap_or(libc::c_ulong::MAX);
    // SAFETY: PR_SET_TIMERSLACK takes its value by value and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
