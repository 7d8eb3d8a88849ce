//! Weave Net's encryption, as Weave Net 2.8 and weaveworks/mesh do it: session keys from an
//! ephemeral Curve25519 exchange and the password, NaCl secretbox framing for mesh (TCP)
//! messages and sleeve (UDP) datagrams, and the receiver's replay window.
//!
//! - [`nacl`]: key pairs, `box.Precompute`, the session key
//!   `SHA-256(Precompute(remote, local) || password)`, secretbox seal/open (byte for byte Go's
//!   `secretbox.Seal` output: tag first), the nonce layouts and the per-connection TCP state
//!   ([`TcpSealer`], [`TcpOpener`]).
//! - [`sleeve`]: sealing and opening an encrypted sleeve datagram
//!   (`name(6) seq(8, BE, top bit = DF stream) secretbox(frames)`).
//! - [`replay`]: [`ReplayWindow`], which drops duplicated or too old datagrams of one stream.
//! - [`aead`]: the faster cipher two weave-routers agree on instead of NaCl (AES-256-GCM
//!   from `ring`, keys derived from the session key).
//!
//! The module is pure: no sockets, no clocks; the only outside input is the OS randomness
//! [`KeyPair::generate`] draws. The shells (mesh connection, sleeve workers) own the state
//! values and feed them bytes.
//!
//! Unlike Weave, whose decryptor remembers seen sequence numbers in two sparse bitsets of
//! 2^20 that slide by 2^20, [`ReplayWindow`] is an RFC 6479 sliding bitmap of
//! [`REPLAY_WINDOW`] (8192) sequence numbers: about 1 KiB per stream whatever the traffic, so
//! memory per peer is bounded, and a real network reorders far less than 8192 datagrams, so
//! nothing Weave would accept from an honest peer is dropped in practice.

pub mod aead;
pub mod nacl;
pub mod replay;
pub mod sleeve;

pub use nacl::*;
pub use replay::*;
pub use sleeve::*;
