//! Host plumbing over netlink: the weave bridge and the multi-queue TAP attached to it.
//!
//! Built as "plan, then execute": [`observe`] reads the links, the pure [`plan`] compares
//! them with a [`HostPlumbing`] and returns the [`PlumbingOp`]s that close the gap, and
//! [`execute`] performs them. Running it again on a host that already matches plans
//! nothing, so the router runs it at every start.
//!
//! Choices that outlive a process:
//! - The TAP is persistent. It keeps its bridge port, MTU and queue length while no router
//!   runs, so a restart never detaches it or the pods, and only the queues (open file
//!   descriptors, one per worker) change with the worker count.
//! - The bridge is never deleted by the plan: pods hang off it. A link called like the
//!   bridge (or the TAP) that is of the wrong kind is replaced only while nothing is
//!   attached to it; otherwise the plan stops with [`PlanError::WouldDetachPorts`].
//! - Existing bridge addresses are left alone (an operator may have exposed the overlay on
//!   the host); a configured address is added when missing.

use std::fmt;
use std::io;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_core::Nla;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    BridgeStpState, InfoBridge, InfoData, InfoKind, InfoTun, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec};

use crate::sys::tap;
use crate::sys::SysError;

/// Name of the bridge pods attach to, as in Weave Net.
pub const BRIDGE_NAME: &str = "weave";
/// Name of the router's TAP on that bridge.
pub const TAP_NAME: &str = "vethwe-tap";
/// Transmit queue length of the TAP: bursts from the bridge wait there for a worker instead
/// of being dropped at the default 1000.
pub const DEFAULT_TAP_TXQUEUELEN: u32 = 10_000;

/// Smallest MTU the bridge and TAP accept (IPv4 minimum).
const MIN_MTU: u32 = 68;
/// Largest MTU the bridge and TAP accept.
const MAX_MTU: u32 = 65_535;

/// The largest MTU a TAP takes: 65535 less its Ethernet header.
pub const TAP_MAX_MTU: u32 = 65_535 - 14;

/// The plumbing the router wants on its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPlumbing {
    /// Bridge name.
    pub bridge: String,
    /// TAP name.
    pub tap: String,
    /// MTU of the bridge (the pods' MTU).
    pub mtu: u32,
    /// MTU of the TAP: the largest, so that the bridge hands the router every frame a pod
    /// sends, and the router answers one too big for its path with "fragmentation needed"
    /// instead of the bridge dropping it silently.
    pub tap_mtu: u32,
    /// Transmit queue length of the TAP.
    pub tap_txqueuelen: u32,
    /// An address for the bridge, when the host should reach the overlay.
    pub bridge_address: Option<IfAddr>,
}

impl HostPlumbing {
    /// The default names and queue length, with the given MTU and no bridge address.
    pub fn new(mtu: u32) -> Self {
        Self {
            bridge: BRIDGE_NAME.to_owned(),
            tap: TAP_NAME.to_owned(),
            mtu,
            tap_mtu: TAP_MAX_MTU,
            tap_txqueuelen: DEFAULT_TAP_TXQUEUELEN,
            bridge_address: None,
        }
    }

    /// Checks names and MTU before anything is planned.
    pub fn validate(&self) -> Result<(), PlanError> {
        for name in [&self.bridge, &self.tap] {
            tap::validate_ifname(name).map_err(|_| PlanError::InvalidName(name.clone()))?;
        }
        if self.bridge == self.tap {
            return Err(PlanError::SameName(self.bridge.clone()));
        }
        for mtu in [self.mtu, self.tap_mtu] {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return Err(PlanError::InvalidMtu(mtu));
            }
        }
        if let Some(addr) = self.bridge_address {
            let max = match addr.addr {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            };
            if addr.prefix_len > max {
                return Err(PlanError::InvalidAddress(addr));
            }
        }
        Ok(())
    }
}

/// An interface address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfAddr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// What [`observe`] saw of the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every link of the namespace.
    pub links: Vec<ObservedLink>,
    /// Addresses on the link named like the bridge (empty when there is none).
    pub bridge_addresses: Vec<IfAddr>,
}

impl Observed {
    /// The link with this name.
    pub fn link(&self, name: &str) -> Option<&ObservedLink> {
        self.links.iter().find(|l| l.name == name)
    }

    /// Names of the links whose master is `index` (a bridge's ports).
    pub fn ports_of(&self, index: u32) -> Vec<String> {
        self.links
            .iter()
            .filter(|l| l.master == Some(index))
            .map(|l| l.name.clone())
            .collect()
    }
}

/// One link as netlink reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLink {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Link kind and its kind-specific state.
    pub kind: LinkKind,
    /// MTU.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Index of the master (bridge) this link is a port of.
    pub master: Option<u32>,
    /// Transmit queue length.
    pub txqueuelen: u32,
}

