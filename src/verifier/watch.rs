//! Following `WatchRevocations` in the background: apply each event once, in
//! order, remember the cursor and when the broker was last heard, reconnect with
//! backoff and resume from the cursor. When the broker says its store cannot
//! serve the cursor (FAILED_PRECONDITION: the store was restored or failed over,
//! and its sequence numbers may now name other events), resync: the set is
//! incomplete until the whole history has been applied again from sequence 0 and
//! a heartbeat has come, and checks are stale meanwhile.
use super::revocations::{Revocation, RevocationSet, Revoked};
use crate::api::pb;
use crate::api::pb::verifier_service_client::VerifierServiceClient;
use crate::api::pb::watch_revocations_response::Kind;
use crate::clock::Clock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How often the revocation set is pruned, in seconds of the injected clock.
const PRUNE_EVERY: i64 = 30;

/// What the follower writes and checks read.
pub(super) struct Shared {
    pub revocations: RwLock<RevocationSet>,
    /// The sequence of the last event applied: where a reconnect resumes.
    cursor: AtomicU64,
    /// The `at` of that event as received, sent back on a reconnect so that the
    /// broker can tell whether its event at the cursor is still the same one.
    cursor_at: Mutex<Option<prost_types::Timestamp>>,
    /// When the broker was last heard from, in milliseconds after `base`, plus one
    /// (0: never).
    heard: AtomicU64,
    base: Instant,
    /// True from a heartbeat on: the history has been replayed. False again while
    /// resyncing.
    synced: watch::Sender<bool>,
}

impl Shared {
    pub fn new(revocations: RevocationSet) -> Self {
        Shared {
            revocations: RwLock::new(revocations),
            cursor: AtomicU64::new(0),
            cursor_at: Mutex::new(None),
            heard: AtomicU64::new(0),
            base: Instant::now(),
            synced: watch::Sender::new(false),
        }
    }

    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }

    fn cursor_at(&self) -> Option<prost_types::Timestamp> {
        *self.cursor_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = rx.wait_for(|s| *s).await;
    }

    fn millis_since_base(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn heard_now(&self) {
        self.heard.store(
            self.millis_since_base().saturating_add(1),
            Ordering::Release,
        );
    }

    /// The broker's store no longer holds the history the set was built from:
    /// the set stops claiming completeness (checks are stale) and the next stream
    /// replays the store's whole history into it, from sequence 0, because the
    /// numbers past what the store kept may now name other events. The entries
    /// already kept stay until they expire: an entry only ever refuses tokens, so
    /// a revocation the restore lost stays in force here rather than being
    /// forgotten, and none the store holds can be hidden by it.
    pub fn resync(&self) {
        self.synced
            .send_if_modified(|s| std::mem::replace(s, false));
        *self.cursor_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.cursor.store(0, Ordering::Release);
    }

    /// Caught up since the last (re)sync, and heard from within `staleness`.
    pub fn is_fresh(&self, staleness: Duration) -> bool {
        let heard = self.heard.load(Ordering::Acquire);
        if heard == 0 || !self.is_synced() {
            return false;
        }
        let silent = self.millis_since_base().saturating_sub(heard - 1);
        u128::from(silent) <= staleness.as_millis()
    }

    /// Applies one message of the stream. `Err` means the stream cannot be trusted
    /// any more: it must be reopened, from the cursor or from the start.
    pub fn handle(&self, msg: pb::WatchRevocationsResponse, now: i64) -> Result<(), OutOfStep> {
        match msg.kind {
            Some(Kind::Event(ev)) => {
                let cursor = self.cursor();
                if ev.sequence <= cursor {
                    // Already applied (a replay after a reconnect): never twice.
                    self.heard_now();
                    return Ok(());
                }
                if cursor != 0 && ev.sequence != cursor + 1 {
                    // Old events may have been pruned by the broker; anything else
                    // is a broker bug, and skipping ahead is all we can do.
                    tracing::warn!(
                        after = cursor,
                        sequence = ev.sequence,
                        "revocation stream skipped sequence numbers"
                    );
                }
                let r = revocation(&ev, now);
                let mut set = self.revocations.write().unwrap_or_else(|p| p.into_inner());
                set.apply(r, now);
                // The cursor moves only once the event is in the set.
                *self.cursor_at.lock().unwrap_or_else(|p| p.into_inner()) = ev.at;
                self.cursor.store(ev.sequence, Ordering::Release);
                drop(set);
                self.heard_now();
                Ok(())
            }
            Some(Kind::Heartbeat(hb)) => {
                let cursor = self.cursor();
                if hb.sequence > cursor {
                    return Err(OutOfStep::Reopen(format!(
                        "heartbeat at sequence {} but the last event received is {cursor}",
                        hb.sequence
                    )));
                }
                if hb.sequence < cursor {
                    // The broker's store ends before what was applied (a broker
                    // of this version refuses such a cursor instead).
                    return Err(OutOfStep::Resync(format!(
                        "heartbeat at sequence {} but the last event applied is {cursor}",
                        hb.sequence
                    )));
                }
                self.heard_now();
                self.synced
                    .send_if_modified(|s| !std::mem::replace(s, true));
                Ok(())
            }
            // A message kind newer than this library: the broker is alive.
            None => {
                self.heard_now();
                Ok(())
            }
        }
    }

    fn prune(&self, now: i64) {
        self.revocations
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .prune(now);
    }
}

