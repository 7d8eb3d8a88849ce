//! The io_uring ring wrapper of a data-plane worker: one ring, its provided-buffer rings, typed
//! operations, and the completions they produce.
//!
//! # Ownership
//!
//! Memory referenced by an in-flight submission (a `msghdr`, its iovecs and control bytes, the
//! bytes the iovecs point at, a provided-buffer ring) belongs to the [`Ring`] until the
//! submission's last completion has been reaped. Operations therefore take their buffers by value
//! and hand them back in the [`Completion`]; a push that cannot be queued hands them back in
//! [`Rejected`]. Everything the kernel may point at lives behind a `Box` (or in a buffer ring's
//! own allocation), so growing the slot table never moves it. [`Ring::shutdown`] (also run by
//! `Drop`) cancels every operation and drains the completion queue before anything is freed; if
//! the drain fails, the memory is leaked rather than freed under the kernel.
//!
//! # Threading
//!
//! The ring is set up with `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` where the
//! kernel allows it: only the creating thread may submit, and completions are only posted while
//! that thread enters the kernel ([`Ring::submit`], [`Ring::submit_and_wait`]). The types here
//! hold `Rc`s and raw pointers and so are `!Send`: the compiler keeps them on their worker.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::{Deref, DerefMut, Range};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::{addr_of_mut, NonNull};
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, EnterFlags, IoUring, Probe};

use crate::dataplane::bufsize::{Action, Limits, Sizer, Usage};

/// Segments one `UDP_SEGMENT` send may carry on every kernel since 4.18 (`UDP_MAX_SEGMENTS`).
pub const UDP_MAX_SEGMENTS: usize = 64;

/// Bytes of a multishot-recvmsg buffer taken before the payload: the kernel's
/// `io_uring_recvmsg_out` header, the source-address field and the control-message field.
/// A buffer ring for GRO receives needs `RECV_OVERHEAD + 65535` bytes per buffer, or a
/// coalesced batch arrives truncated.
pub const RECV_OVERHEAD: usize = RECVMSG_OUT_LEN + RECV_NAME_LEN + RECV_CONTROL_LEN;

/// Size of the kernel's `struct io_uring_recvmsg_out` (four `u32`s).
const RECVMSG_OUT_LEN: usize = 16;
/// Room for the source address: large enough for `sockaddr_in6`.
const RECV_NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// Room for control messages: `UDP_GRO` needs one `int` cmsg; the rest is slack for others
/// (a kernel that has more to say than fits sets `MSG_CTRUNC`, which costs nothing here).
const RECV_CONTROL_LEN: usize = 64;
/// Largest UDP payload in one IPv4 datagram (the IPv4 total-length field bounds GSO sends).
const IPV4_MAX_UDP_PAYLOAD: usize = 65_535 - 20 - 8;
/// Largest UDP payload in one IPv6 datagram without jumbograms.
const IPV6_MAX_UDP_PAYLOAD: usize = 65_535 - 8;
/// Bytes of a `cmsghdr` on this target (the data follows, aligned like the header).
const CMSG_HDR_LEN: usize = std::mem::size_of::<libc::cmsghdr>();
/// Buffer-group id used only while probing for provided-buffer-ring support.
const PROBE_GROUP: u16 = u16::MAX;
/// How long one drain wait lasts before shutdown asks the kernel to cancel again.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Most segments of `segment_size` bytes one `UDP_SEGMENT` send may carry: bounded both by
/// `UDP_MAX_SEGMENTS` and by the largest datagram the IP header can describe (so 46 segments of
/// 1400 bytes over IPv4, not 64).
pub fn max_gso_segments(segment_size: u16, ipv6: bool) -> usize {
    if segment_size == 0 {
        return 0;
    }
    let max_payload = if ipv6 {
        IPV6_MAX_UDP_PAYLOAD
    } else {
        IPV4_MAX_UDP_PAYLOAD
    };
    (max_payload / usize::from(segment_size)).min(UDP_MAX_SEGMENTS)
}

/// Errors of the ring wrapper.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// `io_uring_setup` failed: no io_uring in this kernel, a seccomp profile forbids it, or
    /// `kernel.io_uring_disabled` is set. The caller runs the epoll backend.
    #[error("io_uring setup failed: {0}")]
    Setup(#[source] io::Error),
    /// The kernel lacks operations the data plane needs. The caller runs the epoll backend.
    #[error("io_uring lacks {missing:?}")]
    Unsupported {
        /// Every missing feature, not just the first.
        missing: Vec<Feature>,
    },
    /// Registering a provided-buffer ring failed.
    #[error("registering buffer ring for group {group}: {source}")]
    BufRing {
        /// The buffer-group id.
        group: u16,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Buffer-ring parameters the kernel cannot take.
    #[error("bad buffer ring: {0}")]
    BadBufRing(&'static str),
    /// A buffer group id was registered twice.
    #[error("buffer group {0} is already registered")]
    GroupInUse(u16),
    /// An operation names a buffer group that was never registered.
    #[error("buffer group {0} is not registered")]
    UnknownGroup(u16),
    /// Registering the file table or a file in it failed.
    #[error("registering files: {0}")]
    RegisterFile(#[source] io::Error),
    /// Every slot of the registered-file table is taken (or the ring has no table).
    #[error("no free registered-file slot")]
    FileTableFull,
    /// `io_uring_enter` failed (`EBUSY` means the completion queue must be reaped first).
    #[error("io_uring_enter: {0}")]
    Enter(#[source] io::Error),
    /// The submission queue stayed full even after a submit.
    #[error("submission queue full")]
    QueueFull,
    /// A range outside a provided buffer's current view.
    #[error("range {start}..{end} outside a buffer of {len} bytes")]
    BadRange {
        /// Start of the requested range.
        start: usize,
        /// End of the requested range.
        end: usize,
        /// Length of the current view.
        len: usize,
    },
    /// Operations were still in flight when the drain deadline passed; their memory is leaked.
    #[error("{in_flight} operations still in flight after the drain deadline")]
    DrainTimeout {
        /// How many were left.
        in_flight: usize,
    },
    /// The ring is shutting down or shut down and takes no new operations.
    #[error("ring is shut down")]
    ShutDown,
}

/// A push that could not be queued: the error and the buffers it would have sent.
#[derive(Debug, thiserror::Error)]
#[error("operation not queued: {error}")]
pub struct Rejected {
    /// Why it was not queued.
    #[source]
    pub error: UringError,
    /// The caller's buffers, untouched.
    pub bufs: Vec<TxBuf>,
}

/// Something the data plane needs from io_uring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Multishot `IORING_OP_RECVMSG` (6.0).
    RecvMsgMultishot,
    /// `IORING_OP_READ_MULTISHOT` (6.7), for the TAP.
    ReadMultishot,
    /// `IORING_OP_SENDMSG`.
    SendMsg,
    /// `IORING_OP_WRITE`.
    Write,
    /// `IORING_OP_WRITEV`.
    Writev,
    /// `IORING_OP_ASYNC_CANCEL` with `IORING_ASYNC_CANCEL_ANY` (5.19).
    AsyncCancelAny,
    /// `IORING_REGISTER_PBUF_RING` (5.19).
    ProvidedBufferRing,
    /// `IORING_ENTER_EXT_ARG`, for waits with a timeout (5.11).
    ExtArg,
}

/// How the ring was set up, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupMode {
    /// `SINGLE_ISSUER | DEFER_TASKRUN`: completions run only when the worker asks (6.1).
    SingleIssuerDeferTaskrun,
    /// `COOP_TASKRUN | TASKRUN_FLAG`: no interrupting IPIs for completions (5.19).
    CoopTaskrun,
    /// No scheduling flags.
    Plain,
}

/// What the kernel offers, as probed by [`Ring::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// How the ring was set up.
    pub setup: SetupMode,
    /// Multishot recvmsg (probed through `IORING_OP_SEND_ZC`, which arrived with it in 6.0).
    pub recvmsg_multishot: bool,
    /// `IORING_OP_READ_MULTISHOT`.
    pub read_multishot: bool,
    /// `IORING_OP_SENDMSG`.
    pub sendmsg: bool,
    /// `IORING_OP_WRITE`.
    pub write: bool,
    /// `IORING_OP_WRITEV`.
    pub writev: bool,
    /// `IORING_OP_ASYNC_CANCEL` (with `ANY`, 5.19, implied by the 6.0 probe above).
    pub async_cancel: bool,
    /// `IORING_REGISTER_PBUF_RING` (probed by registering a one-entry ring).
    pub provided_buffer_ring: bool,
    /// `IORING_ENTER_EXT_ARG`.
    pub ext_arg: bool,
    /// `IORING_OP_PROVIDE_BUFFERS` (the older, per-buffer interface; reported, not used).
    pub provide_buffers: bool,
}

impl Capabilities {
    /// The features the data plane needs that this kernel lacks; `ReadMultishot` counts only when
    /// `need_read_multishot`.
    pub fn missing(&self, need_read_multishot: bool) -> Vec<Feature> {
        let wanted = [
            (Feature::RecvMsgMultishot, self.recvmsg_multishot),
            (
                Feature::ReadMultishot,
                self.read_multishot || !need_read_multishot,
            ),
            (Feature::SendMsg, self.sendmsg),
            (Feature::Write, self.write),
            (Feature::Writev, self.writev),
            (
                Feature::AsyncCancelAny,
                self.async_cancel && self.recvmsg_multishot,
            ),
            (Feature::ProvidedBufferRing, self.provided_buffer_ring),
            (Feature::ExtArg, self.ext_arg),
        ];
        wanted
            .into_iter()
            .filter(|(_, present)| !present)
            .map(|(feature, _)| feature)
            .collect()
    }
}

/// Options for [`Ring::new`].
#[derive(Clone, Debug)]
pub struct RingOptions {
    /// Completion-queue size; `None` means four times the submission queue, because each
    /// multishot submission yields many completions.
    pub cq_entries: Option<u32>,
    /// Size of the sparse registered-file table; 0 registers none.
    pub file_slots: u32,
    /// Whether a kernel without `IORING_OP_READ_MULTISHOT` is refused (the TAP reader needs it).
    pub require_read_multishot: bool,
    /// How long shutdown waits for cancelled operations before leaking their memory.
    pub drain_timeout: Duration,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self {
            cq_entries: None,
            file_slots: 0,
            require_read_multishot: true,
            drain_timeout: Duration::from_secs(2),
        }
    }
}

/// Counters of one ring; cheap to copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// `io_uring_enter` calls.
    pub enters: u64,
    /// Submission entries the kernel consumed.
    pub sqes_submitted: u64,
    /// Completion entries reaped.
    pub cqes: u64,
    /// Multishot operations re-armed after the kernel ended them.
    pub rearms: u64,
    /// Multishot operations that ended with `ENOBUFS` (buffer ring empty).
    pub enobufs: u64,
    /// Multishot operations that ended with a transient socket error and were re-armed.
    pub transient_errors: u64,
    /// Receive completions whose layout did not parse (buffer recycled, nothing delivered).
    pub malformed: u64,
    /// Datagrams longer than their buffer (delivered, flagged `truncated`).
    pub truncated: u64,
    /// Completions naming a buffer id that is out of range or already lent.
    pub bad_buffers: u64,
    /// Completions whose user data names no live operation.
    pub unknown_cqes: u64,
}

/// What [`Ring::shutdown`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Cancel-all requests submitted (more than one when the first did not finish the drain).
    pub cancel_requests: u32,
    /// Completions reaped (and discarded) while draining.
    pub drained: u64,
    /// Multishot operations that were waiting for a re-arm and were dropped without one.
    pub dropped_rearms: u32,
}

