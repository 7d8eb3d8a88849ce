//! The weave-net CNI plugin.

fn main() {}