/// Why a stream cannot be followed further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OutOfStep {
    /// Something was missed: reopen from the cursor.
    Reopen(String),
    /// The broker's history no longer holds what was applied: resync.
    Resync(String),
}

/// The event as the revocation set keeps it. A target this library does not know
/// (a newer broker's, or none) is applied as "all": refusing too much until the
/// entry is pruned is safer than ignoring a revocation.
fn revocation(ev: &pb::RevocationEvent, now: i64) -> Revocation {
    use pb::revocation_target::Target;
    let target = match ev.target.as_ref().and_then(|t| t.target.as_ref()) {
        Some(Target::Token(jti)) => Revoked::Token(jti.clone()),
        Some(Target::Task(task)) => Revoked::Task(task.clone()),
        Some(Target::Agent(agent)) => Revoked::Agent(agent.clone()),
        Some(Target::Workflow(wf)) => Revoked::Workflow(wf.clone()),
        Some(Target::All(_)) => Revoked::All,
        None => {
            tracing::error!(
                sequence = ev.sequence,
                "revocation event without a target this verifier knows; applied as \"all\""
            );
            Revoked::All
        }
    };
    // Without a time, "now" covers at least every token issued before it.
    let at = ev.at.as_ref().map_or(now, |t| t.seconds);
    Revocation {
        sequence: ev.sequence,
        target,
        at,
    }
}

/// Settings of the follower.
pub(super) struct Follow {
    pub channel: Channel,
    pub shared: Arc<Shared>,
    pub clock: Arc<dyn Clock>,
    pub staleness: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub stop: CancellationToken,
}

enum Ended {
    Stopped,
    /// The stream broke; `progressed` when it delivered something first.
    Lost {
        progressed: bool,
    },
}

impl Follow {
    /// Runs until `stop` is cancelled.
    pub async fn run(self) {
        let mut backoff = self.backoff_min;
        let mut next_prune = 0;
        loop {
            match self.stream_once(&mut next_prune).await {
                Ended::Stopped => return,
                Ended::Lost { progressed: true } => backoff = self.backoff_min,
                Ended::Lost { progressed: false } => {}
            }
            let wait = jitter(backoff);
            tracing::debug!(
                after = self.shared.cursor(),
                wait_ms = wait.as_millis() as u64,
                "revocation stream: reconnecting"
            );
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = backoff.saturating_mul(2).min(self.backoff_max);
        }
    }

    /// The broker cannot serve the cursor (FAILED_PRECONDITION on
    /// `WatchRevocations`): start again from sequence 0, stale until caught up.
    fn resync(&self, why: &str) {
        tracing::warn!(
            after = self.shared.cursor(),
            %why,
            "revocation stream: the broker's store cannot serve the cursor; tokens are refused as stale until the history is replayed from 0"
        );
        self.shared.resync();
    }

    async fn stream_once(&self, next_prune: &mut i64) -> Ended {
        let after = self.shared.cursor();
        let mut client = VerifierServiceClient::new(self.channel.clone());
        let request = pb::WatchRevocationsRequest {
            after_sequence: after,
            after_event_at: self.shared.cursor_at(),
        };
        let opened = tokio::select! {
            _ = self.stop.cancelled() => return Ended::Stopped,
            r = tokio::time::timeout(self.staleness, client.watch_revocations(request)) => r,
        };
        let mut stream = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                self.resync(status.message());
                return Ended::Lost { progressed: false };
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), after, "revocation stream refused");
                return Ended::Lost { progressed: false };
            }
            Err(_) => {
                tracing::warn!(
                    after,
                    "revocation stream: no answer within the staleness bound"
                );
                return Ended::Lost { progressed: false };
            }
        };
        tracing::info!(after, "revocation stream open");
        let mut progressed = false;
        loop {
            // A stream silent past the staleness bound may be half-open: reopen it.
            let next = tokio::select! {
                _ = self.stop.cancelled() => return Ended::Stopped,
                m = tokio::time::timeout(self.staleness, stream.message()) => m,
            };
            let msg = match next {
                Ok(Ok(Some(msg))) => msg,
                Ok(Ok(None)) => {
                    tracing::info!(
                        after = self.shared.cursor(),
                        "revocation stream closed by the broker"
                    );
                    return Ended::Lost { progressed };
                }
                Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                    self.resync(status.message());
                    return Ended::Lost { progressed };
                }
                Ok(Err(status)) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "revocation stream broke");
                    return Ended::Lost { progressed };
                }
                Err(_) => {
                    tracing::warn!("revocation stream silent past the staleness bound");
                    return Ended::Lost { progressed };
                }
            };
            let now = self.clock.now().unix_timestamp();
            match self.shared.handle(msg, now) {
                Ok(()) => {}
                Err(OutOfStep::Reopen(why)) => {
                    tracing::warn!(%why, "revocation stream out of step; reopening from the cursor");
                    return Ended::Lost { progressed };
                }
                Err(OutOfStep::Resync(why)) => {
                    self.resync(&why);
                    return Ended::Lost { progressed };
                }
            }
            progressed = true;
            if now >= *next_prune {
                self.shared.prune(now);
                *next_prune = now + PRUNE_EVERY;
            }
        }
    }
}

/// Between half and all of `d`, so that many verifiers cut off together do not
/// reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    d / 2 + d / 2 * r / 1000
}

#[cfg(test)]
mod tests;
