//! MAC learning shared between workers.
//!
//! Each worker switches with its own [`MacCache`](crate::switch::MacCache), so the hot path
//! takes no lock. But a flow's frames from the bridge and its answers from the peer may be
//! handled by different workers (the TAP queue and the reuseport socket are picked by
//! different hashes), and a worker that never saw a MAC floods frames for it along the
//! broadcast tree. So each worker posts what it learned (new and moved MACs at once, every
//! recently seen MAC once a minute) to the others' mailboxes, and takes its own mail between
//! batches. Entries carry the time they were last seen, so the receiver keeps the newer one
//! and a MAC still ages out ten minutes after the last worker saw it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::ids::PeerName;
use crate::switch::Mac;

/// One learned MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learning {
    /// The MAC.
    pub mac: Mac,
    /// The peer it lives at.
    pub peer: PeerName,
    /// When it was last seen as a frame's source.
    pub seen: Instant,
}

#[derive(Debug, Default)]
struct Mailbox {
    /// Set while `items` holds something, so an empty mailbox costs one load to check.
    pending: AtomicBool,
    items: Mutex<Vec<Learning>>,
}

/// The mailboxes of all workers of one router.
#[derive(Debug)]
pub struct LearnBus {
    boxes: Vec<Mailbox>,
}

impl LearnBus {
    /// A bus for `workers` workers, indexed from 0.
    pub fn new(workers: usize) -> Arc<Self> {
        Arc::new(LearnBus {
            boxes: (0..workers).map(|_| Mailbox::default()).collect(),
        })
    }

    /// Posts `items` learned by worker `from` to every other worker.
    pub fn post(&self, from: usize, items: &[Learning]) {
        for (i, mailbox) in self.boxes.iter().enumerate() {
            if i == from {
                continue;
            }
            // A poisoned lock means a worker panicked while posting; its items are still a
            // valid list, so carry on with them.
            let mut held = mailbox.items.lock().unwrap_or_else(|e| e.into_inner());
            held.extend_from_slice(items);
            mailbox.pending.store(true, Ordering::Release);
        }
    }

    /// Takes worker `worker`'s mail into `into` (left as is when there is none).
    pub fn take(&self, worker: usize, into: &mut Vec<Learning>) {
        let Some(mailbox) = self.boxes.get(worker) else {
            return;
        };
        if !mailbox.pending.load(Ordering::Acquire) {
            return;
        }
        let mut held = mailbox.items.lock().unwrap_or_else(|e| e.into_inner());
        mailbox.pending.store(false, Ordering::Release);
        into.append(&mut held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learning(last: u8) -> Learning {
        Learning {
            mac: Mac([2, 0, 0, 0, 0, last]),
            peer: PeerName::from_bytes([0xaa, 0, 0, 0, 0, 1]),
            seen: Instant::now(),
        }
    }

    #[test]
    fn mail_reaches_every_other_worker_once() {
        let bus = LearnBus::new(3);
        let sent = vec![learning(1), learning(2)];
        bus.post(1, &sent);
        let mut mail = Vec::new();
        bus.take(1, &mut mail);
        assert!(mail.is_empty(), "the sender gets none of its own mail");
        for worker in [0, 2] {
            let mut mail = Vec::new();
            bus.take(worker, &mut mail);
            assert_eq!(mail, sent);
            let mut again = Vec::new();
            bus.take(worker, &mut again);
            assert!(again.is_empty(), "taken mail is gone");
        }
    }

    #[test]
    fn a_worker_beyond_the_bus_gets_nothing() {
        let bus = LearnBus::new(1);
        bus.post(0, &[learning(1)]);
        let mut mail = Vec::new();
        bus.take(5, &mut mail);
        assert!(mail.is_empty());
    }
}
