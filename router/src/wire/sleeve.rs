//! Sleeve datagrams (UDP 6783), as Weave Net 2.8 writes them without encryption:
//!
//! ```text
//! sender PeerName (6) { src PeerName (6) dst PeerName (6) len (2, BE) frame (len) }*
//! ```
//!
//! - [`SleevePacket`]: a checked view over a received datagram, with an iterator over its
//!   frames ([`SleevePacket::frames`]).
//! - [`FrameHeader`] / [`SleeveFrame`]: value types for one frame, with `parse`, `emit` and
//!   `buffer_len`.
//! - [`PacketWriter`] (into a caller's buffer), [`append_packet_header`] / [`append_frame`]
//!   (onto a `Vec`) and [`pack_frames`] (as many frames as fit a size limit) write datagrams.
//! - [`SpecialFrame`]: the router's own frames (heartbeat, fragmentation test, PMTU probe),
//!   recognised by an all-zero Ethernet header and told apart by length.
//!
//! No getter of [`SleevePacket`] panics once [`SleevePacket::new_checked`] has accepted the
//! buffer, and the frame iterator never panics on any input: a truncated frame ends it with
//! an error.

use std::ops::Range;
use std::time::Duration;

use crate::ids::{ConnUid, PeerName};

/// The UDP port of the sleeve overlay (the same number as the mesh's TCP port).
pub const PORT: u16 = 6783;

/// Bytes of the packet header: the sending peer's name.
pub const PACKET_HEADER_LEN: usize = 6;
/// Bytes of each frame header: source peer, destination peer, length.
pub const FRAME_HEADER_LEN: usize = 14;
/// Bytes of the inner Ethernet header (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Bytes of the underlay's IPv4 (20, no options) and UDP (8) headers.
pub const UNDERLAY_IP_UDP_LEN: usize = 28;
/// Extra bytes per datagram with Weave's NaCl encryption: sequence number (8) + tag (16).
pub const ENCRYPTION_OVERHEAD: usize = 24;
/// UDP payload bytes a datagram of one frame adds around the Ethernet frame (6 + 14).
pub const UDP_PAYLOAD_OVERHEAD: usize = PACKET_HEADER_LEN + FRAME_HEADER_LEN;
/// Underlay bytes between the path MTU and the overlay MTU, without encryption
/// (IP 20 + UDP 8 + packet header 6 + frame header 14 + inner Ethernet 14 = 62).
pub const MTU_OVERHEAD: usize =
    UNDERLAY_IP_UDP_LEN + PACKET_HEADER_LEN + FRAME_HEADER_LEN + ETHERNET_HEADER_LEN;
/// The overlay MTU over a 1500-byte underlay without encryption.
pub const MTU_FOR_1500: usize = 1500 - MTU_OVERHEAD;
/// The overlay MTU over a 1500-byte underlay with encryption.
pub const MTU_FOR_1500_ENCRYPTED: usize = 1500 - MTU_OVERHEAD - ENCRYPTION_OVERHEAD;
/// Largest frame a frame header can describe (its length field is 16 bits).
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;
/// Most frames Weave packs into one datagram.
pub const MAX_FRAMES_PER_PACKET: usize = 100;
/// Largest UDP payload an IPv4 datagram can carry.
pub const MAX_UDP_PAYLOAD: usize = 65535 - UNDERLAY_IP_UDP_LEN;

/// Heartbeat interval until the remote acknowledges (`ConnectionEstablished`).
pub const FAST_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Heartbeat interval once acknowledged.
pub const SLOW_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Silence after which a sleeve connection is considered dead.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);

/// Length of a heartbeat special frame: 14 zero bytes and the connection UID.
pub const HEARTBEAT_FRAME_LEN: usize = ETHERNET_HEADER_LEN + 8;
/// Length of the fragmentation-test special frame (sent without DF so the underlay fragments it).
pub const FRAG_TEST_FRAME_LEN: usize = 60001;
/// Lowest MTU PMTU discovery considers.
pub const MIN_PMTU: usize = 552;

/// The overlay MTU for an underlay path MTU: `underlay - 62`, or `underlay - 86` when
/// encrypted; `None` when the underlay is too small to carry anything.
pub const fn mtu_for_underlay(underlay_mtu: usize, encrypted: bool) -> Option<usize> {
    let overhead = if encrypted {
        MTU_OVERHEAD + ENCRYPTION_OVERHEAD
    } else {
        MTU_OVERHEAD
    };
    underlay_mtu.checked_sub(overhead)
}

