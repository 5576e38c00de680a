//! Step-up approvals: opening one for an action that needs a human, deciding
//! it, spending it on its one token, and counting refused requests.
use super::dialect;
use super::tokens::record;
use super::*;

const APPROVAL_COLUMNS: &str = "id, task_id, requester, workflow, objective, audience, resource, action, ttl_seconds, state, created_at, expires_at, decided_by, decided_at, decision_reason, used_jti";

/// An approval that a new request for the same task ($1), requester ($2) and
/// scope ($3-$5) meets at $6: denied, or pending or approved and unexpired.
const STANDING: &str =
    "task_id = $1 AND requester = $2 AND audience = $3 AND resource = $4 AND action = $5
    AND (state = 'denied' OR (state IN ('pending', 'approved') AND expires_at > $6))";

fn approval_from_row(r: &Row) -> Result<Approval, StoreError> {
    let state = r.text("state")?;
    Ok(Approval {
        id: r.uuid("id")?,
        task: TaskId(r.uuid("task_id")?),
        requester: r.spiffe_id("requester")?,
        workflow: r.text("workflow")?,
        objective: r.text("objective")?,
        scope: scope(r)?,
        ttl: Duration::from_secs(r.u64("ttl_seconds")?),
        state: ApprovalState::parse(&state)
            .ok_or_else(|| corrupt(format!("approval state {state:?}")))?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        decided_by: r.spiffe_id_opt("decided_by")?,
        decided_at: r.time_opt("decided_at")?,
        decision_reason: r.text_opt("decision_reason")?,
        used_jti: r.uuid_opt("used_jti")?,
    })
}

fn standing_query<'a>(
    task: TaskId,
    requester: &'a SpiffeId,
    scope: &'a Scope,
    now: OffsetDateTime,
) -> Query<'a> {
    query(format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE {STANDING} ORDER BY created_at DESC LIMIT 1"
    ))
    .bind(task.0)
    .bind(requester)
    .bind(&scope.audience)
    .bind(&scope.resource)
    .bind(&scope.action)
    .bind(now)
}

#[async_trait]
impl ApprovalStore for SqlStore {
    async fn standing_approval(
        &self,
        task: TaskId,
        requester: &SpiffeId,
        scope: &Scope,
        now: OffsetDateTime,
    ) -> Result<Option<Approval>, StoreError> {
        let db = &self.db;
        let row = db
            .fetch_optional(standing_query(task, requester, scope, now))
            .await?;
        row.as_ref().map(approval_from_row).transpose()
    }

    async fn insert_approval(&self, a: &Approval, audit: &AuditEvent) -> Result<bool, StoreError> {
        let db = &self.db;
        let mut tx = db.begin(Write::InsertApproval).await?;
        // Serialises requests of one task, so two racing requests for the same action
        // cannot both open an approval.
        tx.execute(
            query(format!(
                "SELECT 1 FROM tasks WHERE id = $1 {}",
                dialect::lock(db, "FOR UPDATE")
            ))
            .bind(a.task.0),
        )
        .await?;
        if tx
            .fetch_optional(standing_query(a.task, &a.requester, &a.scope, a.created_at))
            .await?
            .is_some()
        {
            return Ok(false);
        }
        tx.execute(
            query(
                "INSERT INTO approvals (id, task_id, requester, audience, resource, action, ttl_seconds, state, created_at, expires_at, workflow, objective)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11)",
            )
            .bind(a.id)
            .bind(a.task.0)
            .bind(&a.requester)
            .bind(&a.scope.audience)
            .bind(&a.scope.resource)
            .bind(&a.scope.action)
            .bind(a.ttl.as_secs())
            .bind(a.created_at)
            .bind(a.expires_at)
            .bind(&a.workflow)
            .bind(&a.objective),
        )
        .await?;
        insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_approval(&self, id: Uuid) -> Result<Option<Approval>, StoreError> {
        let db = &self.db;
        let row = db
            .fetch_optional(
                query(format!(
                    "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"
                ))
                .bind(id),
            )
            .await?;
        row.as_ref().map(approval_from_row).transpose()
    }

    async fn list_approvals(&self, f: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        let db = &self.db;
        let rows = db
            .fetch_all(
                query(format!(
                    "SELECT {APPROVAL_COLUMNS} FROM approvals
                     WHERE ($1 IS NULL OR task_id = $1)
                       AND ($2 IS NULL OR (state = 'pending' AND expires_at > $2
                            AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = task_id AND t.state = 'active' AND t.expires_at > $2)))
                     ORDER BY created_at DESC, id LIMIT $3"
                ))
                .bind(f.task.map(|t| t.0))
                .bind(f.pending_at)
                .bind(limit(f.limit)),
            )
            .await?;
        rows.iter().map(approval_from_row).collect()
    }

