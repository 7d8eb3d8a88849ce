//! Sleeve datagrams: sender name, then frames with source and destination peers.
