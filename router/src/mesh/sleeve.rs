//! The sleeve overlay's per-connection control: UDP heartbeats carrying the connection UID,
//! `ConnectionEstablished`, the fragmentation test and path-MTU discovery, as Weave Net
//! 2.8's sleeve runs them. Pure state; the mesh sends what it returns.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ids::{ConnUid, PeerName};
use crate::mesh::rtt::{RttSummary, RttWindow};
use crate::wire::sleeve::{
    self as wire, SleeveFrame, SpecialFrame, FAST_HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, MIN_PMTU,
    SLOW_HEARTBEAT_INTERVAL,
};

/// How long a PMTU probe may go unanswered before a smaller one is tried.
pub const PMTU_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often an established connection times a round trip (see [`crate::mesh::rtt`]).
pub const RTT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A round-trip probe unanswered this long is counted lost.
pub const RTT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The candidate MTU of the first round-trip probe: the smallest, which every path carries
/// and which the MTU search has finished with by the time round trips are timed. Each probe
/// announces the next of [`RTT_PROBE_SIZES`] sizes from here, and the answer echoes it, so
/// a late answer to an earlier probe is not taken for the current one.
const RTT_PROBE_MTU: u16 = MIN_PMTU as u16;
/// How many probe sizes take turns.
const RTT_PROBE_SIZES: u16 = 16;
/// Sub-tags of the sleeve's control messages (tag 7, overlay 0).
pub mod subtag {
    /// The remote hears our heartbeats.
    pub const CONNECTION_ESTABLISHED: u8 = 1;
    /// The remote received our fragmentation test.
    pub const FRAGMENTATION_RECEIVED: u8 = 2;
    /// The remote received our PMTU probe; a big-endian u16 MTU follows.
    pub const PMTU_VERIFIED: u8 = 3;
}

/// The pod MTU a path of `underlay_mtu` carries: 1438 on 1500 bytes, 1414 encrypted.
pub fn mtu_for_underlay(underlay_mtu: u16, encrypted: bool) -> u16 {
    wire::mtu_for_underlay(usize::from(underlay_mtu), encrypted).map_or(0, |m| m as u16)
}

/// Builds a sleeve datagram from `sender` carrying one frame of ours for `dst`.
fn datagram(sender: PeerName, dst: PeerName, frame: &[u8]) -> Vec<u8> {
    let frame = SleeveFrame {
        src: sender,
        dst,
        frame,
    };
    wire::encode_packet(sender, &[frame]).expect("one frame under 64 KiB always encodes")
}

/// A UDP datagram the mesh wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp {
    /// The peer it is for, whose session seals it when the sleeve is encrypted.
    pub peer: PeerName,
    /// Destination.
    pub to: SocketAddr,
    /// Whether to send it with DF set (heartbeats, probes) or let it fragment.
    pub df: bool,
    /// The sleeve datagram.
    pub datagram: Vec<u8>,
}

/// Effects of the sleeve state on its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send a UDP datagram.
    Udp(Udp),
    /// Send a control message over the connection's TCP stream (sub-tag, data).
    Control(u8, Vec<u8>),
    /// The remote confirmed it hears us: the connection is established.
    Established,
    /// Path MTU verified at this value.
    MtuVerified(u16),
    /// The remote received our fragmentation test: the path reassembles fragments.
    FragmentsPass,
    /// The sleeve gives up: end the connection with this reason.
    Fail(String),
}

/// The sleeve's state for one connection.
#[derive(Debug, Clone)]
pub struct SleeveConn {
    ourself: PeerName,
    remote: PeerName,
    uid: ConnUid,
    udp: Option<SocketAddr>,
    heard: bool,
    confirmed: bool,
    next_heartbeat: Instant,
    deadline: Instant,
    max_mtu: u16,
    lo: u16,
    hi: u16,
    probing: Option<(u16, Instant)>,
    mtu: Option<u16>,
    frag_ok: bool,
    /// When the next round-trip probe goes out.
    next_rtt_probe: Instant,
    /// The outstanding round-trip probe: its announced MTU and when it was sent.
    rtt_probe: Option<(u16, Instant)>,
    /// Round-trip probes sent.
    rtt_sent: u16,
    rtt: RttWindow,
    rtt_lost: u64,
}

