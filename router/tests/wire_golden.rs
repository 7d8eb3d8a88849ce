//! Golden tests: every TCP mesh message captured from Weave Net 2.8.1 parses, decodes to the
//! values the dissection lists, and re-encodes to bytes Go would accept (byte for byte where
//! Go's output is deterministic).

use std::collections::BTreeMap;

use serde_json::Value as Json;
use weave_router::ids::PeerName;
use weave_router::wire::gob::{self, TypeId, Value};
use weave_router::wire::mesh::{
    decode_features, decode_topology, encode_features, encode_features_with, encode_topology,
    encode_topology_with, ConnectionSummary, FrameDecoder, Message, PeerSummary, ProtocolHeader,
    TopologyEntry,
};

fn load(name: &str) -> Vec<Json> {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Json = serde_json::from_str(&text).unwrap();
    doc["events"].as_array().unwrap().clone()
}

fn plain() -> Vec<Json> {
    load("three-peers-plain.dissect.json")
}

fn of_kind<'a>(events: &'a [Json], kind: &'a str) -> impl Iterator<Item = &'a Json> + 'a {
    events.iter().filter(move |e| e["kind"] == kind)
}

fn body(e: &Json) -> Vec<u8> {
    hex::decode(e["hex"].as_str().unwrap()).unwrap()
}

fn frame_no(e: &Json) -> u64 {
    e["frame"].as_u64().unwrap()
}

fn peer(s: &Json) -> PeerName {
    s.as_str().unwrap().parse().unwrap()
}

/// The dissection's `gossip.peers` as our topology entries.
fn expected_topology(peers: &Json) -> Vec<TopologyEntry> {
    peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let summary = PeerSummary {
                name: peer(&p["Name"]),
                nickname: p["NickName"].as_str().unwrap().to_owned(),
                uid: p["UID"].as_u64().unwrap(),
                version: p["Version"].as_u64().unwrap(),
                short_id: p["ShortID"].as_u64().unwrap().try_into().unwrap(),
                has_short_id: p["HasShortID"].as_bool().unwrap(),
            };
            let conns = p["Connections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| ConnectionSummary {
                    name: peer(&c["Name"]),
                    remote_tcp_addr: c["RemoteTCPAddr"].as_str().unwrap().to_owned(),
                    outbound: c["Outbound"].as_bool().unwrap(),
                    established: c["Established"].as_bool().unwrap(),
                })
                .collect();
            (summary, conns)
        })
        .collect()
}

/// The first type id a gob stream defines (where the sending process's ids started for it).
fn first_defined_id(stream: &[u8]) -> TypeId {
    let mut dec = gob::Decoder::new(stream);
    dec.next_message().unwrap().unwrap();
    let mut ids: Vec<TypeId> = (64..1000)
        .map(TypeId)
        .filter(|&id| dec.types().get(id).is_some())
        .collect();
    ids.sort();
    ids[0]
}

#[test]
fn every_mesh_message_in_the_capture_parses() {
    let events = plain();
    let mut counts = BTreeMap::new();
    for e in &events {
        let kind = e["kind"].as_str().unwrap();
        let bytes = match kind {
            "mesh-features" | "mesh-gossip" | "mesh-control" | "mesh-heartbeat" => body(e),
            _ => continue,
        };
        *counts.entry(kind).or_insert(0) += 1;
        assert_eq!(
            e["length_prefix"].as_u64().unwrap() as usize,
            bytes.len(),
            "frame {}",
            frame_no(e)
        );
        if kind == "mesh-features" {
            decode_features(&bytes).unwrap_or_else(|err| panic!("frame {}: {err}", frame_no(e)));
        } else {
            Message::parse(&bytes).unwrap_or_else(|err| panic!("frame {}: {err}", frame_no(e)));
        }
    }
    let expected = BTreeMap::from([
        ("mesh-control", 12),
        ("mesh-features", 4),
        ("mesh-gossip", 55),
        ("mesh-heartbeat", 8),
    ]);
    assert_eq!(counts, expected);
}

#[test]
fn feature_maps_match_the_dissection_and_reencode() {
    let events = plain();
    let mut seen = 0;
    for e in of_kind(&events, "mesh-features") {
        let bytes = body(e);
        let features = decode_features(&bytes).unwrap();
        let expected: BTreeMap<String, String> =
            serde_json::from_value(e["features"].clone()).unwrap();
        assert_eq!(features, expected, "frame {}", frame_no(e));
        assert_eq!(features["PeerNameFlavour"], "mac");

        // Our encoding decodes to the same map.
        assert_eq!(
            decode_features(&encode_features(&features)),
            Ok(features.clone())
        );

        // With the sender's type id, the type definition is Go's byte for byte; the value
        // differs only in entry order (Go's map order is random), so it has the same length.
        let ours = encode_features_with(
            gob::Encoder::with_first_type_id(first_defined_id(&bytes)),
            &features,
        );
        let def_len = usize::from(bytes[0]) + 1;
        assert_eq!(&ours[..def_len], &bytes[..def_len], "frame {}", frame_no(e));
        assert_eq!(ours.len(), bytes.len());
        seen += 1;
    }
    assert_eq!(seen, 4);
}

