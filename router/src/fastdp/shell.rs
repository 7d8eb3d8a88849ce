//! The fast datapath's I/O around the mesh: sets up a backend (Open vSwitch when the kernel
//! has it, else the Linux VXLAN device), hears heartbeats (from the VXLAN device's packet
//! socket, or as Open vSwitch misses), sends ours, and keeps the kernel's forwarding in
//! step with the healthy peers and the MACs the sleeve learned.
//!
//! The programming runs in its own task: the owner of the mesh publishes the peers the
//! fast datapath carries (a `watch`), the workers post what MACs they learned (the
//! [`LearnBus`] mailbox after theirs), and the task
//! turns both into entries, changing only what differs. It also keeps a MAC the kernel
//! still sends to alive after the sleeve stopped seeing it (its traffic no longer passes
//! the router), by the entry's last use, and forgets it ten minutes after that.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use std::sync::{Arc, RwLock};

use crate::dataplane::learn::{LearnBus, Post};
use crate::fastdp::ovs::{self, Datapath, Forwarding, OvsError};
use crate::fastdp::vxlan::{self, Installed, Remote, VxlanError, ADOPT_GRACE};
use crate::fastdp::View;
use crate::ids::PeerName;
use crate::switch::{Mac, MAC_MAX_AGE};
use crate::sys::packet::ZeroHeaderSocket;
use crate::sys::socket::{open_udp, PmtuDiscovery, UdpOptions};

/// How often learned MACs are taken from the workers' mail.
const LEARN_POLL: Duration = Duration::from_millis(200);
/// How often Open vSwitch vports are checked to still send their misses here.
const UPCALL_CHECK: Duration = Duration::from_secs(1);
/// How often the entries' last use is read back.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Heartbeat frames queued from the listener to the mesh's owner.
pub const FRAME_QUEUE: usize = 256;