/// The kind of a link, with what the plan needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A Linux bridge.
    Bridge {
        /// Spanning tree is on (kernel or user STP).
        stp: bool,
    },
    /// A TUN or TAP device.
    Tun(TunInfo),
    /// Some other kind (`veth`, `vxlan`, `openvswitch`, ...).
    Other(String),
    /// No kind reported (loopback, physical NICs).
    Unspecified,
}

/// TUN/TAP attributes (`IFLA_TUN_*`); `None` where the kernel did not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunInfo {
    /// A TAP (Ethernet) rather than a TUN (IP) device.
    pub tap: Option<bool>,
    /// Created with `IFF_MULTI_QUEUE`.
    pub multi_queue: Option<bool>,
    /// Outlives its file descriptors.
    pub persist: Option<bool>,
    /// Queues attached now.
    pub queues: Option<u32>,
}

/// One change to the host. Links are named, since some are created by earlier operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlumbingOp {
    /// Delete a link of the wrong kind that nothing is attached to.
    DeleteLink {
        /// The link.
        name: String,
    },
    /// Create a bridge, up, spanning tree off.
    CreateBridge {
        /// The bridge.
        name: String,
    },
    /// Create a persistent multi-queue TAP through `/dev/net/tun`.
    CreateTap {
        /// The TAP.
        name: String,
    },
    /// Make an existing TAP persistent.
    SetTapPersistent {
        /// The TAP.
        name: String,
    },
    /// Set the MTU.
    SetMtu {
        /// The link.
        name: String,
        /// The MTU.
        mtu: u32,
    },
    /// Set the transmit queue length.
    SetTxQueueLen {
        /// The link.
        name: String,
        /// The queue length.
        len: u32,
    },
    /// Turn a bridge's spanning tree off.
    DisableStp {
        /// The bridge.
        name: String,
    },
    /// Make a link a port of a bridge.
    SetMaster {
        /// The port.
        name: String,
        /// The bridge.
        master: String,
    },
    /// Bring a link up.
    SetUp {
        /// The link.
        name: String,
    },
    /// Add an address.
    AddAddress {
        /// The link.
        name: String,
        /// The address.
        addr: IfAddr,
    },
}

impl fmt::Display for PlumbingOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeleteLink { name } => write!(f, "delete link {name}"),
            Self::CreateBridge { name } => write!(f, "create bridge {name}"),
            Self::CreateTap { name } => write!(f, "create persistent multi-queue tap {name}"),
            Self::SetTapPersistent { name } => write!(f, "make tap {name} persistent"),
            Self::SetMtu { name, mtu } => write!(f, "set {name} mtu {mtu}"),
            Self::SetTxQueueLen { name, len } => write!(f, "set {name} txqueuelen {len}"),
            Self::DisableStp { name } => write!(f, "turn stp off on {name}"),
            Self::SetMaster { name, master } => write!(f, "set {name} master {master}"),
            Self::SetUp { name } => write!(f, "set {name} up"),
            Self::AddAddress { name, addr } => write!(f, "add address {addr} to {name}"),
        }
    }
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An interface name the kernel would refuse.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// Bridge and TAP were given the same name.
    #[error("bridge and tap cannot both be called {0:?}")]
    SameName(String),
    /// An MTU outside 68..=65535.
    #[error("mtu {0} is outside {MIN_MTU}..={MAX_MTU}")]
    InvalidMtu(u32),
    /// A bridge address whose prefix is longer than the address.
    #[error("invalid bridge address {0}")]
    InvalidAddress(IfAddr),
    /// A link of the wrong kind holds a needed name and has ports; replacing it would cut
    /// them off, so the operator has to decide.
    #[error("{name} is a {kind} link, not a {wanted}, and has ports attached ({ports:?}); refusing to replace it")]
    WouldDetachPorts {
        /// The link.
        name: String,
        /// Its kind.
        kind: String,
        /// What the router needs there.
        wanted: &'static str,
        /// Its ports.
        ports: Vec<String>,
    },
}

