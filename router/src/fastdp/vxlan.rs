//! The Linux VXLAN backend: the kernel's own VXLAN driver and the `weave` bridge carry
//! unicast between healthy peers in Weave's fast-datapath format, programmed over
//! rtnetlink. No frame passes through the router.
//!
//! Two devices, both ports of the bridge:
//! - `vxlan-6784` receives: flow-based (`external`), it takes every VNI on UDP 6784, so
//!   each peer's frames (VNI `theirs | ours << 12`) reach the bridge whatever their
//!   source.
//! - `vxlan-6784-tx` sends: one forwarding entry per remote MAC names the peer's address,
//!   port 6784 and the VNI `ours | theirs << 12`. A flow-based device could only send with
//!   per-packet tunnel metadata, which the kernel attaches from a bridge VLAN-to-tunnel
//!   map (needs `CONFIG_BRIDGE_VLAN_FILTERING`, and the map is one VNI per VLAN, not per
//!   destination) or a tc action (`act_tunnel_key` or BPF); a classic device with an entry
//!   per MAC needs neither. It binds UDP [`TX_PORT`] locally, as every VXLAN device binds
//!   its port, and sends nothing from it.
//!
//! On the bridge both ports learn nothing and are never flooded to: the router owns their
//! forwarding entries (static, sticky, so a copy of the same MAC arriving over the sleeve
//! does not move them). Broadcasts, unknown unicast, relayed frames and peers on the
//! sleeve all go through the TAP as before. Both ports and the TAP are isolated from one
//! another, so a frame that came in through one never leaves through another: the kernel
//! never relays, and the router never re-floods what the kernel delivered.
//!
//! What is kernel state is also the record: on restart the router reads the entries back
//! and keeps them while the mesh reconnects ([`ADOPT_GRACE`]), so traffic to healthy peers
//! keeps flowing through a restart.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage, VxlanDf,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridgePort, LinkUnspec, LinkVxlan};

use crate::ids::PeerName;
use crate::mesh::router::FastdpPath;
use crate::switch::Mac;
use crate::wire::fastdp::PORT;

/// The receiving device, named like Weave's VXLAN vport.
pub const RX_DEVICE: &str = "vxlan-6784";
/// The sending device.
pub const TX_DEVICE: &str = "vxlan-6784-tx";
/// The UDP port the sending device binds (it receives nothing there: no peer sends to it).
pub const TX_PORT: u16 = 6785;
/// The sending device's own VNI, used by no entry: `4095 | 4095 << 12`, a peer sending to
/// itself.
const TX_VNI: u32 = 0xff_ffff;
/// Outer TTL, as Weave's flows set it.
const TTL: u8 = 64;
/// How long entries found at start are kept without a healthy peer to claim them.
pub const ADOPT_GRACE: Duration = Duration::from_secs(10);

/// Why the backend could not be set up or programmed.
#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// The request.
        what: String,
        /// What the kernel said.
        #[source]
        source: rtnetlink::Error,
    },
    /// A link the backend needs is missing.
    #[error("link {0} not found")]
    NoLink(String),
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> VxlanError {
    let what = what.into();
    move |source| VxlanError::Netlink { what, source }
}

/// The interface indexes of the two devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Devices {
    /// `vxlan-6784`.
    pub rx: u32,
    /// `vxlan-6784-tx`.
    pub tx: u32,
}

/// One device as the backend wants it.
struct Spec {
    name: &'static str,
    external: bool,
    vni: u32,
    port: u16,
}

const SPECS: [Spec; 2] = [
    Spec {
        name: RX_DEVICE,
        external: true,
        vni: 0,
        port: PORT,
    },
    Spec {
        name: TX_DEVICE,
        external: false,
        vni: TX_VNI,
        port: TX_PORT,
    },
];