/// The kind of an operation, carried in its user data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Multishot recvmsg.
    RecvMulti,
    /// Multishot read.
    ReadMulti,
    /// sendmsg.
    SendMsg,
    /// write or writev.
    Write,
    /// An async cancel issued by the wrapper.
    Cancel,
}

impl OpKind {
    /// The tag in the user data's top byte; 0 is never used, so user data 0 names no operation.
    const fn code(self) -> u8 {
        match self {
            OpKind::RecvMulti => 1,
            OpKind::ReadMulti => 2,
            OpKind::SendMsg => 3,
            OpKind::Write => 4,
            OpKind::Cancel => 5,
        }
    }

    const fn from_code(code: u8) -> Option<OpKind> {
        match code {
            1 => Some(OpKind::RecvMulti),
            2 => Some(OpKind::ReadMulti),
            3 => Some(OpKind::SendMsg),
            4 => Some(OpKind::Write),
            5 => Some(OpKind::Cancel),
            _ => None,
        }
    }
}

/// Names one operation: kind, slot and the slot's generation, packed into the 64-bit user data
/// as `kind:8 | generation:24 | slot:32`. The generation makes a stale id (an operation that
/// finished and whose slot was reused) name nothing rather than the newcomer. A multishot
/// operation keeps its id across re-arms until it is [`Completion::Stopped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId {
    kind: OpKind,
    slot: u32,
    generation: u32,
}

impl OpId {
    /// Bits of the generation counter.
    pub const GENERATION_BITS: u32 = 24;
    const GENERATION_MASK: u32 = (1 << Self::GENERATION_BITS) - 1;

    /// An id from its parts; the generation is truncated to [`Self::GENERATION_BITS`].
    pub const fn new(kind: OpKind, slot: u32, generation: u32) -> OpId {
        OpId {
            kind,
            slot,
            generation: generation & Self::GENERATION_MASK,
        }
    }

    /// The operation's kind.
    pub const fn kind(self) -> OpKind {
        self.kind
    }

    /// The slot index.
    pub const fn slot(self) -> u32 {
        self.slot
    }

    /// The slot generation.
    pub const fn generation(self) -> u32 {
        self.generation
    }

    /// The user data written into the submission.
    pub const fn encode(self) -> u64 {
        ((self.kind.code() as u64) << 56) | ((self.generation as u64) << 32) | self.slot as u64
    }

    /// The id a completion's user data names, if it is one of ours.
    pub const fn decode(user_data: u64) -> Option<OpId> {
        let Some(kind) = OpKind::from_code((user_data >> 56) as u8) else {
            return None;
        };
        Some(OpId {
            kind,
            slot: user_data as u32,
            generation: ((user_data >> 32) as u32) & Self::GENERATION_MASK,
        })
    }
}

/// A provided-buffer group id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufGroup(pub u16);

/// A slot in the ring's registered-file table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileSlot(u32);

impl FileSlot {
    /// The table index.
    pub const fn index(self) -> u32 {
        self.0
    }
}

/// The file an operation works on. A raw fd must stay open until the operation is submitted;
/// the kernel holds its own reference from then on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A plain file descriptor.
    Fd(RawFd),
    /// A registered file (saves the per-operation fd lookup).
    Fixed(FileSlot),
}

/// Builds an entry for either kind of target: the io-uring builders are generic over a sealed
/// trait, so the two arms are spelled out.
macro_rules! build_on {
    ($target:expr, |$fd:ident| $build:expr) => {
        match $target {
            Target::Fd(raw) => {
                let $fd = types::Fd(raw);
                $build
            }
            Target::Fixed(FileSlot(index)) => {
                let $fd = types::Fixed(index);
                $build
            }
        }
    };
}

/// A buffer handed to a send or write: kept by the ring while the kernel reads it, then handed
/// back in the completion.
pub enum TxBuf {
    /// Bytes the caller owns (reusable once handed back).
    Owned(Vec<u8>),
    /// A received buffer forwarded without a copy; recycled to its ring when dropped.
    Provided(ProvidedBuf),
}

impl TxBuf {
    /// The bytes that are sent.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            TxBuf::Owned(bytes) => bytes,
            TxBuf::Provided(buf) => buf,
        }
    }
}

impl fmt::Debug for TxBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxBuf::Owned(bytes) => write!(f, "Owned({} bytes)", bytes.len()),
            TxBuf::Provided(buf) => write!(f, "{buf:?}"),
        }
    }
}

/// A datagram (or a GRO batch of datagrams) from a multishot receive.
#[derive(Debug)]
pub struct Datagram {
    /// The payload; recycled to the buffer ring when dropped.
    pub payload: ProvidedBuf,
    /// Who sent it.
    pub source: Option<SocketAddr>,
    /// With `UDP_GRO`: the size of each coalesced segment (the last may be shorter). `None`:
    /// the payload is one datagram.
    pub segment_size: Option<u16>,
    /// The datagram did not fit the buffer; the payload holds its beginning only.
    pub truncated: bool,
}

impl Datagram {
    /// The original datagrams of a GRO batch (one when there was no coalescing).
    pub fn segments(&self) -> std::slice::Chunks<'_, u8> {
        let size = self
            .segment_size
            .map_or(self.payload.len(), usize::from)
            .max(1);
        self.payload.chunks(size)
    }

    /// How many datagrams the payload holds.
    pub fn segment_count(&self) -> usize {
        match self.segment_size {
            Some(size) if size > 0 => self.payload.len().div_ceil(usize::from(size)),
            Some(_) | None => 1,
        }
    }
}

/// Why a multishot operation stopped for good.
#[derive(Debug)]
pub enum StopReason {
    /// It was cancelled ([`Ring::cancel`] or shutdown).
    Cancelled,
    /// The file reached end of file (a pipe whose writer closed, a TAP that went away).
    EndOfFile,
    /// An error the wrapper does not retry (`EBADF`, `EINVAL`, ...).
    Error(io::Error),
}

/// One reaped completion.
#[derive(Debug)]
pub enum Completion {
    /// A datagram from [`Ring::recv_multi`].
    Received {
        /// The receive operation.
        op: OpId,
        /// What arrived.
        datagram: Datagram,
    },
    /// Bytes from [`Ring::read_multi`].
    Read {
        /// The read operation.
        op: OpId,
        /// What was read; recycled when dropped.
        buf: ProvidedBuf,
    },
    /// A multishot operation ended and was not re-armed; its id names nothing from now on.
    Stopped {
        /// The operation.
        op: OpId,
        /// Why.
        reason: StopReason,
    },
    /// A [`Ring::sendmsg`] finished.
    Sent {
        /// The send operation.
        op: OpId,
        /// Bytes sent, or the error.
        result: io::Result<usize>,
        /// The buffers, handed back.
        bufs: Vec<TxBuf>,
    },
    /// A [`Ring::write`] or [`Ring::writev`] finished.
    Written {
        /// The write operation.
        op: OpId,
        /// Bytes written, or the error.
        result: io::Result<usize>,
        /// The buffers, handed back.
        bufs: Vec<TxBuf>,
    },
}

/// The ring of one worker.
///
/// Drop order (fields drop in declaration order, after `Drop::drop` has shut the ring down):
/// 1. `ring`: closes the io_uring fd. Shutdown has already drained every operation and
///    unregistered every buffer ring, so the kernel holds no pointer into what follows.
/// 2. `slab`: the memory of submissions (msghdrs, iovecs, send buffers); empty after a drain.
/// 3. `pools`: buffer-ring memory, reference-counted because a [`ProvidedBuf`] may outlive the
///    ring; freed when its last buffer is dropped.
///
/// If the drain fails, `Drop` leaks the slab and the pools instead of freeing them.
pub struct Ring {
    ring: IoUring,
    slab: Slab,
    pools: Vec<Rc<Pool>>,
    /// Multishot operations the kernel ended that are re-armed on the next submit (deferred so
    /// that buffers dropped after the reap are back in the ring first).
    rearm: Vec<OpId>,
    /// Submissions pushed whose final completion has not been reaped.
    in_kernel: usize,
    state: RingState,
    capabilities: Capabilities,
    files: FileTable,
    stats: RingStats,
    drain_timeout: Duration,
    /// Reused between reaps so that reaping does not allocate.
    scratch: Vec<(u64, i32, u32)>,
    /// `IORING_REGISTER_PBUF_STATUS` has not been refused (it arrived in 6.8).
    buf_status: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RingState {
    Running,
    Draining,
    ShutDown,
}

impl Ring {
    /// Sets up a ring of `entries` submission slots, probes what the kernel offers, and
    /// registers a sparse file table when `options.file_slots > 0`. A kernel without the
    /// required operations gives [`UringError::Unsupported`], a kernel without io_uring
    /// [`UringError::Setup`]: either way the caller falls back to epoll.
    pub fn new(entries: u32, options: RingOptions) -> Result<Ring, UringError> {
        let cq_entries = options
            .cq_entries
            .unwrap_or_else(|| entries.saturating_mul(4));
        let (ring, setup) = setup_ring(entries, cq_entries)?;
        let capabilities = probe(&ring, setup);
        let missing = capabilities.missing(options.require_read_multishot);
        if !missing.is_empty() {
            return Err(UringError::Unsupported { missing });
        }
        if options.file_slots > 0 {
            ring.submitter()
                .register_files_sparse(options.file_slots)
                .map_err(UringError::RegisterFile)?;
        }
        Ok(Ring {
            ring,
            slab: Slab::default(),
            pools: Vec::new(),
            rearm: Vec::new(),
            in_kernel: 0,
            state: RingState::Running,
            capabilities,
            files: FileTable::new(options.file_slots),
            stats: RingStats::default(),
            drain_timeout: options.drain_timeout,
            scratch: Vec::new(),
            buf_status: true,
        })
    }

    /// What the kernel offers and how the ring was set up.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// The ring's counters.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Submissions whose final completion has not been reaped yet.
    pub fn in_flight(&self) -> usize {
        self.in_kernel
    }

    /// Puts `fd` in a free slot of the registered-file table. The kernel takes its own
    /// reference: the caller may close `fd` afterwards.
    pub fn register_file(&mut self, fd: RawFd) -> Result<FileSlot, UringError> {
        let slot = self.files.take().ok_or(UringError::FileTableFull)?;
        if let Err(err) = self.ring.submitter().register_files_update(slot, &[fd]) {
            self.files.give_back(slot);
            return Err(UringError::RegisterFile(err));
        }
        Ok(FileSlot(slot))
    }

    /// Empties a registered-file slot. Operations already submitted on it keep their file.
    pub fn unregister_file(&mut self, slot: FileSlot) -> Result<(), UringError> {
        self.ring
            .submitter()
            .register_files_update(slot.0, &[-1])
            .map_err(UringError::RegisterFile)?;
        self.files.give_back(slot.0);
        Ok(())
    }

    /// Registers a ring of `count` buffers of `buf_size` bytes for `group`. `count` must be a
    /// power of two up to 32768. Receives on this group need `buf_size > RECV_OVERHEAD`.
    pub fn add_buf_ring(
        &mut self,
        group: BufGroup,
        count: u16,
        buf_size: u32,
    ) -> Result<BufRing, UringError> {
        self.add_growable_buf_ring(group, count, count, buf_size)
    }