impl SleeveConn {
    /// Starts the sleeve on a new connection; `udp` is known for outbound connections (the
    /// peer's TCP address), learned from heartbeats for inbound ones.
    pub fn new(
        ourself: PeerName,
        remote: PeerName,
        uid: ConnUid,
        udp: Option<SocketAddr>,
        max_mtu: u16,
        now: Instant,
    ) -> Self {
        SleeveConn {
            ourself,
            remote,
            uid,
            udp,
            heard: false,
            confirmed: false,
            next_heartbeat: now,
            deadline: now + HEARTBEAT_TIMEOUT,
            max_mtu,
            lo: MIN_PMTU as u16,
            hi: max_mtu,
            probing: None,
            mtu: None,
            frag_ok: false,
            next_rtt_probe: now,
            rtt_probe: None,
            rtt_sent: 0,
            rtt: RttWindow::default(),
            rtt_lost: 0,
        }
    }

    /// Round-trip percentiles over the recent probes, once one was answered.
    pub fn rtt(&self) -> Option<RttSummary> {
        let mut summary = self.rtt.summary()?;
        summary.lost = self.rtt_lost;
        Some(summary)
    }

    /// Round-trip probes that went unanswered.
    pub fn rtt_lost(&self) -> u64 {
        self.rtt_lost
    }

    /// Whether round trips are being timed: established, MTU search over.
    fn timing_rtt(&self) -> bool {
        self.confirmed && self.mtu.is_some() && self.probing.is_none() && self.udp.is_some()
    }

    /// The remote's UDP address, once known.
    pub fn udp(&self) -> Option<SocketAddr> {
        self.udp
    }

    /// The verified MTU, once known.
    pub fn mtu(&self) -> Option<u16> {
        self.mtu
    }