/// Why the plumbing could not be brought to the desired state.
#[derive(Debug, thiserror::Error)]
pub enum PlumbingError {
    /// The plan was refused.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A netlink request failed.
    #[error("netlink: {what}: {source}")]
    Netlink {
        /// The request, e.g. "set weave mtu 1376".
        what: String,
        /// What rtnetlink reported.
        #[source]
        source: rtnetlink::Error,
    },
    /// Creating or adopting the TAP through `/dev/net/tun` failed.
    #[error("tap: {0}")]
    Tap(#[from] SysError),
    /// No netlink socket or runtime could be set up.
    #[error("netlink connection: {0}")]
    Connection(#[source] io::Error),
    /// A link named by an operation was not there when it ran.
    #[error("link {0} vanished while the plumbing ran")]
    LinkVanished(String),
}

/// Plans the operations that turn `observed` into `desired`. Pure: the same input gives
/// the same list, and a host that matches gives an empty one.
pub fn plan(observed: &Observed, desired: &HostPlumbing) -> Result<Vec<PlumbingOp>, PlanError> {
    desired.validate()?;
    let mut ops = Vec::new();
    let bridge_kept = plan_bridge(observed, desired, &mut ops)?;
    plan_tap(observed, desired, bridge_kept, &mut ops)?;
    Ok(ops)
}

/// Observes, plans and executes; returns what was done (empty when nothing was needed).
///
/// `handle`'s netlink socket and the calling thread must be in the same network namespace:
/// the TAP is created through `/dev/net/tun` in the thread's namespace.
pub async fn ensure(
    handle: &Handle,
    desired: &HostPlumbing,
) -> Result<Vec<PlumbingOp>, PlumbingError> {
    let observed = observe(handle, desired).await?;
    let ops = plan(&observed, desired)?;
    execute(handle, &ops).await?;
    Ok(ops)
}

/// [`ensure`] with its own netlink connection and single-threaded runtime, all in the calling
/// thread's network namespace. Must not be called from inside an async runtime.
pub fn ensure_blocking(desired: &HostPlumbing) -> Result<Vec<PlumbingOp>, PlumbingError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(PlumbingError::Connection)?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(PlumbingError::Connection)?;
        let driver = tokio::spawn(connection);
        let result = ensure(&handle, desired).await;
        driver.abort();
        result
    })
}

/// Reads every link, and the addresses of the link named like the bridge.
pub async fn observe(handle: &Handle, desired: &HostPlumbing) -> Result<Observed, PlumbingError> {
    let messages: Vec<LinkMessage> =
        handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| PlumbingError::Netlink {
                what: "list links".to_owned(),
                source,
            })?;
    let links: Vec<ObservedLink> = messages.iter().filter_map(link_from_message).collect();
    let bridge_addresses = match links.iter().find(|l| l.name == desired.bridge) {
        Some(bridge) => addresses_of(handle, bridge.index).await?,
        None => Vec::new(),
    };
    Ok(Observed {
        links,
        bridge_addresses,
    })
}

/// Deletes the TAP and the bridge of `desired` where they are of the kinds the router
/// makes (a TAP, a bridge); returns the names deleted. Links of another kind under those
/// names are someone else's and stay. Ports still on the bridge (pods' veths) are
/// detached, not deleted.
pub async fn remove(handle: &Handle, desired: &HostPlumbing) -> Result<Vec<String>, PlumbingError> {
    let observed = observe(handle, desired).await?;
    let is_tap: fn(&LinkKind) -> bool = |k| matches!(k, LinkKind::Tun(i) if i.tap != Some(false));
    let is_bridge: fn(&LinkKind) -> bool = |k| matches!(k, LinkKind::Bridge { .. });
    let mut removed = Vec::new();
    for (name, ours) in [(&desired.tap, is_tap), (&desired.bridge, is_bridge)] {
        let Some(link) = observed.link(name) else {
            continue;
        };
        if !ours(&link.kind) {
            tracing::warn!(
                "{name} is a {} link, not the router's; left alone",
                link.kind
            );
            continue;
        }
        execute_one(handle, &PlumbingOp::DeleteLink { name: name.clone() }).await?;
        removed.push(name.clone());
    }
    Ok(removed)
}

/// Performs `ops` in order, resolving link names when each one runs.
pub async fn execute(handle: &Handle, ops: &[PlumbingOp]) -> Result<(), PlumbingError> {
    for op in ops {
        tracing::info!(%op, "host plumbing");
        execute_one(handle, op).await?;
    }
    Ok(())
}

