//! Pruning what stopped mattering, in small batches, each its own short
//! transaction, so no write waits long behind one (in PostgreSQL deleted rows
//! lock only themselves, and no write touches them; SQLite's one writer is held
//! for one batch at a time). One broker prunes at a time: in PostgreSQL the
//! others skip their turn rather than queue on the same rows.
use super::dialect;
use super::driver::Arg;
use super::*;

/// Up to `$2` tokens expired before `$1`, oldest first, that no token is
/// delegated from (a parent goes in a later batch, once its children have):
/// so no row deleted is referred to by a token kept. In the order of their
/// index (`tokens_expiry_idx`), so the read stops at the batch instead of
/// sorting every expired token; in PostgreSQL the rows are locked, skipping
/// any a write holds.
async fn token_batch(
    db: &Db,
    tx: &mut Tx,
    before: OffsetDateTime,
    batch: i64,
) -> Result<Vec<Uuid>, StoreError> {
    let rows = tx
        .fetch_all(
            query(format!(
                "SELECT jti FROM tokens t WHERE expires_at < $1
                    AND NOT EXISTS (SELECT 1 FROM tokens c WHERE c.parent_jti = t.jti)
                 ORDER BY expires_at, depth DESC LIMIT $2 {}",
                dialect::lock(db, "FOR UPDATE SKIP LOCKED")
            ))
            .bind(before)
            .bind(batch),
        )
        .await?;
    rows.iter().map(|r| r.uuid("jti")).collect()
}

/// `$1, …, $n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deletes a batch of tokens with what only records them: the offers they made
/// or were redeemed into, the approvals spent on them. The batch is read once
/// and named by its ids in every statement, each of which uses its index.
async fn tokens(
    db: &Db,
    tx: &mut Tx,
    before: OffsetDateTime,
    batch: i64,
) -> Result<u64, StoreError> {
    let jtis = token_batch(db, tx, before, batch).await?;
    if jtis.is_empty() {
        return Ok(0);
    }
    let ids = placeholders(jtis.len());
    let args = || jtis.iter().map(|j| Arg::from(*j));
    for statement in [
        "DELETE FROM delegations WHERE parent_jti IN",
        "DELETE FROM delegations WHERE child_jti IN",
        "DELETE FROM approvals WHERE used_jti IN",
    ] {
        tx.execute(query(format!("{statement} ({ids})")).bind_all(args()))
            .await?;
    }
    tx.execute(query(format!("DELETE FROM tokens WHERE jti IN ({ids})")).bind_all(args()))
        .await
}

async fn offers(tx: &mut Tx, before: OffsetDateTime, batch: i64) -> Result<u64, StoreError> {
    tx.execute(
        query(
            "DELETE FROM delegations WHERE id IN (SELECT id FROM delegations
                WHERE redeemed_at IS NULL AND expires_at < $1 ORDER BY expires_at LIMIT $2)",
        )
        .bind(before)
        .bind(batch),
    )
    .await
}

/// Approvals never used, lapsed before `$1`; a denial stands for the rest of
/// its task (a request for the same scope meets it and is counted against
/// `step_up_retries`), so it stays while its task is active.
async fn approvals(tx: &mut Tx, before: OffsetDateTime, batch: i64) -> Result<u64, StoreError> {
    tx.execute(
        query(
            "DELETE FROM approvals WHERE id IN (SELECT id FROM approvals a
                WHERE state <> 'used' AND expires_at < $1
                  AND (state <> 'denied'
                       OR NOT EXISTS (SELECT 1 FROM tasks k WHERE k.id = a.task_id AND k.state = 'active'))
                ORDER BY expires_at LIMIT $2)",
        )
        .bind(before)
        .bind(batch),
    )
    .await
}

async fn tasks(tx: &mut Tx, before: OffsetDateTime, batch: i64) -> Result<u64, StoreError> {
    tx.execute(
        query(
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks k
                WHERE state <> 'active' AND ended_at < $1
                  AND NOT EXISTS (SELECT 1 FROM tokens WHERE task_id = k.id)
                  AND NOT EXISTS (SELECT 1 FROM delegations WHERE task_id = k.id)
                  AND NOT EXISTS (SELECT 1 FROM approvals WHERE task_id = k.id)
                ORDER BY ended_at LIMIT $2)",
        )
        .bind(before)
        .bind(batch),
    )
    .await
}

/// Events before `$1` but the newest of them: the kept history starts there.
/// Times never decrease along the sequence (`next_seq`), so the events before
/// a time are a prefix of it and what is kept is gap-free.
async fn revocations(tx: &mut Tx, before: OffsetDateTime, batch: i64) -> Result<u64, StoreError> {
    let newest = tx
        .fetch_optional(
            query("SELECT seq FROM revocations WHERE at < $1 ORDER BY at DESC, seq DESC LIMIT 1")
                .bind(before),
        )
        .await?;
    let Some(newest) = newest else { return Ok(0) };
    let newest = seq(&newest, "seq")?;
    tx.execute(
        query(
            "DELETE FROM revocations WHERE seq IN (SELECT seq FROM revocations
                WHERE seq < $1 ORDER BY seq LIMIT $2)",
        )
        .bind(newest)
        .bind(batch),
    )
    .await
}

#[async_trait]
impl RetentionStore for SqlStore {
    async fn prune(
        &self,
        kind: Prunable,
        before: OffsetDateTime,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let started = std::time::Instant::now();
        let mut tx = self.db.begin(Write::Prune).await?;
        if let Some(turn) = dialect::pruning_turn(&self.db)
            && !tx.fetch_one(query(turn)).await?.bool("turn")?
        {
            tx.rollback().await?;
            return Ok(0);
        }
        let batch = limit(batch);
        let n = match kind {
            Prunable::Tokens => tokens(&self.db, &mut tx, before, batch).await?,
            Prunable::Offers => offers(&mut tx, before, batch).await?,
            Prunable::Approvals => approvals(&mut tx, before, batch).await?,
            Prunable::Tasks => tasks(&mut tx, before, batch).await?,
            Prunable::Revocations => revocations(&mut tx, before, batch).await?,
        };
        tx.commit().await?;
        dialect::after_pruning(&self.db, started.elapsed()).await;
        Ok(n)
    }

    async fn revocation_bounds(&self) -> Result<RevocationBounds, StoreError> {
        let row = self
            .db
            .fetch_one(query(
                "SELECT (SELECT min(seq) FROM revocations) AS first, last_seq FROM revocation_counter",
            ))
            .await?;
        Ok(RevocationBounds {
            first: row.int_opt("first")?.map_or(Ok(0), |f| {
                u64::try_from(f).map_err(|_| corrupt(format!("revocation sequence {f}")))
            })?,
            head: seq(&row, "last_seq")?,
        })
    }
}
