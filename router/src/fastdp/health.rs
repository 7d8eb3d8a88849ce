//! Per-connection fast-datapath health: heartbeats through the tunnel, acknowledgements
//! over the mesh, and the decision whether a peer's unicast goes through the kernel
//! (`fastdp`) or stays on the sleeve, with the reason. Pure state; the mesh sends what it
//! returns.
//!
//! Two ways of judging, chosen by what the remote offers in its feature map:
//! - **Between weave-routers** (both offer [`ACK_FEATURE`]): every heartbeat is
//!   acknowledged over TCP with its length, so each end judges the direction it sends in.
//!   Small heartbeats go out every [`INTERVAL`]; full-size ones (Ethernet header plus the
//!   datapath MTU) every [`INTERVAL`] until one is acknowledged, then every
//!   [`FULL_INTERVAL`]. No acknowledgement for [`DOWN_AFTER`] moves the peer to the
//!   sleeve; small ones acknowledged while three full-size ones in a row are not also
//!   does, with the MTU as the reason. The first acknowledgement moves it back.
//! - **With Weave Net 2.8**, whose fast datapath acknowledges only the first heartbeat and
//!   judges by the heartbeats it receives, this end does the same: full-size heartbeats
//!   every 500 ms until acknowledged, then every 10 s; the peer is healthy once it
//!   acknowledged one and while its own heartbeats arrive within 60 s.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::ids::ConnUid;
use crate::wire::fastdp::{self as wire, Heartbeat};
use crate::wire::sleeve::ETHERNET_HEADER_LEN;

/// The feature-map key a weave-router offers when it acknowledges every heartbeat (value
/// [`ACK_VERSION`]).
pub const ACK_FEATURE: &str = "FastdpAcks";
/// The version of that acknowledgement protocol.
pub const ACK_VERSION: &str = "1";
/// Sub-tag of the fast datapath's heartbeat acknowledgement (Weave's
/// `FastDatapathHeartbeatAck`); between weave-routers it carries the heartbeat's sequence
/// number (8 bytes) and length (2 bytes), big-endian.
pub const SUBTAG_HEARTBEAT_ACK: u8 = 0;
/// Heartbeat interval between weave-routers (small ones always; full-size ones until
/// acknowledged, and while the peer is on the sleeve).
pub const INTERVAL: Duration = Duration::from_millis(500);
/// Full-size heartbeat interval while the peer is on the fast datapath.
pub const FULL_INTERVAL: Duration = Duration::from_secs(5);
/// No acknowledgement for this long moves a weave-router peer to the sleeve: with a
/// heartbeat every [`INTERVAL`], the move comes at most 2.5 s after the path broke.
pub const DOWN_AFTER: Duration = Duration::from_secs(2);
/// Full-size heartbeats outstanding (three lost and one on its way) while small ones are
/// acknowledged: the path does not carry the MTU.
const MTU_LOST: u32 = 4;
/// Weave Net's heartbeat interval until acknowledged.
pub const WEAVE_FAST_INTERVAL: Duration = Duration::from_millis(500);
/// Weave Net's heartbeat interval once acknowledged.
pub const WEAVE_SLOW_INTERVAL: Duration = Duration::from_secs(10);
/// Weave Net's heartbeat timeout.
pub const WEAVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which overlay carries a peer's unicast now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carrier {
    /// The kernel's fast datapath.
    Fastdp,
    /// The sleeve, for this reason.
    Sleeve(String),
}

/// Effects of the health state on its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send this VXLAN datagram (header and heartbeat frame) with DF set.
    Send {
        /// The peer's fast-datapath address.
        to: SocketAddrV4,
        /// The UDP payload.
        datagram: Vec<u8>,
    },
    /// Send a fast-datapath control message over the connection (sub-tag, data).
    Control(u8, Vec<u8>),
    /// The peer moved to this carrier.
    Moved(Carrier),
}

