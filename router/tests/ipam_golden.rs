//! Golden tests for the `IPallocation` channel: every IPAM payload captured from Weave Net
//! 2.8.1 decodes to the values the dissection lists and re-encodes byte for byte, given the
//! sending process's type ids.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use weave_router::ids::{PeerName, PeerUid};
use weave_router::ipam::address::{Address, Range};
use weave_router::wire::gob::{self, TypeId, WireType};
use weave_router::wire::ipam::{
    decode_gossip, decode_unicast, encode_gossip, encode_gossip_with, encode_unicast,
    encode_unicast_with, encoder_with_type_ids, unicast_kind, AcceptedValue, Entry, GossipState,
    NodeClaims, NodeId, ProposalId, RingState, Unicast,
};
use weave_router::wire::mesh::{tag, Message};

/// The frames of three-peers-plain that carry `IPallocation` gossip.
const IPAM_FRAMES: [u64; 36] = [
    18, 19, 139, 143, 247, 249, 251, 253, 255, 256, 257, 258, 259, 261, 262, 264, 265, 266, 267,
    269, 271, 272, 283, 284, 285, 287, 289, 291, 583, 587, 588, 600, 620, 625, 626, 635,
];

fn events() -> Vec<Json> {
    let path = format!(
        "{}/testdata/three-peers-plain.dissect.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Json = serde_json::from_str(&text).unwrap();
    doc["events"].as_array().unwrap().clone()
}

/// One captured IPAM message: its frame, message tag, payload and dissection.
struct Captured {
    frame: u64,
    tag: u8,
    payload: Vec<u8>,
    gossip: Json,
}

fn ipam_messages() -> Vec<Captured> {
    events()
        .into_iter()
        .filter(|e| e["kind"] == "mesh-gossip" && e["gossip"]["channel"] == "IPallocation")
        .map(|e| {
            let frame = e["frame"].as_u64().unwrap();
            let body = hex::decode(e["hex"].as_str().unwrap()).unwrap();
            let payload = match Message::parse(&body).unwrap() {
                Message::Gossip { payload, .. }
                | Message::GossipUnicast { payload, .. }
                | Message::GossipBroadcast { payload, .. } => payload,
                other => panic!("frame {frame}: {other:?}"),
            };
            Captured {
                frame,
                tag: body[0],
                payload,
                gossip: e["gossip"].clone(),
            }
        })
        .collect()
}

fn message(frame: u64) -> Captured {
    ipam_messages()
        .into_iter()
        .find(|m| m.frame == frame)
        .unwrap_or_else(|| panic!("no IPAM message in frame {frame}"))
}

fn peer(s: &Json) -> PeerName {
    s.as_str().unwrap().parse().unwrap()
}

fn addr(s: &Json) -> Address {
    s.as_str().unwrap().parse().unwrap()
}

fn uint(j: &Json) -> u64 {
    j.as_u64().unwrap()
}

fn node_id(j: &Json) -> NodeId {
    NodeId {
        name: peer(&j["Name"]),
        uid: PeerUid(uint(&j["UID"])),
    }
}

fn proposal(j: &Json) -> ProposalId {
    ProposalId {
        round: uint(&j["Round"]),
        proposer: node_id(&j["Proposer"]),
    }
}

fn peers(j: &Json) -> Vec<PeerName> {
    j.as_array().unwrap().iter().map(peer).collect()
}

/// The dissection's `state`, except for the nicknames (its JSON object loses wire order).
fn expected_state(state: &Json) -> GossipState {
    let paxos = state.get("Paxos").map(|claims| {
        claims
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let claims = &c["claims"];
                (
                    node_id(&c["node"]),
                    NodeClaims {
                        promise: proposal(&claims["Promise"]),
                        accepted: proposal(&claims["Accepted"]),
                        accepted_val: AcceptedValue {
                            value: peers(&claims["AcceptedVal"]["Value"]),
                            origin: proposal(&claims["AcceptedVal"]["Origin"]),
                        },
                    },
                )
            })
            .collect()
    });
    let ring = state.get("Ring").map(|r| RingState {
        start: addr(&r["Start"]),
        end: addr(&r["End"]),
        peer: peer(&r["Peer"]),
        entries: r["Entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| Entry {
                token: addr(&e["Token"]),
                peer: peer(&e["Peer"]),
                version: uint(&e["Version"]).try_into().unwrap(),
                free: uint(&e["Free"]).try_into().unwrap(),
            })
            .collect(),
        seeds: peers(&r["Seeds"]),
    });
    GossipState {
        now: state["Now"].as_i64().unwrap(),
        nicknames: Vec::new(),
        paxos,
        ring,
    }
}