/// Plans the bridge; returns whether the existing bridge stays (so its index and ports do).
fn plan_bridge(
    observed: &Observed,
    desired: &HostPlumbing,
    ops: &mut Vec<PlumbingOp>,
) -> Result<bool, PlanError> {
    let name = &desired.bridge;
    let existing = observed.link(name);
    let kept = match existing {
        Some(link) => match &link.kind {
            LinkKind::Bridge { stp } => {
                if link.mtu != desired.mtu {
                    ops.push(PlumbingOp::SetMtu {
                        name: name.clone(),
                        mtu: desired.mtu,
                    });
                }
                if *stp {
                    ops.push(PlumbingOp::DisableStp { name: name.clone() });
                }
                if !link.up {
                    ops.push(PlumbingOp::SetUp { name: name.clone() });
                }
                true
            }
            LinkKind::Tun(_) | LinkKind::Other(_) | LinkKind::Unspecified => {
                replace(observed, link, "bridge", ops)?;
                false
            }
        },
        None => false,
    };
    if !kept {
        ops.push(PlumbingOp::CreateBridge { name: name.clone() });
        // A bridge's MTU given at creation is not pinned: the kernel keeps moving it to the
        // smallest MTU among its ports (a first port of 1500 lifts a bridge made with 1376).
        // Setting it afterwards pins it, whatever pods attach.
        ops.push(PlumbingOp::SetMtu {
            name: name.clone(),
            mtu: desired.mtu,
        });
    }
    if let Some(addr) = desired.bridge_address {
        if !kept || !observed.bridge_addresses.contains(&addr) {
            ops.push(PlumbingOp::AddAddress {
                name: name.clone(),
                addr,
            });
        }
    }
    Ok(kept)
}

fn plan_tap(
    observed: &Observed,
    desired: &HostPlumbing,
    bridge_kept: bool,
    ops: &mut Vec<PlumbingOp>,
) -> Result<(), PlanError> {
    let name = &desired.tap;
    let existing = observed.link(name);
    let reusable = existing.and_then(|link| match &link.kind {
        LinkKind::Tun(info) if info.tap != Some(false) && info.multi_queue != Some(false) => {
            Some((link, *info))
        }
        LinkKind::Tun(_) | LinkKind::Bridge { .. } | LinkKind::Other(_) | LinkKind::Unspecified => {
            None
        }
    });
    let Some((link, info)) = reusable else {
        if let Some(link) = existing {
            replace(observed, link, "multi-queue tap", ops)?;
        }
        ops.push(PlumbingOp::CreateTap { name: name.clone() });
        // A new TAP has the kernel's defaults (mtu 1500, txqueuelen 1000, down, no master).
        ops.extend([
            PlumbingOp::SetMtu {
                name: name.clone(),
                mtu: desired.tap_mtu,
            },
            PlumbingOp::SetTxQueueLen {
                name: name.clone(),
                len: desired.tap_txqueuelen,
            },
            PlumbingOp::SetMaster {
                name: name.clone(),
                master: desired.bridge.clone(),
            },
            PlumbingOp::SetUp { name: name.clone() },
        ]);
        return Ok(());
    };
    if info.persist == Some(false) {
        ops.push(PlumbingOp::SetTapPersistent { name: name.clone() });
    }
    if link.mtu != desired.tap_mtu {
        ops.push(PlumbingOp::SetMtu {
            name: name.clone(),
            mtu: desired.tap_mtu,
        });
    }
    if link.txqueuelen != desired.tap_txqueuelen {
        ops.push(PlumbingOp::SetTxQueueLen {
            name: name.clone(),
            len: desired.tap_txqueuelen,
        });
    }
    let bridge_index = observed.link(&desired.bridge).map(|b| b.index);
    if !bridge_kept || link.master != bridge_index {
        ops.push(PlumbingOp::SetMaster {
            name: name.clone(),
            master: desired.bridge.clone(),
        });
    }
    if !link.up {
        ops.push(PlumbingOp::SetUp { name: name.clone() });
    }
    Ok(())
}

/// Plans the deletion of a link of the wrong kind, unless something is attached to it.
fn replace(
    observed: &Observed,
    link: &ObservedLink,
    wanted: &'static str,
    ops: &mut Vec<PlumbingOp>,
) -> Result<(), PlanError> {
    let ports = observed.ports_of(link.index);
    if !ports.is_empty() {
        return Err(PlanError::WouldDetachPorts {
            name: link.name.clone(),
            kind: link.kind.to_string(),
            wanted,
            ports,
        });
    }
    ops.push(PlumbingOp::DeleteLink {
        name: link.name.clone(),
    });
    Ok(())
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bridge { .. } => f.write_str("bridge"),
            Self::Tun(info) => match info.tap {
                Some(true) => f.write_str("tap"),
                Some(false) => f.write_str("tun"),
                None => f.write_str("tun/tap"),
            },
            Self::Other(kind) => f.write_str(kind),
            Self::Unspecified => f.write_str("kind-less"),
        }
    }
}

