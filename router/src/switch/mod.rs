//! Sans-IO forwarding: MAC learning with ageing and moves, and the forwarding decision for
//! frames from the local bridge and from peers, as Weave's sleeve makes it.
//!
//! Broadcast and unknown-unicast frames are flooded along the source peer's broadcast tree;
//! unicast frames go to the first hop towards the peer that owns the destination MAC;
//! frames for another peer arriving here are relayed; STP frames are dropped, and a frame
//! from a peer that carries one of our own MACs as its source is never passed back.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use crate::ids::PeerName;

/// How long a learned MAC stays without traffic.
pub const MAC_MAX_AGE: Duration = Duration::from_secs(10 * 60);
/// How often the cache is swept.
pub const MAC_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The broadcast address.
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    /// The bridge group address STP uses.
    pub const STP: Mac = Mac([0x01, 0x80, 0xc2, 0x00, 0x00, 0x00]);

    /// Reads the destination MAC of an Ethernet frame (`None` when shorter than 14 bytes).
    pub fn dst_of(frame: &[u8]) -> Option<Mac> {
        frame
            .get(0..6)
            .map(|b| Mac(b.try_into().expect("six bytes")))
    }

    /// Reads the source MAC of an Ethernet frame (`None` when shorter than 14 bytes).
    pub fn src_of(frame: &[u8]) -> Option<Mac> {
        if frame.len() < 14 {
            return None;
        }
        Some(Mac(frame[6..12].try_into().expect("six bytes")))
    }

    /// Group (broadcast or multicast) addresses have the low bit of the first octet set.
    pub fn is_group(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What learning a source MAC did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// First seen.
    New,
    /// Seen again at the same peer.
    Refreshed,
    /// Seen before at another peer: it moved.
    Moved {
        /// Where it was.
        from: PeerName,
    },
}

/// MAC → owning peer, with last-seen times. Hashed with foldhash rather than the
/// standard library's SipHash: the cache is looked up twice per frame, and foldhash's
/// per-process random seed still keeps MACs chosen by a pod from colliding on purpose.
#[derive(Debug, Default, Clone)]
pub struct MacCache {
    entries: HashMap<Mac, (PeerName, Instant), foldhash::fast::RandomState>,
}

impl MacCache {
    /// Records that `mac` was the source of a frame from `peer`.
    pub fn learn(&mut self, mac: Mac, peer: PeerName, now: Instant) -> Learned {
        match self.entries.insert(mac, (peer, now)) {
            None => Learned::New,
            Some((old, _)) if old == peer => Learned::Refreshed,
            Some((old, _)) => Learned::Moved { from: old },
        }
    }

    /// Takes `mac` at `peer`, last seen at `seen`, as another worker learned it, unless
    /// this cache saw it more recently; returns whether the entry changed.
    pub fn merge(&mut self, mac: Mac, peer: PeerName, seen: Instant) -> bool {
        match self.entries.get(&mac) {
            Some((_, have)) if *have >= seen => false,
            _ => {
                self.entries.insert(mac, (peer, seen));
                true
            }
        }
    }

    /// The peer that owns `mac`.
    pub fn lookup(&self, mac: Mac) -> Option<PeerName> {
        self.entries.get(&mac).map(|(p, _)| *p)
    }

    /// Forgets entries not seen for [`MAC_MAX_AGE`]; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < MAC_MAX_AGE);
        before - self.entries.len()
    }

    /// Forgets every MAC owned by `peer` (it left the mesh).
    pub fn forget_peer(&mut self, peer: PeerName) {
        self.entries.retain(|_, (p, _)| *p != peer);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries, for `/report`'s `MACs`.
    pub fn entries(&self) -> impl Iterator<Item = (Mac, PeerName, Instant)> + '_ {
        self.entries.iter().map(|(m, (p, t))| (*m, *p, *t))
    }
}

/// The routes the data plane forwards by: an immutable snapshot published by the control
/// plane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    /// Our own name.
    pub ourself: PeerName,
    /// Destination peer → first hop, over established symmetric connections.
    pub unicast: BTreeMap<PeerName, PeerName>,
    /// Broadcast source → neighbours to forward to.
    pub broadcast: BTreeMap<PeerName, Vec<PeerName>>,
}

/// Why a frame is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// Spanning-tree BPDU: never crosses the overlay.
    Stp,
    /// Addressed to a MAC on our own bridge; the bridge delivers it.
    LocalDestination,
    /// A peer sent us a frame whose source MAC is one of ours.
    LoopedBack,
    /// No route to the destination peer.
    NoRoute,
    /// The frame names a source peer we do not know a broadcast tree for.
    UnknownSource,
}

/// Where a frame goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Write it to our bridge (TAP).
    pub deliver_locally: bool,
    /// Send it to these next hops, each with this frame-header destination peer.
    pub forward: Vec<Hop>,
    /// What learning the source MAC did, for logs and invalidation.
    pub learned: Option<Learned>,
    /// Set when nothing at all is done with the frame.
    pub dropped: Option<DropReason>,
}

