//! The fast datapath: the kernel carries unicast between two peers when the tunnel between
//! them works, and the sleeve carries the rest.
//!
//! - [`health`]: per-connection heartbeats through the tunnel and the decision, with its
//!   reason, whether a peer is on the fast datapath or the sleeve (pure).
//! - [`ovs`]: the Open vSwitch backend (generic netlink), used when the kernel has the
//!   `openvswitch` module: Weave Net's own fast datapath.
//! - [`vxlan`]: the Linux VXLAN backend (rtnetlink), used otherwise.
//! - [`shell`]: the I/O around the mesh: heartbeats in and out, and the task that keeps
//!   the kernel's forwarding in step with the healthy peers.

pub mod health;
pub mod ovs;
pub mod shell;
pub mod vxlan;

use std::collections::BTreeMap;

use crate::ids::{PeerName, ShortId};
use crate::mesh::FastdpPath;

/// What the fast datapath forwards by, as the mesh sees it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Our short id (the source half of our VNIs).
    pub our_short: ShortId,
    /// The peers whose unicast the kernel carries.
    pub peers: BTreeMap<PeerName, FastdpPath>,
    /// Every known peer by short id (who a VNI names).
    pub shorts: BTreeMap<ShortId, PeerName>,
    /// Unicast routes: destination → first hop.
    pub unicast: BTreeMap<PeerName, PeerName>,
}
