//! The embedded SQLite store, for `mayfly dev` and single-node installs: the same
//! contract as PostgreSQL (the store conformance suite runs against both), in one
//! file. One broker process owns the file (a lock file beside it); every write goes
//! through one connection, so transactions never interleave and need no row locks,
//! while reads use a pool of read-only connections (WAL mode, so they never block
//! the writer). Notices of revocations and approval decisions go to this process's
//! feeds after the write commits; there is no other broker to tell.
use super::*;
use crate::audit::Action;
use crate::audit::chain;
use crate::domain::{Target, Trigger};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

mod handoffs;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_sqlite");

/// How many notices a slow feed may fall behind before it is told to catch up.
const FEED_CAPACITY: usize = 1024;

#[derive(Clone)]
pub struct SqliteStore {
    /// One connection: every write, in order.
    writer: SqlitePool,
    /// Read-only connections.
    reader: SqlitePool,
    notices: broadcast::Sender<Notice>,
    /// Held while the store lives: a second broker on the same file is refused.
    _lock: Arc<std::fs::File>,
}

fn map_err(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => {
            StoreError::Unavailable(e.to_string())
        }
        E::Database(db) => match db.code().as_deref() {
            // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN
            // (primary result codes, as extended codes carry them in the low byte).
            Some(c) if matches!(c.parse::<i32>().map(|c| c & 0xff), Ok(5 | 6 | 10 | 13 | 14)) => {
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

/// Unix microseconds, the precision PostgreSQL keeps.
fn micros(t: OffsetDateTime) -> i64 {
    let us = t.unix_timestamp_nanos().div_euclid(1000);
    i64::try_from(us).unwrap_or(if us < 0 { i64::MIN } else { i64::MAX })
}

fn from_micros(us: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|e| corrupt(format!("stored time {us}: {e}")))
}

fn time_at(r: &SqliteRow, col: &str) -> Result<OffsetDateTime, StoreError> {
    from_micros(r.try_get(col).map_err(map_err)?)
}

fn time_opt(r: &SqliteRow, col: &str) -> Result<Option<OffsetDateTime>, StoreError> {
    r.try_get::<Option<i64>, _>(col)
        .map_err(map_err)?
        .map(from_micros)
        .transpose()
}

fn uuid_at(r: &SqliteRow, col: &str) -> Result<Uuid, StoreError> {
    let s: String = r.try_get(col).map_err(map_err)?;
    Uuid::parse_str(&s).map_err(|e| corrupt(format!("{col} {s:?}: {e}")))
}

fn uuid_opt(r: &SqliteRow, col: &str) -> Result<Option<Uuid>, StoreError> {
    let s: Option<String> = r.try_get(col).map_err(map_err)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|e| corrupt(format!("{col} {s:?}: {e}"))))
        .transpose()
}

fn json_at<T: serde::de::DeserializeOwned>(r: &SqliteRow, col: &str) -> Result<T, StoreError> {
    let s: String = r.try_get(col).map_err(map_err)?;
    serde_json::from_str(&s).map_err(|e| corrupt(format!("{col}: {e}")))
}

fn u32_at(r: &SqliteRow, col: &str) -> Result<u32, StoreError> {
    let n: i64 = r.try_get(col).map_err(map_err)?;
    u32::try_from(n).map_err(|e| corrupt(format!("{col} {n}: {e}")))
}

fn to_json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Other(format!("encoding JSON: {e}")))
}

fn limit(n: u32) -> i64 {
    i64::from(n.clamp(1, 1000))
}