/// One next hop for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// The neighbour to send the datagram to.
    pub via: PeerName,
    /// The frame header's destination peer: the final peer for unicast, the next hop for
    /// broadcasts (as Weave writes it).
    pub dst: PeerName,
}

impl Decision {
    fn drop(reason: DropReason, learned: Option<Learned>) -> Self {
        Decision {
            deliver_locally: false,
            forward: Vec::new(),
            learned,
            dropped: Some(reason),
        }
    }
}

/// Decides what to do with a frame read from our bridge.
pub fn from_bridge(frame: &[u8], routes: &Routes, macs: &mut MacCache, now: Instant) -> Decision {
    let (Some(dst), Some(src)) = (Mac::dst_of(frame), Mac::src_of(frame)) else {
        return Decision::drop(DropReason::Runt, None);
    };
    if dst == Mac::STP {
        return Decision::drop(DropReason::Stp, None);
    }
    let learned = Some(macs.learn(src, routes.ourself, now));
    if !dst.is_group() {
        match macs.lookup(dst) {
            Some(owner) if owner == routes.ourself => {
                return Decision::drop(DropReason::LocalDestination, learned);
            }
            Some(owner) => {
                let Some(&via) = routes.unicast.get(&owner) else {
                    return Decision::drop(DropReason::NoRoute, learned);
                };
                return Decision {
                    deliver_locally: false,
                    forward: vec![Hop { via, dst: owner }],
                    learned,
                    dropped: None,
                };
            }
            None => {}
        }
    }
    flood(routes.ourself, routes, false, learned)
}

/// Decides what to do with a frame that arrived in a sleeve datagram with frame header
/// `src_peer` → `dst_peer`.
pub fn from_peer(
    frame: &[u8],
    src_peer: PeerName,
    dst_peer: PeerName,
    routes: &Routes,
    macs: &mut MacCache,
    now: Instant,
) -> Decision {
    let (Some(dst), Some(src)) = (Mac::dst_of(frame), Mac::src_of(frame)) else {
        return Decision::drop(DropReason::Runt, None);
    };
    if dst == Mac::STP {
        return Decision::drop(DropReason::Stp, None);
    }
    if macs.lookup(src) == Some(routes.ourself) {
        return Decision::drop(DropReason::LoopedBack, None);
    }
    let learned = Some(macs.learn(src, src_peer, now));
    if dst_peer != routes.ourself {
        // Unicast for someone else: relay towards it.
        let Some(&via) = routes.unicast.get(&dst_peer) else {
            return Decision::drop(DropReason::NoRoute, learned);
        };
        return Decision {
            deliver_locally: false,
            forward: vec![Hop { via, dst: dst_peer }],
            learned,
            dropped: None,
        };
    }
    if !dst.is_group() && macs.lookup(dst) == Some(routes.ourself) {
        return Decision {
            deliver_locally: true,
            forward: Vec::new(),
            learned,
            dropped: None,
        };
    }
    // Broadcast, multicast, or a unicast the sender flooded because it did not know the
    // MAC (we may know it elsewhere, but the tree reaches its owner either way): deliver
    // and continue down the source's tree.
    flood(src_peer, routes, true, learned)
}

