//! Tokens: recording one against its task's budget (the mint's write, also run
//! by redemptions and spent approvals), and reading them.
use super::dialect;
use super::driver::Arg;
use super::filter::Filter;
use super::mints;
use super::*;
use std::sync::LazyLock;

pub(super) const TOKEN_COLUMNS: &str = "jti, task_id, agent, workflow, audience, resource, action, kid, cert_thumbprint, issued_at, expires_at, revoked_at, parent_jti, depth";

pub(super) fn token_from_row(r: &Row) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        jti: r.uuid("jti")?,
        task: TaskId(r.uuid("task_id")?),
        agent: r.spiffe_id("agent")?,
        workflow: r.text("workflow")?,
        scope: scope(r)?,
        kid: r.text("kid")?,
        cert_thumbprint: r.text("cert_thumbprint")?,
        issued_at: r.time("issued_at")?,
        expires_at: r.time("expires_at")?,
        revoked_at: r.time_opt("revoked_at")?,
        parent: r.uuid_opt("parent_jti")?,
        depth: r.u32("depth")?,
    })
}

/// A token's arguments, numbered as every token statement reads them: the row
/// (`$1`-`$13`, the columns of [`TOKEN_ROW`]), the task's budget (`$14`) and
/// the task's agent (`$15`).
pub(super) fn token_args<'a>(
    t: &'a TokenRecord,
    owner: &'a SpiffeId,
    budget: u32,
) -> [Arg<'a>; 15] {
    [
        t.jti.into(),
        t.task.0.into(),
        (&t.agent).into(),
        t.workflow.as_str().into(),
        t.scope.audience.as_str().into(),
        t.scope.resource.as_str().into(),
        t.scope.action.as_str().into(),
        t.kid.as_str().into(),
        t.cert_thumbprint.as_str().into(),
        t.issued_at.into(),
        t.expires_at.into(),
        t.parent.into(),
        t.depth.into(),
        budget.into(),
        owner.into(),
    ]
}

/// The columns a token is recorded with.
pub(super) const TOKEN_ROW: &str = "jti, task_id, agent, workflow, audience, resource, action, kid, cert_thumbprint, issued_at, expires_at, parent_jti, depth";

/// Why the task (`$2`) takes no token for holder `$3` at `$10`, owned by `$15`
/// in workflow `$4` with a budget of `$14` ([`token_args`]): NULL when it takes
/// it.
pub(super) const REFUSAL: &str = "CASE
    WHEN agent <> $15 THEN 'owner'
    WHEN EXISTS (SELECT 1 FROM freezes f WHERE f.kind = 'all'
        OR (f.kind = 'agent' AND f.target IN ($3, $15)) OR (f.kind = 'workflow' AND f.target = $4)) THEN 'frozen'
    WHEN state <> 'active' THEN 'state'
    WHEN expires_at <= $10 THEN 'deadline'
    WHEN tokens_minted >= $14 THEN 'budget'
    END";

fn judge<'a>(t: &'a TokenRecord, owner: &'a SpiffeId, budget: u32) -> Query<'a> {
    query(JUDGE.as_str()).bind_all(token_args(t, owner, budget))
}

/// SQLite's token statements ([`record`]), built once: the mint formats nothing.
static JUDGE: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {REFUSAL} AS refusal, state FROM tasks WHERE id = $2"));
static COUNT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE tasks SET tokens_minted = tokens_minted + 1 WHERE id = $2 AND ({REFUSAL}) IS NULL"
    )
});
static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO tokens ({TOKEN_ROW}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )
});

/// The refusal a verdict row names; no row: no such task.
fn verdict(row: Option<&Row>) -> Result<Recorded, StoreError> {
    let Some(row) = row else {
        return Ok(Err(Refusal::NoTask));
    };
    match row.text_opt("refusal")? {
        None => Ok(Ok(())),
        Some(why) => refusal_named(&why, row).map(Err),
    }
}

/// The refusal a token write names (`why`), the task's `state` read from `row`
/// when the task is not active.
pub(super) fn refusal_named(why: &str, row: &Row) -> Result<Refusal, StoreError> {
    Ok(match why {
        "task" => Refusal::NoTask,
        "owner" => Refusal::NotOwner,
        "frozen" => Refusal::Frozen,
        "state" => {
            let state = row.text("state")?;
            Refusal::NotActive(
                TaskState::parse(&state).ok_or_else(|| corrupt(format!("task state {state:?}")))?,
            )
        }
        "deadline" => Refusal::PastDeadline,
        "budget" => Refusal::OutOfBudget,
        other => return Err(corrupt(format!("token refusal {other:?}"))),
    })
}

