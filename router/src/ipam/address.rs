//! IPv4 addresses, ranges and CIDRs as the allocator counts them: plain 32-bit integers, the
//! way Weave's `net/address` does, so ring arithmetic is integer arithmetic.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 address as a 32-bit integer (Weave's `address.Address`, a gob `uint`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Address(pub u32);

impl Address {
    /// The address `n` places after this one (wrapping, as Go's uint32 does).
    pub fn offset(self, n: u32) -> Address {
        Address(self.0.wrapping_add(n))
    }

    /// The standard library form.
    pub fn ip(self) -> Ipv4Addr {
        Ipv4Addr::from(self.0)
    }
}

impl From<Ipv4Addr> for Address {
    fn from(ip: Ipv4Addr) -> Self {
        Address(u32::from(ip))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.ip(), f)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<Ipv4Addr>()
            .map(Address::from)
            .map_err(|_| AddressError::BadAddress(s.to_string()))
    }
}

/// Why an address or CIDR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not a dotted-quad IPv4 address.
    #[error("invalid IPv4 address {0:?}")]
    BadAddress(String),
    /// Not `address/prefix` with a prefix length from 0 to 32.
    #[error("invalid CIDR {0:?}: expected an IPv4 address, '/', and a prefix length 0-32")]
    BadCidr(String),
    /// A subnet whose host bits are not all zero.
    #[error("invalid subnet {0}: bits after the network prefix are not all zero")]
    NotSubnet(Cidr),
    /// A subnet too small to hold a host once its first and last addresses are excluded.
    #[error("invalid subnet {0}: smaller than the minimum size of {MIN_SUBNET_SIZE} addresses")]
    TooSmall(Cidr),
}

/// Smallest subnet the allocator works with: first and last addresses are excluded, so two
/// would leave none.
pub const MIN_SUBNET_SIZE: u64 = 4;

/// Half-open range of addresses `[start, end)`; `end` is a 32-bit address, so ranges here
/// never reach the last IPv4 address (Weave's do not either).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Range {
    /// First address in the range.
    pub start: Address,
    /// First address after the range.
    pub end: Address,
}

impl Range {
    /// `[start, end)`.
    pub fn new(start: Address, end: Address) -> Range {
        Range { start, end }
    }

    /// `size` addresses from `start`.
    pub fn sized(start: Address, size: u32) -> Range {
        Range {
            start,
            end: start.offset(size),
        }
    }

    /// Number of addresses (0 when `end <= start`).
    pub fn size(&self) -> u32 {
        self.end.0.saturating_sub(self.start.0)
    }

    /// Whether `addr` is inside.
    pub fn contains(&self, addr: Address) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        !(self.start >= other.end || self.end <= other.start)
    }

    /// The range as a CIDR when it is one, else `first-last` (Weave's `AsCIDRString`).
    pub fn as_cidr_string(&self) -> String {
        let size = self.size();
        if size.is_power_of_two() && self.start.0 % size == 0 {
            let prefix = 32 - size.trailing_zeros() as u8;
            return Cidr {
                addr: self.start,
                prefix_len: prefix,
            }
            .to_string();
        }
        self.to_string()
    }

    /// The largest CIDR-aligned block inside this range (Weave's `BiggestCIDRRange`; the
    /// block it picks among equals matters for wire compatibility of donations).
    pub fn biggest_cidr_range(&self) -> Range {
        let size = self.size();
        if size == 0 {
            return Range::sized(self.start, 0);
        }
        let size_msb = msb(size);
        let masked_size = size & (size_msb - 1);
        let masked_start = self.start.0 & (size_msb - 1);
        if masked_start == 0 {
            return Range::sized(self.start, size_msb);
        }
        if size_msb - masked_start <= masked_size {
            return Range::sized(self.start.offset(size_msb - masked_start), size_msb);
        }
        let half = size_msb / 2;
        if half >= masked_start {
            return Range::sized(self.start.offset(half - masked_start), half);
        }
        Range::sized(self.start.offset(size_msb - masked_start), half)
    }
}

/// The highest power of two not above `v` (for `v > 0`).
fn msb(v: u32) -> u32 {
    1 << (31 - v.leading_zeros())
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, Address(self.end.0.wrapping_sub(1)))
    }
}

impl fmt::Debug for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// An address with a prefix length (`10.32.0.1/12`); as a subnet, the address is its first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cidr {
    /// The address.
    pub addr: Address,
    /// Prefix length, 0 to 32.
    pub prefix_len: u8,
}

