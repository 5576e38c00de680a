//! Pruning what stopped mattering, after its retention: expired tokens, lapsed
//! offers and approvals, ended tasks, revocation events older than every token
//! they could concern. Many small batches, each its own transaction, with a
//! pause between them, so writes never wait long behind one (SQLite's store
//! also rests as long as a batch took: see `store/sql/retention.rs`); one audit event
//! per pass that pruned anything, saying what and up to when (what a pass
//! could not record goes into the next one's).
use super::{Broker, BrokerError, SYSTEM_ACTOR};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::retention::{Prunable, Retention};
use serde_json::json;
use std::time::Duration;

/// Between two batches: room for the writes queued behind one.
const PAUSE: Duration = Duration::from_millis(2);

/// What one pass pruned.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Rows deleted, by kind, in [`Prunable::ALL`] order.
    pub rows: [u64; Prunable::ALL.len()],
    /// The first failure (the store unavailable, a batch refused), if a kind
    /// stopped early; the other kinds went on.
    pub stopped: Option<BrokerError>,
    /// Whether the pass's audit event (with what earlier passes pruned but
    /// could not record) was written.
    pub recorded: bool,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.rows.iter().sum()
    }
}

impl Broker {
    /// Prunes, kind by kind, everything past `retention`, batch by batch until
    /// a batch comes back short; then records what it did, with `unrecorded`
    /// (what earlier passes pruned and could not record).
    pub async fn prune(
        &self,
        retention: &Retention,
        unrecorded: [u64; Prunable::ALL.len()],
    ) -> Pruned {
        let now = self.now();
        let mut pruned = Pruned::default();
        for (i, kind) in Prunable::ALL.into_iter().enumerate() {
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
                        crate::metrics::PRUNE_FAILURES
                            .get_or_create(&crate::metrics::Pruned {
                                kind: kind.as_str(),
                            })
                            .inc();
                        pruned.stopped.get_or_insert(e.into());
                        break;
                    }
                }
                tokio::time::sleep(PAUSE).await;
            }
        }
        let rows: Vec<u64> = (0..Prunable::ALL.len())
            .map(|i| pruned.rows[i] + unrecorded[i])
            .collect();
        if rows.iter().sum::<u64>() == 0 {
            pruned.recorded = true;
            return pruned;
        }
        let mut detail = serde_json::Map::new();
        for (i, kind) in Prunable::ALL.into_iter().enumerate() {
            detail.insert(
                kind.as_str().into(),
                json!({
                    "rows": rows[i],
                    "before": retention.cutoff(kind, now).unix_timestamp(),
                }),
            );
        }
        let event = AuditEvent::new(now, SYSTEM_ACTOR, Action::RecordsPruned)
            .detail(serde_json::Value::Object(detail));
        match self.store.append_audit(&event).await {
            Ok(()) => pruned.recorded = true,
            Err(e) => {
                // The rows are gone; the next pass records them with its own.
                tracing::warn!(error = %e, rows = pruned.total(), "pruned, but the audit event could not be written yet");
                pruned.stopped.get_or_insert(e.into());
            }
        }
        pruned
    }
}