    /// Whether the remote confirmed it hears our heartbeats.
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// The next time [`SleeveConn::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.deadline;
        if self.udp.is_some() {
            t = t.min(self.next_heartbeat);
        }
        if let Some((_, sent)) = self.probing {
            t = t.min(sent + PMTU_PROBE_TIMEOUT);
        }
        if self.timing_rtt() {
            t = t.min(self.next_rtt_probe);
        }
        t
    }

    /// Runs due timers.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if self.deadline <= now {
            out.push(Effect::Fail(format!(
                "no UDP heartbeat for {}s",
                HEARTBEAT_TIMEOUT.as_secs()
            )));
            return;
        }
        if let Some(to) = self.udp {
            if self.next_heartbeat <= now {
                self.next_heartbeat = now
                    + if self.confirmed {
                        SLOW_HEARTBEAT_INTERVAL
                    } else {
                        FAST_HEARTBEAT_INTERVAL
                    };
                out.push(self.udp_frame(to, true, &wire::heartbeat_frame(self.uid)));
            }
        }
        if let Some((candidate, sent)) = self.probing {
            if sent + PMTU_PROBE_TIMEOUT <= now {
                // Unanswered: the path does not carry it. Search below.
                self.hi = candidate.saturating_sub(1).max(self.lo);
                self.probe(now, out);
            }
        }
        if self.timing_rtt() && self.next_rtt_probe <= now {
            self.next_rtt_probe = now + RTT_PROBE_INTERVAL;
            match self.rtt_probe {
                Some((_, sent)) if now.saturating_duration_since(sent) < RTT_PROBE_TIMEOUT => {}
                outstanding => {
                    if outstanding.is_some() {
                        self.rtt_lost += 1;
                    }
                    let size = RTT_PROBE_MTU + self.rtt_sent % RTT_PROBE_SIZES;
                    self.rtt_sent = self.rtt_sent.wrapping_add(1);
                    if let (Some(to), Ok(probe)) =
                        (self.udp, wire::pmtu_probe_frame(usize::from(size)))
                    {
                        self.rtt_probe = Some((size, now));
                        out.push(self.udp_frame(to, true, &probe));
                    }
                }
            }
        }
    }

    /// A special frame arrived from `from` with the remote's name as frame source.
    pub fn handle_special(
        &mut self,
        from: SocketAddr,
        special: SpecialFrame,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        match special {
            SpecialFrame::Heartbeat(uid) => {
                if uid != self.uid {
                    return;
                }
                self.deadline = now + HEARTBEAT_TIMEOUT;
                let first_address = self.udp.is_none();
                self.udp = Some(from);
                if !self.heard {
                    self.heard = true;
                    out.push(Effect::Control(subtag::CONNECTION_ESTABLISHED, Vec::new()));
                }
                if first_address {
                    // The inbound side answers as soon as it knows where to.
                    self.next_heartbeat = now;
                    self.handle_timeout(now, out);
                }
            }
            SpecialFrame::FragTest => {
                out.push(Effect::Control(subtag::FRAGMENTATION_RECEIVED, Vec::new()))
            }
            SpecialFrame::PmtuProbe { candidate_mtu } => {
                let mtu = u16::try_from(candidate_mtu).unwrap_or(u16::MAX);
                out.push(Effect::Control(
                    subtag::PMTU_VERIFIED,
                    mtu.to_be_bytes().to_vec(),
                ));
            }
        }
    }

    /// A sleeve control message arrived over TCP.
    pub fn handle_control(&mut self, subtag: u8, data: &[u8], now: Instant, out: &mut Vec<Effect>) {
        match subtag {
            subtag::CONNECTION_ESTABLISHED => {
                if self.confirmed {
                    return;
                }
                self.confirmed = true;
                self.next_heartbeat = now + SLOW_HEARTBEAT_INTERVAL;
                out.push(Effect::Established);
                if let Some(to) = self.udp {
                    out.push(self.udp_frame(to, false, &wire::frag_test_frame()));
                }
                self.probe(now, out);
            }
            subtag::FRAGMENTATION_RECEIVED if !self.frag_ok => {
                self.frag_ok = true;
                out.push(Effect::FragmentsPass);
            }
            subtag::PMTU_VERIFIED => {
                let Some(bytes) = data.get(..2) else {
                    return;
                };
                let mtu = u16::from_be_bytes([bytes[0], bytes[1]]);
                if self.probing.is_none() {
                    // Only the outstanding timing probe's own size counts; anything else is a
                    // late answer and changes nothing.
                    if let Some((size, sent)) = self.rtt_probe {
                        if size == mtu {
                            self.rtt_probe = None;
                            let us = now.saturating_duration_since(sent).as_micros();
                            self.rtt.push(u32::try_from(us).unwrap_or(u32::MAX));
                        }
                    }
                    return;
                }
                let Some((candidate, _)) = self.probing else {
                    return;
                };
                if mtu != candidate {
                    return;
                }
                self.probing = None;
                self.lo = mtu;
                if self.mtu.is_none_or(|m| mtu > m) {
                    self.mtu = Some(mtu);
                    out.push(Effect::MtuVerified(mtu));
                }
                if self.lo < self.hi {
                    self.probe(now, out);
                }
            }
            _ => {}
        }
    }

    /// Sends a probe halfway up the remaining range (the top of it first).
    fn probe(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let Some(to) = self.udp else {
            return;
        };
        if self.mtu.is_some_and(|m| m >= self.hi) || self.lo > self.hi {
            self.probing = None;
            return;
        }
        let candidate = if self.probing.is_none() && self.mtu.is_none() && self.hi == self.max_mtu {
            self.hi
        } else {
            self.lo + (self.hi - self.lo).div_ceil(2)
        };
        if self.mtu.is_none() && usize::from(candidate) <= MIN_PMTU {
            self.mtu = Some(MIN_PMTU as u16);
            out.push(Effect::MtuVerified(MIN_PMTU as u16));
            self.probing = None;
            return;
        }
        let Ok(probe) = wire::pmtu_probe_frame(usize::from(candidate)) else {
            // A candidate whose probe would read as another special frame: skip past it.
            self.hi = candidate - 1;
            return self.probe(now, out);
        };
        self.probing = Some((candidate, now));
        out.push(self.udp_frame(to, true, &probe));
    }

    fn udp_frame(&self, to: SocketAddr, df: bool, frame: &[u8]) -> Effect {
        Effect::Udp(Udp {
            peer: self.remote,
            to,
            df,
            datagram: datagram(self.ourself, self.remote, frame),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    #[test]
    fn captured_heartbeat_datagram_is_what_we_build() {
        // Frame 15 of three-peers-plain: host2 -> host1, ConnUID 340c5ee3f27e8a47.
        let d = datagram(
            "aa:00:00:00:00:02".parse().unwrap(),
            "aa:00:00:00:00:01".parse().unwrap(),
            &wire::heartbeat_frame(ConnUid(0x340c5ee3f27e8a47)),
        );
        let expected = "aa0000000002aa0000000002aa00000000010016\
                        0000000000000000000000000000340c5ee3f27e8a47";
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        assert_eq!(mtu_for_underlay(1500, false), 1438);
        assert_eq!(mtu_for_underlay(1500, true), 1414);
    }

    /// Runs two sleeve ends against each other over a path that carries `path_mtu`.
    fn handshake(path_mtu: u16) -> (SleeveConn, SleeveConn, Vec<String>) {
        let (a, b, log, _) = handshake_until(path_mtu);
        (a, b, log)
    }

    /// [`handshake`], also returning the simulated time it ended at.
    fn handshake_until(path_mtu: u16) -> (SleeveConn, SleeveConn, Vec<String>, Instant) {
        let t0 = Instant::now();
        let a_addr: SocketAddr = "10.0.0.1:6783".parse().unwrap();
        let b_addr: SocketAddr = "10.0.0.2:6783".parse().unwrap();
        let uid = ConnUid(42);
        let mut a = SleeveConn::new(name(1), name(2), uid, Some(b_addr), 1438, t0);
        let mut b = SleeveConn::new(name(2), name(1), uid, None, 1438, t0);
        let mut log = Vec::new();
        let mut now = t0;
        for _ in 0..200 {
            let mut out_a = Vec::new();
            let mut out_b = Vec::new();
            a.handle_timeout(now, &mut out_a);
            b.handle_timeout(now, &mut out_b);
            // Deliver until quiet.
            for _ in 0..20 {
                if out_a.is_empty() && out_b.is_empty() {
                    break;
                }
                let (mut next_a, mut next_b) = (Vec::new(), Vec::new());
                deliver(
                    std::mem::take(&mut out_a),
                    &mut b,
                    &mut next_b,
                    a_addr,
                    path_mtu,
                    now,
                    &mut log,
                );
                deliver(
                    std::mem::take(&mut out_b),
                    &mut a,
                    &mut next_a,
                    b_addr,
                    path_mtu,
                    now,
                    &mut log,
                );
                out_a = next_a;
                out_b = next_b;
            }
            now += Duration::from_millis(100);
        }
        (a, b, log, now)
    }

    fn deliver(
        effects: Vec<Effect>,
        to_end: &mut SleeveConn,
        to_out: &mut Vec<Effect>,
        from_addr: SocketAddr,
        path_mtu: u16,
        now: Instant,
        log: &mut Vec<String>,
    ) {
        for e in effects {
            log.push(format!("{e:?}").chars().take(60).collect());
            match e {
                Effect::Udp(u) => {
                    let frame = &u.datagram[20..];
                    if frame.len() > usize::from(path_mtu) + 14 && u.df {
                        continue;
                    }
                    to_end.handle_special(
                        from_addr,
                        SpecialFrame::parse(frame).unwrap(),
                        now,
                        to_out,
                    );
                }
                Effect::Control(st, data) => to_end.handle_control(st, &data, now, to_out),
                Effect::Established
                | Effect::MtuVerified(_)
                | Effect::FragmentsPass
                | Effect::Fail(_) => {}
            }
        }
    }

    #[test]
    fn both_ends_confirm_and_verify_the_full_mtu() {
        let (a, b, log) = handshake(1438);
        assert!(a.confirmed() && b.confirmed(), "{log:#?}");
        assert_eq!(a.mtu(), Some(1438));
        assert_eq!(b.mtu(), Some(1438));
        assert_eq!(b.udp(), Some("10.0.0.1:6783".parse().unwrap()));
    }

    #[test]
    fn a_smaller_path_mtu_is_found_by_search() {
        let (a, b, _) = handshake(1400);
        assert_eq!(a.mtu(), Some(1400));
        assert_eq!(b.mtu(), Some(1400));
    }

    #[test]
    fn silence_ends_the_connection() {
        let t0 = Instant::now();
        let mut a = SleeveConn::new(name(1), name(2), ConnUid(1), None, 1438, t0);
        let mut out = Vec::new();
        a.handle_timeout(t0 + HEARTBEAT_TIMEOUT, &mut out);
        assert!(matches!(out.as_slice(), [Effect::Fail(_)]));
    }

    #[test]
    fn heartbeats_with_another_uid_are_ignored() {
        let t0 = Instant::now();
        let mut a = SleeveConn::new(name(1), name(2), ConnUid(1), None, 1438, t0);
        let mut out = Vec::new();
        a.handle_special(
            "10.0.0.2:6783".parse().unwrap(),
            SpecialFrame::Heartbeat(ConnUid(2)),
            t0,
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(a.udp(), None);
    }

    #[test]
    fn established_ends_time_round_trips_with_small_probes() {
        let (mut a, mut b, log, now) = handshake_until(1438);
        // The handshake delivered everything at once: round trips of zero, about one a second.
        let s = a.rtt().expect("timed during the handshake");
        assert!(s.samples >= 10, "{s:?} {log:#?}");
        assert_eq!(s.max_us, 0);
        assert_eq!(a.mtu(), Some(1438), "timing leaves the MTU alone");

        // The next probe goes out a second later and is answered 3 ms after that.
        let at = now + RTT_PROBE_INTERVAL;
        let mut out = Vec::new();
        a.handle_timeout(at, &mut out);
        let Some(Effect::Udp(probe)) = out
            .iter()
            .find(|e| matches!(e, Effect::Udp(u) if u.datagram.len() > 100))
            .cloned()
        else {
            panic!("no probe in {out:?}");
        };
        assert!(probe.df);
        let mut answer = Vec::new();
        b.handle_special(
            "10.0.0.1:6783".parse().unwrap(),
            SpecialFrame::parse(&probe.datagram[20..]).unwrap(),
            at,
            &mut answer,
        );
        let [Effect::Control(st, data)] = answer.as_slice() else {
            panic!("{answer:?}");
        };
        assert_eq!(*st, subtag::PMTU_VERIFIED);
        let mut none = Vec::new();
        a.handle_control(*st, data, at + Duration::from_millis(3), &mut none);
        assert!(
            none.is_empty(),
            "an answered timing probe changes nothing else: {none:?}"
        );
        assert_eq!(a.rtt().unwrap().last_us, 3000);
        assert_eq!(a.mtu(), Some(1438));

        // A probe nobody answers is counted lost when the next one is due after the timeout.
        let mut out = Vec::new();
        a.handle_timeout(at + RTT_PROBE_INTERVAL, &mut out);
        assert_eq!(a.rtt_lost(), 0);
        a.handle_timeout(at + RTT_PROBE_INTERVAL + RTT_PROBE_TIMEOUT, &mut out);
        assert_eq!(a.rtt_lost(), 1);
        assert_eq!(a.rtt().unwrap().lost, 1);

        // The answer to the lost probe turns up late: it is not taken for the new one.
        let samples = a.rtt().unwrap().samples;
        let Some((outstanding, _)) = a.rtt_probe else {
            panic!("a new probe is out");
        };
        let late = (outstanding - 1).to_be_bytes();
        a.handle_control(
            subtag::PMTU_VERIFIED,
            &late,
            at + Duration::from_secs(7),
            &mut out,
        );
        assert_eq!(a.rtt().unwrap().samples, samples, "late answer ignored");
        let own = outstanding.to_be_bytes();
        a.handle_control(
            subtag::PMTU_VERIFIED,
            &own,
            at + Duration::from_secs(7),
            &mut out,
        );
        assert_eq!(
            a.rtt().unwrap().samples,
            samples + 1,
            "its own answer counts"
        );
    }
}
