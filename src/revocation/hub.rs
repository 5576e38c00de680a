//! Fan-out: watchers wait for "something past your cursor was committed" and then
//! read from the store by cursor, so a slow or lagging watcher is caught up from the
//! store and never skips an event.
use std::sync::Arc;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// The highest revocation sequence known to be committed, and a wake-up for
/// waits on step-up approval decisions (made on any replica).
#[derive(Clone)]
pub struct Hub {
    latest: watch::Sender<u64>,
    approvals: Arc<Notify>,
    keys: Arc<Notify>,
    /// Cancelled at shutdown, ending the watch streams that wait on the hub.
    closing: CancellationToken,
}

impl Hub {
    pub fn new(latest: u64) -> Self {
        Hub {
            latest: watch::Sender::new(latest),
            approvals: Arc::new(Notify::new()),
            keys: Arc::new(Notify::new()),
            closing: CancellationToken::new(),
        }
    }

    /// Called at shutdown (by the follower, `follow_store`, which runs until
    /// then): the watch streams opened on [`Hub::closing`] end.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Cancelled once the hub is closed: the shutdown of a watch stream whose
    /// edge is not handed the broker's own (the OAuth front door's feed).
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Called when another broker registered a new signing key.
    pub fn keys_changed(&self) {
        self.keys.notify_one();
    }

    /// Wakes the key refresher (one permit is kept if it is busy).
    pub fn keys(&self) -> &Notify {
        &self.keys
    }

    /// Called when an approval decision commits, here or on another replica.
    pub fn approval_decided(&self) {
        self.approvals.notify_waiters();
    }

    /// Waits for approval decisions: enable the returned future before reading
    /// the state it waits to change.
    pub fn approvals(&self) -> &Notify {
        &self.approvals
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
