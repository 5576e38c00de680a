//! The PostgreSQL store. Every state change and its audit event commit together;
//! anything that takes the revocation counter takes it first, so transactions
//! always lock in the same order (counter, then tasks, then tokens).
use super::*;
use crate::audit::Action;
use crate::domain::{Target, Trigger};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, Row};
use std::str::FromStr;
use std::time::Duration;

mod handoffs;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

fn map_err(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => StoreError::Unavailable(e.to_string()),
        E::Database(db) => match db.code().as_deref() {
            // Connection exceptions, admin shutdown, cannot connect now.
            Some(c) if c.starts_with("08") || c == "57P01" || c == "57P02" || c == "57P03" => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Other(e.to_string()),
        },
        E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) | E::TypeNotFound { .. } => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Other(e.to_string()),
    }
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

impl PgStore {
    /// Connects (failing after `timeout` when the database is unreachable) and
    /// applies the migrations.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let store = Self::connect_only(url, max_connections, timeout).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without touching the schema.
    pub async fn connect_only(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(format!("invalid database URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .connect_with(opts)
            .await
            .map_err(map_err)?;
        Ok(PgStore { pool })
    }

    /// Applies the migrations this version has and the database has not; returns
    /// the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>, StoreError> {
        let before: Vec<i64> = self
            .applied_checksums()
            .await?
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Other(format!("applying migrations: {e}")))?;
        Ok(MIGRATOR
            .iter()
            .map(|m| m.version)
            .filter(|v| !before.contains(v))
            .collect())
    }

