//! Sleeve datagram decoding: parse, walk the frames, classify special frames, answer
//! oversized frames with ICMP, and check that what parses re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_router::wire::icmp::frag_needed;
use weave_router::wire::sleeve::{
    encode_packet, SleeveError, SleevePacket, SpecialFrame, PACKET_HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    let packet = match SleevePacket::new_checked(data) {
        Ok(p) => p,
        Err(SleeveError::TooShort { .. } | SleeveError::EmptyPacket) => {
            assert!(data.len() <= PACKET_HEADER_LEN);
            return;
        }
        Err(e) => panic!("unexpected error from new_checked: {e}"),
    };
    let sender = packet.sender();
    let mut frames = Vec::new();
    let mut failed = false;
    for frame in packet.into_frames() {
        match frame {
            Ok(f) => {
                match SpecialFrame::parse(f.frame) {
                    Some(special @ SpecialFrame::Heartbeat(_)) => {
                        assert_eq!(special.to_vec(), f.frame);
                    }
                    // Only the header of the other kinds is read; their bodies may be anything.
                    Some(special @ (SpecialFrame::FragTest | SpecialFrame::PmtuProbe { .. })) => {
                        assert_eq!(special.buffer_len(), f.frame.len());
                    }
                    None => {}
                }
                if let Some(answer) = frag_needed(f.frame, 1438) {
                    assert!(answer.len() <= 14 + 20 + 8 + 60 + 8);
                }
                frames.push(f);
            }
            Err(_) => {
                assert!(!failed, "the iterator yields at most one error");
                failed = true;
            }
        }
    }
    assert_eq!(failed, packet.validate().is_err());
    if !failed && frames.len() <= weave_router::wire::sleeve::MAX_FRAMES_PER_PACKET {
        let again = encode_packet(sender, &frames).expect("parsed frames re-encode");
        assert_eq!(again, data);
    }
});
