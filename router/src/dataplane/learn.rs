//! MAC learning shared between workers.
//!
//! Each worker switches with its own [`MacCache`](crate::switch::MacCache), so the hot path
//! takes no lock. But a flow's frames from the bridge and its answers from the peer may be
//! handled by different workers (the TAP queue and the reuseport socket are picked by
//! different hashes), and a worker that never saw a MAC floods frames for it along the
//! broadcast tree. So each worker posts what it learned (new and moved MACs at once, every
//! recently seen MAC once a minute) to the others' channels, and takes its own mail between
//! batches; neither side takes a lock. Entries carry the time they were last seen, so the receiver keeps the newer one
//! and a MAC still ages out ten minutes after the last worker saw it.

use std::sync::{mpsc, Arc, Mutex};
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

/// What one worker posts at once; shared by every receiver.
pub type Post = Arc<[Learning]>;

/// The mailboxes of all workers of one router: a channel per worker (sending and receiving
/// take no lock), whose receiving end the worker takes when it starts.
#[derive(Debug)]
pub struct LearnBus {
    senders: Vec<mpsc::Sender<Post>>,
    /// Receiving ends not yet taken; locked only when a worker starts.
    inboxes: Mutex<Vec<Option<mpsc::Receiver<Post>>>>,
}

impl LearnBus {
    /// A bus for `workers` workers, indexed from 0.
    pub fn new(workers: usize) -> Arc<Self> {
        let (senders, inboxes) = (0..workers)
            .map(|_| {
                let (tx, rx) = mpsc::channel();
                (tx, Some(rx))
            })
            .unzip();
        Arc::new(LearnBus {
            senders,
            inboxes: Mutex::new(inboxes),
        })
    }

    /// Worker `worker`'s receiving end; `None` if taken before or beyond the bus.
    pub fn inbox(&self, worker: usize) -> Option<mpsc::Receiver<Post>> {
        let mut inboxes = self.inboxes.lock().unwrap_or_else(|e| e.into_inner());
        inboxes.get_mut(worker)?.take()
    }

    /// Posts `items` learned by worker `from` to every other worker. A worker that has
    /// stopped has dropped its inbox; sending to it fails harmlessly.
    pub fn post(&self, from: usize, items: &[Learning]) {
        if items.is_empty() {
            return;
        }
        let post: Post = items.into();
        for (i, tx) in self.senders.iter().enumerate() {
            if i != from {
                let _ = tx.send(Arc::clone(&post));
            }
        }
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

    fn take(inbox: &mpsc::Receiver<Post>) -> Vec<Learning> {
        inbox.try_iter().flat_map(|p| p.to_vec()).collect()
    }

    #[test]
    fn mail_reaches_every_other_worker_once() {
        let bus = LearnBus::new(3);
        let inboxes: Vec<_> = (0..3).map(|i| bus.inbox(i).unwrap()).collect();
        assert!(bus.inbox(0).is_none(), "an inbox is taken once");
        let sent = vec![learning(1), learning(2)];
        bus.post(1, &sent);
        assert!(
            take(&inboxes[1]).is_empty(),
            "the sender gets none of its own mail"
        );
        for worker in [0, 2] {
            assert_eq!(take(&inboxes[worker]), sent);
            assert!(take(&inboxes[worker]).is_empty(), "taken mail is gone");
        }
    }

    #[test]
    fn a_stopped_worker_does_not_hold_the_others_up() {
        let bus = LearnBus::new(2);
        drop(bus.inbox(0));
        let inbox = bus.inbox(1).unwrap();
        let (one, two) = (learning(1), learning(2));
        bus.post(0, &[one]);
        bus.post(1, &[two]);
        assert_eq!(take(&inbox), vec![one]);
        assert!(bus.inbox(5).is_none());
    }
}
