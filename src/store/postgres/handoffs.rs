//! Delegations, step-up approvals and freezes in PostgreSQL. Locks follow the store's order:
//! tasks before tokens (a redemption takes its task's row in the budget update,
//! then its parent token's), so a concurrent revocation cannot deadlock with it.
use super::*;

const DELEGATION_COLUMNS: &str = "id, task_id, parent_jti, delegator, sub_agent, audience, resource, action, depth, act, ancestors, created_at, expires_at, redeemed_at, child_jti";
const APPROVAL_COLUMNS: &str = "id, task_id, requester, workflow, objective, audience, resource, action, ttl_seconds, state, created_at, expires_at, decided_by, decided_at, decision_reason, used_jti";

/// An approval that a new request for the same task ($1), requester ($2) and
/// scope ($3-$5) meets at $6: denied, or pending or approved and unexpired.
const STANDING: &str =
    "task_id = $1 AND requester = $2 AND audience = $3 AND resource = $4 AND action = $5
    AND (state = 'denied' OR (state IN ('pending', 'approved') AND expires_at > $6))";

fn delegation_from_row(r: &PgRow) -> Result<Delegation, StoreError> {
    let depth: i32 = r.try_get("depth").map_err(map_err)?;
    let Json(act): Json<serde_json::Value> = r.try_get("act").map_err(map_err)?;
    let Json(ancestors): Json<Vec<uuid::Uuid>> = r.try_get("ancestors").map_err(map_err)?;
    Ok(Delegation {
        id: r.try_get("id").map_err(map_err)?,
        task: TaskId(r.try_get("task_id").map_err(map_err)?),
        parent_jti: r.try_get("parent_jti").map_err(map_err)?,
        delegator: r.try_get("delegator").map_err(map_err)?,
        sub_agent: r.try_get("sub_agent").map_err(map_err)?,
        scope: Scope {
            audience: r.try_get("audience").map_err(map_err)?,
            resource: r.try_get("resource").map_err(map_err)?,
            action: r.try_get("action").map_err(map_err)?,
        },
        depth: u32::try_from(depth).map_err(corrupt)?,
        act,
        ancestors,
        created_at: r.try_get("created_at").map_err(map_err)?,
        expires_at: r.try_get("expires_at").map_err(map_err)?,
        redeemed_at: r.try_get("redeemed_at").map_err(map_err)?,
        child_jti: r.try_get("child_jti").map_err(map_err)?,
    })
}

fn approval_from_row(r: &PgRow) -> Result<Approval, StoreError> {
    let state: String = r.try_get("state").map_err(map_err)?;
    let ttl: i64 = r.try_get("ttl_seconds").map_err(map_err)?;
    Ok(Approval {
        id: r.try_get("id").map_err(map_err)?,
        task: TaskId(r.try_get("task_id").map_err(map_err)?),
        requester: r.try_get("requester").map_err(map_err)?,
        workflow: r.try_get("workflow").map_err(map_err)?,
        objective: r.try_get("objective").map_err(map_err)?,
        scope: Scope {
            audience: r.try_get("audience").map_err(map_err)?,
            resource: r.try_get("resource").map_err(map_err)?,
            action: r.try_get("action").map_err(map_err)?,
        },
        ttl: Duration::from_secs(u64::try_from(ttl).map_err(corrupt)?),
        state: ApprovalState::parse(&state)
            .ok_or_else(|| corrupt(format!("approval state {state:?}")))?,
        created_at: r.try_get("created_at").map_err(map_err)?,
        expires_at: r.try_get("expires_at").map_err(map_err)?,
        decided_by: r.try_get("decided_by").map_err(map_err)?,
        decided_at: r.try_get("decided_at").map_err(map_err)?,
        decision_reason: r.try_get("decision_reason").map_err(map_err)?,
        used_jti: r.try_get("used_jti").map_err(map_err)?,
    })
}

