//! Kubernetes: peers from the Node objects, reclaim of deleted Nodes' addresses, and the Node
//! condition that says the pod network is up. What Weave Net's `kube-utils` and its launch
//! script do beside the router, done inside it with the `kube` crate.
//!
//! Before the router starts ([`Kube::connect`], [`Kube::initial_peers`],
//! [`Kube::prepare_store`]):
//! - without peers on the command line or in `KUBE_PEERS`, the Nodes' addresses
//!   ([`nodes::node_address`]) are the initial peers, which also sets the IPAM quorum;
//! - if this peer's store says it took part in reclaim before but the cluster's peer list no
//!   longer has it, others have taken its space while it was away, and the store is deleted
//!   so its old ring cannot clash with theirs (as Weave does).
//!
//! Then, in the background ([`Kube::spawn`]):
//! 1. the peer adds itself to the peer list and reclaims the space of listed peers whose Node
//!    is gone ([`reclaim`]: exactly once across the cluster, through the API server's
//!    optimistic locking of the `weave-net` ConfigMap);
//! 2. it sets `NetworkUnavailable=False` on its Node;
//! 3. it watches the Nodes: every change replaces the mesh's connection targets (unless peers
//!    were given), and a Node that goes away starts a reclaim pass after a random wait of up
//!    to `--reclaim-jitter`, so that the routers do not all contend at once. A pass that
//!    could not finish (API errors, a peer still reachable) is retried every
//!    [`RETRY_PASS`].

pub mod nodes;
pub mod reclaim;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::Client;
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::ipam::IpamRequest;
use crate::api::ApiRequest;
use crate::config::KubeSettings;
use crate::ids::PeerName;
use crate::ipam::allocator::IpamError;
use crate::ipam::store::{RedbStore, Store as _};
use crate::mesh::DirectPeer;
use reclaim::{Annotations, BadPeerList, Claim, PeerInfo};

/// How often a reclaim pass that could not finish is tried again.
pub const RETRY_PASS: Duration = Duration::from_secs(30);
/// The store's marker for "this peer takes part in reclaim" (Weave's `peer-reclaim`).
const RECLAIM_FLAG: &str = "peer-reclaim";
/// Field manager of our writes.
const FIELD_MANAGER: &str = "weave-router";
/// How long a takeover waits for the ring before the pass is left for later.
const RING_WAIT: Duration = Duration::from_secs(30);

/// A failed API call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The object changed since it was read (HTTP 409 on a write that carried its
    /// `resourceVersion`).
    #[error("the ConfigMap changed since it was read")]
    Conflict,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A reclaim step that failed; the pass is retried later.
#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    /// The API server refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Api(#[from] ApiError),
    /// The peer list is not in Weave's format.
    #[error(transparent)]
    PeerList(#[from] BadPeerList),
    /// The allocator refused the takeover.
    #[error("taking over the space of {peer}: {error}")]
    TakeOver {
        /// The peer.
        peer: String,
        /// Why not.
        error: IpamError,
    },
}

/// What the reclaim protocol needs: the ConfigMap, the Nodes and the allocator. The router
/// uses the API server and its own allocator ([`ApiIo`]); tests use memory.
pub trait ReclaimIo: Sync {
    /// The ConfigMap as read, carrying what a write needs (its `resourceVersion`).
    type Object: Send + Sync;
    /// Reads the ConfigMap (creating it if missing): its annotations and the object.
    fn read(&self) -> impl Future<Output = Result<(Annotations, Self::Object), ApiError>> + Send;
    /// Writes `annotations` to the ConfigMap read as `object`; [`ApiError::Conflict`] if it
    /// changed meanwhile.
    fn write(
        &self,
        object: &Self::Object,
        annotations: &Annotations,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// The names of the Nodes that exist now.
    fn node_names(&self) -> impl Future<Output = Result<BTreeSet<String>, ApiError>> + Send;
    /// Takes `peer`'s ring space over (`rmpeer`); the number of addresses moved.
    fn take_over(&self, peer: &str) -> impl Future<Output = Result<u64, IpamError>> + Send;
}

/// The outcome of one reclaim pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Peers reclaimed by us, with the number of addresses taken over.
    pub reclaimed: Vec<(PeerInfo, u64)>,
    /// Peers whose Node is gone but which are still reachable: left alone, for now.
    pub alive: Vec<String>,
}

