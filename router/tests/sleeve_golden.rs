//! Golden tests for the sleeve codec: every sleeve UDP datagram of the three-peer Weave Net
//! 2.8.1 capture, read from the pcap itself (IP fragments reassembled), parses into the frames
//! the dissection lists, classifies its special frames, and re-encodes to the captured bytes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;
use weave_router::ids::{ConnUid, PeerName};
use weave_router::wire::sleeve::{
    encode_packet, pack_frames, SleeveFrame, SleevePacket, SpecialFrame, FRAG_TEST_FRAME_LEN,
    MTU_FOR_1500, PORT, UNDERLAY_IP_UDP_LEN,
};

/// ConnUIDs of the two mesh connections (peers.json).
const UID_H1_H2: ConnUid = ConnUid(3750476922811746887);
const UID_H2_H3: ConnUid = ConnUid(16545433961484161739);

/// One sleeve datagram from the capture.
#[derive(Debug)]
struct Datagram {
    /// 1-based number of its (first) pcap frame, as the dissection counts.
    frame: u64,
    /// Whether the underlay IP header had DF set.
    df: bool,
    /// The UDP checksum field.
    udp_checksum: u16,
    /// The UDP payload.
    payload: Vec<u8>,
}

fn testdata(name: &str) -> Vec<u8> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn datagrams() -> Vec<Datagram> {
    sleeve_datagrams(&testdata("three-peers-plain.pcap"))
}

/// Dissection events of the sleeve kinds, grouped by frame and ordered within the datagram.
fn dissected() -> BTreeMap<u64, Vec<Json>> {
    let doc: Json = serde_json::from_slice(&testdata("three-peers-plain.dissect.json")).unwrap();
    let mut by_frame: BTreeMap<u64, Vec<Json>> = BTreeMap::new();
    for e in doc["events"].as_array().unwrap() {
        if e["kind"].as_str().unwrap().starts_with("sleeve-") {
            by_frame
                .entry(e["frame"].as_u64().unwrap())
                .or_default()
                .push(e.clone());
        }
    }
    for events in by_frame.values_mut() {
        events.sort_by_key(|e| e["frame_in_packet"].as_u64().unwrap());
    }
    by_frame
}

fn peer(s: &Json) -> PeerName {
    s.as_str().unwrap().parse().unwrap()
}

fn frames_of(d: &Datagram) -> (PeerName, Vec<SleeveFrame<'_>>) {
    let packet = SleevePacket::new_checked(&d.payload[..])
        .unwrap_or_else(|e| panic!("frame {}: {e}", d.frame));
    let sender = packet.sender();
    let frames = packet
        .into_frames()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("frame {}: {e}", d.frame));
    (sender, frames)
}

#[test]
fn capture_holds_the_expected_sleeve_traffic() {
    let datagrams = datagrams();
    let frames: usize = datagrams.iter().map(|d| frames_of(d).1.len()).sum();
    assert_eq!(datagrams.len(), 327);
    assert_eq!(frames, 389);
    let found: BTreeSet<u64> = datagrams.iter().map(|d| d.frame).collect();
    let listed: BTreeSet<u64> = dissected().keys().copied().collect();
    assert_eq!(found, listed);
}