fn seq_param(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The database file a `sqlite:` URL names.
fn database_path(url: &str) -> Result<PathBuf, StoreError> {
    match super::DatabaseUrl::parse(url) {
        Ok(super::DatabaseUrl::Sqlite(path)) => Ok(path),
        _ => Err(StoreError::Other(format!(
            "{:?} does not name a database file: use sqlite://path/to/mayfly.db (an in-memory database would lose every token's record on restart)",
            crate::domain::text::quote(url)
        ))),
    }
}

impl SqliteStore {
    /// Opens (creating it if missing) the database file a `sqlite:` URL names,
    /// takes its lock file and applies the migrations.
    pub async fn connect(
        url: &str,
        max_readers: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let path = database_path(url)?;
        Self::open(&path, max_readers, timeout).await
    }

    pub async fn open(
        path: &Path,
        max_readers: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let lock = lock_file(path)?;
        let base = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // A committed token survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // REPLACE fires the delete triggers too, so it cannot get past the
            // audit trail's append-only triggers.
            .pragma("recursive_triggers", "ON")
            .busy_timeout(timeout);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(timeout)
            .connect_with(base.clone().create_if_missing(true))
            .await
            .map_err(map_err)?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| StoreError::Other(format!("applying migrations: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_readers.max(1))
            .acquire_timeout(timeout)
            .connect_with(base.read_only(true))
            .await
            .map_err(map_err)?;
        let (notices, _) = broadcast::channel(FEED_CAPACITY);
        Ok(SqliteStore {
            writer,
            reader,
            notices,
            _lock: Arc::new(lock),
        })
    }

    /// Commits, then tells this process's feeds, in a task of its own: a caller
    /// that stops waiting (a cancelled request) cannot commit the write without
    /// its notice.
    async fn commit_and_notify(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Sqlite>,
        n: Notice,
    ) -> Result<(), StoreError> {
        let notices = self.notices.clone();
        tokio::spawn(async move {
            tx.commit().await.map_err(map_err)?;
            // No feed listening is fine: nobody to tell.
            let _ = notices.send(n);
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Other(format!("committing: {e}")))?
    }
}

/// `<database>.lock`, held exclusively: two brokers on one SQLite file would each
/// tell only their own verifiers about revocations.
fn lock_file(db: &Path) -> Result<std::fs::File, StoreError> {
    // The same file by any name (a symlink, `..`) gets the same lock.
    let db = match db.canonicalize() {
        Ok(real) => real,
        Err(_) => match (db.parent(), db.file_name()) {
            (Some(dir), Some(name)) => {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                dir.canonicalize()
                    .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?
                    .join(name)
            }
            _ => db.to_path_buf(),
        },
    };
    let db = db.as_path();
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Unavailable(format!("opening {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "{} is in use by another Mayfly process: the SQLite store serves one broker (use PostgreSQL for replicas)",
            db.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "locking {}: {e}",
            path.display()
        ))),
    }
}

fn task_from_row(r: &SqliteRow) -> Result<Task, StoreError> {
    let state: String = r.try_get("state").map_err(map_err)?;
    Ok(Task {
        id: TaskId(uuid_at(r, "id")?),
        agent: r.try_get("agent").map_err(map_err)?,
        workflow: r.try_get("workflow").map_err(map_err)?,
        objective: r.try_get("objective").map_err(map_err)?,
        scopes: json_at(r, "scopes")?,
        state: TaskState::parse(&state).ok_or_else(|| corrupt(format!("task state {state:?}")))?,
        opened_by: r.try_get("opened_by").map_err(map_err)?,
        created_at: time_at(r, "created_at")?,
        expires_at: time_at(r, "expires_at")?,
        ended_at: time_opt(r, "ended_at")?,
        end_reason: r.try_get("end_reason").map_err(map_err)?,
        tokens_minted: u32_at(r, "tokens_minted")?,
    })
}

fn token_from_row(r: &SqliteRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        jti: uuid_at(r, "jti")?,
        task: TaskId(uuid_at(r, "task_id")?),
        agent: r.try_get("agent").map_err(map_err)?,
        workflow: r.try_get("workflow").map_err(map_err)?,
        scope: Scope {
            audience: r.try_get("audience").map_err(map_err)?,
            resource: r.try_get("resource").map_err(map_err)?,
            action: r.try_get("action").map_err(map_err)?,
        },
        kid: r.try_get("kid").map_err(map_err)?,
        cert_thumbprint: r.try_get("cert_thumbprint").map_err(map_err)?,
        issued_at: time_at(r, "issued_at")?,
        expires_at: time_at(r, "expires_at")?,
        revoked_at: time_opt(r, "revoked_at")?,
        parent: uuid_opt(r, "parent_jti")?,
        depth: u32_at(r, "depth")?,
    })
}

fn event_from_row(r: &SqliteRow) -> Result<Event, StoreError> {
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
            at: time_at(r, "at")?,
        },
    })
}