fn check_state(frame: u64, decoded: &GossipState, state: &Json) {
    let nicknames: BTreeMap<String, String> = decoded
        .nicknames
        .iter()
        .map(|(name, nick)| (name.to_string(), nick.clone()))
        .collect();
    let expected_nicknames: BTreeMap<String, String> =
        serde_json::from_value(state["Nicknames"].clone()).unwrap();
    assert_eq!(nicknames, expected_nicknames, "frame {frame}");
    assert_eq!(
        decoded.nicknames.len(),
        expected_nicknames.len(),
        "frame {frame}"
    );
    let without_nicknames = GossipState {
        nicknames: Vec::new(),
        ..decoded.clone()
    };
    assert_eq!(without_nicknames, expected_state(state), "frame {frame}");
}

/// The ids the sending process gave `gossipState` and `Ring`, read from the stream.
fn gossip_type_ids(stream: &[u8]) -> (TypeId, TypeId) {
    let mut dec = gob::Decoder::new(stream);
    let msg = dec.next_message().unwrap().unwrap();
    let Some(WireType::Struct { fields, .. }) = dec.types().get(msg.type_id) else {
        panic!("gossipState is not a struct");
    };
    let ring = fields.iter().find(|f| &*f.name == "Ring").unwrap().id;
    (ring, msg.type_id)
}

/// The id the sending process gave `address.Range`.
fn range_type_id(stream: &[u8]) -> TypeId {
    let mut dec = gob::Decoder::new(stream);
    dec.next_message().unwrap().unwrap().type_id
}

#[test]
fn every_ipam_payload_decodes_to_the_dissection_and_reencodes_byte_for_byte() {
    let messages = ipam_messages();
    let frames: Vec<u64> = messages.iter().map(|m| m.frame).collect();
    assert_eq!(frames, IPAM_FRAMES);

    for m in &messages {
        let state = &m.gossip["state"];
        match m.gossip.get("ipam_msg").and_then(Json::as_str) {
            None => {
                assert_ne!(m.tag, tag::GOSSIP_UNICAST, "frame {}", m.frame);
                let decoded = decode_gossip(&m.payload)
                    .unwrap_or_else(|err| panic!("frame {}: {err}", m.frame));
                check_state(m.frame, &decoded, state);

                let (ring_id, first) = gossip_type_ids(&m.payload);
                // host1 numbered gossipState 75, host2 and host3 78; all numbered Ring 65.
                assert_eq!(ring_id, TypeId(65), "frame {}", m.frame);
                assert!([75, 78].contains(&first.0), "frame {}", m.frame);
                let ours = encode_gossip_with(encoder_with_type_ids(ring_id, first), &decoded);
                assert_eq!(
                    hex::encode(&ours),
                    hex::encode(&m.payload),
                    "frame {}",
                    m.frame
                );
                assert_eq!(decode_gossip(&encode_gossip(&decoded)), Ok(decoded));
            }
            Some(kind) => {
                assert_eq!(m.tag, tag::GOSSIP_UNICAST, "frame {}", m.frame);
                let decoded = decode_unicast(&m.payload)
                    .unwrap_or_else(|err| panic!("frame {}: {err}", m.frame));
                let stream = &m.payload[1..];
                let enc = match (kind, &decoded) {
                    ("msgSpaceRequest", Unicast::SpaceRequest(range)) => {
                        let r = &state["Range"];
                        assert_eq!(
                            *range,
                            Range::new(addr(&r["Start"]), addr(&r["End"])),
                            "frame {}",
                            m.frame
                        );
                        gob::Encoder::with_first_type_id(range_type_id(stream))
                    }
                    ("msgRingUpdate", Unicast::RingUpdate(decoded_state)) => {
                        check_state(m.frame, decoded_state, state);
                        let (ring_id, first) = gossip_type_ids(stream);
                        encoder_with_type_ids(ring_id, first)
                    }
                    other => panic!("frame {}: {other:?}", m.frame),
                };
                let ours = encode_unicast_with(enc, &decoded);
                assert_eq!(
                    hex::encode(&ours),
                    hex::encode(&m.payload),
                    "frame {}",
                    m.frame
                );
                assert_eq!(decode_unicast(&encode_unicast(&decoded)), Ok(decoded));
            }
        }
    }
}

