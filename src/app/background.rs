//! Background workers: periodic jobs (expiry sweep, key heartbeat, audit sealing,
//! the active-task gauge), new keys announced by other replicas, SIGHUP, the
//! policy reloader. Each runs until the broker's cancellation, and logs a
//! failure once, not once per interval.
use crate::broker::Broker;
use crate::policy::CedarPolicy;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

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
        if let Ok(n) = b.store().count_active_tasks().await {
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

/// Seals committed audit events into the hash chain: one line when sealing starts
/// failing and one when it recovers, not one per interval.
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