async fn execute_one(handle: &Handle, op: &PlumbingOp) -> Result<(), PlumbingError> {
    let netlink = |source| PlumbingError::Netlink {
        what: op.to_string(),
        source,
    };
    // Every op but these changes one link's attributes: build the change, then send it.
    let change = match op {
        PlumbingOp::DeleteLink { name } => {
            let index = index_of(handle, name).await?;
            return handle.link().del(index).execute().await.map_err(netlink);
        }
        PlumbingOp::CreateBridge { name } => {
            let message = LinkBridge::new(name)
                .stp_state(BridgeStpState::Disabled)
                .build();
            return handle.link().add(message).execute().await.map_err(netlink);
        }
        PlumbingOp::CreateTap { name } | PlumbingOp::SetTapPersistent { name } => {
            // The TUN driver refuses rtnetlink creation; /dev/net/tun creates or adopts it.
            tap::create_persistent(name)?;
            return Ok(());
        }
        PlumbingOp::AddAddress { name, addr } => {
            let index = index_of(handle, name).await?;
            return handle
                .address()
                .add(index, addr.addr, addr.prefix_len)
                .execute()
                .await
                .map_err(netlink);
        }
        PlumbingOp::SetMtu { name, mtu } => {
            let index = index_of(handle, name).await?;
            LinkUnspec::new_with_index(index).mtu(*mtu).build()
        }
        PlumbingOp::SetTxQueueLen { name, len } => {
            let index = index_of(handle, name).await?;
            LinkUnspec::new_with_index(index).txqueuelen(*len).build()
        }
        PlumbingOp::DisableStp { name } => {
            let index = index_of(handle, name).await?;
            LinkMessageBuilder::<LinkBridge>::new(name)
                .index(index)
                .stp_state(BridgeStpState::Disabled)
                .build()
        }
        PlumbingOp::SetMaster { name, master } => {
            let index = index_of(handle, name).await?;
            let master_index = index_of(handle, master).await?;
            LinkUnspec::new_with_index(index)
                .controller(master_index)
                .build()
        }
        PlumbingOp::SetUp { name } => {
            let index = index_of(handle, name).await?;
            LinkUnspec::new_with_index(index).up().build()
        }
    };
    handle
        .link()
        .change(change)
        .execute()
        .await
        .map_err(netlink)
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, PlumbingError> {
    let found = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(Some(message)) => Ok(message.header.index),
        Ok(None) => Err(PlumbingError::LinkVanished(name.to_owned())),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Err(PlumbingError::LinkVanished(name.to_owned()))
        }
        Err(source) => Err(PlumbingError::Netlink {
            what: format!("look up link {name}"),
            source,
        }),
    }
}

async fn addresses_of(handle: &Handle, index: u32) -> Result<Vec<IfAddr>, PlumbingError> {
    Ok(addresses(handle, Some(index))
        .await?
        .into_iter()
        .map(|(_, a)| a)
        .collect())
}

/// Every address of this network namespace, on any link.
pub async fn host_addresses(handle: &Handle) -> Result<Vec<IpAddr>, PlumbingError> {
    Ok(addresses(handle, None)
        .await?
        .into_iter()
        .map(|(_, a)| a.addr)
        .collect())
}

/// The addresses of link `index`, or of every link, with the index of each one's link.
async fn addresses(
    handle: &Handle,
    index: Option<u32>,
) -> Result<Vec<(u32, IfAddr)>, PlumbingError> {
    let mut request = handle.address().get();
    if let Some(index) = index {
        request = request.set_link_index_filter(index);
    }
    let messages: Vec<_> =
        request
            .execute()
            .try_collect()
            .await
            .map_err(|source| PlumbingError::Netlink {
                what: match index {
                    Some(i) => format!("list addresses of link {i}"),
                    None => "list addresses".to_string(),
                },
                source,
            })?;
    Ok(messages
        .iter()
        .filter(|m| index.is_none_or(|i| m.header.index == i))
        .filter_map(|m| {
            // IPv4 reports the configured address as IFA_LOCAL (IFA_ADDRESS is the peer on
            // point-to-point links); IPv6 only has IFA_ADDRESS.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            local.or(address).map(|addr| {
                (
                    m.header.index,
                    IfAddr {
                        addr,
                        prefix_len: m.header.prefix_len,
                    },
                )
            })
        })
        .collect())
}

/// Turns a netlink link message into what the planner looks at; `None` without a name.
fn link_from_message(message: &LinkMessage) -> Option<ObservedLink> {
    let mut name = None;
    let mut mtu = 0;
    let mut master = None;
    let mut txqueuelen = 0;
    let mut kind = LinkKind::Unspecified;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::Controller(m) if *m != 0 => master = Some(*m),
            LinkAttribute::TxQueueLen(q) => txqueuelen = *q,
            LinkAttribute::LinkInfo(infos) => kind = kind_from_info(infos),
            _ => {}
        }
    }
    Some(ObservedLink {
        index: message.header.index,
        name: name?,
        kind,
        mtu,
        up: message.header.flags.contains(LinkFlags::Up),
        master,
        txqueuelen,
    })
}

