//! UDP sockets for the sleeve: options, GSO sends and GRO receives, path MTU queries.
//!
//! Every worker binds its own socket to the sleeve port with `SO_REUSEPORT`. Which socket
//! of that group receives a datagram is chosen by a classic BPF program, by the datagram's
//! source port ([`steer_by_source_port`]), so a peer whose workers each send from their own
//! port ([`open_port_block`]) has its load spread over our workers, while all datagrams of
//! one sending worker (and so of one inner flow) reach one of ours. Datagrams from the
//! mesh port, as Weave Net sends them, all reach one worker, as the kernel's hash would
//! have it.
//!
//! System calls are made here with `libc` rather than `socket2`: `socket2` has neither
//! `UDP_SEGMENT`/`UDP_GRO` control messages nor `SO_ATTACH_REUSEPORT_CBPF`, and the rest
//! is a handful of `setsockopt` calls next to them.

use std::io::{self, IoSlice};
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use super::cmsg::{self, CmsgBuffer};
use super::{cvt, cvt_size, SysError};

/// The `IP_MTU_DISCOVER` / `IPV6_MTU_DISCOVER` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PmtuDiscovery {
    /// Never set DF; the kernel fragments (`IP_PMTUDISC_DONT`).
    Dont,
    /// The kernel's default: DF per route, fragments when it learnt a smaller PMTU (`WANT`).
    Want,
    /// Always set DF and refuse sends above the path MTU with `EMSGSIZE` (`DO`).
    Do,
    /// Set DF but ignore the learnt path MTU, for probing (`PROBE`).
    Probe,
}

impl PmtuDiscovery {
    fn to_raw(self) -> libc::c_int {
        match self {
            Self::Dont => libc::IP_PMTUDISC_DONT,
            Self::Want => libc::IP_PMTUDISC_WANT,
            Self::Do => libc::IP_PMTUDISC_DO,
            Self::Probe => libc::IP_PMTUDISC_PROBE,
        }
    }

    fn from_raw(raw: libc::c_int) -> Option<Self> {
        match raw {
            libc::IP_PMTUDISC_DONT => Some(Self::Dont),
            libc::IP_PMTUDISC_WANT => Some(Self::Want),
            libc::IP_PMTUDISC_DO => Some(Self::Do),
            libc::IP_PMTUDISC_PROBE => Some(Self::Probe),
            _ => None,
        }
    }
}

/// How to open a UDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpOptions {
    /// Local address; its family picks IPv4 or IPv6.
    pub bind: SocketAddr,
    /// Join the port's `SO_REUSEPORT` group.
    pub reuse_port: bool,
    /// Receive coalesced datagrams (`UDP_GRO`).
    pub gro: bool,
    /// DF policy; `None` leaves the kernel default.
    pub pmtu: Option<PmtuDiscovery>,
    /// Receive buffer to ask for, in bytes (the kernel doubles it and may cap it).
    pub recv_buffer: Option<usize>,
    /// Send buffer to ask for, in bytes.
    pub send_buffer: Option<usize>,
    /// `O_NONBLOCK`.
    pub nonblocking: bool,
}

impl UdpOptions {
    /// A sleeve worker socket: reuseport, GRO, 8 MiB buffers, nonblocking, and DF set or not.
    pub fn sleeve(bind: SocketAddr, df: bool) -> Self {
        const BUFFER: usize = 8 << 20;
        Self {
            bind,
            reuse_port: true,
            gro: true,
            pmtu: Some(if df {
                PmtuDiscovery::Do
            } else {
                PmtuDiscovery::Dont
            }),
            recv_buffer: Some(BUFFER),
            send_buffer: Some(BUFFER),
            nonblocking: true,
        }
    }
}

/// Socket buffer sizes as the kernel reports them (already doubled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSizes {
    /// `SO_RCVBUF`.
    pub recv: usize,
    /// `SO_SNDBUF`.
    pub send: usize,
}

/// What one `recvmsg` delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written to the buffer.
    pub len: usize,
    /// The sender.
    pub source: Option<SocketAddr>,
    /// Size of each coalesced datagram but the last, when the kernel coalesced (`UDP_GRO`).
    pub segment_size: Option<u16>,
    /// The datagram was longer than the buffer and was cut (`MSG_TRUNC`).
    pub truncated: bool,
}