    async fn decide_approval(
        &self,
        id: Uuid,
        approve: bool,
        by: &SpiffeId,
        reason: &str,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Decide, StoreError> {
        let db = &self.db;
        let state = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        let mut tx = db.begin(Write::DecideApproval).await?;
        // Of two deciders racing, the second finds the row no longer pending.
        let row = tx
            .fetch_optional(
                query(format!(
                    "UPDATE approvals SET state = $2, decided_by = $3, decided_at = $4, decision_reason = $5
                     WHERE id = $1 AND state = 'pending' AND expires_at > $4
                     RETURNING {APPROVAL_COLUMNS}"
                ))
                .bind(id)
                .bind(state.as_str())
                .bind(by)
                .bind(now)
                .bind(reason),
            )
            .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(match self.get_approval(id).await? {
                Some(a) => Decide::NotPending(a),
                None => Decide::NotFound,
            });
        };
        let decided = approval_from_row(&row)?;
        let mut audit = audit.clone();
        audit.at = now;
        audit.actor = by.to_string();
        audit.task = Some(decided.task);
        audit.agent = Some(decided.requester.to_string());
        audit.jti = None;
        audit.reason = Some(reason.to_string());
        insert_audit(&mut tx, &[&audit]).await?;
        // Waiters on every broker wake when (and only if) the decision commits.
        tx.notify(Notice::ApprovalDecided).await?;
        tx.commit().await?;
        Ok(Decide::Decided(decided))
    }

    async fn spend_approval(
        &self,
        id: Uuid,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Spend, StoreError> {
        let db = &self.db;
        let mut tx = db.begin(Write::SpendApproval).await?;
        // The token first (it takes the task's row), then the approval's row.
        if let Err(refusal) = record(db, &mut tx, token, &token.agent, budget, audit).await? {
            tx.rollback().await?;
            return Ok(Spend::Refused(refusal));
        }
        let spent = tx
            .execute(
                query(
                    "UPDATE approvals SET state = 'used', used_jti = $8
                     WHERE id = $1 AND state = 'approved' AND expires_at > $2 AND task_id = $3 AND requester = $4
                       AND audience = $5 AND resource = $6 AND action = $7",
                )
                .bind(id)
                .bind(token.issued_at)
                .bind(token.task.0)
                .bind(&token.agent)
                .bind(&token.scope.audience)
                .bind(&token.scope.resource)
                .bind(&token.scope.action)
                .bind(token.jti),
            )
            .await?;
        if spent != 1 {
            // Rolling back takes the token and its budget count with it.
            tx.rollback().await?;
            return match self.get_approval(id).await? {
                Some(a) => Ok(Spend::NotApproved(Box::new(a))),
                None => Err(StoreError::Other(format!("approval {id} does not exist"))),
            };
        }
        tx.commit().await?;
        Ok(Spend::Spent)
    }

    async fn count_step_up_refusal(
        &self,
        task: TaskId,
        approval: Uuid,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Option<u32>, StoreError> {
        let db = &self.db;
        let mut tx = db.begin(Write::CountStepUpRefusal).await?;
        // Holds the approval while counting: a decision in between is not counted
        // against the agent (the caller reads it again).
        let standing = tx
            .fetch_optional(
                query(format!(
                    "SELECT state = 'denied' OR (state = 'pending' AND expires_at > $2) AS standing
                     FROM approvals WHERE id = $1 {}",
                    dialect::lock(db, "FOR UPDATE")
                ))
                .bind(approval)
                .bind(now),
            )
            .await?;
        match standing {
            Some(r) if r.bool("standing")? => {}
            _ => return Ok(None),
        }
        let n = tx
            .fetch_one(
                query(
                    "UPDATE tasks SET step_up_refusals = step_up_refusals + 1 WHERE id = $1
                     RETURNING step_up_refusals",
                )
                .bind(task.0),
            )
            .await?
            .u32("step_up_refusals")?;
        let mut audit = audit.clone();
        if let serde_json::Value::Object(m) = &mut audit.detail {
            m.insert("step_up_refusals".into(), n.into());
        }
        insert_audit(&mut tx, &[&audit]).await?;
        tx.commit().await?;
        Ok(Some(n))
    }
}
