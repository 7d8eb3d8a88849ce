//! The per-worker frame engine: everything a worker does with a frame between reading it
//! and writing it, without doing any I/O. Both I/O backends (io_uring and epoll) drive it.
//!
//! From the bridge: a TAP read (virtio_net_hdr + frame) is split into ordinary frames
//! (GSO split), each is switched, and the sleeve datagrams for each next hop are gathered
//! into equal-size runs per destination so that one `sendmsg` with `UDP_SEGMENT` carries
//! many. From peers: each datagram's frames are switched; frames for our bridge are
//! coalesced per TCP flow (GRO) into TAP writes, frames for other peers are relayed, and
//! special frames (heartbeats, MTU probes) go to the control plane.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::crypto::{CryptoError, Replay};
use crate::dataplane::learn::{LearnBus, Learning, Post};
use crate::dataplane::offload::{
    gso_split, make_full, make_partial, Checksums, GroBatch, GroTable, Segments, GRO_DEFAULT_FLOWS,
};
use crate::dataplane::sealed::{self, OpenError, PathCrypto};
use crate::ids::PeerName;
use crate::mesh::sleeve::Udp;
use crate::switch::{self, DropReason, Learned, Mac, MacCache, Routes};
use crate::wire::icmp;
use crate::wire::sleeve::{FrameHeader, SleevePacket, FRAME_HEADER_LEN, PACKET_HEADER_LEN};
use crate::wire::vnet::{VirtioNetHdr, VNET_HDR_LEN};

/// Largest UDP payload one GSO send may carry in all.
pub const MAX_GSO_BYTES: usize = 65_000;
/// Most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// How to reach a directly connected peer over the sleeve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPath {
    /// Its UDP address.
    pub udp: SocketAddr,
    /// The largest Ethernet payload (pod MTU) the path carries.
    pub mtu: u16,
    /// Whether each worker sends to it from its own port (the peer steers by source port);
    /// otherwise every datagram leaves from the mesh port, as Weave Net expects.
    pub spread: bool,
    /// Whether TCP segments travel with partial checksums both ways (see
    /// [`crate::dataplane::offload`]); otherwise complete, as Weave Net expects.
    pub partial_csum: bool,
}

/// What the control plane publishes to the workers; replaced whole, never edited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Unicast and broadcast routes.
    pub routes: Routes,
    /// Directly connected peers.
    pub paths: BTreeMap<PeerName, PeerPath>,
    /// The sessions of peers whose sleeve is encrypted, from the moment their connection
    /// is registered (heartbeats are encrypted too): datagrams to them are sealed, and
    /// theirs must open.
    pub crypto: BTreeMap<PeerName, Arc<PathCrypto>>,
}

/// Why a worker dropped something, beyond the switch's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropCause {
    /// A switching decision dropped it.
    Switch(DropReason),
    /// The TAP read had no valid virtio_net_hdr, or GSO split refused it.
    BadTapFrame,
    /// The datagram is not a valid sleeve datagram.
    BadSleeveHeader,
    /// The datagram's sender is not a peer we have a sleeve connection with.
    UnknownSender,
    /// The next hop has no sleeve path (yet).
    NoPath,
    /// The frame is larger than the path's MTU.
    TooBig,
    /// An encrypted peer's datagram is too short to hold a sequence number and a tag.
    Truncated,
    /// An encrypted peer's datagram did not open: forged, corrupted, sealed with another
    /// key, or not encrypted at all.
    Unauthenticated,
    /// An encrypted datagram opened, but its sequence number had been taken already.
    Replayed,
    /// An encrypted datagram opened, but its sequence number is behind the replay window.
    TooOld,
    /// A stream has used every sequence number (never in practice): nothing more is sent.
    SequenceExhausted,
}

impl DropCause {
    /// Every reason, in the order the counters keep them.
    pub const ALL: [DropCause; 16] = [
        DropCause::Switch(DropReason::Runt),
        DropCause::Switch(DropReason::Stp),
        DropCause::Switch(DropReason::LocalDestination),
        DropCause::Switch(DropReason::LoopedBack),
        DropCause::Switch(DropReason::NoRoute),
        DropCause::Switch(DropReason::UnknownSource),
        DropCause::BadTapFrame,
        DropCause::BadSleeveHeader,
        DropCause::UnknownSender,
        DropCause::NoPath,
        DropCause::TooBig,
        DropCause::Truncated,
        DropCause::Unauthenticated,
        DropCause::Replayed,
        DropCause::TooOld,
        DropCause::SequenceExhausted,
    ];

    /// The name used in `/report` and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropCause::Switch(DropReason::Runt) => "runt",
            DropCause::Switch(DropReason::Stp) => "stp",
            DropCause::Switch(DropReason::LocalDestination) => "local_destination",
            DropCause::Switch(DropReason::LoopedBack) => "looped_back",
            DropCause::Switch(DropReason::NoRoute) => "no_route",
            DropCause::Switch(DropReason::UnknownSource) => "unknown_source",
            DropCause::BadTapFrame => "bad_tap_frame",
            DropCause::BadSleeveHeader => "bad_sleeve_header",
            DropCause::UnknownSender => "unknown_sender",
            DropCause::NoPath => "no_path",
            DropCause::TooBig => "too_big",
            DropCause::Truncated => "truncated",
            DropCause::Unauthenticated => "unauthenticated",
            DropCause::Replayed => "replayed",
            DropCause::TooOld => "too_old",
            DropCause::SequenceExhausted => "sequence_exhausted",
        }
    }

    fn index(self) -> usize {
        DropCause::ALL
            .iter()
            .position(|d| *d == self)
            .expect("listed in ALL")
    }
}

