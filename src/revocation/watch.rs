//! What a revocation watch stream yields, whichever edge serves it (gRPC
//! `WatchRevocations`, the OAuth front door's Server-Sent Events feed): the
//! events in order, heartbeats carrying the head, and the typed reasons a watch
//! is refused or ends. The stream itself is the broker's (`broker::watch`).
use super::{Resync, ResyncReason};
use crate::domain::Event;
use crate::store::StoreError;
use futures::Stream;
use std::pin::Pin;
use std::time::Duration;
use time::OffsetDateTime;

/// What a watch stream sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    /// The next event of the store's history.
    Event(Event),
    /// Caught up: every event up to `head`, the store's last, has been sent.
    Heartbeat { head: u64, at: OffsetDateTime },
}

/// Why a watch was refused, or ended before its client or the broker ended it.
/// A stream yields at most one, as its last item.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The store cannot serve the cursor, or no longer holds what the stream
    /// sent: the verifier must resync from the start.
    #[error(transparent)]
    Resync(#[from] Resync),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream may not outlive the caller's SVID: the verifier reconnects
    /// with a fresh one and its cursor.
    #[error(
        "the client's X.509-SVID expired; reconnect with a fresh SVID and the last sequence seen"
    )]
    SvidExpired,
}

/// How a watch paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// How often the stream re-reads the store even without a wake-up: a
    /// safety net under the store's notifications (LISTEN/NOTIFY), which carry
    /// revocations committed through other replicas.
    pub poll: Duration,
    /// How long a caught-up stream stays quiet before it sends a heartbeat.
    pub heartbeat: Duration,
}

/// An open watch: events and heartbeats, then at most one error.
pub type Watch = Pin<Box<dyn Stream<Item = Result<Watched, WatchError>> + Send>>;

/// Counts a watch refused or ended for a resync (`mayfly_watch_resyncs_total`).
pub fn resynced(why: ResyncReason) {
    crate::metrics::WATCH_RESYNCS
        .get_or_create(&crate::metrics::Reason {
            reason: why.as_str(),
        })
        .inc();
}
