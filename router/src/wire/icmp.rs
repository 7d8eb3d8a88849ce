//! Synthesised ICMP messages (IPv4 "fragmentation needed").