/// One worker's counters: written by the worker only (relaxed atomics, no locks), read by
/// anyone.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames read from the TAP, after GSO split.
    pub tap_rx_frames: AtomicU64,
    /// Bytes read from the TAP.
    pub tap_rx_bytes: AtomicU64,
    /// TAP writes (super-frames count once).
    pub tap_tx_writes: AtomicU64,
    /// Bytes written to the TAP.
    pub tap_tx_bytes: AtomicU64,
    /// Sleeve datagrams received.
    pub udp_rx_datagrams: AtomicU64,
    /// Bytes received over UDP.
    pub udp_rx_bytes: AtomicU64,
    /// Receive system calls (or completions) that delivered datagrams.
    pub udp_rx_calls: AtomicU64,
    /// Sleeve datagrams sent.
    pub udp_tx_datagrams: AtomicU64,
    /// Bytes sent over UDP.
    pub udp_tx_bytes: AtomicU64,
    /// Send system calls (or submissions).
    pub udp_tx_calls: AtomicU64,
    /// What the worker's I/O loop counts beside the traffic: its own drops (sends beyond
    /// its bounds, control frames beyond the control task's queue), recoveries and state.
    pub io: crate::dataplane::worker::IoCounters,
    drops: [AtomicU64; DropCause::ALL.len()],
    /// The per-peer counters, by peer. The worker takes this lock only to add a peer it has
    /// not counted before (and never waits for it); readers hold it only to clone the list.
    peers: std::sync::Mutex<BTreeMap<PeerName, Arc<PeerCounters>>>,
}

/// Traffic exchanged with one directly connected peer, as relaxed atomics: written by one
/// worker at the end of each batch, read by anyone.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Frames received from it.
    pub rx_frames: AtomicU64,
    /// Bytes of those frames.
    pub rx_bytes: AtomicU64,
    /// Frames sent to it.
    pub tx_frames: AtomicU64,
    /// Bytes of those frames.
    pub tx_bytes: AtomicU64,
}