/// The fast datapath's state for one connection.
#[derive(Debug, Clone)]
pub struct FastdpConn {
    uid: ConnUid,
    to: SocketAddrV4,
    vni: u32,
    mtu: u16,
    acks: bool,
    carrier: Carrier,
    next_small: Instant,
    next_full: Instant,
    seq: u64,
    last_ack: Option<Instant>,
    full_acked: bool,
    fulls_unanswered: u32,
    weave_acked: bool,
    weave_heard: Option<Instant>,
    answered_first: bool,
    moves: u64,
}

impl FastdpConn {
    /// Starts the health check of a connection whose remote's fast datapath listens at
    /// `remote` (UDP [`wire::PORT`]); `vni` names us then the remote, `mtu` is the datapath
    /// MTU, and `acks` says whether the remote acknowledges every heartbeat.
    pub fn new(
        uid: ConnUid,
        remote: Ipv4Addr,
        vni: u32,
        mtu: u16,
        acks: bool,
        now: Instant,
    ) -> Self {
        FastdpConn {
            uid,
            to: SocketAddrV4::new(remote, wire::PORT),
            vni,
            mtu,
            acks,
            carrier: Self::waiting(),
            next_small: now,
            next_full: now,
            seq: 0,
            last_ack: None,
            full_acked: false,
            fulls_unanswered: 0,
            weave_acked: false,
            weave_heard: None,
            answered_first: false,
            moves: 0,
        }
    }

    /// Which overlay carries the peer's unicast.
    pub fn carrier(&self) -> &Carrier {
        &self.carrier
    }

    /// Whether the kernel carries the peer's unicast.
    pub fn is_fastdp(&self) -> bool {
        self.carrier == Carrier::Fastdp
    }

    /// The peer's fast-datapath address.
    pub fn remote(&self) -> SocketAddrV4 {
        self.to
    }

    /// The datapath MTU the heartbeats check.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Moves between carriers so far.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Short ids changed: frames to the peer carry a new VNI.
    pub fn set_vni(&mut self, vni: u32) {
        self.vni = vni;
    }

