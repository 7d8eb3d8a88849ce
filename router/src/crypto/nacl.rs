//! NaCl primitives as Weave uses them through Go's `golang.org/x/crypto/nacl`: Curve25519 key
//! pairs (`box.GenerateKey`), `box.Precompute`, the session key, secretbox (XSalsa20-Poly1305,
//! tag first) and the nonces and sequence state of the mesh's TCP messages.

use std::fmt;

use crypto_secretbox::aead::generic_array::GenericArray;
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use rand::rngs::OsRng;
use salsa20::cipher::consts::U10;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroize;

/// Bytes secretbox adds to a message: the Poly1305 tag, which comes first.
pub const TAG_LEN: usize = 16;
/// Bytes of a Curve25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of a secretbox nonce.
pub const NONCE_LEN: usize = 24;

/// Nonce byte 0: set when the sender dialled the connection, so the two directions of one
/// session key never share a nonce.
const NONCE_OUTBOUND: u8 = 0x80;
/// Nonce byte 0: set for TCP messages, so they never share a nonce with sleeve datagrams
/// under the same session key.
const NONCE_TCP: u8 = 0x40;

/// Why a sealed message was refused.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum CryptoError {
    /// The input is too short to hold a tag (or, for a datagram, its header and tag).
    #[error("sealed message too short to hold its header and tag")]
    Truncated,
    /// Authentication failed: wrong key or nonce, forged or corrupted.
    #[error("sealed message failed authentication")]
    Forged,
}

/// A 32-byte session key; zeroized on drop, never printed.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> XSalsa20Poly1305 {
        XSalsa20Poly1305::new(GenericArray::from_slice(&self.0))
    }
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PartialEq for SessionKey {
    fn eq(&self, other: &Self) -> bool {
        // Looks at every byte rather than stopping at the first difference, so comparing
        // keys in state snapshots tells nothing through timing about where they differ.
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for SessionKey {}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// An ephemeral Curve25519 key pair for one connection.
pub struct KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl KeyPair {
    /// A fresh key pair from OS randomness, like `box.GenerateKey(rand.Reader)`.
    pub fn generate() -> Self {
        Self::with_secret(StaticSecret::random_from_rng(OsRng))
    }

    /// The key pair of a given secret key (test vectors); clamping happens in the multiply.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self::with_secret(StaticSecret::from(secret))
    }

    /// The public key to send to the remote side.
    pub fn public(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.public.to_bytes()
    }

    /// `SHA-256(HSalsa20(X25519(self, remote), 0^16) || password)`, mesh's `formSessionKey`.
    ///
    /// A low-order remote key is not refused (Go's `box.Precompute` does not refuse it
    /// either): the key is then all zeroes before hashing, and the password still guards it.
    pub fn session_key(&self, remote_public: &[u8; 32], password: &[u8]) -> SessionKey {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*remote_public));
        let mut before = hsalsa20_zero(shared.as_bytes());
        let mut hasher = Sha256::new();
        hasher.update(before);
        hasher.update(password);
        before.zeroize();
        SessionKey(hasher.finalize().into())
    }

    fn with_secret(secret: StaticSecret) -> Self {
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public.as_bytes())
            .finish_non_exhaustive()
    }
}

/// NaCl `box.Precompute` (`crypto_box_beforenm`): HSalsa20 of the X25519 shared secret.
pub fn precompute(local_secret: &[u8; 32], remote_public: &[u8; 32]) -> [u8; 32] {
    let mut shared = x25519_dalek::x25519(*local_secret, *remote_public);
    let key = hsalsa20_zero(&shared);
    shared.zeroize();
    key
}

/// Seals `buf[TAG_LEN..]` in place and writes the tag into `buf[..TAG_LEN]`, so `buf` ends
/// up equal to Go's `secretbox.Seal(nil, plaintext, nonce, key)`.
///
/// # Panics
/// If `buf` is shorter than [`TAG_LEN`]: the caller must leave the gap.
pub fn seal_in_place(key: &SessionKey, nonce: &[u8; NONCE_LEN], buf: &mut [u8]) {
    let (tag, body) = buf.split_at_mut(TAG_LEN);
    // The only error of the detached call is for associated data, which secretbox lacks.
    let computed = key
        .cipher()
        .encrypt_in_place_detached(GenericArray::from_slice(nonce), b"", body)
        .expect("secretbox without associated data cannot fail to seal");
    tag.copy_from_slice(&computed);
}