impl Counters {
    /// Counts one drop.
    pub fn count_drop(&self, why: DropCause) {
        self.drops[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of every counter, for `/report`.
    pub fn status(&self) -> crate::mesh::status::WorkerStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::mesh::status::WorkerStatus {
            tap_rx_frames: get(&self.tap_rx_frames),
            tap_rx_bytes: get(&self.tap_rx_bytes),
            tap_tx_writes: get(&self.tap_tx_writes),
            tap_tx_bytes: get(&self.tap_tx_bytes),
            udp_rx_datagrams: get(&self.udp_rx_datagrams),
            udp_rx_bytes: get(&self.udp_rx_bytes),
            udp_rx_calls: get(&self.udp_rx_calls),
            udp_tx_datagrams: get(&self.udp_tx_datagrams),
            udp_tx_bytes: get(&self.udp_tx_bytes),
            udp_tx_calls: get(&self.udp_tx_calls),
            drops: self
                .drops()
                .into_iter()
                .map(|(d, n)| (d.name().to_string(), n))
                .collect(),
            peers: self.peer_status(),
            io: self.io.status(),
        }
    }

    fn peer_status(&self) -> BTreeMap<String, crate::mesh::status::PeerTrafficStatus> {
        // Clone the list under the lock, read and format after letting it go.
        let peers: Vec<(PeerName, Arc<PeerCounters>)> = match self.peers.lock() {
            Ok(peers) => peers.iter().map(|(n, c)| (*n, Arc::clone(c))).collect(),
            Err(poisoned) => poisoned
                .get_ref()
                .iter()
                .map(|(n, c)| (*n, Arc::clone(c)))
                .collect(),
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        peers
            .into_iter()
            .map(|(name, c)| {
                let status = crate::mesh::status::PeerTrafficStatus {
                    rx_frames: get(&c.rx_frames),
                    rx_bytes: get(&c.rx_bytes),
                    tx_frames: get(&c.tx_frames),
                    tx_bytes: get(&c.tx_bytes),
                };
                (name.to_string(), status)
            })
            .collect()
    }

    /// Drops so far, by reason.
    pub fn drops(&self) -> Vec<(DropCause, u64)> {
        DropCause::ALL
            .iter()
            .map(|d| (*d, self.drops[d.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

/// Traffic with one peer counted in this batch, not yet added to its [`PeerCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    /// Frames received from it.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames sent to it.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
}

/// At each sweep, MACs seen this recently are posted to the other workers again, so their
/// copies age from the latest sighting.
const REANNOUNCE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Every worker's counters and the backend they run, as the API reads them.
#[derive(Debug)]
pub struct DataplaneCounters {
    /// `epoll` or `io_uring`.
    pub backend: &'static str,
    /// One per worker.
    pub workers: Vec<Arc<Counters>>,
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// A run of equal-size datagrams for one destination: one `sendmsg` with `UDP_SEGMENT`.
#[derive(Debug)]
pub struct SendRun {
    /// Destination.
    pub to: SocketAddr,
    /// Whether it leaves from the worker's own port rather than the mesh port.
    pub spread: bool,
    /// The datagrams back to back.
    pub buf: Vec<u8>,
    /// Size of each datagram but the last.
    pub segment: usize,
    /// Number of datagrams.
    pub count: usize,
    closed: bool,
}

/// Datagrams waiting to be sent, gathered into runs.
#[derive(Debug)]
pub struct SendBatch {
    runs: Vec<SendRun>,
    spare: Vec<Vec<u8>>,
    max_segments: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            runs: Vec::new(),
            spare: Vec::new(),
            max_segments: MAX_GSO_SEGMENTS,
        }
    }
}

impl SendBatch {
    /// A batch whose every run is one datagram (no UDP GSO: one send per datagram).
    pub fn unbatched() -> Self {
        SendBatch {
            max_segments: 1,
            ..SendBatch::default()
        }
    }

    /// Appends one datagram made of `parts` for `to`, to leave from the worker's own port
    /// when `spread`, else from the mesh port.
    pub fn push(&mut self, to: SocketAddr, spread: bool, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let open = self
            .runs
            .iter_mut()
            .rev()
            .find(|r| r.to == to && r.spread == spread && !r.closed);
        let fits = |r: &SendRun| {
            len <= r.segment && r.count < self.max_segments && r.buf.len() + len <= MAX_GSO_BYTES
        };
        let run = match open {
            Some(r) if fits(r) => r,
            Some(r) => {
                r.closed = true;
                self.new_run(to, spread, len)
            }
            None => self.new_run(to, spread, len),
        };
        for p in parts {
            run.buf.extend_from_slice(p);
        }
        run.count += 1;
        if len < run.segment {
            // Only the last datagram of a run may be shorter.
            run.closed = true;
        }
    }

    fn new_run(&mut self, to: SocketAddr, spread: bool, segment: usize) -> &mut SendRun {
        let buf = self.spare.pop().unwrap_or_default();
        self.runs.push(SendRun {
            to,
            spread,
            buf,
            segment,
            count: 0,
            closed: false,
        });
        self.runs.last_mut().expect("just pushed")
    }

    /// The runs gathered so far.
    pub fn runs(&self) -> &[SendRun] {
        &self.runs
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Takes the runs out, for a backend that must own the buffers until the kernel is done
    /// with them; hand the buffers back with [`SendBatch::recycle`].
    pub fn take(&mut self) -> Vec<SendRun> {
        std::mem::take(&mut self.runs)
    }

    /// Returns a buffer taken with [`SendBatch::take`] for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        self.spare.push(buf);
    }

    /// Empties the batch, keeping the buffers for reuse.
    pub fn clear(&mut self) {
        for mut r in self.runs.drain(..) {
            r.buf.clear();
            self.spare.push(r.buf);
        }
    }
}

/// A special frame for the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlFrame {
    /// Where the datagram came from.
    pub from: SocketAddr,
    /// The frame header's source peer.
    pub src: PeerName,
    /// The frame (all-zero Ethernet header).
    pub frame: Vec<u8>,
}

/// Everything one batch produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Datagrams to send.
    pub send: SendBatch,
    /// TAP writes (virtio_net_hdr + frame each).
    pub tap: GroBatch,
    /// Special frames for the control plane.
    pub control: Vec<ControlFrame>,
}

/// One worker's frame engine.
pub struct Engine {
    ourself: PeerName,
    snapshot: Arc<Snapshot>,
    macs: MacCache,
    segments: Segments,
    /// How frames from the TAP are split: partial checksums when every peer takes them.
    tap_checksums: Checksums,
    /// A frame whose checksum must change for one next hop.
    scratch: Vec<u8>,
    /// An encrypted datagram being sealed or opened.
    sealing: Vec<u8>,
    gro: GroTable,
    counters: Arc<Counters>,
    /// Per-peer counts of this batch, added to the shared counters by [`Engine::publish`].
    peer_traffic: BTreeMap<PeerName, PeerTraffic>,
    /// The shared counters of each peer this engine has counted.
    peer_counters: BTreeMap<PeerName, Arc<PeerCounters>>,
    /// Whether `peer_traffic` holds anything.
    peer_pending: bool,
    kernel_gro: bool,
    offload: bool,
    /// The other workers' mailboxes, our index on them and our own inbox, when there are
    /// other workers.
    bus: Option<(Arc<LearnBus>, usize, std::sync::mpsc::Receiver<Post>)>,
    /// What this engine learned since it last posted.
    announce: Vec<Learning>,
    /// The stream our datagrams take in the fast encrypted format: the worker's index.
    stream: u16,
}

impl Engine {
    /// An engine for peer `ourself`, counting into `counters`.
    pub fn new(ourself: PeerName, counters: Arc<Counters>) -> Self {
        Engine {
            ourself,
            snapshot: Arc::new(Snapshot {
                routes: Routes {
                    ourself,
                    ..Routes::default()
                },
                paths: BTreeMap::new(),
                crypto: BTreeMap::new(),
            }),
            macs: MacCache::default(),
            segments: Segments::new(),
            tap_checksums: Checksums::Full,
            scratch: Vec::new(),
            sealing: Vec::new(),
            gro: GroTable::new(GRO_DEFAULT_FLOWS),
            counters,
            peer_traffic: BTreeMap::new(),
            peer_counters: BTreeMap::new(),
            peer_pending: false,
            kernel_gro: false,
            offload: true,
            bus: None,
            announce: Vec::new(),
            stream: 0,
        }
    }

    /// Shares MAC learning with the other workers on `bus`, as worker `index`, which is also
    /// the stream of its fast encrypted datagrams.
    pub fn with_learn_bus(mut self, bus: Arc<LearnBus>, index: usize) -> Self {
        // With its inbox taken already (a second engine for the same index), the engine
        // learns alone: correct, it only floods more.
        self.bus = bus.inbox(index).map(|inbox| (bus, index, inbox));
        self.stream = u16::try_from(index).unwrap_or(u16::MAX);
        self
    }

    /// Posts what this engine learned to the other workers and takes in what they learned.
    /// Backends call it between batches.
    pub fn share_macs(&mut self) {
        let Some((bus, me, inbox)) = &self.bus else {
            return;
        };
        if !self.announce.is_empty() {
            bus.post(*me, &self.announce);
            self.announce.clear();
        }
        for post in inbox.try_iter() {
            for l in post.iter() {
                self.macs.merge(l.mac, l.peer, l.seen);
            }
        }
    }

    /// Queues a new or moved source MAC for the other workers.
    fn note_learning(
        &mut self,
        learned: Option<Learned>,
        frame: &[u8],
        peer: PeerName,
        now: Instant,
    ) {
        if self.bus.is_none() {
            return;
        }
        match learned {
            Some(Learned::New | Learned::Moved { .. }) => {}
            Some(Learned::Refreshed) | None => return,
        }
        if let Some(mac) = Mac::src_of(frame) {
            self.announce.push(Learning {
                mac,
                peer,
                seen: now,
            });
        }
    }

    /// Turns batching on or off: off, every datagram is sent on its own and every frame is
    /// written to the TAP on its own (the TAP and socket must then be opened without
    /// offloads too, see [`Engine::output`]).
    pub fn with_offload(mut self, on: bool) -> Self {
        self.offload = on;
        self
    }

    /// An empty output to fill, batching or not as the engine was set up.
    pub fn output(&self) -> Output {
        Output {
            send: if self.offload {
                SendBatch::default()
            } else {
                SendBatch::unbatched()
            },
            ..Output::default()
        }
    }

    /// Leaves coalescing to the kernel (a TAP opened with IFF_NAPI): frames for the bridge
    /// are written one by one.
    pub fn with_kernel_gro(mut self, on: bool) -> Self {
        self.kernel_gro = on;
        self
    }

    /// Adds the batch's per-peer counts to the shared per-peer counters; backends call it
    /// after each batch. A peer seen for the first time is registered under the counters'
    /// lock, without waiting: if a reader holds it, its counts stay pending until the next
    /// batch.
    pub fn publish(&mut self) {
        if !self.peer_pending {
            return;
        }
        let mut pending = false;
        for (name, t) in self.peer_traffic.iter_mut() {
            if *t == PeerTraffic::default() {
                continue;
            }
            let shared = match self.peer_counters.get(name) {
                Some(c) => c,
                None => {
                    let Ok(mut registry) = self.counters.peers.try_lock() else {
                        pending = true;
                        continue;
                    };
                    let c = Arc::clone(registry.entry(*name).or_default());
                    drop(registry);
                    self.peer_counters.entry(*name).or_insert(c)
                }
            };
            shared.rx_frames.fetch_add(t.rx_frames, Ordering::Relaxed);
            shared.rx_bytes.fetch_add(t.rx_bytes, Ordering::Relaxed);
            shared.tx_frames.fetch_add(t.tx_frames, Ordering::Relaxed);
            shared.tx_bytes.fetch_add(t.tx_bytes, Ordering::Relaxed);
            *t = PeerTraffic::default();
        }
        self.peer_pending = pending;
    }

    /// Switches to a newer snapshot (between batches).
    pub fn set_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        let partial = !snapshot.paths.is_empty() && snapshot.paths.values().all(|p| p.partial_csum);
        self.tap_checksums = if partial {
            Checksums::Partial
        } else {
            Checksums::Full
        };
        self.snapshot = snapshot;
    }

    /// Forgets MACs not seen for ten minutes, and queues the recently seen ones for the
    /// other workers.
    pub fn sweep(&mut self, now: Instant) {
        self.macs.sweep(now);
        if self.bus.is_some() {
            let recent = self
                .macs
                .entries()
                .filter(|(_, _, seen)| now.saturating_duration_since(*seen) < REANNOUNCE_WINDOW)
                .map(|(mac, peer, seen)| Learning { mac, peer, seen });
            self.announce.extend(recent);
        }
    }

    /// The learned MACs.
    pub fn macs(&self) -> &MacCache {
        &self.macs
    }

    /// Handles one TAP read: a virtio_net_hdr followed by a frame.
    pub fn from_tap(&mut self, read: &[u8], now: Instant, out: &mut Output) {
        add(&self.counters.tap_rx_bytes, read.len());
        let Some((hdr_bytes, frame)) = read.split_at_checked(VNET_HDR_LEN) else {
            self.counters.count_drop(DropCause::BadTapFrame);
            return;
        };
        let Ok(hdr) = VirtioNetHdr::parse(hdr_bytes) else {
            self.counters.count_drop(DropCause::BadTapFrame);
            return;
        };
        let mut segments = std::mem::take(&mut self.segments);
        segments.clear();
        match gso_split(&hdr, frame, &mut segments, self.tap_checksums) {
            Ok(_) => {
                for seg in segments.frames() {
                    add(&self.counters.tap_rx_frames, 1);
                    self.switch_local(seg, now, out);
                }
            }
            Err(_) => self.counters.count_drop(DropCause::BadTapFrame),
        }
        self.segments = segments;
    }

    fn switch_local(&mut self, frame: &[u8], now: Instant, out: &mut Output) {
        let snapshot = Arc::clone(&self.snapshot);
        let decision = switch::from_bridge(frame, &snapshot.routes, &mut self.macs, now);
        self.note_learning(decision.learned, frame, self.ourself, now);
        if let Some(why) = decision.dropped {
            self.counters.count_drop(DropCause::Switch(why));
            return;
        }
        for hop in decision.forward {
            let Some(path) = snapshot.paths.get(&hop.via) else {
                self.counters.count_drop(DropCause::NoPath);
                continue;
            };
            if frame.len() > usize::from(path.mtu) + 14 {
                self.too_big(frame, path.mtu, out);
                continue;
            }
            let checksums = self.tap_checksums;
            self.emit(
                hop.via,
                *path,
                (self.ourself, hop.dst),
                frame,
                checksums,
                out,
            );
        }
    }

    /// A frame over the path MTU: an IPv4 DF frame gets ICMP "fragmentation needed" back, an
    /// IPv6 frame ICMPv6 "packet too big".
    fn too_big(&mut self, frame: &[u8], mtu: u16, out: &mut Output) {
        self.counters.count_drop(DropCause::TooBig);
        if let Some(answer) = icmp::too_big(frame, mtu) {
            self.gro.push(&answer, &mut out.tap);
        }
    }

    /// Queues `frame` for `path` with frame header `(src, dst)`; `checksums` says how its
    /// TCP checksum is now, and a copy is changed when the path wants the other way.
    fn emit(
        &mut self,
        via: PeerName,
        path: PeerPath,
        (src, dst): (PeerName, PeerName),
        frame: &[u8],
        checksums: Checksums,
        out: &mut Output,
    ) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let frame = match (checksums, path.partial_csum) {
            (Checksums::Full, false) | (Checksums::Partial, true) => frame,
            (Checksums::Full, true) | (Checksums::Partial, false) => {
                scratch.clear();
                scratch.extend_from_slice(frame);
                if path.partial_csum {
                    make_partial(&mut scratch);
                } else {
                    make_full(&mut scratch);
                }
                &scratch
            }
        };
        let mut header = [0u8; PACKET_HEADER_LEN + FRAME_HEADER_LEN];
        header[..PACKET_HEADER_LEN].copy_from_slice(&self.ourself.to_bytes());
        let frame_header = FrameHeader {
            src,
            dst,
            len: frame.len() as u16,
        };
        frame_header
            .emit(&mut header[PACKET_HEADER_LEN..])
            .expect("the header buffer is exactly one frame header long");
        match self.snapshot.crypto.get(&via) {
            None => out.send.push(path.udp, path.spread, &[&header, frame]),
            Some(crypto) => {
                let mut buf = std::mem::take(&mut self.sealing);
                let (name, frame_header) = header.split_at(PACKET_HEADER_LEN);
                sealed::lay_out(&mut buf, name, &[frame_header, frame]);
                // Frames leave with DF set, so they are the DF stream's, as in Weave.
                if crypto.seal(true, self.stream, &mut buf) {
                    out.send.push(path.udp, path.spread, &[&buf]);
                } else {
                    self.counters.count_drop(DropCause::SequenceExhausted);
                }
                self.sealing = buf;
            }
        }
        self.peer_pending = true;
        let t = self.peer_traffic.entry(via).or_default();
        t.tx_frames += 1;
        t.tx_bytes += frame.len() as u64;
        self.scratch = scratch;
    }

    /// Handles one sleeve datagram from `from`.
    pub fn from_udp(&mut self, from: SocketAddr, datagram: &[u8], now: Instant, out: &mut Output) {
        add(&self.counters.udp_rx_datagrams, 1);
        add(&self.counters.udp_rx_bytes, datagram.len());
        let Ok(packet) = SleevePacket::new_checked(datagram) else {
            self.counters.count_drop(DropCause::BadSleeveHeader);
            return;
        };
        let Some(crypto) = self.snapshot.crypto.get(&packet.sender()).cloned() else {
            self.handle_plain(from, packet, now, out);
            return;
        };
        // Opened in a copy: the receive buffer is the backend's, and shared.
        let mut buf = std::mem::take(&mut self.sealing);
        buf.clear();
        buf.extend_from_slice(datagram);
        let (name, body) = buf.split_at_mut(PACKET_HEADER_LEN);
        match crypto.open(name, body) {
            Ok(frames) => {
                // The frames with the sender's name put back in front make a plain
                // datagram.
                let start = frames.start;
                buf.copy_within(..PACKET_HEADER_LEN, start);
                match SleevePacket::new_checked(&buf[start..PACKET_HEADER_LEN + frames.end]) {
                    Ok(packet) => self.handle_plain(from, packet, now, out),
                    Err(_) => self.counters.count_drop(DropCause::BadSleeveHeader),
                }
            }
            Err(e) => self.counters.count_drop(match e {
                OpenError::Crypto(CryptoError::Truncated) => DropCause::Truncated,
                OpenError::Crypto(CryptoError::Forged) => DropCause::Unauthenticated,
                OpenError::Replay(Replay::Duplicate) => DropCause::Replayed,
                OpenError::Replay(Replay::TooOld) => DropCause::TooOld,
            }),
        }
        self.sealing = buf;
    }

    /// Seals a control datagram of the mesh's (heartbeat, probe) when its peer's sleeve is
    /// encrypted; `None` when it must not be sent.
    pub fn seal_control(&mut self, mut udp: Udp) -> Option<Udp> {
        let Some(crypto) = self.snapshot.crypto.get(&udp.peer) else {
            return Some(udp);
        };
        let plain = std::mem::take(&mut udp.datagram);
        let (name, frames) = plain.split_at(PACKET_HEADER_LEN.min(plain.len()));
        let mut buf = Vec::with_capacity(plain.len() + sealed::OVERHEAD);
        sealed::lay_out(&mut buf, name, &[frames]);
        if !crypto.seal(udp.df, self.stream, &mut buf) {
            self.counters.count_drop(DropCause::SequenceExhausted);
            return None;
        }
        udp.datagram = buf;
        Some(udp)
    }

    /// Handles one plain sleeve datagram (or an encrypted one, opened).
    fn handle_plain(
        &mut self,
        from: SocketAddr,
        packet: SleevePacket<&[u8]>,
        now: Instant,
        out: &mut Output,
    ) {
        let sender = packet.sender();
        let snapshot = Arc::clone(&self.snapshot);
        let (known, checksums) = match snapshot.paths.get(&sender) {
            Some(p) if p.partial_csum => (true, Checksums::Partial),
            Some(_) => (true, Checksums::Full),
            None => (false, Checksums::Full),
        };
        for frame in packet.into_frames() {
            let Ok(frame) = frame else {
                self.counters.count_drop(DropCause::BadSleeveHeader);
                return;
            };
            if frame.frame.len() >= 14 && frame.frame[..14].iter().all(|b| *b == 0) {
                // Heartbeats arrive before the connection is established, so they are
                // passed on whoever sent them; the control plane checks the UID.
                out.control.push(ControlFrame {
                    from,
                    src: frame.src,
                    frame: frame.frame.to_vec(),
                });
                continue;
            }
            if !known {
                self.counters.count_drop(DropCause::UnknownSender);
                continue;
            }
            self.peer_pending = true;
            let t = self.peer_traffic.entry(sender).or_default();
            t.rx_frames += 1;
            t.rx_bytes += frame.frame.len() as u64;
            let decision = switch::from_peer(
                frame.frame,
                frame.src,
                frame.dst,
                &snapshot.routes,
                &mut self.macs,
                now,
            );
            self.note_learning(decision.learned, frame.frame, frame.src, now);
            if let Some(why) = decision.dropped {
                self.counters.count_drop(DropCause::Switch(why));
                continue;
            }
            if decision.deliver_locally {
                match (self.kernel_gro || !self.offload, checksums) {
                    (true, Checksums::Full) => out.tap.push_plain(frame.frame),
                    (true, Checksums::Partial) => out.tap.push_partial(frame.frame),
                    (false, Checksums::Full) => {
                        self.gro.push(frame.frame, &mut out.tap);
                    }
                    (false, Checksums::Partial) => {
                        self.gro.push_partial(frame.frame, &mut out.tap);
                    }
                }
            }
            for hop in decision.forward {
                let Some(path) = snapshot.paths.get(&hop.via) else {
                    self.counters.count_drop(DropCause::NoPath);
                    continue;
                };
                if frame.frame.len() > usize::from(path.mtu) + 14 {
                    self.counters.count_drop(DropCause::TooBig);
                    continue;
                }
                let header = (frame.src, hop.dst);
                self.emit(hop.via, *path, header, frame.frame, checksums, out);
            }
        }
    }

    /// Ends a receive batch: pending coalesced frames become TAP writes.
    pub fn flush(&mut self, out: &mut Output) {
        self.gro.flush(&mut out.tap);
    }

    /// Counts what a backend sent and wrote.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weave Net 2.8.1's encrypted datagrams in `two-peers-password.pcap` have these UDP
    /// payload lengths: a heartbeat (a 22-byte special frame) 66 bytes, seq 0 of the DF
    /// stream; the fragmentation test (60001 bytes, no DF) 60045, seq 0 of the other stream.
    #[test]
    fn sealed_control_datagrams_have_weaves_lengths_and_streams() {
        use crate::crypto::SessionKey;
        let (a, x) = (
            PeerName::from_bytes([0xaa, 0, 0, 0, 0, 1]),
            PeerName::from_bytes([0xaa, 0, 0, 0, 0, 2]),
        );
        let mut engine = Engine::new(a, Arc::new(Counters::default()));
        let session = PathCrypto::new(SessionKey::from_bytes([9; 32]), true, false);
        engine.set_snapshot(Arc::new(Snapshot {
            crypto: BTreeMap::from([(x, Arc::new(session))]),
            ..Snapshot::default()
        }));
        let plain = |frame_len: usize| {
            let mut d = a.to_bytes().to_vec();
            d.extend_from_slice(&a.to_bytes());
            d.extend_from_slice(&x.to_bytes());
            d.extend_from_slice(&(frame_len as u16).to_be_bytes());
            d.resize(d.len() + frame_len, 0);
            d
        };
        let udp = |df, frame_len| Udp {
            peer: x,
            to: addr("10.0.0.2:6783"),
            df,
            datagram: plain(frame_len),
        };
        let heartbeat = engine.seal_control(udp(true, 22)).expect("sealed");
        assert_eq!(heartbeat.datagram.len(), 66);
        assert_eq!(&heartbeat.datagram[..6], &a.to_bytes());
        assert_eq!(&heartbeat.datagram[6..14], &(1u64 << 63).to_be_bytes());
        let frag_test = engine.seal_control(udp(false, 60001)).expect("sealed");
        assert_eq!(frag_test.datagram.len(), 60045);
        assert_eq!(&frag_test.datagram[6..14], &0u64.to_be_bytes());
        // A peer without a session gets the plain datagram.
        let mut other = udp(true, 22);
        other.peer = a;
        assert_eq!(engine.seal_control(other.clone()), Some(other));
    }

    /// What one engine seals, the peer's engine opens once and switches; a replay, a
    /// flipped bit and a plain datagram claiming to be from the peer are dropped and counted.
    #[test]
    fn encrypted_frames_open_once_and_forgeries_are_counted() {
        use crate::crypto::SessionKey;
        let (a, x) = (
            PeerName::from_bytes([0xaa, 0, 0, 0, 0, 1]),
            PeerName::from_bytes([0xaa, 0, 0, 0, 0, 2]),
        );
        let key = SessionKey::from_bytes([3; 32]);
        let setup = |me: PeerName, peer: PeerName, outbound: bool| {
            let counters = Arc::new(Counters::default());
            let mut e = Engine::new(me, Arc::clone(&counters));
            e.set_snapshot(Arc::new(Snapshot {
                routes: Routes {
                    ourself: me,
                    unicast: BTreeMap::from([(peer, peer)]),
                    broadcast: BTreeMap::from([(me, vec![peer]), (peer, vec![])]),
                },
                paths: BTreeMap::from([(
                    peer,
                    PeerPath {
                        udp: addr("10.0.0.9:6783"),
                        mtu: 1414,
                        spread: false,
                        partial_csum: false,
                    },
                )]),
                crypto: BTreeMap::from([(
                    peer,
                    Arc::new(PathCrypto::new(key.clone(), outbound, false)),
                )]),
            }));
            (e, counters)
        };
        let (mut ea, _) = setup(a, x, true);
        let (mut ex, cx) = setup(x, a, false);
        // A broadcast ARP-sized frame from a pod on a's bridge.
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0d, 0x08, 0x06]);
        frame.resize(60, 0x5a);
        let mut read = vec![0u8; VNET_HDR_LEN];
        read.extend_from_slice(&frame);
        let now = Instant::now();
        let mut out = ea.output();
        ea.from_tap(&read, now, &mut out);
        let run = &out.send.runs()[0];
        assert_eq!(run.buf.len(), 6 + 24 + 14 + 60, "one sealed datagram");
        assert!(
            !run.buf
                .windows(8)
                .any(|w| w == [0x02, 0, 0, 0, 0, 0x0d, 0x08, 0x06]),
            "the frame does not travel in the clear"
        );
        let sealed = run.buf.clone();
        let from = addr("10.0.0.1:6783");