fn audit_from_row(r: &SqliteRow) -> Result<AuditEvent, StoreError> {
    let action: String = r.try_get("action").map_err(map_err)?;
    let action =
        Action::parse(&action).ok_or_else(|| corrupt(format!("audit action {action:?}")))?;
    Ok(AuditEvent {
        at: time_at(r, "at")?,
        actor: r.try_get("actor").map_err(map_err)?,
        action,
        task: uuid_opt(r, "task_id")?.map(TaskId),
        agent: r.try_get("agent").map_err(map_err)?,
        jti: uuid_opt(r, "jti")?,
        reason: r.try_get("reason").map_err(map_err)?,
        detail: json_at(r, "detail")?,
    })
}

async fn insert_audit(
    conn: &mut SqliteConnection,
    events: &[&AuditEvent],
) -> Result<(), StoreError> {
    for e in events {
        sqlx::query(
            "INSERT INTO audit_events (at, actor, action, outcome, task_id, agent, jti, reason, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(micros(e.at))
        .bind(&e.actor)
        .bind(e.action.as_str())
        .bind(e.action.outcome())
        .bind(e.task.map(|t| t.0.to_string()))
        .bind(&e.agent)
        .bind(e.jti.map(|j| j.to_string()))
        .bind(&e.reason)
        .bind(to_json(&e.detail)?)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    }
    Ok(())
}

/// Takes the next sequence number and the revocation's time: never earlier than
/// the previous revocation's, so times follow the sequence.
async fn next_seq(
    conn: &mut SqliteConnection,
    r: &Revocation,
) -> Result<(i64, Revocation), StoreError> {
    let (seq, at): (i64, i64) = sqlx::query_as(
        "UPDATE revocation_counter SET last_seq = last_seq + 1, last_at = max(last_at, ?1)
         RETURNING last_seq, last_at",
    )
    .bind(micros(r.at))
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok((
        seq,
        Revocation {
            at: from_micros(at)?,
            ..r.clone()
        },
    ))
}

async fn insert_revocation(
    conn: &mut SqliteConnection,
    seq: i64,
    r: &Revocation,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revocations (seq, target_kind, target, reason, actor, trigger, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(seq)
    .bind(r.target.kind())
    .bind(r.target.value())
    .bind(&r.reason)
    .bind(&r.actor)
    .bind(r.trigger.as_str())
    .bind(micros(r.at))
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Marks every unrevoked token the target covers as revoked by `seq`, and for a
/// token or an agent every token delegated from theirs. Writes never interleave,
/// so one pass sees every descendant.
async fn revoke_tokens(
    conn: &mut SqliteConnection,
    target: &Target,
    seq: i64,
    at: OffsetDateTime,
) -> Result<u64, StoreError> {
    let covered = match target {
        Target::Token(_) => {
            "jti IN (WITH RECURSIVE d (jti) AS (
                SELECT jti FROM tokens WHERE jti = ?3
                UNION SELECT c.jti FROM tokens c JOIN d ON c.parent_jti = d.jti
             ) SELECT jti FROM d)"
        }
        Target::Agent(_) => {
            "jti IN (WITH RECURSIVE d (jti) AS (
                SELECT jti FROM tokens WHERE agent = ?3
                UNION SELECT c.jti FROM tokens c JOIN d ON c.parent_jti = d.jti
             ) SELECT jti FROM d)"
        }
        Target::Task(_) => "task_id = ?3",
        Target::Workflow(_) => "workflow = ?3",
        Target::All => "?3 = ''",
    };
    let done = sqlx::query(AssertSqlSafe(format!(
        "UPDATE tokens SET revoked_at = ?1, revocation_seq = ?2 WHERE revoked_at IS NULL AND {covered}"
    )))
    .bind(micros(at))
    .bind(seq)
    .bind(target.value())
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(done.rows_affected())
}

