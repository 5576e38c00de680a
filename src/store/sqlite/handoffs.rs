//! Delegations, step-up approvals and freezes in SQLite. Every write runs on the
//! store's one writing connection, so a transaction's reads and writes see no
//! other writer: two redemptions or two decisions take turns.
use super::*;

const DELEGATION_COLUMNS: &str = "id, task_id, parent_jti, delegator, sub_agent, audience, resource, action, depth, act, ancestors, created_at, expires_at, redeemed_at, child_jti";
const APPROVAL_COLUMNS: &str = "id, task_id, requester, workflow, objective, audience, resource, action, ttl_seconds, state, created_at, expires_at, decided_by, decided_at, decision_reason, used_jti";

/// An approval that a new request for the same task (?1), requester (?2) and
/// scope (?3-?5) meets at ?6: denied, or pending or approved and unexpired.
const STANDING: &str =
    "task_id = ?1 AND requester = ?2 AND audience = ?3 AND resource = ?4 AND action = ?5
    AND (state = 'denied' OR (state IN ('pending', 'approved') AND expires_at > ?6))";

fn delegation_from_row(r: &SqliteRow) -> Result<Delegation, StoreError> {
    Ok(Delegation {
        id: uuid_at(r, "id")?,
        task: TaskId(uuid_at(r, "task_id")?),
        parent_jti: uuid_at(r, "parent_jti")?,
        delegator: r.try_get("delegator").map_err(map_err)?,
        sub_agent: r.try_get("sub_agent").map_err(map_err)?,
        scope: Scope {
            audience: r.try_get("audience").map_err(map_err)?,
            resource: r.try_get("resource").map_err(map_err)?,
            action: r.try_get("action").map_err(map_err)?,
        },
        depth: u32_at(r, "depth")?,
        act: json_at(r, "act")?,
        ancestors: json_at(r, "ancestors")?,
        created_at: time_at(r, "created_at")?,
        expires_at: time_at(r, "expires_at")?,
        redeemed_at: time_opt(r, "redeemed_at")?,
        child_jti: uuid_opt(r, "child_jti")?,
    })
}

fn approval_from_row(r: &SqliteRow) -> Result<Approval, StoreError> {
    let state: String = r.try_get("state").map_err(map_err)?;
    let ttl: i64 = r.try_get("ttl_seconds").map_err(map_err)?;
    Ok(Approval {
        id: uuid_at(r, "id")?,
        task: TaskId(uuid_at(r, "task_id")?),
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
        created_at: time_at(r, "created_at")?,
        expires_at: time_at(r, "expires_at")?,
        decided_by: r.try_get("decided_by").map_err(map_err)?,
        decided_at: time_opt(r, "decided_at")?,
        decision_reason: r.try_get("decision_reason").map_err(map_err)?,
        used_jti: uuid_opt(r, "used_jti")?,
    })
}

async fn delegation(
    conn: &mut SqliteConnection,
    id: Uuid,
) -> Result<Option<Delegation>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {DELEGATION_COLUMNS} FROM delegations WHERE id = ?1"
    )))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    row.as_ref().map(delegation_from_row).transpose()
}