        let mut got = ex.output();
        ex.from_udp(from, &sealed, now, &mut got);
        ex.flush(&mut got);
        assert_eq!(got.tap.len(), 1, "delivered to x's bridge once");
        ex.from_udp(from, &sealed, now, &mut got);
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        ex.from_udp(from, &flipped, now, &mut got);
        let mut plain = a.to_bytes().to_vec();
        plain.extend_from_slice(&a.to_bytes());
        plain.extend_from_slice(&PeerName::from_bytes([0xff; 6]).to_bytes());
        plain.extend_from_slice(&(frame.len() as u16).to_be_bytes());
        plain.extend_from_slice(&frame);
        ex.from_udp(from, &plain, now, &mut got);
        ex.flush(&mut got);
        assert_eq!(got.tap.len(), 1, "nothing more reached the bridge");
        let drops: BTreeMap<&str, u64> =
            cx.drops().into_iter().map(|(d, n)| (d.name(), n)).collect();
        assert_eq!(drops["replayed"], 1);
        assert_eq!(
            drops["unauthenticated"], 2,
            "the flipped bit and the plain datagram"
        );
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn send_batch_groups_equal_datagrams_and_closes_on_a_short_one() {
        let mut b = SendBatch::default();
        let a = addr("10.0.0.1:6783");
        for _ in 0..3 {
            b.push(a, false, &[&[1u8; 100]]);
        }
        b.push(a, false, &[&[2u8; 50]]);
        b.push(a, false, &[&[3u8; 100]]);
        b.push(addr("10.0.0.2:6783"), false, &[&[4u8; 100]]);
        let runs = b.runs();
        assert_eq!(runs.len(), 3);
        assert_eq!(
            (runs[0].count, runs[0].segment, runs[0].buf.len()),
            (4, 100, 350)
        );
        assert_eq!(runs[1].count, 1);
        assert_eq!(runs[2].to, addr("10.0.0.2:6783"));
    }

