//! Background workers: periodic jobs (expiry sweep, pruning, key heartbeat, audit sealing,
//! the active-task gauge), new keys announced by other replicas, SIGHUP, the
//! policy reloader. Each runs until the broker's cancellation, and logs a
//! failure once, not once per interval.
use crate::broker::Broker;
use crate::domain::retention::{Prunable, Retention};
use crate::policy::CedarPolicy;
use crate::store::gate::Status;
use crate::store::{Health, Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long a panicked worker waits before it starts again.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Runs a background worker made by `make` until `cancel`; one that panics is
/// logged, counted (`mayfly_worker_restarts_total{worker}`) and started again,
/// never left to vanish while the broker goes on without it.
pub(super) fn supervise<F, Fut>(
    worker: &'static str,
    cancel: CancellationToken,
    make: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let why = panic_message(e.into_panic());
                    error!(worker, panic = %why, "background worker panicked; restarting it");
                    crate::metrics::WORKER_RESTARTS
                        .get_or_create(&crate::metrics::Worker { worker })
                        .inc();
                }
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RESTART_AFTER) => {}
            }
        }
    })
}

/// What a panic said, in short.
pub(super) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    let s = if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    };
    s.chars().take(200).collect()
}

/// Runs `f` every `period` until cancelled.
async fn every<F, Fut>(period: Duration, cancel: CancellationToken, f: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => f().await,
        }
    }
}

/// SIGHUP, for a reloader: one listener each (every listener gets the signal).
/// Where it cannot be listened for, it never arrives and files reload on change.
pub(super) struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    pub fn listen(what: &str) -> Self {
        #[cfg(unix)]
        {
            let signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                Ok(s) => Some(s),
                Err(error) => {
                    warn!(%error, "cannot listen for SIGHUP; {what} reload on change only");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        {
            let _ = what;
            Hangup {}
        }
    }

    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.signal.as_mut() {
            if s.recv().await.is_some() {
                return;
            }
            // The signal driver is gone (the runtime is shutting down).
            self.signal = None;
        }
        std::future::pending::<()>().await
    }
}

/// Reloads the policy directory on SIGHUP and whenever its files change.
pub(super) async fn watch_policies(
    policy: Arc<CedarPolicy>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut hup = Hangup::listen("policies");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = hup.recv() => policy.reload().map(|_| true),
            _ = tick.tick() => policy.reload_if_changed(),
        };
        match result {
            Ok(true) => {
                info!(dir = %policy.dir().display(), policies = policy.status().policies, "policies reloaded")
            }
            Ok(false) => {}
            Err(e) => {
                error!(dir = %policy.dir().display(), error = %e, "policy reload failed; the previous policy set stays in force")
            }
        }
    }
}

/// Recounts the active tasks (all replicas) for `/metrics`; failing, the gauge
/// keeps its last reading (the store probe reports the outage).
pub(super) async fn active_task_gauge(b: Arc<Broker>, period: Duration, cancel: CancellationToken) {
    every(period, cancel, || async {
        if let Ok(n) = b.count_active_tasks().await {
            b.metrics().set_active_tasks(n);
        }
    })
    .await
}

/// Ends tasks past their deadline and revokes their tokens. At most one line per
/// sweep beyond the per-task errors, so an outage does not flood the log.
pub(super) async fn expiry_sweeper(b: Arc<Broker>, period: Duration, cancel: CancellationToken) {
    every(period, cancel, || async {
        let s = b.sweep_expired().await;
        if let Some(error) = &s.stopped {
            warn!(%error, ended = s.ended, failed = s.failed, "expiry sweep stopped early; will retry");
        } else if s.failed > 0 {
            warn!(
                ended = s.ended,
                failed = s.failed,
                "expiry sweep could not end some tasks; will retry"
            );
        } else if s.ended > 0 {
            info!(
                tasks = s.ended,
                "expired tasks ended and their tokens revoked"
            );
        }
    })
    .await
}

