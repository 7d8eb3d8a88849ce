//! The `weave-router` binary: the daemon (`launch`) and its client subcommands.

fn main() {}
