//! Encrypted sleeve datagrams, as Weave Net 2.8's `NaClEncryptor`/`NaClDecryptor` frame them:
//!
//! ```text
//! sender PeerName (6) | seq (8, BE; top bit set = DF stream) | tag (16) | sealed frames
//! ```
//!
//! The nonce is [`udp_nonce`] of the sender's polarity and the seq field as sent (DF bit
//! included), so the DF and non-DF streams, each counting from 0, never share a nonce.
//! Replay checks belong to the caller, after a datagram opens (see [`super::ReplayWindow`]).

use std::ops::Range;

use super::nacl::{open_in_place, seal_in_place, udp_nonce, CryptoError, SessionKey, TAG_LEN};
use crate::wire::sleeve::PACKET_HEADER_LEN;

/// Top bit of the seq field: the datagram belongs to the DF (don't fragment) stream.
pub const DF_BIT: u64 = 1 << 63;
/// Bytes encryption adds after the 6-byte sender name: seq field (8) and tag.
pub const DATAGRAM_OVERHEAD: usize = SEQ_FIELD_LEN + TAG_LEN;

/// Bytes of the seq field.
const SEQ_FIELD_LEN: usize = 8;

/// Seals a sleeve datagram in place. `buf` is `[name(6)][8 bytes seq space][TAG_LEN gap]
/// [plaintext frames]`; writes the seq field (`seq`, with [`DF_BIT`] when `df`) and the tag,
/// and encrypts the frames. `seq` counts per stream from 0 and must stay below 2^63.
///
/// # Panics
/// If `buf` is shorter than the name and [`DATAGRAM_OVERHEAD`].
pub fn seal_datagram(key: &SessionKey, sender_outbound: bool, df: bool, seq: u64, buf: &mut [u8]) {
    debug_assert_eq!(seq & DF_BIT, 0, "sleeve sequence numbers are 63-bit");
    let seq_field = if df { seq | DF_BIT } else { seq };
    let body = &mut buf[PACKET_HEADER_LEN..];
    body[..SEQ_FIELD_LEN].copy_from_slice(&seq_field.to_be_bytes());
    seal_in_place(
        key,
        &udp_nonce(sender_outbound, seq_field),
        &mut body[SEQ_FIELD_LEN..],
    );
}

/// Opens a sleeve datagram in place. `body` is everything after the 6-byte sender name;
/// `sender_outbound` is the SENDER's polarity (the negation of the receiving side's).
/// Returns the stream (`df`), the sequence number without [`DF_BIT`] and where the plaintext
/// frames lie within `body`.
pub fn open_datagram(
    key: &SessionKey,
    sender_outbound: bool,
    body: &mut [u8],
) -> Result<(bool, u64, Range<usize>), CryptoError> {
    if body.len() < DATAGRAM_OVERHEAD {
        return Err(CryptoError::Truncated);
    }
    let (seq_bytes, sealed) = body.split_at_mut(SEQ_FIELD_LEN);
    let seq_field = u64::from_be_bytes(seq_bytes.try_into().expect("split at SEQ_FIELD_LEN"));
    open_in_place(key, &udp_nonce(sender_outbound, seq_field), sealed)?;
    Ok((
        seq_field & DF_BIT != 0,
        seq_field & !DF_BIT,
        DATAGRAM_OVERHEAD..body.len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::nacl::{open, udp_nonce};
    use crate::wire::sleeve::ENCRYPTION_OVERHEAD;

    const NAME: [u8; 6] = [0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f];

    fn key(byte: u8) -> SessionKey {
        SessionKey::from_bytes([byte; 32])
    }

    fn datagram(plaintext: &[u8]) -> Vec<u8> {
        let mut buf = NAME.to_vec();
        buf.resize(PACKET_HEADER_LEN + DATAGRAM_OVERHEAD, 0);
        buf.extend_from_slice(plaintext);
        buf
    }

    fn sealed(df: bool, seq: u64, plaintext: &[u8]) -> Vec<u8> {
        let mut buf = datagram(plaintext);
        seal_datagram(&key(1), true, df, seq, &mut buf);
        buf
    }

    #[test]
    fn overhead_agrees_with_the_sleeve_codec() {
        assert_eq!(DATAGRAM_OVERHEAD, ENCRYPTION_OVERHEAD);
    }

    #[test]
    fn round_trips_both_streams() {
        for df in [false, true] {
            let mut buf = sealed(df, 41, b"frames go here");

            let (got_df, seq, range) = open_datagram(&key(1), true, &mut buf[6..]).unwrap();

            assert_eq!((got_df, seq), (df, 41));
            assert_eq!(&buf[6..][range], b"frames go here");
            assert_eq!(buf[..6], NAME);
        }
    }

    #[test]
    fn seq_field_is_big_endian_with_the_df_bit() {
        let plain = sealed(false, 0x0102_0304_0506_0708, b"x");
        let df = sealed(true, 3, b"x");

        assert_eq!(plain[6..14], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(df[6..14], [0x80, 0, 0, 0, 0, 0, 0, 3]);
    }

    #[test]
    fn sealed_part_is_secretbox_under_the_udp_nonce() {
        let buf = sealed(true, 3, b"frames");

        let opened = open(&key(1), &udp_nonce(true, DF_BIT | 3), &buf[14..]).unwrap();

        assert_eq!(opened, b"frames");
    }

    #[test]
    fn heartbeat_sized_datagram_is_66_bytes() {
        let buf = sealed(false, 0, &[0; 36]);

        assert_eq!(buf.len(), 6 + 8 + 16 + 36);
        assert_eq!(buf.len(), 66);
    }

    #[test]
    fn wrong_polarity_or_key_is_forged() {
        let buf = sealed(false, 9, b"frames");

        assert_eq!(
            open_datagram(&key(1), false, &mut buf[6..].to_vec()),
            Err(CryptoError::Forged)
        );
        assert_eq!(
            open_datagram(&key(2), true, &mut buf[6..].to_vec()),
            Err(CryptoError::Forged)
        );
    }

    #[test]
    fn any_flipped_byte_after_the_name_is_forged() {
        let buf = sealed(true, 9, b"frames");

        for i in 6..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open_datagram(&key(1), true, &mut bad[6..]),
                Err(CryptoError::Forged),
                "byte {i}"
            );
        }
    }

    #[test]
    fn df_bit_flipped_in_the_header_is_forged() {
        let mut buf = sealed(false, 9, b"frames");
        buf[6] ^= 0x80;

        assert_eq!(
            open_datagram(&key(1), true, &mut buf[6..]),
            Err(CryptoError::Forged)
        );
    }

    #[test]
    fn short_bodies_are_truncated() {
        let buf = sealed(false, 0, b"");
        assert_eq!(buf.len() - 6, DATAGRAM_OVERHEAD);
        assert!(open_datagram(&key(1), true, &mut buf[6..].to_vec()).is_ok());

        for len in [0, 7, 8, DATAGRAM_OVERHEAD - 1] {
            let mut body = buf[6..6 + len].to_vec();
            assert_eq!(
                open_datagram(&key(1), true, &mut body),
                Err(CryptoError::Truncated),
                "len {len}"
            );
        }
    }
}
