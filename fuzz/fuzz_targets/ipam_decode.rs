//! `IPallocation` payload decoding: arbitrary bytes as a gossip state, a unicast message, a
//! persisted ring and a range; whatever decodes must re-encode to bytes that decode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_router::wire::ipam::{
    decode_gossip, decode_range, decode_ring, decode_unicast, encode_gossip, encode_range,
    encode_ring, encode_unicast,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = decode_gossip(data) {
        assert_eq!(decode_gossip(&encode_gossip(&state)), Ok(state));
    }
    // Unicast payloads decode their stream with the gossip and range decoders too, so the
    // captured unicast seeds reach every typed reader.
    if let Ok(msg) = decode_unicast(data) {
        let bytes = encode_unicast(&msg);
        assert_eq!(bytes.first(), data.first(), "kind byte kept");
        assert_eq!(decode_unicast(&bytes), Ok(msg));
    }
    if let Ok(ring) = decode_ring(data) {
        assert_eq!(decode_ring(&encode_ring(&ring)), Ok(ring));
    }
    if let Ok(range) = decode_range(data) {
        assert_eq!(decode_range(&encode_range(&range)), Ok(range));
    }
});
