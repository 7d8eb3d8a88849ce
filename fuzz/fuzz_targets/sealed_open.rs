//! The encrypted sleeve's receive path, in Weave's format and the fast one (bit 1 of the
//! first byte). The input, after a first byte, is what follows the sender name of a datagram
//! claiming to come from a peer whose sleeve is encrypted: an attacker who does not hold the
//! session key. Nothing of it may reach the bridge, the
//! control plane or the network, and it is counted as exactly one drop. The same bytes
//! sealed by the peer's session open once to exactly themselves, a second time as a
//! replay, and with any one bit flipped not at all.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use weave_router::crypto::SessionKey;
use weave_router::dataplane::engine::{Counters, Engine, Snapshot};
use weave_router::dataplane::sealed::{OpenError, PathCrypto, OVERHEAD};
use weave_router::ids::PeerName;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let us = PeerName::from_bytes([0xaa, 0, 0, 0, 0, 1]);
    let peer = PeerName::from_bytes([0xaa, 0, 0, 0, 0, 2]);
    let key = SessionKey::from_bytes([0x42; 32]);

    let counters = Arc::new(Counters::default());
    let mut engine = Engine::new(us, Arc::clone(&counters));
    let aead = mode & 2 != 0;
    let ours = Arc::new(PathCrypto::new(key.clone(), false, aead));
    engine.set_snapshot(Arc::new(Snapshot {
        crypto: BTreeMap::from([(peer, Arc::clone(&ours))]),
        ..Snapshot::default()
    }));
    let mut datagram = peer.to_bytes().to_vec();
    datagram.extend_from_slice(rest);
    let mut out = engine.output();
    engine.from_udp("10.0.0.2:6783".parse().unwrap(), &datagram, Instant::now(), &mut out);
    engine.flush(&mut out);
    assert!(out.tap.is_empty(), "a forgery reached the bridge");
    assert!(out.control.is_empty(), "a forgery reached the control plane");
    assert!(out.send.is_empty(), "a forgery was relayed");
    let dropped: u64 = counters.drops().iter().map(|(_, n)| n).sum();
    assert_eq!(dropped, 1, "one datagram, one drop");

    // Sealed by the peer (which dialled), it opens to exactly `rest`, once.
    let theirs = PathCrypto::new(key, true, aead);
    let mut sealed = peer.to_bytes().to_vec();
    sealed.resize(6 + OVERHEAD, 0);
    sealed.extend_from_slice(rest);
    assert!(theirs.seal(mode & 1 == 1, u16::from(mode >> 2), &mut sealed));
    let mut flipped = sealed.clone();
    let mut again = sealed.clone();
    let (name, body) = sealed.split_at_mut(6);
    let range = ours.open(name, body).expect("the peer's datagram opens");
    assert_eq!(&body[range], rest);
    let (name, body) = again.split_at_mut(6);
    assert!(matches!(ours.open(name, body), Err(OpenError::Replay(_))));
    // Any one bit, the sender name included (it is authenticated data in the fast format,
    // and picks the session in both).
    let bit = usize::from(mode) * 7919 % (flipped.len() * 8);
    flipped[bit / 8] ^= 1 << (bit % 8);
    let (name, body) = flipped.split_at_mut(6);
    if bit >= 48 || aead {
        assert!(ours.open(name, body).is_err(), "a flipped bit opens");
    }
});