fn kind_from_info(infos: &[LinkInfo]) -> LinkKind {
    let kind = infos.iter().find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k),
        _ => None,
    });
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(d) => Some(d),
        _ => None,
    });
    match (kind, data) {
        (Some(InfoKind::Bridge), data) => LinkKind::Bridge {
            stp: match data {
                Some(InfoData::Bridge(attrs)) => attrs.iter().any(|a| {
                    matches!(
                        a,
                        InfoBridge::StpState(s) if *s != BridgeStpState::Disabled
                    )
                }),
                _ => false,
            },
        },
        (Some(InfoKind::Tun), Some(InfoData::Tun(attrs))) => LinkKind::Tun(tun_info(attrs)),
        (Some(InfoKind::Tun), _) => LinkKind::Tun(TunInfo::default()),
        (Some(other), _) => LinkKind::Other(other.to_string()),
        (None, _) => LinkKind::Unspecified,
    }
}

/// Decodes `IFLA_TUN_*`, which netlink-packet-route leaves as raw attributes.
fn tun_info(attrs: &[InfoTun]) -> TunInfo {
    const IFLA_TUN_TYPE: u16 = 3;
    const IFLA_TUN_PERSIST: u16 = 6;
    const IFLA_TUN_MULTI_QUEUE: u16 = 7;
    const IFLA_TUN_NUM_QUEUES: u16 = 8;
    let mut info = TunInfo::default();
    for attr in attrs {
        let mut value = vec![0u8; attr.value_len()];
        attr.emit_value(&mut value);
        let byte = value.first().copied();
        let word = <[u8; 4]>::try_from(value.as_slice())
            .ok()
            .map(u32::from_ne_bytes);
        match attr.kind() {
            IFLA_TUN_TYPE => info.tap = byte.map(|t| libc::c_int::from(t) == libc::IFF_TAP),
            IFLA_TUN_PERSIST => info.persist = byte.map(|b| b != 0),
            IFLA_TUN_MULTI_QUEUE => info.multi_queue = byte.map(|b| b != 0),
            IFLA_TUN_NUM_QUEUES => info.queues = word,
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::DefaultNla;

    const MTU: u32 = 1376;

    fn desired() -> HostPlumbing {
        HostPlumbing::new(MTU)
    }

    fn link(index: u32, name: &str, kind: LinkKind) -> ObservedLink {
        ObservedLink {
            index,
            name: name.to_owned(),
            kind,
            mtu: 1500,
            up: false,
            master: None,
            txqueuelen: 1000,
        }
    }

    fn good_tap() -> TunInfo {
        TunInfo {
            tap: Some(true),
            multi_queue: Some(true),
            persist: Some(true),
            queues: Some(0),
        }
    }

    /// A host where everything is as desired: lo, the bridge (index 2), the TAP on it.
    fn matching_host() -> Observed {
        Observed {
            links: vec![
                link(1, "lo", LinkKind::Unspecified),
                ObservedLink {
                    mtu: MTU,
                    up: true,
                    ..link(2, BRIDGE_NAME, LinkKind::Bridge { stp: false })
                },
                ObservedLink {
                    mtu: TAP_MAX_MTU,
                    up: true,
                    master: Some(2),
                    txqueuelen: DEFAULT_TAP_TXQUEUELEN,
                    ..link(3, TAP_NAME, LinkKind::Tun(good_tap()))
                },
            ],
            bridge_addresses: Vec::new(),
        }
    }

    fn op_names(ops: &[PlumbingOp]) -> Vec<String> {
        ops.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn empty_host_gets_bridge_then_tap() {
        let observed = Observed {
            links: vec![link(1, "lo", LinkKind::Unspecified)],
            bridge_addresses: Vec::new(),
        };
        let ops = plan(&observed, &desired()).expect("plan");
        assert_eq!(
            op_names(&ops),
            [
                "create bridge weave",
                "set weave mtu 1376",
                "create persistent multi-queue tap vethwe-tap",
                "set vethwe-tap mtu 65521",
                "set vethwe-tap txqueuelen 10000",
                "set vethwe-tap master weave",
                "set vethwe-tap up",
            ]
        );
    }

    #[test]
    fn matching_host_plans_nothing() {
        assert_eq!(plan(&matching_host(), &desired()).expect("plan"), []);
    }

    #[test]
    fn drifted_settings_are_fixed_one_by_one() {
        let mut host = matching_host();
        host.links[1].mtu = 1500;
        host.links[1].kind = LinkKind::Bridge { stp: true };
        host.links[1].up = false;
        host.links[2].txqueuelen = 500;
        host.links[2].master = None;
        let ops = plan(&host, &desired()).expect("plan");
        assert_eq!(
            op_names(&ops),
            [
                "set weave mtu 1376",
                "turn stp off on weave",
                "set weave up",
                "set vethwe-tap txqueuelen 10000",
                "set vethwe-tap master weave",
            ]
        );
    }

    #[test]
    fn pods_on_the_bridge_never_cause_a_change() {
        let mut host = matching_host();
        for (i, name) in ["vethwepl1", "vethwepl2"].into_iter().enumerate() {
            host.links.push(ObservedLink {
                master: Some(2),
                up: true,
                ..link(10 + i as u32, name, LinkKind::Other("veth".to_owned()))
            });
        }
        assert_eq!(plan(&host, &desired()).expect("plan"), []);
    }

    #[test]
    fn tap_on_another_master_is_moved_back() {
        let mut host = matching_host();
        host.links
            .push(link(9, "other-br", LinkKind::Bridge { stp: false }));
        host.links[2].master = Some(9);
        let ops = plan(&host, &desired()).expect("plan");
        assert_eq!(op_names(&ops), ["set vethwe-tap master weave"]);
    }

    #[test]
    fn a_non_persistent_tap_is_adopted_not_recreated() {
        let mut host = matching_host();
        host.links[2].kind = LinkKind::Tun(TunInfo {
            persist: Some(false),
            queues: Some(4),
            ..good_tap()
        });
        let ops = plan(&host, &desired()).expect("plan");
        assert_eq!(op_names(&ops), ["make tap vethwe-tap persistent"]);
    }

    #[test]
    fn wrong_kind_tap_without_ports_is_replaced() {
        for kind in [
            LinkKind::Tun(TunInfo {
                multi_queue: Some(false),
                ..good_tap()
            }),
            LinkKind::Tun(TunInfo {
                tap: Some(false),
                ..good_tap()
            }),
            LinkKind::Other("veth".to_owned()),
        ] {
            let mut host = matching_host();
            host.links[2].kind = kind.clone();
            let ops = plan(&host, &desired()).expect("plan");
            assert_eq!(
                op_names(&ops[..2]),
                [
                    "delete link vethwe-tap",
                    "create persistent multi-queue tap vethwe-tap"
                ],
                "{kind:?}"
            );
            assert_eq!(ops.len(), 6, "{kind:?}");
        }
    }

    #[test]
    fn a_foreign_link_with_ports_is_never_deleted() {
        let mut host = matching_host();
        host.links[1].kind = LinkKind::Other("openvswitch".to_owned());
        host.links.push(ObservedLink {
            master: Some(2),
            ..link(10, "vethwepl1", LinkKind::Other("veth".to_owned()))
        });
        let err = plan(&host, &desired()).expect_err("must refuse");
        assert_eq!(
            err,
            PlanError::WouldDetachPorts {
                name: BRIDGE_NAME.to_owned(),
                kind: "openvswitch".to_owned(),
                wanted: "bridge",
                ports: vec![TAP_NAME.to_owned(), "vethwepl1".to_owned()],
            }
        );
    }

    #[test]
    fn a_foreign_link_without_ports_is_replaced_and_the_tap_reattached() {
        let mut host = matching_host();
        host.links[1].kind = LinkKind::Other("dummy".to_owned());
        host.links[2].master = None;
        let ops = plan(&host, &desired()).expect("plan");
        assert_eq!(
            op_names(&ops),
            [
                "delete link weave",
                "create bridge weave",
                "set weave mtu 1376",
                "set vethwe-tap master weave",
            ]
        );
    }

    #[test]
    fn bridge_address_is_added_once() {
        let addr = IfAddr {
            addr: "10.32.0.1".parse().expect("ip"),
            prefix_len: 12,
        };
        let want = HostPlumbing {
            bridge_address: Some(addr),
            ..desired()
        };
        let mut host = matching_host();
        host.bridge_addresses = vec![IfAddr {
            addr: "192.168.7.1".parse().expect("ip"),
            prefix_len: 24,
        }];
        let ops = plan(&host, &want).expect("plan");
        assert_eq!(op_names(&ops), ["add address 10.32.0.1/12 to weave"]);
        host.bridge_addresses.push(addr);
        assert_eq!(plan(&host, &want).expect("plan"), []);
    }

    #[test]
    fn bad_desired_state_is_refused_before_planning() {
        let host = matching_host();
        let cases = [
            (
                HostPlumbing {
                    mtu: 67,
                    ..desired()
                },
                PlanError::InvalidMtu(67),
            ),
            (
                HostPlumbing {
                    mtu: 65_536,
                    ..desired()
                },
                PlanError::InvalidMtu(65_536),
            ),
            (
                HostPlumbing {
                    tap: "a-name-longer-than-15".to_owned(),
                    ..desired()
                },
                PlanError::InvalidName("a-name-longer-than-15".to_owned()),
            ),
            (
                HostPlumbing {
                    tap: BRIDGE_NAME.to_owned(),
                    ..desired()
                },
                PlanError::SameName(BRIDGE_NAME.to_owned()),
            ),
        ];
        for (want, err) in cases {
            assert_eq!(plan(&host, &want), Err(err));
        }
        let bad_prefix = IfAddr {
            addr: "10.0.0.1".parse().expect("ip"),
            prefix_len: 33,
        };
        assert_eq!(
            plan(
                &host,
                &HostPlumbing {
                    bridge_address: Some(bad_prefix),
                    ..desired()
                }
            ),
            Err(PlanError::InvalidAddress(bad_prefix))
        );
    }

    #[test]
    fn applying_a_plan_to_the_model_reaches_a_fixed_point() {
        // Every starting point, with the plan's effect simulated on the model, must end in
        // a state the planner is happy with: no plan oscillates.
        let starts = [
            Observed::default(),
            {
                let mut h = matching_host();
                h.links[2].kind = LinkKind::Other("veth".to_owned());
                h
            },
            {
                let mut h = matching_host();
                h.links[1].mtu = 9000;
                h.links[2].up = false;
                h
            },
        ];
        for start in starts {
            let mut host = start.clone();
            let ops = plan(&host, &desired()).expect("plan");
            apply_to_model(&mut host, &ops);
            assert_eq!(plan(&host, &desired()).expect("plan"), [], "from {start:?}");
        }
    }

    /// What the executor does, done to the model instead of the kernel.
    fn apply_to_model(host: &mut Observed, ops: &[PlumbingOp]) {
        let mut next_index = host.links.iter().map(|l| l.index).max().unwrap_or(0) + 1;
        for op in ops {
            match op {
                PlumbingOp::DeleteLink { name } => host.links.retain(|l| &l.name != name),
                PlumbingOp::CreateBridge { name } => {
                    host.links.push(ObservedLink {
                        up: true,
                        ..link(next_index, name, LinkKind::Bridge { stp: false })
                    });
                    next_index += 1;
                }
                PlumbingOp::CreateTap { name } => {
                    host.links
                        .push(link(next_index, name, LinkKind::Tun(good_tap())));
                    next_index += 1;
                }
                PlumbingOp::SetTapPersistent { name } => {
                    let l = host
                        .links
                        .iter_mut()
                        .find(|l| &l.name == name)
                        .expect("tap");
                    l.kind = LinkKind::Tun(good_tap());
                }
                PlumbingOp::SetMtu { name, mtu } => {
                    host.links
                        .iter_mut()
                        .find(|l| &l.name == name)
                        .expect("link")
                        .mtu = *mtu;
                }
                PlumbingOp::SetTxQueueLen { name, len } => {
                    host.links
                        .iter_mut()
                        .find(|l| &l.name == name)
                        .expect("link")
                        .txqueuelen = *len;
                }
                PlumbingOp::DisableStp { name } => {
                    host.links
                        .iter_mut()
                        .find(|l| &l.name == name)
                        .expect("link")
                        .kind = LinkKind::Bridge { stp: false };
                }
                PlumbingOp::SetMaster { name, master } => {
                    let index = host.link(master).expect("master").index;
                    host.links
                        .iter_mut()
                        .find(|l| &l.name == name)
                        .expect("link")
                        .master = Some(index);
                }
                PlumbingOp::SetUp { name } => {
                    host.links
                        .iter_mut()
                        .find(|l| &l.name == name)
                        .expect("link")
                        .up = true;
                }
                PlumbingOp::AddAddress { addr, .. } => host.bridge_addresses.push(*addr),
            }
        }
    }

    #[test]
    fn tun_attributes_are_decoded() {
        let attrs = vec![
            InfoTun::Other(DefaultNla::new(3, vec![2])),
            InfoTun::Other(DefaultNla::new(5, vec![1])),
            InfoTun::Other(DefaultNla::new(6, vec![1])),
            InfoTun::Other(DefaultNla::new(7, vec![1])),
            InfoTun::Other(DefaultNla::new(8, 4u32.to_ne_bytes().to_vec())),
        ];
        assert_eq!(
            tun_info(&attrs),
            TunInfo {
                tap: Some(true),
                multi_queue: Some(true),
                persist: Some(true),
                queues: Some(4),
            }
        );
        // A TUN (type 1), single queue, with a short queue count, decodes what it can.
        let attrs = vec![
            InfoTun::Other(DefaultNla::new(3, vec![1])),
            InfoTun::Other(DefaultNla::new(7, vec![0])),
            InfoTun::Other(DefaultNla::new(8, vec![1, 2])),
        ];
        assert_eq!(
            tun_info(&attrs),
            TunInfo {
                tap: Some(false),
                multi_queue: Some(false),
                persist: None,
                queues: None,
            }
        );
    }
}