/// Creates or repairs both devices on `bridge` with MTU `mtu`, and isolates them and
/// `tap` from one another. A device of ours with other settings is replaced (nothing but
/// the bridge is attached to it); one in good order is kept with its entries.
pub async fn ensure(
    handle: &Handle,
    bridge: &str,
    tap: &str,
    mtu: u32,
) -> Result<Devices, VxlanError> {
    let bridge_index = link(handle, bridge)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| VxlanError::NoLink(bridge.to_string()))?;
    let mut indexes = Vec::new();
    for spec in &SPECS {
        let existing = link(handle, spec.name).await?;
        let keep = existing.as_ref().is_some_and(|l| matches(l, spec));
        if let (Some(l), false) = (&existing, keep) {
            tracing::info!("fastdp: replacing {} (other settings)", spec.name);
            handle
                .link()
                .del(l.header.index)
                .execute()
                .await
                .map_err(netlink(format!("delete {}", spec.name)))?;
        }
        if !keep {
            let message = LinkVxlan::new(spec.name, spec.vni)
                .port(spec.port)
                .learning(false)
                .ttl(TTL)
                .df(VxlanDf::Set)
                .udp_csum(false)
                .collect_metadata(spec.external)
                .mtu(mtu)
                .build();
            handle
                .link()
                .add(message)
                .execute()
                .await
                .map_err(netlink(format!("create vxlan {}", spec.name)))?;
            tracing::info!(
                "fastdp: created {} (UDP {}{})",
                spec.name,
                spec.port,
                if spec.external { ", every VNI" } else { "" }
            );
        }
        let index = link(handle, spec.name)
            .await?
            .map(|l| l.header.index)
            .ok_or_else(|| VxlanError::NoLink(spec.name.to_string()))?;
        let change = LinkUnspec::new_with_index(index)
            .mtu(mtu)
            .controller(bridge_index)
            .build();
        handle
            .link()
            .change(change)
            .execute()
            .await
            .map_err(netlink(format!("attach {} to {bridge}", spec.name)))?;
        isolate(handle, index, spec.name, true).await?;
        handle
            .link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink(format!(
                "set {} up (is UDP {} free?)",
                spec.name, spec.port
            )))?;
        indexes.push(index);
    }
    if let Some(t) = link(handle, tap).await? {
        isolate(handle, t.header.index, tap, false).await?;
    }
    Ok(Devices {
        rx: indexes[0],
        tx: indexes[1],
    })
}

/// Deletes both devices (with their entries) where they exist as VXLAN devices; returns
/// the names deleted.
pub async fn remove(handle: &Handle) -> Result<Vec<String>, VxlanError> {
    let mut removed = Vec::new();
    for spec in &SPECS {
        if let Some(l) = link(handle, spec.name).await? {
            if kind(&l) != Some(InfoKind::Vxlan) {
                tracing::warn!("{} is not a VXLAN device; left alone", spec.name);
                continue;
            }
            handle
                .link()
                .del(l.header.index)
                .execute()
                .await
                .map_err(netlink(format!("delete {}", spec.name)))?;
            removed.push(spec.name.to_string());
        }
    }
    Ok(removed)
}

/// Sets the bridge-port flags of port `index`: isolated always; for a port of the fast
/// datapath (`fastdp_port`) also no learning and no flooding (the router owns its
/// entries). The TAP is only isolated.
pub(crate) async fn isolate(
    handle: &Handle,
    index: u32,
    name: &str,
    fastdp_port: bool,
) -> Result<(), VxlanError> {
    let mut port = LinkBridgePort::new(index).append_info_data(InfoBridgePort::Isolated(true));
    if fastdp_port {
        for info in [
            InfoBridgePort::Learning(false),
            InfoBridgePort::UnicastFlood(false),
            InfoBridgePort::MulticastFlood(false),
            InfoBridgePort::BroadcastFlood(false),
        ] {
            port = port.append_info_data(info);
        }
    }
    handle
        .link()
        .change(port.build())
        .execute()
        .await
        .map_err(netlink(format!("set bridge port flags of {name}")))
}

/// The link called `name`, if there is one.
pub(crate) async fn link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, VxlanError> {
    match handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(found) => Ok(found),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(source) => Err(VxlanError::Netlink {
            what: format!("look up link {name}"),
            source,
        }),
    }
}

fn link_infos(l: &LinkMessage) -> impl Iterator<Item = &LinkInfo> {
    l.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos.iter()),
            _ => None,
        })
        .flatten()
}

fn kind(l: &LinkMessage) -> Option<InfoKind> {
    link_infos(l).find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k.clone()),
        _ => None,
    })
}

/// Whether an existing link is a VXLAN device with `spec`'s mode, VNI and port.
fn matches(l: &LinkMessage, spec: &Spec) -> bool {
    if kind(l) != Some(InfoKind::Vxlan) {
        return false;
    }
    let Some(data) = link_infos(l).find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    }) else {
        return false;
    };
    let external = data.contains(&InfoVxlan::CollectMetadata(true));
    let port = data.contains(&InfoVxlan::Port(spec.port));
    let vni = spec.external || data.contains(&InfoVxlan::Id(spec.vni));
    let learning = data.contains(&InfoVxlan::Learning(false));
    external == spec.external && port && vni && learning
}

/// Where frames for one remote MAC go: the peer's address and the VNI naming us then it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Remote {
    /// The peer's underlay address.
    pub ip: Ipv4Addr,
    /// The VNI.
    pub vni: u32,
}

/// An entry of the sending device as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// Where it sends.
    pub remote: Remote,
    /// How long since the kernel last sent through it.
    pub idle: Duration,
}