/// Why the fast datapath could not start.
#[derive(Debug, thiserror::Error)]
pub enum FastdpError {
    /// Setting up the devices failed.
    #[error(transparent)]
    Vxlan(#[from] VxlanError),
    /// Setting up the Open vSwitch datapath failed.
    #[error(transparent)]
    Ovs(#[from] OvsError),
    /// A socket could not be opened.
    #[error(transparent)]
    Sys(#[from] crate::sys::SysError),
    /// The runtime refused the socket.
    #[error("registering the heartbeat socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The host the fast datapath runs on.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    /// The bridge pods attach to.
    pub bridge: &'a str,
    /// The sleeve's TAP on it.
    pub tap: &'a str,
    /// The pods' MTU, which the datapath carries.
    pub mtu: u32,
    /// Our peer name.
    pub ourself: PeerName,
}

/// Where the programming task puts forwarding.
#[derive(Clone)]
enum Backend {
    /// The Linux VXLAN devices: entries on the sending device and the bridge.
    Vxlan {
        /// The sending device's index.
        tx: u32,
    },
    /// Open vSwitch: bridge entries towards the datapath; flows on misses.
    Ovs {
        /// The datapath.
        dp: Arc<Datapath>,
        /// What the miss handler forwards by.
        fwd: Arc<RwLock<Forwarding>>,
    },
}

impl Backend {
    /// The bridge port the fast datapath's MACs point to.
    fn port(&self) -> u32 {
        match self {
            Backend::Vxlan { tx } => *tx,
            Backend::Ovs { dp, .. } => dp.bridge_veth,
        }
    }

    async fn install(
        &self,
        handle: &rtnetlink::Handle,
        mac: Mac,
        remote: Remote,
    ) -> Result<(), VxlanError> {
        match self {
            Backend::Vxlan { tx } => vxlan::install(handle, *tx, mac, remote).await,
            Backend::Ovs { dp, .. } => vxlan::install_bridge(handle, dp.bridge_veth, mac).await,
        }
    }

    async fn uninstall(&self, handle: &rtnetlink::Handle, mac: Mac) -> Result<(), VxlanError> {
        let own = matches!(self, Backend::Vxlan { .. });
        vxlan::uninstall(handle, self.port(), mac, own).await
    }
}

/// The running fast datapath.
pub struct FastdpShell {
    view: watch::Sender<View>,
    socket: UdpSocket,
    tasks: Vec<JoinHandle<()>>,
    backend: &'static str,
}

impl FastdpShell {
    /// Sets up a backend on `host`'s bridge, Open vSwitch when the kernel has it, and
    /// starts hearing heartbeats (sent to `frames`) and programming the kernel from
    /// `learned` mail. Open vSwitch also posts the MACs it learns to `bus`.
    pub async fn start(
        handle: rtnetlink::Handle,
        host: Host<'_>,
        learned: std_mpsc::Receiver<Post>,
        bus: Arc<LearnBus>,
        frames: mpsc::Sender<Vec<u8>>,
    ) -> Result<Self, FastdpError> {
        let Host {
            bridge,
            tap,
            mtu,
            ourself,
        } = host;
        let socket = open_udp(&UdpOptions {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            reuse_port: false,
            gro: false,
            pmtu: Some(PmtuDiscovery::Do),
            recv_buffer: None,
            send_buffer: None,
            nonblocking: true,
        })?;
        let (view, view_rx) = watch::channel(View::default());
        let mut tasks = Vec::new();
        let (backend, name) = match start_ovs(&handle, bridge, tap, mtu).await {
            Ok((dp, upcalls)) => {
                let dp = Arc::new(dp);
                let fwd = Arc::new(RwLock::new(Forwarding::default()));
                let (d, f) = (Arc::clone(&dp), Arc::clone(&fwd));
                std::thread::Builder::new()
                    .name("ovs-misses".into())
                    .spawn(move || ovs::handle_misses(upcalls, d, f, frames, bus))
                    .map_err(FastdpError::Io)?;
                info!(
                    "Fast datapath: Open vSwitch datapath {} with {} and {} on UDP {}, MTU {mtu}",
                    ovs::DATAPATH,
                    ovs::DATAPATH_VETH,
                    ovs::VXLAN_VPORT,
                    crate::wire::fastdp::PORT
                );
                (Backend::Ovs { dp, fwd }, "ovs")
            }
            Err(e) => {
                match &e {
                    OvsError::Unavailable(why) => {
                        info!("Open vSwitch datapath not available ({why}); using Linux VXLAN devices")
                    }
                    other => warn!(
                        "Open vSwitch datapath could not be set up ({other}); using Linux VXLAN devices"
                    ),
                }
                let devices = vxlan::ensure(&handle, bridge, tap, mtu).await?;
                let listener = ZeroHeaderSocket::open(devices.rx, vxlan::RX_DEVICE)?;
                tasks.push(tokio::spawn(listen(listener.into_async()?, frames)));
                info!(
                    "Fast datapath: {} receives and {} sends on UDP {}, MTU {mtu}",
                    vxlan::RX_DEVICE,
                    vxlan::TX_DEVICE,
                    crate::wire::fastdp::PORT
                );
                (Backend::Vxlan { tx: devices.tx }, "vxlan")
            }
        };
        tasks.push(tokio::spawn(program(
            handle, backend, ourself, view_rx, learned,
        )));
        Ok(FastdpShell {
            view,
            socket,
            tasks,
            backend: name,
        })
    }

    /// Which backend runs: `ovs` or `vxlan`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Sends a heartbeat datagram (DF set); a failure is the path's problem, which the
    /// missing acknowledgement reports.
    pub fn send(&self, to: SocketAddrV4, datagram: &[u8]) {
        if let Err(e) = self.socket.send_to(datagram, to) {
            debug!("fastdp heartbeat to {to}: {e}");
        }
    }

    /// What the kernel should forward by now.
    pub fn publish(&self, view: View) {
        self.view.send_if_modified(|old| {
            let changed = *old != view;
            *old = view;
            changed
        });
    }

    /// Stops hearing and programming; the devices and entries stay for the next start.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Sets up Open vSwitch with a socket for its misses.
async fn start_ovs(
    handle: &rtnetlink::Handle,
    bridge: &str,
    tap: &str,
    mtu: u32,
) -> Result<(Datapath, ovs::genl::Genl), OvsError> {
    let upcalls = ovs::genl::Genl::open().map_err(|e| OvsError::Unavailable(e.to_string()))?;
    let dp = ovs::ensure(handle, bridge, tap, mtu, &upcalls).await?;
    Ok((dp, upcalls))
}

/// Reads heartbeat frames off the receiving device and hands them on.
async fn listen(sock: AsyncFd<ZeroHeaderSocket>, frames: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let mut guard = match sock.readable().await {
            Ok(g) => g,
            Err(e) => {
                warn!("fastdp: heartbeat socket failed: {e}");
                return;
            }
        };
        loop {
            match guard.get_inner().recv(&mut buf) {
                Ok(n) if n <= buf.len() => {
                    // A full queue means the owner is behind; a heartbeat more or less
                    // changes nothing.
                    let _ = frames.try_send(buf[..n].to_vec());
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    guard.clear_ready();
                    break;
                }
                Err(e) => {
                    warn!(
                        "fastdp: reading heartbeats on {}: {e}",
                        guard.get_inner().name()
                    );
                    return;
                }
            }
        }
    }
}

/// The MACs the programming task knows: where each lives and when it was last seen.
#[derive(Debug, Default)]
struct MacTable {
    entries: HashMap<Mac, (PeerName, Instant)>,
}

impl MacTable {
    /// Takes a worker's post; returns whether any MAC changed peer, appeared or left.
    fn take(&mut self, post: &Post, ourself: PeerName) -> bool {
        let mut changed = false;
        for l in post.iter() {
            if l.peer == ourself {
                // A pod here now: the bridge delivers it.
                changed |= self.entries.remove(&l.mac).is_some();
                continue;
            }
            match self.entries.get_mut(&l.mac) {
                Some((peer, seen)) if *peer == l.peer => *seen = (*seen).max(l.seen),
                _ => {
                    self.entries.insert(l.mac, (l.peer, l.seen));
                    changed = true;
                }
            }
        }
        changed
    }

    fn owners(&self) -> HashMap<Mac, PeerName> {
        self.entries.iter().map(|(m, (p, _))| (*m, *p)).collect()
    }
}

/// Keeps the sending device's entries equal to what the table and the healthy peers say.
async fn program(
    handle: rtnetlink::Handle,
    backend: Backend,
    ourself: PeerName,
    mut view_rx: watch::Receiver<View>,
    learned: std_mpsc::Receiver<Post>,
) {
    let tx = backend.port();
    let start = Instant::now();
    let mut installed: HashMap<Mac, Remote> = HashMap::new();
    match vxlan::dump(&handle, tx).await {
        Ok((found, orphans)) => {
            for mac in orphans {
                if let Err(e) = backend.uninstall(&handle, mac).await {
                    warn!("fastdp: {e}");
                }
            }
            if !found.is_empty() {
                info!(
                    "fastdp: keeping {} forwarding entries from before the restart while peers reconnect",
                    found.len()
                );
            }
            installed = found.into_iter().map(|(m, i)| (m, i.remote)).collect();
        }
        Err(e) => warn!("fastdp: reading the forwarding entries: {e}"),
    }
    let adopted = installed.clone();
    let adopt_until = start + ADOPT_GRACE;
    let mut table = MacTable::default();
    let mut tick = tokio::time::interval(LEARN_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sweep = start + SWEEP_INTERVAL;
    let mut dirty = true;
    let mut in_grace = true;
    let mut next_upcall_check = start + UPCALL_CHECK;
    let mut view = view_rx.borrow_and_update().clone();
    loop {
        tokio::select! {
            r = view_rx.changed() => {
                if r.is_err() {
                    return;
                }
                view = view_rx.borrow_and_update().clone();
                dirty = true;
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if let Backend::Ovs { dp, .. } = &backend {
            if now >= next_upcall_check {
                next_upcall_check = now + UPCALL_CHECK;
                let dp = Arc::clone(dp);
                let _ = tokio::task::spawn_blocking(move || dp.reclaim_upcalls()).await;
            }
        }
        loop {
            match learned.try_recv() {
                Ok(post) => dirty |= table.take(&post, ourself),
                Err(std_mpsc::TryRecvError::Empty) => break,
                // Every worker stopped: the router is shutting down.
                Err(std_mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let peers = &view.peers;
        let grace = now < adopt_until;
        if grace {
            // Entries from before the restart name their peer by address and VNI.
            for (mac, remote) in &adopted {
                if table.entries.contains_key(mac) {
                    continue;
                }
                // Our short id is new after a restart, the peer's usually is not: the
                // peer's address and the VNI's destination half identify it.
                let owner = peers
                    .iter()
                    .find(|(_, p)| *p.addr.ip() == remote.ip && p.vni >> 12 == remote.vni >> 12);
                if let Some((peer, _)) = owner {
                    table.entries.insert(*mac, (*peer, now));
                    dirty = true;
                }
            }
        }
        if now >= next_sweep {
            next_sweep = now + SWEEP_INTERVAL;
            match &backend {
                Backend::Vxlan { .. } => match vxlan::dump(&handle, tx).await {
                    Ok((found, _)) => refresh(&mut table, &found, now),
                    Err(e) => warn!("fastdp: reading the forwarding entries: {e}"),
                },
                Backend::Ovs { dp, .. } => {
                    // Misses of flows in use learn their MACs again; idle flows go.
                    let dp = Arc::clone(dp);
                    let expired = tokio::task::spawn_blocking(move || dp.expire())
                        .await
                        .unwrap_or(0);
                    if expired > 0 {
                        debug!("ovs: {expired} idle flows expired");
                    }
                }
            }
            let before = table.entries.len();
            table
                .entries
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < MAC_MAX_AGE);
            dirty |= table.entries.len() != before;
        }
        if in_grace && !grace {
            // Entries no healthy peer claimed go now.
            dirty = true;
        }
        in_grace = grace;
        if !dirty {
            continue;
        }
        dirty = false;
        let want = vxlan::desired(&table.owners(), peers);
        let (mut added, mut removed) = (0, 0);
        for (mac, remote) in &want {
            if installed.get(mac) == Some(remote) {
                continue;
            }
            match backend.install(&handle, *mac, *remote).await {
                Ok(()) => {
                    installed.insert(*mac, *remote);
                    added += 1;
                }
                Err(e) => {
                    warn!("fastdp: {e}");
                    dirty = true;
                }
            }
        }
        let stale: Vec<Mac> = installed
            .keys()
            .filter(|m| !(want.contains_key(m) || grace && adopted.contains_key(m)))
            .copied()
            .collect();
        for mac in stale {
            match backend.uninstall(&handle, mac).await {
                Ok(()) => {
                    installed.remove(&mac);
                    removed += 1;
                }
                Err(e) => {
                    warn!("fastdp: {e}");
                    dirty = true;
                }
            }
        }
        if let Backend::Ovs { dp, fwd } = &backend {
            let changed = {
                let mut f = fwd.write().unwrap_or_else(|e| e.into_inner());
                let changed = f.view != view || f.macs != installed;
                f.view = view.clone();
                f.macs = installed.clone();
                changed
            };
            if changed {
                // Flows made on the old forwarding would outlive it: decide afresh.
                let dp = Arc::clone(dp);
                let _ = tokio::task::spawn_blocking(move || dp.flush()).await;
            }
        }
        if added + removed > 0 {
            debug!(
                "fastdp: {added} entries added, {removed} removed, {} in place",
                installed.len()
            );
        }
    }
}

/// Counts a MAC the kernel sent to recently as seen then.
fn refresh(table: &mut MacTable, found: &HashMap<Mac, Installed>, now: Instant) {
    for (mac, inst) in found {
        if let Some((_, seen)) = table.entries.get_mut(mac) {
            if let Some(used) = now.checked_sub(inst.idle) {
                *seen = (*seen).max(used);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::learn::Learning;

    #[test]
    fn local_macs_leave_the_table_and_moves_count_as_changes() {
        let ourself = PeerName::from_u64(1).unwrap();
        let peer = PeerName::from_u64(2).unwrap();
        let other = PeerName::from_u64(3).unwrap();
        let mac = Mac([2, 0, 0, 0, 0, 9]);
        let now = Instant::now();
        let post = |p| -> Post {
            vec![Learning {
                mac,
                peer: p,
                seen: now,
            }]
            .into()
        };
        let mut t = MacTable::default();
        assert!(t.take(&post(peer), ourself));
        assert!(!t.take(&post(peer), ourself), "seen again: no change");
        assert!(t.take(&post(other), ourself), "moved");
        assert_eq!(t.owners()[&mac], other);
        assert!(t.take(&post(ourself), ourself), "now local");
        assert!(t.owners().is_empty());
    }

    #[test]
    fn recent_use_keeps_a_mac_alive() {
        let peer = PeerName::from_u64(2).unwrap();
        let mac = Mac([2, 0, 0, 0, 0, 9]);
        let now = Instant::now();
        let old = now.checked_sub(Duration::from_secs(500)).unwrap_or(now);
        let mut t = MacTable::default();
        t.entries.insert(mac, (peer, old));
        let found: HashMap<Mac, Installed> = [(
            mac,
            Installed {
                remote: Remote {
                    ip: Ipv4Addr::LOCALHOST,
                    vni: 1,
                },
                idle: Duration::from_secs(3),
            },
        )]
        .into();
        refresh(&mut t, &found, now);
        let seen = t.entries[&mac].1;
        assert!(now.saturating_duration_since(seen) <= Duration::from_secs(3));
    }
}