/// The UDP payload length of a plain datagram holding frames of the given lengths.
pub fn packet_len(frame_lens: impl IntoIterator<Item = usize>) -> usize {
    PACKET_HEADER_LEN
        + frame_lens
            .into_iter()
            .map(|l| FRAME_HEADER_LEN + l)
            .sum::<usize>()
}

/// Errors from reading or writing sleeve datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SleeveError {
    /// The datagram is shorter than the 6-byte sender name.
    #[error("sleeve datagram of {len} bytes is shorter than its 6-byte sender name")]
    TooShort {
        /// Length of the datagram.
        len: usize,
    },
    /// The datagram holds a sender name and no frame.
    #[error("sleeve datagram carries no frame")]
    EmptyPacket,
    /// Fewer than 14 bytes remain where a frame header should start.
    #[error("frame header at offset {offset} truncated: {available} of 14 bytes")]
    TruncatedFrameHeader {
        /// Offset of the frame header in the datagram.
        offset: usize,
        /// Bytes left in the datagram from that offset.
        available: usize,
    },
    /// A frame's declared length runs past the end of the datagram.
    #[error("frame at offset {offset} declares {declared} bytes, {available} remain")]
    TruncatedFrame {
        /// Offset of the frame header in the datagram.
        offset: usize,
        /// Length from the frame header.
        declared: usize,
        /// Bytes left after the frame header.
        available: usize,
    },
    /// A frame is too long for the 16-bit length field.
    #[error("frame of {len} bytes exceeds the 65535-byte limit of a sleeve frame")]
    FrameTooLong {
        /// Length of the frame.
        len: usize,
    },
    /// The output buffer (or size limit) cannot hold what was to be written.
    #[error("need {needed} bytes, {available} available")]
    BufferTooSmall {
        /// Bytes the write needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The datagram already holds [`MAX_FRAMES_PER_PACKET`] frames.
    #[error("datagram already holds {MAX_FRAMES_PER_PACKET} frames")]
    TooManyFrames,
    /// A PMTU probe for this MTU would have the length of another special frame or be too long.
    #[error("no PMTU probe can carry candidate MTU {candidate_mtu}")]
    BadPmtuCandidate {
        /// The MTU asked for.
        candidate_mtu: usize,
    },
}

/// Byte ranges of the headers.
mod field {
    use std::ops::Range;

    /// Packet header: the sender's name.
    pub const SENDER: Range<usize> = 0..6;
    /// Frame header, relative to its start: source peer.
    pub const FRAME_SRC: Range<usize> = 0..6;
    /// Frame header: destination peer.
    pub const FRAME_DST: Range<usize> = 6..12;
    /// Frame header: frame length, big-endian.
    pub const FRAME_LEN: Range<usize> = 12..14;
}

