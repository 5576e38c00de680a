//! Tasks: opening one, reading them, ending one (with its revocation), and the
//! sweep's page of overdue tasks.
use super::filter::Filter;
use super::revocations::{insert_revocation, next_seq, revoke_tokens};
use super::*;

pub(super) const TASK_COLUMNS: &str = "id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at, ended_at, end_reason, tokens_minted";

pub(super) fn task_from_row(r: &Row) -> Result<Task, StoreError> {
    let state = r.text("state")?;
    Ok(Task {
        id: TaskId(r.uuid("id")?),
        agent: r.spiffe_id("agent")?,
        workflow: r.text("workflow")?,
        objective: r.text("objective")?,
        scopes: r.json("scopes")?,
        state: TaskState::parse(&state).ok_or_else(|| corrupt(format!("task state {state:?}")))?,
        opened_by: r.spiffe_id("opened_by")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        ended_at: r.time_opt("ended_at")?,
        end_reason: r.text_opt("end_reason")?,
        tokens_minted: r.u32("tokens_minted")?,
    })
}

pub(super) async fn get(db: &Db, id: TaskId) -> Result<Option<Task>, StoreError> {
    let row = db
        .fetch_optional(query(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1")).bind(id.0))
        .await?;
    row.as_ref().map(task_from_row).transpose()
}

#[async_trait]
impl TaskStore for SqlStore {
    async fn insert_task(&self, task: &Task, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.db.begin(Write::InsertTask).await?;
        tx.execute(
            query(
                "INSERT INTO tasks (id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at, tokens_minted)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0)",
            )
            .bind(task.id.0)
            .bind(&task.agent)
            .bind(&task.workflow)
            .bind(&task.objective)
            .bind(json(&task.scopes)?)
            .bind(task.state.as_str())
            .bind(&task.opened_by)
            .bind(task.created_at)
            .bind(task.expires_at),
        )
        .await?;
        insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        get(&self.db, id).await
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        let mut w = Filter::default();
        w.and_some("agent = ?", f.agent.as_ref().map(|a| a.to_string()))
            .and_some("state = ?", f.state.map(TaskState::as_str));
        let n = w.arg(limit(f.limit));
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE {} ORDER BY created_at DESC, id LIMIT {n}",
            w.conditions()
        );
        let rows = self.db.fetch_all(query(sql).bind_all(w.args())).await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn count_active_tasks(&self) -> Result<u64, StoreError> {
        let q = query("SELECT count(*) AS n FROM tasks WHERE state = 'active'");
        self.db.fetch_one(q).await?.u64("n")
    }

    async fn end_task(
        &self,
        id: TaskId,
        to: TaskState,
        revocation: &Revocation,
        audit: &[AuditEvent],
    ) -> Result<EndOutcome, StoreError> {
        // Only a final state ends a task: anything else is refused unwritten.
        TaskState::Active
            .transition(to)
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let mut tx = self.db.begin(Write::EndTask).await?;
        let (seq, revocation) = next_seq(&mut tx, revocation).await?;
        let row = tx
            .fetch_optional(
                query(format!(
                    "UPDATE tasks SET state = $2, ended_at = $3, end_reason = $4
                     WHERE id = $1 AND state = 'active' RETURNING {TASK_COLUMNS}"
                ))
                .bind(id.0)
                .bind(to.as_str())
                .bind(revocation.at)
                .bind(&revocation.reason),
            )
            .await?;
        let Some(row) = row else {
            // Nothing changes; rolling back returns the sequence number.
            tx.rollback().await?;
            return Ok(match get(&self.db, id).await? {
                Some(t) => EndOutcome::NotActive(t.state),
                None => EndOutcome::NotFound,
            });
        };
        let task = Box::new(task_from_row(&row)?);
        insert_revocation(&mut tx, seq, &revocation).await?;
        let tokens =
            revoke_tokens(&self.db, &mut tx, &revocation.target, seq, revocation.at).await?;
        let events: Vec<&AuditEvent> = audit.iter().collect();
        insert_audit(&mut tx, &events).await?;
        tx.commit().await?;
        Ok(EndOutcome::Ended {
            task,
            revoked: Revoked {
                event: Event { seq, revocation },
                tokens_revoked: tokens,
                tasks_stopped: 1,
                repeated: false,
            },
        })
    }

    async fn overdue_tasks(
        &self,
        now: OffsetDateTime,
        after: Option<(OffsetDateTime, TaskId)>,
        n: u32,
    ) -> Result<Vec<(OffsetDateTime, TaskId)>, StoreError> {
        let rows = self
            .db
            .fetch_all(
                query(
                    "SELECT expires_at, id FROM tasks
                     WHERE state = 'active' AND expires_at <= $1
                       AND ($2 IS NULL OR (expires_at, id) > ($2, $3))
                     ORDER BY expires_at, id LIMIT $4",
                )
                .bind(now)
                .bind(after.map(|(at, _)| at))
                .bind(after.map(|(_, id)| id.0))
                .bind(limit(n)),
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.time("expires_at")?, TaskId(r.uuid("id")?))))
            .collect()
    }
}