    #[test]
    fn datagrams_from_the_mesh_port_and_the_workers_port_go_in_separate_runs() {
        let mut b = SendBatch::default();
        let a = addr("10.0.0.1:6783");
        b.push(a, true, &[&[1u8; 100]]);
        b.push(a, false, &[&[1u8; 100]]);
        b.push(a, true, &[&[1u8; 100]]);
        let runs: Vec<(bool, usize)> = b.runs().iter().map(|r| (r.spread, r.count)).collect();
        assert_eq!(runs, vec![(true, 2), (false, 1)]);
    }

    #[test]
    fn send_batch_respects_the_segment_limit() {
        let mut b = SendBatch::default();
        let a = addr("10.0.0.1:6783");
        for _ in 0..(MAX_GSO_SEGMENTS + 1) {
            b.push(a, false, &[&[1u8; 10]]);
        }
        assert_eq!(b.runs().len(), 2);
        assert_eq!(b.runs()[0].count, MAX_GSO_SEGMENTS);
    }

    #[test]
    fn an_unbatched_send_batch_sends_every_datagram_on_its_own() {
        let mut b = SendBatch::unbatched();
        let a = addr("10.0.0.1:6783");
        for _ in 0..5 {
            b.push(a, false, &[&[1u8; 100]]);
        }
        assert_eq!(b.runs().len(), 5);
        assert!(b.runs().iter().all(|r| r.count == 1 && r.buf.len() == 100));
    }