#[async_trait]
impl DelegationStore for SqliteStore {
    async fn insert_delegation(
        &self,
        d: &Delegation,
        open_limit: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM delegations WHERE parent_jti = ?1 AND redeemed_at IS NULL AND expires_at > ?2",
        )
        .bind(d.parent_jti.to_string())
        .bind(micros(d.created_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if open >= i64::from(open_limit) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO delegations (id, task_id, parent_jti, delegator, sub_agent, audience, resource, action, depth, act, ancestors, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )
        .bind(d.id.to_string())
        .bind(d.task.0.to_string())
        .bind(d.parent_jti.to_string())
        .bind(&d.delegator)
        .bind(&d.sub_agent)
        .bind(&d.scope.audience)
        .bind(&d.scope.resource)
        .bind(&d.scope.action)
        .bind(i64::from(d.depth))
        .bind(to_json(&d.act)?)
        .bind(to_json(&d.ancestors)?)
        .bind(micros(d.created_at))
        .bind(micros(d.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn get_delegation(&self, id: Uuid) -> Result<Option<Delegation>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
        delegation(&mut conn, id).await
    }

    async fn redeem_delegation(
        &self,
        id: Uuid,
        child: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Redeem, StoreError> {
        let now = child.issued_at;
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let Some(offer) = delegation(&mut tx, id).await? else {
            return Ok(Redeem::NotFound);
        };
        if offer.redeemed_at.is_some() {
            return Ok(Redeem::AlreadyRedeemed);
        }
        if offer.expires_at <= now {
            return Ok(Redeem::Expired);
        }
        let parent = offer.parent_jti;
        if child.parent != Some(parent)
            || child.task != offer.task
            || offer.ancestors.last() != Some(&parent)
        {
            return Err(StoreError::Other(format!(
                "delegation {id}: the child token does not descend from its parent"
            )));
        }
        let owner: String = sqlx::query_scalar("SELECT agent FROM tasks WHERE id = ?1")
            .bind(offer.task.0.to_string())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        // The task first (as PostgreSQL takes its row first), then the ancestors.
        if !insert_token(&mut tx, child, &owner, budget, audit).await? {
            tx.rollback().await.map_err(map_err)?;
            return Ok(Redeem::TaskRefused);
        }
        // Every ancestor unrevoked (and present).
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM tokens WHERE revoked_at IS NULL
               AND jti IN (SELECT value FROM json_each(?1))",
        )
        .bind(to_json(&offer.ancestors)?)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if usize::try_from(live).ok() != Some(offer.ancestors.len()) {
            tx.rollback().await.map_err(map_err)?;
            return Ok(Redeem::ParentRevoked);
        }
        sqlx::query("UPDATE delegations SET redeemed_at = ?2, child_jti = ?3 WHERE id = ?1")
            .bind(id.to_string())
            .bind(micros(now))
            .bind(child.jti.to_string())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Redeem::Redeemed)
    }
}

async fn standing(
    conn: &mut SqliteConnection,
    task: TaskId,
    requester: &str,
    scope: &Scope,
    now: OffsetDateTime,
) -> Result<Option<Approval>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE {STANDING}
         ORDER BY created_at DESC LIMIT 1"
    )))
    .bind(task.0.to_string())
    .bind(requester)
    .bind(&scope.audience)
    .bind(&scope.resource)
    .bind(&scope.action)
    .bind(micros(now))
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    row.as_ref().map(approval_from_row).transpose()
}