/// The entries of bridge port `tx` (a sending device's own entries with their remotes),
/// and the MACs the bridge sends to the port without such an entry.
pub async fn dump(
    handle: &Handle,
    tx: u32,
) -> Result<(HashMap<Mac, Installed>, Vec<Mac>), VxlanError> {
    let mut request = handle.neighbours().get();
    request = request.set_address_family(AddressFamily::Bridge);
    let messages: Vec<NeighbourMessage> = request
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list forwarding entries"))?;
    let mut own = HashMap::new();
    let mut bridge = Vec::new();
    for m in messages.iter().filter(|m| m.header.ifindex == tx) {
        let Some(mac) = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(b) => b.as_slice().try_into().ok().map(Mac),
            _ => None,
        }) else {
            continue;
        };
        if m.header.flags.contains(NeighbourFlags::Controller) {
            if !m.header.state.eq(&NeighbourState::Permanent) {
                bridge.push(mac);
            }
            continue;
        }
        let ip = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let vni = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Vni(v) => Some(*v),
            _ => None,
        });
        let used = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::CacheInfo(c) => Some(c.used),
            _ => None,
        });
        if let (Some(ip), Some(vni)) = (ip, vni) {
            // The kernel reports ages in USER_HZ ticks (100 a second).
            let idle = Duration::from_millis(u64::from(used.unwrap_or(0)) * 10);
            own.insert(
                mac,
                Installed {
                    remote: Remote { ip, vni },
                    idle,
                },
            );
        }
    }
    let orphans = bridge
        .into_iter()
        .filter(|m| !own.contains_key(m))
        .collect();
    Ok((own, orphans))
}

/// Sends frames for `mac` to `remote`: the bridge entry (static, sticky) towards the
/// sending device and the device's own entry.
pub async fn install(handle: &Handle, tx: u32, mac: Mac, remote: Remote) -> Result<(), VxlanError> {
    let mut own = handle
        .neighbours()
        .add_bridge(tx, &mac.0)
        .flags(NeighbourFlags::Own)
        .state(NeighbourState::Permanent)
        .replace();
    let attrs = &mut own.message_mut().attributes;
    attrs.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
        remote.ip,
    )));
    attrs.push(NeighbourAttribute::Port(PORT));
    attrs.push(NeighbourAttribute::Vni(remote.vni));
    own.execute()
        .await
        .map_err(netlink(format!("add vxlan entry {mac} -> {}", remote.ip)))?;
    install_bridge(handle, tx, mac).await
}

/// Makes the bridge send frames for `mac` to its port `port`: a static entry, sticky so
/// that a copy of the MAC arriving through another port does not move it.
pub async fn install_bridge(handle: &Handle, port: u32, mac: Mac) -> Result<(), VxlanError> {
    handle
        .neighbours()
        .add_bridge(port, &mac.0)
        .flags(NeighbourFlags::Controller | NeighbourFlags::Sticky)
        .state(NeighbourState::Noarp)
        .replace()
        .execute()
        .await
        .map_err(netlink(format!("add bridge entry {mac} -> port {port}")))
}

/// Removes the bridge's entry of `mac` on `port` and, with `own`, the port's own entry
/// (a VXLAN device's); missing ones are fine.
pub async fn uninstall(handle: &Handle, port: u32, mac: Mac, own: bool) -> Result<(), VxlanError> {
    let flags: &[NeighbourFlags] = if own {
        &[NeighbourFlags::Controller, NeighbourFlags::Own]
    } else {
        &[NeighbourFlags::Controller]
    };
    for flags in flags {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = port;
        message.header.flags = *flags;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        match handle.neighbours().del(message).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| c.get()) == Some(-libc::ENOENT) => {}
            Err(source) => {
                return Err(VxlanError::Netlink {
                    what: format!("delete entry {mac}"),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// The entries the kernel should hold: every remote MAC whose peer the fast datapath
/// carries, towards that peer.
pub fn desired(
    macs: &HashMap<Mac, PeerName>,
    peers: &BTreeMap<PeerName, FastdpPath>,
) -> HashMap<Mac, Remote> {
    macs.iter()
        .filter_map(|(mac, peer)| {
            let path = peers.get(peer)?;
            Some((
                *mac,
                Remote {
                    ip: *path.addr.ip(),
                    vni: path.vni,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    #[test]
    fn only_macs_of_fastdp_peers_are_programmed() {
        let (a, b) = (name(1), name(2));
        let macs: HashMap<Mac, PeerName> = [
            (Mac([2, 0, 0, 0, 0, 1]), a),
            (Mac([2, 0, 0, 0, 0, 2]), b),
            (Mac([2, 0, 0, 0, 0, 3]), a),
        ]
        .into();
        let peers: BTreeMap<PeerName, FastdpPath> = [(
            a,
            FastdpPath {
                addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), PORT),
                vni: 77,
            },
        )]
        .into();
        let d = desired(&macs, &peers);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[&Mac([2, 0, 0, 0, 0, 3])],
            Remote {
                ip: Ipv4Addr::new(10, 0, 0, 1),
                vni: 77
            }
        );
        assert!(
            !d.contains_key(&Mac([2, 0, 0, 0, 0, 2])),
            "b is on the sleeve"
        );
    }
}
