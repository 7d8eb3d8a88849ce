//! The `virtio_net_hdr` that a TAP with IFF_VNET_HDR puts before each frame.
//!
//! Layout (Linux `include/uapi/linux/virtio_net.h`), little-endian: every TAP queue the router
//! opens sets TUNSETVNETLE ([`crate::sys::tap::TapQueue::open`]). Without it the legacy header
//! is guest-endian, i.e. in the host's byte order; a kernel too old for the ioctl is accepted
//! only on a little-endian host, where that order is the same.
//!
//! ```text
//! 0      1         2        4         6           8            10            12
//! | flags | gso_type | hdr_len | gso_size | csum_start | csum_offset | num_buffers |
//! ```
//!
//! The 10-byte form ends before `num_buffers`; the router sets TUNSETVNETHDRSZ to
//! [`VNET_HDR_LEN`] (12) so that reads and writes line up with the mergeable-buffers layout.

use thiserror::Error;

/// Size of the header the router configures with TUNSETVNETHDRSZ.
pub const VNET_HDR_LEN: usize = 12;

/// Size of the original (legacy) header without `num_buffers`.
pub const VNET_HDR_LEN_LEGACY: usize = 10;

/// `flags`: the checksum is partial; finish it from `csum_start`, store it at
/// `csum_start + csum_offset`. The field already holds the pseudo-header sum.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;

/// `flags`: the checksum has been verified (the kernel sets this on reads only).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `gso_type`: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO, IPv4 fragments).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 (TSO6).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (USO, one datagram per segment).
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP super-frame carries CWR, which belongs on its first segment only.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

mod field {
    use std::ops::Range;

    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
    pub const NUM_BUFFERS: Range<usize> = 10..12;
}

/// A header could not be read or written.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum VnetError {
    /// The buffer is shorter than the header form asked for.
    #[error("virtio_net_hdr needs {needed} bytes, buffer has {got}")]
    Truncated {
        /// Bytes the header form needs.
        needed: usize,
        /// Bytes the buffer has.
        got: usize,
    },
}

/// The segmentation a header asks for (`gso_type` without the ECN bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GsoType {
    /// Not a GSO frame.
    #[default]
    None,
    /// TCP over IPv4.
    TcpV4,
    /// UDP fragmentation (UFO).
    Udp,
    /// TCP over IPv6.
    TcpV6,
    /// UDP segmentation (USO).
    UdpL4,
    /// A value this code does not know, kept as read.
    Unknown(u8),
}

impl From<u8> for GsoType {
    fn from(value: u8) -> Self {
        match value {
            VIRTIO_NET_HDR_GSO_NONE => GsoType::None,
            VIRTIO_NET_HDR_GSO_TCPV4 => GsoType::TcpV4,
            VIRTIO_NET_HDR_GSO_UDP => GsoType::Udp,
            VIRTIO_NET_HDR_GSO_TCPV6 => GsoType::TcpV6,
            VIRTIO_NET_HDR_GSO_UDP_L4 => GsoType::UdpL4,
            other => GsoType::Unknown(other),
        }
    }
}

impl From<GsoType> for u8 {
    fn from(value: GsoType) -> Self {
        match value {
            GsoType::None => VIRTIO_NET_HDR_GSO_NONE,
            GsoType::TcpV4 => VIRTIO_NET_HDR_GSO_TCPV4,
            GsoType::Udp => VIRTIO_NET_HDR_GSO_UDP,
            GsoType::TcpV6 => VIRTIO_NET_HDR_GSO_TCPV6,
            GsoType::UdpL4 => VIRTIO_NET_HDR_GSO_UDP_L4,
            GsoType::Unknown(other) => other,
        }
    }
}

