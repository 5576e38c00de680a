//! Pruning what stopped mattering, after its retention: expired tokens, lapsed
//! offers and approvals, ended tasks, revocation events older than every token
//! they could concern. Many small batches, each its own transaction, with a
//! pause between them so writes never wait long behind one; one audit event
//! per pass that pruned anything, saying what and up to when.
use super::{Broker, BrokerError, SYSTEM_ACTOR};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::retention::{Prunable, Retention};
use serde_json::json;
use std::time::Duration;

/// Between two batches: room for the writes queued behind one (SQLite has a
/// single writer; PostgreSQL's connections are shared with minting).
const PAUSE: Duration = Duration::from_millis(2);

/// What one pass pruned.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Rows deleted, by kind, in [`Prunable::ALL`] order.
    pub rows: [u64; Prunable::ALL.len()],
    /// Why the pass stopped before the end (the store is unavailable), if it did.
    pub stopped: Option<BrokerError>,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.rows.iter().sum()
    }
}

impl Broker {
    /// Prunes, kind by kind, everything past `retention`, batch by batch until
    /// none is left; then records what it did.
    pub async fn prune(&self, retention: &Retention) -> Pruned {
        let now = self.now();
        let mut pruned = Pruned::default();
        'kinds: for (i, kind) in Prunable::ALL.into_iter().enumerate() {
            let before = retention.cutoff(kind, now);
            loop {
                match self.store.prune(kind, before, retention.batch).await {
                    Ok(n) => {
                        pruned.rows[i] += n;
                        crate::metrics::PRUNED
                            .get_or_create(&crate::metrics::Pruned {
                                kind: kind.as_str(),
                            })
                            .inc_by(n);
                        if n < u64::from(retention.batch) {
                            break;
                        }
                    }
                    Err(e) => {
                        pruned.stopped = Some(e.into());
                        break 'kinds;
                    }
                }
                tokio::time::sleep(PAUSE).await;
            }
        }
        if pruned.total() > 0 {
            let mut detail = serde_json::Map::new();
            for (i, kind) in Prunable::ALL.into_iter().enumerate() {
                detail.insert(
                    kind.as_str().into(),
                    json!({
                        "rows": pruned.rows[i],
                        "before": retention.cutoff(kind, now).unix_timestamp(),
                    }),
                );
            }
            let event = AuditEvent::new(now, SYSTEM_ACTOR, Action::RecordsPruned)
                .detail(serde_json::Value::Object(detail));
            if let Err(e) = self.store.append_audit(&event).await {
                // The rows are gone either way; the next pass that prunes
                // anything records its own event.
                tracing::warn!(error = %e, rows = pruned.total(), "pruned, but the audit event could not be written");
                pruned.stopped.get_or_insert(e.into());
            }
        }
        pruned
    }
}