/// Moves the active tasks a target covers to `revoked`, each with its own audit
/// event, so "who ended this task and why" is answered per task.
async fn stop_tasks(
    conn: &mut SqliteConnection,
    r: &Revocation,
    seq: i64,
) -> Result<u64, StoreError> {
    let filter = match &r.target {
        Target::Token(_) => return Ok(0),
        Target::Task(_) => "id = ?3",
        Target::Agent(_) => "agent = ?3",
        Target::Workflow(_) => "workflow = ?3",
        Target::All => "?3 = ''",
    };
    let stopped: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE tasks SET state = 'revoked', ended_at = ?1, end_reason = ?2
         WHERE state = 'active' AND {filter} RETURNING id, agent"
    )))
    .bind(micros(r.at))
    .bind(&r.reason)
    .bind(r.target.value())
    .fetch_all(&mut *conn)
    .await
    .map_err(map_err)?;
    for (id, agent) in &stopped {
        let task = Uuid::parse_str(id).map_err(|e| corrupt(format!("task id {id:?}: {e}")))?;
        let mut e = AuditEvent::new(r.at, r.actor.clone(), Action::TaskRevoked);
        e.task = Some(TaskId(task));
        e.agent = Some(agent.clone());
        e.reason = Some(r.reason.clone());
        e.detail = serde_json::json!({ "sequence": seq });
        insert_audit(conn, &[&e]).await?;
    }
    Ok(stopped.len() as u64)
}

/// Records a token and its audit event, counting it against the task's budget:
/// true unless the task is not active, not `owner`'s, past its deadline or out of
/// budget, or a freeze covers the token (then nothing is written). Runs inside the
/// caller's transaction.
async fn insert_token(
    conn: &mut SqliteConnection,
    t: &TokenRecord,
    owner: &str,
    budget: u32,
    audit: &AuditEvent,
) -> Result<bool, StoreError> {
    let counted = sqlx::query(
        "UPDATE tasks SET tokens_minted = tokens_minted + 1
         WHERE id = ?1 AND state = 'active' AND agent = ?2 AND tokens_minted < ?3 AND expires_at > ?4
           AND NOT EXISTS (SELECT 1 FROM freezes f WHERE f.kind = 'all'
               OR (f.kind = 'agent' AND f.target IN (?5, ?2)) OR (f.kind = 'workflow' AND f.target = ?6))",
    )
    .bind(t.task.0.to_string())
    .bind(owner)
    .bind(i64::from(budget))
    .bind(micros(t.issued_at))
    .bind(&t.agent)
    .bind(&t.workflow)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    if counted.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO tokens (jti, task_id, agent, workflow, audience, resource, action, kid, cert_thumbprint, issued_at, expires_at, parent_jti, depth)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .bind(t.jti.to_string())
    .bind(t.task.0.to_string())
    .bind(&t.agent)
    .bind(&t.workflow)
    .bind(&t.scope.audience)
    .bind(&t.scope.resource)
    .bind(&t.scope.action)
    .bind(&t.kid)
    .bind(&t.cert_thumbprint)
    .bind(micros(t.issued_at))
    .bind(micros(t.expires_at))
    .bind(t.parent.map(|p| p.to_string()))
    .bind(i64::from(t.depth))
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    let mut audit = audit.clone();
    audit.task = Some(t.task);
    audit.agent = Some(t.agent.clone());
    audit.jti = Some(t.jti);
    audit.at = t.issued_at;
    insert_audit(conn, &[&audit]).await?;
    Ok(true)
}

const TASK_COLUMNS: &str = "id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at, ended_at, end_reason, tokens_minted";
const TOKEN_COLUMNS: &str = "jti, task_id, agent, workflow, audience, resource, action, kid, cert_thumbprint, issued_at, expires_at, revoked_at, parent_jti, depth";