    /// Refuses a schema that lacks a migration this version needs (when another
    /// role owns the schema and migrates it).
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let applied = self.applied_checksums().await?;
        let mut missing = vec![];
        for m in MIGRATOR.iter() {
            match applied.iter().find(|(v, _)| *v == m.version) {
                None => missing.push(format!("{} {}", m.version, m.description)),
                // Applied from another file than this version's: refused, as
                // applying the migrations would refuse it.
                Some((_, sum)) if sum.as_slice() != &*m.checksum => {
                    return Err(StoreError::Other(format!(
                        "migration {} {} was applied from a different file than this version's",
                        m.version, m.description
                    )));
                }
                Some(_) => {}
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(StoreError::Other(format!(
            "the database schema lacks migrations this version needs ({}); run `mayfly migrate` as the schema's owner, or set database.migrate = true",
            missing.join(", ")
        )))
    }

    /// Successfully applied migrations, with their checksums.
    async fn applied_checksums(&self) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        if !self.migrations_table().await? {
            return Ok(vec![]);
        }
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn migrations_table(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn task_from_row(r: &PgRow) -> Result<Task, StoreError> {
    let state: String = r.try_get("state").map_err(map_err)?;
    let Json(scopes): Json<Vec<Scope>> = r.try_get("scopes").map_err(map_err)?;
    let minted: i32 = r.try_get("tokens_minted").map_err(map_err)?;
    Ok(Task {
        id: TaskId(r.try_get("id").map_err(map_err)?),
        agent: r.try_get("agent").map_err(map_err)?,
        workflow: r.try_get("workflow").map_err(map_err)?,
        objective: r.try_get("objective").map_err(map_err)?,
        scopes,
        state: TaskState::parse(&state).ok_or_else(|| corrupt(format!("task state {state:?}")))?,
        opened_by: r.try_get("opened_by").map_err(map_err)?,
        created_at: r.try_get("created_at").map_err(map_err)?,
        expires_at: r.try_get("expires_at").map_err(map_err)?,
        ended_at: r.try_get("ended_at").map_err(map_err)?,
        end_reason: r.try_get("end_reason").map_err(map_err)?,
        tokens_minted: u32::try_from(minted).map_err(corrupt)?,
    })
}

fn token_from_row(r: &PgRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        jti: r.try_get("jti").map_err(map_err)?,
        task: TaskId(r.try_get("task_id").map_err(map_err)?),
        agent: r.try_get("agent").map_err(map_err)?,
        workflow: r.try_get("workflow").map_err(map_err)?,
        scope: Scope {
            audience: r.try_get("audience").map_err(map_err)?,
            resource: r.try_get("resource").map_err(map_err)?,
            action: r.try_get("action").map_err(map_err)?,
        },
        kid: r.try_get("kid").map_err(map_err)?,
        cert_thumbprint: r.try_get("cert_thumbprint").map_err(map_err)?,
        issued_at: r.try_get("issued_at").map_err(map_err)?,
        expires_at: r.try_get("expires_at").map_err(map_err)?,
        revoked_at: r.try_get("revoked_at").map_err(map_err)?,
        parent: r.try_get("parent_jti").map_err(map_err)?,
        depth: u32::try_from(r.try_get::<i32, _>("depth").map_err(map_err)?).map_err(corrupt)?,
    })
}

fn event_from_row(r: &PgRow) -> Result<Event, StoreError> {
    let seq: i64 = r.try_get("seq").map_err(map_err)?;
    let kind: String = r.try_get("target_kind").map_err(map_err)?;
    let value: String = r.try_get("target").map_err(map_err)?;
    let trigger: String = r.try_get("trigger").map_err(map_err)?;
    Ok(Event {
        seq: u64::try_from(seq).map_err(corrupt)?,
        revocation: Revocation {
            target: Target::from_parts(&kind, &value)
                .ok_or_else(|| corrupt(format!("revocation {seq} target {kind}:{value:?}")))?,
            reason: r.try_get("reason").map_err(map_err)?,
            actor: r.try_get("actor").map_err(map_err)?,
            trigger: Trigger::parse(&trigger)
                .ok_or_else(|| corrupt(format!("revocation {seq} trigger {trigger:?}")))?,
            at: r.try_get("at").map_err(map_err)?,
        },
    })
}

fn audit_from_row(r: &PgRow) -> Result<AuditEvent, StoreError> {
    let action: String = r.try_get("action").map_err(map_err)?;
    let action =
        Action::parse(&action).ok_or_else(|| corrupt(format!("audit action {action:?}")))?;
    let task: Option<uuid::Uuid> = r.try_get("task_id").map_err(map_err)?;
    let Json(detail): Json<serde_json::Value> = r.try_get("detail").map_err(map_err)?;
    Ok(AuditEvent {
        at: r.try_get("at").map_err(map_err)?,
        actor: r.try_get("actor").map_err(map_err)?,
        action,
        task: task.map(TaskId),
        agent: r.try_get("agent").map_err(map_err)?,
        jti: r.try_get("jti").map_err(map_err)?,
        reason: r.try_get("reason").map_err(map_err)?,
        detail,
    })
}

async fn insert_audit(conn: &mut PgConnection, events: &[&AuditEvent]) -> Result<(), sqlx::Error> {
    for e in events {
        sqlx::query(
            "INSERT INTO audit_events (at, actor, action, outcome, task_id, agent, jti, reason, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(e.at)
        .bind(&e.actor)
        .bind(e.action.as_str())
        .bind(e.action.outcome())
        .bind(e.task.map(|t| t.0))
        .bind(&e.agent)
        .bind(e.jti)
        .bind(&e.reason)
        .bind(Json(&e.detail))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Takes the next sequence number (and with it the counter's row lock), and the
/// revocation's time: never earlier than the previous revocation's, so times follow
/// the sequence even when revokers' clocks or lock waits differ.
async fn next_seq(
    conn: &mut PgConnection,
    r: &Revocation,
) -> Result<(i64, Revocation), sqlx::Error> {
    let (seq, at): (i64, OffsetDateTime) = sqlx::query_as(
        "UPDATE revocation_counter SET last_seq = last_seq + 1, last_at = GREATEST(last_at, $1)
         RETURNING last_seq, last_at",
    )
    .bind(r.at)
    .fetch_one(&mut *conn)
    .await?;
    Ok((seq, Revocation { at, ..r.clone() }))
}

async fn insert_revocation(
    conn: &mut PgConnection,
    seq: i64,
    r: &Revocation,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO revocations (seq, target_kind, target, reason, actor, trigger, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(seq)
    .bind(r.target.kind())
    .bind(r.target.value())
    .bind(&r.reason)
    .bind(&r.actor)
    .bind(r.trigger.as_str())
    .bind(r.at)
    .execute(&mut *conn)
    .await?;
    // Delivered to every listening broker when (and only if) this transaction
    // commits, in commit order: other replicas wake their watch streams at once.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(seq.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The LISTEN/NOTIFY channel of revocation commits (the payload is the sequence
/// number) and approval decisions (the payload is [`APPROVAL_NOTICE`]).
const NOTIFY_CHANNEL: &str = "mayfly_revocations";
const APPROVAL_NOTICE: &str = "approval";
/// The payload of a new signing key's registration.
const KEYS_NOTICE: &str = "keys";

/// [`RevocationFeed`] over PostgreSQL LISTEN/NOTIFY, on a connection of its own.
struct PgFeed {
    listener: sqlx::postgres::PgListener,
}

#[async_trait]
impl RevocationFeed for PgFeed {
    async fn next(&mut self) -> Result<Option<Notice>, StoreError> {
        loop {
            match self.listener.try_recv().await.map_err(map_err)? {
                // sqlx re-LISTENs on the new connection by itself.
                None => return Ok(None),
                Some(n) => match n.payload() {
                    APPROVAL_NOTICE => return Ok(Some(Notice::ApprovalDecided)),
                    KEYS_NOTICE => return Ok(Some(Notice::KeysChanged)),
                    p => match p.parse::<u64>() {
                        Ok(seq) => return Ok(Some(Notice::Revocation(seq))),
                        // Not ours (someone else NOTIFYing on the channel): ignore.
                        Err(_) => continue,
                    },
                },
            }
        }
    }
}

/// Marks every unrevoked token the target covers as revoked by `seq`.
async fn revoke_tokens(
    conn: &mut PgConnection,
    target: &Target,
    seq: i64,
    at: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    const SET: &str =
        "UPDATE tokens SET revoked_at = $1, revocation_seq = $2 WHERE revoked_at IS NULL";
    let q = match target {
        Target::Token(j) => sqlx::query(AssertSqlSafe(format!("{SET} AND jti = $3")))
            .bind(at)
            .bind(seq)
            .bind(*j),
        Target::Task(t) => sqlx::query(AssertSqlSafe(format!("{SET} AND task_id = $3")))
            .bind(at)
            .bind(seq)
            .bind(t.0),
        Target::Agent(a) => sqlx::query(AssertSqlSafe(format!("{SET} AND agent = $3")))
            .bind(at)
            .bind(seq)
            .bind(a.as_str()),
        Target::Workflow(w) => sqlx::query(AssertSqlSafe(format!("{SET} AND workflow = $3")))
            .bind(at)
            .bind(seq)
            .bind(w.as_str()),
        Target::All => sqlx::query(SET).bind(at).bind(seq),
    };
    let direct = q.execute(&mut *conn).await?.rows_affected();
    // A token's or an agent's revocation reaches every token delegated from theirs
    // (a task's, a workflow's or everything already covers a whole task). A second
    // statement, so its snapshot is taken after the first one's row locks: a
    // redemption that held a parent when the first one reached it has committed
    // by now, and its child is seen here.
    let seed = match target {
        Target::Token(_) => "SELECT jti FROM tokens WHERE jti = $3::uuid",
        Target::Agent(_) => "SELECT jti FROM tokens WHERE agent = $3",
        Target::Task(_) | Target::Workflow(_) | Target::All => return Ok(direct),
    };
    let cascade = format!(
        "WITH RECURSIVE d (jti) AS (
            {seed}
            UNION
            SELECT c.jti FROM tokens c JOIN d ON c.parent_jti = d.jti
         )
         UPDATE tokens SET revoked_at = $1, revocation_seq = $2
         WHERE revoked_at IS NULL AND jti IN (SELECT jti FROM d)"
    );
    // Redemptions share-lock every ancestor, so one statement sees every child;
    // repeating until nothing changes (at most the longest chain) makes the
    // cascade complete whatever committed while it ran.
    let mut total = direct;
    for _ in 0..=MAX_CHAIN {
        let n = sqlx::query(AssertSqlSafe(cascade.clone()))
            .bind(at)
            .bind(seq)
            .bind(target.value())
            .execute(&mut *conn)
            .await?
            .rows_affected();
        total += n;
        if n == 0 {
            break;
        }
    }
    Ok(total)
}

/// Longer than any delegation chain (`max_delegation_depth` is at most 16).
const MAX_CHAIN: usize = 17;

/// Moves the active tasks a target covers to `revoked`.
async fn stop_tasks(conn: &mut PgConnection, r: &Revocation, seq: i64) -> Result<u64, sqlx::Error> {
    // Each stopped task gets its own audit event, so "who ended this task and why"
    // is answered per task.
    let filter = match &r.target {
        Target::Token(_) => return Ok(0),
        Target::Task(_) => "AND id = $5::uuid",
        Target::Agent(_) => "AND agent = $5",
        Target::Workflow(_) => "AND workflow = $5",
        Target::All => "AND $5::text IS NULL",
    };
    let sql = format!(
        "WITH stopped AS (
            UPDATE tasks SET state = 'revoked', ended_at = $1, end_reason = $2
            WHERE state = 'active' {filter}
            RETURNING id, agent
         )
         INSERT INTO audit_events (at, actor, action, outcome, task_id, agent, reason, detail)
         SELECT $1, $3, '{action}', '{outcome}', id, agent, $2, jsonb_build_object('sequence', $4::bigint)
         FROM stopped",
        action = Action::TaskRevoked.as_str(),
        outcome = Action::TaskRevoked.outcome(),
    );
    let value = match &r.target {
        Target::All => None,
        t => Some(t.value()),
    };
    let done = sqlx::query(AssertSqlSafe(sql))
        .bind(r.at)
        .bind(&r.reason)
        .bind(&r.actor)
        .bind(seq)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// Records a token and its audit event in one statement, counting it against the
/// task's budget: true unless the task is not active, not `owner`'s, past its
/// deadline or out of budget (then nothing is written). One statement is one
/// round trip and, outside a transaction, one implicit transaction.
async fn insert_token<'e>(
    on: impl sqlx::PgExecutor<'e>,
    t: &TokenRecord,
    owner: &str,
    budget: u32,
    audit: &AuditEvent,
) -> Result<bool, sqlx::Error> {
    let inserted: i64 = sqlx::query_scalar(
        "WITH t AS (
            UPDATE tasks SET tokens_minted = tokens_minted + 1
            WHERE id = $1 AND state = 'active' AND agent = $18 AND tokens_minted < $3 AND expires_at > $4
              AND NOT EXISTS (SELECT 1 FROM freezes f WHERE f.kind = 'all'
                  OR (f.kind = 'agent' AND f.target IN ($2, $18)) OR (f.kind = 'workflow' AND f.target = $6))
            RETURNING id
         ), tok AS (
            INSERT INTO tokens (jti, task_id, agent, workflow, audience, resource, action, kid, cert_thumbprint, issued_at, expires_at, parent_jti, depth)
            SELECT $5, t.id, $2, $6, $7, $8, $9, $10, $11, $4, $12, $19, $20 FROM t
            RETURNING jti
         ), aud AS (
            INSERT INTO audit_events (at, actor, action, outcome, task_id, agent, jti, reason, detail)
            SELECT $4, $13, $14, $15, $1, $2, tok.jti, $16, $17 FROM tok
         )
         SELECT count(*) FROM tok",
    )
    .bind(t.task.0)
    .bind(&t.agent)
    .bind(i32::try_from(budget).unwrap_or(i32::MAX))
    .bind(t.issued_at)
    .bind(t.jti)
    .bind(&t.workflow)
    .bind(&t.scope.audience)
    .bind(&t.scope.resource)
    .bind(&t.scope.action)
    .bind(&t.kid)
    .bind(&t.cert_thumbprint)
    .bind(t.expires_at)
    .bind(&audit.actor)
    .bind(audit.action.as_str())
    .bind(audit.action.outcome())
    .bind(&audit.reason)
    .bind(Json(&audit.detail))
    .bind(owner)
    .bind(t.parent)
    .bind(i32::try_from(t.depth).unwrap_or(i32::MAX))
    .fetch_one(on)
    .await?;
    Ok(inserted == 1)
}

const TASK_COLUMNS: &str = "id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at, ended_at, end_reason, tokens_minted";
const TOKEN_COLUMNS: &str = "jti, task_id, agent, workflow, audience, resource, action, kid, cert_thumbprint, issued_at, expires_at, revoked_at, parent_jti, depth";

fn limit(n: u32) -> i64 {
    i64::from(n.clamp(1, 1000))
}

#[async_trait]
impl TaskStore for PgStore {
    async fn insert_task(&self, task: &Task, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO tasks (id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at, tokens_minted)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0)",
        )
        .bind(task.id.0)
        .bind(&task.agent)
        .bind(&task.workflow)
        .bind(&task.objective)
        .bind(Json(&task.scopes))
        .bind(task.state.as_str())
        .bind(&task.opened_by)
        .bind(task.created_at)
        .bind(task.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(&mut tx, &[audit]).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE ($1::text IS NULL OR agent = $1) AND ($2::text IS NULL OR state = $2)
             ORDER BY created_at DESC, id LIMIT $3"
        )))
        .bind(&f.agent)
        .bind(f.state.map(TaskState::as_str))
        .bind(limit(f.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(task_from_row).collect()
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let (seq, revocation) = next_seq(&mut tx, revocation).await.map_err(map_err)?;
        let revocation = &revocation;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tasks SET state = $2, ended_at = $3, end_reason = $4
             WHERE id = $1 AND state = 'active' RETURNING {TASK_COLUMNS}"
        )))
        .bind(id.0)
        .bind(to.as_str())
        .bind(revocation.at)
        .bind(&revocation.reason)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            // Nothing changes; rolling back returns the sequence number.
            tx.rollback().await.map_err(map_err)?;
            return Ok(match self.get_task(id).await? {
                Some(t) => EndOutcome::NotActive(t.state),
                None => EndOutcome::NotFound,
            });
        };
        let task = Box::new(task_from_row(&row)?);
        insert_revocation(&mut tx, seq, revocation)
            .await
            .map_err(map_err)?;
        let tokens = revoke_tokens(&mut tx, &revocation.target, seq, revocation.at)
            .await
            .map_err(map_err)?;
        let events: Vec<&AuditEvent> = audit.iter().collect();
        insert_audit(&mut tx, &events).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(EndOutcome::Ended {
            task,
            revoked: Revoked {
                event: Event {
                    seq: seq as u64,
                    revocation: revocation.clone(),
                },
                tokens_revoked: tokens,
                tasks_stopped: 1,
            },
        })
    }

    async fn count_active_tasks(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state = 'active'")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        u64::try_from(n).map_err(corrupt)
    }

    async fn overdue_tasks(
        &self,
        now: OffsetDateTime,
        after: Option<(OffsetDateTime, TaskId)>,
        n: u32,
    ) -> Result<Vec<(OffsetDateTime, TaskId)>, StoreError> {
        let rows: Vec<(OffsetDateTime, uuid::Uuid)> = sqlx::query_as(
            "SELECT expires_at, id FROM tasks
             WHERE state = 'active' AND expires_at <= $1
               AND ($2::timestamptz IS NULL OR (expires_at, id) > ($2, $3::uuid))
             ORDER BY expires_at, id LIMIT $4",
        )
        .bind(now)
        .bind(after.map(|(at, _)| at))
        .bind(after.map(|(_, id)| id.0))
        .bind(limit(n))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(|(at, id)| (at, TaskId(id))).collect())
    }
}