/// The answer of a write that judged the task and, when it took the token,
/// recorded it (`recorded`: the tokens it inserted). A token neither recorded nor
/// refused is an error: never reported as recorded.
fn written(row: Option<Row>) -> Result<Recorded, StoreError> {
    let judged = verdict(row.as_ref())?;
    let recorded = match &row {
        Some(r) => r.int("recorded")?,
        None => 0,
    };
    match (judged, recorded) {
        (Ok(()), 1) | (Err(_), 0) => Ok(judged),
        _ => Err(StoreError::Other(format!(
            "the token write recorded {recorded} tokens for the judgement {judged:?}"
        ))),
    }
}

/// Records a token inside `tx`, counting it against the task's budget, unless
/// the task refuses it (then nothing is written): not `owner`'s, frozen, not
/// active, past its deadline or out of budget. Its audit event is the caller's.
pub(super) async fn take(
    db: &Db,
    tx: &mut Tx,
    t: &TokenRecord,
    owner: &SpiffeId,
    budget: u32,
) -> Result<Recorded, StoreError> {
    if let Some(q) = dialect::token_in_one_statement(db, t, owner, budget) {
        return written(tx.fetch_optional(q).await?);
    }
    // Counted only when the task takes it. Why not is asked only then: this
    // path is SQLite's, whose one writer lets nothing change the row in between.
    let counted = tx
        .execute(query(COUNT.as_str()).bind_all(token_args(t, owner, budget)))
        .await?;
    if counted != 1 {
        let judged = verdict(tx.fetch_optional(judge(t, owner, budget)).await?.as_ref())?;
        if judged.is_ok() {
            return Err(StoreError::Other(format!(
                "task {} takes the token but was not counted",
                t.task
            )));
        }
        return Ok(judged);
    }
    tx.execute(query(INSERT.as_str()).bind_all(token_args(t, owner, budget)))
        .await?;
    Ok(Ok(()))
}

/// [`take`], and the token's audit event when it is recorded.
pub(super) async fn record(
    db: &Db,
    tx: &mut Tx,
    t: &TokenRecord,
    owner: &SpiffeId,
    budget: u32,
    audit: &AuditEvent,
) -> Result<Recorded, StoreError> {
    let recorded = take(db, tx, t, owner, budget).await?;
    if recorded.is_ok() {
        insert_audit(tx, &[&mints::minted_event(t, audit)]).await?;
    }
    Ok(recorded)
}

#[async_trait]
impl TokenStore for SqlStore {
    async fn insert_token(
        &self,
        t: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Recorded, StoreError> {
        // The batch records direct tokens; a delegated one (a redemption
        // records those, with its offer) is written alone.
        if t.parent.is_some() || t.depth != 0 {
            let db = &self.db;
            let mut tx = db.begin(Write::InsertToken).await?;
            let recorded = record(db, &mut tx, t, &t.agent, budget, audit).await?;
            match recorded {
                Ok(()) => tx.commit().await?,
                Err(_) => tx.rollback().await?,
            }
            return Ok(recorded);
        }
        self.mints().record(t, budget, audit).await
    }

    async fn token_status(&self, jti: Uuid) -> Result<Option<TokenStatus>, StoreError> {
        // A delegated token is revoked when any ancestor is.
        let row = self
            .db
            .fetch_optional(
                query(
                    "WITH RECURSIVE up (jti, parent_jti, revoked) AS (
                        SELECT jti, parent_jti, revoked_at IS NOT NULL FROM tokens WHERE jti = $1
                        UNION ALL
                        SELECT p.jti, p.parent_jti, p.revoked_at IS NOT NULL FROM tokens p JOIN up ON p.jti = up.parent_jti
                     )
                     SELECT EXISTS (SELECT 1 FROM up WHERE revoked) AS revoked, k.state
                     FROM tokens t JOIN tasks k ON k.id = t.task_id WHERE t.jti = $1",
                )
                .bind(jti),
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let state = row.text("state")?;
        Ok(Some(TokenStatus {
            revoked: row.bool("revoked")?,
            task_state: TaskState::parse(&state)
                .ok_or_else(|| corrupt(format!("task state {state:?}")))?,
        }))
    }

    async fn get_token(&self, jti: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        let q = query(format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE jti = $1")).bind(jti);
        let row = self.db.fetch_optional(q).await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_tokens(&self, f: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError> {
        let mut w = Filter::default();
        w.and_some("task_id = ?", f.task.map(|t| t.0))
            .and_some("agent = ?", f.agent.as_ref().map(|a| a.to_string()))
            .and_some("revoked_at IS NULL AND expires_at > ?", f.active_at);
        let n = w.arg(limit(f.limit));
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE {} ORDER BY issued_at DESC, jti LIMIT {n}",
            w.conditions()
        );
        let rows = self.db.fetch_all(query(sql).bind_all(w.args())).await?;
        rows.iter().map(token_from_row).collect()
    }
}
