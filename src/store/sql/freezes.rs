//! Freezes: issuance stopped for an agent, a workflow or everything until lifted.
use super::*;

fn freeze_from_row(r: &Row) -> Result<Freeze, StoreError> {
    let kind = r.text("kind")?;
    let target = r.text("target")?;
    Ok(Freeze {
        target: FreezeTarget::from_parts(&kind, &target)
            .ok_or_else(|| corrupt(format!("freeze target {kind}:{target:?}")))?,
        reason: r.text("reason")?,
        actor: r.text("actor")?,
        at: r.time("at")?,
    })
}

/// Records `f` inside `tx`, unless a freeze of its target stands: the freeze in
/// force, and whether it is `f`.
pub(super) async fn freeze_in(tx: &mut Tx, f: &Freeze) -> Result<(Freeze, bool), StoreError> {
    let inserted = tx
        .fetch_optional(
            query(
                "INSERT INTO freezes (kind, target, reason, actor, at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (kind, target) DO NOTHING RETURNING kind",
            )
            .bind(f.target.kind())
            .bind(f.target.value())
            .bind(&f.reason)
            .bind(&f.actor)
            .bind(f.at),
        )
        .await?;
    if inserted.is_some() {
        return Ok((f.clone(), true));
    }
    let row = tx
        .fetch_one(
            query("SELECT kind, target, reason, actor, at FROM freezes WHERE kind = $1 AND target = $2")
                .bind(f.target.kind())
                .bind(f.target.value()),
        )
        .await?;
    Ok((freeze_from_row(&row)?, false))
}

#[async_trait]
impl FreezeStore for SqlStore {
    async fn freeze(&self, f: &Freeze, audit: &AuditEvent) -> Result<Freeze, StoreError> {
        let mut tx = self.db.begin(Write::Freeze).await?;
        let (stands, new) = freeze_in(&mut tx, f).await?;
        if !new {
            // The standing freeze stays as it is; nothing is written.
            return Ok(stands);
        }
        insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(stands)
    }

    async fn unfreeze(
        &self,
        target: &FreezeTarget,
        audit: &AuditEvent,
    ) -> Result<Option<Freeze>, StoreError> {
        let db = &self.db;
        let mut tx = db.begin(Write::Unfreeze).await?;
        let row = tx
            .fetch_optional(
                query(
                    "DELETE FROM freezes WHERE kind = $1 AND target = $2
                     RETURNING kind, target, reason, actor, at",
                )
                .bind(target.kind())
                .bind(target.value()),
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let lifted = freeze_from_row(&row)?;
        insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(Some(lifted))
    }

    async fn list_freezes(&self) -> Result<Vec<Freeze>, StoreError> {
        let db = &self.db;
        let rows = db
            .fetch_all(query(
                "SELECT kind, target, reason, actor, at FROM freezes ORDER BY at, kind, target",
            ))
            .await?;
        rows.iter().map(freeze_from_row).collect()
    }

    async fn freeze_covering(
        &self,
        agents: &[&SpiffeId],
        workflow: &str,
    ) -> Result<Option<Freeze>, StoreError> {
        let db = &self.db;
        let named: Vec<String> = (0..agents.len()).map(|i| format!("${}", i + 2)).collect();
        let agent = match named.is_empty() {
            true => "1 = 0".to_string(),
            false => format!("target IN ({})", named.join(", ")),
        };
        let mut q = query(format!(
            "SELECT kind, target, reason, actor, at FROM freezes
             WHERE kind = 'all' OR (kind = 'agent' AND {agent}) OR (kind = 'workflow' AND target = $1)
             ORDER BY at LIMIT 1"
        ))
        .bind(workflow);
        for a in agents {
            q = q.bind(*a);
        }
        let row = db.fetch_optional(q).await?;
        row.as_ref().map(freeze_from_row).transpose()
    }
}
