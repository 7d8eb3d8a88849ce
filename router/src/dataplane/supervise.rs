//! Keeping the data plane's workers running.
//!
//! A worker whose loop fails for good (its ring cannot be entered or set up, an input kept
//! failing through its backoff, a panic) reports with a [`WorkerExit`] and hands back its
//! engine, TAP queue and sockets. The [`Supervisor`] starts it again on those same parts after
//! a backoff, a bounded number of times; an io_uring worker that keeps failing falls back to
//! the epoll backend; an epoll worker that keeps failing is given up, and its TAP queue and
//! socket with it. Each step is logged, and each worker's backend, state and restarts show in
//! `/report` and `/metrics`.
//!
//! The decisions are [`Supervision`]'s (time in, [`Recovery`] out); the [`Supervisor`]
//! carries them out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataplane::engine::{Counters, Snapshot};
use crate::dataplane::worker::{
    self, Backend, Backoff, ControlSender, ExitSender, IoCounters, ToWorker, Worker, WorkerExit,
    WorkerParts, WorkerSetup, WorkerSockets, WorkerState,
};
use crate::mesh::sleeve::Udp;
use crate::sys::tap::TapQueue;

/// How often and how soon failed workers are started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts on one backend after failures in a row before the next step (falling back to
    /// epoll, or giving up).
    pub restarts: u32,
    /// Wait before the first restart; each further one waits twice as long.
    pub first_backoff: Duration,
    /// Longest wait before a restart.
    pub max_backoff: Duration,
    /// A worker that ran this long before failing starts its count of failures over.
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            restarts: 3,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            healthy_after: Duration::from_secs(60),
        }
    }
}

/// What to do about a worker that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Start it again on `backend` after `after`.
    Restart {
        /// The backend to start it on (epoll when it falls back).
        backend: Backend,
        /// How long to wait first.
        after: Duration,
        /// Which restart in a row on that backend this is, from 1.
        attempt: u32,
    },
    /// Leave it stopped.
    GiveUp,
}

/// The restart decisions for one worker.
#[derive(Debug, Clone)]
pub struct Supervision {
    policy: RestartPolicy,
    backend: Backend,
    backoff: Backoff,
    started: Instant,
}

impl Supervision {
    /// A worker started on `backend` at `now`.
    pub fn new(policy: RestartPolicy, backend: Backend, now: Instant) -> Self {
        Supervision {
            policy,
            backend,
            backoff: Self::backoff(&policy),
            started: now,
        }
    }

    fn backoff(policy: &RestartPolicy) -> Backoff {
        Backoff::new(policy.first_backoff, policy.max_backoff, policy.restarts)
    }

    /// The worker failed at `now`: what to do.
    pub fn handle_exit(&mut self, now: Instant) -> Recovery {
        if now.saturating_duration_since(self.started) >= self.policy.healthy_after {
            self.backoff.succeed();
        }
        if let Some(after) = self.backoff.fail() {
            return Recovery::Restart {
                backend: self.backend,
                after,
                attempt: self.backoff.failures(),
            };
        }
        match self.backend {
            Backend::IoUring => {
                self.backend = Backend::Epoll;
                self.backoff = Self::backoff(&self.policy);
                match self.backoff.fail() {
                    Some(after) => Recovery::Restart {
                        backend: Backend::Epoll,
                        after,
                        attempt: self.backoff.failures(),
                    },
                    // A policy of no restarts at all still falls back once: epoll is
                    // another backend, not another try of the same.
                    None => Recovery::Restart {
                        backend: Backend::Epoll,
                        after: self.policy.first_backoff,
                        attempt: 1,
                    },
                }
            }
            Backend::Epoll => Recovery::GiveUp,
        }
    }

    /// The worker was started again at `now`.
    pub fn handle_started(&mut self, now: Instant) {
        self.started = now;
    }