    /// The next time [`FastdpConn::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Instant {
        // Weave Net's heartbeats are all full-size: no small ones to schedule.
        let mut t = if self.acks {
            self.next_small.min(self.next_full)
        } else {
            self.next_full
        };
        if self.is_fastdp() {
            if let Some(deadline) = self.deadline() {
                t = t.min(deadline);
            }
        }
        t
    }

    /// When the peer leaves the fast datapath unless something arrives first.
    fn deadline(&self) -> Option<Instant> {
        if self.acks {
            Some(self.last_ack? + DOWN_AFTER)
        } else {
            Some(self.weave_heard? + WEAVE_TIMEOUT)
        }
    }

    /// Runs due timers: sends heartbeats and notices silence.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if self.acks {
            if self.next_small <= now {
                self.next_small = now + INTERVAL;
                self.send(wire::SEQ_HEARTBEAT_LEN, out);
            }
            if self.next_full <= now {
                self.next_full = now
                    + if self.is_fastdp() {
                        FULL_INTERVAL
                    } else {
                        INTERVAL
                    };
                self.send(self.full_len(), out);
                self.fulls_unanswered = self.fulls_unanswered.saturating_add(1);
            }
        } else if self.next_full <= now {
            // Weave's forwarder sends only full-size heartbeats.
            self.next_full = now
                + if self.weave_acked {
                    WEAVE_SLOW_INTERVAL
                } else {
                    WEAVE_FAST_INTERVAL
                };
            self.send(self.full_len(), out);
        }
        self.judge(now, out);
    }

    /// A heartbeat for this connection arrived through the tunnel.
    pub fn handle_heartbeat(&mut self, hb: Heartbeat, now: Instant, out: &mut Vec<Effect>) {
        if hb.uid != self.uid {
            return;
        }
        if self.acks {
            let mut data = hb.seq.unwrap_or(0).to_be_bytes().to_vec();
            data.extend_from_slice(&(hb.len as u16).to_be_bytes());
            out.push(Effect::Control(SUBTAG_HEARTBEAT_ACK, data));
            return;
        }
        self.weave_heard = Some(now);
        if !self.answered_first {
            self.answered_first = true;
            out.push(Effect::Control(SUBTAG_HEARTBEAT_ACK, Vec::new()));
        }
        self.judge(now, out);
    }

    /// A fast-datapath control message arrived over the connection.
    pub fn handle_control(&mut self, subtag: u8, data: &[u8], now: Instant, out: &mut Vec<Effect>) {
        if subtag != SUBTAG_HEARTBEAT_ACK {
            return;
        }
        if self.acks {
            let Some(len) = data.get(8..10) else {
                return;
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            if self
                .last_ack
                .is_none_or(|t| now.saturating_duration_since(t) >= DOWN_AFTER)
            {
                // The path is back after a silence: the full-size heartbeats lost during
                // it say nothing about the MTU.
                self.fulls_unanswered = 0;
            }
            self.last_ack = Some(now);
            if len >= self.full_len() {
                self.full_acked = true;
                self.fulls_unanswered = 0;
            }
        } else {
            if !self.weave_acked {
                // As Weave's forwarder does on the acknowledgement: slow heartbeats now.
                self.next_full = now + WEAVE_SLOW_INTERVAL;
            }
            self.weave_acked = true;
            if self.weave_heard.is_none() {
                // Weave acknowledges the first heartbeat it hears; its own may still be on
                // the way. Count the acknowledgement as hearing from it.
                self.weave_heard = Some(now);
            }
        }
        self.judge(now, out);
    }

    fn full_len(&self) -> usize {
        ETHERNET_HEADER_LEN + usize::from(self.mtu)
    }

    fn send(&mut self, len: usize, out: &mut Vec<Effect>) {
        self.seq += 1;
        let frame = wire::heartbeat_frame(self.uid, len, self.seq);
        out.push(Effect::Send {
            to: self.to,
            datagram: wire::encapsulate(self.vni, &frame),
        });
    }

    /// Decides the carrier from what was heard, and reports a change.
    fn judge(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let next = self.verdict(now);
        let moved = matches!(next, Carrier::Fastdp) != self.is_fastdp();
        self.carrier = next;
        if moved {
            // A new reason on the sleeve is shown, but only a change of overlay is a move.
            self.moves += 1;
            out.push(Effect::Moved(self.carrier.clone()));
        }
    }

    fn verdict(&self, now: Instant) -> Carrier {
        let ago = |t: Instant| now.saturating_duration_since(t);
        if self.acks {
            let Some(last) = self.last_ack else {
                return Self::waiting();
            };
            if ago(last) >= DOWN_AFTER {
                return Carrier::Sleeve(format!(
                    "no heartbeat acknowledged for {}s",
                    DOWN_AFTER.as_secs()
                ));
            }
            if self.fulls_unanswered >= MTU_LOST {
                return Carrier::Sleeve(format!(
                    "frames of {} bytes do not reach the peer (MTU {})",
                    self.full_len(),
                    self.mtu
                ));
            }
            if self.full_acked {
                Carrier::Fastdp
            } else {
                Self::waiting()
            }
        } else {
            if !self.weave_acked {
                return Self::waiting();
            }
            match self.weave_heard {
                Some(t) if ago(t) < WEAVE_TIMEOUT => Carrier::Fastdp,
                _ => Carrier::Sleeve(format!(
                    "no heartbeat from the peer for {}s",
                    WEAVE_TIMEOUT.as_secs()
                )),
            }
        }
    }

    fn waiting() -> Carrier {
        Carrier::Sleeve("waiting for the first heartbeat acknowledgement".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two weave-router ends joined by a tunnel that carries frames up to `path` bytes
    /// (0 carries nothing) and a TCP connection that always works.
    struct Pair {
        a: FastdpConn,
        b: FastdpConn,
        now: Instant,
        path: usize,
        moves_a: Vec<(Duration, Carrier)>,
        t0: Instant,
    }

    impl Pair {
        fn new(acks: bool) -> Self {
            let t0 = Instant::now();
            let uid = ConnUid(99);
            Pair {
                a: FastdpConn::new(uid, Ipv4Addr::new(10, 0, 0, 2), 1, 1438, acks, t0),
                b: FastdpConn::new(uid, Ipv4Addr::new(10, 0, 0, 1), 2, 1438, acks, t0),
                now: t0,
                path: usize::MAX,
                moves_a: Vec::new(),
                t0,
            }
        }

        /// Runs both ends in 10 ms steps for `d`.
        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                let (mut oa, mut ob) = (Vec::new(), Vec::new());
                self.a.handle_timeout(self.now, &mut oa);
                self.b.handle_timeout(self.now, &mut ob);
                for _ in 0..4 {
                    let (mut na, mut nb) = (Vec::new(), Vec::new());
                    self.deliver(std::mem::take(&mut oa), true, &mut nb, &mut na);
                    self.deliver(std::mem::take(&mut ob), false, &mut na, &mut nb);
                    oa = na;
                    ob = nb;
                }
                self.now += Duration::from_millis(10);
            }
        }

        fn deliver(
            &mut self,
            effects: Vec<Effect>,
            from_a: bool,
            to_out: &mut Vec<Effect>,
            own_out: &mut Vec<Effect>,
        ) {
            let _ = own_out;
            for e in effects {
                let to = if from_a { &mut self.b } else { &mut self.a };
                match e {
                    Effect::Send { datagram, .. } => {
                        let (_, frame) = wire::decapsulate(&datagram).unwrap();
                        if frame.len() <= self.path {
                            let hb = wire::parse_heartbeat(frame).unwrap();
                            to.handle_heartbeat(hb, self.now, to_out);
                        }
                    }
                    Effect::Control(st, data) => to.handle_control(st, &data, self.now, to_out),
                    Effect::Moved(c) => {
                        if from_a {
                            self.moves_a.push((self.now - self.t0, c));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn weave_routers_go_fastdp_at_once_and_fall_back_within_three_seconds() {
        let mut p = Pair::new(true);
        p.run(Duration::from_millis(100));
        assert!(p.a.is_fastdp() && p.b.is_fastdp(), "{:?}", p.a.carrier());

        p.run(Duration::from_secs(10));
        assert_eq!(p.moves_a.len(), 1, "steady: {:?}", p.moves_a);

        let broke = p.now - p.t0;
        p.path = 0;
        p.run(Duration::from_secs(4));
        let (when, carrier) = p.moves_a.last().unwrap().clone();
        assert!(
            matches!(&carrier, Carrier::Sleeve(r) if r.starts_with("no heartbeat acknowledged")),
            "{carrier:?}"
        );
        let took = when - broke;
        assert!(took <= Duration::from_millis(2600), "moved after {took:?}");
        assert!(took >= DOWN_AFTER - INTERVAL, "moved after {took:?}");

        let healed = p.now - p.t0;
        p.path = usize::MAX;
        p.run(Duration::from_secs(2));
        let (when, carrier) = p.moves_a.last().unwrap().clone();
        assert_eq!(carrier, Carrier::Fastdp);
        assert!(when - healed <= INTERVAL + Duration::from_millis(20));
        assert_eq!(p.a.moves(), 3);
    }

    #[test]
    fn a_path_below_the_mtu_keeps_the_peer_on_the_sleeve_and_says_so() {
        let mut p = Pair::new(true);
        p.path = 1000;
        p.run(Duration::from_secs(5));
        let Carrier::Sleeve(reason) = p.a.carrier() else {
            panic!("fastdp over a path that drops full frames");
        };
        assert_eq!(
            reason,
            "frames of 1452 bytes do not reach the peer (MTU 1438)"
        );
        assert!(p.moves_a.iter().all(|(_, c)| *c != Carrier::Fastdp));

        // The MTU shrinks later: the peer leaves once three full-size heartbeats are lost.
        let mut p = Pair::new(true);
        p.run(Duration::from_secs(1));
        assert!(p.a.is_fastdp());
        p.path = 1000;
        p.run(Duration::from_secs(22));
        assert!(
            matches!(p.a.carrier(), Carrier::Sleeve(r) if r.contains("(MTU 1438)")),
            "{:?}",
            p.a.carrier()
        );
    }

    #[test]
    fn after_an_outage_lost_full_frames_are_not_taken_for_an_mtu_problem() {
        let mut p = Pair::new(true);
        p.run(Duration::from_secs(1));
        p.path = 0;
        p.run(Duration::from_secs(10));
        p.path = usize::MAX;
        p.run(Duration::from_secs(1));
        assert!(p.a.is_fastdp(), "{:?}", p.moves_a);
        assert!(
            !p.moves_a
                .iter()
                .any(|(_, c)| matches!(c, Carrier::Sleeve(r) if r.contains("MTU"))),
            "{:?}",
            p.moves_a
        );
    }

    #[test]
    fn small_heartbeats_between_weave_routers_are_small() {
        let t0 = Instant::now();
        let mut c = FastdpConn::new(ConnUid(1), Ipv4Addr::LOCALHOST, 7, 1438, true, t0);
        let mut out = Vec::new();
        c.handle_timeout(t0, &mut out);
        let sizes: Vec<usize> = out
            .iter()
            .filter_map(|e| match e {
                Effect::Send { datagram, .. } => Some(datagram.len()),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, vec![8 + 32, 8 + 1452]);
    }

    #[test]
    fn with_weave_net_the_first_heartbeat_is_acked_and_silence_takes_a_minute() {
        let t0 = Instant::now();
        let mut us = FastdpConn::new(ConnUid(5), Ipv4Addr::LOCALHOST, 7, 1376, false, t0);
        let mut out = Vec::new();
        us.handle_timeout(t0, &mut out);
        assert!(matches!(&out[..], [Effect::Send { datagram, .. }] if datagram.len() == 8 + 1390));
        // Weave Net hears it and acknowledges (no payload); then its own heartbeat comes.
        out.clear();
        us.handle_control(SUBTAG_HEARTBEAT_ACK, &[], t0, &mut out);
        assert_eq!(out, vec![Effect::Moved(Carrier::Fastdp)]);
        out.clear();
        let hb = wire::parse_heartbeat(&wire::heartbeat_frame(ConnUid(5), 1390, 0)).unwrap();
        us.handle_heartbeat(hb, t0, &mut out);
        us.handle_heartbeat(hb, t0 + Duration::from_secs(1), &mut out);
        assert_eq!(
            out,
            vec![Effect::Control(SUBTAG_HEARTBEAT_ACK, Vec::new())],
            "Weave is acknowledged once, without payload"
        );
        // Slow heartbeats now.
        out.clear();
        us.handle_timeout(t0 + Duration::from_secs(1), &mut out);
        assert!(out.is_empty(), "{} effects", out.len());
        us.handle_timeout(t0 + Duration::from_secs(11), &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        us.handle_timeout(t0 + Duration::from_secs(60), &mut out);
        assert!(us.is_fastdp(), "59 s of silence is still fine for Weave");
        us.handle_timeout(t0 + Duration::from_secs(62), &mut out);
        assert!(matches!(us.carrier(), Carrier::Sleeve(r) if r.contains("60s")));
    }

    #[test]
    fn heartbeats_of_another_connection_are_ignored() {
        let t0 = Instant::now();
        let mut us = FastdpConn::new(ConnUid(5), Ipv4Addr::LOCALHOST, 7, 1376, true, t0);
        let hb = wire::parse_heartbeat(&wire::heartbeat_frame(ConnUid(6), 100, 1)).unwrap();
        let mut out = Vec::new();
        us.handle_heartbeat(hb, t0, &mut out);
        assert!(out.is_empty());
    }
}
