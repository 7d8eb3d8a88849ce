//! The encrypted sleeve on one path, in one of two formats:
//!
//! - Weave's: the connection's session key, the sequence numbers of its two streams (DF and
//!   non-DF), which every worker sending to the peer draws from, and the streams' replay
//!   windows, which every worker receiving from it checks;
//! - between two weave-routers that agreed on it, [`crate::crypto::aead`]'s: a stream per
//!   sending worker, each with its own counter, key and, at the receiver, replay window.
//!
//! The datagram formats and the ciphers are [`crate::crypto`]'s; this module adds only the
//! state that workers share. A datagram is checked against the replay window only after it
//! has opened, so a forged sequence number cannot move the window.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use ring::aead::LessSafeKey;

use crate::crypto::aead::{self, AeadKeys, COUNTER_LIMIT};
use crate::crypto::{
    open_datagram, seal_datagram, CryptoError, Replay, ReplayWindow, SessionKey, DATAGRAM_OVERHEAD,
    DF_BIT,
};
use crate::wire::sleeve::PACKET_HEADER_LEN;

/// Bytes an encrypted datagram has beyond a plain one: the sequence number and the tag.
pub const OVERHEAD: usize = DATAGRAM_OVERHEAD;

/// Lays out in `buf` a datagram for [`PathCrypto::seal`]: the sender's `name` (in the 6-byte
/// name field), the gap for the sequence number and tag, then `frames` (frame headers and
/// frames) back to back.
pub fn lay_out(buf: &mut Vec<u8>, name: &[u8], frames: &[&[u8]]) {
    buf.clear();
    buf.extend_from_slice(name);
    buf.resize(PACKET_HEADER_LEN + OVERHEAD, 0);
    for part in frames {
        buf.extend_from_slice(part);
    }
}

/// Streams a path may have: a sending worker's index is its stream, and a router has at most
/// 256 workers. A datagram of another stream is not opened.
const STREAMS: usize = 256;

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
    suite: Suite,
}

#[derive(Debug)]
enum Suite {
    /// Weave's format.
    Weave {
        /// The next sequence number of the non-DF (0) and DF (1) streams.
        next_seq: [AtomicU64; 2],
        /// What the peer's non-DF (0) and DF (1) streams have delivered.
        windows: Box<[Mutex<ReplayWindow>; 2]>,
    },
    /// AES-256-GCM between weave-routers.
    Aead {
        keys: AeadKeys,
        /// Our streams, made as workers first send.
        tx: Box<[Mutex<Option<Box<TxStream>>>]>,
        /// The peer's streams, made as they first open.
        rx: Box<[Mutex<Option<Box<RxStream>>>]>,
    },
}

/// One of our AEAD streams: its next counter and the key of that counter's epoch.
#[derive(Debug)]
struct TxStream {
    next: u64,
    key: (u32, LessSafeKey),
}

/// One of the peer's AEAD streams: what it delivered, and the keys of its latest epochs.
#[derive(Debug)]
struct RxStream {
    window: ReplayWindow,
    keys: Vec<(u32, LessSafeKey)>,
}

impl PartialEq for PathCrypto {
    fn eq(&self, other: &Self) -> bool {
        self.same_session(&other.key, other.outbound, other.is_aead())
    }
}

impl Eq for PathCrypto {}

impl PathCrypto {
    /// A fresh session in Weave's format, or the fast one when `aead`: every stream starts
    /// at 0.
    pub fn new(key: SessionKey, outbound: bool, aead: bool) -> Self {
        let suite = if aead {
            Suite::Aead {
                keys: AeadKeys::new(&key),
                tx: (0..STREAMS).map(|_| Mutex::new(None)).collect(),
                rx: (0..STREAMS).map(|_| Mutex::new(None)).collect(),
            }
        } else {
            Suite::Weave {
                next_seq: [AtomicU64::new(0), AtomicU64::new(0)],
                windows: Box::new([
                    Mutex::new(ReplayWindow::new()),
                    Mutex::new(ReplayWindow::new()),
                ]),
            }
        };
        PathCrypto {
            key,
            outbound,
            suite,
        }
    }

    /// Whether this is the session of `key` on a connection we dialled when `outbound`, in
    /// the fast format when `aead`.
    pub fn same_session(&self, key: &SessionKey, outbound: bool, aead: bool) -> bool {
        self.key.as_bytes() == key.as_bytes() && self.outbound == outbound && self.is_aead() == aead
    }

