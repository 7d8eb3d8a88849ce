//! weave-perf: runs weave-router on a network-namespace testbed.

fn main() {}
