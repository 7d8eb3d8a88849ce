//! The Open vSwitch backend, used when the kernel has the `openvswitch` module: Weave Net's
//! own fast datapath, so a Weave Net 2.8 node and a weave-router node carry traffic between
//! them in the kernel.
//!
//! The datapath `datapath` has its internal port, the port to the bridge
//! (`vethwe-datapath`, whose other end `vethwe-bridge` is a port of `weave`) and the VXLAN
//! vport `vxlan-6784` (UDP 6784), as Weave Net's has. Flows are made on demand, from the
//! frames that miss them (upcalls to this router's netlink socket):
//! - from the bridge, for a MAC whose peer the fast datapath carries: set the tunnel (VNI
//!   `ours | theirs << 12`, the peer's address, TTL 64, DF) and send to the VXLAN vport;
//! - from the VXLAN vport, for us: to the bridge, learning the source MAC at the peer the
//!   VNI names; for another peer (a Weave Net peer relaying through us): on through the
//!   tunnel to the next hop when the fast datapath carries that hop;
//! - a heartbeat (zero addresses) goes to the mesh, and no flow is made for it;
//! - anything else is dropped: the bridge sends this way only what the router told it to.
//!
//! Flows are flushed whenever the forwarding changes (a peer moves, a MAC moves) and
//! expire when idle, as in Weave Net. The bridge side is the same as the Linux VXLAN
//! backend's: static entries for fastdp MACs towards `vethwe-bridge`, which learns nothing
//! and is isolated from the TAP.

pub mod genl;
pub mod msg;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use rtnetlink::{Handle, LinkUnspec, LinkVeth};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use self::genl::{Genl, GenlError};
use self::msg::{Action, FlowMatch, Miss, VportType};
use crate::dataplane::learn::{LearnBus, Learning};
use crate::fastdp::vxlan::{Remote, VxlanError};
use crate::fastdp::View;
use crate::switch::Mac;
use crate::wire::fastdp::{self as wire, PORT};

/// The datapath's name, as Weave Net names it.
pub const DATAPATH: &str = "datapath";
/// The bridge's end of the veth pair to the datapath.
pub const BRIDGE_VETH: &str = "vethwe-bridge";
/// The datapath's end.
pub const DATAPATH_VETH: &str = "vethwe-datapath";
/// The VXLAN vport.
pub const VXLAN_VPORT: &str = "vxlan-6784";

