//! The mesh state machine against real Weave Net 2.8.1 bytes and against hostile input:
//! captured handshakes and gossip are replayed into a [`Mesh`], and malformed handshakes
//! are refused with a logged reason.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use weave_router::ids::{PeerName, PeerUid};
use weave_router::mesh::{Command, ConnKey, Encryption, Mesh, MeshConfig};
use weave_router::wire::mesh::{self as wire, FrameDecoder, Message};

fn capture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/three-peers-plain.dissect.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The hex of the event at `frame` in the capture.
fn hex_of(cap: &Value, frame: u64) -> Vec<u8> {
    let ev = cap["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["frame"] == frame)
        .unwrap_or_else(|| panic!("frame {frame} in capture"));
    hex::decode(ev["hex"].as_str().unwrap()).unwrap()
}

fn host1() -> MeshConfig {
    MeshConfig {
        name: "aa:00:00:00:00:01".parse().unwrap(),
        nickname: "host1".into(),
        uid: PeerUid(10147670469106945850),
        port: 6783,
        conn_limit: 200,
        discovery: true,
        overlays: vec!["sleeve".into()],
    }
}

/// Everything the mesh wants sent on `key`, and whether it closed it.
fn drain(mesh: &mut Mesh, key: ConnKey) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut closed = false;
    while let Some(c) = mesh.poll_command() {
        match c {
            Command::Send { conn, bytes } if conn == key => out.extend(bytes),
            Command::Close { conn } if conn == key => closed = true,
            Command::Send { .. }
            | Command::Close { .. }
            | Command::Dial { .. }
            | Command::SendUdp(_)
            | Command::SendFastdp { .. } => {}
        }
    }
    (out, closed)
}

fn events(mesh: &mut Mesh) -> Vec<String> {
    std::iter::from_fn(|| mesh.poll_event())
        .map(|e| e.message)
        .collect()
}

#[test]
fn captured_weave_peer_is_accepted_and_its_gossip_applied() {
    let cap = capture();
    let now = Instant::now();
    let mut mesh = Mesh::new(host1(), 7, now);
    let remote: SocketAddr = "192.168.77.2:43347".parse().unwrap();
    let key = mesh.handle_accepted(remote, now);

    // host2's side of the capture: header (frame 6), flag (12), feature map (13).
    let mut input = hex_of(&cap, 6);
    input.extend(hex_of(&cap, 12));
    input.extend(wire::frame(&hex_of(&cap, 13)));
    mesh.handle_data(key, &input, now);
    let (sent, closed) = drain(&mut mesh, key);
    assert!(!closed, "{:?}", events(&mut mesh));

    // Our answer: the same 7-byte header Weave sends, flag 0, then a feature map a Weave
    // peer can read, then the full topology (host2 is a new peer).
    assert_eq!(&sent[..5], b"weave");
    assert_eq!(sent[7], 0);
    let mut frames = FrameDecoder::default();
    frames.push(&sent[8..]);
    let features = wire::decode_features(&frames.next_body().unwrap().unwrap()).unwrap();
    assert_eq!(features["Name"], "aa:00:00:00:00:01");
    assert_eq!(features["PeerNameFlavour"], "mac");
    assert_eq!(features["UID"], "10147670469106945850");
    assert!(features["ConnID"].parse::<u64>().is_ok());
    let Message::Gossip {
        channel,
        src,
        payload,
    } = Message::parse(&frames.next_body().unwrap().unwrap()).unwrap()
    else {
        panic!("expected topology gossip");
    };
    assert_eq!(
        (channel.as_str(), src.to_string().as_str()),
        ("topology", "aa:00:00:00:00:01")
    );
    let entries = wire::decode_topology(&payload).unwrap();
    assert_eq!(entries.len(), 2);

    // host2's first topology gossip (frame 16) names itself with its connection to us.
    mesh.handle_data(key, &wire::frame(&hex_of(&cap, 16)), now);
    let (_, closed) = drain(&mut mesh, key);
    assert!(!closed);
    let host2: PeerName = "aa:00:00:00:00:02".parse().unwrap();
    let status = mesh.status(now);
    assert_eq!(status.peers.len(), 2);
    let p2 = status.peers.iter().find(|p| p.name == host2).unwrap();
    assert_eq!(
        (p2.uid, p2.version, p2.short_id),
        (10347548252719273627, 1, 3422)
    );
    assert_eq!(p2.connections.len(), 1);
    assert_eq!(p2.connections[0].address, "192.168.77.1:6783");
    assert!(p2.connections[0].outbound && !p2.connections[0].established);
    let ours = &status.peers[0];
    assert_eq!(ours.connections[0].address, "192.168.77.2:43347");
    assert!(!ours.connections[0].outbound);

    // A captured IPallocation gossip (frame 19) is for a channel we do not run: it is
    // accepted and not held against the connection.
    mesh.handle_data(key, &wire::frame(&hex_of(&cap, 19)), now);
    // A TCP heartbeat (frame 594) keeps the connection; silence for 60 s ends it.
    mesh.handle_data(key, &wire::frame(&hex_of(&cap, 594)), now);
    let (_, closed) = drain(&mut mesh, key);
    assert!(!closed);
    let later = now + Duration::from_secs(61);
    mesh.handle_timeout(later);
    let (_, closed) = drain(&mut mesh, key);
    assert!(closed, "a silent connection is closed after 60 s");
    assert!(events(&mut mesh)
        .iter()
        .any(|e| e.contains("no message for 60s")));
}

