//! Launch configuration.