    /// Peers A (us), X and Y all directly connected; a frame from pod M behind X reaches
    /// worker 1 only. Worker 0 must then send frames for M to X alone instead of flooding
    /// them to X and Y.
    #[test]
    fn a_mac_learned_by_one_worker_is_known_to_the_others() {
        use crate::wire::sleeve::{encode_packet, SleeveFrame};
        let name = |b: u8| PeerName::from_bytes([0xaa, 0, 0, 0, 0, b]);
        let (a, x, y) = (name(1), name(2), name(3));
        let snapshot = Arc::new(Snapshot {
            routes: Routes {
                ourself: a,
                unicast: BTreeMap::from([(x, x), (y, y)]),
                broadcast: BTreeMap::from([(a, vec![x, y]), (x, vec![]), (y, vec![])]),
            },
            paths: BTreeMap::from([
                (
                    x,
                    PeerPath {
                        udp: addr("10.0.0.2:6783"),
                        mtu: 1438,
                        spread: false,
                        partial_csum: false,
                    },
                ),
                (
                    y,
                    PeerPath {
                        udp: addr("10.0.0.3:6783"),
                        mtu: 1438,
                        spread: false,
                        partial_csum: false,
                    },
                ),
            ]),
            crypto: BTreeMap::new(),
        });
        let bus = LearnBus::new(2);
        let mut engines: Vec<Engine> = (0..2)
            .map(|i| {
                let mut e = Engine::new(a, Arc::new(Counters::default()))
                    .with_learn_bus(Arc::clone(&bus), i);
                e.set_snapshot(Arc::clone(&snapshot));
                e
            })
            .collect();
        let (pod_m, pod_l) = ([0x02, 0, 0, 0, 0, 0x0d], [0x02, 0, 0, 0, 0, 0x01]);
        let frame = |dst: [u8; 6], src: [u8; 6]| {
            let mut f = Vec::new();
            f.extend_from_slice(&dst);
            f.extend_from_slice(&src);
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(&[0u8; 46]);
            f
        };
        let now = Instant::now();
        let from_m = frame([0xff; 6], pod_m);
        let datagram = encode_packet(
            x,
            &[SleeveFrame {
                src: x,
                dst: a,
                frame: &from_m,
            }],
        )
        .unwrap();
        let mut out = engines[1].output();
        engines[1].from_udp(addr("10.0.0.2:6783"), &datagram, now, &mut out);
        engines[1].share_macs();
        engines[0].share_macs();

        let mut tap_read = vec![0u8; VNET_HDR_LEN];
        tap_read.extend_from_slice(&frame(pod_m, pod_l));
        let mut out = engines[0].output();
        engines[0].from_tap(&tap_read, now, &mut out);
        let sent_to: Vec<SocketAddr> = out.send.runs().iter().map(|r| r.to).collect();
        assert_eq!(sent_to, vec![addr("10.0.0.2:6783")], "unicast to X only");
    }

