//! The fast sleeve cipher between two weave-routers: AES-256-GCM from `ring` (AES-NI and
//! carry-less multiplication where the CPU has them), negotiated through the feature map and
//! used only when both ends offer it. Weave Net peers always get Weave's NaCl format.
//!
//! A datagram keeps the layout of Weave's encrypted one, so the overhead (24 bytes) and the
//! MTU stay the same: `senderName(6) header(8) tag(16) ciphertext`. The header is a stream
//! (u16: one per sending worker, so that workers count without sharing a counter) and a
//! 48-bit counter, big-endian. The 96-bit nonce is the stream, two zero bytes and the
//! counter; the sender's name is the additional authenticated data.
//!
//! Keys come from Weave's session key by HKDF-SHA256: one per direction (the dialler's and
//! the listener's), stream and epoch of 2^24 datagrams. So no nonce repeats under a key, and
//! no key seals more than 2^24 datagrams, the margin TLS 1.3 keeps for AES-GCM (RFC 8446
//! section 5.5): the keys change as the counter moves on, with nothing to negotiate.

use std::ops::Range;

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::hkdf;

use crate::crypto::{CryptoError, SessionKey, TAG_LEN};
use crate::wire::sleeve::PACKET_HEADER_LEN;

/// Bytes of the header: stream and counter.
pub const AEAD_HEADER_LEN: usize = 8;
/// Datagrams sealed under one key: a stream's counter moves to the next key after these.
pub const EPOCH_LEN: u64 = 1 << 24;
/// A stream's counter stays below this (48 bits); the stream then ends.
pub const COUNTER_LIMIT: u64 = 1 << 48;
/// The cipher's name, as the feature map and status give it.
pub const AEAD_NAME: &str = "aes-256-gcm";

/// HKDF's salt: names this use of the session key, apart from Weave's own.
const SALT: &[u8] = b"weave-router sleeve aes-256-gcm v1";

/// The keys of one connection's fast sleeve: everything derives from the session key.
pub struct AeadKeys {
    prk: hkdf::Prk,
}

impl std::fmt::Debug for AeadKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKeys(..)")
    }
}