#[test]
fn every_datagram_matches_the_dissection() {
    let dissected = dissected();
    for d in datagrams() {
        let events = &dissected[&d.frame];
        let (sender, frames) = frames_of(&d);
        let ctx = format!("frame {}", d.frame);
        assert_eq!(frames.len(), events.len(), "{ctx}");
        for (f, e) in frames.iter().zip(events) {
            assert_eq!(sender, peer(&e["sender"]), "{ctx}");
            assert_eq!(f.src, peer(&e["frame_src_peer"]), "{ctx}");
            assert_eq!(f.dst, peer(&e["frame_dst_peer"]), "{ctx}");
            assert_eq!(
                f.frame.len() as u64,
                e["frame_len"].as_u64().unwrap(),
                "{ctx}"
            );
            assert_eq!(
                e["frames_in_packet"].as_u64().unwrap(),
                frames.len() as u64,
                "{ctx}"
            );
            assert_eq!(Some(d.df), e["ip_df"].as_bool(), "{ctx}");
            assert_eq!(
                format!("{:#06x}", d.udp_checksum),
                e["udp_checksum"].as_str().unwrap(),
                "{ctx}"
            );
            if let Some(hex) = e["hex"].as_str() {
                // The dissection keeps the first 128 bytes of frames longer than 256, and
                // marks the cut with "...".
                let shown = hex::decode(hex.trim_end_matches("...")).unwrap();
                let expect_len = if f.frame.len() > 256 {
                    128
                } else {
                    f.frame.len()
                };
                assert_eq!(shown.len(), expect_len, "{ctx}");
                assert_eq!(&f.frame[..shown.len()], &shown[..], "{ctx}");
            }
            check_class(f, e, &ctx);
        }
    }
}

/// The classifier agrees with the dissection's kind for one frame.
fn check_class(f: &SleeveFrame<'_>, e: &Json, ctx: &str) {
    let got = f.special();
    match e["kind"].as_str().unwrap() {
        "sleeve-frame" => assert_eq!(got, None, "{ctx}"),
        "sleeve-heartbeat" => {
            let uid = ConnUid(e["conn_uid"].as_u64().unwrap());
            assert_eq!(got, Some(SpecialFrame::Heartbeat(uid)), "{ctx}");
        }
        "sleeve-fragtest" => assert_eq!(got, Some(SpecialFrame::FragTest), "{ctx}"),
        "sleeve-pmtu-probe" => {
            let candidate_mtu = e["candidate_mtu"].as_u64().unwrap() as usize;
            assert_eq!(
                got,
                Some(SpecialFrame::PmtuProbe { candidate_mtu }),
                "{ctx}"
            );
        }
        other => panic!("{ctx}: unexpected kind {other}"),
    }
}

#[test]
fn heartbeats_carry_their_connection_uid() {
    let h1: PeerName = "aa:00:00:00:00:01".parse().unwrap();
    let h2: PeerName = "aa:00:00:00:00:02".parse().unwrap();
    let h3: PeerName = "aa:00:00:00:00:03".parse().unwrap();
    let mut seen = BTreeMap::new();
    for d in datagrams() {
        let (sender, frames) = frames_of(&d);
        for f in &frames {
            let Some(SpecialFrame::Heartbeat(uid)) = f.special() else {
                continue;
            };
            // Heartbeats go straight from one end of a connection to the other.
            assert_eq!(f.src, sender, "frame {}", d.frame);
            assert!(d.df, "heartbeats are sent with DF");
            let pair = BTreeSet::from([f.src, f.dst]);
            let expected = if pair == BTreeSet::from([h1, h2]) {
                UID_H1_H2
            } else if pair == BTreeSet::from([h2, h3]) {
                UID_H2_H3
            } else {
                panic!("frame {}: heartbeat between {pair:?}", d.frame)
            };
            assert_eq!(uid, expected, "frame {}", d.frame);
            *seen.entry((f.src, f.dst)).or_insert(0) += 1;
        }
    }
    // Both directions of both connections.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen.values().sum::<i32>(), 33);
    // Frame 15 is the first heartbeat: host2 -> host1.
    let first = datagrams().into_iter().find(|d| d.frame == 15).unwrap();
    let (_, frames) = frames_of(&first);
    assert_eq!(
        frames[0].special(),
        Some(SpecialFrame::Heartbeat(UID_H1_H2))
    );
}