/// One `virtio_net_hdr` as a value. The all-zero value ([`Default`]) means "a plain frame
/// with a complete checksum".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VirtioNetHdr {
    /// Raw `flags` byte; unknown bits are kept.
    pub flags: u8,
    /// `gso_type` without the ECN bit.
    pub gso_type: GsoType,
    /// The ECN bit of `gso_type`.
    pub gso_ecn: bool,
    /// Header length hint. The kernel fills it with the skb's linear length, which may
    /// exceed the real header length, so consumers parse headers rather than trust it.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the partial checksum starts (frame offset).
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum is stored.
    pub csum_offset: u16,
    /// Only in the 12-byte form; zero for TAP I/O.
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Reads the 12-byte form from the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, VnetError> {
        let mut hdr = Self::parse_legacy(buf)?;
        if buf.len() < VNET_HDR_LEN {
            return Err(VnetError::Truncated {
                needed: VNET_HDR_LEN,
                got: buf.len(),
            });
        }
        hdr.num_buffers = le16(buf, field::NUM_BUFFERS.start);
        Ok(hdr)
    }

    /// Reads the 10-byte form from the start of `buf`; `num_buffers` is zero.
    pub fn parse_legacy(buf: &[u8]) -> Result<Self, VnetError> {
        if buf.len() < VNET_HDR_LEN_LEGACY {
            return Err(VnetError::Truncated {
                needed: VNET_HDR_LEN_LEGACY,
                got: buf.len(),
            });
        }
        let raw_type = buf[field::GSO_TYPE];
        Ok(VirtioNetHdr {
            flags: buf[field::FLAGS],
            gso_type: GsoType::from(raw_type & !VIRTIO_NET_HDR_GSO_ECN),
            gso_ecn: raw_type & VIRTIO_NET_HDR_GSO_ECN != 0,
            hdr_len: le16(buf, field::HDR_LEN.start),
            gso_size: le16(buf, field::GSO_SIZE.start),
            csum_start: le16(buf, field::CSUM_START.start),
            csum_offset: le16(buf, field::CSUM_OFFSET.start),
            num_buffers: 0,
        })
    }

    /// Length of the form [`emit`](Self::emit) writes.
    pub const fn buffer_len() -> usize {
        VNET_HDR_LEN
    }

    /// Writes the 12-byte form into the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), VnetError> {
        if buf.len() < VNET_HDR_LEN {
            return Err(VnetError::Truncated {
                needed: VNET_HDR_LEN,
                got: buf.len(),
            });
        }
        self.emit_legacy(buf)?;
        buf[field::NUM_BUFFERS].copy_from_slice(&self.num_buffers.to_le_bytes());
        Ok(())
    }

    /// Writes the 10-byte form into the start of `buf` (`num_buffers` is dropped).
    pub fn emit_legacy(&self, buf: &mut [u8]) -> Result<(), VnetError> {
        if buf.len() < VNET_HDR_LEN_LEGACY {
            return Err(VnetError::Truncated {
                needed: VNET_HDR_LEN_LEGACY,
                got: buf.len(),
            });
        }
        buf[field::FLAGS] = self.flags;
        buf[field::GSO_TYPE] = self.raw_gso_type();
        buf[field::HDR_LEN].copy_from_slice(&self.hdr_len.to_le_bytes());
        buf[field::GSO_SIZE].copy_from_slice(&self.gso_size.to_le_bytes());
        buf[field::CSUM_START].copy_from_slice(&self.csum_start.to_le_bytes());
        buf[field::CSUM_OFFSET].copy_from_slice(&self.csum_offset.to_le_bytes());
        Ok(())
    }

    /// The header as the 12 bytes the TAP expects.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut out = [0u8; VNET_HDR_LEN];
        // The array is exactly VNET_HDR_LEN long, so emit cannot fail.
        let _ = self.emit(&mut out);
        out
    }

    /// The raw `gso_type` byte, ECN bit included.
    pub fn raw_gso_type(&self) -> u8 {
        let ecn = if self.gso_ecn {
            VIRTIO_NET_HDR_GSO_ECN
        } else {
            0
        };
        u8::from(self.gso_type) | ecn
    }

    /// Whether the frame's L4 checksum is partial and must be finished.
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// Whether the kernel has verified the frame's checksum.
    pub fn data_valid(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_DATA_VALID != 0
    }
}

fn le16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_tso_header_as_the_kernel_writes_it() {
        // NEEDS_CSUM, TCPV4|ECN, hdr_len 66, gso_size 1398, csum_start 34, csum_offset 16.
        let bytes = [1, 0x81, 66, 0, 0x76, 0x05, 34, 0, 16, 0, 0, 0];

        let hdr = VirtioNetHdr::parse(&bytes).unwrap();

        assert_eq!(
            hdr,
            VirtioNetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: GsoType::TcpV4,
                gso_ecn: true,
                hdr_len: 66,
                gso_size: 1398,
                csum_start: 34,
                csum_offset: 16,
                num_buffers: 0,
            }
        );
        assert!(hdr.needs_csum());
        assert!(!hdr.data_valid());
        assert_eq!(hdr.to_bytes(), bytes);
    }

    #[test]
    fn legacy_form_is_ten_bytes_and_short_buffers_are_refused() {
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            gso_type: GsoType::Unknown(0x42),
            num_buffers: 7,
            ..VirtioNetHdr::default()
        };
        let mut ten = [0u8; 10];
        hdr.emit_legacy(&mut ten).unwrap();

        let back = VirtioNetHdr::parse_legacy(&ten).unwrap();

        assert_eq!(back.gso_type, GsoType::Unknown(0x42));
        assert_eq!(back.num_buffers, 0);
        assert_eq!(
            VirtioNetHdr::parse(&ten),
            Err(VnetError::Truncated {
                needed: 12,
                got: 10
            })
        );
        assert!(hdr.emit(&mut ten).is_err());
        assert!(VirtioNetHdr::parse_legacy(&ten[..9]).is_err());
    }

    proptest! {
        #[test]
        fn emit_parse_round_trip(bytes in proptest::array::uniform12(any::<u8>())) {
            let hdr = VirtioNetHdr::parse(&bytes).unwrap();
            prop_assert_eq!(hdr.to_bytes(), bytes);
        }
    }
}