/// Opens `buf` (tag then ciphertext) in place: on success the plaintext is `buf[TAG_LEN..]`;
/// on failure `buf`'s contents are unspecified.
pub fn open_in_place(
    key: &SessionKey,
    nonce: &[u8; NONCE_LEN],
    buf: &mut [u8],
) -> Result<(), CryptoError> {
    if buf.len() < TAG_LEN {
        return Err(CryptoError::Truncated);
    }
    let (tag, body) = buf.split_at_mut(TAG_LEN);
    open_detached(key, nonce, tag, body)
}

/// Seals `plaintext` into a new buffer: tag, then ciphertext (Go's `secretbox.Seal`).
pub fn seal(key: &SessionKey, nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; TAG_LEN + plaintext.len()];
    buf[TAG_LEN..].copy_from_slice(plaintext);
    seal_in_place(key, nonce, &mut buf);
    buf
}

/// Opens `boxed` (tag, then ciphertext) into a new buffer holding the plaintext.
pub fn open(
    key: &SessionKey,
    nonce: &[u8; NONCE_LEN],
    boxed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let Some((tag, ciphertext)) = boxed.split_at_checked(TAG_LEN) else {
        return Err(CryptoError::Truncated);
    };
    let mut plaintext = ciphertext.to_vec();
    open_detached(key, nonce, tag, &mut plaintext)?;
    Ok(plaintext)
}

/// Nonce of a TCP mesh message: byte 0 = 0x40 | (0x80 if the sender dialled), bytes 16..24
/// the message's sequence number, big-endian.
pub fn tcp_nonce(sender_outbound: bool, seq: u64) -> [u8; NONCE_LEN] {
    nonce(NONCE_TCP | outbound_bit(sender_outbound), seq)
}

/// Nonce of a sleeve datagram; `seq_field` is the 8-byte header value (DF bit included):
/// byte 0 = 0x80 if the sender dialled, bytes 16..24 = `seq_field`, big-endian.
pub fn udp_nonce(sender_outbound: bool, seq_field: u64) -> [u8; NONCE_LEN] {
    nonce(outbound_bit(sender_outbound), seq_field)
}

/// Sending half of one connection's TCP crypto state (mesh's `tcpCryptoState` in an
/// `encryptedTCPSender`): seals messages with consecutive sequence numbers from 0.
#[derive(Debug, Clone)]
pub struct TcpSealer {
    key: SessionKey,
    outbound: bool,
    seq: u64,
}

impl TcpSealer {
    /// State for sending on a connection this side dialled (`outbound`) or accepted.
    pub fn new(key: SessionKey, outbound: bool) -> Self {
        Self {
            key,
            outbound,
            seq: 0,
        }
    }

    /// Seals the next message: tag then ciphertext, `msg.len() + TAG_LEN` bytes.
    pub fn seal(&mut self, msg: &[u8]) -> Vec<u8> {
        let boxed = seal(&self.key, &tcp_nonce(self.outbound, self.seq), msg);
        // 2^64 messages cannot pass over one connection; Go's uint64 counter wraps the same way.
        self.seq = self.seq.wrapping_add(1);
        boxed
    }
}

/// Receiving half of one connection's TCP crypto state (mesh's `encryptedTCPReceiver`):
/// opens messages only in order, since TCP neither loses nor reorders them.
#[derive(Debug, Clone)]
pub struct TcpOpener {
    key: SessionKey,
    remote_outbound: bool,
    seq: u64,
}

impl TcpOpener {
    /// State for receiving on a connection; `outbound` is this side's polarity (the remote
    /// seals with the opposite one).
    pub fn new(key: SessionKey, outbound: bool) -> Self {
        Self {
            key,
            remote_outbound: !outbound,
            seq: 0,
        }
    }

    /// Opens the next message. A failure leaves the expected sequence number where it was;
    /// the caller drops the connection.
    pub fn open(&mut self, boxed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let msg = open(&self.key, &tcp_nonce(self.remote_outbound, self.seq), boxed)?;
        self.seq = self.seq.wrapping_add(1);
        Ok(msg)
    }
}

