//! Weave's encrypted sleeve on one path: the connection's session key, the sequence numbers
//! of its two streams (DF and non-DF), which every worker sending to the peer draws from,
//! and the streams' replay windows, which every worker receiving from it checks.
//!
//! The datagram format and the cipher are [`crate::crypto`]'s; this module adds only the
//! state that workers share. A datagram is checked against the replay window only after it
//! has opened, so a forged sequence number cannot move the window.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::crypto::{
    open_datagram, seal_datagram, CryptoError, Replay, ReplayWindow, SessionKey, DATAGRAM_OVERHEAD,
    DF_BIT,
};

/// Bytes an encrypted datagram has beyond a plain one: the sequence number and the tag.
pub const OVERHEAD: usize = DATAGRAM_OVERHEAD;

/// Why an encrypted datagram was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// It did not open: too short, or not sealed with this path's key.
    Crypto(CryptoError),
    /// It opened, but its sequence number was taken already or is too old.
    Replay(Replay),
}

/// The session of one encrypted sleeve path.
#[derive(Debug)]
pub struct PathCrypto {
    key: SessionKey,
    outbound: bool,
    /// The next sequence number of the non-DF (0) and DF (1) streams.
    next_seq: [AtomicU64; 2],
    /// What the peer's non-DF (0) and DF (1) streams have delivered.
    windows: [Mutex<ReplayWindow>; 2],
}

impl PartialEq for PathCrypto {
    fn eq(&self, other: &Self) -> bool {
        self.same_session(&other.key, other.outbound)
    }
}

impl Eq for PathCrypto {}

impl PathCrypto {
    /// A fresh session: both streams start at sequence number 0, as Weave's do.
    pub fn new(key: SessionKey, outbound: bool) -> Self {
        PathCrypto {
            key,
            outbound,
            next_seq: [AtomicU64::new(0), AtomicU64::new(0)],
            windows: [
                Mutex::new(ReplayWindow::new()),
                Mutex::new(ReplayWindow::new()),
            ],
        }
    }

    /// Whether this is the session of `key` on a connection we dialled when `outbound`.
    pub fn same_session(&self, key: &SessionKey, outbound: bool) -> bool {
        self.key.as_bytes() == key.as_bytes() && self.outbound == outbound
    }

    /// Seals a datagram laid out as `[sender name][OVERHEAD gap][frames]`, on the DF stream
    /// when `df`. False when the stream has used every sequence number (2^63 datagrams),
    /// which no connection lives to see; the datagram must then be dropped.
    pub fn seal(&self, df: bool, buf: &mut [u8]) -> bool {
        let seq = self.next_seq[usize::from(df)].fetch_add(1, Ordering::Relaxed);
        if seq >= DF_BIT {
            return false;
        }
        seal_datagram(&self.key, self.outbound, df, seq, buf);
        true
    }

    /// Opens the part of a datagram after the sender name in place and checks its sequence
    /// number; on success, the frames are at the returned range of `body`.
    pub fn open(&self, body: &mut [u8]) -> Result<Range<usize>, OpenError> {
        // The peer's nonces carry its own polarity, the opposite of ours.
        let (df, seq, frames) =
            open_datagram(&self.key, !self.outbound, body).map_err(OpenError::Crypto)?;
        let mut window = self.windows[usize::from(df)]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        window.check_and_record(seq).map_err(OpenError::Replay)?;
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SessionKey {
        SessionKey::from_bytes([b; 32])
    }

    /// `[name][gap][frames]` for `frames`.
    fn layout(frames: &[u8]) -> Vec<u8> {
        let mut buf = vec![0xaa; 6];
        buf.resize(6 + OVERHEAD, 0);
        buf.extend_from_slice(frames);
        buf
    }

    #[test]
    fn each_side_opens_what_the_other_sealed_once() {
        let dialler = PathCrypto::new(key(7), true);
        let listener = PathCrypto::new(key(7), false);
        let mut d = layout(b"frames");
        assert!(dialler.seal(true, &mut d));
        let mut copy = d.clone();
        let range = listener.open(&mut d[6..]).expect("opens");
        assert_eq!(&d[6..][range], b"frames");
        assert_eq!(
            listener.open(&mut copy[6..]),
            Err(OpenError::Replay(Replay::Duplicate))
        );
        // Our own datagrams do not open as the peer's: the nonces differ.
        let mut own = layout(b"x");
        assert!(listener.seal(false, &mut own));
        assert_eq!(
            listener.open(&mut own[6..]),
            Err(OpenError::Crypto(CryptoError::Forged))
        );
    }

    #[test]
    fn the_two_streams_count_apart() {
        let dialler = PathCrypto::new(key(1), true);
        let listener = PathCrypto::new(key(1), false);
        let mut a = layout(b"a");
        let mut b = layout(b"b");
        assert!(dialler.seal(false, &mut a));
        assert!(dialler.seal(true, &mut b));
        // Both are number 0 of their stream, and both are taken.
        assert_eq!(&a[6..14], &0u64.to_be_bytes());
        assert_eq!(&b[6..14], &DF_BIT.to_be_bytes());
        assert!(listener.open(&mut a[6..]).is_ok());
        assert!(listener.open(&mut b[6..]).is_ok());
    }

    #[test]
    fn a_wrong_key_or_a_plain_datagram_does_not_open() {
        let dialler = PathCrypto::new(key(1), true);
        let other = PathCrypto::new(key(2), false);
        let mut d = layout(b"secret");
        assert!(dialler.seal(true, &mut d));
        assert_eq!(
            other.open(&mut d[6..]),
            Err(OpenError::Crypto(CryptoError::Forged))
        );
        let mut plain = [0u8; 20];
        assert_eq!(
            other.open(&mut plain[..]),
            Err(OpenError::Crypto(CryptoError::Truncated))
        );
    }
}
