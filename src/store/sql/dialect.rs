//! What PostgreSQL and SQLite really do differently, each with why; the
//! transaction scripts ask here and never match on the database themselves.
//! (Type encodings and notices are the drivers', in `driver`.)
use super::driver::{Conn, Db, Query, map_err, query};
use super::tokens::{REFUSAL, TOKEN_ROW, token_args};
use crate::domain::audit::AuditEvent;
use crate::domain::{SpiffeId, TokenRecord};
use crate::store::StoreError;
use std::borrow::Cow;
use std::sync::LazyLock;

pub static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations_sqlite");

/// Each database has a migration tree of its own: the schema's types differ.
pub(super) fn migrator(db: &Db) -> &'static sqlx::migrate::Migrator {
    match &db.conn {
        Conn::Postgres(_) => &PG_MIGRATOR,
        Conn::Sqlite(_) => &SQLITE_MIGRATOR,
    }
}

/// A statement for each database.
pub(super) struct Each {
    postgres: &'static str,
    sqlite: &'static str,
}

impl Each {
    pub fn of(&self, db: &Db) -> &'static str {
        match &db.conn {
            Conn::Postgres(_) => self.postgres,
            Conn::Sqlite(_) => self.sqlite,
        }
    }
}

/// Whether the migrations have a table yet (`present`): the catalogues differ.
pub(super) const MIGRATIONS_TABLE: Each = Each {
    postgres: "SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS present",
    sqlite: "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations') AS present",
};

/// A row-locking clause for a `SELECT` in a write transaction. SQLite needs
/// none: it has one writing connection, so no transaction interleaves with
/// another.
pub(super) fn lock(db: &Db, clause: &'static str) -> &'static str {
    match &db.conn {
        Conn::Postgres(_) => clause,
        Conn::Sqlite(_) => "",
    }
}

/// A column as the text its database keeps, which the audit chain's hash
/// covers: `jsonb` and `uuid` render themselves (sorted keys, its own spacing;
/// lower-case hyphenated); SQLite keeps the text as written, which is hashed as
/// it is (parsed and printed again, a respelled UUID would verify).
pub(super) fn stored_text(db: &Db, col: &'static str) -> Cow<'static, str> {
    match &db.conn {
        Conn::Postgres(_) => format!("{col}::text AS {col}").into(),
        Conn::Sqlite(_) => col.into(),
    }
}

/// How often a revocation's cascade to delegated tokens runs. In PostgreSQL a
/// redemption that held a parent while the first pass ran commits its child
/// afterwards, so the cascade repeats until nothing changes (at most the longest
/// chain: `max_delegation_depth` is at most 16); SQLite's one writer sees every
/// descendant in one pass.
pub(super) fn cascade_passes(db: &Db) -> usize {
    match &db.conn {
        Conn::Postgres(_) => 18,
        Conn::Sqlite(_) => 1,
    }
}

/// PostgreSQL's token write (see [`token_in_one_statement`]), built once: the
/// mint's hot path formats nothing, and sqlx keeps one prepared statement for it.
static ONE_STATEMENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH k AS (
                SELECT id, state, {REFUSAL} AS refusal FROM tasks WHERE id = $2 FOR NO KEY UPDATE
             ), t AS (
                UPDATE tasks SET tokens_minted = tokens_minted + 1
                WHERE id = (SELECT id FROM k WHERE refusal IS NULL)
                RETURNING id
             ), tok AS (
                INSERT INTO tokens ({TOKEN_ROW})
                SELECT $1, t.id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 FROM t
                RETURNING jti
             )
             SELECT refusal, state, (SELECT count(*) FROM tok) AS recorded FROM k"
    )
});

/// The token write as one statement, where the database can: PostgreSQL's
/// data-modifying `WITH` locks and judges the task's row, counts the token when
/// the task takes it, and inserts it, in one round trip; the answer is the
/// judgement, made on the row as it stands once locked.
/// SQLite has no data-modifying `WITH` (and, with one writer, nothing to race).
pub(super) fn token_in_one_statement<'a>(
    db: &Db,
    t: &'a TokenRecord,
    owner: &'a SpiffeId,
    budget: u32,
) -> Option<Query<'a>> {
    let Conn::Postgres(_) = db.conn else {
        return None;
    };
    Some(query(ONE_STATEMENT.as_str()).bind_all(token_args(t, owner, budget)))
}