impl AeadKeys {
    /// The keys of the connection whose session key is `session`.
    pub fn new(session: &SessionKey) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT);
        AeadKeys {
            prk: salt.extract(session.as_bytes()),
        }
    }

    /// The key of the datagrams the dialler (`from_dialler`) or the listener sends on
    /// `stream` in `epoch`.
    pub fn key(&self, from_dialler: bool, stream: u16, epoch: u32) -> LessSafeKey {
        let direction: &[u8] = if from_dialler {
            b"dialler to listener"
        } else {
            b"listener to dialler"
        };
        let stream = stream.to_be_bytes();
        let epoch = epoch.to_be_bytes();
        let info = [direction, &stream, &epoch];
        let okm = self
            .prk
            .expand(&info, &AES_256_GCM)
            .expect("32 bytes is within HKDF-SHA256's output limit");
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

/// The epoch (key) of a counter.
pub fn epoch(counter: u64) -> u32 {
    (counter / EPOCH_LEN) as u32
}

/// The 8-byte header for `stream` and `counter`.
pub fn aead_header(stream: u16, counter: u64) -> [u8; AEAD_HEADER_LEN] {
    debug_assert!(counter < COUNTER_LIMIT);
    let mut h = counter.to_be_bytes();
    h[..2].copy_from_slice(&stream.to_be_bytes());
    h
}

/// Stream and counter of a header.
pub fn parse_aead_header(h: [u8; AEAD_HEADER_LEN]) -> (u16, u64) {
    let stream = u16::from_be_bytes([h[0], h[1]]);
    let counter = u64::from_be_bytes(h) & (COUNTER_LIMIT - 1);
    (stream, counter)
}

fn nonce(stream: u16, counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..2].copy_from_slice(&stream.to_be_bytes());
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals a datagram laid out as `[sender name][header gap][TAG_LEN gap][frames]` in place,
/// with `key` (the one of `stream` and `counter`'s epoch). Panics if `buf` is shorter than
/// the name and the gaps.
pub fn seal_aead(key: &LessSafeKey, stream: u16, counter: u64, buf: &mut [u8]) {
    let (name, rest) = buf.split_at_mut(PACKET_HEADER_LEN);
    let (header, rest) = rest.split_at_mut(AEAD_HEADER_LEN);
    let (tag_field, frames) = rest.split_at_mut(TAG_LEN);
    header.copy_from_slice(&aead_header(stream, counter));
    let tag = key
        .seal_in_place_separate_tag(nonce(stream, counter), Aad::from(&*name), frames)
        .expect("a datagram is far below AES-GCM's message limit");
    tag_field.copy_from_slice(tag.as_ref());
}

/// Opens, in place, a datagram's part after the sender name (`body`), sealed by `name` with
/// `key` (the one of the header's stream and epoch); the frames are then at the returned
/// range of `body`.
pub fn open_aead(
    key: &LessSafeKey,
    name: &[u8],
    body: &mut [u8],
) -> Result<Range<usize>, CryptoError> {
    let (stream, counter) = read_header(body)?;
    let start = AEAD_HEADER_LEN + TAG_LEN;
    let tag = Tag::try_from(&body[AEAD_HEADER_LEN..start]).map_err(|_| CryptoError::Truncated)?;
    key.open_in_place_separate_tag(
        nonce(stream, counter),
        Aad::from(name),
        tag,
        &mut body[start..],
        0..,
    )
    .map_err(|_| CryptoError::Forged)?;
    Ok(start..body.len())
}

/// Stream and counter of a datagram's part after the sender name, if it is long enough to
/// hold a header and a tag.
pub fn read_header(body: &[u8]) -> Result<(u16, u64), CryptoError> {
    if body.len() < AEAD_HEADER_LEN + TAG_LEN {
        return Err(CryptoError::Truncated);
    }
    let h: [u8; AEAD_HEADER_LEN] = body[..AEAD_HEADER_LEN].try_into().expect("length checked");
    Ok(parse_aead_header(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DATAGRAM_OVERHEAD;

    fn layout(frames: &[u8]) -> Vec<u8> {
        let mut buf = b"\xaa\0\0\0\0\x01".to_vec();
        buf.resize(PACKET_HEADER_LEN + DATAGRAM_OVERHEAD, 0);
        buf.extend_from_slice(frames);
        buf
    }

    /// NIST's AES-256-GCM example (gcmEncryptExtIV256.rsp, Count 0 of the 96-bit IV,
    /// 128-bit tag, 128-bit plaintext, no AAD set): ring computes it, so a wrong build
    /// of the cipher shows here.
    #[test]
    fn nist_aes_256_gcm_vector() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let key = hex("31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22");
        let iv: [u8; 12] = hex("0d18e06c7c725ac9e362e1ce").try_into().unwrap();
        let pt = hex("2db5168e932556f8089a0622981d017d");
        let ct = hex("fa4362189661d163fcd6a56d8bf0405a");
        let tag = hex("d636ac1bbedd5cc3ee727dc2ab4a9489");
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
        let mut buf = pt.clone();
        let t = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(iv), Aad::empty(), &mut buf)
            .unwrap();
        assert_eq!(buf, ct);
        assert_eq!(t.as_ref(), &tag[..]);
    }

    #[test]
    fn header_holds_stream_and_counter() {
        let h = aead_header(0x0102, 0x0000_0a0b_0c0d_0e0f);
        assert_eq!(h, [1, 2, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f]);
        assert_eq!(parse_aead_header(h), (0x0102, 0x0a0b_0c0d_0e0f));
        assert_eq!(epoch(EPOCH_LEN - 1), 0);
        assert_eq!(epoch(EPOCH_LEN), 1);
    }

    #[test]
    fn keys_differ_by_direction_stream_epoch_and_session() {
        let s = SessionKey::from_bytes([7; 32]);
        let keys = AeadKeys::new(&s);
        let mut seen = Vec::new();
        for (dir, stream, ep) in [(true, 0, 0), (false, 0, 0), (true, 1, 0), (true, 0, 1)] {
            let mut d = layout(b"same frames");
            seal_aead(
                &keys.key(dir, stream, ep),
                stream,
                u64::from(ep) * EPOCH_LEN,
                &mut d,
            );
            seen.push(d[PACKET_HEADER_LEN + AEAD_HEADER_LEN..].to_vec());
        }
        let other = AeadKeys::new(&SessionKey::from_bytes([8; 32]));
        let mut d = layout(b"same frames");
        seal_aead(&other.key(true, 0, 0), 0, 0, &mut d);
        seen.push(d[PACKET_HEADER_LEN + AEAD_HEADER_LEN..].to_vec());
        for i in 0..seen.len() {
            for j in i + 1..seen.len() {
                assert_ne!(seen[i], seen[j], "{i} and {j}");
            }
        }
    }

    #[test]
    fn round_trip_and_tampering() {
        let keys = AeadKeys::new(&SessionKey::from_bytes([1; 32]));
        let key = keys.key(true, 3, 0);
        let mut d = layout(b"frames of a datagram");
        seal_aead(&key, 3, 41, &mut d);
        assert_eq!(d.len(), 6 + 24 + 20, "Weave's overhead");
        assert_eq!(read_header(&d[6..]), Ok((3, 41)));
        let (name, body) = d.split_at(6);
        let mut opened = body.to_vec();
        let range = open_aead(&key, name, &mut opened).expect("opens");
        assert_eq!(&opened[range], b"frames of a datagram");
        // Every single flipped bit after the name, or in the name (the AAD), fails.
        for bit in 0..d.len() * 8 {
            let mut t = d.clone();
            t[bit / 8] ^= 1 << (bit % 8);
            let (name, body) = t.split_at_mut(6);
            assert_eq!(
                open_aead(&key, name, body),
                Err(CryptoError::Forged),
                "bit {bit}"
            );
        }
        // The other direction's key does not open it.
        let (name, body) = d.split_at(6);
        let mut b = body.to_vec();
        assert_eq!(
            open_aead(&keys.key(false, 3, 0), name, &mut b),
            Err(CryptoError::Forged)
        );
        assert_eq!(
            open_aead(&key, name, &mut [0u8; 23]),
            Err(CryptoError::Truncated)
        );
    }
}
