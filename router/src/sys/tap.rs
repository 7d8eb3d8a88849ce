//! Queues of a multi-queue TAP device opened through `/dev/net/tun`.
//!
//! The router's TAP is persistent (`TUNSETPERSIST`): the device, its bridge port, MTU and
//! queue length outlive the process, so a restarting router never takes the TAP off the
//! bridge and the plumbing has nothing to redo. Queues are the open file descriptors: each
//! worker opens its own with [`TapQueue::open`], and a restart with another worker count just
//! attaches a different number of them.

use std::ffi::c_char;
use std::fs::OpenOptions;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{cvt, cvt_size, SysError};

/// The clone device every TUN/TAP queue is opened from.
const TUN_CLONE_DEVICE: &str = "/dev/net/tun";

/// Size of `struct virtio_net_hdr_mrg_rxbuf`, the header the data plane reads and writes.
pub const VNET_HDR_LEN: usize = 12;

/// Interface flags of every queue of the router's TAP: Ethernet frames, no packet-info
/// prefix, a virtio_net_hdr in front of each frame, several queues.
const QUEUE_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;

/// Set of `TUN_F_*` offloads: what frames read from the TAP may carry (checksum left to do,
/// TCP or UDP super-frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TapOffloads(u32);

impl TapOffloads {
    /// No offload: the kernel segments and checksums everything before we read it.
    pub const NONE: Self = Self(0);
    /// Frames may carry a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    pub const CSUM: Self = Self(libc::TUN_F_CSUM);
    /// TCP over IPv4 super-frames.
    pub const TSO4: Self = Self(libc::TUN_F_TSO4);
    /// TCP over IPv6 super-frames.
    pub const TSO6: Self = Self(libc::TUN_F_TSO6);
    /// UDP over IPv4 super-frames (kernel 6.2 and later).
    pub const USO4: Self = Self(libc::TUN_F_USO4);
    /// UDP over IPv6 super-frames (kernel 6.2 and later).
    pub const USO6: Self = Self(libc::TUN_F_USO6);
    /// What the sleeve data plane asks for.
    pub const SLEEVE: Self = Self(
        libc::TUN_F_CSUM
            | libc::TUN_F_TSO4
            | libc::TUN_F_TSO6
            | libc::TUN_F_USO4
            | libc::TUN_F_USO6,
    );

    /// The raw `TUN_F_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The union of two sets.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// This set without the members of `other`.
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether every member of `other` is in this set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The set without UDP segmentation, for kernels older than 6.2 that refuse it.
    pub const fn without_uso(self) -> Self {
        self.difference(Self::USO4.union(Self::USO6))
    }
}

/// How to open one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapOptions {
    /// Length of the virtio_net_hdr in front of each frame (`TUNSETVNETHDRSZ`), at least 10.
    pub vnet_hdr_len: usize,
    /// Offloads to ask for; UDP segmentation is dropped when the kernel refuses it.
    pub offloads: TapOffloads,
    /// Feed written frames through NAPI (`IFF_NAPI`), so the kernel's GRO can coalesce them.
    pub napi: bool,
    /// Open the queue with `O_NONBLOCK`, as readiness- and completion-based loops want.
    pub nonblocking: bool,
}

impl Default for TapOptions {
    fn default() -> Self {
        Self {
            vnet_hdr_len: VNET_HDR_LEN,
            offloads: TapOffloads::SLEEVE,
            napi: false,
            nonblocking: true,
        }
    }
}

/// One queue (file descriptor) of a multi-queue TAP.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
    name: String,
    offloads: TapOffloads,
    vnet_hdr_len: usize,
}

impl TapQueue {
    /// Attaches a new queue to the TAP `name` (creating a non-persistent TAP if there is
    /// none), then sets the vnet header length, its little-endian byte order
    /// (`TUNSETVNETLE`, see [`crate::wire::vnet`]) and the offloads. Those are properties of
    /// the device, not of the queue: every queue of one TAP must ask for the same.
    ///
    /// `TUNSETIFF` fails with `EINVAL` when `name` exists but is not a multi-queue TAP.
    pub fn open(name: &str, opts: &TapOptions) -> Result<Self, SysError> {
        let mut flags = QUEUE_FLAGS;
        if opts.napi {
            flags |= libc::IFF_NAPI;
        }
        let fd = attach(name, flags, opts.nonblocking)?;
        set_vnet_hdr_len(&fd, name, opts.vnet_hdr_len)?;
        set_vnet_le(&fd, name)?;
        let offloads = set_offloads(&fd, name, opts.offloads)?;
        Ok(Self {
            fd,
            name: name.to_owned(),
            offloads,
            vnet_hdr_len: opts.vnet_hdr_len,
        })
    }