#[async_trait]
impl ApprovalStore for SqliteStore {
    async fn standing_approval(
        &self,
        task: TaskId,
        requester: &str,
        scope: &Scope,
        now: OffsetDateTime,
    ) -> Result<Option<Approval>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
        standing(&mut conn, task, requester, scope, now).await
    }

    async fn insert_approval(&self, a: &Approval, audit: &AuditEvent) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        if standing(&mut tx, a.task, &a.requester, &a.scope, a.created_at)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO approvals (id, task_id, requester, audience, resource, action, ttl_seconds, state, created_at, expires_at, workflow, objective)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?9, ?10, ?11)",
        )
        .bind(a.id.to_string())
        .bind(a.task.0.to_string())
        .bind(&a.requester)
        .bind(&a.scope.audience)
        .bind(&a.scope.resource)
        .bind(&a.scope.action)
        .bind(i64::try_from(a.ttl.as_secs()).unwrap_or(i64::MAX))
        .bind(micros(a.created_at))
        .bind(micros(a.expires_at))
        .bind(&a.workflow)
        .bind(&a.objective)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn get_approval(&self, id: Uuid) -> Result<Option<Approval>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE id = ?1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        row.as_ref().map(approval_from_row).transpose()
    }

    async fn list_approvals(&self, f: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals
             WHERE (?1 IS NULL OR task_id = ?1)
               AND (?2 IS NULL OR (state = 'pending' AND expires_at > ?2
                    AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = task_id AND t.state = 'active' AND t.expires_at > ?2)))
             ORDER BY created_at DESC, id LIMIT ?3"
        )))
        .bind(f.task.map(|t| t.0.to_string()))
        .bind(f.pending_at.map(micros))
        .bind(limit(f.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(approval_from_row).collect()
    }

    async fn decide_approval(
        &self,
        id: Uuid,
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
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE approvals SET state = ?2, decided_by = ?3, decided_at = ?4, decision_reason = ?5
             WHERE id = ?1 AND state = 'pending' AND expires_at > ?4
             RETURNING {APPROVAL_COLUMNS}"
        )))
        .bind(id.to_string())
        .bind(state.as_str())
        .bind(by)
        .bind(micros(now))
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            tx.rollback().await.map_err(map_err)?;
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
        audit.agent = Some(decided.requester.clone());
        audit.jti = None;
        audit.reason = Some(reason.to_string());
        insert_audit(&mut tx, &[&audit]).await?;
        // Waiters wake when (and only if) the decision committed.
        self.commit_and_notify(tx, Notice::ApprovalDecided).await?;
        Ok(Decide::Decided(decided))
    }

    async fn spend_approval(
        &self,
        id: Uuid,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Spend, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        if !insert_token(&mut tx, token, &token.agent, budget, audit).await? {
            tx.rollback().await.map_err(map_err)?;
            return Ok(Spend::TaskRefused);
        }
        let spent = sqlx::query(
            "UPDATE approvals SET state = 'used', used_jti = ?8
             WHERE id = ?1 AND state = 'approved' AND expires_at > ?2 AND task_id = ?3 AND requester = ?4
               AND audience = ?5 AND resource = ?6 AND action = ?7",
        )
        .bind(id.to_string())
        .bind(micros(token.issued_at))
        .bind(token.task.0.to_string())
        .bind(&token.agent)
        .bind(&token.scope.audience)
        .bind(&token.scope.resource)
        .bind(&token.scope.action)
        .bind(token.jti.to_string())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if spent.rows_affected() != 1 {
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
        approval: Uuid,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> Result<Option<u32>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let standing: Option<bool> = sqlx::query_scalar(
            "SELECT state = 'denied' OR (state = 'pending' AND expires_at > ?2) FROM approvals WHERE id = ?1",
        )
        .bind(approval.to_string())
        .bind(micros(now))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if standing != Some(true) {
            return Ok(None);
        }
        let n: i64 = sqlx::query_scalar(
            "UPDATE tasks SET step_up_refusals = step_up_refusals + 1 WHERE id = ?1 RETURNING step_up_refusals",
        )
        .bind(task.0.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut audit = audit.clone();
        if let serde_json::Value::Object(m) = &mut audit.detail {
            m.insert("step_up_refusals".into(), n.into());
        }
        insert_audit(&mut tx, &[&audit]).await?;
        tx.commit().await.map_err(map_err)?;
        u32::try_from(n).map(Some).map_err(corrupt)
    }
}

fn freeze_from_row(r: &SqliteRow) -> Result<Freeze, StoreError> {
    let kind: String = r.try_get("kind").map_err(map_err)?;
    let target: String = r.try_get("target").map_err(map_err)?;
    Ok(Freeze {
        target: FreezeTarget::from_parts(&kind, &target)
            .ok_or_else(|| corrupt(format!("freeze target {kind}:{target:?}")))?,
        reason: r.try_get("reason").map_err(map_err)?,
        actor: r.try_get("actor").map_err(map_err)?,
        at: time_at(r, "at")?,
    })
}

#[async_trait]
impl FreezeStore for SqliteStore {
    async fn freeze(&self, f: &Freeze, audit: &AuditEvent) -> Result<Freeze, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let existing = sqlx::query(
            "SELECT kind, target, reason, actor, at FROM freezes WHERE kind = ?1 AND target = ?2",
        )
        .bind(f.target.kind())
        .bind(f.target.value())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if let Some(row) = existing {
            return freeze_from_row(&row);
        }
        sqlx::query(
            "INSERT INTO freezes (kind, target, reason, actor, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(f.target.kind())
        .bind(f.target.value())
        .bind(&f.reason)
        .bind(&f.actor)
        .bind(micros(f.at))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(f.clone())
    }

    async fn unfreeze(
        &self,
        target: &FreezeTarget,
        audit: &AuditEvent,
    ) -> Result<Option<Freeze>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let row = sqlx::query(
            "DELETE FROM freezes WHERE kind = ?1 AND target = ?2 RETURNING kind, target, reason, actor, at",
        )
        .bind(target.kind())
        .bind(target.value())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let lifted = freeze_from_row(&row)?;
        insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(lifted))
    }

    async fn list_freezes(&self) -> Result<Vec<Freeze>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, target, reason, actor, at FROM freezes ORDER BY at, kind, target",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(freeze_from_row).collect()
    }

    async fn freeze_covering(
        &self,
        agents: &[&str],
        workflow: &str,
    ) -> Result<Option<Freeze>, StoreError> {
        let row = sqlx::query(
            "SELECT kind, target, reason, actor, at FROM freezes
             WHERE kind = 'all' OR (kind = 'agent' AND target IN (SELECT value FROM json_each(?1)))
                OR (kind = 'workflow' AND target = ?2)
             ORDER BY at LIMIT 1",
        )
        .bind(to_json(&agents)?)
        .bind(workflow)
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        row.as_ref().map(freeze_from_row).transpose()
    }
}