    /// Whether the path uses the fast format.
    pub fn is_aead(&self) -> bool {
        matches!(self.suite, Suite::Aead { .. })
    }

    /// Seals a datagram laid out as `[sender name][OVERHEAD gap][frames]`: in Weave's
    /// format on the DF stream when `df`, in the fast one on `stream` (the sending
    /// worker's). False when the stream has used every sequence number (2^63 or 2^48
    /// datagrams), which no connection lives to see; the datagram must then be dropped.
    pub fn seal(&self, df: bool, stream: u16, buf: &mut [u8]) -> bool {
        match &self.suite {
            Suite::Weave { next_seq, .. } => {
                let seq = next_seq[usize::from(df)].fetch_add(1, Ordering::Relaxed);
                if seq >= DF_BIT {
                    return false;
                }
                seal_datagram(&self.key, self.outbound, df, seq, buf);
                true
            }
            Suite::Aead { keys, tx, .. } => {
                let Some(slot) = tx.get(usize::from(stream)) else {
                    return false;
                };
                let mut slot = lock(slot);
                let s = slot.get_or_insert_with(|| {
                    Box::new(TxStream {
                        next: 0,
                        key: (0, keys.key(self.outbound, stream, 0)),
                    })
                });
                let counter = s.next;
                if counter >= COUNTER_LIMIT {
                    return false;
                }
                s.next += 1;
                let epoch = aead::epoch(counter);
                if s.key.0 != epoch {
                    s.key = (epoch, keys.key(self.outbound, stream, epoch));
                }
                aead::seal_aead(&s.key.1, stream, counter, buf);
                true
            }
        }
    }