/// Prunes what is past its retention, a period after start and every period
/// since (a broker starting does not add a pass to its start-up burst): one
/// line per pass that pruned anything, one when a pass stops early (the store
/// is unavailable), none otherwise.
pub(super) async fn pruner(
    b: Arc<Broker>,
    retention: Retention,
    period: Duration,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = tokio::time::sleep(period) => {}
    }
    // What passes pruned but could not record, for the next pass's event.
    let unrecorded = std::sync::Mutex::new([0u64; Prunable::ALL.len()]);
    every(period, cancel, || async {
        let carried = *unrecorded.lock().unwrap_or_else(|p| p.into_inner());
        let p = b.prune(&retention, carried).await;
        {
            let mut u = unrecorded.lock().unwrap_or_else(|p| p.into_inner());
            for (i, n) in p.rows.iter().enumerate() {
                u[i] = if p.recorded { 0 } else { carried[i] + n };
            }
        }
        // Archived audit events an interrupted archive left in the store (at or
        // below the anchor; `mayfly audit archive` removes its own).
        match b.remove_archived_audit().await {
            Ok(0) => {}
            Ok(events) => info!(events, "removed archived audit events left in the store"),
            Err(error) => warn!(%error, "could not remove archived audit events; will retry"),
        }
        let [tokens, offers, approvals, tasks, revocations] = p.rows;
        if let Some(error) = &p.stopped {
            warn!(%error, tokens, offers, approvals, tasks, revocations, "pruning stopped early; will retry");
        } else if p.total() > 0 {
            info!(
                tokens,
                offers, approvals, tasks, revocations, "pruned what is past its retention"
            );
        }
    })
    .await
}

/// Renews the signing key's registration and re-reads every replica's keys
/// (forgetting those that stopped being published).
pub(super) async fn key_heartbeat(b: Arc<Broker>, period: Duration, cancel: CancellationToken) {
    every(period, cancel, || async {
        if let Err(error) = b.renew_key().await {
            warn!(%error, "could not renew the signing key registration; will retry");
        }
        if let Err(error) = b.refresh_keys().await {
            warn!(%error, "could not refresh the published keys; will retry");
        }
    })
    .await
}

/// Another replica registered a key: the JWKS served from memory takes it in,
/// retrying (with backoff) until the store answers.
pub(super) async fn key_notices(b: Arc<Broker>, cancel: CancellationToken) {
    const FIRST: Duration = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = b.hub().keys().notified() => {}
        }
        let mut retry = FIRST;
        while let Err(error) = b.refresh_keys().await {
            if retry == FIRST {
                warn!(%error, "could not read a newly announced signing key; retrying");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(Duration::from_secs(5));
        }
    }
}

/// Seals committed audit events that arrived unsealed (an older broker's,
/// during a rolling upgrade) into the hash chain: one line when
/// sealing starts failing and one when it recovers, not one per interval.
pub(super) async fn audit_sealer(b: Arc<Broker>, period: Duration, cancel: CancellationToken) {
    let failing = std::sync::atomic::AtomicBool::new(false);
    every(period, cancel, || async {
        use std::sync::atomic::Ordering::SeqCst;
        match b.seal_audit().await {
            Err(error) if !failing.swap(true, SeqCst) => {
                warn!(%error, "cannot seal audit events into the chain; will retry");
            }
            Ok(_) if failing.swap(false, SeqCst) => {
                info!("sealing audit events into the chain again");
            }
            _ => {}
        }
    })
    .await
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
            _ = health.suspected(), if health.is_up() && doubt.is_none() => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(SUSPECT_SPACING.min(wait)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_panics_is_started_again_and_counted() {
        let runs = Arc::new(AtomicU32::new(0));
        let cancel = CancellationToken::new();
        let before = crate::metrics::WORKER_RESTARTS
            .get_or_create(&crate::metrics::Worker { worker: "test" })
            .get();
        let handle = supervise("test", cancel.clone(), {
            let runs = runs.clone();
            move || {
                let runs = runs.clone();
                async move {
                    if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("boom");
                    }
                    // The third run works until cancelled.
                    std::future::pending::<()>().await
                }
            }
        });
        tokio::time::sleep(RESTART_AFTER * 3).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let after = crate::metrics::WORKER_RESTARTS
            .get_or_create(&crate::metrics::Worker { worker: "test" })
            .get();
        assert_eq!(after - before, 2);
        cancel.cancel();
        // The worker itself does not watch `cancel`: the supervisor stops with it
        // only between runs, so end the run by aborting.
        handle.abort();
    }
}
