//! Failing fast while the store is down. A background probe keeps the store's
//! [`Health`]; a store gated by it (`SqlStore::gated`) makes sure that, once the probe has found it down,
//! every new call answers `Unavailable` at once instead of each waiting out the
//! connect timeout. A call that fails as unavailable makes the probe look soon
//! (at most every [`SUSPECT_SPACING`]); the probe needs two failures in a row to
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
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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

    pub(super) fn set(&self, status: Status) {
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

    /// A call that met an unavailable store makes the probe look.
    pub(super) fn watch<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(r, Err(StoreError::Unavailable(_))) {
            self.suspect.notify_one();
        }
        r
    }
}

/// The least time between probes that calls' failures ask for, so a store that
/// is merely overloaded is not also flooded with probes.
pub const SUSPECT_SPACING: Duration = Duration::from_millis(100);

/// Probes the store every `every` while it answers; once two probes in a row do
/// not (failed or timed out), marks it down and probes again after 50 ms,
/// doubling up to `every`, until it answers. A call that met an unavailable store
/// makes it probe sooner.
pub async fn probe(
    store: Arc<dyn Store>,
    health: Arc<Health>,
    every: Duration,
    timeout: Duration,
    cancel: CancellationToken,
) {
    const FIRST_RETRY: Duration = Duration::from_millis(50);
    let mut retry = FIRST_RETRY;
    // A failure while up: confirmed by the next probe before the gate closes.
    let mut doubt: Option<StoreError> = None;
    loop {
        let answer = match tokio::time::timeout(timeout, store.ping()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {}ms",
                timeout.as_millis()
            ))),
        };
        let wait = match (answer, health.status()) {
            (Ok(()), Status::Up) => {
                doubt = None;
                every
            }
            (Ok(()), Status::Down { since, .. }) => {
                health.set(Status::Up);
                retry = FIRST_RETRY;
                info!(
                    down_for_ms = since.elapsed().as_millis() as u64,
                    "the store answers again; serving"
                );
                every
            }
            (Err(error), Status::Up) if doubt.is_none() => {
                doubt = Some(error);
                FIRST_RETRY
            }
            (Err(error), Status::Up) => {
                doubt = None;
                warn!(%error, "the store does not answer; calls fail fast (UNAVAILABLE) until it does");
                crate::metrics::STORE_OUTAGES.inc();
                health.set(Status::Down {
                    since: Instant::now(),
                    error: error.to_string(),
                });
                retry = FIRST_RETRY;
                retry
            }
            (Err(error), Status::Down { since, .. }) => {
                health.set(Status::Down {
                    since,
                    error: error.to_string(),
                });
                retry = (retry * 2).min(every.max(FIRST_RETRY));
                retry
            }
        };
        let at = tokio::time::Instant::now() + wait;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(at) => {}
            _ = health.suspect.notified(), if health.is_up() && doubt.is_none() => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(SUSPECT_SPACING.min(wait)) => {}
                }
            }
        }
    }
}