#[async_trait]
impl TokenStore for PgStore {
    async fn insert_token(
        &self,
        t: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        insert_token(&self.pool, t, &t.agent, budget, audit)
            .await
            .map_err(map_err)
    }

    async fn get_token(&self, jti: uuid::Uuid) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE jti = $1"
        )))
        .bind(jti)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn token_status(&self, jti: uuid::Uuid) -> Result<Option<TokenStatus>, StoreError> {
        // A delegated token is revoked when any ancestor is.
        let row = sqlx::query(
            "WITH RECURSIVE up (jti, parent_jti, revoked) AS (
                SELECT jti, parent_jti, revoked_at IS NOT NULL FROM tokens WHERE jti = $1
                UNION ALL
                SELECT p.jti, p.parent_jti, p.revoked_at IS NOT NULL FROM tokens p JOIN up ON p.jti = up.parent_jti
             )
             SELECT (SELECT bool_or(revoked) FROM up) AS revoked, k.state
             FROM tokens t JOIN tasks k ON k.id = t.task_id WHERE t.jti = $1",
        )
        .bind(jti)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get("state").map_err(map_err)?;
        Ok(Some(TokenStatus {
            revoked: row.try_get("revoked").map_err(map_err)?,
            task_state: TaskState::parse(&state)
                .ok_or_else(|| corrupt(format!("task state {state:?}")))?,
        }))
    }

    async fn list_tokens(&self, f: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens
             WHERE ($1::uuid IS NULL OR task_id = $1) AND ($2::text IS NULL OR agent = $2)
               AND ($3::timestamptz IS NULL OR (revoked_at IS NULL AND expires_at > $3))
             ORDER BY issued_at DESC, jti LIMIT $4"
        )))
        .bind(f.task.map(|t| t.0))
        .bind(&f.agent)
        .bind(f.active_at)
        .bind(limit(f.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(token_from_row).collect()
    }
}

