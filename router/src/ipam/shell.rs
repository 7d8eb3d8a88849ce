//! The allocator's shell: owns the [`Allocator`], its [`RedbStore`] and the HTTP requests
//! that wait for it, and runs on the task that owns the mesh.
//!
//! After every input the daemon calls [`IpamShell::flush`], which keeps the rule that makes a
//! crash lose nothing: the allocator's store operations are committed first, and only then do
//! its gossip and its answers leave. A store that cannot be written stops the router (the
//! error names the file); answering without persisting could hand an address out twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::api::ipam::IpamRequest;
use crate::ids::{PeerName, PeerUid};
use crate::ipam::address::Cidr;
use crate::ipam::allocator::{Allocator, Config, IpamError, OpId, Reply};
use crate::ipam::store::{RedbStore, Store};
use crate::ipam::{deliver, transmit, CHANNEL};
use crate::mesh::Mesh;

/// How often waiting requests are checked for clients that went away.
pub const ABANDON_CHECK: Duration = Duration::from_secs(1);

/// A request waiting for the allocator.
enum Waiter {
    Allocate(oneshot::Sender<Result<Cidr, IpamError>>),
    Claim(oneshot::Sender<Result<(), IpamError>>),
    Prime(oneshot::Sender<Result<(), IpamError>>),
}

impl Waiter {
    fn is_closed(&self) -> bool {
        match self {
            Waiter::Allocate(tx) => tx.is_closed(),
            Waiter::Claim(tx) | Waiter::Prime(tx) => tx.is_closed(),
        }
    }