/// Feeds `bytes` to a fresh inbound connection; returns whether it was closed and the log.
fn refuse(bytes: &[u8]) -> (bool, Vec<String>) {
    let now = Instant::now();
    let mut mesh = Mesh::new(host1(), 1, now);
    let key = mesh.handle_accepted("192.168.77.2:40000".parse().unwrap(), now);
    mesh.handle_data(key, bytes, now);
    let (_, closed) = drain(&mut mesh, key);
    // The router is still whole: it reports itself and no connection.
    let status = mesh.status(now);
    assert_eq!(status.peers.len(), 1);
    assert!(status.connections.is_empty());
    (closed, events(&mut mesh))
}

fn assert_refused(bytes: &[u8], reason: &str) {
    let (closed, log) = refuse(bytes);
    assert!(closed, "not closed for {reason}");
    assert!(
        log.iter().any(|l| l.contains(reason)),
        "no log line with {reason:?} in {log:?}"
    );
}

#[test]
fn wrong_magic_is_refused() {
    assert_refused(b"wheat\x01\x02", "remote protocol header not recognised");
}

#[test]
fn protocol_one_only_is_refused() {
    assert_refused(
        b"weave\x01\x01",
        "remote version range [1,1] is incompatible with ours [2,2]",
    );
}

#[test]
fn encrypted_connection_without_a_password_is_refused() {
    let mut bytes = b"weave\x01\x02\x01".to_vec();
    bytes.extend([0u8; 32]);
    assert_refused(&bytes, "peer requested an encrypted connection");
}

#[test]
fn oversized_length_is_refused_before_buffering() {
    let mut bytes = b"weave\x01\x02\x00".to_vec();
    bytes.extend((11u32 * 1024 * 1024).to_be_bytes());
    assert_refused(&bytes, "incoming message");
}

#[test]
fn garbage_feature_map_is_refused() {
    let mut bytes = b"weave\x01\x02\x00".to_vec();
    bytes.extend(wire::frame(&[0x05, 0xff, 0x00, 0x13, 0x37, 0x42]));
    assert_refused(&bytes, "bad feature map");
}

#[test]
fn feature_map_missing_a_field_is_refused_naming_it() {
    let mut f = std::collections::BTreeMap::new();
    f.insert("PeerNameFlavour".to_string(), "mac".to_string());
    f.insert("Name".to_string(), "aa:00:00:00:00:02".to_string());
    f.insert("NickName".to_string(), "x".to_string());
    f.insert("ConnID".to_string(), "5".to_string());
    let mut bytes = b"weave\x01\x02\x00".to_vec();
    bytes.extend(wire::frame(&wire::encode_features(&f)));
    assert_refused(&bytes, "field UID is missing");
}

#[test]
fn silent_handshake_times_out() {
    let now = Instant::now();
    let mut mesh = Mesh::new(host1(), 1, now);
    let key = mesh.handle_accepted("192.168.77.2:40000".parse().unwrap(), now);
    mesh.handle_data(key, b"weave\x01", now);
    mesh.handle_timeout(now + Duration::from_secs(11));
    let (_, closed) = drain(&mut mesh, key);
    assert!(closed);
    assert!(events(&mut mesh)
        .iter()
        .any(|l| l.contains("handshake timed out")));
}