    /// Opens `count` queues of the TAP `name`, one per worker.
    pub fn open_queues(name: &str, count: usize, opts: &TapOptions) -> Result<Vec<Self>, SysError> {
        (0..count).map(|_| Self::open(name, opts)).collect()
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offloads the kernel accepted (may lack USO on old kernels).
    pub fn offloads(&self) -> TapOffloads {
        self.offloads
    }

    /// Length of the virtio_net_hdr in front of each frame.
    pub fn vnet_hdr_len(&self) -> usize {
        self.vnet_hdr_len
    }

    /// Whether the device reads and writes its vnet headers little-endian whatever the host's
    /// byte order (`TUNGETVNETLE`). False on a kernel too old to know the flag, whose headers
    /// are then in the host's byte order.
    pub fn vnet_le(&self) -> Result<bool, SysError> {
        let mut le: libc::c_int = 0;
        // SAFETY: TUNGETVNETLE writes one int through the pointer, which points to one.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNGETVNETLE, &raw mut le) };
        cvt(ret).map_err(|source| syscall("TUNGETVNETLE", &self.name, source))?;
        Ok(le != 0)
    }

    /// Makes the device outlive its queues (`TUNSETPERSIST`), or not.
    pub fn set_persist(&self, persist: bool) -> Result<(), SysError> {
        set_persist(&self.fd, &self.name, persist)
    }

    /// The device's interface flags as the kernel reports them (`TUNGETIFF`):
    /// `IFF_TAP`, `IFF_VNET_HDR`, `IFF_MULTI_QUEUE`, `IFF_PERSIST`, ...
    pub fn flags(&self) -> Result<libc::c_int, SysError> {
        let mut req = IfReq::zeroed();
        // SAFETY: TUNGETIFF writes at most `sizeof(struct ifreq)` bytes, which `IfReq` has.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNGETIFF, &raw mut req) };
        cvt(ret).map_err(|source| syscall("TUNGETIFF", &self.name, source))?;
        Ok(libc::c_int::from(req.flags))
    }

    /// Reads one frame (vnet header first). `WouldBlock` when the queue is empty.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
        let ret = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        cvt_size(ret)
    }

    /// Writes one frame (vnet header first).
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes for the whole call.
        let ret = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        cvt_size(ret)
    }

    /// Writes one frame gathered from several buffers (vnet header first).
    pub fn write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        let count = libc::c_int::try_from(parts.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many iovecs"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` and every slice stays
        // borrowed, hence valid for reads, for the whole call.
        let ret = unsafe { libc::writev(self.fd.as_raw_fd(), parts.as_ptr().cast(), count) };
        cvt_size(ret)
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TapQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<TapQueue> for OwnedFd {
    fn from(queue: TapQueue) -> Self {
        queue.fd
    }
}

/// Creates the multi-queue TAP `name` (or adopts an existing one) and makes it persistent,
/// without keeping a queue open.
///
/// It leaves the offloads and the vnet header length alone: both belong to the device, not
/// to a queue, and a running router's queues may be using them.
pub fn create_persistent(name: &str) -> Result<(), SysError> {
    let fd = attach(name, QUEUE_FLAGS, true)?;
    set_persist(&fd, name, true)
}

/// The `IFF_*` flags this kernel's TUN driver supports (`TUNGETFEATURES`).
pub fn kernel_features() -> Result<libc::c_int, SysError> {
    let fd = open_clone_device(false)?;
    let mut features: libc::c_uint = 0;
    // SAFETY: TUNGETFEATURES writes one unsigned int to the pointer, which points to one.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETFEATURES, &raw mut features) };
    cvt(ret).map_err(|source| syscall("TUNGETFEATURES", TUN_CLONE_DEVICE, source))?;
    // The feature word holds IFF_* flags, all below 2^16.
    Ok(features as libc::c_int)
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub fn validate_ifname(name: &str) -> Result<(), SysError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == 0 || b == b'/' || b == b':' || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(SysError::BadIfName(name.to_owned()))
    }
}

/// `struct ifreq` as the TUN ioctls use it: a name and the flags, padded to the kernel's
/// 40 bytes (the union is 24 bytes on every Linux ABI).
#[repr(C)]
struct IfReq {
    name: [c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == std::mem::size_of::<libc::ifreq>());

impl IfReq {
    fn zeroed() -> Self {
        Self {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }

    fn new(name: &str, flags: libc::c_int) -> Result<Self, SysError> {
        validate_ifname(name)?;
        let mut req = Self::zeroed();
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as c_char;
        }
        // All IFF_* flags the TUN driver knows fit in 16 bits.
        req.flags = flags as libc::c_short;
        Ok(req)
    }
}

fn attach(name: &str, flags: libc::c_int, nonblocking: bool) -> Result<OwnedFd, SysError> {
    let mut req = IfReq::new(name, flags)?;
    let fd = open_clone_device(nonblocking)?;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is (size checked
    // at compile time above); `fd` is an open /dev/net/tun.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
    cvt(ret).map_err(|source| syscall("TUNSETIFF", name, source))?;
    Ok(fd)
}

fn set_persist(fd: &OwnedFd, name: &str, persist: bool) -> Result<(), SysError> {
    // SAFETY: TUNSETPERSIST takes its argument by value; `fd` is an attached TAP queue.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(persist),
        )
    };
    cvt(ret).map_err(|source| syscall("TUNSETPERSIST", name, source))?;
    Ok(())
}

