//! Failing fast while the store is down. A background probe keeps the store's
//! [`Health`]; a store gated by it (`SqlStore::gated`) makes sure that, once the probe has found it down,
//! every new call answers `Unavailable` at once instead of each waiting out the
//! connect timeout. A call that fails as unavailable makes the probe (a background
//! worker, `app::background::probe`) look soon; it needs two failures in a row to
//! call the store down, backs off while it stays down, and reopens the gate by
//! itself when it answers again.
//!
//! Reads already under way when the store is found down are given up (they
//! change nothing, and may otherwise wait on a dead connection for as long as
//! TCP takes to notice). Writes under way are left to finish or fail by
//! themselves: one may have committed (a budget counted, an approval spent, a
//! revocation made), and giving it up would report a change that happened as one
//! that did not. Nothing here changes what a call does when it runs: a token is
//! still returned only after its row committed. The gate only refuses sooner.
use super::*;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Notify, watch};

/// What the probe last found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Up,
    Down {
        since: Instant,
        /// The probe's error, for readiness and logs.
        error: String,
    },
}

/// The store's health, as the probe keeps it; read by the gate and `/readyz`.
pub struct Health {
    state: watch::Sender<Status>,
    /// Woken when a call met an unavailable store: probe now.
    suspect: Notify,
}

impl Health {
    /// Up until a probe says otherwise (the broker connected at start).
    pub fn new() -> Arc<Self> {
        Arc::new(Health {
            state: watch::Sender::new(Status::Up),
            suspect: Notify::new(),
        })
    }

    pub fn status(&self) -> Status {
        self.state.borrow().clone()
    }

    pub fn is_up(&self) -> bool {
        matches!(*self.state.borrow(), Status::Up)
    }

    pub(super) fn refusal(&self) -> StoreError {
        match &*self.state.borrow() {
            Status::Down { since, .. } => StoreError::Unavailable(format!(
                "the store has been unreachable for {}s; failing fast until it answers the broker's probe again",
                since.elapsed().as_secs()
            )),
            Status::Up => StoreError::Unavailable("the store became unreachable".into()),
        }
    }

    /// What the probe found.
    pub fn set(&self, status: Status) {
        self.state.send_replace(status);
    }
}

impl Health {
    /// A call that only reads: refused while down, and given up if the probe
    /// finds the store down while it waits.
    pub(super) async fn read<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut state = self.state.subscribe();
        if !matches!(*state.borrow_and_update(), Status::Up) {
            return Err(self.refusal());
        }
        tokio::select! {
            biased;
            r = call => self.watch(r),
            Ok(_) = state.wait_for(|s| !matches!(s, Status::Up)) => Err(self.refusal()),
        }
    }

    /// Waits until a call meets an unavailable store (the probe should look).
    pub async fn suspected(&self) {
        self.suspect.notified().await
    }

    /// A call that met an unavailable store makes the probe look.
    pub(super) fn watch<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(r, Err(StoreError::Unavailable(_))) {
            self.suspect.notify_one();
        }
        r
    }
}