#[async_trait]
impl TaskStore for SqliteStore {
    async fn insert_task(&self, task: &Task, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO tasks (id, agent, workflow, objective, scopes, state, opened_by, created_at, expires_at, tokens_minted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0)",
        )
        .bind(task.id.0.to_string())
        .bind(&task.agent)
        .bind(&task.workflow)
        .bind(&task.objective)
        .bind(to_json(&task.scopes)?)
        .bind(task.state.as_str())
        .bind(&task.opened_by)
        .bind(micros(task.created_at))
        .bind(micros(task.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(&mut tx, &[audit]).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn get_task(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"
        )))
        .bind(id.0.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR state = ?2)
             ORDER BY created_at DESC, id LIMIT ?3"
        )))
        .bind(&f.agent)
        .bind(f.state.map(TaskState::as_str))
        .bind(limit(f.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(task_from_row).collect()
    }

    async fn count_active_tasks(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state = 'active'")
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        u64::try_from(n).map_err(corrupt)
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
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let (seq, revocation) = next_seq(&mut tx, revocation).await?;
        let revocation = &revocation;
        let row = sqlx::query(AssertSqlSafe(format!(
            "UPDATE tasks SET state = ?2, ended_at = ?3, end_reason = ?4
             WHERE id = ?1 AND state = 'active' RETURNING {TASK_COLUMNS}"
        )))
        .bind(id.0.to_string())
        .bind(to.as_str())
        .bind(micros(revocation.at))
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
        insert_revocation(&mut tx, seq, revocation).await?;
        let tokens = revoke_tokens(&mut tx, &revocation.target, seq, revocation.at).await?;
        let events: Vec<&AuditEvent> = audit.iter().collect();
        insert_audit(&mut tx, &events).await?;
        self.commit_and_notify(tx, Notice::Revocation(seq as u64))
            .await?;
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

    async fn overdue_tasks(
        &self,
        now: OffsetDateTime,
        after: Option<(OffsetDateTime, TaskId)>,
        n: u32,
    ) -> Result<Vec<(OffsetDateTime, TaskId)>, StoreError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT expires_at, id FROM tasks
             WHERE state = 'active' AND expires_at <= ?1
               AND (?2 IS NULL OR (expires_at, id) > (?2, ?3))
             ORDER BY expires_at, id LIMIT ?4",
        )
        .bind(micros(now))
        .bind(after.map(|(at, _)| micros(at)))
        .bind(after.map(|(_, id)| id.0.to_string()))
        .bind(limit(n))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|(at, id)| {
                let id =
                    Uuid::parse_str(&id).map_err(|e| corrupt(format!("task id {id:?}: {e}")))?;
                Ok((from_micros(at)?, TaskId(id)))
            })
            .collect()
    }
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn insert_token(
        &self,
        t: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        if !insert_token(&mut tx, t, &t.agent, budget, audit).await? {
            tx.rollback().await.map_err(map_err)?;
            return Ok(false);
        }
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn get_token(&self, jti: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE jti = ?1"
        )))
        .bind(jti.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn token_status(&self, jti: Uuid) -> Result<Option<TokenStatus>, StoreError> {
        // A delegated token is revoked when any ancestor is.
        let row: Option<(i64, String)> = sqlx::query_as(
            "WITH RECURSIVE up (jti, parent_jti, revoked) AS (
                SELECT jti, parent_jti, revoked_at IS NOT NULL FROM tokens WHERE jti = ?1
                UNION ALL
                SELECT p.jti, p.parent_jti, p.revoked_at IS NOT NULL FROM tokens p JOIN up ON p.jti = up.parent_jti
             )
             SELECT (SELECT max(revoked) FROM up), k.state
             FROM tokens t JOIN tasks k ON k.id = t.task_id WHERE t.jti = ?1",
        )
        .bind(jti.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        let Some((revoked, state)) = row else {
            return Ok(None);
        };
        Ok(Some(TokenStatus {
            revoked: revoked != 0,
            task_state: TaskState::parse(&state)
                .ok_or_else(|| corrupt(format!("task state {state:?}")))?,
        }))
    }

    async fn list_tokens(&self, f: &TokenFilter) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens
             WHERE (?1 IS NULL OR task_id = ?1) AND (?2 IS NULL OR agent = ?2)
               AND (?3 IS NULL OR (revoked_at IS NULL AND expires_at > ?3))
             ORDER BY issued_at DESC, jti LIMIT ?4"
        )))
        .bind(f.task.map(|t| t.0.to_string()))
        .bind(&f.agent)
        .bind(f.active_at.map(micros))
        .bind(limit(f.limit))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(token_from_row).collect()
    }
}

/// [`RevocationFeed`] over this process's notices.
struct LocalFeed {
    rx: broadcast::Receiver<Notice>,
}

#[async_trait]
impl RevocationFeed for LocalFeed {
    async fn next(&mut self) -> Result<Option<Notice>, StoreError> {
        match self.rx.recv().await {
            Ok(n) => Ok(Some(n)),
            // Fell behind: notices were dropped, so the caller reads the store.
            Err(broadcast::error::RecvError::Lagged(_)) => Ok(None),
            Err(broadcast::error::RecvError::Closed) => {
                Err(StoreError::Unavailable("the store is closed".into()))
            }
        }
    }
}

