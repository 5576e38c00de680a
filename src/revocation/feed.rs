//! Cross-replica fan-out: follow the store's notices of committed revocations
//! (PostgreSQL LISTEN/NOTIFY) and wake this broker's watch streams, which then
//! read the new events from the store by cursor. A lost connection or a missed
//! notice costs nothing but time: after every reconnect the hub is caught up from
//! the store's last sequence, and watch streams also re-read on a poll interval.
use super::Hub;
use crate::store::{Notice, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs until `cancel`: listens, wakes `hub` on every notice, reconnects with
/// backoff. Then closes the hub: the broker is shutting down, and every watch
/// stream waiting on it ends.
pub async fn follow_store(store: Arc<dyn Store>, hub: Hub, cancel: CancellationToken) {
    follow(store, &hub, &cancel).await;
    hub.close();
}

/// Returns only once `cancel` is cancelled.
async fn follow(store: Arc<dyn Store>, hub: &Hub, cancel: &CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    let mut was_down = false;
    loop {
        let feed = tokio::select! {
            _ = cancel.cancelled() => return,
            f = store.revocation_feed() => f,
        };
        match feed {
            Ok(mut feed) => {
                if was_down {
                    info!("listening for revocations from other replicas again");
                }
                backoff = BACKOFF_MIN;
                catch_up(store.as_ref(), hub).await;
                if was_down {
                    // Deaf meanwhile: a decision or a new key may have been missed.
                    hub.approval_decided();
                    hub.keys_changed();
                }
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => return,
                        n = feed.next() => n,
                    };
                    match next {
                        Ok(Some(Notice::Revocation(seq))) => hub.committed(seq),
                        Ok(Some(Notice::ApprovalDecided)) => hub.approval_decided(),
                        Ok(Some(Notice::KeysChanged)) => hub.keys_changed(),
                        Ok(None) => {
                            debug!("revocation feed reconnected; catching up from the store");
                            catch_up(store.as_ref(), hub).await;
                            // A decision or a new key may have been missed.
                            hub.approval_decided();
                            hub.keys_changed();
                        }
                        Err(error) => {
                            warn!(%error, "revocation feed lost; watch streams fall back to polling until it is back");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                if !was_down {
                    warn!(%error, "cannot listen for revocations from other replicas; will retry");
                }
            }
        }
        was_down = true;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Moves the hub to the store's last sequence, for notices missed while deaf.
async fn catch_up(store: &dyn Store, hub: &Hub) {
    match store.last_revocation_seq().await {
        Ok(seq) => hub.committed(seq),
        Err(error) => debug!(%error, "could not read the last revocation sequence"),
    }
}
