//! Mesh TCP stream decoding: split a v2 byte stream into bodies (fed in pieces and at once,
//! which must agree), parse each as a message, decode feature maps, topology payloads and
//! topology-digest messages, and check that parsed messages re-encode to messages that
//! parse the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_router::wire::digest::DigestMessage;
use weave_router::wire::mesh::{
    decode_features, decode_topology, FrameDecoder, Message, ProtocolHeader,
};

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    if let Some(h) = stream.first_chunk::<7>() {
        if let Ok(header) = ProtocolHeader::parse(h) {
            assert_eq!(&header.emit(), h);
        }
    }

    let whole = bodies(stream, stream.len().max(1));
    let pieces = bodies(stream, usize::from(step) + 1);
    assert_eq!(
        whole, pieces,
        "splitting the stream must not change the bodies"
    );

    let (bodies, _err) = whole;
    for body in &bodies {
        // The first body of a connection is the feature map; any body may be tried as one.
        let _ = decode_features(body);
        let Ok(msg) = Message::parse(body) else {
            continue;
        };
        let again = Message::parse(&msg.emit()).expect("emitted message parses");
        assert_eq!(again, msg);
        match &msg {
            Message::Gossip { payload, .. }
            | Message::GossipUnicast { payload, .. }
            | Message::GossipBroadcast { payload, .. } => {
                let _ = decode_topology(payload);
                digest_round_trip(payload);
            }
            Message::Heartbeat | Message::OverlayControl { .. } | Message::Unknown { .. } => {}
        }
    }
    let _ = decode_topology(stream);
    digest_round_trip(stream);
});

/// A digest-channel payload that parses must encode to one that parses the same.
fn digest_round_trip(payload: &[u8]) {
    if let Ok(msg) = DigestMessage::parse(payload) {
        let again = DigestMessage::parse(&msg.emit()).expect("emitted digest message parses");
        assert_eq!(again, msg);
    }
}

/// All bodies the decoder yields when the stream arrives `chunk` bytes at a time, and
/// whether it ended with an error.
fn bodies(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, bool) {
    let mut dec = FrameDecoder::default();
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_body() {
                Ok(Some(body)) => out.push(body),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}
