//! The fast datapath's I/O around the mesh: sets up the Linux VXLAN backend, hears
//! heartbeats on its receiving device, sends ours, and keeps the kernel's forwarding
//! entries in step with the healthy peers and the MACs the sleeve learned.
//!
//! The programming runs in its own task: the owner of the mesh publishes the peers the
//! fast datapath carries (a `watch`), the workers post what MACs they learned (the
//! [`LearnBus`](crate::dataplane::learn::LearnBus) mailbox after theirs), and the task
//! turns both into entries, changing only what differs. It also keeps a MAC the kernel
//! still sends to alive after the sleeve stopped seeing it (its traffic no longer passes
//! the router), by the entry's last use, and forgets it ten minutes after that.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::dataplane::learn::Post;
use crate::fastdp::vxlan::{self, Devices, Installed, Remote, VxlanError, ADOPT_GRACE};
use crate::ids::PeerName;
use crate::mesh::router::FastdpPath;
use crate::switch::{Mac, MAC_MAX_AGE};
use crate::sys::packet::ZeroHeaderSocket;
use crate::sys::socket::{open_udp, PmtuDiscovery, UdpOptions};

/// How often learned MACs are taken from the workers' mail.
const LEARN_POLL: Duration = Duration::from_millis(200);
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
    /// A socket could not be opened.
    #[error(transparent)]
    Sys(#[from] crate::sys::SysError),
    /// The runtime refused the socket.
    #[error("registering the heartbeat socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The running fast datapath.
pub struct FastdpShell {
    peers: watch::Sender<BTreeMap<PeerName, FastdpPath>>,
    socket: UdpSocket,
    tasks: Vec<JoinHandle<()>>,
    devices: Devices,
}

impl FastdpShell {
    /// Sets up the devices on `bridge` (next to `tap`) with MTU `mtu` and starts hearing
    /// heartbeats (sent to `frames`) and programming entries from `learned` mail.
    pub async fn start(
        handle: rtnetlink::Handle,
        bridge: &str,
        tap: &str,
        mtu: u32,
        ourself: PeerName,
        learned: std_mpsc::Receiver<Post>,
        frames: mpsc::Sender<Vec<u8>>,
    ) -> Result<Self, FastdpError> {
        let devices = vxlan::ensure(&handle, bridge, tap, mtu).await?;
        let listener = ZeroHeaderSocket::open(devices.rx, vxlan::RX_DEVICE)?;
        let listener = listener.into_async()?;
        let socket = open_udp(&UdpOptions {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            reuse_port: false,
            gro: false,
            pmtu: Some(PmtuDiscovery::Do),
            recv_buffer: None,
            send_buffer: None,
            nonblocking: true,
        })?;
        let (peers, peers_rx) = watch::channel(BTreeMap::new());
        let tasks = vec![
            tokio::spawn(listen(listener, frames)),
            tokio::spawn(program(handle, devices.tx, ourself, peers_rx, learned)),
        ];
        info!(
            "Fast datapath: {} receives and {} sends on UDP {}, MTU {mtu}",
            vxlan::RX_DEVICE,
            vxlan::TX_DEVICE,
            crate::wire::fastdp::PORT
        );
        Ok(FastdpShell {
            peers,
            socket,
            tasks,
            devices,
        })
    }

    /// The devices' interface indexes.
    pub fn devices(&self) -> Devices {
        self.devices
    }

    /// Sends a heartbeat datagram (DF set); a failure is the path's problem, which the
    /// missing acknowledgement reports.
    pub fn send(&self, to: SocketAddrV4, datagram: &[u8]) {
        if let Err(e) = self.socket.send_to(datagram, to) {
            debug!("fastdp heartbeat to {to}: {e}");
        }
    }

    /// The peers whose unicast the kernel carries now.
    pub fn publish(&self, peers: BTreeMap<PeerName, FastdpPath>) {
        self.peers.send_if_modified(|old| {
            let changed = *old != peers;
            *old = peers;
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
    tx: u32,
    ourself: PeerName,
    mut peers_rx: watch::Receiver<BTreeMap<PeerName, FastdpPath>>,
    learned: std_mpsc::Receiver<Post>,
) {
    let start = Instant::now();
    let mut installed: HashMap<Mac, Remote> = HashMap::new();
    match vxlan::dump(&handle, tx).await {
        Ok((found, orphans)) => {
            for mac in orphans {
                if let Err(e) = vxlan::uninstall(&handle, tx, mac).await {
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
    loop {
        tokio::select! {
            r = peers_rx.changed() => {
                if r.is_err() {
                    return;
                }
                dirty = true;
            }
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        loop {
            match learned.try_recv() {
                Ok(post) => dirty |= table.take(&post, ourself),
                Err(std_mpsc::TryRecvError::Empty) => break,
                // Every worker stopped: the router is shutting down.
                Err(std_mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let peers = peers_rx.borrow_and_update().clone();
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
            match vxlan::dump(&handle, tx).await {
                Ok((found, _)) => refresh(&mut table, &found, now),
                Err(e) => warn!("fastdp: reading the forwarding entries: {e}"),
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
        let want = vxlan::desired(&table.owners(), &peers);
        let (mut added, mut removed) = (0, 0);
        for (mac, remote) in &want {
            if installed.get(mac) == Some(remote) {
                continue;
            }
            match vxlan::install(&handle, tx, *mac, *remote).await {
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
            match vxlan::uninstall(&handle, tx, mac).await {
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
