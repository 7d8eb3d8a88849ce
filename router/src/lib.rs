//! weave-router: the per-node agent of a Weave-compatible overlay network.
//!
//! The crate is split the way `DESIGN.md` lays it out: [`wire`] holds pure codecs,
//! [`mesh`] the sans-IO control plane, [`dataplane`] the sleeve's workers, [`fastdp`] the
//! kernel's fast datapath, [`api`] and [`cli`] the HTTP API and its client, and [`daemon`]
//! the thin shell that drives the mesh with real sockets and clocks.
#![deny(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod dataplane;
pub mod fastdp;
pub mod ids;
pub mod ipam;
#[cfg(feature = "kubernetes")]
pub mod kube;
pub mod mesh;
pub mod switch;
pub mod sys;
pub mod wire;