#[async_trait]
impl RevocationStore for PgStore {
    async fn revoke(
        &self,
        r: &Revocation,
        audit: &AuditEvent,
    ) -> Result<Option<Revoked>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let (seq, r) = next_seq(&mut tx, r).await.map_err(map_err)?;
        let r = &r;
        let exists = match &r.target {
            Target::Token(j) => {
                sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM tokens WHERE jti = $1)")
                    .bind(*j)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?
            }
            Target::Task(t) => {
                sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1)")
                    .bind(t.0)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?
            }
            // An agent or workflow may be revoked before it has any task.
            Target::Agent(_) | Target::Workflow(_) | Target::All => true,
        };
        if !exists {
            tx.rollback().await.map_err(map_err)?;
            return Ok(None);
        }
        let tasks = stop_tasks(&mut tx, r, seq).await.map_err(map_err)?;
        if let Target::Agent(a) = &r.target {
            // Offers to a revoked agent lapse with its tokens: it redeems none of
            // them afterwards (a redemption in flight holds the offer's row, and
            // this waits for it; its child is then revoked below).
            sqlx::query(
                "UPDATE delegations SET expires_at = LEAST(expires_at, $2)
                 WHERE sub_agent = $1 AND redeemed_at IS NULL AND expires_at > $2",
            )
            .bind(a.as_str())
            .bind(r.at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        insert_revocation(&mut tx, seq, r).await.map_err(map_err)?;
        let tokens = revoke_tokens(&mut tx, &r.target, seq, r.at)
            .await
            .map_err(map_err)?;
        let mut audit = audit.clone();
        if let serde_json::Value::Object(m) = &mut audit.detail {
            m.insert("sequence".into(), seq.into());
            m.insert("tokens_revoked".into(), tokens.into());
            m.insert("tasks_stopped".into(), tasks.into());
        }
        insert_audit(&mut tx, &[&audit]).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(Revoked {
            event: Event {
                seq: seq as u64,
                revocation: r.clone(),
            },
            tokens_revoked: tokens,
            tasks_stopped: tasks,
        }))
    }

    async fn revocations_after(&self, after: u64, n: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, target_kind, target, reason, actor, trigger, at FROM revocations
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(limit(n))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn revocation_feed(&self) -> Result<Box<dyn RevocationFeed>, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
            .await
            .map_err(map_err)?;
        listener.listen(NOTIFY_CHANNEL).await.map_err(map_err)?;
        Ok(Box::new(PgFeed { listener }))
    }

    async fn last_revocation_seq(&self) -> Result<u64, StoreError> {
        let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM revocation_counter")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        u64::try_from(seq).map_err(corrupt)
    }
}

