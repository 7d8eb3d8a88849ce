//! The daemon shell.