#[test]
fn arbitrary_bytes_never_panic_the_mesh() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let cap = capture();
    let valid_start = {
        let mut v = hex_of(&cap, 6);
        v.extend(hex_of(&cap, 12));
        v.extend(wire::frame(&hex_of(&cap, 13)));
        v.extend(wire::frame(&hex_of(&cap, 16)));
        v
    };
    for round in 0..2000 {
        let now = Instant::now();
        let mut mesh = Mesh::new(host1(), round, now);
        let key = mesh.handle_accepted("192.168.77.2:40000".parse().unwrap(), now);
        let mut bytes = valid_start.clone();
        for _ in 0..rng.gen_range(1..8) {
            let i = rng.gen_range(0..bytes.len());
            bytes[i] = rng.gen();
        }
        bytes.truncate(rng.gen_range(0..=bytes.len()));
        for chunk in bytes.chunks(rng.gen_range(1..64)) {
            mesh.handle_data(key, chunk, now);
        }
        mesh.handle_timeout(now + Duration::from_secs(120));
        while mesh.poll_command().is_some() {}
        let _ = mesh.status(now);
    }
}

/// The two-peers-password capture: Weave Net 2.8.1 peers with a password. Fed host2's real
/// header and public key, a router with a password answers as host1 did: header, flag 1
/// with a 32-byte key, then its feature map sealed (16 bytes longer than the same map in
/// the clear). host2's sealed feature map (sealed for host1's key, not ours) does not open:
/// the connection is refused as a password mismatch.
#[test]
fn password_handshake_matches_the_capture_layout() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/two-peers-password.dissect.json"
    );
    let cap: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let event = |frame: u64| {
        cap["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["frame"] == frame)
            .unwrap_or_else(|| panic!("frame {frame}"))
            .clone()
    };
    let header = hex::decode(event(8)["hex"].as_str().unwrap()).unwrap();
    let flag_and_key = hex::decode(event(11)["hex"].as_str().unwrap()).unwrap();
    assert_eq!(flag_and_key.len(), 33);
    assert_eq!(flag_and_key[0], 1);
    let features = event(12);
    assert_eq!(features["length_prefix"], 191);

    let now = Instant::now();
    let remote: SocketAddr = "192.168.77.2:60145".parse().unwrap();
    // The same seed gives the same ConnID, so the two feature maps are the same.
    let mut plain = Mesh::new(host1(), 5, now);
    let pk = plain.handle_accepted(remote, now);
    plain.handle_data(pk, &header, now);
    plain.handle_data(pk, &[0], now);
    let (plain_out, _) = drain(&mut plain, pk);
    let plain_features = plain_out.len() - 7 - 1;

    let mut mesh = Mesh::new(host1(), 5, now).with_encryption(Encryption {
        password: zeroize::Zeroizing::new(b"weave-golden-vectors".to_vec()),
        trusted_subnets: Vec::new(),
        fast_cipher: true,
    });
    let key = mesh.handle_accepted(remote, now);
    mesh.handle_data(key, &header, now);
    let (out, _) = drain(&mut mesh, key);
    assert_eq!(&out[..7], b"weave\x02\x02");
    assert_eq!(out.len(), 7 + 33, "header, then flag 1 and a public key");
    assert_eq!(out[7], 1);
    mesh.handle_data(key, &flag_and_key, now);
    let (out, closed) = drain(&mut mesh, key);
    assert!(!closed);
    let len = u32::from_be_bytes(out[..4].try_into().unwrap()) as usize;
    assert_eq!(out.len(), 4 + len);
    // Ours offers the fast cipher too, which the plain map does not carry.
    let extra = wire::encode_features(
        &[("SleeveCipher".to_string(), "aes-256-gcm".to_string())]
            .into_iter()
            .collect(),
    )
    .len();
    assert!(
        len > plain_features - 4 + 16 && len <= plain_features - 4 + 16 + extra,
        "sealed map of {len} bytes against {} in the clear",
        plain_features - 4
    );

    let mut sealed = hex::decode(features["hex_prefix"].as_str().unwrap()).unwrap();
    sealed.resize(191, 0);
    let mut msg = 191u32.to_be_bytes().to_vec();
    msg.extend(sealed);
    mesh.handle_data(key, &msg, now);
    let (_, closed) = drain(&mut mesh, key);
    assert!(closed);
    assert!(events(&mut mesh)
        .iter()
        .any(|e| e.contains("its password differs from ours")));
}