fn flood(
    source: PeerName,
    routes: &Routes,
    deliver_locally: bool,
    learned: Option<Learned>,
) -> Decision {
    let Some(hops) = routes.broadcast.get(&source) else {
        if deliver_locally {
            return Decision {
                deliver_locally,
                forward: Vec::new(),
                learned,
                dropped: None,
            };
        }
        return Decision::drop(DropReason::UnknownSource, learned);
    };
    Decision {
        deliver_locally,
        forward: hops.iter().map(|h| Hop { via: *h, dst: *h }).collect(),
        learned,
        dropped: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend(src);
        f.extend([0x08, 0x00]);
        f.extend([0u8; 46]);
        f
    }

    /// host2 in the middle of host1 — host2 — host3 (us = 2).
    fn middle() -> Routes {
        Routes {
            ourself: name(2),
            unicast: [
                (name(1), name(1)),
                (name(3), name(3)),
                (name(2), PeerName::default()),
            ]
            .into(),
            broadcast: [
                (name(1), vec![name(3)]),
                (name(3), vec![name(1)]),
                (name(2), vec![name(1), name(3)]),
            ]
            .into(),
        }
    }

    const POD1: [u8; 6] = [0x2a, 0xfe, 0xaa, 0xa8, 0x75, 0xe9];
    const POD2: [u8; 6] = [0x46, 0xaf, 0xf0, 0x26, 0x53, 0xfc];
    const POD3: [u8; 6] = [0x96, 0x7b, 0x44, 0xe4, 0xf4, 0x77];

    #[test]
    fn broadcast_from_the_bridge_floods_to_all_neighbours() {
        let mut macs = MacCache::default();
        let d = from_bridge(
            &frame([0xff; 6], POD2),
            &middle(),
            &mut macs,
            Instant::now(),
        );
        assert!(!d.deliver_locally);
        assert_eq!(
            d.forward.iter().map(|h| h.via).collect::<Vec<_>>(),
            vec![name(1), name(3)]
        );
        assert_eq!(macs.lookup(Mac(POD2)), Some(name(2)));
    }

    #[test]
    fn relayed_broadcast_is_delivered_and_passed_down_the_tree() {
        // Frame 273/274 of the capture: host1's ARP reaches host2 and goes on to host3.
        let mut macs = MacCache::default();
        let d = from_peer(
            &frame([0xff; 6], POD1),
            name(1),
            name(2),
            &middle(),
            &mut macs,
            Instant::now(),
        );
        assert!(d.deliver_locally);
        assert_eq!(
            d.forward,
            vec![Hop {
                via: name(3),
                dst: name(3)
            }]
        );
    }

    #[test]
    fn unicast_for_a_far_peer_is_relayed_unchanged_in_its_header() {
        // Frames 299/300: pod1 -> pod3 with frame header dst host3, relayed by host2.
        let mut macs = MacCache::default();
        let now = Instant::now();
        macs.learn(Mac(POD3), name(3), now);
        let d = from_peer(
            &frame(POD3, POD1),
            name(1),
            name(3),
            &middle(),
            &mut macs,
            now,
        );
        assert!(!d.deliver_locally);
        assert_eq!(
            d.forward,
            vec![Hop {
                via: name(3),
                dst: name(3)
            }]
        );
    }

    #[test]
    fn flooded_unicast_for_a_mac_known_further_on_keeps_flooding() {
        // host1 did not know pod3 and flooded; host2 knows pod3 is at host3. The frame
        // must still reach host3.
        let mut macs = MacCache::default();
        let now = Instant::now();
        macs.learn(Mac(POD3), name(3), now);
        let d = from_peer(
            &frame(POD3, POD1),
            name(1),
            name(2),
            &middle(),
            &mut macs,
            now,
        );
        assert_eq!(
            d.forward,
            vec![Hop {
                via: name(3),
                dst: name(3)
            }]
        );
    }

    #[test]
    fn known_remote_unicast_from_the_bridge_goes_to_its_peer() {
        let mut routes = middle();
        routes.ourself = name(1);
        routes.unicast = [(name(2), name(2)), (name(3), name(2))].into();
        let mut macs = MacCache::default();
        let now = Instant::now();
        macs.learn(Mac(POD3), name(3), now);
        let d = from_bridge(&frame(POD3, POD1), &routes, &mut macs, now);
        assert_eq!(
            d.forward,
            vec![Hop {
                via: name(2),
                dst: name(3)
            }]
        );
    }

    #[test]
    fn stp_local_and_looped_frames_are_dropped() {
        let mut macs = MacCache::default();
        let now = Instant::now();
        let r = middle();
        assert_eq!(
            from_bridge(&frame(Mac::STP.0, POD2), &r, &mut macs, now).dropped,
            Some(DropReason::Stp)
        );
        macs.learn(Mac(POD2), name(2), now);
        let d = from_bridge(&frame(POD2, [2, 0, 0, 0, 0, 9]), &r, &mut macs, now);
        assert_eq!(d.dropped, Some(DropReason::LocalDestination));
        let d = from_peer(
            &frame([0xff; 6], POD2),
            name(1),
            name(2),
            &r,
            &mut macs,
            now,
        );
        assert_eq!(d.dropped, Some(DropReason::LoopedBack));
        assert_eq!(
            from_bridge(&[0u8; 10], &r, &mut macs, now).dropped,
            Some(DropReason::Runt)
        );
    }

    #[test]
    fn macs_move_and_age_out() {
        let mut macs = MacCache::default();
        let t0 = Instant::now();
        assert_eq!(macs.learn(Mac(POD1), name(1), t0), Learned::New);
        assert_eq!(macs.learn(Mac(POD1), name(1), t0), Learned::Refreshed);
        assert_eq!(
            macs.learn(Mac(POD1), name(3), t0),
            Learned::Moved { from: name(1) }
        );
        assert_eq!(macs.sweep(t0 + MAC_MAX_AGE - Duration::from_secs(1)), 0);
        assert_eq!(macs.sweep(t0 + MAC_MAX_AGE), 1);
        assert!(macs.is_empty());
    }

    #[test]
    fn merged_entries_keep_the_newest_sighting() {
        let mut macs = MacCache::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        assert!(macs.merge(Mac(POD1), name(1), t0));
        assert!(!macs.merge(Mac(POD1), name(3), t0), "not newer: kept");
        assert_eq!(macs.lookup(Mac(POD1)), Some(name(1)));
        assert!(macs.merge(Mac(POD1), name(3), t1), "newer: moved");
        assert_eq!(macs.lookup(Mac(POD1)), Some(name(3)));
        macs.learn(Mac(POD1), name(3), t1 + Duration::from_secs(5));
        assert!(
            !macs.merge(Mac(POD1), name(1), t1),
            "an older sighting never wins"
        );
        // A merged entry ages from when it was seen, not from when it was merged.
        assert!(macs.merge(Mac(POD2), name(1), t0));
        assert_eq!(macs.sweep(t0 + MAC_MAX_AGE), 1);
    }
}
