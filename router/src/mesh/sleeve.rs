//! The sleeve overlay's per-connection control: UDP heartbeats carrying the connection UID,
//! `ConnectionEstablished`, the fragmentation test and path-MTU discovery, as Weave Net
//! 2.8's sleeve runs them. Pure state; the mesh sends what it returns.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ids::{ConnUid, PeerName};

/// Heartbeat interval until the remote confirms it hears us.
pub const FAST_HEARTBEAT: Duration = Duration::from_millis(500);
/// Heartbeat interval afterwards.
pub const SLOW_HEARTBEAT: Duration = Duration::from_secs(10);
/// Silence after which the sleeve gives the connection up.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a PMTU probe may go unanswered before a smaller one is tried.
pub const PMTU_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Smallest MTU the discovery settles for.
pub const MIN_MTU: u16 = 552;
/// Length of the fragmentation-test frame.
pub const FRAG_TEST_LEN: usize = 60001;
/// Bytes a sleeve datagram adds around an Ethernet frame: IPv4, UDP, sender name and frame
/// header.
pub const SLEEVE_OVERHEAD: u16 = 20 + 8 + 6 + 14;
/// Sub-tags of the sleeve's control messages (tag 7, overlay 0).
pub mod subtag {
    /// The remote hears our heartbeats.
    pub const CONNECTION_ESTABLISHED: u8 = 1;
    /// The remote received our fragmentation test.
    pub const FRAGMENTATION_RECEIVED: u8 = 2;
    /// The remote received our PMTU probe; a big-endian u16 MTU follows.
    pub const PMTU_VERIFIED: u8 = 3;
}

/// The pod MTU a path of `underlay_mtu` carries: 1438 on a 1500-byte underlay.
pub fn mtu_for_underlay(underlay_mtu: u16) -> u16 {
    underlay_mtu.saturating_sub(SLEEVE_OVERHEAD + 14)
}

/// What kind of special frame (all-zero Ethernet header) arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// A heartbeat with the sender's connection UID.
    Heartbeat(ConnUid),
    /// The 60001-byte fragmentation test.
    FragTest,
    /// A PMTU probe for this MTU.
    PmtuProbe(u16),
}

impl Special {
    /// Classifies a frame; `None` when it is not special.
    pub fn classify(frame: &[u8]) -> Option<Special> {
        if frame.len() < 14 || frame[..14].iter().any(|b| *b != 0) {
            return None;
        }
        match frame.len() {
            22 => Some(Special::Heartbeat(ConnUid(u64::from_be_bytes(
                frame[14..22].try_into().expect("eight bytes"),
            )))),
            FRAG_TEST_LEN => Some(Special::FragTest),
            n => u16::try_from(n - 14).ok().map(Special::PmtuProbe),
        }
    }
}

/// Builds a sleeve datagram carrying one frame.
pub fn datagram(sender: PeerName, src: PeerName, dst: PeerName, frame: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(20 + frame.len());
    d.extend(sender.to_bytes());
    d.extend(src.to_bytes());
    d.extend(dst.to_bytes());
    d.extend((frame.len() as u16).to_be_bytes());
    d.extend(frame);
    d
}

/// A heartbeat frame for `uid`.
pub fn heartbeat_frame(uid: ConnUid) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f.extend(uid.0.to_be_bytes());
    f
}

/// A UDP datagram the mesh wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp {
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
            lo: MIN_MTU,
            hi: max_mtu,
            probing: None,
            mtu: None,
            frag_ok: false,
        }
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
                        SLOW_HEARTBEAT
                    } else {
                        FAST_HEARTBEAT
                    };
                out.push(self.udp_frame(to, true, &heartbeat_frame(self.uid)));
            }
        }
        if let Some((candidate, sent)) = self.probing {
            if sent + PMTU_PROBE_TIMEOUT <= now {
                // Unanswered: the path does not carry it. Search below.
                self.hi = candidate.saturating_sub(1).max(self.lo);
                self.probe(now, out);
            }
        }
    }

    /// A special frame arrived from `from` with the remote's name as frame source.
    pub fn handle_special(
        &mut self,
        from: SocketAddr,
        special: Special,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        match special {
            Special::Heartbeat(uid) => {
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
            Special::FragTest => {
                out.push(Effect::Control(subtag::FRAGMENTATION_RECEIVED, Vec::new()))
            }
            Special::PmtuProbe(mtu) => {
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
                self.next_heartbeat = now + SLOW_HEARTBEAT;
                out.push(Effect::Established);
                if let Some(to) = self.udp {
                    out.push(self.udp_frame(to, false, &vec![0u8; FRAG_TEST_LEN]));
                }
                self.probe(now, out);
            }
            subtag::FRAGMENTATION_RECEIVED => self.frag_ok = true,
            subtag::PMTU_VERIFIED => {
                let Some(bytes) = data.get(..2) else {
                    return;
                };
                let mtu = u16::from_be_bytes([bytes[0], bytes[1]]);
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
        if self.mtu.is_none() && candidate <= MIN_MTU {
            self.mtu = Some(MIN_MTU);
            out.push(Effect::MtuVerified(MIN_MTU));
            self.probing = None;
            return;
        }
        self.probing = Some((candidate, now));
        out.push(self.udp_frame(to, true, &vec![0u8; usize::from(candidate) + 14]));
    }

    fn udp_frame(&self, to: SocketAddr, df: bool, frame: &[u8]) -> Effect {
        Effect::Udp(Udp {
            to,
            df,
            datagram: datagram(self.ourself, self.ourself, self.remote, frame),
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
            "aa:00:00:00:00:02".parse().unwrap(),
            "aa:00:00:00:00:01".parse().unwrap(),
            &heartbeat_frame(ConnUid(0x340c5ee3f27e8a47)),
        );
        let expected = "aa0000000002aa0000000002aa00000000010016\
                        0000000000000000000000000000340c5ee3f27e8a47";
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        assert_eq!(mtu_for_underlay(1500), 1438);
    }

    #[test]
    fn special_frames_classify_by_length() {
        assert_eq!(
            Special::classify(&heartbeat_frame(ConnUid(7))),
            Some(Special::Heartbeat(ConnUid(7)))
        );
        assert_eq!(
            Special::classify(&vec![0; FRAG_TEST_LEN]),
            Some(Special::FragTest)
        );
        assert_eq!(
            Special::classify(&vec![0; 1452]),
            Some(Special::PmtuProbe(1438))
        );
        let mut not = vec![0; 60];
        not[0] = 0xff;
        assert_eq!(Special::classify(&not), None);
    }

    /// Runs two sleeve ends against each other over a path that carries `path_mtu`.
    fn handshake(path_mtu: u16) -> (SleeveConn, SleeveConn, Vec<String>) {
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
        (a, b, log)
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
                        Special::classify(frame).unwrap(),
                        now,
                        to_out,
                    );
                }
                Effect::Control(st, data) => to_end.handle_control(st, &data, now, to_out),
                Effect::Established | Effect::MtuVerified(_) | Effect::Fail(_) => {}
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
            Special::Heartbeat(ConnUid(2)),
            t0,
            &mut out,
        );
        assert!(out.is_empty());
        assert_eq!(a.udp(), None);
    }
}