#[test]
fn frag_tests_and_pmtu_probes_classify() {
    let mut frag_tests = Vec::new();
    let mut probes = Vec::new();
    for d in datagrams() {
        let (_, frames) = frames_of(&d);
        for f in &frames {
            match f.special() {
                Some(SpecialFrame::FragTest) => {
                    assert!(!d.df, "the fragmentation test goes without DF");
                    assert_eq!(d.payload.len(), 6 + 14 + FRAG_TEST_FRAME_LEN);
                    frag_tests.push(d.frame);
                }
                Some(SpecialFrame::PmtuProbe { candidate_mtu }) => {
                    assert!(d.df, "PMTU probes go with DF");
                    assert_eq!(f.frame.len(), 1452);
                    assert_eq!(UNDERLAY_IP_UDP_LEN + d.payload.len(), 1500);
                    probes.push((d.frame, candidate_mtu));
                }
                Some(SpecialFrame::Heartbeat(_)) | None => {}
            }
        }
    }
    assert_eq!(frag_tests, [26, 68, 149, 190]);
    assert_eq!(
        probes,
        [
            (67, MTU_FOR_1500),
            (109, MTU_FOR_1500),
            (231, MTU_FOR_1500),
            (233, MTU_FOR_1500)
        ]
    );
}

#[test]
fn multi_frame_datagrams_split_into_their_frames() {
    let all = datagrams();
    let count = |frame: u64| {
        frames_of(all.iter().find(|d| d.frame == frame).unwrap())
            .1
            .len()
    };
    assert_eq!(count(349), 10);
    assert_eq!(count(570), 15);
    assert_eq!(count(481), 12);
    // Frame 349: pod2's ACKs, 10 × (14 + 66) + 6 = 806 bytes.
    let d349 = all.iter().find(|d| d.frame == 349).unwrap();
    assert_eq!(d349.payload.len(), 806);
    assert!(frames_of(d349).1.iter().all(|f| f.frame.len() == 66));
}

#[test]
fn re_encoding_gives_the_captured_bytes() {
    for d in datagrams() {
        let (sender, frames) = frames_of(&d);
        let bytes = encode_packet(sender, &frames).unwrap();
        assert!(bytes == d.payload, "frame {}", d.frame);
    }
}

#[test]
fn relaying_rewrites_only_the_sender() {
    // Frames 299 and 300: pod1's echo request host1 -> host2, then relayed host2 -> host3.
    let all = datagrams();
    let hop1 = all.iter().find(|d| d.frame == 299).unwrap();
    let hop2 = all.iter().find(|d| d.frame == 300).unwrap();
    let mut relayed = SleevePacket::new_checked(hop1.payload.clone()).unwrap();
    relayed.set_sender("aa:00:00:00:00:02".parse().unwrap());
    assert!(relayed.into_inner() == hop2.payload);
}

#[test]
fn packer_packs_like_weave_within_a_1500_byte_path() {
    // Weave filled each datagram up to the path's payload limit; ours, given the same frames
    // and limit, makes the same datagram.
    let limit = 1500 - UNDERLAY_IP_UDP_LEN;
    for d in datagrams() {
        if d.payload.len() > limit {
            continue;
        }
        let (sender, frames) = frames_of(&d);
        let mut out = Vec::new();
        let n = pack_frames(&mut out, sender, &frames, limit).unwrap();
        assert_eq!(n, frames.len(), "frame {}", d.frame);
        assert!(out == d.payload, "frame {}", d.frame);
    }
}

#[test]
fn every_truncation_of_a_captured_datagram_fails_cleanly() {
    let all = datagrams();
    let d = all.iter().find(|d| d.frame == 570).unwrap();
    for cut in 0..d.payload.len() {
        let bytes = &d.payload[..cut];
        let Ok(packet) = SleevePacket::new_checked(bytes) else {
            assert!(cut <= 6);
            continue;
        };
        let ok = packet.frames().filter(Result::is_ok).count();
        let errors = packet.frames().filter(Result::is_err).count();
        assert!(ok < 15);
        // A cut that falls exactly between frames is a valid shorter datagram.
        assert_eq!(errors == 0, packet.validate().is_ok());
        assert!(errors <= 1);
    }
}

