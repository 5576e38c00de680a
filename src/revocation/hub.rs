//! Fan-out: watchers wait for "something past your cursor was committed" and then
//! read from the store by cursor, so a slow or lagging watcher is caught up from the
//! store and never skips an event.
use tokio::sync::watch;

/// The highest revocation sequence known to be committed.
#[derive(Clone)]
pub struct Hub {
    latest: watch::Sender<u64>,
}

impl Hub {
    pub fn new(latest: u64) -> Self {
        Hub {
            latest: watch::Sender::new(latest),
        }
    }

    /// Called after a revocation commits.
    pub fn committed(&self, seq: u64) {
        self.latest.send_if_modified(|cur| {
            if seq > *cur {
                *cur = seq;
                true
            } else {
                false
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    pub fn watchers(&self) -> usize {
        self.latest.receiver_count()
    }
}