#[test]
fn topology_gossip_matches_the_dissection_and_reencodes_byte_for_byte() {
    let events = plain();
    let mut seen = 0;
    for e in of_kind(&events, "mesh-gossip") {
        let g = &e["gossip"];
        if g["channel"] != "topology" {
            continue;
        }
        let bytes = body(e);
        let Ok(Message::Gossip {
            channel,
            src,
            payload,
        }) = Message::parse(&bytes)
        else {
            panic!("frame {}: not a Gossip message", frame_no(e));
        };
        assert_eq!(channel, "topology");
        assert_eq!(src, peer(&g["src"]));
        let entries = decode_topology(&payload).unwrap();
        assert_eq!(
            entries,
            expected_topology(&g["peers"]),
            "frame {}",
            frame_no(e)
        );

        assert_eq!(
            decode_topology(&encode_topology(&entries)),
            Ok(entries.clone())
        );
        // Go gives peerSummary, connectionSummary and []connectionSummary consecutive ids,
        // as our encoder does; from the same first id our bytes are Go's.
        let ours = encode_topology_with(
            gob::Encoder::with_first_type_id(first_defined_id(&payload)),
            &entries,
        );
        assert_eq!(
            hex::encode(&ours),
            hex::encode(&payload),
            "frame {}",
            frame_no(e)
        );
        seen += 1;
    }
    assert_eq!(seen, 19);
}

#[test]
fn frame_16_is_reproduced_exactly() {
    let events = plain();
    let e = events.iter().find(|e| frame_no(e) == 16).unwrap();
    let entries = expected_topology(&e["gossip"]["peers"]);
    let payload = encode_topology_with(gob::Encoder::with_first_type_id(TypeId(75)), &entries);
    let msg = Message::Gossip {
        channel: "topology".into(),
        src: "aa:00:00:00:00:02".parse().unwrap(),
        payload,
    };
    assert_eq!(hex::encode(msg.emit()), e["hex"].as_str().unwrap());
}

#[test]
fn gossip_envelopes_match_and_reencode_byte_for_byte() {
    let events = plain();
    let mut seen = 0;
    for e in of_kind(&events, "mesh-gossip") {
        let g = &e["gossip"];
        let bytes = body(e);
        let msg = Message::parse(&bytes).unwrap();
        let (channel, src, dst) = match &msg {
            Message::Gossip { channel, src, .. } => {
                assert_eq!(bytes[0], 4);
                (channel, src, None)
            }
            Message::GossipUnicast {
                channel, src, dst, ..
            } => (channel, src, Some(*dst)),
            Message::GossipBroadcast { channel, src, .. } => {
                assert_eq!(bytes[0], 6);
                (channel, src, None)
            }
            other => panic!("frame {}: {other:?}", frame_no(e)),
        };
        assert_eq!(channel, g["channel"].as_str().unwrap());
        assert_eq!(*src, peer(&g["src"]));
        assert_eq!(dst, g.get("dst").map(peer), "frame {}", frame_no(e));
        // The envelope uses only predefined gob types, so Go's bytes are deterministic.
        assert_eq!(msg.emit(), bytes, "frame {}", frame_no(e));
        seen += 1;
    }
    assert_eq!(seen, 55);
}