// ---- a minimal classic-pcap reader (Ethernet, IPv4, UDP) with IP reassembly ----

/// The sleeve datagrams (UDP 6783 -> 6783) of a capture, in capture order of their first
/// fragment.
fn sleeve_datagrams(pcap: &[u8]) -> Vec<Datagram> {
    assert_eq!(
        &pcap[0..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "little-endian µs pcap"
    );
    assert_eq!(u32le(pcap, 20), 1, "Ethernet link type");
    let mut out = Vec::new();
    let mut partial: BTreeMap<([u8; 4], [u8; 4], u16), Reassembly> = BTreeMap::new();
    let mut at = 24;
    let mut frame = 0u64;
    while at < pcap.len() {
        frame += 1;
        let caplen = u32le(pcap, at + 8) as usize;
        let origlen = u32le(pcap, at + 12) as usize;
        assert_eq!(caplen, origlen, "frame {frame} truncated");
        let pkt = &pcap[at + 16..at + 16 + caplen];
        at += 16 + caplen;
        if u16be(pkt, 12) != 0x0800 {
            continue;
        }
        let ip = &pkt[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16be(ip, 2));
        let flags = u16be(ip, 6);
        if ip[9] != 17 {
            continue;
        }
        let (src, dst) = (addr(ip, 12), addr(ip, 16));
        let df = flags & 0x4000 != 0;
        let more = flags & 0x2000 != 0;
        let offset = usize::from(flags & 0x1fff) * 8;
        let body = &ip[ihl..total];
        let whole = if more || offset != 0 {
            let r = partial
                .entry((src, dst, u16be(ip, 4)))
                .or_insert_with(|| Reassembly {
                    first_frame: frame,
                    df,
                    pieces: BTreeMap::new(),
                    end: None,
                });
            r.pieces.insert(offset, body.to_vec());
            if !more {
                r.end = Some(offset + body.len());
            }
            let Some(done) = r.complete() else {
                continue;
            };
            let key = (src, dst, u16be(ip, 4));
            let r = partial.remove(&key).unwrap();
            (r.first_frame, r.df, done)
        } else {
            (frame, df, body.to_vec())
        };
        let (first_frame, df, udp) = whole;
        assert_eq!(
            usize::from(u16be(&udp, 4)),
            udp.len(),
            "frame {first_frame}"
        );
        let checksum = u16be(&udp, 6);
        if checksum != 0 {
            assert_eq!(udp_checksum(src, dst, &udp), 0, "frame {first_frame}");
        }
        if u16be(&udp, 0) == PORT && u16be(&udp, 2) == PORT {
            out.push(Datagram {
                frame: first_frame,
                df,
                udp_checksum: checksum,
                payload: udp[8..].to_vec(),
            });
        }
    }
    assert!(partial.is_empty(), "incomplete IP datagrams left");
    out
}

struct Reassembly {
    first_frame: u64,
    df: bool,
    pieces: BTreeMap<usize, Vec<u8>>,
    end: Option<usize>,
}

impl Reassembly {
    /// The whole datagram once every byte up to the last fragment's end has arrived.
    fn complete(&self) -> Option<Vec<u8>> {
        let end = self.end?;
        let mut whole = Vec::with_capacity(end);
        for (&offset, piece) in &self.pieces {
            if offset != whole.len() {
                return None;
            }
            whole.extend_from_slice(piece);
        }
        (whole.len() == end).then_some(whole)
    }
}

fn udp_checksum(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u64::from(c[0]) << 8 | c.get(1).map_or(0, |&x| u64::from(x));
        }
    };
    add(&src);
    add(&dst);
    add(&[0, 17]);
    add(&(udp.len() as u16).to_be_bytes());
    add(udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16be(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn addr(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}