impl RecvMeta {
    /// How many datagrams the buffer holds: one unless coalesced.
    pub fn segments(&self) -> usize {
        match self.segment_size {
            Some(size) if self.len > 0 => self.len.div_ceil(usize::from(size)),
            Some(_) | None => 1,
        }
    }
}

/// Opens and binds a UDP socket with `opts`.
pub fn open_udp(opts: &UdpOptions) -> Result<UdpSocket, SysError> {
    let target = opts.bind.to_string();
    let family = match opts.bind {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let mut ty = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC;
    if opts.nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: socket() has no memory arguments.
    let raw = unsafe { libc::socket(family, ty, libc::IPPROTO_UDP) };
    let raw = cvt(raw).map_err(|source| syscall("socket", &target, source))?;
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    if opts.reuse_port {
        set_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
            .map_err(|source| syscall("SO_REUSEPORT", &target, source))?;
    }
    if opts.gro {
        set_int(&fd, libc::SOL_UDP, libc::UDP_GRO, 1)
            .map_err(|source| syscall("UDP_GRO", &target, source))?;
    }
    if let Some(mode) = opts.pmtu {
        let (level, name) = mtu_discover_option(opts.bind);
        set_int(&fd, level, name, mode.to_raw())
            .map_err(|source| syscall("IP_MTU_DISCOVER", &target, source))?;
    }
    if let Some(size) = opts.recv_buffer {
        set_buffer(&fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, size)
            .map_err(|source| syscall("SO_RCVBUF", &target, source))?;
    }
    if let Some(size) = opts.send_buffer {
        set_buffer(&fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, size)
            .map_err(|source| syscall("SO_SNDBUF", &target, source))?;
    }
    let (addr, len) = to_sockaddr(opts.bind);
    // SAFETY: `addr` is a sockaddr_storage holding a sockaddr of `len` bytes.
    let ret = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    cvt(ret).map_err(|source| syscall("bind", &target, source))?;
    Ok(UdpSocket::from(fd))
}

/// `SKF_NET_OFF`: classic BPF loads at this offset plus k read the network header.
const SKF_NET_OFF: u32 = (-0x0010_0000i32) as u32;

/// Ports of a worker block are aligned to this: worker `i` sends from a port that is `i`
/// modulo it, and a receiver steers by the source port modulo it first. Every
/// weave-router uses the same value, so two of them agree on which worker is which
/// whatever their ports and worker counts (see [`source_port_program`]).
pub const STEER_MODULUS: u16 = 256;

/// The reuseport program: socket index = (UDP source port modulo [`STEER_MODULUS`])
/// modulo `sockets`, so the datagrams of a peer's worker `i` (port `i` modulo
/// [`STEER_MODULUS`], see [`open_port_block`]) reach socket `i` modulo `sockets`.
///
/// Why not the port modulo `sockets` alone: the TAP queue that the kernel reads a TCP flow
/// into is the one its last frame was written through (the TUN driver's automatic
/// steering), so a flow's data leaves by the worker whose TAP writes carried its ACKs.
/// With both routers mapping worker `i` to worker `i` (equal worker counts) a flow stays
/// on one worker both ways; with different counts the map `i -> (i mod m) mod n` moves a
/// flow at most once and then holds it. With unaligned ports the two routers' maps could
/// compose to a swap, which moved every flow between two workers on each round trip and
/// reordered it.
///
/// For IPv4 the header length comes from IHL; for IPv6 the UDP header is taken to follow
/// the fixed header (a datagram with extension headers lands on whatever socket its bytes
/// name, which is still one socket per source). Returns the instructions; the kernel falls
/// back to its hash when the index is out of range.
pub fn source_port_program(ipv6: bool, sockets: u32) -> Vec<libc::sock_filter> {
    let op = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    const LDX_MSH_B: u16 = 0xb1; // ldxb 4*([k]&0xf)
    const LDX_IMM: u16 = 0x01; // ldx #k
    const LD_IND_H: u16 = 0x48; // ldh [x + k]
    const MOD_K: u16 = 0x94; // mod #k
    const RET_A: u16 = 0x16; // ret a
    let header_len = if ipv6 {
        op(LDX_IMM, 40)
    } else {
        op(LDX_MSH_B, SKF_NET_OFF)
    };
    vec![
        header_len,
        op(LD_IND_H, SKF_NET_OFF),
        op(MOD_K, u32::from(STEER_MODULUS)),
        op(MOD_K, sockets.max(1)),
        op(RET_A, 0),
    ]
}

/// Makes the reuseport group `sock` belongs to pick, for every datagram, the socket whose
/// index (order of binding) is the datagram's source port modulo `sockets`.
pub fn steer_by_source_port(sock: &impl AsFd, sockets: u32) -> Result<(), SysError> {
    let local = local_addr(sock);
    let target = local.map_or_else(|| "sleeve socket".to_string(), |a| a.to_string());
    let ipv6 = matches!(local, Some(SocketAddr::V6(_)));
    let program = source_port_program(ipv6, sockets);
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program`'s `len` instructions, alive during the call,
    // which the kernel copies; the option length is the struct's size.
    let ret = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            socklen_of::<libc::sock_fprog>(),
        )
    };
    cvt(ret).map_err(|source| syscall("SO_ATTACH_REUSEPORT_CBPF", &target, source))?;
    Ok(())
}

/// Opens `count` sockets with `opts` on consecutive ports of `opts.bind`'s address, the
/// first on a multiple of [`STEER_MODULUS`] (so socket `i`'s port is `i` modulo it) inside
/// the local ephemeral port range, trying the aligned blocks from a random one on.
pub fn open_port_block(opts: &UdpOptions, count: usize) -> Result<Vec<UdpSocket>, SysError> {
    let (low, high) = ephemeral_range();
    let step = usize::from(STEER_MODULUS);
    let first_base = usize::from(low).div_ceil(step) * step;
    let bases: Vec<usize> = (first_base..=usize::from(high))
        .step_by(step)
        .filter(|b| b + count.saturating_sub(1) <= usize::from(high))
        .collect();
    if bases.is_empty() {
        return Err(syscall(
            "bind",
            &format!(
                "{} ({count} consecutive ports from a multiple of {STEER_MODULUS} within the \
                 ephemeral port range {low}-{high})",
                opts.bind.ip()
            ),
            io::ErrorKind::AddrNotAvailable.into(),
        ));
    }
    let start = {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        usize::try_from(random % bases.len().max(1) as u64).unwrap_or(0)
    };
    let mut last = None;
    for base in bases.iter().cycle().skip(start).take(bases.len()) {
        let mut block = Vec::with_capacity(count);
        for i in 0..count {
            let mut next = *opts;
            next.bind
                .set_port(u16::try_from(base + i).expect("within the ephemeral range"));
            match open_udp(&next) {
                Ok(s) => block.push(s),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        if block.len() == count {
            return Ok(block);
        }
    }
    Err(last.unwrap_or_else(|| {
        syscall(
            "bind",
            &opts.bind.to_string(),
            io::ErrorKind::AddrInUse.into(),
        )
    }))
}

/// The local ephemeral port range (`net.ipv4.ip_local_port_range`, which IPv6 shares), or
/// the kernel's default when it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .filter(|(low, high)| low <= high)
        .unwrap_or((32768, 60999))
}

/// The socket's buffer sizes.
pub fn buffer_sizes(sock: &impl AsFd) -> Result<BufferSizes, SysError> {
    let get = |name, what| {
        get_int(sock, libc::SOL_SOCKET, name)
            .map(|v| usize::try_from(v).unwrap_or(0))
            .map_err(|source| syscall(what, &describe(sock), source))
    };
    Ok(BufferSizes {
        recv: get(libc::SO_RCVBUF, "SO_RCVBUF")?,
        send: get(libc::SO_SNDBUF, "SO_SNDBUF")?,
    })
}

/// Whether the socket has `UDP_GRO` on.
pub fn gro_enabled(sock: &impl AsFd) -> Result<bool, SysError> {
    get_int(sock, libc::SOL_UDP, libc::UDP_GRO)
        .map(|v| v != 0)
        .map_err(|source| syscall("UDP_GRO", &describe(sock), source))
}

/// Whether the kernel does UDP GSO (`UDP_SEGMENT`, Linux 4.18+). Asks without changing
/// anything: the option is readable wherever it exists.
pub fn udp_segment_supported(sock: &impl AsFd) -> bool {
    get_int(sock, libc::SOL_UDP, libc::UDP_SEGMENT).is_ok()
}

/// Changes the socket's DF policy.
pub fn set_pmtu_discovery(sock: &impl AsFd, mode: PmtuDiscovery) -> Result<(), SysError> {
    let target = describe(sock);
    let (level, name) = match local_addr(sock) {
        Some(addr) => mtu_discover_option(addr),
        None => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
    };
    set_int(sock, level, name, mode.to_raw()).map_err(|s| syscall("IP_MTU_DISCOVER", &target, s))
}

/// Sends one datagram without DF on a socket that otherwise sets it (the sleeve's
/// fragmentation test), restoring the socket's policy afterwards. Synchronous: the policy
/// applies when the datagram is sent, so it cannot go through a queue.
pub fn send_without_df(sock: &impl AsFd, datagram: &[u8], dest: SocketAddr) -> io::Result<usize> {
    let before = pmtu_discovery(sock).map_err(io::Error::other)?;
    set_pmtu_discovery(sock, PmtuDiscovery::Dont).map_err(io::Error::other)?;
    let sent = send_segments(sock, &[IoSlice::new(datagram)], Some(dest), None);
    set_pmtu_discovery(sock, before).map_err(io::Error::other)?;
    sent
}

/// The socket's DF policy as set.
pub fn pmtu_discovery(sock: &impl AsFd) -> Result<PmtuDiscovery, SysError> {
    let target = describe(sock);
    let (level, name) = match local_addr(sock) {
        Some(addr) => mtu_discover_option(addr),
        None => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
    };
    let raw = get_int(sock, level, name).map_err(|s| syscall("IP_MTU_DISCOVER", &target, s))?;
    PmtuDiscovery::from_raw(raw).ok_or_else(|| SysError::Unsupported {
        what: "IP_MTU_DISCOVER mode",
        detail: format!("unknown mode {raw}"),
    })
}

/// The path MTU the kernel knows towards the peer of a connected socket (`IP_MTU`).
pub fn path_mtu(sock: &impl AsFd) -> Result<u32, SysError> {
    let target = describe(sock);
    let (level, name) = match local_addr(sock) {
        Some(SocketAddr::V6(_)) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
        Some(SocketAddr::V4(_)) | None => (libc::IPPROTO_IP, libc::IP_MTU),
    };
    let mtu = get_int(sock, level, name).map_err(|source| syscall("IP_MTU", &target, source))?;
    u32::try_from(mtu).map_err(|_| SysError::Unsupported {
        what: "IP_MTU",
        detail: format!("negative MTU {mtu}"),
    })
}

/// Sends the concatenation of `parts` to `dest` (or the connected peer) in one `sendmsg`.
/// With `segment_size`, the kernel cuts it into datagrams of that size, the last one
/// shorter (UDP GSO). The kernel takes at most `UDP_MAX_SEGMENTS` segments (64 on older
/// kernels, 128 on 6.18) and 64 KiB in all, and answers `EINVAL` beyond.
pub fn send_segments(
    sock: &impl AsFd,
    parts: &[IoSlice<'_>],
    dest: Option<SocketAddr>,
    segment_size: Option<u16>,
) -> io::Result<usize> {
    let mut control = CmsgBuffer::<{ cmsg::cmsg_space(2) }>::new();
    let control_len = match segment_size {
        Some(size) => cmsg::encode_udp_segment(&mut control.0, size)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        None => 0,
    };
    let name = dest.map(to_sockaddr);
    // SAFETY: msghdr is plain data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some((addr, len)) = &name {
        msg.msg_name = (&raw const *addr).cast_mut().cast();
        msg.msg_namelen = *len;
    }
    msg.msg_iov = parts.as_ptr().cast_mut().cast();
    msg.msg_iovlen = parts.len();
    if control_len > 0 {
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control_len;
    }
    // SAFETY: every pointer in `msg` (name, iovecs, control) borrows a live local or an
    // argument for the whole call, and sendmsg only reads through them. `IoSlice` is
    // ABI-compatible with `struct iovec`.
    let ret = unsafe { libc::sendmsg(sock.as_fd().as_raw_fd(), &raw const msg, 0) };
    cvt_size(ret)
}

/// Receives one datagram, or one run of coalesced datagrams when `UDP_GRO` is on, into
/// `buf` (which should hold 64 KiB to take a full GRO batch).
pub fn recv_segments(sock: &impl AsFd, buf: &mut [u8]) -> io::Result<RecvMeta> {
    let mut control = CmsgBuffer::<128>::new();
    let mut name = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr().cast();
    msg.msg_namelen = socklen_of::<libc::sockaddr_storage>();
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    // SAFETY: `msg` points at `name`, `iov` (over `buf`) and `control`, all live and
    // writable for the whole call, with their true lengths.
    let ret = unsafe { libc::recvmsg(sock.as_fd().as_raw_fd(), &raw mut msg, 0) };
    let len = cvt_size(ret)?;
    let control_len = msg.msg_controllen.min(control.0.len());
    // SAFETY: `name` was zero-initialised and recvmsg wrote at most `msg_namelen` bytes.
    let storage = unsafe { name.assume_init() };
    Ok(RecvMeta {
        len,
        source: from_sockaddr(&storage, msg.msg_namelen),
        segment_size: cmsg::gro_segment_size(&control.0[..control_len]),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    })
}

/// The option that sets DF for this address family.
fn mtu_discover_option(addr: SocketAddr) -> (libc::c_int, libc::c_int) {
    match addr {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
    }
}

/// Sets a buffer size, first with the `*FORCE` option that root may use beyond
/// `net.core.[rw]mem_max`, then with the plain one capped by those limits.
fn set_buffer(
    fd: &impl AsFd,
    force: libc::c_int,
    plain: libc::c_int,
    size: usize,
) -> io::Result<()> {
    // The kernel doubles the value and takes an int: stay below the overflow.
    let value = libc::c_int::try_from(size.min(i32::MAX as usize / 2)).unwrap_or(i32::MAX / 2);
    match set_int(fd, libc::SOL_SOCKET, force, value) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            set_int(fd, libc::SOL_SOCKET, plain, value)
        }
        Err(e) => Err(e),
    }
}

fn set_int(
    fd: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is one int, passed by pointer with its size.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    cvt(ret).map(drop)
}

fn get_int(fd: &impl AsFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: the kernel writes at most `len` bytes to `value`, which has that size.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    cvt(ret)?;
    Ok(value)
}

fn local_addr(fd: &impl AsFd) -> Option<SocketAddr> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = socklen_of::<libc::sockaddr_storage>();
    // SAFETY: the kernel writes at most `len` bytes into `storage`, which has that size.
    let ret = unsafe {
        libc::getsockname(
            fd.as_fd().as_raw_fd(),
            storage.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    cvt(ret).ok()?;
    // SAFETY: zero-initialised, and getsockname wrote a valid prefix of it.
    let storage = unsafe { storage.assume_init() };
    from_sockaddr(&storage, len)
}

fn describe(fd: &impl AsFd) -> String {
    match local_addr(fd) {
        Some(addr) => format!("udp socket {addr}"),
        None => format!("socket fd {}", fd.as_fd().as_raw_fd()),
    }
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            (storage, socklen_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            (storage, socklen_of::<libc::sockaddr_in6>())
        }
    }
}

fn from_sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and storage is
            // aligned for it.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((&raw const *storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, aligned as above.
            let sin6: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const *storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn socklen_of<T>() -> libc::socklen_t {
    // Every type passed here is a small C struct or int.
    size_of::<T>() as libc::socklen_t
}

fn syscall(call: &'static str, target: &str, source: io::Error) -> SysError {
    SysError::Syscall {
        call,
        target: target.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_conversion_round_trips() {
        for addr in [
            "10.32.0.1:6783".parse::<SocketAddr>().expect("v4"),
            "[fd00::1]:6783".parse().expect("v6"),
            "[fe80::1%3]:1".parse().expect("v6 scoped"),
        ] {
            let (storage, len) = to_sockaddr(addr);
            assert_eq!(from_sockaddr(&storage, len), Some(addr));
        }
    }

    #[test]
    fn short_or_unknown_sockaddr_is_none() {
        let (storage, _) = to_sockaddr("10.0.0.1:1".parse().expect("v4"));
        assert_eq!(from_sockaddr(&storage, 4), None);
        // SAFETY: sockaddr_storage is plain data; all-zero is valid (family AF_UNSPEC).
        let empty: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        assert_eq!(
            from_sockaddr(&empty, socklen_of::<libc::sockaddr_storage>()),
            None
        );
    }

    #[test]
    fn segment_count_rounds_up() {
        let meta = |len, segment_size| RecvMeta {
            len,
            source: None,
            segment_size,
            truncated: false,
        };
        assert_eq!(meta(64_000, Some(1000)).segments(), 64);
        assert_eq!(meta(63_500, Some(1000)).segments(), 64);
        assert_eq!(meta(1400, None).segments(), 1);
        assert_eq!(meta(0, Some(1000)).segments(), 1);
    }

    /// Receiving sockets in one reuseport group steered by source port (four, then three),
    /// and four senders on an aligned block of consecutive ports: sender `i`'s datagrams all
    /// reach receiver `i` modulo the receivers, whatever the block's base.
    #[test]
    fn a_port_block_spreads_over_a_steered_reuseport_group() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        for receivers in [4usize, 3] {
            let first = open_udp(&UdpOptions::sleeve(any, true)).expect("open");
            let group_addr = first.local_addr().expect("bound");
            let mut group = vec![first];
            for _ in 1..receivers {
                group.push(open_udp(&UdpOptions::sleeve(group_addr, true)).expect("join"));
            }
            steer_by_source_port(&group[0], receivers as u32).expect("attach");
            let senders = open_port_block(&UdpOptions::sleeve(any, true), 4).expect("block");
            let ports: Vec<u16> = senders
                .iter()
                .map(|s| s.local_addr().unwrap().port())
                .collect();
            assert!(ports.windows(2).all(|w| w[1] == w[0] + 1), "{ports:?}");
            assert_eq!(ports[0] % STEER_MODULUS, 0, "{ports:?}");
            for s in &senders {
                for _ in 0..3 {
                    s.send_to(b"x", group_addr).expect("send");
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut seen = std::collections::BTreeMap::new();
            for (i, r) in group.iter().enumerate() {
                let mut buf = [0u8; 16];
                while let Ok((_, from)) = r.recv_from(&mut buf) {
                    seen.entry(from.port() - ports[0])
                        .or_insert_with(Vec::new)
                        .push(i);
                }
            }
            assert_eq!(seen.len(), 4, "every sender heard: {seen:?}");
            for (sender, sockets) in &seen {
                assert_eq!(sockets.len(), 3);
                assert!(
                    sockets
                        .iter()
                        .all(|s| *s == usize::from(*sender) % receivers),
                    "{receivers} receivers: {seen:?}"
                );
            }
        }
    }

    #[test]
    fn loopback_socket_has_the_asked_options() {
        // Unprivileged: loopback on an ephemeral port, in whatever namespace this runs.
        let sock = open_udp(&UdpOptions::sleeve(
            "127.0.0.1:0".parse().expect("addr"),
            true,
        ))
        .expect("open");
        assert!(gro_enabled(&sock).expect("UDP_GRO"));
        assert_eq!(pmtu_discovery(&sock).expect("mode"), PmtuDiscovery::Do);
        assert!(udp_segment_supported(&sock));
        let sizes = buffer_sizes(&sock).expect("sizes");
        assert!(sizes.recv > 0 && sizes.send > 0);
        let plain = open_udp(&UdpOptions::sleeve(
            "127.0.0.1:0".parse().expect("addr"),
            false,
        ))
        .expect("open");
        assert_eq!(pmtu_discovery(&plain).expect("mode"), PmtuDiscovery::Dont);
    }
}