    fn answer(self, result: Result<Reply, IpamError>) {
        match (self, result) {
            (Waiter::Allocate(tx), Ok(Reply::Allocated(cidr))) => {
                let _ = tx.send(Ok(cidr));
            }
            (Waiter::Allocate(tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (Waiter::Claim(tx) | Waiter::Prime(tx), Ok(_)) => {
                let _ = tx.send(Ok(()));
            }
            (Waiter::Claim(tx) | Waiter::Prime(tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (Waiter::Allocate(tx), Ok(other)) => {
                warn!("[allocator]: unexpected answer {other:?} to an allocation");
                drop(tx);
            }
        }
    }
}

/// An answer held back until the store has committed what it depends on.
type Deferred = Box<dyn FnOnce() + Send>;

/// The allocator with its store and waiting requests.
pub struct IpamShell {
    alloc: Allocator,
    store: RedbStore,
    waiting: HashMap<OpId, Waiter>,
    deferred: Vec<Deferred>,
    next_op: u64,
    reachable_at: Option<u64>,
}

impl IpamShell {
    /// Opens the store in `db_dir`, loads it and starts the allocator; registers the
    /// `IPallocation` channel with the mesh.
    pub fn start(
        config: Config,
        db_dir: &std::path::Path,
        mesh: &mut Mesh,
        now: Instant,
    ) -> anyhow::Result<IpamShell> {
        let mut store = RedbStore::open(db_dir)?;
        let persisted = store.load()?;
        let mut alloc = Allocator::new(config, persisted, rand::random(), now)
            .with_context(|| format!("cannot use IPAM store {}", store.path().display()))?;
        store.apply(&alloc.take_store_ops())?;
        while let Some(ev) = alloc.poll_event() {
            crate::daemon::log_event(&ev);
        }
        mesh.register_channel(CHANNEL);
        info!("IPAM store: {}", store.path().display());
        Ok(IpamShell {
            alloc,
            store,
            waiting: HashMap::new(),
            deferred: Vec::new(),
            next_op: 1,
            reachable_at: None,
        })
    }

    /// Builds the allocator's configuration from the launch settings.
    pub fn config(
        settings: &crate::config::IpamConfig,
        name: PeerName,
        uid: PeerUid,
        nickname: &str,
        initial_peers: usize,
    ) -> Config {
        let unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Config {
            name,
            uid,
            nickname: nickname.to_string(),
            universe: settings.range,
            default_subnet: settings.default_subnet,
            init: settings.init.to_allocator(initial_peers),
            unix_time,
        }
    }

    /// Takes one API request.
    pub fn handle_request(&mut self, req: IpamRequest, now: Instant) {
        match req {
            IpamRequest::Allocate {
                ident,
                subnet,
                wait,
                reply,
            } => {
                let id = self.op();
                let r = self
                    .alloc
                    .allocate(id, &ident, subnet, true, now + wait, now);
                self.wait_or_answer(id, Waiter::Allocate(reply), r);
            }
            IpamRequest::Claim {
                ident,
                cidr,
                wait,
                reply,
            } => {
                let id = self.op();
                let r = self.alloc.claim(id, &ident, cidr, true, now + wait, now);
                self.wait_or_answer(id, Waiter::Claim(reply), r);
            }
            IpamRequest::Prime { wait, reply } => {
                let id = self.op();
                let r = self.alloc.prime(id, now + wait, now);
                self.wait_or_answer(id, Waiter::Prime(reply), r);
            }
            IpamRequest::Lookup {
                ident,
                subnet,
                reply,
            } => {
                let _ = reply.send(self.alloc.lookup(&ident, subnet.map(|s| s.range())));
            }
            IpamRequest::Release { ident, reply } => {
                let r = self.alloc.release(&ident);
                self.defer(move || {
                    let _ = reply.send(r);
                });
            }
            IpamRequest::Free { ident, addr, reply } => {
                let r = self.alloc.free(&ident, addr);
                self.defer(move || {
                    let _ = reply.send(r);
                });
            }
            IpamRequest::TakeOver { peer, reply } => {
                let r = self.alloc.take_over(&peer, false);
                self.defer(move || {
                    let _ = reply.send(r);
                });
            }
            IpamRequest::List { reply } => {
                let all = self
                    .alloc
                    .owned()
                    .iter()
                    .map(|(id, o)| (id.clone(), o.cidrs.clone()))
                    .collect();
                let _ = reply.send(all);
            }
            IpamRequest::Status { reply } => {
                let _ = reply.send(Some(self.alloc.status()));
            }
        }
    }

    /// Runs the allocator's timers when due, and cancels requests whose client left.
    pub fn handle_timeout(&mut self, now: Instant) {
        let gone: Vec<OpId> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.alloc.cancel(id);
        }
        if self.alloc.poll_timeout() <= now {
            self.alloc.handle_timeout(now);
        }
    }

    /// When [`IpamShell::handle_timeout`] next has work.
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        let t = self.alloc.poll_timeout();
        if self.waiting.is_empty() {
            t
        } else {
            t.min(now + ABANDON_CHECK)
        }
    }

    /// Feeds the mesh's channel events in, persists, then lets gossip and answers out.
    pub fn flush(&mut self, mesh: &mut Mesh, now: Instant) -> anyhow::Result<()> {
        while let Some(ev) = mesh.poll_channel_event() {
            if let Err(e) = deliver(&mut self.alloc, ev, now) {
                warn!("{e}");
            }
        }
        if self.reachable_at != Some(mesh.generation()) {
            self.reachable_at = Some(mesh.generation());
            self.alloc.set_reachable(mesh.reachable_peers());
        }
        let ops = self.alloc.take_store_ops();
        self.store.apply(&ops)?;
        for e in transmit(&mut self.alloc, mesh, now) {
            warn!("{e}");
        }
        while let Some((id, result)) = self.alloc.poll_reply() {
            if let Some(w) = self.waiting.remove(&id) {
                w.answer(result);
            }
        }
        for answer in self.deferred.drain(..) {
            answer();
        }
        while let Some(ev) = self.alloc.poll_event() {
            crate::daemon::log_event(&ev);
        }
        Ok(())
    }

    fn op(&mut self) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        id
    }

    fn defer(&mut self, f: impl FnOnce() + Send + 'static) {
        self.deferred.push(Box::new(f));
    }

    /// Files the request as waiting, or queues its answer for after the commit.
    fn wait_or_answer(
        &mut self,
        id: OpId,
        waiter: Waiter,
        result: Option<Result<Reply, IpamError>>,
    ) {
        match result {
            Some(r) => self.defer(move || waiter.answer(r)),
            None => {
                self.waiting.insert(id, waiter);
            }
        }
    }
}