fn open_clone_device(nonblocking: bool) -> Result<OwnedFd, SysError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if nonblocking {
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options
        .open(TUN_CLONE_DEVICE)
        .map_err(|source| syscall("open", TUN_CLONE_DEVICE, source))?;
    Ok(file.into())
}

fn set_vnet_hdr_len(fd: &OwnedFd, name: &str, len: usize) -> Result<(), SysError> {
    let len = libc::c_int::try_from(len).map_err(|_| SysError::Syscall {
        call: "TUNSETVNETHDRSZ",
        target: name.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "header length too large"),
    })?;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points to one.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &raw const len) };
    cvt(ret).map_err(|source| syscall("TUNSETVNETHDRSZ", name, source))?;
    Ok(())
}

/// Makes the device's vnet headers little-endian (`TUNSETVNETLE`), the byte order
/// [`crate::wire::vnet`] reads and writes. Without the flag a legacy (pre-virtio-1.0) header is
/// in the host's byte order.
///
/// A kernel older than the ioctl (4.0) answers `EINVAL`. On a little-endian host that is
/// harmless, since its headers are in host order, which is already little-endian, so the
/// error is ignored there. On a big-endian host such a kernel would write headers the codec
/// misreads, so the error is returned.
fn set_vnet_le(fd: &OwnedFd, name: &str) -> Result<(), SysError> {
    let le: libc::c_int = 1;
    // SAFETY: TUNSETVNETLE reads one int through the pointer, which points to one.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETLE, &raw const le) };
    match cvt(ret) {
        Ok(_) => Ok(()),
        Err(err) if cfg!(target_endian = "little") && err.raw_os_error() == Some(libc::EINVAL) => {
            Ok(())
        }
        Err(source) => Err(syscall("TUNSETVNETLE", name, source)),
    }
}

/// Sets the offloads, retrying without UDP segmentation when the kernel does not know it
/// (before 6.2 `TUNSETOFFLOAD` answers `EINVAL` to any unknown bit). Returns what was set.
fn set_offloads(fd: &OwnedFd, name: &str, wanted: TapOffloads) -> Result<TapOffloads, SysError> {
    match ioctl_set_offload(fd, wanted) {
        Ok(()) => Ok(wanted),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) && wanted != wanted.without_uso() => {
            let fallback = wanted.without_uso();
            ioctl_set_offload(fd, fallback)
                .map_err(|source| syscall("TUNSETOFFLOAD", name, source))?;
            Ok(fallback)
        }
        Err(source) => Err(syscall("TUNSETOFFLOAD", name, source)),
    }
}

fn ioctl_set_offload(fd: &OwnedFd, offloads: TapOffloads) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is an attached TAP queue.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(offloads.bits()),
        )
    };
    cvt(ret).map(drop)
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
    fn sleeve_offloads_are_the_five_bits_and_fall_back_to_three() {
        let sleeve = TapOffloads::SLEEVE;
        assert_eq!(sleeve.bits(), 0x01 | 0x02 | 0x04 | 0x20 | 0x40);
        let fallback = sleeve.without_uso();
        assert_eq!(fallback.bits(), 0x07);
        assert!(sleeve.contains(fallback));
        assert!(!fallback.contains(TapOffloads::USO4));
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert!(validate_ifname("vethwe-tap").is_ok());
        assert!(validate_ifname("abcdefghijklmno").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "abcdefghijklmnop",
            "a/b",
            "a:b",
            "a b",
            "a\0b",
        ] {
            assert!(
                matches!(validate_ifname(bad), Err(SysError::BadIfName(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn queues_have_little_endian_vnet_headers() {
        let Some(queues) = in_private_netns(|| {
            TapQueue::open_queues("wr-vnetle", 2, &TapOptions::default()).expect("open queues")
        }) else {
            return;
        };

        for queue in &queues {
            assert!(
                queue.vnet_le().expect("TUNGETVNETLE"),
                "TUNSETVNETLE not set"
            );
        }
    }

    /// Runs `f` on a thread of its own inside a new, unnamed network namespace that goes away
    /// with its last user (the thread, the queues `f` returns), so nothing is left behind even
    /// when the test fails. `None` (the test skips) without the privilege, except under `CI`.
    fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                // SAFETY: unshare takes flags only; CLONE_NEWNET moves this thread alone.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    let err = io::Error::last_os_error();
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "privileged test cannot run in CI: {err}"
                    );
                    eprintln!("skipped: no network namespace of our own ({err})");
                    return None;
                }
                Some(f())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    #[test]
    fn ifreq_carries_name_and_flags() {
        let req = IfReq::new("vethwe-tap", QUEUE_FLAGS).expect("valid name");
        let name: Vec<u8> = req.name.iter().map(|&c| c as u8).collect();
        assert_eq!(&name[..11], b"vethwe-tap\0");
        assert_eq!(libc::c_int::from(req.flags), QUEUE_FLAGS);
    }
}