#[async_trait]
impl KeyStore for PgStore {
    /// A new key (not a renewal) is announced to every broker, whose JWKS is
    /// served from memory.
    async fn register_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "WITH up AS (
                 INSERT INTO signing_keys (kid, public_key, created_at, not_after) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kid) DO UPDATE SET not_after = GREATEST(signing_keys.not_after, EXCLUDED.not_after)
                 WHERE signing_keys.public_key = EXCLUDED.public_key
                 RETURNING (xmax = 0) AS inserted
             )
             SELECT pg_notify($5, $6) FROM up WHERE inserted",
        )
        .bind(&k.kid)
        .bind(&k.public_key)
        .bind(k.created_at)
        .bind(k.not_after)
        .bind(NOTIFY_CHANNEL)
        .bind(KEYS_NOTICE)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn live_keys(&self, now: OffsetDateTime) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, public_key, created_at, not_after FROM signing_keys WHERE not_after > $1 ORDER BY created_at",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    kid: r.try_get("kid").map_err(map_err)?,
                    public_key: r.try_get("public_key").map_err(map_err)?,
                    created_at: r.try_get("created_at").map_err(map_err)?,
                    not_after: r.try_get("not_after").map_err(map_err)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        insert_audit(&mut conn, &[e]).await.map_err(map_err)
    }

    async fn audit_for_task(&self, task: TaskId) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, task_id, agent, jti, reason, detail FROM audit_events
             WHERE task_id = $1 ORDER BY seq NULLS LAST, id",
        )
        .bind(task.0)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn audit_chain(&self, after: u64, upto: u64, n: u32) -> Result<Vec<Sealed>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, prev_hash, hash, (extract(epoch FROM at) * 1000000)::bigint AS at_micros,
                    actor, action, outcome, task_id::text AS task, agent, jti::text AS jti, reason,
                    detail::text AS detail
             FROM audit_events WHERE seq > $1 AND seq <= $3 ORDER BY seq LIMIT $2",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(limit(n))
        .bind(i64::try_from(upto).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq").map_err(map_err)?;
                Ok(Sealed {
                    seq: u64::try_from(seq).map_err(corrupt)?,
                    prev_hash: r.try_get("prev_hash").map_err(map_err)?,
                    hash: r.try_get("hash").map_err(map_err)?,
                    at_micros: r.try_get("at_micros").map_err(map_err)?,
                    actor: r.try_get("actor").map_err(map_err)?,
                    action: r.try_get("action").map_err(map_err)?,
                    outcome: r.try_get("outcome").map_err(map_err)?,
                    task: r.try_get("task").map_err(map_err)?,
                    agent: r.try_get("agent").map_err(map_err)?,
                    jti: r.try_get("jti").map_err(map_err)?,
                    reason: r.try_get("reason").map_err(map_err)?,
                    detail: r.try_get("detail").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn query_audit(&self, f: &AuditFilter) -> Result<Vec<(u64, AuditEvent)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, task_id, agent, jti, reason, detail FROM audit_events
             WHERE seq > $1
               AND ($2::text IS NULL OR actor = $2 OR agent = $2)
               AND ($3::uuid IS NULL OR task_id = $3)
               AND ($4::text IS NULL OR action = $4)
               AND ($5::timestamptz IS NULL OR at >= $5)
               AND ($6::timestamptz IS NULL OR at < $6)
             ORDER BY seq LIMIT $7",
        )
        .bind(i64::try_from(f.after).unwrap_or(i64::MAX))
        .bind(&f.agent)
        .bind(f.task.map(|t| t.0))
        .bind(&f.action)
        .bind(f.since)
        .bind(f.until)
        .bind(limit(f.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq").map_err(map_err)?;
                Ok((u64::try_from(seq).map_err(corrupt)?, audit_from_row(r)?))
            })
            .collect()
    }

    async fn token_access(
        &self,
        audience: &str,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<Access>, StoreError> {
        let rows: Vec<(String, String, i64, OffsetDateTime, OffsetDateTime)> = sqlx::query_as(
            "SELECT agent, resource, count(*), min(issued_at), max(issued_at) FROM tokens
             WHERE audience = $1
               AND ($2::timestamptz IS NULL OR issued_at >= $2)
               AND ($3::timestamptz IS NULL OR issued_at < $3)
             GROUP BY agent, resource ORDER BY agent, resource",
        )
        .bind(audience)
        .bind(since)
        .bind(until)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|(agent, resource, n, first, last)| {
                Ok(Access {
                    agent,
                    resource,
                    tokens: u64::try_from(n).map_err(corrupt)?,
                    first,
                    last,
                })
            })
            .collect()
    }

    async fn seal_audit(&self, batch: u32) -> Result<u32, StoreError> {
        let n: i32 = sqlx::query_scalar("SELECT mayfly_audit_seal($1)")
            .bind(i32::try_from(batch).unwrap_or(i32::MAX))
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        u32::try_from(n).map_err(corrupt)
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        let (seq, hash, max_seq): (i64, Vec<u8>, i64) = sqlx::query_as(
            "SELECT last_seq, last_hash, (SELECT coalesce(max(seq), 0) FROM audit_events)
             FROM audit_chain",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(AuditHead {
            seq: u64::try_from(seq).map_err(corrupt)?,
            hash,
            max_seq: u64::try_from(max_seq).map_err(corrupt)?,
        })
    }
}

#[async_trait]
impl Store for PgStore {
    /// An idle pooled connection answers `SELECT 1`; with none idle, a pool with
    /// room makes one (and keeps it); a pool that is full and busy, or whose idle
    /// connection was broken, is checked with a connection of the probe's own. So
    /// a busy pool is not mistaken for a database that is down, nor is one broken
    /// connection, nor a server that is only at its connection limit.
    async fn ping(&self) -> Result<(), StoreError> {
        let pooled = match self.pool.try_acquire() {
            Some(conn) => Some(conn),
            None if self.pool.size() < self.pool.options().get_max_connections() => {
                self.pool.acquire().await.ok()
            }
            None => None,
        };
        if let Some(mut conn) = pooled
            && sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok()
        {
            return Ok(());
        }
        use sqlx::Connection as _;
        let mut conn = match PgConnection::connect_with(&self.pool.connect_options()).await {
            Ok(c) => c,
            // too_many_connections: the server answers; it is only full.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("53300") => {
                return Ok(());
            }
            Err(e) => return Err(map_err(e)),
        };
        sqlx::query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(map_err)?;
        let _ = conn.close().await;
        Ok(())
    }
}