    /// Per-peer counts reach the shared counters at the end of each batch; a peer first
    /// counted while a reader holds the registry waits for the next batch, uncounted but
    /// not lost.
    #[test]
    fn per_peer_counts_are_published_after_each_batch_without_waiting_for_the_lock() {
        use crate::wire::sleeve::{encode_packet, SleeveFrame};
        let name = |b: u8| PeerName::from_bytes([0xaa, 0, 0, 0, 0, b]);
        let (a, x) = (name(1), name(2));
        let counters = Arc::new(Counters::default());
        let mut engine = Engine::new(a, Arc::clone(&counters));
        engine.set_snapshot(Arc::new(Snapshot {
            routes: Routes {
                ourself: a,
                unicast: BTreeMap::from([(x, x)]),
                broadcast: BTreeMap::from([(a, vec![x]), (x, vec![])]),
            },
            paths: BTreeMap::from([(
                x,
                PeerPath {
                    udp: addr("10.0.0.2:6783"),
                    mtu: 1438,
                    spread: false,
                    partial_csum: false,
                },
            )]),
            crypto: BTreeMap::new(),
        }));
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0d, 0x08, 0x00]);
        frame.resize(60, 0);
        let datagram = encode_packet(
            x,
            &[SleeveFrame {
                src: x,
                dst: a,
                frame: &frame,
            }],
        )
        .unwrap();
        let rx = |c: &Counters| c.status().peers.get(&x.to_string()).map(|p| p.rx_frames);
        let now = Instant::now();
        let mut out = engine.output();

        let held = counters.peers.lock().unwrap();
        engine.from_udp(addr("10.0.0.2:6783"), &datagram, now, &mut out);
        engine.publish();
        drop(held);
        assert_eq!(
            rx(&counters),
            None,
            "not registered while the lock was held"
        );

        engine.from_udp(addr("10.0.0.2:6783"), &datagram, now, &mut out);
        engine.publish();
        assert_eq!(rx(&counters), Some(2), "both batches counted");
        engine.publish();
        assert_eq!(rx(&counters), Some(2), "nothing counted twice");
    }
}
