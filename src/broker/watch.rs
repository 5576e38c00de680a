//! The revocation watch: the store's history from a cursor, gap-free and in
//! order, then what is committed next, with a heartbeat carrying the head while
//! caught up; refused (or ended) with a resync when the store cannot serve the
//! cursor. One stream for both edges: gRPC `WatchRevocations` and the OAuth
//! front door's Server-Sent Events feed only spell what it yields
//! (`revocation::Watched`). Also the reads it makes and the active-task count
//! the metrics report.
use super::{Broker, BrokerError};
use crate::domain::Event;
use crate::identity::Caller;
use crate::revocation::{Anchor, Pace, Resync, Watch, WatchError, Watched, resynced};
use crate::store::RevocationBounds;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Events read from the store at a time.
const BATCH: u32 = 500;

impl Broker {
    /// Opens a watch for `caller` after sequence `after` (0: from the start),
    /// whose event the client may say was at `after_at`. Ends quietly at
    /// `shutdown`; otherwise only with an error (or when the client goes).
    pub async fn watch_revocations(
        self: &Arc<Self>,
        caller: &Caller,
        after: u64,
        after_at: Option<OffsetDateTime>,
        pace: Pace,
        shutdown: CancellationToken,
    ) -> Result<Watch, WatchError> {
        let broker = self.clone();
        let caller = caller.clone();
        let Pace { poll, heartbeat } = pace;
        // Subscribe before the first read, so nothing committed in between is missed.
        let mut wake = self.hub.subscribe();
        // A cursor past the store's head (a restored store, a lagging standby) is
        // refused: the events later committed under its numbers would never be
        // sent, while heartbeats would say they had been. So is one before the
        // history kept: the events after it that were pruned would never be sent.
        let bounds = self.store.revocation_bounds().await?;
        if let Some(refused) = Resync::at_open(after, bounds) {
            // Counted, not logged one by one: a verifier may ask again and again.
            resynced(refused.why);
            tracing::debug!(caller = %caller.id, after, first = bounds.first, head = bounds.head, why = ?refused.why, "revocation watch refused: the store cannot serve the cursor; the verifier must resync");
            return Err(refused.into());
        }
        tracing::info!(caller = %caller.id, after, "revocation watch opened");
        let stream = async_stream::try_stream! {
            // The event the stream stands on; every read starts at it again, so a
            // store whose history was replaced under the stream is noticed.
            let mut anchor = Anchor::claimed(after, after_at);
            // Quiet since: a heartbeat goes out once the stream has sent nothing
            // for `heartbeat`, so the verifier can tell quiet from cut off.
            let mut quiet_since = tokio::time::Instant::now();
            // The first time the stream is caught up it says so at once: a
            // verifier counts itself synced (and serves) only from a heartbeat,
            // which would otherwise come a whole `heartbeat` after it connects.
            let mut announced = false;
            loop {
                // Always read from the store by cursor: a watcher that fell behind is
                // caught up from there, never skipped.
                loop {
                    let batch = broker.store.revocations_after(anchor.read_after(), BATCH).await?;
                    let full = batch.len() as u32 == BATCH;
                    let seen = match anchor.check(&batch) {
                        Ok(n) => n,
                        Err(diverged) => {
                            let bounds = broker.store.revocation_bounds().await?;
                            let resync = Resync::diverged(anchor.seq(), bounds, diverged);
                            resynced(resync.why);
                            tracing::warn!(caller = %caller.id, cursor = anchor.seq(), first = bounds.first, head = bounds.head, why = ?resync.why, "revocation watch ended: the store no longer holds what the stream sent; the verifier must resync");
                            Err(WatchError::Resync(resync))?
                        }
                    };
                    for ev in batch.into_iter().skip(seen) {
                        quiet_since = tokio::time::Instant::now();
                        yield Watched::Event(ev.clone());
                        anchor = Anchor::Sent(ev);
                    }
                    if !full {
                        break;
                    }
                }
                // Caught up: the read above found the anchor and nothing after it,
                // so the anchor is the store's head. Only now may a heartbeat say
                // so; one due while waiting below comes back here first.
                if !announced || quiet_since.elapsed() >= heartbeat {
                    announced = true;
                    quiet_since = tokio::time::Instant::now();
                    yield Watched::Heartbeat { head: anchor.seq(), at: broker.clock.now() };
                }
                // The stream may not outlive the caller's SVID: it ends when the
                // certificate does, and the verifier reconnects with a fresh one.
                let left = caller.valid_until - broker.clock.now().unix_timestamp();
                if left <= 0 {
                    Err(WatchError::SvidExpired)?;
                }
                let beat_at = quiet_since + heartbeat;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = wake.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(poll.min(Duration::from_secs(left as u64))) => {}
                    // Due: read the store again, then send it (above).
                    _ = tokio::time::sleep_until(beat_at) => {}
                }
            }
        };
        Ok(Box::pin(stream))
    }

    /// Up to `limit` revocation events with a sequence above `after`, in order.
    pub async fn revocations_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>, BrokerError> {
        Ok(self.store.revocations_after(after, limit).await?)
    }

    /// Where the revocation history the store keeps starts (older events were
    /// pruned) and its last event (0: none).
    pub async fn revocation_bounds(&self) -> Result<RevocationBounds, BrokerError> {
        Ok(self.store.revocation_bounds().await?)
    }

    /// Active tasks, all replicas', for the metrics gauge.
    pub async fn count_active_tasks(&self) -> Result<u64, BrokerError> {
        Ok(self.store.count_active_tasks().await?)
    }
}