/// HSalsa20 with a zero input block: what `box.Precompute` applies to the X25519 output.
fn hsalsa20_zero(shared: &[u8; 32]) -> [u8; 32] {
    salsa20::hsalsa::<U10>(GenericArray::from_slice(shared), &GenericArray::default()).into()
}

fn open_detached(
    key: &SessionKey,
    nonce: &[u8; NONCE_LEN],
    tag: &[u8],
    body: &mut [u8],
) -> Result<(), CryptoError> {
    key.cipher()
        .decrypt_in_place_detached(
            GenericArray::from_slice(nonce),
            b"",
            body,
            GenericArray::from_slice(tag),
        )
        .map_err(|_| CryptoError::Forged)
}

fn outbound_bit(sender_outbound: bool) -> u8 {
    if sender_outbound {
        NONCE_OUTBOUND
    } else {
        0
    }
}

fn nonce(byte0: u8, low: u64) -> [u8; NONCE_LEN] {
    let mut n = [0; NONCE_LEN];
    n[0] = byte0;
    n[16..].copy_from_slice(&low.to_be_bytes());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    // NaCl's test vectors ("Cryptography in NaCl", repeated in libsodium's test/default:
    // scalarmult*.c/.exp, core1.c/.exp, box.c/.exp, box2.c/.exp, secretbox.c/.exp).
    const ALICE_SK: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PK: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const BOB_SK: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
    const BOB_PK: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
    const SHARED: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
    const FIRSTKEY: &str = "1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389";
    const NONCE: &str = "69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37";
    const MESSAGE: &str = concat!(
        "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffc",
        "e5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb31",
        "0e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde",
        "048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f93776384864",
        "5e0705",
    );
    // box.exp / secretbox.exp print c[16..163]: the 16-byte tag, then 131 ciphertext bytes,
    // which is exactly Go's secretbox.Seal output.
    const BOXED: &str = concat!(
        "f3ffc7703f9400e52a7dfb4b3d3305d9",
        "8e993b9f48681273c29650ba32fc76ce48332ea7164d96a4476fb8c531a1186a",
        "c0dfc17c98dce87b4da7f011ec48c97271d2c20f9b928fe2270d6fb863d51738",
        "b48eeee314a7cc8ab932164548e526ae90224368517acfeabd6bb3732bc0e9da",
        "99832b61ca01b6de56244a9e88d5f9b37973f622a43d14a6599b1f654cb45a74",
        "e355a5",
    );
    // SHA-256(FIRSTKEY || "weave-golden-vectors"), computed with Python's hashlib.
    const SESSION_KEY: &str = "501bea3d9bf58e19b58a40161f65bf3382a34dc793094247602af1b4516ceeed";
    const PASSWORD: &[u8] = b"weave-golden-vectors";

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn h24(s: &str) -> [u8; 24] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn firstkey() -> SessionKey {
        SessionKey::from_bytes(h32(FIRSTKEY))
    }

    #[test]
    fn public_keys_match_nacl_vectors() {
        assert_eq!(KeyPair::from_secret(h32(ALICE_SK)).public(), h32(ALICE_PK));
        assert_eq!(KeyPair::from_secret(h32(BOB_SK)).public(), h32(BOB_PK));
    }

    #[test]
    fn x25519_shared_secret_matches_nacl_vector() {
        let shared = x25519_dalek::x25519(h32(ALICE_SK), h32(BOB_PK));

        assert_eq!(shared, h32(SHARED));
        assert_eq!(
            x25519_dalek::x25519(h32(BOB_SK), h32(ALICE_PK)),
            h32(SHARED)
        );
    }

    #[test]
    fn hsalsa20_core_matches_nacl_core1_vector() {
        assert_eq!(hsalsa20_zero(&h32(SHARED)), h32(FIRSTKEY));
    }

    #[test]
    fn precompute_is_firstkey_in_both_directions() {
        assert_eq!(precompute(&h32(ALICE_SK), &h32(BOB_PK)), h32(FIRSTKEY));
        assert_eq!(precompute(&h32(BOB_SK), &h32(ALICE_PK)), h32(FIRSTKEY));
    }

    #[test]
    fn seal_matches_nacl_secretbox_vector() {
        let message = hex::decode(MESSAGE).unwrap();
        assert_eq!(message.len(), 131);

        let boxed = seal(&firstkey(), &h24(NONCE), &message);

        assert_eq!(boxed.len(), TAG_LEN + 131);
        assert_eq!(hex::encode(&boxed), BOXED);
    }

    #[test]
    fn seal_in_place_matches_nacl_secretbox_vector() {
        let mut buf = vec![0xaa; TAG_LEN];
        buf.extend(hex::decode(MESSAGE).unwrap());

        seal_in_place(&firstkey(), &h24(NONCE), &mut buf);

        assert_eq!(hex::encode(&buf), BOXED);
    }

    #[test]
    fn open_of_nacl_vector_gives_the_message() {
        let boxed = hex::decode(BOXED).unwrap();

        let opened = open(&firstkey(), &h24(NONCE), &boxed).unwrap();
        let mut in_place = boxed.clone();
        open_in_place(&firstkey(), &h24(NONCE), &mut in_place).unwrap();

        assert_eq!(hex::encode(&opened), MESSAGE);
        assert_eq!(hex::encode(&in_place[TAG_LEN..]), MESSAGE);
    }

    #[test]
    fn open_refuses_flipped_bits_short_input_and_wrong_nonce() {
        let boxed = hex::decode(BOXED).unwrap();
        let nonce = h24(NONCE);

        for i in [0, TAG_LEN - 1, TAG_LEN, boxed.len() - 1] {
            let mut bad = boxed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open(&firstkey(), &nonce, &bad),
                Err(CryptoError::Forged),
                "byte {i}"
            );
        }
        let mut other_nonce = nonce;
        other_nonce[23] ^= 1;
        assert_eq!(
            open(&firstkey(), &other_nonce, &boxed),
            Err(CryptoError::Forged)
        );
        assert_eq!(
            open(&firstkey(), &nonce, &boxed[..15]),
            Err(CryptoError::Truncated)
        );
        let mut short = [0u8; 15];
        assert_eq!(
            open_in_place(&firstkey(), &nonce, &mut short),
            Err(CryptoError::Truncated)
        );
    }

    #[test]
    fn empty_message_seals_to_a_bare_tag_and_opens() {
        let boxed = seal(&firstkey(), &h24(NONCE), b"");

        assert_eq!(boxed.len(), TAG_LEN);
        assert_eq!(open(&firstkey(), &h24(NONCE), &boxed), Ok(Vec::new()));
    }

    #[test]
    fn session_key_is_sha256_of_firstkey_and_password() {
        let mut hasher = Sha256::new();
        hasher.update(h32(FIRSTKEY));
        hasher.update(PASSWORD);
        let expected: [u8; 32] = hasher.finalize().into();
        assert_eq!(expected, h32(SESSION_KEY));

        let alice = KeyPair::from_secret(h32(ALICE_SK)).session_key(&h32(BOB_PK), PASSWORD);
        let bob = KeyPair::from_secret(h32(BOB_SK)).session_key(&h32(ALICE_PK), PASSWORD);

        assert_eq!(alice.as_bytes(), &expected);
        assert_eq!(bob.as_bytes(), &expected);
    }

    #[test]
    fn session_key_depends_on_password() {
        let alice = KeyPair::from_secret(h32(ALICE_SK));

        let a = alice.session_key(&h32(BOB_PK), b"one");
        let b = alice.session_key(&h32(BOB_PK), b"two");

        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(a, b);
        assert_eq!(a, alice.session_key(&h32(BOB_PK), b"one"));
    }

    #[test]
    fn generated_pairs_agree_on_a_session_key() {
        let a = KeyPair::generate();
        let b = KeyPair::generate();

        let ka = a.session_key(&b.public(), PASSWORD);
        let kb = b.session_key(&a.public(), PASSWORD);

        assert_ne!(a.public(), b.public());
        assert_eq!(ka.as_bytes(), kb.as_bytes());
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let key = SessionKey::from_bytes([0xab; 32]);
        let pair = KeyPair::from_secret(h32(ALICE_SK));

        assert_eq!(format!("{key:?}"), "SessionKey(..)");
        let printed = format!("{pair:?}");
        assert!(!printed.contains("119, 7, 109"), "{printed}"); // ALICE_SK's first bytes
        assert!(printed.contains("133, 32, 240"), "{printed}"); // ALICE_PK's first bytes
    }

    #[test]
    fn tcp_nonce_layout() {
        let mut expected = [0u8; 24];
        expected[0] = 0xc0;
        assert_eq!(tcp_nonce(true, 0), expected);

        let n = tcp_nonce(false, 5);
        assert_eq!(n[0], 0x40);
        assert_eq!(n[1..16], [0; 15]);
        assert_eq!(n[16..], 5u64.to_be_bytes());

        assert_eq!(tcp_nonce(true, u64::MAX)[16..], [0xff; 8]);
    }

    #[test]
    fn udp_nonce_layout() {
        let n = udp_nonce(true, (1 << 63) | 3);
        assert_eq!(n[0], 0x80);
        assert_eq!(n[1..16], [0; 15]);
        assert_eq!(n[16..], [0x80, 0, 0, 0, 0, 0, 0, 3]);

        assert_eq!(udp_nonce(false, 7)[0], 0x00);
    }

    #[test]
    fn tcp_messages_open_on_the_other_side_only() {
        let key = SessionKey::from_bytes(h32(SESSION_KEY));
        let mut dialler = TcpSealer::new(key.clone(), true);
        let mut acceptor = TcpOpener::new(key.clone(), false);
        let mut wrong_side = TcpOpener::new(key.clone(), true);

        let first = dialler.seal(b"hello");
        let second = dialler.seal(b"world!");

        assert_eq!(first.len(), 5 + TAG_LEN);
        assert_eq!(second.len(), 6 + TAG_LEN);
        assert_eq!(wrong_side.open(&first), Err(CryptoError::Forged));
        assert_eq!(acceptor.open(&first).unwrap(), b"hello");
        assert_eq!(acceptor.open(&second).unwrap(), b"world!");
    }

    #[test]
    fn tcp_works_in_the_accepted_direction_too() {
        let key = SessionKey::from_bytes(h32(SESSION_KEY));
        let mut acceptor = TcpSealer::new(key.clone(), false);
        let mut dialler = TcpOpener::new(key, true);

        let boxed = acceptor.seal(b"reply");

        assert_eq!(dialler.open(&boxed).unwrap(), b"reply");
    }

    #[test]
    fn tcp_sealer_uses_the_weave_nonce_sequence() {
        let key = SessionKey::from_bytes(h32(SESSION_KEY));
        let mut sealer = TcpSealer::new(key.clone(), true);

        let first = sealer.seal(b"a");
        let second = sealer.seal(b"b");

        assert_eq!(first, seal(&key, &tcp_nonce(true, 0), b"a"));
        assert_eq!(second, seal(&key, &tcp_nonce(true, 1), b"b"));
    }

    #[test]
    fn tcp_opener_accepts_only_in_order() {
        let key = SessionKey::from_bytes(h32(SESSION_KEY));
        let mut sealer = TcpSealer::new(key.clone(), true);
        let _first = sealer.seal(b"one");
        let second = sealer.seal(b"two");
        let mut fresh = TcpOpener::new(key.clone(), false);

        assert_eq!(fresh.open(&second), Err(CryptoError::Forged));
    }

    #[test]
    fn tcp_opener_refuses_flipped_bit_and_short_input_without_advancing() {
        let key = SessionKey::from_bytes(h32(SESSION_KEY));
        let mut sealer = TcpSealer::new(key.clone(), true);
        let mut opener = TcpOpener::new(key, false);
        let boxed = sealer.seal(b"payload");
        let mut flipped = boxed.clone();
        flipped[TAG_LEN + 3] ^= 0x10;

        assert_eq!(opener.open(&flipped), Err(CryptoError::Forged));
        assert_eq!(opener.open(&[0; 15]), Err(CryptoError::Truncated));
        assert_eq!(opener.open(&boxed).unwrap(), b"payload");
    }
}