/// Why the backend could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    /// The kernel has no Open vSwitch datapath.
    #[error("no Open vSwitch datapath in this kernel ({0})")]
    Unavailable(String),
    /// A generic netlink request failed.
    #[error(transparent)]
    Genl(#[from] GenlError),
    /// A link could not be looked up.
    #[error(transparent)]
    Lookup(#[from] VxlanError),
    /// An rtnetlink request failed.
    #[error("{what}: {source}")]
    Link {
        /// The request.
        what: String,
        /// What the kernel said.
        #[source]
        source: rtnetlink::Error,
    },
}

/// The resolved ids of the four families.
#[derive(Debug, Clone, Copy)]
pub struct Families {
    /// `ovs_datapath`.
    pub datapath: u16,
    /// `ovs_vport`.
    pub vport: u16,
    /// `ovs_flow`.
    pub flow: u16,
    /// `ovs_packet`.
    pub packet: u16,
}

/// Resolves the families; when they are missing and `load` says so, loads the module once
/// and tries again.
pub fn families(genl: &mut Genl, load: bool) -> Result<Families, OvsError> {
    let resolve = |g: &mut Genl| -> Result<Families, GenlError> {
        Ok(Families {
            datapath: g.family(msg::DATAPATH_FAMILY)?,
            vport: g.family(msg::VPORT_FAMILY)?,
            flow: g.family(msg::FLOW_FAMILY)?,
            packet: g.family(msg::PACKET_FAMILY)?,
        })
    };
    match resolve(genl) {
        Ok(f) => Ok(f),
        Err(first) if !load => Err(OvsError::Unavailable(first.to_string())),
        Err(first) => {
            // As Weave Net's launch does; a host without the module (or without modprobe)
            // simply has no Open vSwitch.
            let _ = std::process::Command::new("modprobe")
                .arg("openvswitch")
                .stderr(std::process::Stdio::null())
                .status();
            resolve(genl).map_err(|_| OvsError::Unavailable(first.to_string()))
        }
    }
}

/// The datapath once set up: what the miss handler and the programming need.
pub struct Datapath {
    genl: Mutex<Genl>,
    fam: Families,
    dp: i32,
    /// The vport of `vethwe-datapath`.
    pub bridge_port: u32,
    /// The VXLAN vport.
    pub vxlan_port: u32,
    /// The interface index of `vethwe-bridge`, where the bridge's entries point.
    pub bridge_veth: u32,
    /// The netlink port our misses go to.
    upcall_pid: u32,
}

impl Datapath {
    fn request(&self, req: &msg::Request, what: &str) -> Result<Vec<Vec<u8>>, GenlError> {
        let mut g = self.genl.lock().unwrap_or_else(|e| e.into_inner());
        g.request(req, what)
    }

    /// Deletes every flow: the next frames miss and are decided again.
    pub fn flush(&self) {
        if let Err(e) = self.request(&msg::flow_flush(self.fam.flow, self.dp), "flush flows") {
            warn!("ovs: {e}");
        }
    }

    /// Deletes flows no packet used since the last call, and clears the others' use.
    pub fn expire(&self) -> usize {
        let flows = match self.request(&msg::flow_dump(self.fam.flow, self.dp), "dump flows") {
            Ok(f) => f,
            Err(e) => {
                warn!("ovs: {e}");
                return 0;
            }
        };
        let mut expired = 0;
        for payload in flows {
            let Ok((_, attrs)) = msg::ovs_payload(&payload) else {
                continue;
            };
            let Ok(flow) = msg::parse_flow(&attrs) else {
                continue;
            };
            let req = if flow.used {
                msg::flow_clear(self.fam.flow, self.dp, &flow.key)
            } else {
                expired += 1;
                msg::flow_del(self.fam.flow, self.dp, &flow.key)
            };
            if let Err(e) = self.request(&req, "expire a flow") {
                // A flow flushed meanwhile is gone already.
                if e.errno() != Some(libc::ENOENT) {
                    warn!("ovs: {e}");
                }
            }
        }
        expired
    }

    /// Points our vports' misses back at us where another Open vSwitch client (such as
    /// `ovs-dpctl`, which resets them when it opens the datapath) sent them elsewhere;
    /// returns how many it repaired.
    pub fn reclaim_upcalls(&self) -> usize {
        let mut repaired = 0;
        // Open vSwitch 2.16 and later switch a datapath they open to misses per CPU, sent
        // to their own sockets: switch it back.
        let features = self
            .request(
                &msg::datapath_get(self.fam.datapath, DATAPATH),
                "find the datapath",
            )
            .ok()
            .and_then(|r| {
                let p = r.first()?;
                msg::datapath_features(&msg::ovs_payload(p).ok()?.1)
            });
        if features.is_some_and(|f| f != msg::USER_FEATURES) {
            warn!(
                "ovs: datapath {DATAPATH} had user features {features:#x?} (another Open vSwitch client?); setting them back"
            );
            let req = msg::datapath_set_features(self.fam.datapath, DATAPATH);
            match self.request(&req, "set the datapath's features") {
                Ok(_) => repaired += 1,
                Err(e) => warn!("ovs: {e}"),
            }
        }
        let vports = match self.request(&msg::vport_dump(self.fam.vport, self.dp), "list vports") {
            Ok(v) => v,
            Err(e) => {
                warn!("ovs: {e}");
                return repaired;
            }
        };
        for p in vports {
            let Some(v) = msg::ovs_payload(&p)
                .ok()
                .and_then(|(_, a)| msg::parse_vport(&a).ok())
            else {
                continue;
            };
            if ![self.bridge_port, self.vxlan_port].contains(&v.port_no)
                || v.upcall_pids == [self.upcall_pid]
            {
                continue;
            }
            warn!(
                "ovs: misses of vport {} went to netlink port(s) {:?}, not ours; taking them back",
                v.name, v.upcall_pids
            );
            let req = msg::vport_set_upcall(self.fam.vport, self.dp, v.port_no, self.upcall_pid);
            match self.request(&req, "point a vport's misses here") {
                Ok(_) => repaired += 1,
                Err(e) => warn!("ovs: {e}"),
            }
        }
        repaired
    }

    fn execute(&self, miss: &Miss, actions: &[Action]) {
        let req = msg::packet_execute(self.fam.packet, self.dp, &miss.packet, &miss.key, actions);
        if let Err(e) = self.request(&req, "execute a missed frame") {
            debug!("ovs: {e}");
        }
    }

    fn install(&self, m: &FlowMatch, actions: &[Action]) {
        let req = msg::flow_new(self.fam.flow, self.dp, m, actions);
        if let Err(e) = self.request(&req, "install a flow") {
            // Two misses of one flow race; the second finds it made.
            if e.errno() != Some(libc::EEXIST) {
                warn!("ovs: {e}");
            }
        }
    }
}

/// Creates or repairs the datapath, its vports and the veth pair to `bridge` (MTU
/// `mtu`), sends the misses to `upcalls`, and isolates `vethwe-bridge` and `tap` from one
/// another. Flows left from before are flushed.
pub async fn ensure(
    handle: &Handle,
    bridge: &str,
    tap: &str,
    mtu: u32,
    upcalls: &Genl,
) -> Result<Datapath, OvsError> {
    let mut genl = Genl::open().map_err(GenlError::from)?;
    let fam = families(&mut genl, true)?;
    let pid = upcalls.pid();
    // A Linux VXLAN backend from an earlier start holds UDP 6784 and the vport's name.
    crate::fastdp::vxlan::remove(handle)
        .await
        .map_err(|e| OvsError::Unavailable(e.to_string()))?;
    let dp = match genl.request(
        &msg::datapath_get(fam.datapath, DATAPATH),
        "find the datapath",
    ) {
        Ok(r) => ifindex_of(&r)?,
        Err(e) if e.errno() == Some(libc::ENODEV) || e.errno() == Some(libc::ENOENT) => {
            let r = genl.request(
                &msg::datapath_new(fam.datapath, DATAPATH, pid),
                "create the datapath",
            )?;
            info!("ovs: created datapath {DATAPATH}");
            ifindex_of(&r)?
        }
        Err(e) => return Err(e.into()),
    };
    let bridge_veth = ensure_veth(handle, bridge, tap, mtu).await?;
    let vports: Vec<msg::Vport> = genl
        .request(&msg::vport_dump(fam.vport, dp), "list vports")?
        .iter()
        .filter_map(|p| msg::parse_vport(&msg::ovs_payload(p).ok()?.1).ok())
        .collect();
    let mut port = |name: &str, ty: VportType, dst_port: Option<u16>| -> Result<u32, OvsError> {
        if let Some(v) = vports.iter().find(|v| v.name == name) {
            if v.ty == ty {
                genl.request(
                    &msg::vport_set_upcall(fam.vport, dp, v.port_no, pid),
                    &format!("point {name}'s misses here"),
                )?;
                return Ok(v.port_no);
            }
            genl.request(
                &msg::vport_del(fam.vport, dp, v.port_no),
                &format!("remove {name}"),
            )?;
        }
        let r = genl.request(
            &msg::vport_new(fam.vport, dp, name, ty, pid, dst_port),
            &format!("add vport {name}"),
        )?;
        let v = r
            .first()
            .and_then(|p| msg::parse_vport(&msg::ovs_payload(p).ok()?.1).ok())
            .ok_or_else(|| {
                OvsError::Unavailable(format!("the kernel did not describe vport {name}"))
            })?;
        info!("ovs: added vport {name} ({:?}) as port {}", ty, v.port_no);
        Ok(v.port_no)
    };
    let bridge_port = port(DATAPATH_VETH, VportType::Netdev, None)?;
    let vxlan_port = port(VXLAN_VPORT, VportType::Vxlan, Some(PORT))?;
    genl.request(&msg::flow_flush(fam.flow, dp), "flush flows")?;
    Ok(Datapath {
        genl: Mutex::new(genl),
        fam,
        dp,
        bridge_port,
        vxlan_port,
        bridge_veth,
        upcall_pid: pid,
    })
}

fn ifindex_of(replies: &[Vec<u8>]) -> Result<i32, OvsError> {
    replies
        .first()
        .and_then(|p| msg::ovs_payload(p).ok())
        .map(|(ifindex, _)| ifindex)
        .ok_or_else(|| OvsError::Unavailable("the kernel did not describe the datapath".into()))
}

/// Deletes the datapath (with its vports and flows) and the veth pair, where they exist;
/// returns what it removed. Without the module loaded there is nothing to remove, and it
/// is not loaded for this.
pub async fn remove(handle: &Handle) -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(mut genl) = Genl::open() {
        if let Ok(fam) = families(&mut genl, false) {
            if genl
                .request(
                    &msg::datapath_del(fam.datapath, DATAPATH),
                    "delete the datapath",
                )
                .is_ok()
            {
                removed.push(DATAPATH.to_string());
            }
        }
    }
    if let Ok(Some(index)) = link_index(handle, BRIDGE_VETH).await {
        if handle.link().del(index).execute().await.is_ok() {
            removed.push(BRIDGE_VETH.to_string());
        }
    }
    removed
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, VxlanError> {
    Ok(crate::fastdp::vxlan::link(handle, name)
        .await?
        .map(|l| l.header.index))
}

/// Makes the veth pair between `bridge` and the datapath; returns `vethwe-bridge`'s index.
async fn ensure_veth(handle: &Handle, bridge: &str, tap: &str, mtu: u32) -> Result<u32, OvsError> {
    let link = |what: String| move |source| OvsError::Link { what, source };
    if link_index(handle, BRIDGE_VETH).await?.is_none() {
        handle
            .link()
            .add(LinkVeth::new(BRIDGE_VETH, DATAPATH_VETH).build())
            .execute()
            .await
            .map_err(link(format!("create veth {BRIDGE_VETH}/{DATAPATH_VETH}")))?;
    }
    let bridge_index = link_index(handle, bridge)
        .await?
        .ok_or_else(|| OvsError::Unavailable(format!("no bridge {bridge}")))?;
    let mut ends = Vec::new();
    for name in [BRIDGE_VETH, DATAPATH_VETH] {
        let index = link_index(handle, name)
            .await?
            .ok_or_else(|| OvsError::Unavailable(format!("{name} vanished")))?;
        let mut change = LinkUnspec::new_with_index(index).mtu(mtu).up();
        if name == BRIDGE_VETH {
            change = change.controller(bridge_index);
        }
        handle
            .link()
            .change(change.build())
            .execute()
            .await
            .map_err(link(format!("set up {name}")))?;
        ends.push(index);
    }
    crate::fastdp::vxlan::isolate(handle, ends[0], BRIDGE_VETH, true).await?;
    if let Some(t) = link_index(handle, tap).await? {
        crate::fastdp::vxlan::isolate(handle, t, tap, false).await?;
    }
    Ok(ends[0])
}

/// What the miss handler forwards by: the mesh's view and the MACs the fast datapath
/// carries, published by the programming task.
#[derive(Debug, Default)]
pub struct Forwarding {
    /// The mesh's view.
    pub view: View,
    /// Remote MAC → where its frames go.
    pub macs: HashMap<Mac, Remote>,
}

/// The decision for one missed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A heartbeat: hand the frame to the mesh.
    Heartbeat,
    /// Install a flow with these actions and send the frame through them; `learn` is the
    /// source MAC's peer when the frame came from the tunnel.
    Forward {
        /// The actions.
        actions: Vec<Action>,
        /// Learn the source MAC at this peer.
        learn: Option<crate::ids::PeerName>,
    },
    /// Drop it, for this reason.
    Drop(&'static str),
}

/// Decides what to do with a missed frame (pure).
pub fn decide(miss: &Miss, bridge_port: u32, vxlan_port: u32, fwd: &Forwarding) -> Verdict {
    let zero = [0u8; 6];
    if miss.in_port == vxlan_port {
        if miss.eth_src == zero && miss.eth_dst == zero {
            return Verdict::Heartbeat;
        }
        let Some((tunnel, _)) = &miss.tunnel else {
            return Verdict::Drop("no tunnel key");
        };
        let (src, dst) = wire::peers_of(tunnel.vni);
        let Some(&sender) = fwd.view.shorts.get(&src) else {
            return Verdict::Drop("unknown sender");
        };
        if dst == fwd.view.our_short {
            return Verdict::Forward {
                actions: vec![Action::Output(bridge_port)],
                learn: Some(sender),
            };
        }
        // Relayed through us (Weave Net routes over fast-datapath hops): on to the next
        // hop when the kernel can take it there.
        let Some(final_dst) = fwd.view.shorts.get(&dst) else {
            return Verdict::Drop("unknown destination");
        };
        let Some(hop) = fwd.view.unicast.get(final_dst) else {
            return Verdict::Drop("no route");
        };
        let Some(path) = fwd.view.peers.get(hop) else {
            return Verdict::Drop("next hop not on the fast datapath");
        };
        return Verdict::Forward {
            actions: vec![
                Action::SetTunnel {
                    vni: tunnel.vni,
                    dst: *path.addr.ip(),
                },
                Action::Output(vxlan_port),
            ],
            learn: None,
        };
    }
    if miss.in_port == bridge_port {
        return match fwd.macs.get(&Mac(miss.eth_dst)) {
            Some(r) => Verdict::Forward {
                actions: vec![
                    Action::SetTunnel {
                        vni: r.vni,
                        dst: r.ip,
                    },
                    Action::Output(vxlan_port),
                ],
                learn: None,
            },
            None => Verdict::Drop("destination not on the fast datapath"),
        };
    }
    Verdict::Drop("from another port")
}

/// Reads misses off `upcalls` until the socket fails: heartbeats go to `frames`, source
/// MACs learned from the tunnel to the workers and the programming (`learn`), and every
/// other frame is forwarded by a new flow or dropped.
pub fn handle_misses(
    upcalls: Genl,
    dp: Arc<Datapath>,
    fwd: Arc<RwLock<Forwarding>>,
    frames: mpsc::Sender<Vec<u8>>,
    learn: Arc<LearnBus>,
) {
    loop {
        let misses = match upcalls.recv_misses() {
            Ok(m) => m,
            Err(GenlError::Io(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // A burst overran the socket; the frames are lost, the flows come next time.
                continue;
            }
            Err(e) => {
                warn!("ovs: reading misses: {e}");
                return;
            }
        };
        for payload in misses {
            let Ok((_, attrs)) = msg::ovs_payload(&payload) else {
                continue;
            };
            let miss = match msg::parse_miss(&attrs) {
                Ok(m) => m,
                Err(e) => {
                    debug!("ovs: unreadable miss: {e}");
                    continue;
                }
            };
            let verdict = {
                let f = fwd.read().unwrap_or_else(|e| e.into_inner());
                decide(&miss, dp.bridge_port, dp.vxlan_port, &f)
            };
            tracing::trace!(
                "ovs: miss on port {} {} -> {}: {verdict:?}",
                miss.in_port,
                Mac(miss.eth_src),
                Mac(miss.eth_dst)
            );
            match verdict {
                Verdict::Heartbeat => {
                    let _ = frames.try_send(miss.packet);
                }
                Verdict::Drop(why) => debug!("ovs: dropped a missed frame: {why}"),
                Verdict::Forward { actions, learn: by } => {
                    let m = FlowMatch {
                        in_port: miss.in_port,
                        eth_src: miss.eth_src,
                        eth_dst: miss.eth_dst,
                        tunnel: miss.tunnel.as_ref().map(|(_, raw)| raw.clone()),
                    };
                    dp.install(&m, &actions);
                    dp.execute(&miss, &actions);
                    if let Some(peer) = by {
                        if miss.eth_src[0] & 1 == 0 {
                            learn.post(
                                usize::MAX,
                                &[Learning {
                                    mac: Mac(miss.eth_src),
                                    peer,
                                    seen: std::time::Instant::now(),
                                }],
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PeerName, ShortId};
    use crate::mesh::FastdpPath;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n).unwrap()
    }

    fn forwarding() -> Forwarding {
        let mut f = Forwarding::default();
        f.view.our_short = ShortId(1);
        f.view.shorts = [
            (ShortId(1), name(1)),
            (ShortId(2), name(2)),
            (ShortId(3), name(3)),
        ]
        .into();
        f.view.peers = [(
            name(2),
            FastdpPath {
                addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), PORT),
                vni: wire::vni(ShortId(1), ShortId(2)),
            },
        )]
        .into();
        f.view.unicast = [(name(2), name(2)), (name(3), name(2))].into();
        f.macs.insert(
            Mac([2, 0, 0, 0, 0, 2]),
            Remote {
                ip: Ipv4Addr::new(10, 0, 0, 2),
                vni: wire::vni(ShortId(1), ShortId(2)),
            },
        );
        f
    }

    fn miss(in_port: u32, src: [u8; 6], dst: [u8; 6], vni: Option<u32>) -> Miss {
        Miss {
            in_port,
            eth_src: src,
            eth_dst: dst,
            tunnel: vni.map(|v| {
                (
                    msg::Tunnel {
                        vni: v,
                        src: Ipv4Addr::new(10, 0, 0, 2),
                        dst: Ipv4Addr::new(10, 0, 0, 1),
                    },
                    Vec::new(),
                )
            }),
            key: Vec::new(),
            packet: Vec::new(),
        }
    }

    #[test]
    fn misses_are_decided_as_weaves_fast_datapath_does() {
        let f = forwarding();
        let (bridge, vxlan) = (1, 2);
        let mac2 = [2, 0, 0, 0, 0, 2];
        let mac9 = [2, 0, 0, 0, 0, 9];
        // From the bridge to a fastdp MAC: through the tunnel with our VNI towards it.
        assert_eq!(
            decide(&miss(bridge, mac9, mac2, None), bridge, vxlan, &f),
            Verdict::Forward {
                actions: vec![
                    Action::SetTunnel {
                        vni: 1 | 2 << 12,
                        dst: Ipv4Addr::new(10, 0, 0, 2)
                    },
                    Action::Output(vxlan)
                ],
                learn: None
            }
        );
        assert!(matches!(
            decide(&miss(bridge, mac2, mac9, None), bridge, vxlan, &f),
            Verdict::Drop(_)
        ));
        // From peer 2 to us: to the bridge, learning its MAC at peer 2.
        assert_eq!(
            decide(
                &miss(vxlan, mac2, mac9, Some(2 | 1 << 12)),
                bridge,
                vxlan,
                &f
            ),
            Verdict::Forward {
                actions: vec![Action::Output(bridge)],
                learn: Some(name(2))
            }
        );
        // A heartbeat.
        assert_eq!(
            decide(
                &miss(vxlan, [0; 6], [0; 6], Some(2 | 1 << 12)),
                bridge,
                vxlan,
                &f
            ),
            Verdict::Heartbeat
        );
        // Peer 3 relays through us to peer 3's... destination 2, reached through 2 by the
        // kernel, keeping the VNI.
        assert_eq!(
            decide(
                &miss(vxlan, mac9, mac2, Some(3 | 2 << 12)),
                bridge,
                vxlan,
                &f
            ),
            Verdict::Forward {
                actions: vec![
                    Action::SetTunnel {
                        vni: 3 | 2 << 12,
                        dst: Ipv4Addr::new(10, 0, 0, 2)
                    },
                    Action::Output(vxlan)
                ],
                learn: None
            }
        );
        // To peer 3 (reached through 2) from 2: 3 is not a fastdp hop of ours... its route
        // goes through 2, which the fast datapath carries.
        assert!(matches!(
            decide(
                &miss(vxlan, mac2, mac9, Some(2 | 3 << 12)),
                bridge,
                vxlan,
                &f
            ),
            Verdict::Forward { .. }
        ));
        // An unknown sender is dropped.
        assert!(matches!(
            decide(
                &miss(vxlan, mac2, mac9, Some(7 | 1 << 12)),
                bridge,
                vxlan,
                &f
            ),
            Verdict::Drop("unknown sender")
        ));
    }
}