    /// Opens, in place, the part of a datagram after its sender name `name` and checks its
    /// sequence number; on success, the frames are at the returned range of `body`.
    pub fn open(&self, name: &[u8], body: &mut [u8]) -> Result<Range<usize>, OpenError> {
        match &self.suite {
            Suite::Weave { windows, .. } => {
                // The peer's nonces carry its own polarity, the opposite of ours.
                let (df, seq, frames) =
                    open_datagram(&self.key, !self.outbound, body).map_err(OpenError::Crypto)?;
                lock(&windows[usize::from(df)])
                    .check_and_record(seq)
                    .map_err(OpenError::Replay)?;
                Ok(frames)
            }
            Suite::Aead { keys, rx, .. } => {
                let (stream, counter) = aead::read_header(body).map_err(OpenError::Crypto)?;
                let epoch = aead::epoch(counter);
                let Some(slot) = rx.get(usize::from(stream)) else {
                    return Err(OpenError::Crypto(CryptoError::Forged));
                };
                let mut slot = lock(slot);
                let s = slot.get_or_insert_with(|| {
                    Box::new(RxStream {
                        window: ReplayWindow::new(),
                        keys: Vec::new(),
                    })
                });
                // Two epochs back is far behind the window: refused before a key is made.
                let newest = s.keys.iter().map(|k| k.0).max();
                if newest.is_some_and(|n| epoch.saturating_add(1) < n) {
                    return Err(OpenError::Replay(Replay::TooOld));
                }
                let frames = match s.keys.iter().find(|k| k.0 == epoch) {
                    Some((_, key)) => aead::open_aead(key, name, body),
                    None => {
                        let key = keys.key(!self.outbound, stream, epoch);
                        let opened = aead::open_aead(&key, name, body);
                        // Only an authentic datagram may make a key stay.
                        if opened.is_ok() {
                            s.keys.push((epoch, key));
                            if s.keys.len() > 2 {
                                let oldest = s.keys.iter().map(|k| k.0).min().unwrap_or(epoch);
                                s.keys.retain(|k| k.0 != oldest);
                            }
                        }
                        opened
                    }
                }
                .map_err(OpenError::Crypto)?;
                s.window
                    .check_and_record(counter)
                    .map_err(OpenError::Replay)?;
                Ok(frames)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::aead::EPOCH_LEN;

    fn key(b: u8) -> SessionKey {
        SessionKey::from_bytes([b; 32])
    }

    const NAME: [u8; 6] = [0xaa, 0, 0, 0, 0, 1];

    /// `[name][gap][frames]` for `frames`.
    fn layout(frames: &[u8]) -> Vec<u8> {
        let mut buf = NAME.to_vec();
        buf.resize(6 + OVERHEAD, 0);
        buf.extend_from_slice(frames);
        buf
    }

    fn open(p: &PathCrypto, d: &mut [u8]) -> Result<Vec<u8>, OpenError> {
        let (name, body) = d.split_at_mut(6);
        let range = p.open(name, body)?;
        Ok(body[range].to_vec())
    }

    #[test]
    fn each_side_opens_what_the_other_sealed_once_in_both_formats() {
        for aead in [false, true] {
            let dialler = PathCrypto::new(key(7), true, aead);
            let listener = PathCrypto::new(key(7), false, aead);
            let mut d = layout(b"frames");
            assert!(dialler.seal(true, 0, &mut d));
            let mut copy = d.clone();
            assert_eq!(open(&listener, &mut d).as_deref(), Ok(&b"frames"[..]));
            assert_eq!(
                open(&listener, &mut copy),
                Err(OpenError::Replay(Replay::Duplicate)),
                "aead {aead}"
            );
            // Our own datagrams do not open as the peer's: nonces or keys differ.
            let mut own = layout(b"x");
            assert!(listener.seal(false, 0, &mut own));
            assert_eq!(
                open(&listener, &mut own),
                Err(OpenError::Crypto(CryptoError::Forged)),
                "aead {aead}"
            );
        }
    }

    #[test]
    fn weaves_two_streams_count_apart() {
        let dialler = PathCrypto::new(key(1), true, false);
        let listener = PathCrypto::new(key(1), false, false);
        let mut a = layout(b"a");
        let mut b = layout(b"b");
        assert!(dialler.seal(false, 0, &mut a));
        assert!(dialler.seal(true, 0, &mut b));
        // Both are number 0 of their stream, and both are taken.
        assert_eq!(&a[6..14], &0u64.to_be_bytes());
        assert_eq!(&b[6..14], &DF_BIT.to_be_bytes());
        assert!(open(&listener, &mut a).is_ok());
        assert!(open(&listener, &mut b).is_ok());
    }

    #[test]
    fn aead_workers_count_apart_and_keys_change_by_epoch() {
        let dialler = PathCrypto::new(key(2), true, true);
        let listener = PathCrypto::new(key(2), false, true);
        // Workers 0 and 5 each start at counter 0: two streams, both taken.
        let mut a = layout(b"a");
        let mut b = layout(b"b");
        assert!(dialler.seal(true, 0, &mut a));
        assert!(dialler.seal(true, 5, &mut b));
        assert_eq!(&a[6..14], &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[6..14], &[0, 5, 0, 0, 0, 0, 0, 0]);
        assert!(open(&listener, &mut a).is_ok());
        assert!(open(&listener, &mut b).is_ok());
        // Across an epoch: the last datagram of epoch 0 and the first of epoch 1 open.
        if let Suite::Aead { tx, .. } = &dialler.suite {
            lock(&tx[0]).as_mut().expect("made").next = EPOCH_LEN - 1;
        }
        let mut last = layout(b"last of epoch 0");
        let mut first = layout(b"first of epoch 1");
        assert!(dialler.seal(true, 0, &mut last));
        assert!(dialler.seal(true, 0, &mut first));
        assert_eq!(
            open(&listener, &mut first).as_deref(),
            Ok(&b"first of epoch 1"[..])
        );
        assert_eq!(
            open(&listener, &mut last).as_deref(),
            Ok(&b"last of epoch 0"[..])
        );
        // The window keeps only the newest 8192: the stream's first datagram is now too old.
        let mut stale = layout(b"a");
        if let Suite::Aead { tx, .. } = &dialler.suite {
            lock(&tx[0]).as_mut().expect("made").next = 1;
        }
        assert!(dialler.seal(true, 0, &mut stale));
        assert_eq!(
            open(&listener, &mut stale),
            Err(OpenError::Replay(Replay::TooOld))
        );
    }

    #[test]
    fn a_wrong_key_or_a_plain_datagram_does_not_open() {
        for aead in [false, true] {
            let dialler = PathCrypto::new(key(1), true, aead);
            let other = PathCrypto::new(key(2), false, aead);
            let mut d = layout(b"secret");
            assert!(dialler.seal(true, 0, &mut d));
            assert_eq!(
                open(&other, &mut d),
                Err(OpenError::Crypto(CryptoError::Forged))
            );
            let mut plain = [0u8; 26];
            assert_eq!(
                open(&other, &mut plain),
                Err(OpenError::Crypto(CryptoError::Truncated))
            );
        }
    }
}