fn name(s: &str) -> PeerName {
    s.parse().unwrap()
}

#[test]
fn frame_18_is_an_elector_with_no_claims_yet() {
    let m = message(18);
    assert_eq!(m.tag, tag::GOSSIP);
    let state = decode_gossip(&m.payload).unwrap();
    assert_eq!(
        state,
        GossipState {
            now: 1_795_337_569,
            nicknames: vec![(name("aa:00:00:00:00:01"), "host1".into())],
            paxos: Some(vec![]),
            ring: None,
        }
    );
    let ours = encode_gossip_with(encoder_with_type_ids(TypeId(65), TypeId(75)), &state);
    assert_eq!(ours, m.payload);
}

#[test]
fn frame_255_carries_an_accepted_proposal() {
    let m = message(255);
    assert_eq!(m.tag, tag::GOSSIP_BROADCAST);
    let state = decode_gossip(&m.payload).unwrap();
    let host1 = NodeId {
        name: name("aa:00:00:00:00:01"),
        uid: PeerUid(10_147_670_469_106_945_850),
    };
    let round1 = ProposalId {
        round: 1,
        proposer: host1,
    };
    let claims = state.paxos.as_ref().unwrap();
    assert_eq!(claims.len(), 2);
    assert_eq!(
        claims[0],
        (
            host1,
            NodeClaims {
                promise: round1,
                accepted: round1,
                accepted_val: AcceptedValue {
                    value: vec![name("aa:00:00:00:00:01"), name("aa:00:00:00:00:02")],
                    origin: round1,
                },
            }
        )
    );
    // host2 promised but has accepted nothing: zero proposals, still sent as structs.
    assert_eq!(claims[1].1.accepted, ProposalId::default());
    assert_eq!(claims[1].1.accepted_val, AcceptedValue::default());
    assert_eq!(state.ring, None);
}

#[test]
fn frame_265_is_the_first_ring() {
    let m = message(265);
    assert_eq!(m.tag, tag::GOSSIP_UNICAST);
    assert_eq!(m.payload[0], unicast_kind::RING_UPDATE);
    let Unicast::RingUpdate(state) = decode_unicast(&m.payload).unwrap() else {
        panic!("not a ring update");
    };
    assert_eq!(state.paxos, None);
    let host1 = name("aa:00:00:00:00:01");
    let host2 = name("aa:00:00:00:00:02");
    assert_eq!(
        state.ring,
        Some(RingState {
            start: "10.32.0.0".parse().unwrap(),
            end: "10.48.0.0".parse().unwrap(),
            peer: host1,
            entries: vec![
                Entry {
                    token: "10.32.0.0".parse().unwrap(),
                    peer: host1,
                    version: 1,
                    free: 524_287,
                },
                Entry {
                    token: "10.40.0.0".parse().unwrap(),
                    peer: host2,
                    version: 0,
                    free: 524_288,
                },
            ],
            seeds: vec![host1, host2],
        })
    );
    let ours = encode_unicast_with(
        encoder_with_type_ids(TypeId(65), TypeId(75)),
        &Unicast::RingUpdate(state),
    );
    assert_eq!(ours, m.payload);
}

#[test]
fn frame_283_is_a_space_request_for_the_whole_range() {
    let m = message(283);
    assert_eq!(m.tag, tag::GOSSIP_UNICAST);
    let msg = decode_unicast(&m.payload).unwrap();
    let range = Range::new("10.32.0.0".parse().unwrap(), "10.48.0.0".parse().unwrap());
    assert_eq!(msg, Unicast::SpaceRequest(range));
    let ours = encode_unicast_with(gob::Encoder::with_first_type_id(TypeId(86)), &msg);
    assert_eq!(ours, m.payload);
}
