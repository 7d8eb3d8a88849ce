//! Ethernet, IPv4, IPv6, TCP and UDP header views and checksums.