    /// The backend the worker runs or is about to run.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// One worker's place.
struct Slot {
    setup: WorkerSetup,
    counters: Arc<Counters>,
    supervision: Supervision,
    running: Option<Worker>,
    /// A restart waiting for its time.
    pending: Option<(Instant, Backend, WorkerParts)>,
}

/// The data plane's workers: starts them, passes them what the control plane says, and
/// restarts those that fail. Owned by the daemon's control task, which feeds it the
/// [`WorkerExit`]s that arrive on the channel given to [`Supervisor::new`] and calls
/// [`Supervisor::handle_timeout`] at [`Supervisor::poll_timeout`].
pub struct Supervisor {
    slots: Vec<Slot>,
    control: ControlSender,
    exits: ExitSender,
    policy: RestartPolicy,
    snapshot: Option<Arc<Snapshot>>,
}

impl Supervisor {
    /// No workers yet; theirs will send special frames to `control` and report failures on
    /// `exits`.
    pub fn new(control: ControlSender, exits: ExitSender, policy: RestartPolicy) -> Self {
        Supervisor {
            slots: Vec::new(),
            control,
            exits,
            policy,
            snapshot: None,
        }
    }

    /// Starts worker `setup.index` (which must be the next index) on `backend`, with a fresh
    /// engine and counters.
    pub fn start(
        &mut self,
        backend: Backend,
        setup: WorkerSetup,
        tap: TapQueue,
        sockets: WorkerSockets,
        now: Instant,
    ) -> std::io::Result<()> {
        debug_assert_eq!(
            setup.index,
            self.slots.len(),
            "workers start in index order"
        );
        let counters = Arc::new(Counters::default());
        let parts = WorkerParts::new(&setup, tap, sockets, Arc::clone(&counters));
        let worker = worker::start(
            backend,
            setup.clone(),
            parts,
            self.snapshot.clone(),
            (self.control.clone(), self.exits.clone()),
        )?;
        self.slots.push(Slot {
            setup,
            counters,
            supervision: Supervision::new(self.policy, backend, now),
            running: Some(worker),
            pending: None,
        });
        Ok(())
    }

    /// How many workers there are, running or not.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Each worker's counters, in index order; they stay the same across restarts.
    pub fn counters(&self) -> Vec<Arc<Counters>> {
        self.slots.iter().map(|s| Arc::clone(&s.counters)).collect()
    }

    /// Gives every worker a new forwarding snapshot; a worker started (or restarted) later
    /// starts with it.
    pub fn publish(&mut self, snapshot: Arc<Snapshot>) {
        for w in self.slots.iter().filter_map(|s| s.running.as_ref()) {
            w.send(ToWorker::Snapshot(Arc::clone(&snapshot)));
        }
        self.snapshot = Some(snapshot);
    }

    /// Sends a control datagram (heartbeat, probe) through the first worker that runs (one
    /// that has just failed, its report not yet handled, is passed over); false when none
    /// runs.
    pub fn send_datagram(&self, udp: Udp) -> bool {
        let mut msg = ToWorker::Send(udp);
        for w in self.slots.iter().filter_map(|s| s.running.as_ref()) {
            match w.deliver(msg) {
                Ok(()) => return true,
                Err(back) => msg = back,
            }
        }
        false
    }

    /// A worker failed: waits for its thread and schedules its restart, or gives it up.
    pub fn handle_exit(&mut self, exit: WorkerExit, now: Instant) {
        let WorkerExit {
            index,
            backend,
            error,
            parts,
        } = exit;
        let Some(slot) = self.slots.get_mut(index) else {
            tracing::error!("Data plane: a worker {index} that was never started reported");
            return;
        };
        if let Some(w) = slot.running.take() {
            // It has sent its exit as the last thing it does.
            w.stop();
        }
        match slot.supervision.handle_exit(now) {
            Recovery::Restart {
                backend: next,
                after,
                attempt,
            } => {
                if next == backend {
                    tracing::warn!(
                        "Data plane: restarting worker {index} on {next} in {after:?} \
                         (restart {attempt} of {}) after: {error}",
                        self.policy.restarts
                    );
                } else {
                    tracing::warn!(
                        "Data plane: worker {index} keeps failing on {backend}; \
                         falling back to {next} in {after:?}; last failure: {error}"
                    );
                }
                slot.counters.io.set_state(WorkerState::Restarting);
                slot.pending = Some((now + after, next, parts));
            }
            Recovery::GiveUp => {
                tracing::error!(
                    "Data plane: worker {index} keeps failing on {backend}; giving it up \
                     (its TAP queue and socket carry nothing from now on); last failure: {error}"
                );
                slot.counters.io.set_state(WorkerState::Failed);
            }
        }
    }