/// Writing audit events sealed on the server, where the database can:
/// PostgreSQL's `mayfly_audit_append` (migrations/…_audit_sealed_writes.sql)
/// takes the chain's head under its row lock, so brokers on every replica
/// extend one chain, hashes each event as the database stores it (the jsonb's
/// text, the uuid's text) and inserts them all, in one round trip. The events
/// go as one array per column: the statement is the same for any number of
/// them, so it is prepared once. SQLite has no server, and one writer: its
/// broker reads the head and hashes in Rust (`audit::write_sealed`).
pub(super) fn append_sealed<'a>(db: &Db, events: &'a [AuditEvent]) -> Option<Query<'a>> {
    use super::driver::List;
    let Conn::Postgres(_) = db.conn else {
        return None;
    };
    let text =
        |f: fn(&'a AuditEvent) -> Option<&'a str>| List::Text(events.iter().map(f).collect());
    Some(
        query(
            "SELECT mayfly_audit_append($1::timestamptz[], $2::text[], $3::text[], $4::text[],
                    $5::uuid[], $6::text[], $7::uuid[], $8::text[], $9::jsonb[]) AS n",
        )
        .bind(List::Time(events.iter().map(|e| e.at).collect()))
        .bind(text(|e| Some(e.actor.as_str())))
        .bind(text(|e| Some(e.action.as_str())))
        .bind(text(|e| Some(e.action.outcome())))
        .bind(List::Uuid(
            events.iter().map(|e| e.task.map(|t| t.0)).collect(),
        ))
        .bind(text(|e| e.agent.as_deref()))
        .bind(List::Uuid(events.iter().map(|e| e.jti).collect()))
        .bind(text(|e| e.reason.as_deref()))
        .bind(List::Json(events.iter().map(|e| &e.detail).collect())),
    )
}

/// What a batch of mints' transaction sets first, where the database has it:
/// PostgreSQL plans the batch statement (and the sealed audit insert) once per
/// connection, not at every execution, where a custom plan of that statement
/// costs more than running it. Scoped to the transaction: other statements
/// keep PostgreSQL's choice.
pub(super) fn batch_plans(db: &Db) -> Option<Query<'static>> {
    match &db.conn {
        Conn::Postgres(_) => Some(query("SET LOCAL plan_cache_mode = force_generic_plan")),
        Conn::Sqlite(_) => None,
    }
}

/// Sealing the audit events that arrived with no position (an older broker's,
/// during a rolling upgrade) on the server, where the
/// database can: PostgreSQL's `mayfly_audit_seal` (migrations/…_audit_chain.sql)
/// seals a batch in one round trip under the chain's row lock, the lock sealed
/// writes take, so they interleave. SQLite has no server: its one broker seals
/// through its writer.
pub(super) fn seal_on_the_server(db: &Db, batch: u32) -> Option<Query<'static>> {
    let Conn::Postgres(_) = db.conn else {
        return None;
    };
    Some(
        query("SELECT mayfly_audit_seal($1::integer) AS n")
            .bind(i64::from(batch.min(i32::MAX as u32))),
    )
}

/// Whether this broker may prune now (`turn`), where brokers share the
/// database: PostgreSQL's transaction-scoped advisory lock, tried, not waited
/// for, so two replicas never delete the same rows at once (nor deadlock over
/// them); the one without the turn skips it. SQLite has one broker.
pub(super) fn pruning_turn(db: &Db) -> Option<&'static str> {
    match &db.conn {
        // The key is Mayfly's own.
        Conn::Postgres(_) => Some("SELECT pg_try_advisory_xact_lock(120364497187584001) AS turn"),
        Conn::Sqlite(_) => None,
    }
}

/// After a pruning batch: SQLite's one writer is given to the other writes for
/// as long as the batch held it, so pruning holds it at most half the time and
/// a mint waits behind one batch at most. PostgreSQL's writes do not wait on
/// the rows a batch deletes, and go on meanwhile.
pub(super) async fn after_pruning(db: &Db, batch_took: std::time::Duration) {
    if let Conn::Sqlite(_) = db.conn {
        tokio::time::sleep(batch_took).await;
    }
}

/// Answers when the database does. A PostgreSQL pool can be busy, hold a broken
/// connection, or the server be only at its connection limit, none of which is
/// "down": an idle pooled connection answers `SELECT 1`; with none idle, a pool
/// with room makes one (and keeps it); otherwise a connection of the probe's
/// own is tried, and a server that says it is full (53300) answers. SQLite is a
/// file: a reader answers.
pub(super) async fn ping(db: &Db) -> Result<(), StoreError> {
    use sqlx::Connection as _;
    // Straight to the pools: the probe must see the database come back while the
    // gate is closed.
    let pool = match &db.conn {
        Conn::Postgres(p) => p,
        Conn::Sqlite(l) => {
            return sqlx::query("SELECT 1")
                .execute(&l.reader)
                .await
                .map(drop)
                .map_err(map_err);
        }
    };
    let pooled = match pool.try_acquire() {
        Some(conn) => Some(conn),
        None if pool.size() < pool.options().get_max_connections() => pool.acquire().await.ok(),
        None => None,
    };
    if let Some(mut conn) = pooled
        && sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok()
    {
        return Ok(());
    }
    let mut conn = match sqlx::PgConnection::connect_with(&pool.connect_options()).await {
        Ok(c) => c,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("53300") => return Ok(()),
        Err(e) => return Err(map_err(e)),
    };
    sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .map_err(map_err)?;
    let _ = conn.close().await;
    Ok(())
}
