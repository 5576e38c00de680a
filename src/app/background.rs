//! Background workers: periodic jobs, SIGHUP, the policy reloader.
use crate::policy::CedarPolicy;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Runs `f` every `period` until cancelled.
pub(super) async fn every<F, Fut>(period: Duration, cancel: CancellationToken, f: F)
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
