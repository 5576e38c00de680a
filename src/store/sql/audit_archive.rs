//! Archiving the audit trail: the chain's anchor (the last event archived, after
//! which the stored chain starts) moves forward to a sealed event, and the
//! events at or below it are removed in small batches. The database refuses
//! anything else itself (migrations/…_audit_archive.sql): the anchor moves only
//! forward to a sealed event with its hash, and only events at or below it may
//! be deleted.
use super::dialect;
use super::*;
use crate::domain::audit::chain::Checkpoint;

/// The anchor as stored.
fn anchor_from_row(r: &Row, seq_col: &str, hash_col: &str) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint::new(seq(r, seq_col)?, r.bytes(hash_col)?))
}

pub(super) async fn head(db: &Db) -> Result<AuditHead, StoreError> {
    let row = db
        .fetch_one(query(
            "SELECT c.last_seq, c.last_hash, a.seq AS anchor_seq, a.hash AS anchor_hash,
                    (SELECT coalesce(max(seq), 0) FROM audit_events) AS max_seq
             FROM audit_chain c, audit_anchor a",
        ))
        .await?;
    Ok(AuditHead {
        seq: seq(&row, "last_seq")?,
        hash: row.bytes("last_hash")?,
        max_seq: seq(&row, "max_seq")?,
        anchor: anchor_from_row(&row, "anchor_seq", "anchor_hash")?,
    })
}

pub(super) async fn dated_before(
    db: &Db,
    after: u64,
    upto: u64,
    before: OffsetDateTime,
) -> Result<u64, StoreError> {
    // Walks the chain's index from `after`: the events it passes are the ones
    // an archive takes.
    let first_not = db
        .fetch_optional(
            query(
                "SELECT seq FROM audit_events WHERE seq > $1 AND seq <= $2 AND at >= $3
                 ORDER BY seq LIMIT 1",
            )
            .bind(after)
            .bind(upto)
            .bind(before),
        )
        .await?;
    match first_not {
        Some(r) => Ok(seq(&r, "seq")?.saturating_sub(1).max(after)),
        None => Ok(upto.max(after)),
    }
}

pub(super) async fn anchor(
    db: &Db,
    from: &Checkpoint,
    through: &Checkpoint,
    audit: &AuditEvent,
) -> Result<Anchoring, StoreError> {
    let mut tx = db.begin(Write::AnchorAudit).await?;
    // Archives take turns at the anchor.
    let row = tx
        .fetch_one(query(format!(
            "SELECT seq, hash FROM audit_anchor {}",
            dialect::lock(db, "FOR UPDATE")
        )))
        .await?;
    let now = anchor_from_row(&row, "seq", "hash")?;
    // Dropped without a commit, the transaction writes nothing.
    if through.seq <= now.seq {
        return Ok(Anchoring::Archived(now));
    }
    if now != *from {
        return Ok(Anchoring::AnchorMoved(now));
    }
    let head = seq(
        &tx.fetch_one(query("SELECT last_seq FROM audit_chain"))
            .await?,
        "last_seq",
    )?;
    if through.seq > head {
        return Ok(Anchoring::NotSealed { head });
    }
    let event = tx
        .fetch_optional(query("SELECT hash FROM audit_events WHERE seq = $1").bind(through.seq))
        .await?;
    match event {
        None => return Ok(Anchoring::Missing),
        Some(r) if r.bytes_opt("hash")?.as_deref() != Some(through.hash.as_slice()) => {
            return Ok(Anchoring::HashDiffers);
        }
        Some(_) => {}
    }
    tx.execute(
        query("UPDATE audit_anchor SET seq = $1, hash = $2")
            .bind(through.seq)
            .bind(&through.hash),
    )
    .await?;
    insert_audit(&mut tx, &[audit]).await?;
    tx.commit().await?;
    Ok(Anchoring::Moved)
}

pub(super) async fn remove(db: &Db, n: u32) -> Result<u64, StoreError> {
    db.execute(
        Write::RemoveArchivedAudit,
        query(
            "DELETE FROM audit_events WHERE id IN (
                SELECT id FROM audit_events WHERE seq <= (SELECT seq FROM audit_anchor)
                ORDER BY seq LIMIT $1
             )",
        )
        .bind(limit(n)),
    )
    .await
}
