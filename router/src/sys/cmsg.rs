//! Control messages (`struct cmsghdr` sequences) built and parsed as plain bytes.
//!
//! The layout is the Linux ABI: a `size_t` length counting header and data, then `int`
//! level and `int` type, then the data; each message starts at a multiple of
//! `sizeof(size_t)`. Working on byte slices instead of the `CMSG_*` macros keeps this code
//! safe and lets the parser be tested on hand-made and on kernel-made buffers alike.

use std::mem::size_of;

/// Size of `struct cmsghdr`.
const HDR_LEN: usize = size_of::<libc::cmsghdr>();
/// Alignment of every message (`CMSG_ALIGN`).
const ALIGN: usize = size_of::<usize>();
const LEVEL_AT: usize = size_of::<usize>();
const TYPE_AT: usize = LEVEL_AT + size_of::<libc::c_int>();

// The byte offsets above are the Linux layout; fail the build on an ABI where they are not.
const _: () = assert!(HDR_LEN == TYPE_AT + size_of::<libc::c_int>());

/// A control-message buffer aligned as `struct cmsghdr` must be, for `msg_control`.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(8))]
pub struct CmsgBuffer<const N: usize>(pub [u8; N]);

impl<const N: usize> CmsgBuffer<N> {
    /// A zeroed buffer.
    pub const fn new() -> Self {
        Self([0; N])
    }
}

impl<const N: usize> Default for CmsgBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a control message could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CmsgError {
    /// The buffer is smaller than the message's `CMSG_SPACE`.
    #[error("control buffer of {have} bytes cannot hold a message needing {need}")]
    NoRoom {
        /// Bytes the message needs.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
}

/// One parsed control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmsg<'a> {
    /// `cmsg_level` (`SOL_SOCKET`, `SOL_UDP`, `IPPROTO_IP`, ...).
    pub level: libc::c_int,
    /// `cmsg_type` (`UDP_GRO`, `IP_TOS`, ...).
    pub kind: libc::c_int,
    /// The data after the header, without trailing padding.
    pub data: &'a [u8],
}

/// `CMSG_LEN`: header plus `data_len` bytes, unpadded.
pub const fn cmsg_len(data_len: usize) -> usize {
    HDR_LEN + data_len
}

/// `CMSG_SPACE`: room one message with `data_len` bytes takes in a buffer.
pub const fn cmsg_space(data_len: usize) -> usize {
    align(HDR_LEN) + align(data_len)
}

/// Writes one control message at the start of `buf`; returns the bytes it takes
/// (`CMSG_SPACE`), padding zeroed. Several messages are written one after the other.
pub fn encode(
    buf: &mut [u8],
    level: libc::c_int,
    kind: libc::c_int,
    data: &[u8],
) -> Result<usize, CmsgError> {
    let space = cmsg_space(data.len());
    let Some(out) = buf.get_mut(..space) else {
        return Err(CmsgError::NoRoom {
            need: space,
            have: buf.len(),
        });
    };
    out.fill(0);
    out[..LEVEL_AT].copy_from_slice(&cmsg_len(data.len()).to_ne_bytes());
    out[LEVEL_AT..TYPE_AT].copy_from_slice(&level.to_ne_bytes());
    out[TYPE_AT..HDR_LEN].copy_from_slice(&kind.to_ne_bytes());
    out[HDR_LEN..HDR_LEN + data.len()].copy_from_slice(data);
    Ok(space)
}

/// Writes a `UDP_SEGMENT` message (GSO: cut the datagram into `segment_size` pieces).
pub fn encode_udp_segment(buf: &mut [u8], segment_size: u16) -> Result<usize, CmsgError> {
    encode(
        buf,
        libc::SOL_UDP,
        libc::UDP_SEGMENT,
        &segment_size.to_ne_bytes(),
    )
}

/// Iterates over the messages of a received control buffer (`msg_controllen` bytes).
///
/// Stops at the first header that is malformed or runs past the buffer, which is what the
/// kernel leaves when it had to truncate (`MSG_CTRUNC`).
pub fn iter(buf: &[u8]) -> CmsgIter<'_> {
    CmsgIter { rest: buf }
}

/// The segment size of a coalesced datagram, from a `UDP_GRO` message, if there is one.
pub fn gro_segment_size(buf: &[u8]) -> Option<u16> {
    iter(buf)
        .find(|c| c.level == libc::SOL_UDP && c.kind == libc::UDP_GRO)
        .and_then(|c| decode_int(c.data))
        .and_then(|size| u16::try_from(size).ok())
        .filter(|&size| size > 0)
}