    /// Registers a ring with room for `capacity` buffers of `buf_size` bytes for `group`, the
    /// first `count` of them in circulation ([`Ring::resize_buf_ring`] changes that).
    /// `capacity` must be a power of two up to 32768, `count` from 1 to `capacity`. Buffer
    /// memory is only resident once written, so room costs nothing until it is used.
    pub fn add_growable_buf_ring(
        &mut self,
        group: BufGroup,
        count: u16,
        capacity: u16,
        buf_size: u32,
    ) -> Result<BufRing, UringError> {
        if self.state != RingState::Running {
            return Err(UringError::ShutDown);
        }
        if self.pools.iter().any(|pool| pool.group == group) || group.0 == PROBE_GROUP {
            return Err(UringError::GroupInUse(group.0));
        }
        let pool = Rc::new(Pool::new(group, count, capacity, buf_size)?);
        // SAFETY: the entry array is page-aligned, `capacity` entries long, and stays allocated
        // until the group is unregistered: shutdown unregisters before the pool can be freed,
        // and a failed shutdown leaks the pool.
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                pool.entries.as_ptr() as u64,
                capacity,
                group.0,
                0,
            )
        }
        .map_err(|source| UringError::BufRing {
            group: group.0,
            source,
        })?;
        pool.fill();
        self.pools.push(Rc::clone(&pool));
        Ok(BufRing(pool))
    }

    /// Puts `count` buffers of `group` in circulation (clamped to 1..=its capacity) and returns
    /// the count. Growing publishes the new buffers at once (and lets a receive waiting for
    /// buffers re-arm); after shrinking, buffers above the count leave circulation as they
    /// come back from the kernel and the application.
    pub fn resize_buf_ring(&mut self, group: BufGroup, count: u16) -> Result<u16, UringError> {
        self.check_group(group)?;
        let pool = self.pool(group).ok_or(UringError::UnknownGroup(group.0))?;
        Ok(pool.resize(count))
    }

    /// Gives the memory of `group`'s idle buffers back to the system: those out of circulation
    /// and, on a `SINGLE_ISSUER | DEFER_TASKRUN` ring of a kernel that reports a buffer ring's
    /// head (6.8), those waiting in the ring. They read as zeros afterwards and cost memory
    /// again once the kernel fills them. Returns the number of buffers released.
    ///
    /// On such a ring the kernel fills buffers only inside this thread's `io_uring_enter`
    /// (sockets and TAP queues are pollable, so no receive goes to a worker thread): between
    /// two enters, the buffers from the kernel's head to our tail are neither filled nor about
    /// to be reported, and discarding their contents loses nothing. Other setups run completions
    /// at any time, so only buffers out of circulation are released there.
    pub fn release_buffers(&mut self, group: BufGroup) -> Result<usize, UringError> {
        self.check_group(group)?;
        let pool = Rc::clone(self.pool(group).ok_or(UringError::UnknownGroup(group.0))?);
        let unread = match self.capabilities.setup {
            SetupMode::SingleIssuerDeferTaskrun if pool.touched_in_ring() => self
                .buf_ring_head(group)
                .map_or_else(Vec::new, |head| pool.unread(head)),
            SetupMode::SingleIssuerDeferTaskrun | SetupMode::CoopTaskrun | SetupMode::Plain => {
                Vec::new()
            }
        };
        Ok(pool.release(&unread))
    }

    /// The kernel's head of `group`'s buffer ring (`IORING_REGISTER_PBUF_STATUS`); `None` where
    /// the kernel does not report it.
    fn buf_ring_head(&mut self, group: BufGroup) -> Option<u16> {
        if !self.buf_status {
            return None;
        }
        let mut status = BufStatus {
            buf_group: u32::from(group.0),
            ..BufStatus::default()
        };
        // SAFETY: `status` is a live `io_uring_buf_status` the kernel reads the group from and
        // writes the head into; one argument, as the opcode takes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.ring.as_raw_fd(),
                REGISTER_PBUF_STATUS,
                std::ptr::from_mut(&mut status),
                1,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                self.buf_status = false;
            }
            tracing::debug!(group = group.0, %err, "buffer ring status");
            return None;
        }
        // The kernel's head is a u16 counter like our tail, widened for the ABI.
        Some(status.head as u16)
    }

    /// Starts a multishot `recvmsg` on a UDP socket: every datagram (or GRO batch) becomes a
    /// [`Completion::Received`] in a buffer of `group`. The wrapper re-arms it when the kernel
    /// ends it for a reason worth retrying (`ENOBUFS`, completion-queue overflow, transient
    /// socket errors); it reports [`Completion::Stopped`] otherwise.
    pub fn recv_multi(&mut self, target: Target, group: BufGroup) -> Result<OpId, UringError> {
        self.check_group(group)?;
        if self
            .pool(group)
            .is_some_and(|pool| pool.buf_size as usize <= RECV_OVERHEAD)
        {
            return Err(UringError::BadBufRing(
                "receive buffers must be larger than RECV_OVERHEAD",
            ));
        }
        let op = Op::RecvMulti(Box::new(RecvOp {
            target,
            group,
            hdr: recv_template(),
        }));
        self.start(OpKind::RecvMulti, op)
    }

    /// Starts a multishot read (the TAP, a pipe): every chunk becomes a [`Completion::Read`] in
    /// a buffer of `group`. Re-armed like [`Ring::recv_multi`]; end of file stops it.
    pub fn read_multi(&mut self, target: Target, group: BufGroup) -> Result<OpId, UringError> {
        self.check_group(group)?;
        let op = Op::ReadMulti(ReadOp { target, group });
        self.start(OpKind::ReadMulti, op)
    }

    /// Queues one `sendmsg` of the concatenated `bufs` to `dest` (`None` on a connected
    /// socket). With `gso_size`, a `UDP_SEGMENT` control message makes the kernel cut the
    /// payload into datagrams of that size (the last may be shorter); see [`max_gso_segments`].
    /// `flags` are `sendmsg`'s `MSG_*` flags: with `MSG_DONTWAIT`, a full send buffer fails the
    /// send with `EAGAIN` at once; without, the send waits in the kernel until there is room.
    pub fn sendmsg(
        &mut self,
        target: Target,
        dest: Option<SocketAddr>,
        bufs: Vec<TxBuf>,
        gso_size: Option<u16>,
        flags: libc::c_int,
    ) -> Result<OpId, Rejected> {
        if self.state != RingState::Running {
            return Err(Rejected {
                error: UringError::ShutDown,
                bufs,
            });
        }
        let mut state = Box::new(SendState::new(bufs));
        state.link(dest, gso_size);
        let id = self.slab.insert(OpKind::SendMsg, Op::Send(state));
        let entry = match self.slab.get(id) {
            Some(Op::Send(state)) => {
                build_on!(target, |fd| opcode::SendMsg::new(fd, &state.hdr)
                    .flags(flags as u32)
                    .build())
            }
            Some(_) | None => unreachable!("slot {id:?} was just filled with a send"),
        };
        self.push_or_hand_back(id, entry.user_data(id.encode()))
    }

    /// Queues one `write` of `buf` (the TAP: one frame with its virtio-net header).
    pub fn write(&mut self, target: Target, buf: TxBuf) -> Result<OpId, Rejected> {
        self.queue_write(target, vec![buf], false)
    }

    /// Queues one `writev` of the concatenated `bufs`.
    pub fn writev(&mut self, target: Target, bufs: Vec<TxBuf>) -> Result<OpId, Rejected> {
        self.queue_write(target, bufs, true)
    }

    /// Asks the kernel to cancel `op`. A multishot operation then ends with
    /// [`Completion::Stopped`] and `StopReason::Cancelled`, whatever its final completion
    /// says (it may have ended on its own, with `ENOBUFS` say, before the kernel saw the
    /// cancel) and is never re-armed; a send or write completes with `ECANCELED` unless it had
    /// already finished.
    pub fn cancel(&mut self, op: OpId) -> Result<(), UringError> {
        if self.slab.get(op).is_none() {
            return Ok(());
        }
        if self.rearm.contains(&op) {
            // Not in the kernel: stopping it is ours to do, on the next reap.
            self.rearm.retain(|queued| *queued != op);
            self.slab.cancel_pending.push(op);
            return Ok(());
        }
        self.push_cancel(types::CancelBuilder::user_data(op.encode()))?;
        // Its final completion may already be posted and unreaped, in which case the kernel
        // answers the cancel with ENOENT: the mark makes that completion a stop, not a re-arm.
        self.slab.mark_cancelled(op);
        Ok(())
    }

    /// Submits everything queued (and the pending re-arms) without waiting; on a
    /// `DEFER_TASKRUN` ring this also runs the deferred work, so completions that are ready
    /// become reapable. Returns the number of submissions the kernel took.
    pub fn submit(&mut self) -> Result<usize, UringError> {
        self.flush_rearms();
        let to_submit = self.ring.submission().len();
        let flags = EnterFlags::GETEVENTS.bits();
        self.enter_loop(|ring| {
            // SAFETY: no argument pointer is passed; the flags are plain GETEVENTS.
            unsafe {
                ring.submitter()
                    .enter::<libc::sigset_t>(to_submit as u32, 0, flags, None)
            }
        })
    }

    /// Submits everything queued and waits until `want` completions are ready or `timeout`
    /// passes (`None`: no limit). A timeout is not an error. Returns the submissions taken.
    ///
    /// A receive whose buffer ring ran dry is re-armed only once a buffer of its group has been
    /// dropped: waiting without a timeout while holding every buffer of the only armed group
    /// waits forever.
    pub fn submit_and_wait(
        &mut self,
        want: usize,
        timeout: Option<Duration>,
    ) -> Result<usize, UringError> {
        self.flush_rearms();
        match timeout {
            None => self.enter_loop(|ring| ring.submitter().submit_and_wait(want)),
            Some(timeout) => {
                let timespec = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&timespec);
                self.enter_loop(|ring| ring.submitter().submit_with_args(want, &args))
            }
        }
    }

    /// Moves every ready completion into `out` and returns how many were added. Completions of
    /// the wrapper's own bookkeeping (cancels, re-arms, malformed receives) are counted in
    /// [`RingStats`] rather than returned.
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let before = out.len();
        for op in std::mem::take(&mut self.slab.cancel_pending) {
            if self.slab.remove(op).is_some() {
                out.push(Completion::Stopped {
                    op,
                    reason: StopReason::Cancelled,
                });
            }
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
        );
        for &(user_data, result, flags) in &scratch {
            self.handle_cqe(user_data, result, flags, out);
        }
        self.scratch = scratch;
        out.len() - before
    }

    /// Cancels every operation, waits until the kernel has completed them all (discarding the
    /// completions: buffers go back to their rings, send buffers are dropped), and unregisters
    /// the buffer rings. The ring takes no new operations afterwards. Idempotent.
    pub fn shutdown(&mut self) -> Result<ShutdownReport, UringError> {
        let mut report = ShutdownReport::default();
        if self.state == RingState::ShutDown {
            return Ok(report);
        }
        self.state = RingState::Draining;
        for op in std::mem::take(&mut self.rearm) {
            self.slab.remove(op);
            report.dropped_rearms += 1;
        }
        let deadline = Instant::now() + self.drain_timeout;
        let mut sink = Vec::new();
        let mut ask = true;
        while self.in_kernel > 0 {
            if Instant::now() >= deadline {
                return Err(UringError::DrainTimeout {
                    in_flight: self.in_kernel,
                });
            }
            if ask {
                self.push_cancel(types::CancelBuilder::any())?;
                report.cancel_requests += 1;
            }
            match self.submit_and_wait(1, Some(DRAIN_POLL)) {
                Ok(_) => {}
                // A full completion queue refuses the enter until it is reaped: reap below.
                Err(UringError::Enter(err)) if err.raw_os_error() == Some(libc::EBUSY) => {}
                Err(err) => return Err(err),
            }
            let reaped = self.reap(&mut sink);
            report.drained += reaped as u64;
            sink.clear();
            // Nothing came back within a poll interval: something escaped the last cancel
            // (it was queued behind it, or was between issue and arming), so ask again.
            ask = reaped == 0;
        }
        for pool in &self.pools {
            if let Err(err) = self.ring.submitter().unregister_buf_ring(pool.group.0) {
                tracing::warn!(group = pool.group.0, %err, "unregistering buffer ring");
            }
            pool.live.set(false);
        }
        self.state = RingState::ShutDown;
        Ok(report)
    }

    fn check_group(&self, group: BufGroup) -> Result<(), UringError> {
        if self.state != RingState::Running {
            return Err(UringError::ShutDown);
        }
        if self.pool(group).is_none() {
            return Err(UringError::UnknownGroup(group.0));
        }
        Ok(())
    }

    fn pool(&self, group: BufGroup) -> Option<&Rc<Pool>> {
        self.pools.iter().find(|pool| pool.group == group)
    }

    /// Inserts a multishot operation and pushes its first arming.
    fn start(&mut self, kind: OpKind, op: Op) -> Result<OpId, UringError> {
        let id = self.slab.insert(kind, op);
        let Some(entry) = self.multishot_entry(id) else {
            unreachable!("slot {id:?} was just filled with a multishot operation");
        };
        if let Err(err) = self.push(entry) {
            self.slab.remove(id);
            return Err(err);
        }
        Ok(id)
    }

    /// The submission that (re-)arms a multishot operation.
    fn multishot_entry(&self, id: OpId) -> Option<squeue::Entry> {
        let entry = match self.slab.get(id)? {
            Op::RecvMulti(op) => build_on!(op.target, |fd| opcode::RecvMsgMulti::new(
                fd, &op.hdr, op.group.0
            )
            .build()),
            Op::ReadMulti(op) => {
                // Length 0: the kernel refuses any other for a multishot read and reads up to
                // the size of the buffer it picks. Offset -1: "the file position", the only
                // meaningful one for a TAP or a pipe.
                build_on!(op.target, |fd| opcode::ReadMulti::new(fd, 0, op.group.0)
                    .offset(u64::MAX)
                    .build())
            }
            Op::Send(_) | Op::Write(_) | Op::Cancel => return None,
        };
        Some(entry.user_data(id.encode()))
    }

    fn queue_write(
        &mut self,
        target: Target,
        bufs: Vec<TxBuf>,
        vectored: bool,
    ) -> Result<OpId, Rejected> {
        if self.state != RingState::Running {
            return Err(Rejected {
                error: UringError::ShutDown,
                bufs,
            });
        }
        let state = Box::new(WriteState::new(bufs));
        let id = self.slab.insert(OpKind::Write, Op::Write(state));
        let entry = match self.slab.get(id) {
            Some(Op::Write(state)) if vectored => build_on!(target, |fd| {
                opcode::Writev::new(fd, state.iov.as_ptr(), state.iov.len() as u32)
                    .offset(u64::MAX)
                    .build()
            }),
            Some(Op::Write(state)) => {
                let (base, len) = state
                    .iov
                    .first()
                    .map_or((std::ptr::null(), 0), |iov| (iov.iov_base, iov.iov_len));
                build_on!(target, |fd| opcode::Write::new(fd, base.cast(), len as u32)
                    .offset(u64::MAX)
                    .build())
            }
            Some(_) | None => unreachable!("slot {id:?} was just filled with a write"),
        };
        self.push_or_hand_back(id, entry.user_data(id.encode()))
    }

    /// Pushes a send or write; if it cannot be queued, frees its slot and hands the buffers
    /// back (the kernel never saw the submission, so nothing points at them).
    fn push_or_hand_back(&mut self, id: OpId, entry: squeue::Entry) -> Result<OpId, Rejected> {
        let Err(error) = self.push(entry) else {
            return Ok(id);
        };
        let bufs = match self.slab.remove(id) {
            Some(Op::Send(state)) => state.bufs,
            Some(Op::Write(state)) => state.bufs,
            Some(Op::RecvMulti(_) | Op::ReadMulti(_) | Op::Cancel) | None => Vec::new(),
        };
        Err(Rejected { error, bufs })
    }

    fn push_cancel(&mut self, builder: types::CancelBuilder) -> Result<(), UringError> {
        let id = self.slab.insert(OpKind::Cancel, Op::Cancel);
        let entry = opcode::AsyncCancel2::new(builder)
            .build()
            .user_data(id.encode());
        if let Err(err) = self.push(entry) {
            self.slab.remove(id);
            return Err(err);
        }
        Ok(())
    }

    /// Pushes one submission; a full queue is submitted once to make room.
    fn push(&mut self, entry: squeue::Entry) -> Result<(), UringError> {
        for attempt in 0..2 {
            // SAFETY: every pointer in the entry points into a boxed slot of `self.slab` or into
            // a pool's allocation; both stay put until the entry's final completion is reaped
            // (or, on a failed drain, forever).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                self.in_kernel += 1;
                return Ok(());
            }
            if attempt == 0 {
                let to_submit = self.ring.submission().len();
                self.enter_loop(|ring| {
                    // SAFETY: no argument pointer; submit without waiting.
                    unsafe {
                        ring.submitter()
                            .enter::<libc::sigset_t>(to_submit as u32, 0, 0, None)
                    }
                })?;
            }
        }
        Err(UringError::QueueFull)
    }

    /// Runs an `io_uring_enter` variant, retrying on `EINTR` and treating `ETIME` (a wait that
    /// timed out) as success.
    fn enter_loop(
        &mut self,
        mut enter: impl FnMut(&IoUring) -> io::Result<usize>,
    ) -> Result<usize, UringError> {
        loop {
            self.stats.enters += 1;
            match enter(&self.ring) {
                Ok(submitted) => {
                    self.stats.sqes_submitted += submitted as u64;
                    return Ok(submitted);
                }
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => continue,
                Err(err) if err.raw_os_error() == Some(libc::ETIME) => return Ok(0),
                Err(err) => return Err(UringError::Enter(err)),
            }
        }
    }

    /// Pushes the re-arms queued by the last reap; those that do not fit stay queued, and so
    /// do those whose buffer ring is still empty because the application holds every buffer
    /// (arming them would only end in `ENOBUFS` again, a busy loop).
    fn flush_rearms(&mut self) {
        if self.state != RingState::Running {
            return;
        }
        let queued = std::mem::take(&mut self.rearm);
        for (index, id) in queued.iter().enumerate() {
            if !self.has_free_buffers(*id) {
                self.rearm.push(*id);
                continue;
            }
            let Some(entry) = self.multishot_entry(*id) else {
                continue;
            };
            if self.push(entry).is_err() {
                self.rearm.extend_from_slice(&queued[index..]);
                return;
            }
            self.stats.rearms += 1;
        }
    }

    /// Whether the buffer ring of a multishot operation holds a buffer. Every buffer the
    /// kernel took before it reported the ring empty was reaped with (or before) that report,
    /// so a buffer is in the ring exactly when the application does not hold it.
    fn has_free_buffers(&self, id: OpId) -> bool {
        let group = match self.slab.get(id) {
            Some(Op::RecvMulti(op)) => op.group,
            Some(Op::ReadMulti(op)) => op.group,
            Some(Op::Send(_) | Op::Write(_) | Op::Cancel) | None => return true,
        };
        self.pool(group).is_none_or(|pool| pool.in_ring.get() > 0)
    }

    fn handle_cqe(&mut self, user_data: u64, result: i32, flags: u32, out: &mut Vec<Completion>) {
        self.stats.cqes += 1;
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let Some(id) = OpId::decode(user_data) else {
            self.stats.unknown_cqes += 1;
            return;
        };
        if self.slab.get(id).is_none() {
            self.stats.unknown_cqes += 1;
            return;
        }
        if !more {
            self.in_kernel = self.in_kernel.saturating_sub(1);
        }
        match id.kind() {
            OpKind::RecvMulti | OpKind::ReadMulti => self.on_multishot(id, result, more, bid, out),
            OpKind::SendMsg | OpKind::Write => self.on_transfer(id, result, out),
            OpKind::Cancel => {
                self.slab.remove(id);
            }
        }
    }

    fn on_multishot(
        &mut self,
        id: OpId,
        result: i32,
        more: bool,
        bid: Option<u16>,
        out: &mut Vec<Completion>,
    ) {
        let (group, is_recv) = match self.slab.get(id) {
            Some(Op::RecvMulti(op)) => (op.group, true),
            Some(Op::ReadMulti(op)) => (op.group, false),
            Some(Op::Send(_) | Op::Write(_) | Op::Cancel) | None => return,
        };
        let buf = match (bid, self.pool(group)) {
            (Some(bid), Some(pool)) => {
                let taken = Pool::take(pool, bid, usize::try_from(result).unwrap_or(0));
                if taken.is_none() {
                    self.stats.bad_buffers += 1;
                }
                taken
            }
            (Some(_), None) => {
                self.stats.bad_buffers += 1;
                None
            }
            (None, _) => None,
        };
        match (buf, is_recv) {
            (Some(buf), true) if result > 0 => match parse_datagram(buf) {
                Some(datagram) => {
                    if datagram.truncated {
                        self.stats.truncated += 1;
                    }
                    out.push(Completion::Received { op: id, datagram });
                }
                None => self.stats.malformed += 1,
            },
            (Some(buf), false) if result > 0 => out.push(Completion::Read { op: id, buf }),
            // A buffer with nothing in it goes straight back to its ring (by dropping it).
            (Some(_), _) | (None, _) => {}
        }
        if more {
            return;
        }
        let end = if self.state == RingState::Running {
            classify_end(result)
        } else {
            MultishotEnd::Stop(StopReason::Cancelled)
        };
        if let MultishotEnd::RearmNoBuffers = end {
            self.stats.enobufs += 1;
            if let Some(pool) = self.pool(group) {
                pool.enobufs.set(pool.enobufs.get() + 1);
            }
        }
        let reason = if self.slab.is_cancelled(id) {
            // Cancelled while this final completion was on its way (the kernel then answers
            // the cancel with ENOENT): whatever the operation ended with, it stays stopped.
            StopReason::Cancelled
        } else {
            match end {
                MultishotEnd::Rearm | MultishotEnd::RearmNoBuffers => {
                    self.rearm.push(id);
                    return;
                }
                MultishotEnd::RearmTransient => {
                    self.stats.transient_errors += 1;
                    self.rearm.push(id);
                    return;
                }
                MultishotEnd::Stop(reason) => reason,
            }
        };
        self.slab.remove(id);
        out.push(Completion::Stopped { op: id, reason });
    }

    fn on_transfer(&mut self, id: OpId, result: i32, out: &mut Vec<Completion>) {
        let result = usize::try_from(result).map_err(|_| io::Error::from_raw_os_error(-result));
        match self.slab.remove(id) {
            Some(Op::Send(state)) => out.push(Completion::Sent {
                op: id,
                result,
                bufs: state.bufs,
            }),
            Some(Op::Write(state)) => out.push(Completion::Written {
                op: id,
                result,
                bufs: state.bufs,
            }),
            Some(Op::RecvMulti(_) | Op::ReadMulti(_) | Op::Cancel) | None => {
                self.stats.unknown_cqes += 1;
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown() {
            tracing::error!(%err, "io_uring drain failed; leaking the memory of its operations");
            // The kernel may still write through pointers into these: never free them.
            std::mem::forget(std::mem::take(&mut self.slab));
            for pool in &self.pools {
                std::mem::forget(Rc::clone(pool));
            }
        }
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capabilities", &self.capabilities)
            .field("in_flight", &self.in_kernel)
            .field("state", &self.state)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Tries the setups from best to plainest; only `EINVAL` (flags this kernel does not know)
/// moves on to the next.
fn setup_ring(entries: u32, cq_entries: u32) -> Result<(IoUring, SetupMode), UringError> {
    let modes = [
        SetupMode::SingleIssuerDeferTaskrun,
        SetupMode::CoopTaskrun,
        SetupMode::Plain,
    ];
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for mode in modes {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq_entries).setup_clamp();
        match mode {
            SetupMode::SingleIssuerDeferTaskrun => {
                builder
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_submit_all();
            }
            SetupMode::CoopTaskrun => {
                builder
                    .setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .setup_submit_all();
            }
            SetupMode::Plain => {}
        }
        match builder.build(entries) {
            Ok(ring) => {
                if mode != SetupMode::SingleIssuerDeferTaskrun {
                    tracing::warn!(
                        ?mode,
                        "io_uring: kernel refused SINGLE_ISSUER|DEFER_TASKRUN"
                    );
                }
                return Ok((ring, mode));
            }
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => last = err,
            Err(err) => return Err(UringError::Setup(err)),
        }
    }
    Err(UringError::Setup(last))
}

fn probe(ring: &IoUring, setup: SetupMode) -> Capabilities {
    let mut probe = Probe::new();
    let probed = ring.submitter().register_probe(&mut probe).is_ok();
    let has = |code: u8| probed && probe.is_supported(code);
    Capabilities {
        setup,
        recvmsg_multishot: has(opcode::SendZc::CODE) && has(opcode::RecvMsg::CODE),
        read_multishot: has(opcode::ReadMulti::CODE),
        sendmsg: has(opcode::SendMsg::CODE),
        write: has(opcode::Write::CODE),
        writev: has(opcode::Writev::CODE),
        async_cancel: has(opcode::AsyncCancel::CODE),
        provided_buffer_ring: probe_buf_ring(ring),
        ext_arg: ring.params().is_feature_ext_arg(),
        provide_buffers: has(opcode::ProvideBuffers::CODE),
    }
}

/// Registers and unregisters a one-entry buffer ring: the only way to learn whether
/// `IORING_REGISTER_PBUF_RING` exists.
fn probe_buf_ring(ring: &IoUring) -> bool {
    let Ok(pool) = Pool::new(BufGroup(PROBE_GROUP), 1, 1, 64) else {
        return false;
    };
    // SAFETY: the entry array is page-aligned and one entry long; it is unregistered below
    // before `pool` is dropped, and no operation is ever submitted on this group.
    let registered = unsafe {
        ring.submitter().register_buf_ring_with_flags(
            pool.entries.as_ptr() as u64,
            1,
            PROBE_GROUP,
            0,
        )
    }
    .is_ok();
    if registered && ring.submitter().unregister_buf_ring(PROBE_GROUP).is_err() {
        // Still registered: the kernel may keep reading the entry, so never free it.
        std::mem::forget(pool);
    }
    registered
}

/// How a multishot operation's final completion is handled.
#[derive(Debug)]
enum MultishotEnd {
    /// The kernel ended it with success (e.g. completion-queue overflow): arm it again.
    Rearm,
    /// The buffer ring ran dry: arm it again once buffers are back.
    RearmNoBuffers,
    /// A socket error that concerns one datagram, not the socket: arm it again.
    RearmTransient,
    /// Done for good.
    Stop(StopReason),
}

fn classify_end(result: i32) -> MultishotEnd {
    if result > 0 {
        return MultishotEnd::Rearm;
    }
    if result == 0 {
        return MultishotEnd::Stop(StopReason::EndOfFile);
    }
    match -result {
        libc::ENOBUFS => MultishotEnd::RearmNoBuffers,
        libc::ECANCELED => MultishotEnd::Stop(StopReason::Cancelled),
        // ICMP errors reported on the socket and interrupted waits concern one exchange.
        libc::EINTR
        | libc::EAGAIN
        | libc::ECONNREFUSED
        | libc::EHOSTUNREACH
        | libc::ENETUNREACH
        | libc::EMSGSIZE => MultishotEnd::RearmTransient,
        errno => MultishotEnd::Stop(StopReason::Error(io::Error::from_raw_os_error(errno))),
    }
}

/// The msghdr of every multishot recvmsg. The kernel reads only its two lengths, which
/// reserve the fixed-size name and control fields at the head of each buffer; the parser of
/// the buffers must be given the same lengths.
fn recv_template() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value (null pointers).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_namelen = RECV_NAME_LEN as libc::socklen_t;
    hdr.msg_controllen = RECV_CONTROL_LEN as _;
    hdr
}

/// Splits a multishot-recvmsg buffer into source, GRO segment size and payload; `None` if the
/// layout does not parse (the buffer is then recycled by dropping it).
fn parse_datagram(mut buf: ProvidedBuf) -> Option<Datagram> {
    let hdr = recv_template();
    let (source, segment_size, truncated, payload) = {
        let parsed = types::RecvMsgOut::parse(&buf[..], &hdr).ok()?;
        let source = if parsed.incoming_name_len() > 0 {
            decode_sockaddr(parsed.name_data())
        } else {
            None
        };
        let payload = parsed.payload_data();
        let start = payload.as_ptr() as usize - buf.as_ptr() as usize;
        (
            source,
            gro_segment_size(parsed.control_data()),
            parsed.is_payload_truncated(),
            start..start + payload.len(),
        )
    };
    buf.narrow(payload).ok()?;
    Some(Datagram {
        payload: buf,
        source,
        segment_size,
        truncated,
    })
}

/// Reads the `UDP_GRO` control message (the size of the coalesced segments) out of the control
/// bytes of a receive, if there is one.
pub fn gro_segment_size(control: &[u8]) -> Option<u16> {
    cmsgs(control)
        .find(|(level, kind, _)| *level == libc::SOL_UDP && *kind == libc::UDP_GRO)
        .and_then(|(_, _, data)| {
            let bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
            u16::try_from(i32::from_ne_bytes(bytes))
                .ok()
                .filter(|size| *size > 0)
        })
}

/// Iterates `(level, type, data)` over control messages laid out like `CMSG_FIRSTHDR` /
/// `CMSG_NXTHDR` walk them; stops at the first header that does not fit.
fn cmsgs(mut control: &[u8]) -> impl Iterator<Item = (i32, i32, &[u8])> {
    std::iter::from_fn(move || {
        let header = control.get(..CMSG_HDR_LEN)?;
        let (len_bytes, rest) = header.split_at(std::mem::size_of::<usize>());
        let len = usize::from_ne_bytes(len_bytes.try_into().ok()?);
        let level = i32::from_ne_bytes(rest.get(..4)?.try_into().ok()?);
        let kind = i32::from_ne_bytes(rest.get(4..8)?.try_into().ok()?);
        if len < CMSG_HDR_LEN || len > control.len() {
            return None;
        }
        let data = &control[CMSG_HDR_LEN..len];
        control = control.get(cmsg_align(len)..).unwrap_or(&[]);
        Some((level, kind, data))
    })
}

const fn cmsg_align(len: usize) -> usize {
    let align = std::mem::size_of::<usize>();
    (len + align - 1) & !(align - 1)
}

/// `CMSG_SPACE(2)`: room for the `UDP_SEGMENT` control message.
const SEGMENT_CMSG_SPACE: usize = CMSG_HDR_LEN + cmsg_align(2);

/// Writes a `UDP_SEGMENT` control message for `size`-byte segments; returns its length.
fn encode_udp_segment(out: &mut [u8; SEGMENT_CMSG_SPACE], size: u16) -> usize {
    out.fill(0);
    let word = std::mem::size_of::<usize>();
    out[..word].copy_from_slice(&(CMSG_HDR_LEN + 2).to_ne_bytes());
    out[word..word + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    out[word + 4..word + 8].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    out[CMSG_HDR_LEN..CMSG_HDR_LEN + 2].copy_from_slice(&size.to_ne_bytes());
    SEGMENT_CMSG_SPACE
}

/// Parses a `sockaddr_in` / `sockaddr_in6` as the kernel lays it out.
pub fn decode_sockaddr(raw: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(raw.get(..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flowinfo = u32::from_be_bytes(raw.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(raw.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flowinfo,
                scope,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` as a `sockaddr_in` / `sockaddr_in6`; returns its length.
pub fn encode_sockaddr(addr: SocketAddr, out: &mut [u8; RECV_NAME_LEN]) -> usize {
    out.fill(0);
    match addr {
        SocketAddr::V4(v4) => {
            out[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&v4.port().to_be_bytes());
            out[4..8].copy_from_slice(&v4.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            out[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&v6.port().to_be_bytes());
            out[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&v6.ip().octets());
            out[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    }
}

/// The operations in flight, by slot. Every slot's kernel-visible memory is boxed.
#[derive(Default)]
struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Operations cancelled while waiting for a re-arm: reported as stopped by the next reap.
    cancel_pending: Vec<OpId>,
}

struct Slot {
    generation: u32,
    kind: OpKind,
    op: Option<Op>,
    /// [`Ring::cancel`] was asked for this operation: its final completion stops it.
    cancelled: bool,
}

impl Slab {
    fn insert(&mut self, kind: OpKind, op: Op) -> OpId {
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.kind = kind;
            slot.op = Some(op);
            slot.cancelled = false;
            return OpId::new(kind, index, slot.generation);
        }
        let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 operations in flight");
        self.slots.push(Slot {
            generation: 0,
            kind,
            op: Some(op),
            cancelled: false,
        });
        OpId::new(kind, index, 0)
    }

    fn get(&self, id: OpId) -> Option<&Op> {
        self.live_slot(id)?.op.as_ref()
    }

    fn mark_cancelled(&mut self, id: OpId) {
        let Some(slot) = self.slots.get_mut(id.slot as usize) else {
            return;
        };
        if slot.generation == id.generation && slot.kind == id.kind && slot.op.is_some() {
            slot.cancelled = true;
        }
    }

    fn is_cancelled(&self, id: OpId) -> bool {
        self.live_slot(id).is_some_and(|slot| slot.cancelled)
    }

    fn live_slot(&self, id: OpId) -> Option<&Slot> {
        let slot = self.slots.get(id.slot as usize)?;
        if slot.generation != id.generation || slot.kind != id.kind || slot.op.is_none() {
            return None;
        }
        Some(slot)
    }

    fn remove(&mut self, id: OpId) -> Option<Op> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation || slot.kind != id.kind {
            return None;
        }
        let op = slot.op.take()?;
        slot.generation = (slot.generation + 1) & OpId::GENERATION_MASK;
        self.free.push(id.slot);
        Some(op)
    }
}

enum Op {
    /// Boxed: the kernel reads the msghdr.
    RecvMulti(Box<RecvOp>),
    ReadMulti(ReadOp),
    /// Boxed: the kernel reads the msghdr, iovecs, address and control bytes.
    Send(Box<SendState>),
    /// Boxed: the kernel reads the iovecs.
    Write(Box<WriteState>),
    Cancel,
}

struct RecvOp {
    target: Target,
    group: BufGroup,
    hdr: libc::msghdr,
}

struct ReadOp {
    target: Target,
    group: BufGroup,
}

#[repr(C, align(8))]
struct NameBuf([u8; RECV_NAME_LEN]);

#[repr(C, align(8))]
struct ControlBuf([u8; SEGMENT_CMSG_SPACE]);

/// Everything one `sendmsg` points at. The pointers inside `hdr` and `iov` point into this box
/// and into `bufs`' heap storage, neither of which moves while the box lives.
struct SendState {
    hdr: libc::msghdr,
    name: NameBuf,
    control: ControlBuf,
    iov: Vec<libc::iovec>,
    bufs: Vec<TxBuf>,
}

impl SendState {
    fn new(bufs: Vec<TxBuf>) -> SendState {
        SendState {
            // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
            hdr: unsafe { std::mem::zeroed() },
            name: NameBuf([0; RECV_NAME_LEN]),
            control: ControlBuf([0; SEGMENT_CMSG_SPACE]),
            iov: iovecs(&bufs),
            bufs,
        }
    }

    /// Points the msghdr at the fields; called once the state is boxed, so they stay put.
    fn link(&mut self, dest: Option<SocketAddr>, gso_size: Option<u16>) {
        if let Some(dest) = dest {
            let len = encode_sockaddr(dest, &mut self.name.0);
            self.hdr.msg_name = self.name.0.as_mut_ptr().cast();
            self.hdr.msg_namelen = len as libc::socklen_t;
        }
        if let Some(size) = gso_size {
            let len = encode_udp_segment(&mut self.control.0, size);
            self.hdr.msg_control = self.control.0.as_mut_ptr().cast();
            self.hdr.msg_controllen = len as _;
        }
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = self.iov.len() as _;
    }
}

/// Everything one write or writev points at.
struct WriteState {
    iov: Vec<libc::iovec>,
    bufs: Vec<TxBuf>,
}

impl WriteState {
    fn new(bufs: Vec<TxBuf>) -> WriteState {
        WriteState {
            iov: iovecs(&bufs),
            bufs,
        }
    }
}

fn iovecs(bufs: &[TxBuf]) -> Vec<libc::iovec> {
    bufs.iter()
        .map(|buf| {
            let bytes = buf.as_slice();
            libc::iovec {
                iov_base: bytes.as_ptr().cast_mut().cast(),
                iov_len: bytes.len(),
            }
        })
        .collect()
}

/// The free slots of the registered-file table.
struct FileTable {
    next: u32,
    size: u32,
    free: Vec<u32>,
}

impl FileTable {
    fn new(size: u32) -> FileTable {
        FileTable {
            next: 0,
            size,
            free: Vec::new(),
        }
    }

    fn take(&mut self) -> Option<u32> {
        if let Some(slot) = self.free.pop() {
            return Some(slot);
        }
        if self.next >= self.size {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }

    fn give_back(&mut self, slot: u32) {
        self.free.push(slot);
    }
}

/// A handle on a registered buffer ring, for its counters.
#[derive(Clone)]
pub struct BufRing(Rc<Pool>);

impl BufRing {
    /// The buffer-group id.
    pub fn group(&self) -> BufGroup {
        self.0.group
    }

    /// Buffers in circulation (see [`Ring::resize_buf_ring`]).
    pub fn count(&self) -> u16 {
        self.0.active.get()
    }

    /// The most buffers the ring can circulate.
    pub fn capacity(&self) -> u16 {
        self.0.capacity
    }

    /// Bytes per buffer.
    pub fn buf_size(&self) -> u32 {
        self.0.buf_size
    }

    /// Buffers currently held by the application (not available to the kernel).
    pub fn lent(&self) -> u16 {
        self.0.lent_count.get()
    }

    /// Buffers in the ring for the kernel to fill, as far as reaped completions tell.
    pub fn in_ring(&self) -> u16 {
        self.0.in_ring.get()
    }

    /// How often an operation on this group found the ring empty.
    pub fn enobufs(&self) -> u64 {
        self.0.enobufs.get()
    }

    /// How many buffers were handed back to the kernel after use.
    pub fn recycled(&self) -> u64 {
        self.0.recycled.get()
    }

    /// How many buffers the kernel has filled.
    pub fn taken(&self) -> u64 {
        self.0.taken.get()
    }

    /// The counters the sizing policy reads.
    pub fn usage(&self) -> Usage {
        Usage {
            taken: self.taken(),
            enobufs: self.enobufs(),
            lent: self.lent(),
        }
    }

    /// Bytes of the ring's buffer memory that are resident, as the kernel reports them
    /// (`mincore`); 0 where it cannot tell.
    pub fn resident_bytes(&self) -> usize {
        self.0.resident_bytes()
    }
}

impl fmt::Debug for BufRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufRing")
            .field("group", &self.0.group)
            .field("count", &self.0.active.get())
            .field("capacity", &self.0.capacity)
            .field("buf_size", &self.0.buf_size)
            .field("lent", &self.0.lent_count.get())
            .finish()
    }
}

/// Growable buffer rings, each sized by its own [`Sizer`] once per loop turn: the shell of the
/// policy in [`crate::dataplane::bufsize`].
#[derive(Debug)]
pub struct SizedBufRings {
    limits: Limits,
    rings: Vec<(BufRing, Sizer)>,
}

impl SizedBufRings {
    /// No rings yet; each ring added is sized within `limits`.
    pub fn new(limits: Limits) -> SizedBufRings {
        SizedBufRings {
            limits,
            rings: Vec::new(),
        }
    }

    /// Registers a ring for `group` with room for `limits.max` buffers of `buf_size` bytes,
    /// `limits.min` of them in circulation.
    pub fn add(
        &mut self,
        ring: &mut Ring,
        group: BufGroup,
        buf_size: u32,
        now: Instant,
    ) -> Result<BufRing, UringError> {
        let sizer = Sizer::new(self.limits, now);
        let capacity = self
            .limits
            .max
            .max(sizer.size())
            .checked_next_power_of_two()
            .ok_or(UringError::BadBufRing("more than 32768 buffers"))?;
        let buf_ring = ring.add_growable_buf_ring(group, sizer.size(), capacity, buf_size)?;
        self.rings.push((buf_ring.clone(), sizer));
        Ok(buf_ring)
    }

    /// Feeds each ring's counters to its policy and applies what it decides. Call once per loop
    /// turn, between two waits on the ring.
    pub fn tick(&mut self, now: Instant, ring: &mut Ring) {
        for (buf_ring, sizer) in &mut self.rings {
            let Some(action) = sizer.handle_turn(now, buf_ring.usage()) else {
                continue;
            };
            let group = buf_ring.group();
            let applied = match action {
                Action::Grow(count) => ring.resize_buf_ring(group, count).map(|_| 0),
                Action::Shrink(count) => ring
                    .resize_buf_ring(group, count)
                    .and_then(|_| ring.release_buffers(group)),
                Action::Release => ring.release_buffers(group),
            };
            match applied {
                Ok(released) => tracing::debug!(
                    group = group.0,
                    ?action,
                    released,
                    resident = buf_ring.resident_bytes(),
                    "buffer ring resized"
                ),
                Err(err) => {
                    tracing::debug!(group = group.0, ?action, %err, "buffer ring not resized")
                }
            }
        }
    }
}

/// `struct io_uring_buf`; entry 0's `resv` doubles as the ring's tail.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<RawBuf>() == 16);
const _: () = assert!(std::mem::size_of::<RawBuf>() == std::mem::size_of::<types::BufRingEntry>());

/// `struct io_uring_buf_status`, for `IORING_REGISTER_PBUF_STATUS` (6.8).
#[repr(C)]
#[derive(Default)]
struct BufStatus {
    buf_group: u32,
    head: u32,
    resv: [u32; 8],
}

/// `IORING_REGISTER_PBUF_STATUS`: the kernel's head of a buffer ring.
const REGISTER_PBUF_STATUS: libc::c_uint = 26;

/// Where one buffer of a pool is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Published in the ring: the kernel may fill it (or has, and the completion is unreaped).
    Ring,
    /// Lent out as exactly one [`ProvidedBuf`]; only that guard touches it.
    Lent,
    /// Neither: out of circulation (its id is at or above the pool's count, or the ring is
    /// unregistered). Nobody reads or writes it.
    Spare,
}

/// One buffer's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BufState {
    place: Place,
    /// Written since its memory was last released: its pages may be resident.
    touched: bool,
}

/// A provided-buffer ring and the buffers it lends: `capacity` entries shared with the kernel,
/// and `capacity` buffers of `buf_size` bytes of which the first `active` circulate. Each buffer
/// is at any time in the ring (the kernel may write it), lent out as exactly one [`ProvidedBuf`]
/// (only that guard touches it) or spare; `states` records which, so a bogus or repeated id
/// from a completion is refused.
///
/// The buffers live in an anonymous mapping made without backing: a page costs memory only
/// once written, so a buffer that never circulates costs none, and a small datagram in a
/// 64 KiB buffer costs a page. Growing publishes spare buffers; shrinking lets buffers at or
/// above the new count go spare as they come back. [`Pool::release`] gives the memory of spare
/// buffers (and of unread ones in the ring, when the caller can vouch for them) back.
struct Pool {
    group: BufGroup,
    /// Ring entries: the most buffers the pool can circulate.
    capacity: u16,
    /// Buffer ids below this circulate; the others go spare when they come back.
    active: Cell<u16>,
    buf_size: u32,
    /// Bytes from one buffer to the next: `buf_size` rounded up to whole pages, so that each
    /// buffer's memory can be released on its own.
    stride: usize,
    entries: NonNull<RawBuf>,
    entries_layout: Layout,
    /// `capacity * stride` bytes mapped with `mmap`, page-aligned.
    memory: NonNull<u8>,
    memory_len: usize,
    /// Our copy of the tail; the kernel reads the published one in entry 0.
    tail: Cell<u16>,
    states: Box<[Cell<BufState>]>,
    lent_count: Cell<u16>,
    /// Buffers whose place is [`Place::Ring`].
    in_ring: Cell<u16>,
    /// Registered with a ring: buffers are published to the kernel only while true.
    live: Cell<bool>,
    enobufs: Cell<u64>,
    recycled: Cell<u64>,
    taken: Cell<u64>,
}

impl Pool {
    fn new(group: BufGroup, active: u16, capacity: u16, buf_size: u32) -> Result<Pool, UringError> {
        if capacity == 0 || !capacity.is_power_of_two() || capacity > 32_768 {
            return Err(UringError::BadBufRing(
                "count must be a power of two from 1 to 32768",
            ));
        }
        if active == 0 || active > capacity {
            return Err(UringError::BadBufRing(
                "buffers in circulation must be from 1 to the capacity",
            ));
        }
        if buf_size == 0 {
            return Err(UringError::BadBufRing("buffer size must not be zero"));
        }
        let page = page_size();
        let stride = (buf_size as usize)
            .checked_next_multiple_of(page)
            .ok_or(UringError::BadBufRing("buffers too large"))?;
        let memory_len = usize::from(capacity)
            .checked_mul(stride)
            .ok_or(UringError::BadBufRing("buffers too large"))?;
        let entries_layout =
            Layout::from_size_align(usize::from(capacity) * std::mem::size_of::<RawBuf>(), page)
                .map_err(|_| UringError::BadBufRing("entry array too large"))?;
        // SAFETY: the layout has a non-zero size (capacity >= 1).
        let entries = NonNull::new(unsafe { alloc::alloc_zeroed(entries_layout) }.cast::<RawBuf>())
            .ok_or(UringError::BadBufRing("out of memory"))?;
        // SAFETY: a fresh private anonymous mapping; it aliases nothing. MAP_NORESERVE: pages
        // are zero-filled on first touch and cost nothing before.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                memory_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        let memory = (mapped != libc::MAP_FAILED)
            .then(|| NonNull::new(mapped.cast::<u8>()))
            .flatten();
        let Some(memory) = memory else {
            // SAFETY: allocated just above with this layout and not shared with anyone yet.
            unsafe { alloc::dealloc(entries.as_ptr().cast(), entries_layout) };
            return Err(UringError::BadBufRing("out of memory"));
        };
        let spare = BufState {
            place: Place::Spare,
            touched: false,
        };
        Ok(Pool {
            group,
            capacity,
            active: Cell::new(active),
            buf_size,
            stride,
            entries,
            entries_layout,
            memory,
            memory_len,
            tail: Cell::new(0),
            states: (0..capacity).map(|_| Cell::new(spare)).collect(),
            lent_count: Cell::new(0),
            in_ring: Cell::new(0),
            live: Cell::new(false),
            enobufs: Cell::new(0),
            recycled: Cell::new(0),
            taken: Cell::new(0),
        })
    }

    /// Publishes the circulating buffers to the freshly registered ring.
    fn fill(&self) {
        self.live.set(true);
        for bid in 0..self.active.get() {
            self.publish(bid);
        }
    }

    /// Lends buffer `bid` holding `len` bytes, as the kernel reported in a completion.
    ///
    /// A report that is refused for its length still means the kernel took the buffer out of
    /// the ring, so it goes straight back: left out, the ring would run dry while `in_ring`
    /// said it had buffers to give, and the re-arm logic would spin on `ENOBUFS`. An id that is
    /// out of range or not in the ring is not put in it.
    fn take(pool: &Rc<Pool>, bid: u16, len: usize) -> Option<ProvidedBuf> {
        let state = pool.states.get(usize::from(bid))?;
        if state.get().place != Place::Ring {
            return None;
        }
        pool.in_ring.set(pool.in_ring.get() - 1);
        pool.taken.set(pool.taken.get() + 1);
        if len > pool.buf_size as usize {
            state.set(BufState {
                place: Place::Spare,
                touched: true,
            });
            pool.put_back(bid);
            return None;
        }
        state.set(BufState {
            place: Place::Lent,
            touched: true,
        });
        pool.lent_count.set(pool.lent_count.get() + 1);
        Some(ProvidedBuf {
            pool: Rc::clone(pool),
            bid,
            start: 0,
            end: len as u32,
        })
    }

    fn recycle(&self, bid: u16) {
        let state = &self.states[usize::from(bid)];
        state.set(BufState {
            place: Place::Spare,
            ..state.get()
        });
        self.lent_count.set(self.lent_count.get() - 1);
        self.recycled.set(self.recycled.get() + 1);
        self.put_back(bid);
    }

    /// Publishes spare buffer `bid` again if it still circulates; it stays spare otherwise.
    fn put_back(&self, bid: u16) {
        if self.live.get() && bid < self.active.get() {
            self.publish(bid);
        }
    }

    /// Puts `count` buffers (clamped to 1..=capacity) in circulation and returns the count.
    /// Growing publishes the spare ones at once; shrinking leaves the buffers above the count
    /// where they are (in the ring or lent) and lets them go spare as they come back.
    fn resize(&self, count: u16) -> u16 {
        let count = count.clamp(1, self.capacity);
        self.active.set(count);
        if self.live.get() {
            for bid in 0..count {
                if self.states[usize::from(bid)].get().place == Place::Spare {
                    self.publish(bid);
                }
            }
        }
        count
    }

    /// Gives back the memory of every written spare buffer and of the written ones among
    /// `unread`, which the caller vouches the kernel will not fill before its next
    /// `io_uring_enter` (ids not in the ring are skipped). Lent buffers are never touched.
    /// Returns the number of buffers released.
    fn release(&self, unread: &[u16]) -> usize {
        let mut bids: Vec<u16> = (0..self.capacity)
            .filter(|&bid| {
                let state = self.states[usize::from(bid)].get();
                state.touched
                    && (state.place == Place::Spare
                        || (state.place == Place::Ring && unread.contains(&bid)))
            })
            .collect();
        bids.sort_unstable();
        let mut released = 0;
        for run in bids.chunk_by(|a, b| b.wrapping_sub(*a) == 1) {
            let first = run[0];
            // SAFETY: the run's buffers lie inside the mapping (ids < capacity) and start on a
            // page boundary (the mapping is page-aligned, the stride a whole number of pages).
            // None is lent, so no guard refers to them; spare buffers are out of the ring, and
            // the caller vouched that the kernel does not write the unread ones before it
            // next enters io_uring. Private anonymous pages read back as zeros after this.
            let rc = unsafe {
                libc::madvise(
                    self.buffer_ptr(first).cast(),
                    run.len() * self.stride,
                    libc::MADV_DONTNEED,
                )
            };
            if rc != 0 {
                tracing::debug!(err = %io::Error::last_os_error(), "madvise on buffer ring");
                continue;
            }
            for &bid in run {
                let state = &self.states[usize::from(bid)];
                state.set(BufState {
                    touched: false,
                    ..state.get()
                });
            }
            released += run.len();
        }
        released
    }

    /// Whether any written buffer sits in the ring (only those need the kernel's head).
    fn touched_in_ring(&self) -> bool {
        self.states.iter().any(|state| {
            let state = state.get();
            state.touched && state.place == Place::Ring
        })
    }

    /// The buffer ids between the kernel's `head` and our tail: in the ring and not yet picked.
    /// Empty if `head` is not one the ring can have.
    fn unread(&self, head: u16) -> Vec<u16> {
        let waiting = self.tail.get().wrapping_sub(head);
        if waiting > self.in_ring.get() {
            return Vec::new();
        }
        (0..waiting)
            .map(|i| self.entry_bid(head.wrapping_add(i)))
            .collect()
    }

    /// Puts spare buffer `bid` at the tail and publishes the new tail.
    fn publish(&self, bid: u16) {
        let tail = self.tail.get();
        let index = usize::from(tail & (self.capacity - 1));
        // SAFETY: `index < capacity`, inside the entry array. The kernel consumes entries
        // between its head and our tail; at most `capacity - 1` buffers are in the ring while
        // one is being published (ids are unique and `bid` is spare, so not in it), so the
        // entry at the tail is not one the kernel can be reading. Fields are written one by one
        // so that entry 0's `resv` (the published tail) is never overwritten.
        unsafe {
            let entry = self.entries.as_ptr().add(index);
            addr_of_mut!((*entry).addr).write(self.buffer_ptr(bid) as u64);
            addr_of_mut!((*entry).len).write(self.buf_size);
            addr_of_mut!((*entry).bid).write(bid);
        }
        let state = &self.states[usize::from(bid)];
        state.set(BufState {
            place: Place::Ring,
            ..state.get()
        });
        self.in_ring.set(self.in_ring.get() + 1);
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: entry 0's `resv` is a 2-aligned u16 inside the entry array, which lives as
        // long as `self`; the kernel reads it with an acquire load, so the release store
        // publishes the entry written above.
        let published = unsafe { AtomicU16::from_ptr(addr_of_mut!((*self.entries.as_ptr()).resv)) };
        published.store(tail, Ordering::Release);
    }

    /// The buffer id in ring entry `index` (modulo the ring size), as the kernel would read it.
    fn entry_bid(&self, index: u16) -> u16 {
        let index = usize::from(index & (self.capacity - 1));
        // SAFETY: `index < capacity`, inside the entry array. The kernel only reads entries
        // (this is not an incrementally consumed ring), and we write them on this thread.
        unsafe { addr_of_mut!((*self.entries.as_ptr().add(index)).bid).read() }
    }

    fn buffer_ptr(&self, bid: u16) -> *mut u8 {
        // SAFETY: `bid < capacity`, so the offset stays inside the mapping.
        unsafe { self.memory.as_ptr().add(usize::from(bid) * self.stride) }
    }

    fn resident_bytes(&self) -> usize {
        let page = page_size();
        let mut pages = vec![0u8; self.memory_len / page];
        // SAFETY: the mapping is page-aligned and `memory_len` long; `pages` has one byte per
        // page of it, as mincore writes.
        let rc = unsafe {
            libc::mincore(
                self.memory.as_ptr().cast(),
                self.memory_len,
                pages.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return 0;
        }
        pages.iter().filter(|&&page| page & 1 != 0).count() * page
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the ring unregistered this pool (or it never was registered) before the last
        // `Rc` could go: a failed shutdown leaks an extra `Rc` instead. The entry array was
        // allocated in `Pool::new` with this layout, the buffers mapped there with this length.
        unsafe {
            alloc::dealloc(self.entries.as_ptr().cast(), self.entries_layout);
            libc::munmap(self.memory.as_ptr().cast(), self.memory_len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(4096)
}

/// A buffer lent out of a buffer ring by a completion; it goes back to the ring when dropped.
/// Derefs to the bytes of its current view (the payload, after [`ProvidedBuf::narrow`]).
pub struct ProvidedBuf {
    pool: Rc<Pool>,
    bid: u16,
    start: u32,
    end: u32,
}

impl ProvidedBuf {
    /// The buffer group it came from.
    pub fn group(&self) -> BufGroup {
        self.pool.group
    }

    /// Its buffer id.
    pub fn bid(&self) -> u16 {
        self.bid
    }

    /// Shrinks the view to `range`, relative to the current view.
    pub fn narrow(&mut self, range: Range<usize>) -> Result<(), UringError> {
        let len = (self.end - self.start) as usize;
        if range.start > range.end || range.end > len {
            return Err(UringError::BadRange {
                start: range.start,
                end: range.end,
                len,
            });
        }
        self.end = self.start + range.end as u32;
        self.start += range.start as u32;
        Ok(())
    }
}

impl Deref for ProvidedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `start..end` lies inside buffer `bid` (checked when lent and when narrowed).
        // While this guard lives the buffer is out of the ring, so the kernel does not write it,
        // and its state (`Lent`) guarantees no other guard for the same id exists and that
        // `Pool::release` leaves it alone.
        unsafe {
            std::slice::from_raw_parts(
                self.pool.buffer_ptr(self.bid).add(self.start as usize),
                (self.end - self.start) as usize,
            )
        }
    }
}

impl DerefMut for ProvidedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.pool.buffer_ptr(self.bid).add(self.start as usize),
                (self.end - self.start) as usize,
            )
        }
    }
}

impl Drop for ProvidedBuf {
    fn drop(&mut self) {
        self.pool.recycle(self.bid);
    }
}

impl fmt::Debug for ProvidedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvidedBuf")
            .field("group", &self.pool.group.0)
            .field("bid", &self.bid)
            .field("len", &(self.end - self.start))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn user_data_zero_names_no_operation() {
        assert_eq!(OpId::decode(0), None);
    }

    #[test]
    fn generation_wraps_inside_its_bits() {
        let id = OpId::new(OpKind::Write, 7, u32::MAX);
        assert_eq!(id.generation(), OpId::GENERATION_MASK);
        assert_eq!(OpId::decode(id.encode()), Some(id));
    }

    #[test]
    fn slab_refuses_stale_ids() {
        let mut slab = Slab::default();
        let first = slab.insert(OpKind::Cancel, Op::Cancel);
        assert!(slab.remove(first).is_some());
        let second = slab.insert(OpKind::Cancel, Op::Cancel);

        assert_eq!(second.slot(), first.slot());
        assert!(slab.get(first).is_none());
        assert!(slab.remove(first).is_none());
        assert!(slab.get(second).is_some());
    }

    #[test]
    fn gso_segments_are_bounded_by_the_ip_length() {
        assert_eq!(max_gso_segments(1400, false), 46);
        assert_eq!(max_gso_segments(1400, true), 46);
        assert_eq!(max_gso_segments(100, false), UDP_MAX_SEGMENTS);
        assert_eq!(max_gso_segments(0, false), 0);
    }

    #[test]
    fn udp_segment_cmsg_reads_back_as_gro_layout() {
        let mut buf = [0u8; SEGMENT_CMSG_SPACE];
        let len = encode_udp_segment(&mut buf, 1400);

        let found: Vec<_> = cmsgs(&buf[..len]).collect();

        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, libc::SOL_UDP);
        assert_eq!(found[0].1, libc::UDP_SEGMENT);
        assert_eq!(found[0].2, &1400u16.to_ne_bytes());
    }

    #[test]
    fn gro_size_is_found_after_other_cmsgs() {
        let mut control = Vec::new();
        push_cmsg(&mut control, libc::SOL_IP, libc::IP_TOS, &[0x10]);
        push_cmsg(
            &mut control,
            libc::SOL_UDP,
            libc::UDP_GRO,
            &1400i32.to_ne_bytes(),
        );

        assert_eq!(gro_segment_size(&control), Some(1400));
    }

    #[test]
    fn cmsg_walk_stops_at_a_bad_length() {
        let mut control = Vec::new();
        push_cmsg(
            &mut control,
            libc::SOL_UDP,
            libc::UDP_GRO,
            &1400i32.to_ne_bytes(),
        );
        control[..8].copy_from_slice(&10_000usize.to_ne_bytes());

        assert_eq!(gro_segment_size(&control), None);
        assert_eq!(gro_segment_size(&[]), None);
        assert_eq!(gro_segment_size(&[1, 2, 3]), None);
    }

    #[test]
    fn multishot_ends_are_classified() {
        assert!(matches!(
            classify_end(-libc::ENOBUFS),
            MultishotEnd::RearmNoBuffers
        ));
        assert!(matches!(
            classify_end(-libc::ECANCELED),
            MultishotEnd::Stop(StopReason::Cancelled)
        ));
        assert!(matches!(
            classify_end(0),
            MultishotEnd::Stop(StopReason::EndOfFile)
        ));
        assert!(matches!(classify_end(1500), MultishotEnd::Rearm));
        assert!(matches!(
            classify_end(-libc::ECONNREFUSED),
            MultishotEnd::RearmTransient
        ));
        assert!(matches!(
            classify_end(-libc::EBADF),
            MultishotEnd::Stop(StopReason::Error(_))
        ));
    }

    #[test]
    fn missing_features_are_all_listed() {
        let caps = Capabilities {
            setup: SetupMode::Plain,
            recvmsg_multishot: false,
            read_multishot: false,
            sendmsg: true,
            write: true,
            writev: true,
            async_cancel: true,
            provided_buffer_ring: false,
            ext_arg: true,
            provide_buffers: true,
        };

        assert_eq!(
            caps.missing(true),
            vec![
                Feature::RecvMsgMultishot,
                Feature::ReadMultishot,
                Feature::AsyncCancelAny,
                Feature::ProvidedBufferRing
            ]
        );
        assert!(!caps.missing(false).contains(&Feature::ReadMultishot));
    }

    #[test]
    fn bad_pool_shapes_are_refused() {
        assert!(Pool::new(BufGroup(1), 1, 0, 64).is_err());
        assert!(Pool::new(BufGroup(1), 3, 3, 64).is_err());
        assert!(Pool::new(BufGroup(1), 4, 4, 0).is_err());
        assert!(Pool::new(BufGroup(1), 0, 4, 64).is_err());
        assert!(Pool::new(BufGroup(1), 5, 4, 64).is_err());
    }

    #[test]
    fn provided_buffers_are_lent_once_and_narrowed_within_bounds() {
        let pool = Rc::new(Pool::new(BufGroup(1), 4, 4, 64).unwrap());
        pool.fill();
        let mut buf = Pool::take(&pool, 2, 40).unwrap();

        assert!(Pool::take(&pool, 2, 40).is_none(), "lent twice");
        assert!(Pool::take(&pool, 4, 40).is_none(), "id out of range");
        buf[0] = 7;
        buf.narrow(10..20).unwrap();
        assert_eq!(buf.len(), 10);
        assert!(buf.narrow(5..11).is_err());
        drop(buf);
        assert_eq!(pool.lent_count.get(), 0);
        assert!(Pool::take(&pool, 2, 40).is_some(), "returned on drop");
    }

    #[test]
    fn a_buffer_refused_by_the_pool_goes_back_to_its_ring() {
        let pool = Rc::new(Pool::new(BufGroup(1), 4, 4, 64).unwrap());
        pool.fill();
        let mut head = 0u16;
        // The kernel takes the buffer at the head and reports more bytes than it holds.
        let bid = pool.entry_bid(head);
        head = head.wrapping_add(1);

        let refused = Pool::take(&pool, bid, 65);

        assert!(refused.is_none());
        assert_eq!(pool.lent_count.get(), 0);
        assert_eq!(ring_contents(&pool, head), vec![0, 1, 2, 3]);
        assert_eq!(pool.in_ring.get(), 4);
    }

    #[test]
    fn a_buffer_reported_while_lent_is_not_put_in_the_ring_twice() {
        let pool = Rc::new(Pool::new(BufGroup(1), 4, 4, 64).unwrap());
        pool.fill();
        let held = Pool::take(&pool, 1, 10).unwrap();
        let tail = pool.tail.get();

        assert!(Pool::take(&pool, 1, 10).is_none());

        assert_eq!(pool.tail.get(), tail);
        drop(held);
        assert_eq!(pool.tail.get(), tail.wrapping_add(1));
    }

    #[test]
    fn a_growable_pool_publishes_only_its_count_and_grows_at_once() {
        let pool = Rc::new(Pool::new(BufGroup(1), 2, 8, 64).unwrap());
        pool.fill();
        assert_eq!(ring_contents(&pool, 0), vec![0, 1]);
        assert!(Pool::take(&pool, 5, 10).is_none(), "never published");

        assert_eq!(pool.resize(6), 6);

        assert_eq!(ring_contents(&pool, 0), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(pool.in_ring.get(), 6);
        assert_eq!(pool.resize(100), 8, "clamped to the capacity");
        assert_eq!(pool.resize(0), 1, "at least one");
    }

    #[test]
    fn after_shrinking_buffers_above_the_count_leave_as_they_come_back() {
        let pool = Rc::new(Pool::new(BufGroup(1), 4, 4, 64).unwrap());
        pool.fill();
        let mut head = 0u16;
        let lent = Pool::take(&pool, pool.entry_bid(head), 10).unwrap();
        head = head.wrapping_add(1);

        pool.resize(1);
        // The kernel goes on picking buffers in ring order: 1, 2, 3.
        let picked: Vec<_> = (0..3)
            .map(|_| {
                let bid = pool.entry_bid(head);
                head = head.wrapping_add(1);
                Pool::take(&pool, bid, 10).unwrap()
            })
            .collect();
        drop(picked);
        drop(lent);

        assert_eq!(ring_contents(&pool, head), vec![0]);
        assert_eq!(pool.in_ring.get(), 1);
        let places: Vec<_> = pool.states.iter().map(|s| s.get().place).collect();
        assert_eq!(
            places,
            vec![Place::Ring, Place::Spare, Place::Spare, Place::Spare]
        );
    }

    #[test]
    fn released_buffers_leave_memory_and_read_back_as_zeros() {
        let pool = Rc::new(Pool::new(BufGroup(1), 4, 4, 10_000).unwrap());
        pool.fill();
        assert_eq!(pool.resident_bytes(), 0, "nothing written yet");
        let mut head = 0u16;
        let mut bufs: Vec<_> = (0..4)
            .map(|_| {
                let bid = pool.entry_bid(head);
                head = head.wrapping_add(1);
                Pool::take(&pool, bid, 10_000).unwrap()
            })
            .collect();
        bufs.iter_mut().for_each(|buf| buf.fill(0xab));
        let written = pool.resident_bytes();
        assert!(written >= 4 * 10_000, "{written} bytes resident");
        let kept = bufs.remove(0);
        pool.resize(2);
        drop(bufs);

        // Buffer 0 is lent, 1 back in the ring, 2 and 3 spare; only the spare ones go.
        let released = pool.release(&[]);

        assert_eq!(released, 2);
        assert!(pool.resident_bytes() <= written / 2);
        assert!(
            kept.iter().all(|&b| b == 0xab),
            "a lent buffer is left alone"
        );
        // Buffer 1, unread in the ring, goes when the caller vouches for it.
        assert_eq!(pool.unread(head), vec![1]);
        assert_eq!(pool.release(&pool.unread(head)), 1);
        drop(kept);
        pool.resize(4);
        let bid = pool.entry_bid(head.wrapping_add(2));
        assert_eq!(
            bid, 2,
            "spare buffers are published after those in the ring"
        );
        for _ in 0..2 {
            head = head.wrapping_add(1);
        }
        let again = Pool::take(&pool, bid, 10_000).unwrap();
        assert!(
            again.iter().all(|&b| b == 0),
            "released memory reads as zeros"
        );
    }

    /// The ids from `head` to the tail, sorted.
    fn ring_contents(pool: &Pool, head: u16) -> Vec<u16> {
        let mut in_ring: Vec<u16> = (0..pool.tail.get().wrapping_sub(head))
            .map(|i| pool.entry_bid(head.wrapping_add(i)))
            .collect();
        in_ring.sort_unstable();
        in_ring
    }

    #[test]
    fn a_reused_slot_does_not_inherit_a_cancel() {
        let mut slab = Slab::default();
        let first = slab.insert(OpKind::Cancel, Op::Cancel);
        slab.mark_cancelled(first);
        assert!(slab.is_cancelled(first));
        slab.remove(first);

        let second = slab.insert(OpKind::Cancel, Op::Cancel);

        assert_eq!(second.slot(), first.slot());
        assert!(!slab.is_cancelled(second));
        assert!(!slab.is_cancelled(first), "a stale id names nothing");
    }

    fn push_cmsg(out: &mut Vec<u8>, level: i32, kind: i32, data: &[u8]) {
        let start = out.len();
        out.extend_from_slice(&(CMSG_HDR_LEN + data.len()).to_ne_bytes());
        out.extend_from_slice(&level.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(data);
        out.resize(start + cmsg_align(CMSG_HDR_LEN + data.len()), 0);
    }

    fn any_kind() -> impl Strategy<Value = OpKind> {
        prop_oneof![
            Just(OpKind::RecvMulti),
            Just(OpKind::ReadMulti),
            Just(OpKind::SendMsg),
            Just(OpKind::Write),
            Just(OpKind::Cancel),
        ]
    }

    proptest! {
        #[test]
        fn user_data_round_trips(kind in any_kind(), slot: u32, generation: u32) {
            let id = OpId::new(kind, slot, generation);
            prop_assert_eq!(OpId::decode(id.encode()), Some(id));
        }

        #[test]
        fn sockaddr_round_trips(v6: bool, ip4: [u8; 4], ip6: [u8; 16], port: u16, flow: u32, scope: u32) {
            let addr = if v6 {
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip6), port, flow, scope))
            } else {
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip4), port))
            };
            let mut raw = [0u8; RECV_NAME_LEN];
            let len = encode_sockaddr(addr, &mut raw);
            prop_assert_eq!(decode_sockaddr(&raw[..len]), Some(addr));
        }

        #[test]
        fn cmsg_walk_never_panics(control: Vec<u8>) {
            let _ = gro_segment_size(&control);
        }
    }
}