    /// When the next restart is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.pending.as_ref().map(|(due, _, _)| *due))
            .min()
    }

    /// Starts the workers whose restart is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if slot.pending.as_ref().is_none_or(|(due, _, _)| *due > now) {
                continue;
            }
            let Some((_, backend, parts)) = slot.pending.take() else {
                continue;
            };
            let index = slot.setup.index;
            match worker::start(
                backend,
                slot.setup.clone(),
                parts,
                self.snapshot.clone(),
                (self.control.clone(), self.exits.clone()),
            ) {
                Ok(w) => {
                    IoCounters::add(&slot.counters.io.restarts, 1);
                    slot.supervision.handle_started(now);
                    slot.running = Some(w);
                    tracing::info!("Data plane: worker {index} restarted on {backend}");
                }
                Err(e) => {
                    // The thread was not created: its parts went with the closure.
                    tracing::error!("Data plane: cannot restart worker {index}: {e}");
                    slot.counters.io.set_state(WorkerState::Failed);
                }
            }
        }
    }

    /// Stops every running worker and drops the parts of those waiting for a restart.
    pub fn stop(&mut self) {
        for slot in self.slots.drain(..) {
            if let Some(w) = slot.running {
                w.stop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            restarts: 3,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            healthy_after: Duration::from_secs(60),
        }
    }

    fn restart(backend: Backend, ms: u64, attempt: u32) -> Recovery {
        Recovery::Restart {
            backend,
            after: Duration::from_millis(ms),
            attempt,
        }
    }

    /// Fails at once after each (re)start, as a worker whose ring cannot be set up would.
    fn fail_quickly(s: &mut Supervision, start: &mut Instant) -> Recovery {
        let decision = s.handle_exit(*start + Duration::from_millis(1));
        if let Recovery::Restart { after, .. } = decision {
            *start += after;
            s.handle_started(*start);
        }
        decision
    }

    #[test]
    fn an_io_uring_worker_is_restarted_with_backoff_then_falls_back_to_epoll_then_given_up() {
        let mut now = Instant::now();
        let mut s = Supervision::new(policy(), Backend::IoUring, now);

        let decisions: Vec<Recovery> = (0..8).map(|_| fail_quickly(&mut s, &mut now)).collect();

        assert_eq!(
            decisions,
            vec![
                restart(Backend::IoUring, 100, 1),
                restart(Backend::IoUring, 200, 2),
                restart(Backend::IoUring, 300, 3),
                restart(Backend::Epoll, 100, 1),
                restart(Backend::Epoll, 200, 2),
                restart(Backend::Epoll, 300, 3),
                Recovery::GiveUp,
                Recovery::GiveUp,
            ]
        );
        assert_eq!(s.backend(), Backend::Epoll);
    }

    #[test]
    fn a_worker_that_ran_long_enough_starts_its_count_over() {
        let start = Instant::now();
        let mut s = Supervision::new(policy(), Backend::IoUring, start);
        let mut now = start;
        for _ in 0..3 {
            fail_quickly(&mut s, &mut now);
        }

        let later = now + policy().healthy_after;

        assert_eq!(
            s.handle_exit(later),
            restart(Backend::IoUring, 100, 1),
            "a failure an hour later is not the fourth in a row"
        );
    }

    #[test]
    fn without_restarts_an_io_uring_worker_still_falls_back_once() {
        let now = Instant::now();
        let mut s = Supervision::new(
            RestartPolicy {
                restarts: 0,
                ..policy()
            },
            Backend::IoUring,
            now,
        );
        assert_eq!(s.handle_exit(now), restart(Backend::Epoll, 100, 1));
        s.handle_started(now);
        assert_eq!(s.handle_exit(now), Recovery::GiveUp);
    }
}