/// Iterator returned by [`iter`].
#[derive(Debug, Clone)]
pub struct CmsgIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for CmsgIter<'a> {
    type Item = Cmsg<'a>;

    fn next(&mut self) -> Option<Cmsg<'a>> {
        let rest = self.rest;
        let header = rest.get(..HDR_LEN)?;
        let len = usize::from_ne_bytes(header[..LEVEL_AT].try_into().ok()?);
        let level = libc::c_int::from_ne_bytes(header[LEVEL_AT..TYPE_AT].try_into().ok()?);
        let kind = libc::c_int::from_ne_bytes(header[TYPE_AT..HDR_LEN].try_into().ok()?);
        if len < HDR_LEN || len > rest.len() {
            self.rest = &[];
            return None;
        }
        let data = &rest[HDR_LEN..len];
        self.rest = rest.get(align(len)..).unwrap_or(&[]);
        Some(Cmsg { level, kind, data })
    }
}

/// Reads the integer payload of a message: the kernel writes `int` for most options
/// (`UDP_GRO` included) and `u16` for a few; take either width.
fn decode_int(data: &[u8]) -> Option<u32> {
    match data.len() {
        4 => Some(u32::from_ne_bytes(data.try_into().ok()?)),
        2 => Some(u32::from(u16::from_ne_bytes(data.try_into().ok()?))),
        _ => None,
    }
}

const fn align(len: usize) -> usize {
    (len + ALIGN - 1) & !(ALIGN - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_the_libc_macros() {
        for data_len in [0u32, 1, 2, 4, 7, 8, 9, 16, 100] {
            // SAFETY: CMSG_LEN and CMSG_SPACE only do arithmetic on their argument.
            let (len, space) = unsafe { (libc::CMSG_LEN(data_len), libc::CMSG_SPACE(data_len)) };
            assert_eq!(
                cmsg_len(data_len as usize),
                len as usize,
                "CMSG_LEN({data_len})"
            );
            assert_eq!(
                cmsg_space(data_len as usize),
                space as usize,
                "CMSG_SPACE({data_len})"
            );
        }
    }

    #[test]
    fn udp_segment_message_round_trips() {
        let mut buf = CmsgBuffer::<64>::new();
        let used = encode_udp_segment(&mut buf.0, 1400).expect("room");
        assert_eq!(used, cmsg_space(2));
        let all: Vec<_> = iter(&buf.0[..used]).collect();
        assert_eq!(
            all,
            vec![Cmsg {
                level: libc::SOL_UDP,
                kind: libc::UDP_SEGMENT,
                data: &1400u16.to_ne_bytes(),
            }]
        );
    }

    #[test]
    fn gro_size_is_found_after_other_messages() {
        let mut buf = CmsgBuffer::<128>::new();
        let mut used = encode(&mut buf.0, libc::IPPROTO_IP, libc::IP_TOS, &[0x10]).expect("room");
        used += encode(
            &mut buf.0[used..],
            libc::SOL_UDP,
            libc::UDP_GRO,
            &1000i32.to_ne_bytes(),
        )
        .expect("room");
        assert_eq!(gro_segment_size(&buf.0[..used]), Some(1000));
        // Without the GRO message there is no segment size.
        assert_eq!(gro_segment_size(&buf.0[..cmsg_space(1)]), None);
    }

    #[test]
    fn no_room_is_an_error() {
        let mut small = [0u8; 8];
        assert_eq!(
            encode_udp_segment(&mut small, 1),
            Err(CmsgError::NoRoom {
                need: cmsg_space(2),
                have: 8
            })
        );
    }

    #[test]
    fn truncated_and_malformed_buffers_end_iteration() {
        let mut buf = CmsgBuffer::<64>::new();
        let used = encode(
            &mut buf.0,
            libc::SOL_UDP,
            libc::UDP_GRO,
            &7i32.to_ne_bytes(),
        )
        .expect("room");
        // Cut inside the data: the length runs past the buffer.
        assert_eq!(iter(&buf.0[..used - 5]).count(), 0);
        // A length smaller than the header.
        let mut bad = buf;
        bad.0[..LEVEL_AT].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(iter(&bad.0[..used]).count(), 0);
        // Less than a header.
        assert_eq!(iter(&buf.0[..HDR_LEN - 1]).count(), 0);
        // A GRO size of zero or over 16 bits is not a segment size.
        for size in [0i32, 70_000] {
            let mut b = CmsgBuffer::<64>::new();
            let n =
                encode(&mut b.0, libc::SOL_UDP, libc::UDP_GRO, &size.to_ne_bytes()).expect("room");
            assert_eq!(gro_segment_size(&b.0[..n]), None, "size {size}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics_and_stays_in_bounds(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            small_len in 0usize..64,
        ) {
            // Random bytes, and the same bytes with a plausible first length, so the
            // parser's inner paths are reached too.
            let _ = gro_segment_size(&bytes);
            let total: usize = iter(&bytes).map(|c| c.data.len()).sum();
            proptest::prop_assert!(total <= bytes.len());
            let mut framed = bytes.clone();
            if framed.len() >= HDR_LEN {
                framed[..LEVEL_AT].copy_from_slice(&small_len.to_ne_bytes());
            }
            let _ = gro_segment_size(&framed);
            let total: usize = iter(&framed).map(|c| c.data.len()).sum();
            proptest::prop_assert!(total <= framed.len());
        }
    }
}
