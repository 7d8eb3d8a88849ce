//! Network-namespace testbed.
