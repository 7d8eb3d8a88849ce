//! [`Mesh`]: the whole control plane of one router, driven by the shell.
//!
//! The shell feeds it connection events and bytes with the current time and executes the
//! [`Command`]s it emits; everything else (handshake, gossip, routes, the connection
//! maker, timers) happens in here, deterministically for a given seed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::crypto::{KeyPair, SessionKey, TcpOpener, TcpSealer, PUBLIC_KEY_LEN};
use crate::fastdp::health::{self as fastdp, Carrier, FastdpConn};
use crate::ids::{ConnId, ConnUid, PeerName, PeerUid, ShortId, UNKNOWN_PEER_NAME};
use crate::ipam::address::{Address, Cidr};
use crate::mesh::maker::{ConnectionMaker, DirectPeer, OurConn, TargetState, Termination};
use crate::mesh::recent::Recent;
use crate::mesh::routes::{self, UnicastRoutes};
use crate::mesh::rtt::RttSummary;
use crate::mesh::sleeve::{self, Effect, SleeveConn, Udp};
use crate::mesh::status::{
    BroadcastRouteStatus, LocalConnectionStatus, PeerConnectionStatus, PeerStatus, RouterStatus,
    UnicastRouteStatus,
};
use crate::mesh::topology::{Newer, Peer, PeerConn, Topology, UpdateOutcome};
use crate::wire::digest::{DigestEntry, DigestMessage};
use crate::wire::fastdp as fastdp_wire;
use crate::wire::mesh::{self as wire, FrameDecoder, Message, PeerSummary, ProtocolHeader};
use crate::wire::sleeve::SpecialFrame;

/// Protocol versions we speak: only 2 (length-prefixed messages).
pub const PROTOCOL_MIN_VERSION: u8 = 2;
/// Highest protocol version we speak.
pub const PROTOCOL_MAX_VERSION: u8 = 2;
/// Time allowed for the handshake up to the feature map.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP heartbeat interval.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// A connection with no message for this long is closed.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Full-state gossip interval.
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(30);
/// Local topology changes are gathered this long before they are gossiped.
pub const TOPOLOGY_UPDATE_DELAY: Duration = Duration::from_secs(1);
/// Garbage collection runs this long after a received update.
pub const GC_DELAY: Duration = Duration::from_secs(1);
/// The gossip channel of the topology.
pub const TOPOLOGY_CHANNEL: &str = "topology";
/// The gossip channel of topology summaries, digests and requests between weave-routers
/// (see [`crate::wire::digest`]).
pub const DIGEST_CHANNEL: &str = "topology.digest";
/// The feature-map key with which a weave-router says it speaks [`DIGEST_CHANNEL`]: with
/// such a neighbour, periodic gossip is a summary instead of the whole table, and relayed
/// changes are announced by digest and sent only to those that ask. Weave Net does not
/// send it, and gets Weave's gossip from us.
pub const DIGEST_FEATURE: &str = "TopologyDigest";
/// The version of [`DIGEST_FEATURE`] spoken: 2, with entries in a compact form on the
/// digest channel (see [`crate::wire::digest`]). A neighbour that offers another version
/// gets Weave's gossip.
pub const DIGEST_VERSION: &str = "2";
/// Improvements learned from gossip are gathered this long before they are relayed, so
/// that one message per neighbour carries them all, each at its latest version.
pub const RELAY_DELAY: Duration = Duration::from_millis(100);
/// Once the table has not changed for this long, a summary goes to every neighbour that
/// speaks digests, so that an entry a relay missed is found now rather than at the next
/// periodic gossip (14 bytes each; neighbours whose tables agree answer nothing).
pub const SETTLE_DELAY: Duration = Duration::from_secs(3);
/// How long a request for an entry stands before an announcement from another neighbour
/// may ask again.
pub const WANT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a broadcast delivered or sent is remembered, so the same one coming round
/// again is dropped (see [`crate::mesh::recent`]).
pub const BROADCAST_MEMORY: Duration = Duration::from_secs(30);
/// The most broadcasts remembered at once.
const BROADCAST_MEMORY_CAP: usize = 4096;

/// The feature-map key with which a weave-router says its sleeve may receive a peer's
/// datagrams from any of the peer's worker ports (and steers them by source port), so that
/// each sending worker may use its own. Weave Net does not send it, and is always sent to
/// from the mesh port.
pub const SPREAD_FEATURE: &str = "SleeveSpread";
/// The only version of [`SPREAD_FEATURE`] so far.
pub const SPREAD_VERSION: &str = "1";
/// The feature-map key with which a weave-router says it sends and takes TCP segments
/// with partial checksums (the pseudo-header sum only) over the sleeve; see
/// [`crate::dataplane::offload`]. Weave Net does not send it and always gets complete ones.
pub const PARTIAL_CSUM_FEATURE: &str = "SleevePartialCsum";
/// The only version of [`PARTIAL_CSUM_FEATURE`] so far.
pub const PARTIAL_CSUM_VERSION: &str = "1";

/// How the sleeve reaches a directly connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleevePeer {
    /// Its UDP address.
    pub udp: SocketAddr,
    /// The largest Ethernet payload (pod MTU) the path carries.
    pub mtu: u16,
    /// Whether both ends offer [`SPREAD_FEATURE`].
    pub spread: bool,
    /// Whether both ends offer [`PARTIAL_CSUM_FEATURE`].
    pub partial_csum: bool,
}

/// What a sleeve path needs to seal and open encrypted datagrams, in Weave's format or the
/// fast one.
#[derive(Debug, Clone)]
pub struct SleeveCrypto {
    /// The connection's session key.
    pub key: SessionKey,
    /// Whether we dialled the connection: it sets a nonce bit, so that the two directions
    /// never use the same nonce.
    pub outbound: bool,
    /// Whether both ends offer [`AEAD_FEATURE`]: the fast format instead of Weave's.
    pub aead: bool,
}

/// The feature-map key with which a weave-router with a password offers the fast sleeve
/// cipher ([`crate::crypto::aead`]) in place of Weave's NaCl format. Weave Net does not send
/// it, and always gets Weave's format.
pub const AEAD_FEATURE: &str = "SleeveCipher";
/// The value of [`AEAD_FEATURE`]: the cipher, named as status shows it.
pub const AEAD_VERSION: &str = crate::crypto::aead::AEAD_NAME;

/// A password and the subnets whose peers are trusted with unencrypted traffic (Weave's
/// `--password` and `--trusted-subnets`).
#[derive(Clone, PartialEq, Eq)]
pub struct Encryption {
    /// The password; never printed.
    pub password: zeroize::Zeroizing<Vec<u8>>,
    /// Peers whose TCP address is in one of these talk plain sleeve with us, if they trust
    /// us too; the mesh's TCP stream is encrypted regardless.
    pub trusted_subnets: Vec<Cidr>,
    /// Whether to offer the fast sleeve cipher ([`AEAD_FEATURE`]) to weave-routers.
    pub fast_cipher: bool,
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryption")
            .field("password", &"..")
            .field("trusted_subnets", &self.trusted_subnets)
            .field("fast_cipher", &self.fast_cipher)
            .finish()
    }
}

impl Encryption {
    fn trusts(&self, addr: SocketAddr) -> bool {
        let IpAddr::V4(ip) = addr.ip() else {
            return false;
        };
        let a = Address(u32::from(ip));
        self.trusted_subnets.iter().any(|c| c.range().contains(a))
    }
}

/// What the mesh needs to know about ourself and its limits.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Our peer name.
    pub name: PeerName,
    /// Our nickname (host name by default).
    pub nickname: String,
    /// Our UID for this process.
    pub uid: PeerUid,
    /// The mesh port (TCP and UDP), used for addresses given without a port.
    pub port: u16,
    /// Most connections we keep (Weave's `--conn-limit`, default 200); 0 means no limit.
    pub conn_limit: usize,
    /// Whether to dial addresses learned from gossip.
    pub discovery: bool,
    /// Overlays offered in the feature map (`Overlays`).
    pub overlays: Vec<String>,
}

/// The shell's handle for one TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey(pub u64);

impl fmt::Display for ConnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// An effect the shell must perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Open a TCP connection to `addr`; report with `handle_dialed` or `handle_dial_failed`.
    Dial {
        /// The key the mesh will use for this connection.
        conn: ConnKey,
        /// Where to connect.
        addr: SocketAddr,
    },
    /// Write these bytes, in order, to the connection.
    Send {
        /// Which connection.
        conn: ConnKey,
        /// Bytes to write.
        bytes: Vec<u8>,
    },
    /// Close the connection (after writing what was already sent).
    Close {
        /// Which connection.
        conn: ConnKey,
    },
    /// Send a sleeve datagram from the mesh port (heartbeats, MTU probes).
    SendUdp(Udp),
    /// Send a fast-datapath heartbeat (a VXLAN datagram) with DF set.
    SendFastdp {
        /// The peer's fast-datapath address.
        to: SocketAddrV4,
        /// The UDP payload.
        datagram: Vec<u8>,
    },
}

/// A peer whose unicast the kernel's fast datapath carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastdpPath {
    /// Its fast-datapath address (UDP 6784).
    pub addr: SocketAddrV4,
    /// The VNI of our frames to it.
    pub vni: u32,
}