/// A checked view over a plain sleeve datagram (the UDP payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleevePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SleevePacket<T> {
    /// Wraps a buffer without looking at it; getters may panic until [`Self::check_len`] passes.
    pub fn new_unchecked(buffer: T) -> Self {
        SleevePacket { buffer }
    }

    /// Wraps a buffer that holds a sender name and at least one byte of frames.
    pub fn new_checked(buffer: T) -> Result<Self, SleeveError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the sender name is there and something follows it. Frames are checked
    /// one by one as [`Self::frames`] reaches them.
    pub fn check_len(&self) -> Result<(), SleeveError> {
        let len = self.buffer.as_ref().len();
        if len < PACKET_HEADER_LEN {
            return Err(SleeveError::TooShort { len });
        }
        if len == PACKET_HEADER_LEN {
            return Err(SleeveError::EmptyPacket);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The peer that sent the datagram (the previous hop, not necessarily a frame's source).
    pub fn sender(&self) -> PeerName {
        let b = &self.buffer.as_ref()[field::SENDER];
        PeerName::from_bytes([b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// The bytes after the packet header: the frames.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[PACKET_HEADER_LEN..]
    }

    /// The frames in order; a malformed frame yields one error and ends the iteration.
    pub fn frames(&self) -> Frames<'_> {
        Frames {
            buf: self.buffer.as_ref(),
            offset: PACKET_HEADER_LEN,
            done: false,
        }
    }

    /// Walks every frame and counts them; the first malformed frame is the error.
    pub fn validate(&self) -> Result<usize, SleeveError> {
        let mut n = 0;
        for frame in self.frames() {
            frame?;
            n += 1;
        }
        Ok(n)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SleevePacket<T> {
    /// Rewrites the sender: relaying a whole datagram to the next hop changes nothing else.
    pub fn set_sender(&mut self, sender: PeerName) {
        self.buffer.as_mut()[field::SENDER].copy_from_slice(&sender.to_bytes());
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> SleevePacket<&'a T> {
    /// Like [`SleevePacket::frames`], but the frames borrow the buffer rather than the view.
    pub fn into_frames(self) -> Frames<'a> {
        Frames {
            buf: self.buffer.as_ref(),
            offset: PACKET_HEADER_LEN,
            done: false,
        }
    }
}

/// Iterator over the frames of a [`SleevePacket`].
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    buf: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> Frames<'a> {
    /// Offset in the datagram where the next frame header starts.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<SleeveFrame<'a>, SleeveError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = self.buf.get(self.offset..).unwrap_or_default();
        if rest.is_empty() {
            self.done = true;
            return None;
        }
        match SleeveFrame::parse_at(rest, self.offset) {
            Ok(frame) => {
                self.offset += frame.buffer_len();
                Some(Ok(frame))
            }
            Err(e) => {
                // After a bad length nothing later in the datagram can be located.
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for Frames<'_> {}

/// A frame header: source peer, destination peer and the frame's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// The peer whose bridge the frame entered the overlay at.
    pub src: PeerName,
    /// The peer the frame is for; for broadcasts, the next hop.
    pub dst: PeerName,
    /// Length of the Ethernet frame that follows.
    pub len: u16,
}

impl FrameHeader {
    /// Reads a header from the first 14 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, SleeveError> {
        let Some(h) = buf.get(..FRAME_HEADER_LEN) else {
            return Err(SleeveError::TruncatedFrameHeader {
                offset: 0,
                available: buf.len(),
            });
        };
        Ok(FrameHeader {
            src: peer_at(h, field::FRAME_SRC),
            dst: peer_at(h, field::FRAME_DST),
            len: u16::from_be_bytes([h[field::FRAME_LEN.start], h[field::FRAME_LEN.start + 1]]),
        })
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        FRAME_HEADER_LEN
    }

    /// Writes the header into the first 14 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), SleeveError> {
        let available = buf.len();
        let Some(h) = buf.get_mut(..FRAME_HEADER_LEN) else {
            return Err(SleeveError::BufferTooSmall {
                needed: FRAME_HEADER_LEN,
                available,
            });
        };
        h[field::FRAME_SRC].copy_from_slice(&self.src.to_bytes());
        h[field::FRAME_DST].copy_from_slice(&self.dst.to_bytes());
        h[field::FRAME_LEN].copy_from_slice(&self.len.to_be_bytes());
        Ok(())
    }
}

fn peer_at(buf: &[u8], r: Range<usize>) -> PeerName {
    let b = &buf[r];
    PeerName::from_bytes([b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// One frame of a datagram: its peers and the Ethernet frame it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SleeveFrame<'a> {
    /// The peer whose bridge the frame entered the overlay at.
    pub src: PeerName,
    /// The peer the frame is for; for broadcasts, the next hop.
    pub dst: PeerName,
    /// The Ethernet frame (or a special frame).
    pub frame: &'a [u8],
}

impl<'a> SleeveFrame<'a> {
    /// Reads one frame (header and body) from the start of `buf`; returns it and the rest.
    pub fn parse(buf: &'a [u8]) -> Result<(Self, &'a [u8]), SleeveError> {
        let frame = Self::parse_at(buf, 0)?;
        Ok((frame, &buf[frame.buffer_len()..]))
    }

    /// Like [`Self::parse`], naming `offset` (the position of `buf` in its datagram) in errors.
    fn parse_at(buf: &'a [u8], offset: usize) -> Result<Self, SleeveError> {
        let header = FrameHeader::parse(buf).map_err(|_| SleeveError::TruncatedFrameHeader {
            offset,
            available: buf.len(),
        })?;
        let body = &buf[FRAME_HEADER_LEN..];
        let declared = usize::from(header.len);
        let Some(frame) = body.get(..declared) else {
            return Err(SleeveError::TruncatedFrame {
                offset,
                declared,
                available: body.len(),
            });
        };
        Ok(SleeveFrame {
            src: header.src,
            dst: header.dst,
            frame,
        })
    }

    /// The frame's header; fails when the frame is too long for the length field.
    pub fn header(&self) -> Result<FrameHeader, SleeveError> {
        let len = u16::try_from(self.frame.len()).map_err(|_| SleeveError::FrameTooLong {
            len: self.frame.len(),
        })?;
        Ok(FrameHeader {
            src: self.src,
            dst: self.dst,
            len,
        })
    }

    /// Bytes [`Self::emit`] writes: header and frame.
    pub fn buffer_len(&self) -> usize {
        FRAME_HEADER_LEN + self.frame.len()
    }

    /// Writes header and frame at the start of `buf`; returns the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, SleeveError> {
        let header = self.header()?;
        let needed = self.buffer_len();
        let available = buf.len();
        let Some(out) = buf.get_mut(..needed) else {
            return Err(SleeveError::BufferTooSmall { needed, available });
        };
        header.emit(out)?;
        out[FRAME_HEADER_LEN..].copy_from_slice(self.frame);
        Ok(needed)
    }

    /// Classifies the frame as one of the router's own special frames, if it is one.
    pub fn special(&self) -> Option<SpecialFrame> {
        SpecialFrame::parse(self.frame)
    }
}

/// Writes a datagram into a caller's buffer: the packet header, then frames one at a time.
#[derive(Debug)]
pub struct PacketWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    frames: usize,
}

impl<'b> PacketWriter<'b> {
    /// Starts a datagram from `sender` at the start of `buf`.
    pub fn new(buf: &'b mut [u8], sender: PeerName) -> Result<Self, SleeveError> {
        let available = buf.len();
        let Some(h) = buf.get_mut(field::SENDER) else {
            return Err(SleeveError::BufferTooSmall {
                needed: PACKET_HEADER_LEN,
                available,
            });
        };
        h.copy_from_slice(&sender.to_bytes());
        Ok(PacketWriter {
            buf,
            len: PACKET_HEADER_LEN,
            frames: 0,
        })
    }

    /// Whether a frame of `frame_len` bytes still fits (space and frame count).
    pub fn fits(&self, frame_len: usize) -> bool {
        self.frames < MAX_FRAMES_PER_PACKET
            && frame_len <= MAX_FRAME_LEN
            && FRAME_HEADER_LEN + frame_len <= self.remaining()
    }

    /// Appends one frame; on error nothing is written.
    pub fn push(&mut self, frame: &SleeveFrame<'_>) -> Result<(), SleeveError> {
        if self.frames >= MAX_FRAMES_PER_PACKET {
            return Err(SleeveError::TooManyFrames);
        }
        let n = frame.emit(&mut self.buf[self.len..])?;
        self.len += n;
        self.frames += 1;
        Ok(())
    }

    /// Bytes left in the buffer.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Frames written so far.
    pub fn frame_count(&self) -> usize {
        self.frames
    }

    /// Bytes written so far (the datagram's length).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no frame has been written yet (an empty datagram is not worth sending).
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The finished datagram.
    pub fn finish(self) -> &'b [u8] {
        &self.buf[..self.len]
    }
}

/// Appends a packet header (the sender's name) to `out`.
pub fn append_packet_header(out: &mut Vec<u8>, sender: PeerName) {
    out.extend_from_slice(&sender.to_bytes());
}

/// Appends one frame (header and body) to `out`; on error `out` is unchanged.
pub fn append_frame(out: &mut Vec<u8>, frame: &SleeveFrame<'_>) -> Result<(), SleeveError> {
    let header = frame.header()?;
    let start = out.len();
    out.resize(start + FRAME_HEADER_LEN, 0);
    header.emit(&mut out[start..])?;
    out.extend_from_slice(frame.frame);
    Ok(())
}

/// Encodes a whole datagram.
pub fn encode_packet(sender: PeerName, frames: &[SleeveFrame<'_>]) -> Result<Vec<u8>, SleeveError> {
    if frames.len() > MAX_FRAMES_PER_PACKET {
        return Err(SleeveError::TooManyFrames);
    }
    let mut out = Vec::with_capacity(packet_len(frames.iter().map(|f| f.frame.len())));
    append_packet_header(&mut out, sender);
    for frame in frames {
        append_frame(&mut out, frame)?;
    }
    Ok(out)
}

/// Appends one datagram to `out` holding as many leading `frames` as fit in `max_len` bytes
/// (and [`MAX_FRAMES_PER_PACKET`]); returns how many it took, at least one. Fails, leaving
/// `out` unchanged, when not even the first frame fits or `frames` is empty.
pub fn pack_frames(
    out: &mut Vec<u8>,
    sender: PeerName,
    frames: &[SleeveFrame<'_>],
    max_len: usize,
) -> Result<usize, SleeveError> {
    let Some(first) = frames.first() else {
        return Err(SleeveError::EmptyPacket);
    };
    let needed = PACKET_HEADER_LEN + first.buffer_len();
    if needed > max_len {
        return Err(SleeveError::BufferTooSmall {
            needed,
            available: max_len,
        });
    }
    first.header()?;
    let start = out.len();
    append_packet_header(out, sender);
    let mut used = PACKET_HEADER_LEN;
    let mut taken = 0;
    for frame in frames.iter().take(MAX_FRAMES_PER_PACKET) {
        if used + frame.buffer_len() > max_len {
            break;
        }
        if let Err(e) = append_frame(out, frame) {
            if taken == 0 {
                out.truncate(start);
                return Err(e);
            }
            break;
        }
        used += frame.buffer_len();
        taken += 1;
    }
    Ok(taken)
}

/// One of the router's own frames, sent between two peers' sleeve forwarders. They carry an
/// all-zero Ethernet header and are told apart by length alone, as Weave does. The caller
/// also checks that the frame header names the remote peer as source and us as destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialFrame {
    /// 22 bytes: the connection UID, proving the datagram belongs to this connection.
    Heartbeat(ConnUid),
    /// 60001 zero bytes sent without DF: arrives only if the underlay reassembles fragments.
    FragTest,
    /// Any other length: candidate MTU + 14 zero bytes, sent with DF.
    PmtuProbe {
        /// The overlay MTU the probe tests.
        candidate_mtu: usize,
    },
}

impl SpecialFrame {
    /// Classifies an Ethernet frame; `None` for an ordinary frame (non-zero header, or too
    /// short to have one).
    pub fn parse(frame: &[u8]) -> Option<Self> {
        let header = frame.get(..ETHERNET_HEADER_LEN)?;
        if header.iter().any(|&b| b != 0) {
            return None;
        }
        Some(match frame.len() {
            HEARTBEAT_FRAME_LEN => {
                let mut uid = [0u8; 8];
                uid.copy_from_slice(&frame[ETHERNET_HEADER_LEN..]);
                SpecialFrame::Heartbeat(ConnUid(u64::from_be_bytes(uid)))
            }
            FRAG_TEST_FRAME_LEN => SpecialFrame::FragTest,
            len => SpecialFrame::PmtuProbe {
                candidate_mtu: len - ETHERNET_HEADER_LEN,
            },
        })
    }

    /// A PMTU probe for `candidate_mtu`, refusing candidates whose frame would read back as
    /// a heartbeat or fragmentation test, or exceed [`MAX_FRAME_LEN`].
    pub fn pmtu_probe(candidate_mtu: usize) -> Result<Self, SleeveError> {
        let len = candidate_mtu.checked_add(ETHERNET_HEADER_LEN);
        match len {
            Some(HEARTBEAT_FRAME_LEN | FRAG_TEST_FRAME_LEN) | None => {
                Err(SleeveError::BadPmtuCandidate { candidate_mtu })
            }
            Some(l) if l > MAX_FRAME_LEN => Err(SleeveError::BadPmtuCandidate { candidate_mtu }),
            Some(_) => Ok(SpecialFrame::PmtuProbe { candidate_mtu }),
        }
    }

    /// Length of the frame [`Self::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            SpecialFrame::Heartbeat(_) => HEARTBEAT_FRAME_LEN,
            SpecialFrame::FragTest => FRAG_TEST_FRAME_LEN,
            SpecialFrame::PmtuProbe { candidate_mtu } => {
                candidate_mtu.saturating_add(ETHERNET_HEADER_LEN)
            }
        }
    }

    /// Writes the frame at the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, SleeveError> {
        let needed = self.buffer_len();
        let available = buf.len();
        let Some(out) = buf.get_mut(..needed) else {
            return Err(SleeveError::BufferTooSmall { needed, available });
        };
        out.fill(0);
        match self {
            SpecialFrame::Heartbeat(uid) => {
                out[ETHERNET_HEADER_LEN..].copy_from_slice(&uid.0.to_be_bytes());
            }
            SpecialFrame::FragTest | SpecialFrame::PmtuProbe { .. } => {}
        }
        Ok(needed)
    }

    /// The frame as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.buffer_len()];
        // The buffer has exactly the length emit needs.
        let _ = self.emit(&mut v);
        v
    }
}