/// The first gossip a router that offers topology digests sends a new peer whose feature
/// map carries `digest` (as `TopologyDigest`, or nothing): its channel and payload kind.
fn first_gossip_to(digest: Option<&str>) -> (String, u8) {
    let cap = capture();
    let now = Instant::now();
    let mut mesh = Mesh::new(host1(), 7, now).with_topology_digest();
    let key = mesh.handle_accepted("192.168.77.2:43347".parse().unwrap(), now);
    let mut features = wire::decode_features(&hex_of(&cap, 13)).unwrap();
    if let Some(v) = digest {
        features.insert(weave_router::mesh::DIGEST_FEATURE.into(), v.into());
    }
    let mut input = hex_of(&cap, 6);
    input.extend(hex_of(&cap, 12));
    input.extend(wire::frame(&wire::encode_features(&features)));
    mesh.handle_data(key, &input, now);
    let (sent, closed) = drain(&mut mesh, key);
    assert!(!closed, "{:?}", events(&mut mesh));
    let mut frames = FrameDecoder::default();
    frames.push(&sent[8..]);
    frames.next_body().unwrap().unwrap();
    let Message::Gossip {
        channel, payload, ..
    } = Message::parse(&frames.next_body().unwrap().unwrap()).unwrap()
    else {
        panic!("expected gossip after the feature map");
    };
    (channel, payload[0])
}

/// A peer that offers this version of topology digests gets a summary; one that offers
/// none, or another version (a weave-router before the compact entries), gets the whole
/// table in Weave's format.
#[test]
fn only_a_peer_offering_our_digest_version_gets_digests() {
    assert_eq!(
        first_gossip_to(Some(weave_router::mesh::router::DIGEST_VERSION)),
        ("topology.digest".to_string(), 1)
    );
    for other in [None, Some("1"), Some("3")] {
        let (channel, _) = first_gossip_to(other);
        assert_eq!(channel, "topology", "{other:?}");
    }
}

/// A broadcast on an application channel is delivered once: the same one arriving again,
/// or one this router sent coming back (views that disagree can hand a broadcast back and
/// forth between two routers), is dropped and counted, until it has been forgotten.
#[test]
fn a_repeated_broadcast_is_delivered_once() {
    use weave_router::mesh::router::BROADCAST_MEMORY;
    use weave_router::mesh::ChannelEvent;
    let cap = capture();
    let now = Instant::now();
    let mut mesh = Mesh::new(host1(), 7, now);
    mesh.register_channel("IPallocation");
    let key = mesh.handle_accepted("192.168.77.2:43347".parse().unwrap(), now);
    let mut input = hex_of(&cap, 6);
    input.extend(hex_of(&cap, 12));
    input.extend(wire::frame(&hex_of(&cap, 13)));
    input.extend(wire::frame(&hex_of(&cap, 16)));
    mesh.handle_data(key, &input, now);
    let (_, closed) = drain(&mut mesh, key);
    assert!(!closed, "{:?}", events(&mut mesh));
    let host2: PeerName = "aa:00:00:00:00:02".parse().unwrap();
    let feed = |mesh: &mut Mesh, payload: &[u8], at: Instant| -> usize {
        let msg = Message::GossipBroadcast {
            channel: "IPallocation".into(),
            src: host2,
            payload: payload.to_vec(),
        };
        mesh.handle_data(key, &wire::frame(&msg.emit()), at);
        assert!(!drain(mesh, key).1);
        std::iter::from_fn(|| mesh.poll_channel_event())
            .filter(|e| matches!(e, ChannelEvent::Broadcast { .. }))
            .count()
    };
    assert_eq!(feed(&mut mesh, b"ring 1", now), 1);
    assert_eq!(feed(&mut mesh, b"ring 1", now), 0);
    assert_eq!(mesh.broadcast_repeats(), 1);
    assert_eq!(feed(&mut mesh, b"ring 2", now), 1);
    // What the channel's owner relays on (its own state) is not taken back either.
    mesh.relay_broadcast("IPallocation", host2, b"ring 3".to_vec(), now);
    assert_eq!(feed(&mut mesh, b"ring 3", now), 0);
    assert_eq!(mesh.broadcast_repeats(), 2);
    // Once forgotten, the same content is new again.
    let later = now + BROADCAST_MEMORY;
    assert_eq!(feed(&mut mesh, b"ring 1", later), 1);
    assert_eq!(mesh.broadcast_repeats(), 2);
}