/// Something worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// True for problems, false for information.
    pub warning: bool,
    /// The log line.
    pub message: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Something for the owner of a gossip channel registered with [`Mesh::register_channel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// Periodic or relayed gossip (tag 4) on the channel.
    Gossip {
        /// The channel.
        channel: String,
        /// The peer whose connection it came in on names itself here.
        src: PeerName,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A unicast (tag 3) to us on the channel.
    Unicast {
        /// The channel.
        channel: String,
        /// Its sender.
        src: PeerName,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A broadcast (tag 5) on the channel. The mesh does not relay it: the owner relays
    /// with [`Mesh::relay_broadcast`] and whatever payload its protocol says to carry on.
    /// The same broadcast (channel, source and payload) delivered or sent within
    /// [`BROADCAST_MEMORY`] is dropped instead, so a loop cannot deliver it again.
    Broadcast {
        /// The channel.
        channel: String,
        /// The broadcast's origin.
        src: PeerName,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A connection to `peer` was added: the channel's state should be sent down it.
    NeighbourUp {
        /// The neighbour.
        peer: PeerName,
    },
    /// The mesh forgot `peer` (no longer reachable from anyone we know).
    PeerGone {
        /// The peer.
        peer: PeerName,
    },
}

/// Why gossip could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// No route to the destination.
    #[error("no route to peer {0}")]
    NoRoute(PeerName),
    /// The route's next hop has no connection.
    #[error("no connection to next hop {hop} towards {dst}")]
    NoConnection {
        /// The destination.
        dst: PeerName,
        /// The hop.
        hop: PeerName,
    },
}

/// The same entries encoded for each kind of neighbour, each at most once.
#[derive(Default)]
struct EntryPayloads {
    digest: Option<Vec<u8>>,
    weave: Option<Vec<u8>>,
}

impl EntryPayloads {
    /// The channel and payload that carry `names`' entries to the neighbour on `c`.
    fn for_conn(
        &mut self,
        c: &Conn,
        topo: &Topology,
        names: &BTreeSet<PeerName>,
    ) -> (&'static str, Vec<u8>) {
        if c.digest {
            let p = self.digest.get_or_insert_with(|| {
                DigestMessage::Entries {
                    full: topo.entries(names),
                    changes: Vec::new(),
                }
                .emit()
            });
            (DIGEST_CHANNEL, p.clone())
        } else {
            let p = self.weave.get_or_insert_with(|| topo.encode(names));
            (TOPOLOGY_CHANNEL, p.clone())
        }
    }
}

/// Why a connection ended; decides whether its target is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConnError {
    reason: String,
    how: Termination,
}

impl ConnError {
    fn failed(reason: impl Into<String>) -> Self {
        ConnError {
            reason: reason.into(),
            how: Termination::Failed,
        }
    }

    fn never(reason: impl Into<String>) -> Self {
        ConnError {
            reason: reason.into(),
            how: Termination::Never,
        }
    }
}

/// Handshake progress of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the shell to report the dial.
    Dialing,
    /// Waiting for the 7-byte protocol header.
    Header,
    /// Waiting for the 1-byte encryption flag (and the public key after a flag of 1).
    Flag,
    /// Waiting for the feature map.
    Features,
    /// Registered: exchanging messages.
    Ready,
}

/// The remote end, once its feature map is accepted.
#[derive(Debug, Clone)]
struct Remote {
    name: PeerName,
    nickname: String,
}

/// One TCP connection.
#[derive(Debug)]
struct Conn {
    addr: SocketAddr,
    outbound: bool,
    accept_new_peer: bool,
    phase: Phase,
    pending: Vec<u8>,
    frames: FrameDecoder,
    conn_id: ConnId,
    uid: ConnUid,
    remote: Option<Remote>,
    holds_ref: bool,
    registered: bool,
    established: bool,
    deadline: Instant,
    next_heartbeat: Instant,
    sleeve: Option<SleeveConn>,
    /// The overlays both ends offer, in the dialling side's order: an overlay control
    /// message names its overlay by its index here.
    overlays: Vec<String>,
    /// The fast datapath's health check, when both ends run one.
    fastdp: Option<FastdpConn>,
    /// Why there is none, when we run a fast datapath.
    no_fastdp: Option<String>,
    /// Whether both ends spread sleeve traffic over their workers ([`SPREAD_FEATURE`]).
    spread: bool,
    /// Whether both ends use partial TCP checksums ([`PARTIAL_CSUM_FEATURE`]).
    partial_csum: bool,
    /// Our key pair for this connection, while the handshake needs it.
    keys: Option<KeyPair>,
    /// Seals our messages, once the session key is known.
    sealer: Option<TcpSealer>,
    /// Opens the remote's messages, once the session key is known.
    opener: Option<TcpOpener>,
    /// The session key, kept for the sleeve.
    session_key: Option<SessionKey>,
    /// Whether the remote's address is in our trusted subnets.
    trust_remote: bool,
    /// Whether the remote says it trusts us (`Trusted` in its feature map).
    trusted_by_remote: bool,
    /// Whether both ends offer [`AEAD_FEATURE`].
    aead: bool,
    /// Whether both ends offer [`DIGEST_FEATURE`].
    digest: bool,
    /// Whether we sent a summary on this connection that the remote has not yet answered
    /// with its digest.
    summary_sent: bool,
}

impl Conn {
    /// Whether the sleeve to this peer must be encrypted: a password is set and one of the
    /// two ends does not trust the other (Weave's `untrusted`).
    fn sleeve_encrypted(&self) -> bool {
        self.session_key.is_some() && !(self.trust_remote && self.trusted_by_remote)
    }

    fn prefix(&self) -> String {
        match &self.remote {
            Some(r) => format!("->[{}|{}({})]", self.addr, r.name, r.nickname),
            None => format!("->[{}]", self.addr),
        }
    }
}

/// The control plane of one router.
pub struct Mesh {
    config: MeshConfig,
    rng: ChaCha8Rng,
    topo: Topology,
    maker: ConnectionMaker,
    conns: BTreeMap<ConnKey, Conn>,
    by_peer: BTreeMap<PeerName, ConnKey>,
    next_key: u64,
    commands: VecDeque<Command>,
    events: VecDeque<Event>,
    unicast_all: UnicastRoutes,
    routes_dirty: bool,
    broadcast_all: BTreeMap<PeerName, Vec<PeerName>>,
    pending_update: BTreeSet<PeerName>,
    update_due: Option<Instant>,
    /// Improved entries waiting to be relayed, each with the neighbours known to hold it as
    /// we do (the one it came from, those that announced it or were sent it since), whom
    /// the relay skips.
    relay_pending: BTreeMap<PeerName, Vec<PeerName>>,
    /// Neighbours that announced an entry newer than ours, with the version and UID they
    /// announced: once we hold that, the relay skips them too. Kept while a request for
    /// the entry stands.
    heard: BTreeMap<PeerName, Vec<(PeerName, u64, u64)>>,
    relay_due: Option<Instant>,
    /// When the table will have been quiet for [`SETTLE_DELAY`].
    settle_due: Option<Instant>,
    gc_due: Option<Instant>,
    /// Whether the table may hold unreachable peers: it changed since the last collection.
    gc_dirty: bool,
    /// Whether gossip added peers since the last collection, which must be collected
    /// before relaying (see `handle_timeout`).
    gc_added: bool,
    next_gossip: Instant,
    maker_due: Option<Instant>,
    maker_dirty: bool,
    surrogate_seen: Recent,
    /// Broadcasts on channels other than `topology` delivered or sent lately, by a keyed
    /// hash of channel, source and payload.
    broadcasts_seen: Recent,
    broadcast_hasher: std::hash::RandomState,
    broadcast_repeats: u64,
    termination_count: u64,
    /// The underlay MTU the sleeve's MTU search starts from, when the sleeve runs.
    sleeve_underlay: Option<u16>,
    fastdp_mtu: Option<u16>,
    fastdp_off: Option<String>,
    fastdp_moves: u64,
    spread: bool,
    partial_csum: bool,
    encryption: Option<Encryption>,
    generation: u64,
    channels: BTreeSet<String>,
    channel_events: VecDeque<ChannelEvent>,
    /// Whether we offer [`DIGEST_FEATURE`].
    digest: bool,
    /// Entries asked for by `Want` and not yet received: the version and UID asked for,
    /// and when.
    wanted: BTreeMap<PeerName, (u64, u64, Instant)>,
}

impl Mesh {
    /// Creates the mesh; `seed` feeds every random choice (short id, ConnIDs, jitter).
    pub fn new(config: MeshConfig, seed: u64, now: Instant) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ourself = Peer {
            name: config.name,
            nickname: config.nickname.clone(),
            uid: config.uid,
            version: 0,
            short_id: ShortId(rng.gen_range(0..ShortId::COUNT)),
            has_short_id: true,
            conns: BTreeMap::new(),
            local_refs: 1,
            history: None,
        };
        let maker = ConnectionMaker::new(config.port, config.discovery);
        let next_gossip = now + GOSSIP_INTERVAL;
        let mut mesh = Mesh {
            config,
            rng,
            topo: Topology::new(ourself),
            maker,
            conns: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            next_key: 1,
            commands: VecDeque::new(),
            events: VecDeque::new(),
            unicast_all: UnicastRoutes::new(),
            routes_dirty: true,
            broadcast_all: BTreeMap::new(),
            pending_update: BTreeSet::new(),
            update_due: None,
            relay_pending: BTreeMap::new(),
            heard: BTreeMap::new(),
            relay_due: None,
            settle_due: None,
            gc_due: None,
            gc_dirty: false,
            gc_added: false,
            next_gossip,
            maker_due: None,
            maker_dirty: false,
            surrogate_seen: Recent::new(GOSSIP_INTERVAL, BROADCAST_MEMORY_CAP),
            broadcasts_seen: Recent::new(BROADCAST_MEMORY, BROADCAST_MEMORY_CAP),
            broadcast_hasher: std::hash::RandomState::new(),
            broadcast_repeats: 0,
            termination_count: 0,
            sleeve_underlay: None,
            fastdp_mtu: None,
            fastdp_off: None,
            fastdp_moves: 0,
            spread: false,
            partial_csum: false,
            encryption: None,
            generation: 0,
            channels: BTreeSet::new(),
            channel_events: VecDeque::new(),
            digest: false,
            wanted: BTreeMap::new(),
        };
        let me = mesh.topo.ourself();
        let line = format!("Our name is {}({})", me.name, me.nickname);
        mesh.info(line);
        mesh
    }

    /// Runs the sleeve overlay on every connection: a connection is established only once
    /// UDP heartbeats work both ways, and its MTU is discovered up to what an underlay of
    /// `underlay_mtu` carries. Without it, a completed handshake establishes a connection.
    pub fn with_sleeve(mut self, underlay_mtu: u16) -> Self {
        self.sleeve_underlay = Some(underlay_mtu);
        self
    }

    /// Runs a fast datapath of MTU `mtu` next to the sleeve: offers `fastdp` first in the
    /// feature map, and checks the tunnel to every peer that offers it too (see
    /// [`crate::fastdp::health`]).
    pub fn with_fastdp(mut self, mtu: u16) -> Self {
        self.fastdp_mtu = Some(mtu);
        if !self.config.overlays.iter().any(|o| o == "fastdp") {
            self.config.overlays.insert(0, "fastdp".to_string());
        }
        self
    }

    /// Offers [`SPREAD_FEATURE`]: this router's workers send sleeve datagrams from one
    /// source port each and its receive side steers by source port, so peers that offer it
    /// too may do the same towards us.
    pub fn with_sleeve_spread(mut self) -> Self {
        self.spread = true;
        self
    }

    /// Offers [`PARTIAL_CSUM_FEATURE`]: this router's data plane sends TCP segments with
    /// partial checksums to peers that offer it too, and takes them from those peers.
    pub fn with_partial_checksums(mut self) -> Self {
        self.partial_csum = true;
        self
    }

    /// Encrypts every connection with `encryption`'s password, as Weave Net does: the TCP
    /// stream always, the sleeve unless both ends trust each other's subnet. Peers without
    /// the same password are refused.
    pub fn with_encryption(mut self, encryption: Encryption) -> Self {
        self.encryption = Some(encryption);
        self
    }

    /// Offers [`DIGEST_FEATURE`]: topology summaries and digests with weave-routers that
    /// offer it too (the daemon does unless `--topology-gossip weave`). Without it, the
    /// mesh gossips exactly as Weave Net does.
    pub fn with_topology_digest(mut self) -> Self {
        self.digest = true;
        self
    }

    /// Runs no fast datapath, for `reason`, which every connection's status then shows.
    pub fn without_fastdp(mut self, reason: impl Into<String>) -> Self {
        self.fastdp_off = Some(reason.into());
        self
    }

    /// Delivers the gossip channel `channel` to the caller (through
    /// [`Mesh::poll_channel_event`]) instead of relaying it as a surrogate.
    pub fn register_channel(&mut self, channel: &str) {
        self.channels.insert(channel.to_string());
    }

    /// The next event on a registered channel.
    pub fn poll_channel_event(&mut self) -> Option<ChannelEvent> {
        self.channel_events.pop_front()
    }

    /// Sends a GossipUnicast from us to `dst` along the unicast route.
    pub fn gossip_unicast(
        &mut self,
        channel: &str,
        dst: PeerName,
        payload: Vec<u8>,
    ) -> Result<(), GossipError> {
        self.ensure_routes();
        let hop = *self
            .unicast_all
            .get(&dst)
            .filter(|h| **h != UNKNOWN_PEER_NAME)
            .ok_or(GossipError::NoRoute(dst))?;
        let key = *self
            .by_peer
            .get(&hop)
            .ok_or(GossipError::NoConnection { dst, hop })?;
        let msg = Message::GossipUnicast {
            channel: channel.to_string(),
            src: self.config.name,
            dst,
            payload,
        };
        self.send_message(key, &msg);
        Ok(())
    }

    /// Broadcasts from us to every reachable peer.
    pub fn gossip_broadcast(&mut self, channel: &str, payload: Vec<u8>, now: Instant) {
        self.relay_broadcast(channel, self.config.name, payload, now);
    }

    /// Gossips to random neighbours.
    pub fn gossip(&mut self, channel: &str, payload: Vec<u8>) {
        self.gossip_to_neighbours(channel, self.config.name, payload);
    }

    /// Gossips to one neighbour; nothing when there is no connection to it.
    pub fn gossip_to(&mut self, channel: &str, peer: PeerName, payload: Vec<u8>) {
        if let Some(&key) = self.by_peer.get(&peer) {
            self.send_gossip(key, channel, payload);
        }
    }

    /// Every peer we have a route to, and ourselves.
    pub fn reachable_peers(&mut self) -> BTreeSet<PeerName> {
        self.ensure_routes();
        let mut peers: BTreeSet<PeerName> = self
            .unicast_all
            .iter()
            .filter(|(_, hop)| **hop != UNKNOWN_PEER_NAME)
            .map(|(p, _)| *p)
            .collect();
        peers.insert(self.config.name);
        peers
    }

    /// A frame with an all-zero Ethernet header (heartbeat, fragmentation test, PMTU probe)
    /// arrived in a sleeve datagram from `from` with frame source `src`.
    pub fn handle_sleeve_frame(
        &mut self,
        from: SocketAddr,
        src: PeerName,
        frame: &[u8],
        now: Instant,
    ) {
        let Some(special) = SpecialFrame::parse(frame) else {
            return;
        };
        let Some(&key) = self.by_peer.get(&src) else {
            return;
        };
        let Some(sc) = self.conns.get_mut(&key).and_then(|c| c.sleeve.as_mut()) else {
            return;
        };
        let mut out = Vec::new();
        sc.handle_special(from, special, now, &mut out);
        self.apply_sleeve(key, out, now);
        self.run_maker(now);
    }

    /// The peers the sleeve can reach directly: UDP address and verified MTU, for
    /// connections established over the sleeve.
    pub fn sleeve_peers(&self) -> BTreeMap<PeerName, SleevePeer> {
        self.by_peer
            .iter()
            .filter_map(|(name, key)| {
                let c = self.conns.get(key)?;
                let sc = c.sleeve.as_ref()?;
                if !c.established {
                    return None;
                }
                // Until its MTU is verified a path carries nothing: guessing low would
                // teach pods a needlessly small PMTU.
                let peer = SleevePeer {
                    udp: sc.udp()?,
                    mtu: sc.mtu()?,
                    spread: c.spread,
                    partial_csum: c.partial_csum,
                };
                Some((*name, peer))
            })
            .collect()
    }

    /// The sessions of the peers whose sleeve is encrypted (a password is set and one end
    /// does not trust the other's subnet), from the moment their connection is registered:
    /// heartbeats and probes are sealed too. The generation changes whenever this does.
    pub fn sleeve_sessions(&self) -> BTreeMap<PeerName, SleeveCrypto> {
        self.by_peer
            .iter()
            .filter_map(|(name, key)| {
                let c = self.conns.get(key)?;
                if c.sleeve.is_none() || !c.sleeve_encrypted() {
                    return None;
                }
                let crypto = SleeveCrypto {
                    key: c.session_key.clone()?,
                    outbound: c.outbound,
                    aead: c.aead,
                };
                Some((*name, crypto))
            })
            .collect()
    }

    /// Broadcast next hops for every known source, over established connections.
    pub fn broadcast_routes(&self) -> BTreeMap<PeerName, Vec<PeerName>> {
        routes::Graph::new(&self.topo, true).broadcast_all(self.config.name)
    }

    /// Changes whenever routes or sleeve paths may have changed; the shell rebuilds the
    /// data plane's snapshot when it does.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds addresses for the connection maker to keep connected (initial peers,
    /// `POST /connect`); with `replace`, the previous direct targets are dropped.
    pub fn connect(&mut self, peers: &[DirectPeer], replace: bool, now: Instant) {
        self.maker.connect(peers, replace, now);
        self.maker_dirty = true;
        self.run_maker(now);
    }

    /// Removes addresses from the targets (`POST /forget`).
    pub fn forget(&mut self, peers: &[DirectPeer], now: Instant) {
        self.maker.forget(peers);
        self.maker_dirty = true;
        self.run_maker(now);
    }

    /// An inbound TCP connection was accepted from `remote`.
    pub fn handle_accepted(&mut self, remote: SocketAddr, now: Instant) -> ConnKey {
        let key = self.new_conn(remote, false, true, now);
        self.info(format!("->[{remote}] connection accepted"));
        self.start_handshake(key, now);
        key
    }

    /// A `Command::Dial` succeeded.
    pub fn handle_dialed(&mut self, conn: ConnKey, now: Instant) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.phase == Phase::Dialing {
            self.start_handshake(conn, now);
        }
    }

    /// A `Command::Dial` failed with `error`.
    pub fn handle_dial_failed(&mut self, conn: ConnKey, error: &str, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.info(format!(
            "->[{}] error during connection attempt: {error}",
            c.addr
        ));
        let rng = &mut self.rng;
        self.maker.attempt_failed(c.addr, error, now, rng);
        self.maker_dirty = true;
        self.run_maker(now);
    }

    /// Bytes arrived on a connection.
    pub fn handle_data(&mut self, conn: ConnKey, data: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.phase == Phase::Dialing {
            return;
        }
        c.pending.extend_from_slice(data);
        if let Err(e) = self.process_input(conn, now) {
            self.teardown(conn, e, true, now);
        }
        self.run_maker(now);
    }

    /// The connection was closed by the remote end or failed (`reason` for the log).
    pub fn handle_closed(&mut self, conn: ConnKey, reason: &str, now: Instant) {
        if self.conns.contains_key(&conn) {
            self.teardown(conn, ConnError::failed(reason), false, now);
            self.run_maker(now);
        }
    }

    /// Time passed: run timers whose deadline is `now` or earlier.
    pub fn handle_timeout(&mut self, now: Instant) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            if c.phase == Phase::Dialing {
                continue;
            }
            if c.deadline <= now {
                let why = if c.phase == Phase::Ready {
                    format!("no message for {}s", READ_TIMEOUT.as_secs())
                } else {
                    "handshake timed out".to_string()
                };
                self.teardown(key, ConnError::failed(why), true, now);
                continue;
            }
            if c.phase == Phase::Ready && c.next_heartbeat <= now {
                c.next_heartbeat = now + HEARTBEAT_INTERVAL;
                self.send_message(key, &Message::Heartbeat);
            }
            self.fastdp_timers(key, now);
            let Some(sc) = self.conns.get_mut(&key).and_then(|c| c.sleeve.as_mut()) else {
                continue;
            };
            if sc.poll_timeout() <= now {
                let mut out = Vec::new();
                sc.handle_timeout(now, &mut out);
                self.apply_sleeve(key, out, now);
            }
        }
        if self.gc_due.is_some_and(|t| t <= now) {
            self.gc_due = None;
            self.garbage_collect(now);
        }
        if self.update_due.is_some_and(|t| t <= now) {
            self.update_due = None;
            let mut names = std::mem::take(&mut self.pending_update);
            names.insert(self.config.name);
            let mut payloads = EntryPayloads::default();
            for hop in self.random_neighbours(self.config.name) {
                if let Some(&key) = self.by_peer.get(&hop) {
                    let (channel, payload) =
                        payloads.for_conn(&self.conns[&key], &self.topo, &names);
                    self.send_gossip(key, channel, payload);
                }
            }
        }
        if self.relay_due.is_some_and(|t| t <= now) {
            self.relay_due = None;
            // Collect first, as Weave Net does after every update, when gossip brought
            // peers we did not have: an entry of a peer we cannot reach (one a neighbour
            // still held when it sent it) must not travel on, or the mesh keeps passing a
            // partitioned half's entries round after each router has dropped them. (An
            // entry we already held was reachable at the last collection, at most
            // `GC_DELAY` ago; one that is no longer travels on only through routers that
            // still hold it, and stops at the first that had collected it.)
            if self.gc_added {
                self.garbage_collect(now);
            }
            self.relay_topology();
        }
        if self.settle_due.is_some_and(|t| t <= now) {
            self.settle_due = None;
            for key in self.digest_neighbours() {
                self.send_summary(key, false);
            }
        }
        if self.next_gossip <= now {
            self.next_gossip = now + GOSSIP_INTERVAL;
            self.wanted.retain(|_, (_, _, at)| *at + WANT_TIMEOUT > now);
            let wanted = &self.wanted;
            self.heard.retain(|n, _| wanted.contains_key(n));
            self.periodic_topology_gossip();
        }
        if self.maker_due.is_some_and(|t| t <= now) {
            self.maker_due = None;
            self.maker_dirty = true;
        }
        self.run_maker(now);
    }

    /// Runs a connection's fast-datapath timers, with the VNI its short ids give now.
    fn fastdp_timers(&mut self, key: ConnKey, now: Instant) {
        let our_short = self.topo.ourself().short_id;
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let remote_short = c
            .remote
            .as_ref()
            .and_then(|r| self.topo.get(r.name))
            .map(|p| p.short_id);
        let Some(fc) = c.fastdp.as_mut() else {
            return;
        };
        if fc.poll_timeout() > now {
            return;
        }
        if let Some(short) = remote_short {
            fc.set_vni(fastdp_wire::vni(our_short, short));
        }
        let mut out = Vec::new();
        fc.handle_timeout(now, &mut out);
        self.apply_fastdp(key, out);
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn_times = self
            .conns
            .values()
            .filter(|c| c.phase != Phase::Dialing)
            .map(|c| {
                if c.phase == Phase::Ready {
                    let t = c.deadline.min(c.next_heartbeat);
                    let t = c.sleeve.as_ref().map_or(t, |sc| t.min(sc.poll_timeout()));
                    c.fastdp.as_ref().map_or(t, |f| t.min(f.poll_timeout()))
                } else {
                    c.deadline
                }
            });
        [
            self.gc_due,
            self.update_due,
            self.relay_due,
            self.settle_due,
            self.maker_due,
            Some(self.next_gossip),
        ]
        .into_iter()
        .flatten()
        .chain(conn_times)
        .min()
    }

    /// The next effect to perform.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next event to log.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Our name.
    pub fn name(&self) -> PeerName {
        self.config.name
    }

    /// The peer table (for tests and diagnostics).
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// Data routes: established, symmetric connections only.
    pub fn unicast_routes(&self) -> UnicastRoutes {
        routes::unicast(&self.topo, self.config.name, true)
    }

    /// Names of peers we hold a registered connection to.
    pub fn connected_peers(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.by_peer.keys().copied()
    }

    /// Round-trip percentiles of each connection that has timed one, by the connection's
    /// address as [`Mesh::status`] shows it.
    pub fn rtts(&self) -> BTreeMap<String, RttSummary> {
        self.by_peer
            .values()
            .filter_map(|key| {
                let c = self.conns.get(key)?;
                Some((c.addr.to_string(), c.sleeve.as_ref()?.rtt()?))
            })
            .collect()
    }

    /// A snapshot for `/report` and the status texts; `now` dates retry times.
    pub fn status(&self, now: Instant) -> RouterStatus {
        let me = self.config.name;
        let nick = |n: PeerName| {
            self.topo
                .get(n)
                .map(|p| p.nickname.clone())
                .unwrap_or_default()
        };
        let mut peers: Vec<&Peer> = self.topo.peers().collect();
        peers.sort_by_key(|p| (p.name != me, p.name));
        let peers = peers
            .into_iter()
            .map(|p| PeerStatus {
                name: p.name,
                nickname: p.nickname.clone(),
                uid: p.uid.0,
                short_id: p.short_id.0,
                version: p.version,
                connections: p
                    .conns
                    .iter()
                    .map(|(n, c)| PeerConnectionStatus {
                        name: *n,
                        nickname: nick(*n),
                        address: c.remote_tcp_addr.clone(),
                        outbound: c.outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();
        let unicast_routes = self
            .unicast_routes()
            .into_iter()
            .map(|(dest, via)| UnicastRouteStatus { dest, via })
            .collect();
        let broadcast_routes = self
            .topo
            .peers()
            .map(|p| BroadcastRouteStatus {
                source: p.name,
                via: routes::broadcast(&self.topo, me, p.name, true),
            })
            .collect();
        let mut connections: Vec<LocalConnectionStatus> = self
            .by_peer
            .iter()
            .filter_map(|(name, key)| {
                let c = self.conns.get(key)?;
                let (overlay, why_not) = match (&c.fastdp, &c.no_fastdp) {
                    (Some(fc), _) => match fc.carrier() {
                        Carrier::Fastdp => ("fastdp", None),
                        Carrier::Sleeve(reason) => ("sleeve", Some(reason.as_str())),
                    },
                    (None, why) => (
                        if c.sleeve.is_some() { "sleeve" } else { "none" },
                        why.as_deref(),
                    ),
                };
                let mut info = format!(
                    "{:<6} {}({}){}",
                    overlay,
                    name,
                    nick(*name),
                    why_not
                        .map(|r| format!(" (not fastdp: {r})"))
                        .unwrap_or_default()
                );
                let mut attrs = overlay_attrs(c, overlay);
                // Weave's wording: with a password, every connection says which it is.
                if self.encryption.is_some() {
                    if c.sleeve_encrypted() {
                        info = format!("{:<11} {info}", "encrypted");
                        if c.aead {
                            info.push_str(&format!(" (cipher: {AEAD_VERSION})"));
                        }
                        if !attrs.is_empty() {
                            attrs.insert("encrypted".to_string(), serde_json::Value::from(true));
                        }
                    } else {
                        info = format!("{:<11} {info}", "unencrypted");
                    }
                }
                Some(LocalConnectionStatus {
                    address: c.addr.to_string(),
                    outbound: c.outbound,
                    state: if c.established {
                        "established"
                    } else {
                        "pending"
                    }
                    .to_string(),
                    info,
                    attrs,
                })
            })
            .collect();
        for (addr, t) in self.maker.targets() {
            let (state, info) = match t.state {
                TargetState::Waiting => {
                    let when = match t.try_after {
                        None => "never".to_string(),
                        Some(at) if at <= now => "now".to_string(),
                        Some(at) => format!("in {:.1}s", (at - now).as_secs_f64()),
                    };
                    match &t.last_error {
                        Some(e) => ("failed", format!("{e}, retry: {when}")),
                        None => ("waiting", format!("until: {when}")),
                    }
                }
                TargetState::Attempting => match &t.last_error {
                    Some(e) => ("retrying", e.clone()),
                    None => ("connecting", String::new()),
                },
                TargetState::Connected | TargetState::Suspended => continue,
            };
            connections.push(LocalConnectionStatus {
                address: addr.to_string(),
                outbound: true,
                state: state.to_string(),
                info,
                attrs: BTreeMap::new(),
            });
        }
        RouterStatus {
            protocol: "weave".to_string(),
            protocol_min_version: PROTOCOL_MIN_VERSION,
            protocol_max_version: PROTOCOL_MAX_VERSION,
            encryption: self.encryption.is_some(),
            peer_discovery: self.config.discovery,
            name: me,
            nickname: self.config.nickname.clone(),
            port: self.config.port,
            peers,
            unicast_routes,
            broadcast_routes,
            connections,
            termination_count: self.termination_count,
            targets: self.maker.direct_peers().map(str::to_string).collect(),
            trusted_subnets: self
                .encryption
                .iter()
                .flat_map(|e| e.trusted_subnets.iter().map(Cidr::to_string))
                .collect(),
            fastdp_moves: self.fastdp_moves,
            broadcast_repeats: self.broadcast_repeats,
        }
    }

    // ----- connections -----

    fn new_conn(
        &mut self,
        addr: SocketAddr,
        outbound: bool,
        accept_new_peer: bool,
        now: Instant,
    ) -> ConnKey {
        let key = ConnKey(self.next_key);
        self.next_key += 1;
        let conn_id = ConnId(self.rng.gen());
        let keys = self.encryption.as_ref().map(|_| KeyPair::generate());
        let trust_remote = self.encryption.as_ref().is_some_and(|e| e.trusts(addr));
        self.conns.insert(
            key,
            Conn {
                addr,
                outbound,
                accept_new_peer,
                phase: if outbound {
                    Phase::Dialing
                } else {
                    Phase::Header
                },
                pending: Vec::new(),
                frames: FrameDecoder::default(),
                conn_id,
                uid: ConnUid(0),
                remote: None,
                holds_ref: false,
                registered: false,
                established: false,
                deadline: now + HANDSHAKE_TIMEOUT,
                next_heartbeat: now + HEARTBEAT_INTERVAL,
                sleeve: None,
                overlays: Vec::new(),
                fastdp: None,
                no_fastdp: None,
                spread: false,
                partial_csum: false,
                keys,
                sealer: None,
                opener: None,
                session_key: None,
                trust_remote,
                trusted_by_remote: false,
                aead: false,
                digest: false,
                summary_sent: false,
            },
        );
        key
    }

    fn start_handshake(&mut self, key: ConnKey, now: Instant) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.phase = Phase::Header;
        c.deadline = now + HANDSHAKE_TIMEOUT;
        let header = ProtocolHeader {
            min_version: PROTOCOL_MIN_VERSION,
            max_version: PROTOCOL_MAX_VERSION,
        };
        self.send(key, header.emit().to_vec());
    }

    /// Consumes buffered input of one connection as far as it goes.
    fn process_input(&mut self, key: ConnKey, now: Instant) -> Result<(), ConnError> {
        loop {
            let Some(c) = self.conns.get_mut(&key) else {
                return Ok(());
            };
            match c.phase {
                Phase::Dialing => return Ok(()),
                Phase::Header => {
                    if c.pending.len() < 7 {
                        return Ok(());
                    }
                    let bytes: [u8; 7] = c.pending[..7].try_into().expect("length checked");
                    c.pending.drain(..7);
                    let header = ProtocolHeader::parse(&bytes).map_err(|e| {
                        ConnError::failed(format!("remote protocol header not recognised: {e}"))
                    })?;
                    let lo = header.min_version.max(PROTOCOL_MIN_VERSION);
                    let hi = header.max_version.min(PROTOCOL_MAX_VERSION);
                    if lo > hi {
                        return Err(ConnError::failed(format!(
                            "remote version range [{},{}] is incompatible with ours [{},{}]",
                            header.min_version,
                            header.max_version,
                            PROTOCOL_MIN_VERSION,
                            PROTOCOL_MAX_VERSION
                        )));
                    }
                    c.phase = Phase::Flag;
                    // As Weave does, the feature map waits for the remote's flag: when
                    // encrypted, it is the first sealed message.
                    let flag = match &c.keys {
                        Some(k) => [&[1u8][..], &k.public()].concat(),
                        None => vec![0],
                    };
                    self.send(key, flag);
                }
                Phase::Flag => {
                    let Some(&flag) = c.pending.first() else {
                        return Ok(());
                    };
                    let password = self.encryption.as_ref().map(|e| &e.password);
                    match (flag, password) {
                        (0, None) => {
                            c.pending.remove(0);
                        }
                        (0, Some(_)) => {
                            return Err(ConnError::failed(
                                "password specified, but peer requested an unencrypted connection",
                            ))
                        }
                        (1, None) => {
                            return Err(ConnError::failed(
                                "no password specified, but peer requested an encrypted connection",
                            ))
                        }
                        (1, Some(password)) => {
                            if c.pending.len() < 1 + PUBLIC_KEY_LEN {
                                return Ok(());
                            }
                            let remote: [u8; PUBLIC_KEY_LEN] = c.pending[1..1 + PUBLIC_KEY_LEN]
                                .try_into()
                                .expect("length checked");
                            c.pending.drain(..1 + PUBLIC_KEY_LEN);
                            let keys = c.keys.take().expect("made with the password");
                            let session = keys.session_key(&remote, password);
                            c.sealer = Some(TcpSealer::new(session.clone(), c.outbound));
                            c.opener = Some(TcpOpener::new(session.clone(), c.outbound));
                            c.session_key = Some(session);
                        }
                        (other, _) => {
                            return Err(ConnError::failed(format!("bad encryption flag {other}")))
                        }
                    }
                    c.phase = Phase::Features;
                    let rest = std::mem::take(&mut c.pending);
                    c.frames.push(&rest);
                    let features = wire::encode_features(&self.features(&self.conns[&key]));
                    self.send_body(key, &features);
                }
                Phase::Features | Phase::Ready => {
                    if !c.pending.is_empty() {
                        let rest = std::mem::take(&mut c.pending);
                        c.frames.push(&rest);
                    }
                    let body = c
                        .frames
                        .next_body()
                        .map_err(|e| ConnError::failed(format!("incoming message: {e}")))?;
                    let Some(body) = body else {
                        return Ok(());
                    };
                    let body = match &mut c.opener {
                        None => body,
                        Some(opener) => opener.open(&body).map_err(|_| {
                            ConnError::failed(if c.phase == Phase::Features {
                                "cannot decrypt the peer's first message: \
                                 its password differs from ours"
                            } else {
                                "Unable to decrypt TCP msg"
                            })
                        })?,
                    };
                    if c.phase == Phase::Features {
                        self.handle_features(key, &body, now)?;
                    } else {
                        c.deadline = now + READ_TIMEOUT;
                        self.handle_message(key, &body, now)?;
                    }
                }
            }
        }
    }

    /// Our feature map for connection `c`.
    fn features(&self, c: &Conn) -> BTreeMap<String, String> {
        let trusted = c.trust_remote;
        let me = self.topo.ourself();
        let mut f = BTreeMap::new();
        f.insert("PeerNameFlavour".into(), "mac".into());
        f.insert("Name".into(), me.name.to_string());
        f.insert("NickName".into(), me.nickname.clone());
        f.insert("ShortID".into(), me.short_id.0.to_string());
        f.insert("UID".into(), me.uid.0.to_string());
        f.insert("ConnID".into(), c.conn_id.0.to_string());
        f.insert("Trusted".into(), trusted.to_string());
        // Weave encrypts its fast datapath with IPsec, which we do not: towards a peer we
        // do not trust, we offer the sleeve only.
        let overlays: Vec<&str> = self
            .config
            .overlays
            .iter()
            .map(String::as_str)
            .filter(|o| self.encryption.is_none() || trusted || *o != "fastdp")
            .collect();
        f.insert("Overlays".into(), overlays.join(" "));
        if self.fastdp_mtu.is_some() {
            f.insert(fastdp::ACK_FEATURE.into(), fastdp::ACK_VERSION.into());
        }
        if self.spread {
            f.insert(SPREAD_FEATURE.into(), SPREAD_VERSION.into());
        }
        if self.partial_csum {
            f.insert(PARTIAL_CSUM_FEATURE.into(), PARTIAL_CSUM_VERSION.into());
        }
        if self.encryption.as_ref().is_some_and(|e| e.fast_cipher) {
            f.insert(AEAD_FEATURE.into(), AEAD_VERSION.into());
        }
        if self.digest {
            f.insert(DIGEST_FEATURE.into(), DIGEST_VERSION.into());
        }
        f
    }

    /// Validates the remote's feature map and adds the connection.
    fn handle_features(
        &mut self,
        key: ConnKey,
        body: &[u8],
        now: Instant,
    ) -> Result<(), ConnError> {
        let features = wire::decode_features(body)
            .map_err(|e| ConnError::failed(format!("bad feature map: {e}")))?;
        let remote = parse_features(&features).map_err(ConnError::failed)?;
        let c = self.conns.get_mut(&key).expect("caller holds the key");
        c.uid = ConnUid::from_ids(c.conn_id, remote.conn_id);
        let addr = c.addr;
        let accept_new_peer = c.accept_new_peer;
        let summary = PeerSummary {
            name: remote.name,
            nickname: remote.nickname.clone(),
            uid: remote.uid.0,
            version: 0,
            short_id: remote.short_id.map_or(0, |s| s.0),
            has_short_id: remote.short_id.is_some(),
        };
        let known_uid = if accept_new_peer || self.topo.get(remote.name).is_some() {
            self.topo.add_local_ref(&summary)
        } else {
            return Err(ConnError::failed(format!(
                "Found unknown remote name: {} at {addr}",
                remote.name
            )));
        };
        let c = self.conns.get_mut(&key).expect("caller holds the key");
        c.holds_ref = true;
        c.spread =
            self.spread && features.get(SPREAD_FEATURE).map(String::as_str) == Some(SPREAD_VERSION);
        c.partial_csum = self.partial_csum
            && features.get(PARTIAL_CSUM_FEATURE).map(String::as_str) == Some(PARTIAL_CSUM_VERSION);
        c.trusted_by_remote = remote.trusted;
        c.aead = self.encryption.as_ref().is_some_and(|e| e.fast_cipher)
            && features.get(AEAD_FEATURE).map(String::as_str) == Some(AEAD_VERSION);
        c.digest =
            self.digest && features.get(DIGEST_FEATURE).map(String::as_str) == Some(DIGEST_VERSION);
        c.remote = Some(Remote {
            name: remote.name,
            nickname: remote.nickname.clone(),
        });
        if remote.name == self.config.name {
            if remote.uid != self.config.uid {
                return Err(ConnError::never(format!(
                    "local \"{}({})\" and remote \"{}({})\" peer names collision",
                    self.config.name, self.config.nickname, remote.name, remote.nickname
                )));
            }
            return Err(ConnError::never("cannot connect to ourself"));
        }
        let restarted = known_uid.is_some_and(|u| u != remote.uid);
        let prefix = c.prefix();
        self.info(format!(
            "{prefix}: connection ready; using protocol version 2"
        ));
        if self.sleeve_underlay.is_some() {
            let c = &self.conns[&key];
            let on_off = |on: bool| if on { "on" } else { "off" };
            self.info(format!(
                "{prefix}: sleeve spread over workers {}, partial TCP checksums {}",
                on_off(c.spread),
                on_off(c.partial_csum)
            ));
        }
        self.add_connection(key, remote.name, restarted, now)?;
        if self.conns.get(&key).is_some_and(|c| c.outbound) {
            self.maker.connection_created(addr);
        }
        self.start_overlays(key, &features, remote.short_id, now);
        match self.sleeve_underlay {
            Some(underlay_mtu) => {
                let c = self.conns.get_mut(&key).expect("registered above");
                // The dialling side sends to the address it dialled; the other side learns
                // the peer's UDP address from its heartbeats.
                let udp = c.outbound.then_some(c.addr);
                let max_mtu = sleeve::mtu_for_underlay(underlay_mtu, c.sleeve_encrypted());
                let mut sc =
                    SleeveConn::new(self.config.name, remote.name, c.uid, udp, max_mtu, now);
                let mut out = Vec::new();
                sc.handle_timeout(now, &mut out);
                c.sleeve = Some(sc);
                self.apply_sleeve(key, out, now);
            }
            // Without an overlay, a completed handshake establishes the connection.
            None => self.connection_established(key, now),
        }
        Ok(())
    }

    /// Records the overlays both ends offer and starts the fast datapath's health check
    /// when both run one.
    fn start_overlays(
        &mut self,
        key: ConnKey,
        features: &BTreeMap<String, String>,
        remote_short: Option<ShortId>,
        now: Instant,
    ) {
        let ours = &self.config.overlays;
        let our_short = self.topo.ourself().short_id;
        // A peer without the key is from before overlays could be chosen: sleeve only.
        let theirs: Vec<String> = features.get("Overlays").map_or_else(
            || vec!["sleeve".to_string()],
            |o| o.split_whitespace().map(str::to_string).collect(),
        );
        let c = self.conns.get_mut(&key).expect("caller holds the key");
        let (first, second) = if c.outbound {
            (ours, &theirs)
        } else {
            (&theirs, ours)
        };
        c.overlays = first
            .iter()
            .filter(|o| second.contains(o))
            .cloned()
            .collect();
        let Some(mtu) = self.fastdp_mtu else {
            c.no_fastdp = self.fastdp_off.clone();
            return;
        };
        let mut out = Vec::new();
        c.no_fastdp = match (c.addr.ip(), remote_short) {
            _ if c.sleeve_encrypted() => Some("encrypted connections use the sleeve".to_string()),
            _ if !c.overlays.iter().any(|o| o == "fastdp") => {
                Some("the peer does not offer fastdp".to_string())
            }
            (IpAddr::V6(_), _) => Some("fastdp runs over IPv4 only".to_string()),
            (_, None) => Some("the peer has no short id".to_string()),
            (IpAddr::V4(ip), Some(short)) => {
                let acks = features.get(fastdp::ACK_FEATURE).map(String::as_str)
                    == Some(fastdp::ACK_VERSION);
                let vni = fastdp_wire::vni(our_short, short);
                let mut fc = FastdpConn::new(c.uid, ip, vni, mtu, acks, now);
                fc.handle_timeout(now, &mut out);
                c.fastdp = Some(fc);
                None
            }
        };
        self.apply_fastdp(key, out);
    }

    /// Carries out what a connection's fast-datapath state asked for.
    fn apply_fastdp(&mut self, key: ConnKey, effects: Vec<fastdp::Effect>) {
        for effect in effects {
            match effect {
                fastdp::Effect::Send { to, datagram } => {
                    self.commands
                        .push_back(Command::SendFastdp { to, datagram });
                }
                fastdp::Effect::Control(subtag, data) => {
                    let Some(overlay) = self.overlay_index(key, "fastdp") else {
                        continue;
                    };
                    let msg = Message::OverlayControl {
                        overlay,
                        subtag,
                        data,
                    };
                    self.send_message(key, &msg);
                }
                fastdp::Effect::Moved(carrier) => {
                    self.fastdp_moves += 1;
                    // The data plane's snapshot and the kernel's entries follow.
                    self.generation += 1;
                    let prefix = self.conns.get(&key).map(Conn::prefix).unwrap_or_default();
                    match carrier {
                        Carrier::Fastdp => {
                            self.info(format!("fastdp {prefix}: unicast moves to fastdp"))
                        }
                        Carrier::Sleeve(reason) => self.warn(format!(
                            "fastdp {prefix}: unicast moves to the sleeve: {reason}"
                        )),
                    }
                }
            }
        }
    }

    /// The index of overlay `name` on a connection, as its control messages carry it.
    fn overlay_index(&self, key: ConnKey, name: &str) -> Option<u8> {
        let c = self.conns.get(&key)?;
        let i = c.overlays.iter().position(|o| o == name)?;
        u8::try_from(i).ok()
    }

    /// A frame with zero addresses arrived through the fast datapath's tunnel: a
    /// heartbeat, for the connection whose UID it carries.
    pub fn handle_fastdp_frame(&mut self, frame: &[u8], now: Instant) {
        let Some(hb) = fastdp_wire::parse_heartbeat(frame) else {
            return;
        };
        let Some((&key, _)) = self
            .conns
            .iter()
            .find(|(_, c)| c.uid == hb.uid && c.fastdp.is_some())
        else {
            return;
        };
        let mut out = Vec::new();
        if let Some(fc) = self.conns.get_mut(&key).and_then(|c| c.fastdp.as_mut()) {
            fc.handle_heartbeat(hb, now, &mut out);
        }
        self.apply_fastdp(key, out);
    }

    /// The peers whose unicast the fast datapath carries: established connections whose
    /// tunnel is healthy.
    pub fn fastdp_peers(&self) -> BTreeMap<PeerName, FastdpPath> {
        let our_short = self.topo.ourself().short_id;
        self.by_peer
            .iter()
            .filter_map(|(name, key)| {
                let c = self.conns.get(key)?;
                let fc = c.fastdp.as_ref()?;
                if !c.established || !fc.is_fastdp() {
                    return None;
                }
                let peer = self.topo.get(*name)?;
                Some((
                    *name,
                    FastdpPath {
                        addr: fc.remote(),
                        vni: fastdp_wire::vni(our_short, peer.short_id),
                    },
                ))
            })
            .collect()
    }

    /// What the fast datapath forwards by: healthy peers, short ids and routes.
    pub fn fastdp_view(&self) -> crate::fastdp::View {
        crate::fastdp::View {
            our_short: self.topo.ourself().short_id,
            peers: self.fastdp_peers(),
            shorts: self
                .topo
                .peers()
                .filter(|p| p.has_short_id)
                .map(|p| (p.short_id, p.name))
                .collect(),
            unicast: self.unicast_routes(),
        }
    }

    /// Weave's `handleAddConnection`: duplicates, the limit, then registration.
    fn add_connection(
        &mut self,
        key: ConnKey,
        name: PeerName,
        restarted: bool,
        now: Instant,
    ) -> Result<(), ConnError> {
        let me = format!("{}({})", self.config.name, self.config.nickname);
        let remote_desc = format!(
            "{}({})",
            name,
            self.topo
                .get(name)
                .map(|p| p.nickname.as_str())
                .unwrap_or("")
        );
        let dup = || {
            ConnError::failed(format!(
                "Multiple connections to {remote_desc} added to {me}"
            ))
        };
        if let Some(&existing) = self.by_peer.get(&name) {
            let ours = self.conns[&key].uid;
            let theirs = self.conns[&existing].uid;
            if ours > theirs {
                return Err(dup());
            }
            self.teardown(existing, dup(), true, now);
            if ours == theirs {
                return Err(dup());
            }
        }
        let limit = self.config.conn_limit;
        if limit != 0 && self.by_peer.len() >= limit {
            return Err(ConnError::failed(format!(
                "Connection limit reached ({limit})"
            )));
        }
        self.ensure_routes();
        let connected_peer =
            routes::unicast(&self.topo, self.config.name, true).contains_key(&name);
        let c = self.conns.get_mut(&key).expect("caller holds the key");
        c.phase = Phase::Ready;
        c.registered = true;
        c.deadline = now + READ_TIMEOUT;
        c.next_heartbeat = now + HEARTBEAT_INTERVAL;
        let conn = PeerConn {
            remote_tcp_addr: c.addr.to_string(),
            outbound: c.outbound,
            established: false,
        };
        let prefix = c.prefix();
        self.by_peer.insert(name, key);
        if !self.channels.is_empty() {
            self.channel_events
                .push_back(ChannelEvent::NeighbourUp { peer: name });
        }
        let ourself = self.topo.ourself_mut();
        ourself.conns.insert(name, conn);
        ourself.version += 1;
        self.topology_changed();
        if restarted {
            self.info(format!("{prefix}: connection added (restarted peer)"));
        } else if connected_peer {
            self.info(format!("{prefix}: connection added"));
        } else {
            self.info(format!("{prefix}: connection added (new peer)"));
        }
        if restarted || !connected_peer {
            if self.conns[&key].digest {
                self.send_summary(key, false);
            } else {
                let payload = self.topo.encode(&self.topo.names());
                self.send_gossip(key, TOPOLOGY_CHANNEL, payload);
            }
        }
        self.schedule_update(Some(name), now);
        Ok(())
    }

    fn connection_established(&mut self, key: ConnKey, now: Instant) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(remote) = c.remote.clone() else {
            return;
        };
        if !c.registered || c.established {
            return;
        }
        c.established = true;
        let prefix = c.prefix();
        let ourself = self.topo.ourself_mut();
        if let Some(pc) = ourself.conns.get_mut(&remote.name) {
            pc.established = true;
        }
        ourself.version += 1;
        self.topology_changed();
        self.info(format!("{prefix}: connection fully established"));
        self.schedule_update(None, now);
    }

    /// Ends a connection: unregisters it, tells the maker, and closes the socket if asked.
    fn teardown(&mut self, key: ConnKey, err: ConnError, close: bool, now: Instant) {
        let Some(c) = self.conns.remove(&key) else {
            return;
        };
        let prefix = c.prefix();
        if c.remote.is_none() {
            self.warn(format!(
                "{prefix} connection shutting down due to error during handshake: {}",
                err.reason
            ));
        } else {
            self.warn(format!(
                "{prefix}: connection shutting down due to error: {}",
                err.reason
            ));
        }
        if close {
            self.commands.push_back(Command::Close { conn: key });
        }
        if err.how != Termination::Never {
            self.termination_count += 1;
        }
        if let Some(remote) = &c.remote {
            if c.holds_ref {
                self.topo.release_local_ref(remote.name);
                // A peer known only from this connection's feature map is collected, or
                // its entry asked for, at the next collection.
                self.gc_due.get_or_insert(now + GC_DELAY);
                self.gc_dirty = true;
            }
            if c.registered && self.by_peer.get(&remote.name) == Some(&key) {
                self.by_peer.remove(&remote.name);
                let ourself = self.topo.ourself_mut();
                ourself.conns.remove(&remote.name);
                ourself.version += 1;
                self.info(format!("{prefix}: connection deleted"));
                // Collect first so that the update never names unreachable peers.
                self.gc_dirty = true;
                self.garbage_collect(now);
                self.topology_changed();
                self.schedule_update(None, now);
            }
        }
        if c.outbound {
            let rng = &mut self.rng;
            self.maker
                .connection_terminated(c.addr, &err.reason, err.how, now, rng);
        }
        self.maker_dirty = true;
    }

    /// Carries out what a connection's sleeve state asked for.
    fn apply_sleeve(&mut self, key: ConnKey, effects: Vec<Effect>, now: Instant) {
        for effect in effects {
            match effect {
                Effect::Udp(udp) => self.commands.push_back(Command::SendUdp(udp)),
                Effect::Control(subtag, data) => {
                    let overlay = self.overlay_index(key, "sleeve").unwrap_or(0);
                    let msg = Message::OverlayControl {
                        overlay,
                        subtag,
                        data,
                    };
                    self.send_message(key, &msg);
                }
                Effect::Established => self.connection_established(key, now),
                Effect::FragmentsPass => {
                    let prefix = self.conns.get(&key).map(Conn::prefix).unwrap_or_default();
                    self.info(format!(
                        "sleeve {prefix}: fragmented datagrams reach the peer"
                    ));
                }
                Effect::MtuVerified(mtu) => {
                    let prefix = self.conns.get(&key).map(Conn::prefix).unwrap_or_default();
                    self.info(format!("sleeve {prefix}: Effective MTU verified at {mtu}"));
                    self.topology_changed();
                }
                Effect::Fail(reason) => {
                    self.teardown(key, ConnError::failed(reason), true, now);
                    return;
                }
            }
        }
    }

    // ----- messages -----

    fn handle_message(&mut self, key: ConnKey, body: &[u8], now: Instant) -> Result<(), ConnError> {
        if body.is_empty() {
            return Ok(());
        }
        let msg =
            Message::parse(body).map_err(|e| ConnError::failed(format!("bad message: {e}")))?;
        match msg {
            Message::Heartbeat => Ok(()),
            Message::Gossip {
                channel,
                src,
                payload,
            } if channel == DIGEST_CHANNEL => self.handle_digest(key, src, &payload, now),
            Message::Gossip {
                channel,
                src,
                payload,
            } => self.handle_gossip(key, &channel, src, &payload, now),
            Message::GossipUnicast {
                channel,
                src,
                dst,
                payload,
            } => {
                if dst != self.config.name {
                    self.relay_unicast(&channel, dst, body);
                    return Ok(());
                }
                if channel == TOPOLOGY_CHANNEL {
                    return Err(ConnError::failed(format!(
                        "unexpected topology gossip unicast from {src}"
                    )));
                }
                if self.channels.contains(&channel) {
                    self.channel_events.push_back(ChannelEvent::Unicast {
                        channel,
                        src,
                        payload,
                    });
                }
                // Otherwise a channel this router does not implement: nothing to deliver to.
                Ok(())
            }
            Message::GossipBroadcast {
                channel,
                src,
                payload,
            } => {
                if !self.note_broadcast(&channel, src, &payload, now) {
                    self.broadcast_repeats += 1;
                    return Ok(());
                }
                if self.channels.contains(&channel) {
                    self.channel_events.push_back(ChannelEvent::Broadcast {
                        channel,
                        src,
                        payload,
                    });
                    return Ok(());
                }
                let payload = if channel == TOPOLOGY_CHANNEL {
                    let entries = wire::decode_topology(&payload)
                        .map_err(|e| ConnError::failed(format!("bad topology update: {e}")))?;
                    let names = self.apply_topology(&entries, now).0;
                    if names.is_empty() {
                        return Ok(());
                    }
                    self.topo.encode(&names)
                } else {
                    payload
                };
                self.relay_broadcast(&channel, src, payload, now);
                Ok(())
            }
            Message::OverlayControl {
                overlay,
                subtag,
                data,
            } => {
                let Some(c) = self.conns.get_mut(&key) else {
                    return Ok(());
                };
                let name = c.overlays.get(usize::from(overlay)).map(String::as_str);
                // A peer with no overlay in common speaks the sleeve's messages as overlay 0.
                let name = name.or((overlay == 0).then_some("sleeve"));
                match name {
                    Some("sleeve") => {
                        if let Some(sc) = c.sleeve.as_mut() {
                            let mut out = Vec::new();
                            sc.handle_control(subtag, &data, now, &mut out);
                            self.apply_sleeve(key, out, now);
                        }
                    }
                    Some("fastdp") => {
                        if let Some(fc) = c.fastdp.as_mut() {
                            let mut out = Vec::new();
                            fc.handle_control(subtag, &data, now, &mut out);
                            self.apply_fastdp(key, out);
                        }
                    }
                    _ => {}
                }
                Ok(())
            }
            Message::Unknown { tag, .. } => {
                let prefix = self.conns.get(&key).map(Conn::prefix).unwrap_or_default();
                self.warn(format!("{prefix}: ignoring unknown protocol tag: {tag}"));
                Ok(())
            }
        }
    }

    fn handle_gossip(
        &mut self,
        key: ConnKey,
        channel: &str,
        src: PeerName,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ConnError> {
        if channel == TOPOLOGY_CHANNEL {
            let entries = wire::decode_topology(payload)
                .map_err(|e| ConnError::failed(format!("bad topology update: {e}")))?;
            self.receive_entries(key, src, &entries, now);
            return Ok(());
        }
        if self.channels.contains(channel) {
            self.channel_events.push_back(ChannelEvent::Gossip {
                channel: channel.to_string(),
                src,
                payload: payload.to_vec(),
            });
            return Ok(());
        }
        // A channel we do not implement: relay each distinct update once per interval.
        if !self.surrogate_seen.insert(fnv1a(payload), now) {
            return Ok(());
        }
        self.gossip_to_neighbours(channel, src, payload.to_vec());
        Ok(())
    }

    /// Entries gossiped to us by the neighbour on `key` (named `src`), from Weave's
    /// `topology` channel or a digest channel's `Entries`: merges them, and schedules the
    /// relay of what they improved.
    fn receive_entries(
        &mut self,
        key: ConnKey,
        src: PeerName,
        entries: &[wire::TopologyEntry],
        now: Instant,
    ) {
        let out = self.apply_topology(entries, now).1;
        for name in out.improved {
            // Who holds this version (or a newer one) need not hear of it from us.
            let mut holders = vec![src];
            if let (Some(p), Some(h)) = (self.topo.get(name), self.heard.get_mut(&name)) {
                let have = (p.version, p.uid.0);
                h.retain(|(n, v, u)| {
                    if (*v, *u) >= have && !holders.contains(n) {
                        holders.push(*n);
                    }
                    (*v, *u) > have
                });
                if h.is_empty() {
                    self.heard.remove(&name);
                }
            }
            self.relay_pending.insert(name, holders);
        }
        // Peers the update names only in someone's connections (we never had their
        // entry, or collected it while nothing we knew led to them): the sender most
        // likely holds their entries, and one that speaks digests is asked for them
        // rather than waiting for the next summary.
        if self.conns.get(&key).is_some_and(|c| c.digest) {
            let unknown: Vec<PeerName> = out
                .added
                .iter()
                .filter(|n| self.topo.get(**n).is_some_and(Peer::is_placeholder))
                .filter(|n| {
                    self.wanted
                        .get(n)
                        .is_none_or(|(_, _, at)| *at + WANT_TIMEOUT <= now)
                })
                .copied()
                .collect();
            if !unknown.is_empty() {
                for n in &unknown {
                    self.wanted.insert(*n, (0, 0, now));
                }
                let want = unknown.into_iter().map(|n| (n, 0)).collect();
                self.send_gossip(key, DIGEST_CHANNEL, DigestMessage::Want(want).emit());
            }
        }
        if !self.relay_pending.is_empty() && self.relay_due.is_none() {
            self.relay_due = Some(now + RELAY_DELAY);
        }
    }

    /// A message on [`DIGEST_CHANNEL`]. Only a neighbour that negotiated it speaks it, and
    /// only for itself; anything else is ignored (a Weave Net peer may relay it as gossip
    /// of a channel it does not know).
    fn handle_digest(
        &mut self,
        key: ConnKey,
        src: PeerName,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), ConnError> {
        let Some(c) = self.conns.get(&key) else {
            return Ok(());
        };
        let from_neighbour = c.remote.as_ref().is_some_and(|r| r.name == src);
        if !c.digest || !from_neighbour {
            return Ok(());
        }
        let msg = DigestMessage::parse(payload)
            .map_err(|e| ConnError::failed(format!("bad topology digest: {e}")))?;
        match msg {
            DigestMessage::Summary {
                entries,
                hash,
                answer,
            } => {
                let (n, h) = self.topo.summary();
                if (n, h) == (entries, hash) {
                    return Ok(());
                }
                // The side with more entries sends its digest, ties broken by name; the
                // other asks for what it lacks. (A router that has just started and joins
                // several neighbours at once so asks each entry of one of them only,
                // rather than being sent every neighbour's whole table.) The side with
                // fewer answers with its summary, unless its own is already on the way:
                // then that one brings the digest.
                let ours_larger = (n, self.config.name) > (entries, src);
                if answer || ours_larger {
                    let msg = DigestMessage::Digest {
                        whole: true,
                        entries: self.topo.digest(),
                    };
                    self.send_gossip(key, DIGEST_CHANNEL, msg.emit());
                } else if !self.conns[&key].summary_sent {
                    self.send_summary(key, true);
                }
            }
            DigestMessage::Digest { whole, entries } => {
                if let Some(c) = self.conns.get_mut(&key) {
                    c.summary_sent = false;
                }
                // What to send, with the version they hold (a change from it may do).
                let mut push = BTreeMap::new();
                let mut want = Vec::new();
                for e in &entries {
                    match self.topo.compare(e) {
                        // They hold what we are about to relay.
                        Newer::Neither => self.relay_skips(e.name, src),
                        Newer::Ours => {
                            let same = self.topo.get(e.name).is_some_and(|p| p.uid.0 == e.uid);
                            push.insert(e.name, if same { e.version } else { 0 });
                        }
                        Newer::Theirs => {
                            let asked = self.wanted.get(&e.name).is_some_and(|(v, u, at)| {
                                (*v, *u) >= (e.version, e.uid) && *at + WANT_TIMEOUT > now
                            });
                            let h = self.heard.entry(e.name).or_default();
                            h.retain(|(n, _, _)| *n != src);
                            h.push((src, e.version, e.uid));
                            if !asked {
                                self.wanted.insert(e.name, (e.version, e.uid, now));
                                want.push((e.name, self.held(e.name, Some(e.uid))));
                            }
                        }
                    }
                }
                if whole {
                    let theirs: BTreeSet<PeerName> = entries.iter().map(|e| e.name).collect();
                    push.extend(
                        self.topo
                            .peers()
                            .filter(|p| !p.is_placeholder() && !theirs.contains(&p.name))
                            .map(|p| (p.name, 0)),
                    );
                }
                if !push.is_empty() {
                    self.send_entries(key, &push);
                }
                if !want.is_empty() {
                    self.send_gossip(key, DIGEST_CHANNEL, DigestMessage::Want(want).emit());
                    // See to it that the request is repeated if it goes unanswered.
                    self.collect_by(now + WANT_TIMEOUT);
                }
            }
            DigestMessage::Want(names) => {
                let names: BTreeMap<PeerName, u64> = names
                    .into_iter()
                    .filter(|(n, _)| self.topo.get(*n).is_some_and(|p| !p.is_placeholder()))
                    .collect();
                if names.is_empty() {
                    return Ok(());
                }
                self.send_entries(key, &names);
            }
            DigestMessage::Entries { mut full, changes } => {
                // A change whose base we do not hold (the entry moved on meanwhile, or ours
                // is of another incarnation at that version) is asked for again whole, so
                // that the answer cannot be the same change; not when we collected the
                // entry since (it was unreachable, as a request for it lapses then).
                let mut again = Vec::new();
                for change in &changes {
                    if let Some(entry) = self.topo.rebuild(change) {
                        full.push(entry);
                        continue;
                    }
                    if self.topo.get(change.name).is_none() {
                        continue;
                    }
                    let offered = DigestEntry {
                        name: change.name,
                        uid: change.uid,
                        version: change.version,
                    };
                    if self.topo.compare(&offered) == Newer::Theirs {
                        self.wanted
                            .insert(change.name, (change.version, change.uid, now));
                        again.push((change.name, 0));
                    }
                }
                self.receive_entries(key, src, &full, now);
                if !again.is_empty() {
                    self.send_gossip(key, DIGEST_CHANNEL, DigestMessage::Want(again).emit());
                    self.collect_by(now + WANT_TIMEOUT);
                }
            }
        }
        Ok(())
    }

    /// Marks `holder` as holding `name`'s entry as we do, so that a relay of it pending
    /// skips them.
    fn relay_skips(&mut self, name: PeerName, holder: PeerName) {
        if let Some(h) = self.relay_pending.get_mut(&name) {
            if !h.contains(&holder) {
                h.push(holder);
            }
        }
    }

    /// The version of `name`'s entry we hold, 0 for none or, when `uid` is given, one of
    /// another UID: what a `Want` tells, so that the answer may be a change from it.
    fn held(&self, name: PeerName, uid: Option<u64>) -> u64 {
        self.topo
            .get(name)
            .filter(|p| !p.is_placeholder() && uid.is_none_or(|u| u == p.uid.0))
            .map_or(0, |p| p.version)
    }

    /// Asks a random neighbour that speaks digests for the entries of peers we know only
    /// by name (an entry that was collected while nothing led to it, then named again by
    /// a connection, is otherwise only learnt at the next summary), and again for entries
    /// asked for whose request expired unanswered (the request or the answer was lost, and
    /// the neighbours that announced the same version were not asked because of it); looks
    /// again when these requests expire.
    fn want_placeholders(&mut self, now: Instant) {
        let expired = |at: &Instant| *at + WANT_TIMEOUT <= now;
        let mut ask: Vec<PeerName> = self
            .topo
            .peers()
            .filter(|p| p.is_placeholder() && p.name != self.config.name)
            .map(|p| p.name)
            .filter(|n| self.wanted.get(n).is_none_or(|(_, _, at)| expired(at)))
            .collect();
        let pending = self.wanted.iter().any(|(_, (_, _, at))| !expired(at));
        // Only entries still in the table: one collected since was unreachable, and its
        // request lapses (the periodic summary finds it if it comes back).
        ask.extend(self.wanted.iter().filter_map(|(n, (v, u, at))| {
            let p = self.topo.get(*n)?;
            (expired(at) && !p.is_placeholder() && (p.version, p.uid.0) < (*v, *u)).then_some(*n)
        }));
        if ask.is_empty() && !pending {
            return;
        }
        let Some(key) = self.random_digest_neighbour() else {
            return;
        };
        // Look again once these requests have expired, in case that neighbour lacked them.
        self.collect_by(now + WANT_TIMEOUT);
        if ask.is_empty() {
            return;
        }
        for n in &ask {
            let e = self.wanted.entry(*n).or_insert((0, 0, now));
            e.2 = now;
        }
        let ask = ask
            .into_iter()
            .map(|n| {
                let uid = self.wanted.get(&n).map(|w| w.1).filter(|u| *u != 0);
                (n, self.held(n, uid))
            })
            .collect();
        self.send_gossip(key, DIGEST_CHANNEL, DigestMessage::Want(ask).emit());
    }

    /// Runs the next collection (and with it the requests' expiry check) by `at`.
    fn collect_by(&mut self, at: Instant) {
        self.gc_due = Some(self.gc_due.map_or(at, |t| t.min(at)));
    }

    /// Our connections that speak [`DIGEST_CHANNEL`].
    fn digest_neighbours(&self) -> Vec<ConnKey> {
        self.by_peer
            .values()
            .copied()
            .filter(|k| self.conns.get(k).is_some_and(|c| c.digest))
            .collect()
    }

    /// One of our connections that speaks [`DIGEST_CHANNEL`], at random.
    fn random_digest_neighbour(&mut self) -> Option<ConnKey> {
        self.digest_neighbours().choose(&mut self.rng).copied()
    }

    /// Sends our topology summary on a connection that speaks [`DIGEST_CHANNEL`].
    fn send_summary(&mut self, key: ConnKey, answer: bool) {
        let (entries, hash) = self.topo.summary();
        if !answer {
            if let Some(c) = self.conns.get_mut(&key) {
                c.summary_sent = true;
            }
        }
        let msg = DigestMessage::Summary {
            entries,
            hash,
            answer,
        };
        self.send_gossip(key, DIGEST_CHANNEL, msg.emit());
    }

    /// Every gossip interval: our summary to neighbours that speak digests, the whole
    /// table (as Weave Net) to those that do not.
    fn periodic_topology_gossip(&mut self) {
        let mut whole = None;
        for hop in self.random_neighbours(self.config.name) {
            let Some(&key) = self.by_peer.get(&hop) else {
                continue;
            };
            if self.conns[&key].digest {
                self.send_summary(key, false);
            } else {
                let payload = whole
                    .get_or_insert_with(|| self.topo.encode(&self.topo.names()))
                    .clone();
                self.send_gossip(key, TOPOLOGY_CHANNEL, payload);
            }
        }
    }

    /// Passes on the entries gossip improved since the last time (each to neighbours
    /// other than the one it came from): to neighbours that speak digests an announcement
    /// of their (name, UID, version), so that each asks only for what it lacks; to the
    /// others the entries themselves, as Weave Net relays them.
    fn relay_topology(&mut self) {
        let pending = std::mem::take(&mut self.relay_pending);
        for hop in self.random_neighbours(UNKNOWN_PEER_NAME) {
            let Some(&key) = self.by_peer.get(&hop) else {
                continue;
            };
            // Entries collected since they were learnt are not passed on.
            let names: BTreeSet<PeerName> = pending
                .iter()
                .filter(|(name, holders)| !holders.contains(&hop) && **name != hop)
                .map(|(name, _)| *name)
                .filter(|name| self.topo.get(*name).is_some())
                .collect();
            if names.is_empty() {
                continue;
            }
            if self.conns[&key].digest {
                let entries = names
                    .iter()
                    .filter_map(|n| self.topo.get(*n))
                    .map(Peer::digest_entry)
                    .collect();
                let msg = DigestMessage::Digest {
                    whole: false,
                    entries,
                };
                self.send_gossip(key, DIGEST_CHANNEL, msg.emit());
            } else {
                let payload = self.topo.encode(&names);
                self.send_gossip(key, TOPOLOGY_CHANNEL, payload);
            }
        }
    }

    /// Applies received entries; returns the names in the update and what it changed.
    fn apply_topology(
        &mut self,
        entries: &[wire::TopologyEntry],
        now: Instant,
    ) -> (BTreeSet<PeerName>, UpdateOutcome) {
        let names: BTreeSet<PeerName> = entries.iter().map(|(s, _)| s.name).collect();
        let rng = &mut self.rng;
        let out = self
            .topo
            .apply_entries(entries, &mut |used| pick_short_id(rng, used));
        if out.ourself_changed {
            self.schedule_update(None, now);
        }
        if !out.improved.is_empty() || out.ourself_changed {
            self.topology_changed();
            self.settle_due = Some(now + SETTLE_DELAY);
        }
        for name in &out.improved {
            let Some(p) = self.topo.get(*name) else {
                continue;
            };
            let have = (p.version, p.uid.0);
            if self
                .wanted
                .get(name)
                .is_some_and(|(v, u, _)| have >= (*v, *u))
            {
                self.wanted.remove(name);
            }
        }
        if !out.improved.is_empty() || !out.added.is_empty() {
            self.gc_dirty = true;
        }
        if !out.added.is_empty() {
            self.gc_added = true;
        }
        if self.gc_due.is_none() {
            self.gc_due = Some(now + GC_DELAY);
        }
        (names, out)
    }

    fn garbage_collect(&mut self, now: Instant) {
        self.gc_added = false;
        let removed = if std::mem::take(&mut self.gc_dirty) {
            self.topo.garbage_collect()
        } else {
            Vec::new()
        };
        self.want_placeholders(now);
        if removed.is_empty() {
            return;
        }
        for peer in &removed {
            self.pending_update.remove(&peer.name);
            self.heard.remove(&peer.name);
            if !self.channels.is_empty() {
                self.channel_events
                    .push_back(ChannelEvent::PeerGone { peer: peer.name });
            }
            self.info(format!(
                "Removed unreachable peer {}({})",
                peer.name, peer.nickname
            ));
        }
        self.topology_changed();
    }

    // ----- sending -----

    fn send(&mut self, key: ConnKey, bytes: Vec<u8>) {
        self.commands.push_back(Command::Send { conn: key, bytes });
    }

    /// Frames a message body for the connection, sealed when the connection is encrypted.
    fn send_body(&mut self, key: ConnKey, body: &[u8]) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let bytes = match &mut c.sealer {
            Some(sealer) => wire::frame(&sealer.seal(body)),
            None => wire::frame(body),
        };
        self.send(key, bytes);
    }

    fn send_message(&mut self, key: ConnKey, msg: &Message) {
        self.send_body(key, &msg.emit());
    }

    /// Sends these entries of our table down a connection that speaks digests: each as a
    /// change from the version the neighbour holds (given beside the name, 0 for none)
    /// where we kept that version ([`Topology::change_from`]), else whole.
    fn send_entries(&mut self, key: ConnKey, names: &BTreeMap<PeerName, u64>) {
        let mut full = BTreeSet::new();
        let mut changes = Vec::new();
        let to = self
            .conns
            .get(&key)
            .and_then(|c| c.remote.as_ref())
            .map(|r| r.name);
        for (name, held) in names {
            // They will hold it: a relay pending need not announce it to them.
            if let Some(to) = to {
                self.relay_skips(*name, to);
            }
            match self.topo.change_from(*name, *held) {
                Some(c) => changes.push(c),
                None => {
                    full.insert(*name);
                }
            }
        }
        let msg = DigestMessage::Entries {
            full: self.topo.entries(&full),
            changes,
        };
        self.send_gossip(key, DIGEST_CHANNEL, msg.emit());
    }

    fn send_gossip(&mut self, key: ConnKey, channel: &str, payload: Vec<u8>) {
        let msg = Message::Gossip {
            channel: channel.to_string(),
            src: self.config.name,
            payload,
        };
        self.send_message(key, &msg);
    }

    /// Gossips to `max(1, 2·log2(n))` random next hops, never back to `except`.
    fn gossip_to_neighbours(&mut self, channel: &str, except: PeerName, payload: Vec<u8>) {
        for hop in self.random_neighbours(except) {
            if let Some(&key) = self.by_peer.get(&hop) {
                self.send_gossip(key, channel, payload.clone());
            }
        }
    }

    /// Up to `max(1, 2·log2(n))` distinct next hops, never `except`, chosen at random.
    ///
    /// The next hops of the gossip routes (every connection counts) are exactly the
    /// neighbours our own entry lists that the table knows, so they are taken from there
    /// rather than from a search of the whole mesh. Weave draws them weighted by how many
    /// destinations each serves; here each is as likely, which spreads gossip more evenly.
    fn random_neighbours(&mut self, except: PeerName) -> Vec<PeerName> {
        // The fan-out protocol-notes.md gives: 2·log2(n), at least one. A single
        // log2(n) leaves small meshes waiting for the periodic gossip.
        let count = (2.0 * (self.topo.len() as f64).log2()).floor().max(1.0) as usize;
        let mut hops: Vec<PeerName> = self
            .topo
            .ourself()
            .conns
            .keys()
            .copied()
            .filter(|h| *h != except && self.topo.get(*h).is_some())
            .collect();
        hops.shuffle(&mut self.rng);
        hops.truncate(count);
        hops
    }

    fn relay_unicast(&mut self, channel: &str, dst: PeerName, body: &[u8]) {
        self.ensure_routes();
        let Some(&hop) = self.unicast_all.get(&dst) else {
            self.warn(format!(
                "[gossip {channel}]: unknown relay destination: {dst}"
            ));
            return;
        };
        let Some(&key) = self.by_peer.get(&hop) else {
            self.warn(format!(
                "[gossip {channel}]: unable to find connection to relay peer {hop}"
            ));
            return;
        };
        self.send_body(key, body);
    }

    /// Relays a broadcast from `src` along its broadcast tree. The same broadcast arriving
    /// afterwards is dropped, unless it is on the `topology` channel.
    pub fn relay_broadcast(
        &mut self,
        channel: &str,
        src: PeerName,
        payload: Vec<u8>,
        now: Instant,
    ) {
        self.note_broadcast(channel, src, &payload, now);
        self.ensure_routes();
        let me = self.config.name;
        let topo = &self.topo;
        let hops = self
            .broadcast_all
            .entry(src)
            .or_insert_with(|| routes::broadcast(topo, me, src, false))
            .clone();
        let msg = Message::GossipBroadcast {
            channel: channel.to_string(),
            src,
            payload,
        };
        let body = msg.emit();
        for hop in hops {
            if let Some(&key) = self.by_peer.get(&hop) {
                self.send_body(key, &body);
            }
        }
    }

    /// Remembers a broadcast; false when it was already delivered or sent within
    /// [`BROADCAST_MEMORY`]. Broadcasts on the `topology` channel, which stop by
    /// themselves (only what improved a table is relayed), are neither remembered nor
    /// dropped.
    fn note_broadcast(
        &mut self,
        channel: &str,
        src: PeerName,
        payload: &[u8],
        now: Instant,
    ) -> bool {
        use std::hash::BuildHasher;
        if channel == TOPOLOGY_CHANNEL {
            return true;
        }
        let hash = self.broadcast_hasher.hash_one((channel, src, payload));
        self.broadcasts_seen.insert(hash, now)
    }

    /// How many broadcasts were dropped because they had been delivered or sent already.
    pub fn broadcast_repeats(&self) -> u64 {
        self.broadcast_repeats
    }

    // ----- bookkeeping -----

    fn topology_changed(&mut self) {
        self.generation += 1;
        self.routes_dirty = true;
        self.maker_dirty = true;
    }

    fn ensure_routes(&mut self) {
        if self.routes_dirty {
            self.unicast_all = routes::unicast(&self.topo, self.config.name, false);
            self.broadcast_all.clear();
            self.routes_dirty = false;
        }
    }

    fn schedule_update(&mut self, peer: Option<PeerName>, now: Instant) {
        if let Some(p) = peer {
            self.pending_update.insert(p);
        }
        if self.update_due.is_none() {
            self.update_due = Some(now + TOPOLOGY_UPDATE_DELAY);
        }
    }

    fn run_maker(&mut self, now: Instant) {
        if !self.maker_dirty && self.maker_due.is_none_or(|t| t > now) {
            return;
        }
        self.maker_dirty = false;
        let ours: Vec<OurConn> = self
            .by_peer
            .iter()
            .filter_map(|(peer, key)| {
                let c = self.conns.get(key)?;
                Some(OurConn {
                    peer: *peer,
                    addr: c.addr,
                    outbound: c.outbound,
                })
            })
            .collect();
        let (attempts, next) = self.maker.check(&ours, &self.topo, now);
        self.maker_due = next;
        let mut refused = false;
        for attempt in attempts {
            let limit = self.config.conn_limit;
            if limit != 0 && self.by_peer.len() >= limit {
                let err = format!("Connection limit reached ({limit})");
                let rng = &mut self.rng;
                self.maker.attempt_failed(attempt.addr, &err, now, rng);
                refused = true;
                continue;
            }
            let key = self.new_conn(attempt.addr, true, attempt.accept_new_peer, now);
            self.info(format!("->[{}] attempting connection", attempt.addr));
            self.commands.push_back(Command::Dial {
                conn: key,
                addr: attempt.addr,
            });
        }
        if refused {
            // The refused targets now wait; this only picks up their retry times.
            let (again, next) = self.maker.check(&ours, &self.topo, now);
            debug_assert!(again.is_empty());
            self.maker_due = next;
        }
    }

    fn info(&mut self, message: String) {
        self.events.push_back(Event {
            warning: false,
            message,
        });
    }

    fn warn(&mut self, message: String) {
        self.events.push_back(Event {
            warning: true,
            message,
        });
    }
}

/// The `Attrs` of a connection in `/report`: the overlay's name and MTU.
/// The attributes Weave shows for the overlay carrying a connection: its name and MTU.
fn overlay_attrs(c: &Conn, overlay: &str) -> BTreeMap<String, serde_json::Value> {
    let mut attrs = BTreeMap::new();
    let mtu = match (overlay, &c.fastdp, &c.sleeve) {
        ("fastdp", Some(fc), _) => Some(fc.mtu()),
        ("sleeve", _, Some(sc)) => sc.mtu(),
        _ => return attrs,
    };
    attrs.insert("name".to_string(), serde_json::Value::from(overlay));
    if let Some(mtu) = mtu {
        attrs.insert("mtu".to_string(), serde_json::Value::from(mtu));
    }
    if let Some(fc) = &c.fastdp {
        attrs.insert(
            "fastdp_moves".to_string(),
            serde_json::Value::from(fc.moves()),
        );
    }
    attrs
}

/// The remote's identity from its feature map.
#[derive(Debug)]
struct RemoteFeatures {
    name: PeerName,
    nickname: String,
    uid: PeerUid,
    conn_id: ConnId,
    short_id: Option<ShortId>,
    trusted: bool,
}

/// Checks a feature map the way Weave does; the error names the field.
fn parse_features(f: &BTreeMap<String, String>) -> Result<RemoteFeatures, String> {
    for key in ["PeerNameFlavour", "Name", "NickName", "UID", "ConnID"] {
        if !f.contains_key(key) {
            return Err(format!("field {key} is missing"));
        }
    }
    let flavour = &f["PeerNameFlavour"];
    if flavour != "mac" {
        return Err(format!(
            "Peer name flavour mismatch (ours: 'mac', theirs: '{flavour}')"
        ));
    }
    let name: PeerName = f["Name"].parse().map_err(|e| format!("field Name: {e}"))?;
    let uid: u64 = f["UID"]
        .parse()
        .map_err(|_| format!("field UID: not a 64-bit number: {:?}", f["UID"]))?;
    let conn_id: u64 = f["ConnID"]
        .parse()
        .map_err(|_| format!("field ConnID: not a 64-bit number: {:?}", f["ConnID"]))?;
    let short_id = match f.get("ShortID") {
        None => None,
        Some(s) => {
            let v: u16 = s
                .parse()
                .map_err(|_| format!("field ShortID: not a number: {s:?}"))?;
            if v >= ShortId::COUNT {
                return Err(format!("field ShortID: {v} does not fit 12 bits"));
            }
            Some(ShortId(v))
        }
    };
    // Go's strconv.ParseBool, which Weave uses; a missing key means not trusted.
    let trusted = match f.get("Trusted").map(String::as_str) {
        None => false,
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
        Some(other) => return Err(format!("field Trusted: not a boolean: {other:?}")),
    };
    Ok(RemoteFeatures {
        trusted,
        name,
        nickname: f["NickName"].clone(),
        uid: PeerUid(uid),
        conn_id: ConnId(conn_id),
        short_id,
    })
}

/// Picks an unused short id: a few random tries, then a random free one.
fn pick_short_id(rng: &mut impl Rng, used: &BTreeSet<ShortId>) -> ShortId {
    for _ in 0..10 {
        let id = ShortId(rng.gen_range(0..ShortId::COUNT));
        if !used.contains(&id) {
            return id;
        }
    }
    let free: Vec<ShortId> = (0..ShortId::COUNT)
        .map(ShortId)
        .filter(|id| !used.contains(id))
        .collect();
    free.choose(rng).copied().unwrap_or(ShortId(0))
}

/// FNV-1a, 64 bit: the surrogate gossip de-duplication hash.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn captured_feature_map_parses() {
        let f = features(&[
            ("ConnID", "14611901497816135056"),
            ("Name", "aa:00:00:00:00:02"),
            ("NickName", "host2"),
            ("Overlays", "sleeve"),
            ("PeerNameFlavour", "mac"),
            ("ShortID", "3422"),
            ("Trusted", "false"),
            ("UID", "10347548252719273627"),
        ]);
        let r = parse_features(&f).unwrap();
        assert_eq!(r.name.to_string(), "aa:00:00:00:00:02");
        assert_eq!(r.short_id, Some(ShortId(3422)));
        assert_eq!(r.uid, PeerUid(10347548252719273627));
    }

    #[test]
    fn bad_feature_maps_name_the_field() {
        let base = [
            ("ConnID", "1"),
            ("Name", "aa:00:00:00:00:02"),
            ("NickName", "h"),
            ("PeerNameFlavour", "mac"),
            ("UID", "2"),
        ];
        let mut f = features(&base);
        f.remove("UID");
        assert!(parse_features(&f).unwrap_err().contains("UID"));
        let mut f = features(&base);
        f.insert("PeerNameFlavour".into(), "numeric".into());
        assert!(parse_features(&f).unwrap_err().contains("flavour"));
        let mut f = features(&base);
        f.insert("ShortID".into(), "4096".into());
        assert!(parse_features(&f).unwrap_err().contains("ShortID"));
        let mut f = features(&base);
        f.insert("Name".into(), "not-a-name".into());
        assert!(parse_features(&f).unwrap_err().contains("Name"));
    }

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
