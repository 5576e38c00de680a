//! Archiving the audit trail: the security team exports the oldest sealed
//! events (from the store's anchor up to the last one dated before a time) and
//! then archives them: the anchor moves to the last of them, audited in the
//! same transaction, and the events at or below it are removed in small
//! batches. The export verifies offline against a checkpoint
//! (`domain::audit::archive`); the stored chain verifies from the anchor.
use super::{Broker, BrokerError};
use crate::clock::to_micros;
use crate::domain::audit::archive::Refused;
use crate::domain::audit::chain::{Checkpoint, Sealed, Verifier, to_hex};
use crate::domain::audit::{Action, AuditEvent};
use crate::domain::text::rfc3339;
use crate::identity::Caller;
use crate::store::Anchoring;
use serde_json::json;
use time::OffsetDateTime;
use tracing::info;

/// Archived events removed per store call: small batches, so that a large
/// archive never holds the database (SQLite's one writer) for long.
const REMOVE_BATCH: u32 = 1000;

/// Where an export ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportEnd {
    /// At the last of the run of events after the anchor dated before this time.
    Before(OffsetDateTime),
    /// At this position (the end a first page named).
    Through(u64),
}

/// A page of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPage {
    /// Where the stored chain starts now.
    pub anchor: Checkpoint,
    /// The export's last event (the anchor when there is nothing to export).
    pub through: Checkpoint,
    /// Sealed events in chain order, after the position asked for.
    pub events: Vec<Sealed>,
}

/// An archive done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditArchived {
    /// The anchor before: the archive's events followed it.
    pub previous: Checkpoint,
    /// The anchor now: the archive's last event.
    pub anchor: Checkpoint,
    /// Events archived by this call.
    pub events: u64,
    /// Archived events removed from the store by this call (those of earlier
    /// archives that were left too).
    pub removed: u64,
}

impl Broker {
    /// Sealed events after position `after` (0: the anchor) up to the export's
    /// end, in chain order, at most `limit`.
    pub async fn export_audit(
        &self,
        end: ExportEnd,
        after: u64,
        limit: u32,
    ) -> Result<ExportPage, BrokerError> {
        self.seal_audit().await?;
        let head = self.store.audit_head().await?;
        let anchor = head.anchor;
        let through = match end {
            // To the microsecond, as the store keeps times.
            ExportEnd::Before(t) => {
                (self.store)
                    .audit_dated_before(anchor.seq, head.seq, to_micros(t))
                    .await?
            }
            ExportEnd::Through(seq) if seq > head.seq => {
                return Err(Refused::NotSealed {
                    seq,
                    head: head.seq,
                }
                .into());
            }
            ExportEnd::Through(seq) => seq,
        };
        if through < anchor.seq {
            return Err(Refused::Archived {
                seq: through,
                anchor: anchor.seq,
            }
            .into());
        }
        let after = if after == 0 { anchor.seq } else { after };
        if after < anchor.seq {
            return Err(Refused::Archived {
                seq: after + 1,
                anchor: anchor.seq,
            }
            .into());
        }
        let through = self.checkpoint_at(&anchor, through).await?;
        let events = match after < through.seq {
            true => self.store.audit_chain(after, through.seq, limit).await?,
            false => vec![],
        };
        Ok(ExportPage {
            anchor,
            through,
            events,
        })
    }