#[async_trait]
impl RevocationStore for SqliteStore {
    async fn revoke(
        &self,
        r: &Revocation,
        audit: &AuditEvent,
    ) -> Result<Option<Revoked>, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let (seq, r) = next_seq(&mut tx, r).await?;
        let r = &r;
        let exists = match &r.target {
            Target::Token(j) => {
                sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM tokens WHERE jti = ?1)")
                    .bind(j.to_string())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?
            }
            Target::Task(t) => {
                sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = ?1)")
                    .bind(t.0.to_string())
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
        let tasks = stop_tasks(&mut tx, r, seq).await?;
        if let Target::Agent(a) = &r.target {
            // Offers to a revoked agent lapse with its tokens.
            sqlx::query(
                "UPDATE delegations SET expires_at = min(expires_at, ?2)
                 WHERE sub_agent = ?1 AND redeemed_at IS NULL AND expires_at > ?2",
            )
            .bind(a.as_str())
            .bind(micros(r.at))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        insert_revocation(&mut tx, seq, r).await?;
        let tokens = revoke_tokens(&mut tx, &r.target, seq, r.at).await?;
        let mut audit = audit.clone();
        if let serde_json::Value::Object(m) = &mut audit.detail {
            m.insert("sequence".into(), seq.into());
            m.insert("tokens_revoked".into(), tokens.into());
            m.insert("tasks_stopped".into(), tasks.into());
        }
        insert_audit(&mut tx, &[&audit]).await?;
        self.commit_and_notify(tx, Notice::Revocation(seq as u64))
            .await?;
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
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(seq_param(after))
        .bind(limit(n))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn last_revocation_seq(&self) -> Result<u64, StoreError> {
        let seq: i64 = sqlx::query_scalar("SELECT last_seq FROM revocation_counter")
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        u64::try_from(seq).map_err(corrupt)
    }

    async fn revocation_feed(&self) -> Result<Box<dyn RevocationFeed>, StoreError> {
        Ok(Box::new(LocalFeed {
            rx: self.notices.subscribe(),
        }))
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn register_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, public_key, created_at, not_after) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (kid) DO UPDATE SET not_after = max(signing_keys.not_after, excluded.not_after)
             WHERE signing_keys.public_key = excluded.public_key",
        )
        .bind(&k.kid)
        .bind(&k.public_key)
        .bind(micros(k.created_at))
        .bind(micros(k.not_after))
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn live_keys(&self, now: OffsetDateTime) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, public_key, created_at, not_after FROM signing_keys WHERE not_after > ?1 ORDER BY created_at",
        )
        .bind(micros(now))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    kid: r.try_get("kid").map_err(map_err)?,
                    public_key: r.try_get("public_key").map_err(map_err)?,
                    created_at: time_at(r, "created_at")?,
                    not_after: time_at(r, "not_after")?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await.map_err(map_err)?;
        insert_audit(&mut conn, &[e]).await
    }

    async fn audit_for_task(&self, task: TaskId) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, task_id, agent, jti, reason, detail FROM audit_events
             WHERE task_id = ?1 ORDER BY seq IS NULL, seq, id",
        )
        .bind(task.0.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn audit_chain(&self, after: u64, upto: u64, n: u32) -> Result<Vec<Sealed>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, prev_hash, hash, at, actor, action, outcome, task_id, agent, jti, reason, detail
             FROM audit_events WHERE seq > ?1 AND seq <= ?3 ORDER BY seq LIMIT ?2",
        )
        .bind(seq_param(after))
        .bind(limit(n))
        .bind(seq_param(upto))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(sealed_from_row).collect()
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        let (seq, hash, max_seq): (i64, Vec<u8>, i64) = sqlx::query_as(
            "SELECT last_seq, last_hash, (SELECT coalesce(max(seq), 0) FROM audit_events)
             FROM audit_chain",
        )
        .fetch_one(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(AuditHead {
            seq: u64::try_from(seq).map_err(corrupt)?,
            hash,
            max_seq: u64::try_from(max_seq).map_err(corrupt)?,
        })
    }

    async fn seal_audit(&self, batch: u32) -> Result<u32, StoreError> {
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let (mut seq, mut prev): (i64, Vec<u8>) =
            sqlx::query_as("SELECT last_seq, last_hash FROM audit_chain")
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        let rows = sqlx::query(
            "SELECT id, NULL AS seq, NULL AS prev_hash, NULL AS hash, at, actor, action, outcome,
                    task_id, agent, jti, reason, detail
             FROM audit_events WHERE seq IS NULL ORDER BY id LIMIT ?1",
        )
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        if rows.is_empty() {
            return Ok(0);
        }
        for r in &rows {
            let id: i64 = r.try_get("id").map_err(map_err)?;
            seq += 1;
            let mut e = sealed_from_row(r)?;
            e.seq = u64::try_from(seq).map_err(corrupt)?;
            let hash = chain::hash(&e, &prev);
            sqlx::query(
                "UPDATE audit_events SET seq = ?2, prev_hash = ?3, hash = ?4 WHERE id = ?1",
            )
            .bind(id)
            .bind(seq)
            .bind(&prev)
            .bind(&hash[..])
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            prev = hash.to_vec();
        }
        sqlx::query("UPDATE audit_chain SET last_seq = ?1, last_hash = ?2")
            .bind(seq)
            .bind(&prev)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(rows.len() as u32)
    }

    async fn query_audit(&self, f: &AuditFilter) -> Result<Vec<(u64, AuditEvent)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, action, task_id, agent, jti, reason, detail FROM audit_events
             WHERE seq > ?1
               AND (?2 IS NULL OR actor = ?2 OR agent = ?2)
               AND (?3 IS NULL OR task_id = ?3)
               AND (?4 IS NULL OR action = ?4)
               AND (?5 IS NULL OR at >= ?5)
               AND (?6 IS NULL OR at < ?6)
             ORDER BY seq LIMIT ?7",
        )
        .bind(seq_param(f.after))
        .bind(&f.agent)
        .bind(f.task.map(|t| t.0.to_string()))
        .bind(&f.action)
        .bind(f.since.map(micros))
        .bind(f.until.map(micros))
        .bind(limit(f.limit))
        .fetch_all(&self.reader)
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
        let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT agent, resource, count(*), min(issued_at), max(issued_at) FROM tokens
             WHERE audience = ?1
               AND (?2 IS NULL OR issued_at >= ?2)
               AND (?3 IS NULL OR issued_at < ?3)
             GROUP BY agent, resource ORDER BY agent, resource",
        )
        .bind(audience)
        .bind(since.map(micros))
        .bind(until.map(micros))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.into_iter()
            .map(|(agent, resource, n, first, last)| {
                Ok(Access {
                    agent,
                    resource,
                    tokens: u64::try_from(n).map_err(corrupt)?,
                    first: from_micros(first)?,
                    last: from_micros(last)?,
                })
            })
            .collect()
    }
}

/// An event row in the form the chain's hash covers (the position and hashes are
/// NULL in an unsealed row, and read as 0 and empty).
fn sealed_from_row(r: &SqliteRow) -> Result<Sealed, StoreError> {
    let seq: Option<i64> = r.try_get("seq").map_err(map_err)?;
    Ok(Sealed {
        seq: u64::try_from(seq.unwrap_or(0)).map_err(corrupt)?,
        prev_hash: r
            .try_get::<Option<Vec<u8>>, _>("prev_hash")
            .map_err(map_err)?
            .unwrap_or_default(),
        hash: r
            .try_get::<Option<Vec<u8>>, _>("hash")
            .map_err(map_err)?
            .unwrap_or_default(),
        at_micros: r.try_get("at").map_err(map_err)?,
        actor: r.try_get("actor").map_err(map_err)?,
        action: r.try_get("action").map_err(map_err)?,
        outcome: r.try_get("outcome").map_err(map_err)?,
        task: r.try_get("task_id").map_err(map_err)?,
        agent: r.try_get("agent").map_err(map_err)?,
        jti: r.try_get("jti").map_err(map_err)?,
        reason: r.try_get("reason").map_err(map_err)?,
        detail: r.try_get("detail").map_err(map_err)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(())
    }
}