/// The 22-byte heartbeat frame for a connection.
pub fn heartbeat_frame(uid: ConnUid) -> [u8; HEARTBEAT_FRAME_LEN] {
    let mut f = [0u8; HEARTBEAT_FRAME_LEN];
    f[ETHERNET_HEADER_LEN..].copy_from_slice(&uid.0.to_be_bytes());
    f
}

/// The 60001-byte fragmentation-test frame.
pub fn frag_test_frame() -> Vec<u8> {
    vec![0u8; FRAG_TEST_FRAME_LEN]
}

/// The PMTU probe frame for a candidate MTU (see [`SpecialFrame::pmtu_probe`] for the refusals).
pub fn pmtu_probe_frame(candidate_mtu: usize) -> Result<Vec<u8>, SleeveError> {
    Ok(SpecialFrame::pmtu_probe(candidate_mtu)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peer(n: u8) -> PeerName {
        PeerName::from_bytes([0xaa, 0, 0, 0, 0, n])
    }

    #[test]
    fn mtu_arithmetic_matches_weave() {
        assert_eq!(MTU_FOR_1500, 1438);
        assert_eq!(MTU_FOR_1500_ENCRYPTED, 1414);
        assert_eq!(mtu_for_underlay(1500, false), Some(1438));
        assert_eq!(mtu_for_underlay(1500, true), Some(1414));
        assert_eq!(mtu_for_underlay(9000, false), Some(8938));
        assert_eq!(mtu_for_underlay(61, false), None);
        // A full-size probe fills a 1500-byte IP packet exactly.
        assert_eq!(
            UNDERLAY_IP_UDP_LEN + packet_len([MTU_FOR_1500 + ETHERNET_HEADER_LEN]),
            1500
        );
    }

    #[test]
    fn captured_first_heartbeat_parses() {
        // Frame 15 of three-peers-plain: host2 -> host1.
        let bytes = hex::decode(
            "aa0000000002aa0000000002aa00000000010016\
             0000000000000000000000000000340c5ee3f27e8a47",
        )
        .unwrap();
        let packet = SleevePacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.sender(), peer(2));
        let frames: Vec<_> = packet.frames().collect::<Result<_, _>>().unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].src, frames[0].dst), (peer(2), peer(1)));
        assert_eq!(
            frames[0].special(),
            Some(SpecialFrame::Heartbeat(ConnUid(3750476922811746887)))
        );
        let again = encode_packet(peer(2), &frames).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn short_and_empty_datagrams_are_refused() {
        assert_eq!(
            SleevePacket::new_checked(&[0u8; 5][..]),
            Err(SleeveError::TooShort { len: 5 })
        );
        assert_eq!(
            SleevePacket::new_checked(&[0u8; 6][..]),
            Err(SleeveError::EmptyPacket)
        );
    }

    #[test]
    fn truncated_frame_header_ends_iteration_with_error() {
        let mut bytes = encode_packet(
            peer(1),
            &[SleeveFrame {
                src: peer(1),
                dst: peer(2),
                frame: b"abc",
            }],
        )
        .unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        let packet = SleevePacket::new_checked(&bytes[..]).unwrap();
        let mut it = packet.frames();
        assert!(it.next().unwrap().is_ok());
        assert_eq!(
            it.next(),
            Some(Err(SleeveError::TruncatedFrameHeader {
                offset: 23,
                available: 3
            }))
        );
        assert_eq!(it.next(), None);
    }

    #[test]
    fn truncated_frame_body_ends_iteration_with_error() {
        let mut bytes = encode_packet(
            peer(1),
            &[SleeveFrame {
                src: peer(1),
                dst: peer(2),
                frame: &[7u8; 40],
            }],
        )
        .unwrap();
        bytes.truncate(bytes.len() - 1);
        let packet = SleevePacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            packet.validate(),
            Err(SleeveError::TruncatedFrame {
                offset: 6,
                declared: 40,
                available: 39
            })
        );
        assert_eq!(packet.frames().count(), 1);
    }

    #[test]
    fn zero_length_frames_are_valid() {
        let frames = [
            SleeveFrame {
                src: peer(1),
                dst: peer(2),
                frame: &[],
            },
            SleeveFrame {
                src: peer(3),
                dst: peer(4),
                frame: b"x",
            },
        ];
        let bytes = encode_packet(peer(9), &frames).unwrap();
        let packet = SleevePacket::new_checked(&bytes[..]).unwrap();
        let back: Vec<_> = packet.frames().collect::<Result<_, _>>().unwrap();
        assert_eq!(back, frames);
    }

    #[test]
    fn writer_fills_a_buffer_and_refuses_overflow() {
        let mut buf = [0u8; 6 + 2 * (14 + 10) + 5];
        let mut w = PacketWriter::new(&mut buf, peer(1)).unwrap();
        assert!(w.is_empty());
        let f = SleeveFrame {
            src: peer(1),
            dst: peer(2),
            frame: &[0x55; 10],
        };
        assert!(w.fits(10));
        w.push(&f).unwrap();
        w.push(&f).unwrap();
        assert!(!w.fits(10));
        assert_eq!(
            w.push(&f),
            Err(SleeveError::BufferTooSmall {
                needed: 24,
                available: 5
            })
        );
        assert_eq!(w.frame_count(), 2);
        assert_eq!(w.len(), 54);
        let out = w.finish().to_vec();
        assert_eq!(out, encode_packet(peer(1), &[f, f]).unwrap());
        assert!(matches!(
            PacketWriter::new(&mut [0u8; 5], peer(1)),
            Err(SleeveError::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn writer_stops_at_frame_limit() {
        let mut buf = vec![0u8; 10_000];
        let mut w = PacketWriter::new(&mut buf, peer(1)).unwrap();
        let f = SleeveFrame {
            src: peer(1),
            dst: peer(2),
            frame: &[],
        };
        for _ in 0..MAX_FRAMES_PER_PACKET {
            w.push(&f).unwrap();
        }
        assert!(!w.fits(0));
        assert_eq!(w.push(&f), Err(SleeveError::TooManyFrames));
    }

    #[test]
    fn oversized_frame_is_refused() {
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        let f = SleeveFrame {
            src: peer(1),
            dst: peer(2),
            frame: &big,
        };
        let mut out = vec![1, 2, 3];
        assert_eq!(
            append_frame(&mut out, &f),
            Err(SleeveError::FrameTooLong { len: 65536 })
        );
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn pack_frames_splits_at_the_limit() {
        let body = [0x11u8; 100];
        let frames: Vec<_> = (0..7)
            .map(|i| SleeveFrame {
                src: peer(1),
                dst: peer(i),
                frame: &body,
            })
            .collect();
        // Room for three frames of 114 bytes after the 6-byte header.
        let limit = 6 + 3 * 114 + 113;
        let mut out = Vec::new();
        let mut rest = &frames[..];
        let mut sizes = Vec::new();
        while !rest.is_empty() {
            let start = out.len();
            let n = pack_frames(&mut out, peer(1), rest, limit).unwrap();
            assert!(out.len() - start <= limit);
            let packet = SleevePacket::new_checked(&out[start..]).unwrap();
            let got: Vec<_> = packet.frames().collect::<Result<_, _>>().unwrap();
            assert_eq!(got, rest[..n]);
            sizes.push(n);
            rest = &rest[n..];
        }
        assert_eq!(sizes, [3, 3, 1]);
        let mut out = Vec::new();
        assert_eq!(
            pack_frames(&mut out, peer(1), &frames, 119),
            Err(SleeveError::BufferTooSmall {
                needed: 120,
                available: 119
            })
        );
        assert_eq!(
            pack_frames(&mut out, peer(1), &[], 1000),
            Err(SleeveError::EmptyPacket)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn special_frames_build_and_classify() {
        let hb = heartbeat_frame(ConnUid(0xe59d3086c8f292cb));
        assert_eq!(
            hex::encode(hb),
            "0000000000000000000000000000e59d3086c8f292cb"
        );
        assert_eq!(
            SpecialFrame::parse(&hb),
            Some(SpecialFrame::Heartbeat(ConnUid(16545433961484161739)))
        );
        assert_eq!(
            SpecialFrame::parse(&frag_test_frame()),
            Some(SpecialFrame::FragTest)
        );
        let probe = pmtu_probe_frame(1438).unwrap();
        assert_eq!(probe.len(), 1452);
        assert_eq!(
            SpecialFrame::parse(&probe),
            Some(SpecialFrame::PmtuProbe {
                candidate_mtu: 1438
            })
        );
        assert_eq!(
            SpecialFrame::parse(&[0u8; 14]),
            Some(SpecialFrame::PmtuProbe { candidate_mtu: 0 })
        );
    }

    #[test]
    fn ordinary_frames_are_not_special() {
        assert_eq!(SpecialFrame::parse(&[0u8; 13]), None);
        let mut f = [0u8; 60];
        f[13] = 1;
        assert_eq!(SpecialFrame::parse(&f), None);
        f[13] = 0;
        f[0] = 0xff;
        assert_eq!(SpecialFrame::parse(&f), None);
    }

    #[test]
    fn ambiguous_pmtu_candidates_are_refused() {
        for bad in [8, FRAG_TEST_FRAME_LEN - 14, MAX_FRAME_LEN - 13, usize::MAX] {
            assert_eq!(
                SpecialFrame::pmtu_probe(bad),
                Err(SleeveError::BadPmtuCandidate { candidate_mtu: bad })
            );
        }
        assert!(SpecialFrame::pmtu_probe(MIN_PMTU).is_ok());
        assert!(SpecialFrame::pmtu_probe(MAX_FRAME_LEN - 14).is_ok());
    }

    #[test]
    fn special_emit_refuses_small_buffer() {
        let mut buf = [0u8; 21];
        assert_eq!(
            SpecialFrame::Heartbeat(ConnUid(1)).emit(&mut buf),
            Err(SleeveError::BufferTooSmall {
                needed: 22,
                available: 21
            })
        );
    }

    fn arb_frames() -> impl Strategy<Value = Vec<(u64, u64, Vec<u8>)>> {
        proptest::collection::vec(
            (
                0..=PeerName::MAX,
                0..=PeerName::MAX,
                proptest::collection::vec(any::<u8>(), 0..300),
            ),
            1..20,
        )
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(sender in 0..=PeerName::MAX, raw in arb_frames()) {
            let sender = PeerName::from_u64(sender).unwrap();
            let frames: Vec<SleeveFrame<'_>> = raw
                .iter()
                .map(|(s, d, f)| SleeveFrame {
                    src: PeerName::from_u64(*s).unwrap(),
                    dst: PeerName::from_u64(*d).unwrap(),
                    frame: f,
                })
                .collect();
            let bytes = encode_packet(sender, &frames).unwrap();
            prop_assert_eq!(bytes.len(), packet_len(frames.iter().map(|f| f.frame.len())));

            let mut buf = vec![0u8; bytes.len()];
            let mut w = PacketWriter::new(&mut buf, sender).unwrap();
            for f in &frames {
                w.push(f).unwrap();
            }
            prop_assert_eq!(w.remaining(), 0);
            prop_assert_eq!(w.finish(), &bytes[..]);

            let packet = SleevePacket::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(packet.sender(), sender);
            let back: Vec<_> = packet.frames().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(back, frames);
        }

        #[test]
        fn special_frames_round_trip(uid in any::<u64>(), mtu in 0usize..=(MAX_FRAME_LEN - 14)) {
            let hb = SpecialFrame::Heartbeat(ConnUid(uid));
            prop_assert_eq!(SpecialFrame::parse(&hb.to_vec()), Some(hb));
            if let Ok(probe) = SpecialFrame::pmtu_probe(mtu) {
                prop_assert_eq!(SpecialFrame::parse(&probe.to_vec()), Some(probe));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(packet) = SleevePacket::new_checked(&bytes[..]) {
                let _ = packet.sender();
                let mut total = PACKET_HEADER_LEN;
                let mut errors = 0;
                for f in packet.frames() {
                    match f {
                        Ok(f) => {
                            total += f.buffer_len();
                            let _ = f.special();
                        }
                        Err(_) => errors += 1,
                    }
                }
                prop_assert!(errors <= 1);
                prop_assert!(total <= bytes.len());
                prop_assert_eq!(errors == 0, total == bytes.len());
            }
            let _ = SpecialFrame::parse(&bytes);
            let _ = FrameHeader::parse(&bytes);
            let _ = SleeveFrame::parse(&bytes);
        }
    }
}