#[test]
fn ipam_payloads_are_well_formed_gob_streams() {
    let events = plain();
    let mut seen = 0;
    for e in of_kind(&events, "mesh-gossip") {
        let g = &e["gossip"];
        if g["channel"] != "IPallocation" {
            continue;
        }
        let payload = match Message::parse(&body(e)).unwrap() {
            Message::Gossip { payload, .. }
            | Message::GossipBroadcast { payload, .. }
            | Message::GossipUnicast { payload, .. } => payload,
            other => panic!("frame {}: {other:?}", frame_no(e)),
        };
        // Unicast IPAM messages start with a message-type byte before the gob stream.
        let stream = if g.get("ipam_msg").is_some() {
            &payload[1..]
        } else {
            &payload[..]
        };
        let mut dec = gob::Decoder::new(stream);
        let mut values = Vec::new();
        while let Some(v) = dec
            .next_value()
            .unwrap_or_else(|err| panic!("frame {}: {err}", frame_no(e)))
        {
            values.push(v);
        }
        assert!(!values.is_empty(), "frame {}", frame_no(e));
        if let Some(now) = g["state"].get("Now") {
            assert_eq!(
                values[0].field("Now"),
                Some(&Value::Int(now.as_i64().unwrap())),
                "frame {}",
                frame_no(e)
            );
            let Some(Value::Map(nicknames)) = values[0].field("Nicknames") else {
                panic!("frame {}: no Nicknames", frame_no(e));
            };
            let expected = g["state"]["Nicknames"].as_object().unwrap();
            assert_eq!(nicknames.len(), expected.len());
            for (k, v) in nicknames {
                let Value::Uint(name) = k else {
                    panic!("nickname key {k:?}")
                };
                let name = PeerName::from_u64(*name).unwrap().to_string();
                assert_eq!(
                    Some(v),
                    expected
                        .get(&name)
                        .map(|n| Value::String(n.as_str().unwrap().into()))
                        .as_ref()
                );
            }
        }
        seen += 1;
    }
    assert_eq!(seen, 36);
}

#[test]
fn control_messages_and_heartbeats_reencode() {
    let events = plain();
    let mut seen = 0;
    for e in of_kind(&events, "mesh-control") {
        let bytes = body(e);
        let msg = Message::parse(&bytes).unwrap();
        let Message::OverlayControl {
            overlay,
            subtag,
            data,
        } = &msg
        else {
            panic!("frame {}: {msg:?}", frame_no(e));
        };
        assert_eq!(u64::from(*overlay), e["overlay_index"].as_u64().unwrap());
        assert_eq!(u64::from(*subtag), e["subtag"].as_u64().unwrap());
        if let Some(mtu) = e.get("mtu") {
            assert_eq!(data[..], (mtu.as_u64().unwrap() as u16).to_be_bytes());
        }
        assert_eq!(msg.emit(), bytes);
        seen += 1;
    }
    for e in of_kind(&events, "mesh-heartbeat") {
        let bytes = body(e);
        assert_eq!(Message::parse(&bytes), Ok(Message::Heartbeat));
        assert_eq!(Message::Heartbeat.emit(), bytes);
        seen += 1;
    }
    assert_eq!(seen, 20);
}

#[test]
fn protocol_headers_parse_in_both_captures() {
    let mut seen = 0;
    for file in [
        "three-peers-plain.dissect.json",
        "two-peers-password.dissect.json",
    ] {
        for e in of_kind(&load(file), "mesh-header") {
            let bytes: [u8; 7] = body(e).try_into().unwrap();
            let header = ProtocolHeader::parse(&bytes).unwrap();
            assert_eq!((header.min_version, header.max_version), (1, 2));
            assert_eq!(header.emit(), bytes);
            assert_eq!(header.negotiate(&header), Some(2));
            seen += 1;
        }
    }
    assert_eq!(seen, 6);
}

#[test]
fn tcp_streams_reassemble_through_the_frame_decoder() {
    let events = plain();
    let mut streams: BTreeMap<&str, Vec<&Json>> = BTreeMap::new();
    for e in &events {
        if e.get("length_prefix").is_some() && e.get("hex").is_some() {
            streams
                .entry(e["conn"].as_str().unwrap())
                .or_default()
                .push(e);
        }
    }
    assert_eq!(streams.len(), 4);
    for (conn, mut msgs) in streams {
        msgs.sort_by_key(|e| e["stream_offset"].as_u64().unwrap());
        // After the 7-byte header and the 1-byte encryption flag, messages are contiguous.
        let mut offset = 8;
        let mut stream = Vec::new();
        for e in &msgs {
            assert_eq!(e["stream_offset"].as_u64().unwrap(), offset, "{conn}");
            let b = body(e);
            offset += 4 + b.len() as u64;
            stream.extend_from_slice(&(b.len() as u32).to_be_bytes());
            stream.extend_from_slice(&b);
        }
        let mut dec = FrameDecoder::default();
        let mut got = Vec::new();
        // Odd-sized chunks split length prefixes and bodies at every position over time.
        for chunk in stream.chunks(7) {
            dec.push(chunk);
            while let Some(b) = dec.next_body().unwrap() {
                got.push(b);
            }
        }
        assert_eq!(dec.buffered(), 0);
        let expected: Vec<Vec<u8>> = msgs.iter().map(|e| body(e)).collect();
        assert_eq!(got, expected, "{conn}");
        // The first body is the feature map, every later one a tagged message.
        decode_features(&got[0]).unwrap();
        for b in &got[1..] {
            Message::parse(b).unwrap();
        }
    }
}