impl Cidr {
    /// Number of addresses in the subnet (`2^(32-prefix)`), as u64 so /0 fits.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    /// The subnet's first address.
    pub fn network(&self) -> Address {
        let mask = if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        };
        Address(self.addr.0 & mask)
    }

    /// Whether the address is the subnet's first (no host bits set).
    pub fn is_subnet(&self) -> bool {
        self.network() == self.addr
    }

    /// The whole subnet as a range. A /0 is clipped to end at 255.255.255.255 (exclusive).
    pub fn range(&self) -> Range {
        let start = self.network();
        let size = u32::try_from(self.size()).unwrap_or(u32::MAX);
        Range::sized(start, size.min(u32::MAX - start.0))
    }

    /// The subnet without its first and last addresses (RFC 1122), where hosts go.
    pub fn host_range(&self) -> Range {
        let r = self.range();
        Range::new(r.start.offset(1), Address(r.end.0.saturating_sub(1)))
    }

    /// Parses `a.b.c.d/n` as a subnet for allocation: no host bits, at least
    /// [`MIN_SUBNET_SIZE`] addresses (Weave's `ParseCIDRSubnet`).
    pub fn parse_subnet(s: &str) -> Result<Cidr, AddressError> {
        let cidr: Cidr = s.parse()?;
        if !cidr.is_subnet() {
            return Err(AddressError::NotSubnet(cidr));
        }
        if cidr.size() < MIN_SUBNET_SIZE {
            return Err(AddressError::TooSmall(cidr));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Cidr {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || AddressError::BadCidr(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 2 {
            return Err(bad());
        }
        let prefix_len: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix_len > 32 {
            return Err(bad());
        }
        Ok(Cidr {
            addr: addr.into(),
            prefix_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    #[test]
    fn default_range_parses_and_sizes() {
        let c = Cidr::parse_subnet("10.32.0.0/12").unwrap();
        assert_eq!(c.size(), 1 << 20);
        assert_eq!(c.range(), Range::new(a("10.32.0.0"), a("10.48.0.0")));
        assert_eq!(
            c.host_range(),
            Range::new(a("10.32.0.1"), a("10.47.255.255"))
        );
        assert_eq!(c.range().as_cidr_string(), "10.32.0.0/12");
        assert_eq!(c.range().to_string(), "10.32.0.0-10.47.255.255");
    }

    #[test]
    fn bad_subnets_are_refused_with_the_reason() {
        assert!(matches!(
            Cidr::parse_subnet("10.32.0.1/12"),
            Err(AddressError::NotSubnet(_))
        ));
        assert!(matches!(
            Cidr::parse_subnet("10.32.0.0/31"),
            Err(AddressError::TooSmall(_))
        ));
        for bad in [
            "10.32.0.0",
            "10.32.0.0/33",
            "10.32.0/12",
            "10.32.0.0/-1",
            "x/1",
            "1.2.3.4/",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(AddressError::BadCidr(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn biggest_cidr_range_matches_weave() {
        // The cases of Weave's TestBiggestPow2AlignedRange.
        let r = |start: u32, size: u32| Range::sized(Address(start), size);
        assert_eq!(r(0, 1).biggest_cidr_range(), r(0, 1));
        assert_eq!(r(1, 2).biggest_cidr_range(), r(1, 1));
        assert_eq!(r(1, 3).biggest_cidr_range(), r(2, 2));
        assert_eq!(r(0, 0x7fff_ffff).biggest_cidr_range(), r(0, 0x4000_0000));
        assert_eq!(r(0xffff_fffe, 1).biggest_cidr_range(), r(0xffff_fffe, 1));
    }

    proptest::proptest! {
        #[test]
        fn biggest_cidr_range_is_an_aligned_block_inside(start: u32, size in 1u32..) {
            proptest::prop_assume!(size <= u32::MAX - start);
            let r = Range::sized(Address(start), size);
            let b = r.biggest_cidr_range();
            proptest::prop_assert!(r.contains(b.start) && r.contains(Address(b.end.0 - 1)));
            proptest::prop_assert!(b.size().is_power_of_two());
            proptest::prop_assert!(b.size() > r.size() / 4);
            proptest::prop_assert_eq!(b.start.0 % b.size(), 0);
        }
    }
}