enum Outcome {
    Reclaimed(u64),
    Skipped,
    Alive,
}

/// The reclaim protocol of [`reclaim`], run against a [`ReclaimIo`].
pub struct Reclaimer<I> {
    io: I,
    me: String,
    my_node: String,
    /// Wait after an optimistic-lock conflict, before reading again: a random time up to
    /// this.
    conflict_wait: Duration,
}

impl<I: ReclaimIo> Reclaimer<I> {
    /// A reclaimer for peer `me` on Node `my_node`.
    pub fn new(io: I, me: &str, my_node: &str, conflict_wait: Duration) -> Self {
        Reclaimer {
            io,
            me: me.to_string(),
            my_node: my_node.to_string(),
            conflict_wait,
        }
    }

    /// Reads, changes with `f` and writes the ConfigMap until no one else changed it in
    /// between; whether `f` changed anything.
    async fn update(
        &self,
        f: impl Fn(&mut Annotations) -> Result<bool, BadPeerList>,
    ) -> Result<bool, ReclaimError> {
        loop {
            let (mut a, object) = self.io.read().await?;
            if !f(&mut a)? {
                return Ok(false);
            }
            match self.io.write(&object, &a).await {
                Ok(()) => return Ok(true),
                Err(ApiError::Conflict) => self.pause().await,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn pause(&self) {
        sleep_up_to(self.conflict_wait).await;
    }

    /// Whether the cluster's peer list has us.
    pub async fn is_member(&self) -> Result<bool, ReclaimError> {
        let (a, _) = self.io.read().await?;
        Ok(reclaim::peer_list(&a)?.contains(&self.me))
    }

    /// Adds us to the peer list (once).
    pub async fn join(&self) -> Result<(), ReclaimError> {
        let (me, node) = (self.me.clone(), self.my_node.clone());
        self.update(move |a| reclaim::add_member(a, &me, &node))
            .await
            .map(|_| ())
    }

    /// Reclaims every listed peer whose Node is gone, until a few rounds change nothing.
    pub async fn pass(&self) -> Result<Pass, ReclaimError> {
        self.join().await?;
        let mut report = Pass::default();
        let mut idle_rounds = 0;
        while idle_rounds < 3 {
            let (a, _) = self.io.read().await?;
            let list = reclaim::peer_list(&a)?;
            let nodes = self.io.node_names().await?;
            let gone: Vec<PeerInfo> = reclaim::disappeared(&list, &nodes, &self.me, &self.my_node)
                .into_iter()
                .filter(|p| !report.alive.contains(&p.peer_name))
                .collect();
            if gone.is_empty() {
                break;
            }
            let mut changed = false;
            for peer in gone {
                match self.reclaim(&peer).await? {
                    Outcome::Reclaimed(n) => {
                        report.reclaimed.push((peer, n));
                        changed = true;
                    }
                    Outcome::Skipped => {}
                    Outcome::Alive => report.alive.push(peer.peer_name),
                }
            }
            if changed {
                idle_rounds = 0;
            } else {
                // Another router holds the claim: give it time to finish before looking again.
                idle_rounds += 1;
                self.pause().await;
            }
        }
        Ok(report)
    }

    async fn reclaim(&self, peer: &PeerInfo) -> Result<Outcome, ReclaimError> {
        let name = peer.peer_name.as_str();
        let (mut a, object) = self.io.read().await?;
        let list = reclaim::peer_list(&a)?;
        if !list.contains(name) {
            // Another router finished it since this pass looked.
            return Ok(Outcome::Skipped);
        }
        match reclaim::claim(&a, &list, name, &self.me) {
            Claim::Theirs(_) => return Ok(Outcome::Skipped),
            Claim::Ours => {}
            Claim::Take => {
                reclaim::take(&mut a, name, &self.me);
                match self.io.write(&object, &a).await {
                    Ok(()) => {}
                    // Someone else wrote first; the next round sees what they did.
                    Err(ApiError::Conflict) => return Ok(Outcome::Skipped),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // The claim is ours. Another router may have finished before we claimed.
        let (a, _) = self.io.read().await?;
        let mut moved = 0;
        if reclaim::peer_list(&a)?.contains(name) {
            match self.io.take_over(name).await {
                Ok(n) => moved = n,
                // The ring never had it: nothing to move.
                Err(IpamError::UnknownPeer(_)) => {}
                Err(IpamError::PeerAlive(_)) => {
                    let me = self.me.clone();
                    self.update(move |a| Ok(reclaim::give_up(a, name, &me)))
                        .await?;
                    return Ok(Outcome::Alive);
                }
                Err(error) => {
                    return Err(ReclaimError::TakeOver {
                        peer: name.to_string(),
                        error,
                    })
                }
            }
        }
        self.update(|a| reclaim::finish(a, name)).await?;
        Ok(Outcome::Reclaimed(moved))
    }
}

/// The router's [`ReclaimIo`]: the API server, and the allocator through the mesh owner.
pub struct ApiIo {
    configmaps: Api<ConfigMap>,
    nodes: Api<Node>,
    requests: mpsc::Sender<ApiRequest>,
}

fn api_error(e: kube::Error) -> ApiError {
    match e {
        kube::Error::Api(r) if r.code == 409 && r.reason == "Conflict" => ApiError::Conflict,
        kube::Error::Api(r) => ApiError::Other(format!("{} ({}): {}", r.reason, r.code, r.message)),
        other => ApiError::Other(other.to_string()),
    }
}

impl ApiIo {
    async fn ipam<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> IpamRequest + Send,
    ) -> Result<T, IpamError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || IpamError::Cancelled {
            kind: "rmpeer",
            ident: "the router is stopping".to_string(),
        };
        self.requests
            .send(ApiRequest::Ipam(make(reply)))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }
}

impl ReclaimIo for ApiIo {
    type Object = ConfigMap;

    async fn read(&self) -> Result<(Annotations, ConfigMap), ApiError> {
        loop {
            if let Some(cm) = self
                .configmaps
                .get_opt(reclaim::CONFIGMAP)
                .await
                .map_err(api_error)?
            {
                let a = cm.metadata.annotations.clone().unwrap_or_default();
                return Ok((a, cm));
            }
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(reclaim::CONFIGMAP.to_string());
            cm.metadata.namespace = Some(reclaim::NAMESPACE.to_string());
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PostParams::default()
            };
            match self.configmaps.create(&pp, &cm).await {
                Ok(cm) => return Ok((Annotations::new(), cm)),
                // Created by someone else between our get and create: read theirs.
                Err(kube::Error::Api(r)) if r.code == 409 => continue,
                Err(e) => return Err(api_error(e)),
            }
        }
    }

    async fn write(&self, object: &ConfigMap, annotations: &Annotations) -> Result<(), ApiError> {
        let mut cm = object.clone();
        cm.metadata.annotations = Some(annotations.clone());
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        self.configmaps
            .replace(reclaim::CONFIGMAP, &pp, &cm)
            .await
            .map(|_| ())
            .map_err(api_error)
    }

    async fn node_names(&self) -> Result<BTreeSet<String>, ApiError> {
        let list = self
            .nodes
            .list(&ListParams::default())
            .await
            .map_err(api_error)?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect())
    }

    async fn take_over(&self, peer: &str) -> Result<u64, IpamError> {
        // Only a peer that knows the ring can tell which ranges the dead peer owned; one that
        // does not yet would move nothing and drop the peer from the list for good.
        self.ipam(|reply| IpamRequest::Prime {
            wait: RING_WAIT,
            reply,
        })
        .await??;
        let peer = peer.to_string();
        self.ipam(|reply| IpamRequest::TakeOver { peer, reply })
            .await?
    }
}

/// The router's connection to the cluster.
pub struct Kube {
    client: Client,
    settings: KubeSettings,
    me: PeerName,
    port: u16,
}

impl Kube {
    /// Connects with the in-cluster service account, or `KUBECONFIG` (or ~/.kube/config).
    pub async fn connect(settings: KubeSettings, me: PeerName, port: u16) -> anyhow::Result<Kube> {
        let client = Client::try_default().await.context(
            "cannot configure the Kubernetes client (no service account token, and no \
             KUBECONFIG); outside a cluster, use --kubernetes off",
        )?;
        Ok(Kube {
            client,
            settings,
            me,
            port,
        })
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn reclaimer(&self, requests: mpsc::Sender<ApiRequest>) -> Reclaimer<ApiIo> {
        let io = ApiIo {
            configmaps: Api::namespaced(self.client.clone(), reclaim::NAMESPACE),
            nodes: self.nodes(),
            requests,
        };
        Reclaimer::new(
            io,
            &self.me.to_string(),
            &self.settings.node_name,
            Duration::from_secs(2),
        )
    }

    /// The Nodes' addresses, ours left out: the peers to start with.
    pub async fn initial_peers(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let list = self
            .nodes()
            .list(&ListParams::default())
            .await
            .map_err(api_error)
            .context("cannot list the cluster's Nodes")?;
        let local = local_addresses().await;
        let peers = nodes::peer_addresses(&list.items, &self.settings.node_name, |a| {
            local.contains(&a)
        });
        Ok(peers
            .into_iter()
            .map(|a| SocketAddr::from((a, self.port)))
            .collect())
    }

    /// Deletes the IPAM store in `db_dir` if the cluster reclaimed this peer's space while
    /// it was away, then marks the store as taking part in reclaim.
    pub async fn prepare_store(&self, db_dir: &std::path::Path) -> anyhow::Result<()> {
        let mut store = RedbStore::open(db_dir)?;
        if store.flag(RECLAIM_FLAG)? {
            // The reclaimer needs no allocator for this question.
            let (tx, _rx) = mpsc::channel(1);
            let member = self
                .reclaimer(tx)
                .is_member()
                .await
                .context("cannot read the cluster's peer list")?;
            if !member {
                let held = store.load()?.owned.len();
                warn!(
                    "Peer {} is no longer in the cluster's peer list: another node reclaimed \
                     its address space while it was away. Deleting its IPAM store ({held} \
                     allocations) so that its old ring cannot clash with the cluster's.",
                    self.me
                );
                drop(store);
                RedbStore::remove(db_dir)?;
                store = RedbStore::open(db_dir)?;
            }
        }
        store.set_flag(RECLAIM_FLAG)?;
        Ok(())
    }

    /// Runs membership, reclaim, node status and the Node watch until the router stops.
    /// `ipam` tells whether the router manages addresses (else there is nothing to reclaim).
    pub fn spawn(self, requests: mpsc::Sender<ApiRequest>, ipam: bool) -> JoinHandle<()> {
        tokio::spawn(async move { self.run(requests, ipam).await })
    }

    async fn run(self, requests: mpsc::Sender<ApiRequest>, ipam: bool) {
        let kube = Arc::new(self);
        let wake = Arc::new(Notify::new());
        if ipam {
            let reclaimer = kube.reclaimer(requests.clone());
            let jitter = kube.settings.reclaim_jitter;
            let wake = Arc::clone(&wake);
            tokio::spawn(async move { reclaim_loop(reclaimer, jitter, wake).await });
        }
        let status = Arc::clone(&kube);
        tokio::spawn(async move { status.set_network_available().await });
        kube.watch(requests, ipam.then_some(wake)).await;
    }

    /// Sets `NetworkUnavailable=False` on our Node, retrying until it is done.
    async fn set_network_available(&self) {
        let now =
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::chrono::Utc::now());
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "WeaveIsUp",
            "message": "weave-router is running on this node",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        let name = &self.settings.node_name;
        loop {
            match self
                .nodes()
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                Ok(_) => {
                    info!("Node {name}: NetworkUnavailable=False");
                    return;
                }
                Err(e) => {
                    warn!(
                        "Cannot set NetworkUnavailable=False on Node {name}: {}; retrying",
                        api_error(e)
                    );
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    /// Follows the Nodes: replaces the mesh's targets when their addresses change (if peers
    /// come from the Nodes), and wakes the reclaimer when one goes away.
    async fn watch(&self, requests: mpsc::Sender<ApiRequest>, reclaim: Option<Arc<Notify>>) {
        let stream = watcher::watcher(self.nodes(), watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut set = nodes::NodeSet::default();
        let mut targets: Option<Vec<Ipv4Addr>> = None;
        while let Some(event) = stream.next().await {
            let change = match event {
                Ok(Event::Init) => {
                    set.list_started();
                    continue;
                }
                Ok(Event::InitApply(node)) => {
                    set.listed(node);
                    continue;
                }
                Ok(Event::InitDone) => set.list_done(),
                Ok(Event::Apply(node)) => set.apply(node),
                Ok(Event::Delete(node)) => set.delete(&node),
                Err(e) => {
                    warn!("Watching Nodes: {e}");
                    continue;
                }
            };
            if !change.ready {
                continue;
            }
            if !change.removed.is_empty() {
                info!("Nodes gone: {}", change.removed.join(" "));
                if let Some(wake) = &reclaim {
                    wake.notify_one();
                }
            }
            if self.settings.discover_peers && change.addresses {
                let local = local_addresses().await;
                let now = nodes::peer_addresses(set.nodes(), &self.settings.node_name, |a| {
                    local.contains(&a)
                });
                if targets.as_ref() != Some(&now) {
                    let shown: Vec<String> = now.iter().map(|a| a.to_string()).collect();
                    info!("Peers from the Nodes: [{}]", shown.join(" "));
                    if !self.replace_targets(&requests, &now).await {
                        return;
                    }
                    targets = Some(now);
                }
            }
        }
    }

    /// Makes `addrs` the mesh's targets; false when the router is stopping.
    async fn replace_targets(
        &self,
        requests: &mpsc::Sender<ApiRequest>,
        addrs: &[Ipv4Addr],
    ) -> bool {
        let addrs = addrs
            .iter()
            .map(|a| DirectPeer::new(a.to_string(), SocketAddr::from((*a, self.port)), self.port))
            .collect();
        let (reply, rx) = oneshot::channel();
        let req = ApiRequest::Connect {
            addrs,
            replace: true,
            reply,
        };
        requests.send(req).await.is_ok() && rx.await.is_ok()
    }
}

/// Runs a reclaim pass at start, then after every wake-up (after a random wait of up to
/// `jitter`), and again every [`RETRY_PASS`] while one could not finish.
async fn reclaim_loop(reclaimer: Reclaimer<ApiIo>, jitter: Duration, wake: Arc<Notify>) {
    let mut retry = false;
    let mut first = true;
    loop {
        if !first {
            if retry {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(RETRY_PASS) => {}
                }
            } else {
                wake.notified().await;
            }
            sleep_up_to(jitter).await;
        }
        first = false;
        match reclaimer.pass().await {
            Ok(pass) => {
                for (peer, n) in &pass.reclaimed {
                    info!(
                        "Reclaimed the address space of peer {} (Node {} is gone): {n} addresses",
                        peer.peer_name, peer.node_name
                    );
                }
                for peer in &pass.alive {
                    info!("Peer {peer} is still reachable although its Node is gone; not reclaiming it yet");
                }
                retry = !pass.alive.is_empty();
            }
            Err(e) => {
                warn!("Reclaim of deleted Nodes' addresses: {e}; trying again in {RETRY_PASS:?}");
                retry = true;
            }
        }
    }
}

/// Sleeps a random time from zero to `max` (millisecond steps).
async fn sleep_up_to(max: Duration) {
    let max = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    let ms = rand::thread_rng().gen_range(0..=max);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// The IPv4 addresses of this host (its network namespace); empty if they cannot be read.
async fn local_addresses() -> BTreeSet<Ipv4Addr> {
    let Ok((connection, handle, _)) = rtnetlink::new_connection() else {
        return BTreeSet::new();
    };
    let driver = tokio::spawn(connection);
    let addrs = crate::dataplane::plumbing::host_addresses(&handle)
        .await
        .unwrap_or_default();
    driver.abort();
    addrs
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// The API server and the ring, shared by every simulated router: a ConfigMap with a
    /// version that every write must match, Nodes, and who owns each peer's ring space.
    #[derive(Default)]
    struct Shared {
        annotations: Annotations,
        version: u64,
        nodes: BTreeSet<String>,
        /// Ring space (addresses) by owner.
        space: BTreeMap<String, u64>,
        /// Peers still reachable.
        alive: BTreeSet<String>,
        /// (by, from, addresses) of every takeover.
        takeovers: Vec<(String, String, u64)>,
        rng: Option<rand_chacha::ChaCha8Rng>,
    }

    struct MemoryIo {
        shared: Arc<Mutex<Shared>>,
        me: String,
    }

    impl MemoryIo {
        /// Yields to the other routers a random number of times: the interleaving.
        async fn interleave(&self) {
            let n = {
                let mut s = self.shared.lock().unwrap();
                s.rng.as_mut().map_or(0, |r| r.gen_range(0..4))
            };
            for _ in 0..n {
                tokio::task::yield_now().await;
            }
        }
    }

    impl ReclaimIo for MemoryIo {
        type Object = u64;

        async fn read(&self) -> Result<(Annotations, u64), ApiError> {
            self.interleave().await;
            let s = self.shared.lock().unwrap();
            Ok((s.annotations.clone(), s.version))
        }

        async fn write(&self, version: &u64, a: &Annotations) -> Result<(), ApiError> {
            self.interleave().await;
            let mut s = self.shared.lock().unwrap();
            if s.version != *version {
                return Err(ApiError::Conflict);
            }
            s.annotations = a.clone();
            s.version += 1;
            Ok(())
        }

        async fn node_names(&self) -> Result<BTreeSet<String>, ApiError> {
            self.interleave().await;
            Ok(self.shared.lock().unwrap().nodes.clone())
        }

        async fn take_over(&self, peer: &str) -> Result<u64, IpamError> {
            self.interleave().await;
            let mut s = self.shared.lock().unwrap();
            if s.alive.contains(peer) {
                return Err(IpamError::PeerAlive(peer.to_string()));
            }
            let Some(n) = s.space.remove(peer) else {
                return Err(IpamError::UnknownPeer(peer.to_string()));
            };
            *s.space.entry(self.me.clone()).or_default() += n;
            let me = self.me.clone();
            s.takeovers.push((me, peer.to_string(), n));
            Ok(n)
        }
    }

    fn peer(i: usize) -> String {
        format!("aa:00:00:00:00:{i:02x}")
    }

    fn node(i: usize) -> String {
        format!("node-{i}")
    }

    /// `n` peers on `n` Nodes, each owning 100 addresses and listed.
    fn cluster(n: usize, seed: Option<u64>) -> Arc<Mutex<Shared>> {
        let mut s = Shared {
            rng: seed.map(rand_chacha::ChaCha8Rng::seed_from_u64),
            ..Shared::default()
        };
        for i in 1..=n {
            reclaim::add_member(&mut s.annotations, &peer(i), &node(i)).unwrap();
            s.nodes.insert(node(i));
            s.space.insert(peer(i), 100);
        }
        Arc::new(Mutex::new(s))
    }

    /// `n` peers as [`cluster`] makes them, with the Nodes `deleted` gone.
    fn cluster_without(n: usize, seed: Option<u64>, deleted: &[usize]) -> Arc<Mutex<Shared>> {
        let shared = cluster(n, seed);
        for i in deleted {
            shared.lock().unwrap().nodes.remove(&node(*i));
        }
        shared
    }

    fn reclaimer(shared: &Arc<Mutex<Shared>>, i: usize) -> Reclaimer<MemoryIo> {
        let io = MemoryIo {
            shared: Arc::clone(shared),
            me: peer(i),
        };
        Reclaimer::new(io, &peer(i), &node(i), Duration::from_millis(1))
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn racing_routers_reclaim_each_deleted_node_exactly_once() {
        for seed in 0..300u64 {
            // Six peers; Nodes 5 and 6 are deleted, their routers dead; 1-4 all race.
            let shared = cluster_without(6, Some(seed), &[5, 6]);
            let routers: Vec<_> = (1..=4).map(|i| reclaimer(&shared, i)).collect();
            let passes = block_on(futures::future::join_all(routers.iter().map(|r| r.pass())));
            let s = shared.lock().unwrap();
            for (i, p) in passes.iter().enumerate() {
                let p = p
                    .as_ref()
                    .unwrap_or_else(|e| panic!("seed {seed}: router {i}: {e}"));
                assert!(p.alive.is_empty(), "seed {seed}");
            }
            let mut taken: Vec<&str> = s
                .takeovers
                .iter()
                .map(|(_, from, _)| from.as_str())
                .collect();
            taken.sort_unstable();
            assert_eq!(
                taken,
                vec![peer(5), peer(6)],
                "seed {seed}: {:?}",
                s.takeovers
            );
            let reported: usize = passes
                .iter()
                .map(|p| p.as_ref().unwrap().reclaimed.len())
                .sum();
            assert_eq!(
                reported, 2,
                "seed {seed}: each reclaim is reported by its one router"
            );
            assert_eq!(
                s.space.values().sum::<u64>(),
                600,
                "seed {seed}: no space lost"
            );
            let list = reclaim::peer_list(&s.annotations).unwrap();
            assert_eq!(list.peers.len(), 4, "seed {seed}");
            assert_eq!(
                s.annotations.len(),
                1,
                "seed {seed}: no claim left: {:?}",
                s.annotations
            );
        }
    }

    #[test]
    fn a_claim_of_ours_is_carried_on_and_a_dead_claimants_is_taken_over() {
        let shared = cluster_without(4, None, &[3, 4]);
        {
            let mut s = shared.lock().unwrap();
            // Before a restart, peer 1 claimed peer 4. Peer 3 claimed peer 2, whose Node
            // still exists, and then died with its Node.
            let a = &mut s.annotations;
            reclaim::take(a, &peer(4), &peer(1));
            reclaim::take(a, &peer(2), &peer(3));
        }
        let pass = block_on(reclaimer(&shared, 1).pass()).unwrap();
        let got: Vec<&str> = pass
            .reclaimed
            .iter()
            .map(|(p, _)| p.peer_name.as_str())
            .collect();
        assert_eq!(got, vec![peer(3), peer(4)]);
        let s = shared.lock().unwrap();
        assert_eq!(s.space[&peer(1)], 300);
        assert_eq!(s.space[&peer(2)], 100);
        assert_eq!(s.annotations.len(), 1, "{:?}", s.annotations);
    }

    #[test]
    fn a_reachable_peer_is_left_alone_and_reclaimed_once_it_dies() {
        let shared = cluster_without(3, None, &[3]);
        shared.lock().unwrap().alive.insert(peer(3));
        let r = reclaimer(&shared, 1);
        let pass = block_on(r.pass()).unwrap();
        assert_eq!(pass.alive, vec![peer(3)]);
        assert!(pass.reclaimed.is_empty());
        {
            let s = shared.lock().unwrap();
            assert!(s.takeovers.is_empty());
            assert_eq!(
                s.annotations.len(),
                1,
                "the claim is given up: {:?}",
                s.annotations
            );
            assert!(reclaim::peer_list(&s.annotations)
                .unwrap()
                .contains(&peer(3)));
        }
        shared.lock().unwrap().alive.clear();
        let pass = block_on(r.pass()).unwrap();
        assert_eq!(pass.reclaimed.len(), 1);
        assert_eq!(shared.lock().unwrap().space[&peer(1)], 200);
    }

    #[test]
    fn a_peer_that_never_owned_space_is_dropped_from_the_list() {
        let shared = cluster_without(3, None, &[3]);
        shared.lock().unwrap().space.remove(&peer(3));
        let pass = block_on(reclaimer(&shared, 2).pass()).unwrap();
        assert_eq!(pass.reclaimed.len(), 1);
        assert_eq!(pass.reclaimed[0].1, 0);
        let s = shared.lock().unwrap();
        assert!(!reclaim::peer_list(&s.annotations)
            .unwrap()
            .contains(&peer(3)));
    }
}