#[async_trait]
impl DelegationStore for PgStore {
    async fn insert_delegation(
        &self,
        d: &Delegation,
        open_limit: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Offers of one parent take turns (its row lock), so the limit holds.
        sqlx::query("SELECT 1 FROM tokens WHERE jti = $1 FOR NO KEY UPDATE")
            .bind(d.parent_jti)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM delegations WHERE parent_jti = $1 AND redeemed_at IS NULL AND expires_at > $2",
        )
        .bind(d.parent_jti)
        .bind(d.created_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if open >= i64::from(open_limit) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO delegations (id, task_id, parent_jti, delegator, sub_agent, audience, resource, action, depth, act, ancestors, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(d.id)
        .bind(d.task.0)
        .bind(d.parent_jti)
        .bind(&d.delegator)
        .bind(&d.sub_agent)
        .bind(&d.scope.audience)
        .bind(&d.scope.resource)
        .bind(&d.scope.action)
        .bind(i32::try_from(d.depth).map_err(|e| StoreError::Other(e.to_string()))?)
        .bind(Json(&d.act))
        .bind(Json(&d.ancestors))
        .bind(d.created_at)
        .bind(d.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(&mut tx, &[audit]).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn get_delegation(&self, id: uuid::Uuid) -> Result<Option<Delegation>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {DELEGATION_COLUMNS} FROM delegations WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(delegation_from_row).transpose()
    }

    async fn redeem_delegation(
        &self,
        id: uuid::Uuid,
        child: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Redeem, StoreError> {
        let now = child.issued_at;
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // The offer's row lock makes two redemptions take turns: the second sees
        // the first's redemption.
        type Offer = (
            Option<OffsetDateTime>,
            OffsetDateTime,
            uuid::Uuid,
            uuid::Uuid,
            Json<Vec<uuid::Uuid>>,
        );
        let offer: Option<Offer> = sqlx::query_as(
            "SELECT redeemed_at, expires_at, parent_jti, task_id, ancestors FROM delegations WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some((redeemed_at, expires_at, parent, task, Json(ancestors))) = offer else {
            return Ok(Redeem::NotFound);
        };
        if redeemed_at.is_some() {
            return Ok(Redeem::AlreadyRedeemed);
        }
        if expires_at <= now {
            return Ok(Redeem::Expired);
        }
        if child.parent != Some(parent) || child.task.0 != task || ancestors.last() != Some(&parent)
        {
            return Err(StoreError::Other(format!(
                "delegation {id}: the child token does not descend from its parent"
            )));
        }
        let owner: String = sqlx::query_scalar("SELECT agent FROM tasks WHERE id = $1")
            .bind(task)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        // Takes the task's row (budget) first, then the parent's.
        if !insert_token(&mut *tx, child, &owner, budget, audit)
            .await
            .map_err(map_err)?
        {
            return Ok(Redeem::TaskRefused);
        }
        // Share locks on every ancestor, root first (the foreign key's key-share
        // lock would not conflict with a revocation's update): a revocation that
        // holds any of them is waited for, and one that comes later waits for this
        // commit, so its cascade (see `revoke_tokens`) sees this child. Root first,
        // as a chain names each agent once, so no revocation holds two of them.
        for jti in &ancestors {
            let revoked: Option<Option<OffsetDateTime>> =
                sqlx::query_scalar("SELECT revoked_at FROM tokens WHERE jti = $1 FOR SHARE")
                    .bind(jti)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?;
            if !matches!(revoked, Some(None)) {
                tx.rollback().await.map_err(map_err)?;
                return Ok(Redeem::ParentRevoked);
            }
        }
        sqlx::query("UPDATE delegations SET redeemed_at = $2, child_jti = $3 WHERE id = $1")
            .bind(id)
            .bind(now)
            .bind(child.jti)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Redeem::Redeemed)
    }
}

#[async_trait]
impl ApprovalStore for PgStore {
    async fn standing_approval(
        &self,
        task: TaskId,
        requester: &str,
        scope: &Scope,
        now: OffsetDateTime,
    ) -> Result<Option<Approval>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE {STANDING}
             ORDER BY created_at DESC LIMIT 1"
        )))
        .bind(task.0)
        .bind(requester)
        .bind(&scope.audience)
        .bind(&scope.resource)
        .bind(&scope.action)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(approval_from_row).transpose()
    }

    async fn insert_approval(&self, a: &Approval, audit: &AuditEvent) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Serialises requests of one task, so two racing requests for the same
        // action cannot both open an approval.
        sqlx::query("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE")
            .bind(a.task.0)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let standing: bool = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM approvals WHERE {STANDING})"
        )))
        .bind(a.task.0)
        .bind(&a.requester)
        .bind(&a.scope.audience)
        .bind(&a.scope.resource)
        .bind(&a.scope.action)
        .bind(a.created_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if standing {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO approvals (id, task_id, requester, audience, resource, action, ttl_seconds, state, created_at, expires_at, workflow, objective)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11)",
        )
        .bind(a.id)
        .bind(a.task.0)
        .bind(&a.requester)
        .bind(&a.scope.audience)
        .bind(&a.scope.resource)
        .bind(&a.scope.action)
        .bind(i64::try_from(a.ttl.as_secs()).unwrap_or(i64::MAX))
        .bind(a.created_at)
        .bind(a.expires_at)
        .bind(&a.workflow)
        .bind(&a.objective)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(&mut tx, &[audit]).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn get_approval(&self, id: uuid::Uuid) -> Result<Option<Approval>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(approval_from_row).transpose()
    }

    async fn list_approvals(&self, f: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals
             WHERE ($1::uuid IS NULL OR task_id = $1)
               AND ($2::timestamptz IS NULL OR (state = 'pending' AND expires_at > $2
                    AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = task_id AND t.state = 'active' AND t.expires_at > $2)))
             ORDER BY created_at DESC, id LIMIT $3"
        )))
        .bind(f.task.map(|t| t.0))
        .bind(f.pending_at)
        .bind(limit(f.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(approval_from_row).collect()
    }

    async fn decide_approval(
        &self,
        id: uuid::Uuid,
        approve: bool,
        by: &str,
        reason: &str,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Decide, StoreError> {
        let state = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        // One statement: the row's update and the audit event commit together, and
        // of two deciders the second finds the row no longer pending.
        let row = sqlx::query(AssertSqlSafe(format!(
            "WITH d AS (
                UPDATE approvals SET state = $2, decided_by = $3, decided_at = $4, decision_reason = $5
                WHERE id = $1 AND state = 'pending' AND expires_at > $4
                RETURNING {APPROVAL_COLUMNS}
             ), aud AS (
                INSERT INTO audit_events (at, actor, action, outcome, task_id, agent, reason, detail)
                SELECT $4, $3, $6, $7, d.task_id, d.requester, $5, $8 FROM d
             ), n AS (
                SELECT pg_notify($9, $10) AS notified FROM d
             )
             SELECT {APPROVAL_COLUMNS} FROM d, n"
        )))
        .bind(id)
        .bind(state.as_str())
        .bind(by)
        .bind(now)
        .bind(reason)
        .bind(audit.action.as_str())
        .bind(audit.action.outcome())
        .bind(Json(&audit.detail))
        // Waiters on every replica wake when (and only if) the decision commits.
        .bind(NOTIFY_CHANNEL)
        .bind(APPROVAL_NOTICE)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        if let Some(row) = row {
            return Ok(Decide::Decided(approval_from_row(&row)?));
        }
        Ok(match self.get_approval(id).await? {
            Some(a) => Decide::NotPending(a),
            None => Decide::NotFound,
        })
    }

    async fn spend_approval(
        &self,
        id: uuid::Uuid,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Spend, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // The token first (it takes the task's row), then the approval's row.
        if !insert_token(&mut *tx, token, &token.agent, budget, audit)
            .await
            .map_err(map_err)?
        {
            tx.rollback().await.map_err(map_err)?;
            return Ok(Spend::TaskRefused);
        }
        let spent = sqlx::query(
            "UPDATE approvals SET state = 'used', used_jti = $8
             WHERE id = $1 AND state = 'approved' AND expires_at > $2 AND task_id = $3 AND requester = $4
               AND audience = $5 AND resource = $6 AND action = $7
             RETURNING id",
        )
        .bind(id)
        .bind(token.issued_at)
        .bind(token.task.0)
        .bind(&token.agent)
        .bind(&token.scope.audience)
        .bind(&token.scope.resource)
        .bind(&token.scope.action)
        .bind(token.jti)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if spent.is_none() {
            // Rolling back takes the token and its budget count with it.
            tx.rollback().await.map_err(map_err)?;
            return match self.get_approval(id).await? {
                Some(a) => Ok(Spend::NotApproved(Box::new(a))),
                None => Err(StoreError::Other(format!("approval {id} does not exist"))),
            };
        }
        tx.commit().await.map_err(map_err)?;
        Ok(Spend::Spent)
    }

    async fn count_step_up_refusal(
        &self,
        task: TaskId,
        approval: uuid::Uuid,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Option<u32>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Holds the approval while counting: a decision in between is not
        // counted against the agent (the caller reads it again).
        let standing: Option<bool> = sqlx::query_scalar(
            "SELECT state = 'denied' OR (state = 'pending' AND expires_at > $2) FROM approvals WHERE id = $1 FOR UPDATE",
        )
        .bind(approval)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if standing != Some(true) {
            return Ok(None);
        }
        let n: i32 = sqlx::query_scalar(
            "UPDATE tasks SET step_up_refusals = step_up_refusals + 1 WHERE id = $1 RETURNING step_up_refusals",
        )
        .bind(task.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut audit = audit.clone();
        if let serde_json::Value::Object(m) = &mut audit.detail {
            m.insert("step_up_refusals".into(), n.into());
        }
        insert_audit(&mut tx, &[&audit]).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        u32::try_from(n).map(Some).map_err(corrupt)
    }
}

fn freeze_from_row(r: &PgRow) -> Result<Freeze, StoreError> {
    let kind: String = r.try_get("kind").map_err(map_err)?;
    let target: String = r.try_get("target").map_err(map_err)?;
    Ok(Freeze {
        target: FreezeTarget::from_parts(&kind, &target)
            .ok_or_else(|| corrupt(format!("freeze target {kind}:{target:?}")))?,
        reason: r.try_get("reason").map_err(map_err)?,
        actor: r.try_get("actor").map_err(map_err)?,
        at: r.try_get("at").map_err(map_err)?,
    })
}

#[async_trait]
impl FreezeStore for PgStore {
    async fn freeze(&self, f: &Freeze, audit: &AuditEvent) -> Result<Freeze, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let inserted = sqlx::query(
            "INSERT INTO freezes (kind, target, reason, actor, at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (kind, target) DO NOTHING RETURNING kind",
        )
        .bind(f.target.kind())
        .bind(f.target.value())
        .bind(&f.reason)
        .bind(&f.actor)
        .bind(f.at)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if inserted.is_none() {
            let row = sqlx::query(
                "SELECT kind, target, reason, actor, at FROM freezes WHERE kind = $1 AND target = $2",
            )
            .bind(f.target.kind())
            .bind(f.target.value())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            return freeze_from_row(&row);
        }
        insert_audit(&mut tx, &[audit]).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(f.clone())
    }

    async fn unfreeze(
        &self,
        target: &FreezeTarget,
        audit: &AuditEvent,
    ) -> Result<Option<Freeze>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let row = sqlx::query(
            "DELETE FROM freezes WHERE kind = $1 AND target = $2 RETURNING kind, target, reason, actor, at",
        )
        .bind(target.kind())
        .bind(target.value())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let lifted = freeze_from_row(&row)?;
        insert_audit(&mut tx, &[audit]).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(lifted))
    }

    async fn list_freezes(&self) -> Result<Vec<Freeze>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, target, reason, actor, at FROM freezes ORDER BY at, kind, target",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(freeze_from_row).collect()
    }

    async fn freeze_covering(
        &self,
        agents: &[&str],
        workflow: &str,
    ) -> Result<Option<Freeze>, StoreError> {
        let agents: Vec<String> = agents.iter().map(|a| a.to_string()).collect();
        let row = sqlx::query(
            "SELECT kind, target, reason, actor, at FROM freezes
             WHERE kind = 'all' OR (kind = 'agent' AND target = ANY($1)) OR (kind = 'workflow' AND target = $2)
             ORDER BY at LIMIT 1",
        )
        .bind(&agents)
        .bind(workflow)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(freeze_from_row).transpose()
    }
}