    /// Archives the events after the store's anchor up to `through` (an
    /// export's last event, with its hash), all dated before `before`: the
    /// anchor moves there, audited (`audit_archived`), then the archived events
    /// are removed. Refused, writing nothing, when `through` does not match the
    /// store or the events up to it do not verify.
    pub async fn archive_audit(
        &self,
        caller: &Caller,
        through: Checkpoint,
        before: OffsetDateTime,
    ) -> Result<AuditArchived, BrokerError> {
        let before = to_micros(before);
        self.seal_audit().await?;
        let head = self.store.audit_head().await?;
        let from = head.anchor;
        if through.seq <= from.seq {
            return Err(Refused::Archived {
                seq: through.seq,
                anchor: from.seq,
            }
            .into());
        }
        if through.seq > head.seq {
            return Err(Refused::NotSealed {
                seq: through.seq,
                head: head.seq,
            }
            .into());
        }
        // Everything archived is dated before `before`, as its header says.
        let dated = (self.store)
            .audit_dated_before(from.seq, through.seq, before)
            .await?;
        if dated < through.seq {
            let first = self.store.audit_chain(dated, dated + 1, 1).await?.pop();
            let at = first
                .and_then(|e| {
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.at_micros) * 1000).ok()
                })
                .unwrap_or(before);
            return Err(Refused::NotBefore {
                seq: dated + 1,
                at,
                before,
            }
            .into());
        }
        // The events verify from the anchor: archiving a broken chain would
        // remove the evidence.
        let mut v = Verifier::after(from.clone());
        if let Some(b) = self.walk(&mut v, through.seq).await? {
            // Or another archive removed them while they were read.
            let now = self.store.audit_head().await?.anchor;
            if now != from {
                return Err(Refused::AnchorMoved { anchor: now.seq }.into());
            }
            return Err(Refused::Broken(b).into());
        }
        if v.last_seq() != through.seq {
            return Err(Refused::Missing {
                seq: v.last_seq() + 1,
            }
            .into());
        }
        if v.last_hash() != through.hash.as_slice() {
            return Err(hash_differs(&through));
        }
        let events = through.seq - from.seq;
        let audit =
            AuditEvent::new(self.now(), caller.id.as_str(), Action::AuditArchived).detail(json!({
                "through_seq": through.seq,
                "through_hash": to_hex(&through.hash),
                "previous_seq": from.seq,
                "previous_hash": to_hex(&from.hash),
                "events": events,
                "before": rfc3339(before),
            }));
        match self.store.anchor_audit(&from, &through, &audit).await? {
            Anchoring::Moved => {}
            Anchoring::AnchorMoved(now) => {
                return Err(Refused::AnchorMoved { anchor: now.seq }.into());
            }
            Anchoring::Archived(now) => {
                return Err(Refused::Archived {
                    seq: through.seq,
                    anchor: now.seq,
                }
                .into());
            }
            Anchoring::NotSealed { head } => {
                return Err(Refused::NotSealed {
                    seq: through.seq,
                    head,
                }
                .into());
            }
            Anchoring::Missing => return Err(Refused::Missing { seq: through.seq }.into()),
            Anchoring::HashDiffers => return Err(hash_differs(&through)),
        }
        info!(caller = %caller.id, through = through.seq, events, "audit trail archived");
        let removed = self.remove_archived_audit().await?;
        Ok(AuditArchived {
            previous: from,
            anchor: through,
            events,
            removed,
        })
    }

    /// Removes the archived events left in the store (at or below the anchor),
    /// in small batches; returns how many.
    pub async fn remove_archived_audit(&self) -> Result<u64, BrokerError> {
        let mut removed = 0;
        loop {
            let n = self.store.remove_archived_audit(REMOVE_BATCH).await?;
            removed += n;
            if n < u64::from(REMOVE_BATCH) {
                return Ok(removed);
            }
        }
    }

    /// The stored event at `seq` (the anchor itself at its position) as a
    /// checkpoint.
    async fn checkpoint_at(
        &self,
        anchor: &Checkpoint,
        seq: u64,
    ) -> Result<Checkpoint, BrokerError> {
        if seq == anchor.seq {
            return Ok(anchor.clone());
        }
        match self.store.audit_chain(seq - 1, seq, 1).await?.pop() {
            Some(e) if e.seq == seq => Ok(Checkpoint::new(seq, e.hash)),
            _ => Err(Refused::Missing { seq }.into()),
        }
    }
}

fn hash_differs(through: &Checkpoint) -> BrokerError {
    let hex = to_hex(&through.hash);
    Refused::HashDiffers {
        seq: through.seq,
        given: format!("{}…", &hex[..hex.len().min(12)]),
    }
    .into()
}
