//! The two drivers, and the only file that names them. A transaction script
//! (the aggregate files beside this one) builds a [`Query`] once, with `$n`
//! placeholders (both databases read them) and typed arguments ([`Arg`]); this
//! file binds them as each database stores them and decodes the [`Row`]s back:
//!
//! | value  | PostgreSQL    | SQLite                            |
//! |--------|---------------|-----------------------------------|
//! | UUID   | `uuid`        | hyphenated lower-case `TEXT`      |
//! | time   | `timestamptz` | Unix microseconds, `INTEGER`      |
//! | JSON   | `jsonb`       | its `TEXT`                        |
//! | bool   | `boolean`     | `INTEGER` 0 or 1                  |
//! | list   | an array      | a JSON array of the values        |
//!
//! Notices differ too ([`Tx::notify`]: `pg_notify`, delivered to every broker at
//! commit, against a broadcast to this process's feeds after the commit); what
//! else the databases do differently is in `dialect`.
pub(super) use super::arg::{Arg, List, json};
use super::notices;
pub(super) use super::row::Row;
use super::{FaultHook, Write};
use crate::store::gate::Health;
use crate::store::{Notice, StoreError};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Postgres, Sqlite};
use std::borrow::Cow;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::broadcast;
pub(super) use tx::Tx;

mod tx;

/// A connected database, and what every call on it passes: the fail-fast gate
/// (reads are refused while the probe finds the database down, and given up when
/// it finds it down meanwhile; writes are refused, never given up once they run)
/// and, in tests, the fault hook before every write.
#[derive(Clone)]
pub(super) struct Db {
    pub conn: Conn,
    pub health: Option<Arc<Health>>,
    pub faults: Option<Arc<dyn FaultHook>>,
}

#[derive(Clone)]
pub(super) enum Conn {
    Postgres(PgPool),
    Sqlite(Lite),
}

#[derive(Clone)]
pub(super) struct Lite {
    /// One connection: every write, in order.
    pub writer: SqlitePool,
    /// Read-only connections (WAL mode: they never block the writer).
    pub reader: SqlitePool,
    pub notices: broadcast::Sender<Notice>,
    /// Held while the store lives: a second broker on the same file is refused.
    pub _lock: Arc<std::fs::File>,
}

impl Lite {
    pub fn new(writer: SqlitePool, reader: SqlitePool, lock: std::fs::File) -> Self {
        let (notices, _) = broadcast::channel(notices::FEED_CAPACITY);
        Lite {
            writer,
            reader,
            notices,
            _lock: Arc::new(lock),
        }
    }
}

/// A statement and its arguments.
#[must_use]
pub(super) struct Query<'a> {
    sql: Cow<'static, str>,
    args: Vec<Arg<'a>>,
}

/// A statement with `$n` placeholders.
pub(super) fn query<'a>(sql: impl Into<Cow<'static, str>>) -> Query<'a> {
    Query {
        sql: sql.into(),
        args: Vec::new(),
    }
}

impl<'a> Query<'a> {
    pub fn bind(mut self, arg: impl Into<Arg<'a>>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn bind_all(mut self, args: impl IntoIterator<Item = Arg<'a>>) -> Self {
        self.args.extend(args);
        self
    }

    fn pg(self) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
        let mut q = sqlx::query(AssertSqlSafe(self.sql));
        for a in self.args {
            q = match a {
                Arg::Uuid(v) => q.bind(v),
                Arg::Time(v) => q.bind(v),
                Arg::Text(v) => q.bind(v.map(Cow::into_owned)),
                Arg::Int(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Json(v) => q.bind(Json(v.as_ref())),
                Arg::Bytes(v) => q.bind(v.to_vec()),
                Arg::List(List::Uuid(v)) => q.bind(v),
                Arg::List(List::Time(v)) => q.bind(v),
                Arg::List(List::Text(v)) => q.bind(v),
                Arg::List(List::Json(v)) => q.bind(v.into_iter().map(Json).collect::<Vec<_>>()),
                Arg::List(List::Int(v)) => q.bind(v),
            };
        }
        q
    }

    fn sqlite(self) -> sqlx::query::Query<'static, Sqlite, sqlx::sqlite::SqliteArguments> {
        let mut q = sqlx::query(AssertSqlSafe(self.sql));
        for a in self.args {
            q = match a {
                Arg::Uuid(v) => q.bind(v.map(|v| v.to_string())),
                Arg::Time(v) => q.bind(v.map(micros)),
                Arg::Text(v) => q.bind(v.map(Cow::into_owned)),
                Arg::Int(v) => q.bind(v),
                Arg::Bool(v) => q.bind(i64::from(v)),
                Arg::Json(v) => q.bind(v.to_string()),
                Arg::Bytes(v) => q.bind(v.to_vec()),
                Arg::List(v) => q.bind(lite_list(v).to_string()),
            };
        }
        q
    }
}

/// A list as SQLite's JSON functions read it, each value encoded as it would
/// be bound alone (a UUID's text, a time's Unix microseconds).
fn lite_list(v: List<'_>) -> serde_json::Value {
    match v {
        List::Uuid(v) => v.iter().map(|u| u.map(|u| u.to_string())).collect(),
        List::Time(v) => v.into_iter().map(micros).collect(),
        List::Text(v) => v.into_iter().collect(),
        List::Json(v) => v.into_iter().cloned().collect(),
        List::Int(v) => v.into_iter().collect(),
    }
}

/// Unix microseconds, the precision PostgreSQL keeps.
pub(super) fn micros(t: OffsetDateTime) -> i64 {
    let us = t.unix_timestamp_nanos().div_euclid(1000);
    i64::try_from(us).unwrap_or(if us < 0 { i64::MIN } else { i64::MAX })
}

pub(super) fn from_micros(us: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|e| corrupt(format!("stored time {us}: {e}")))
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// A list limit, clamped to 1..=1000.
pub(super) fn limit(n: u32) -> i64 {
    i64::from(n.clamp(1, 1000))
}

/// What the database said, as the broker tells failures apart: unreachable (fail
/// closed, retry), a row that does not decode, or anything else.
pub(super) fn map_err(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_)
        | E::Tls(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Protocol(_) => StoreError::Unavailable(e.to_string()),
        E::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or_default();
            let unavailable = match db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                // SQLITE_BUSY, _LOCKED, _IOERR, _FULL, _CANTOPEN (primary result
                // codes, as extended codes carry them in the low byte).
                Some(_) => matches!(
                    code.parse::<i32>().map(|c| c & 0xff),
                    Ok(5 | 6 | 10 | 13 | 14)
                ),
                // Connection exceptions, admin shutdown, cannot connect now.
                None => code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03"),
            };
            match unavailable {
                true => StoreError::Unavailable(e.to_string()),
                false => StoreError::Other(e.to_string()),
            }
        }
        E::ColumnDecode { .. } | E::Decode(_) | E::ColumnNotFound(_) | E::TypeNotFound { .. } => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Other(e.to_string()),
    }
}

impl Db {
    pub fn new(conn: Conn) -> Self {
        Db {
            conn,
            health: None,
            faults: None,
        }
    }

    /// A write may start: the fault hook and the gate let it.
    fn may_write(&self, what: Write) -> Result<(), StoreError> {
        if let Some(h) = &self.health
            && !h.is_up()
        {
            return Err(h.refusal());
        }
        match &self.faults {
            // A fault fails as the database would: the probe is told.
            Some(f) => watch(&self.health, f.before(what)),
            None => Ok(()),
        }
    }

    /// A transaction that wrote for `what` may commit: the fault hook lets it
    /// (a hook's failure stands for a commit that failed).
    pub fn may_commit(&self, what: Write) -> Result<(), StoreError> {
        match &self.faults {
            Some(f) => watch(&self.health, f.before(what)),
            None => Ok(()),
        }
    }

    /// Starts the write transaction of `what`.
    pub async fn begin(&self, what: Write) -> Result<Tx, StoreError> {
        self.may_write(what)?;
        Tx::begin(self).await
    }

    /// The write `what` as one statement in a transaction of its own.
    async fn write(&self, what: Write, q: Query<'_>, want: Want) -> Result<Got, StoreError> {
        self.may_write(what)?;
        let run = match &self.conn {
            Conn::Postgres(p) => run_pg(p, q, want).await,
            Conn::Sqlite(l) => run_lite(&l.writer, q, want).await,
        };
        watch(&self.health, run.map_err(map_err))
    }

    /// The rows the write statement changed.
    pub async fn execute(&self, what: Write, q: Query<'_>) -> Result<u64, StoreError> {
        self.write(what, q, Want::Changed).await.map(Got::changed)
    }

    /// The row a write statement returns, if any.
    pub async fn write_optional(
        &self,
        what: Write,
        q: Query<'_>,
    ) -> Result<Option<Row>, StoreError> {
        self.write(what, q, Want::Optional).await.map(Got::optional)
    }

    /// A read outside a transaction (SQLite's read-only connections).
    async fn read(&self, q: Query<'_>, want: Want) -> Result<Got, StoreError> {
        let run = async {
            match &self.conn {
                Conn::Postgres(p) => run_pg(p, q, want).await,
                Conn::Sqlite(l) => run_lite(&l.reader, q, want).await,
            }
            .map_err(map_err)
        };
        match &self.health {
            Some(h) => h.read(run).await,
            None => run.await,
        }
    }

    pub async fn fetch_all(&self, q: Query<'_>) -> Result<Vec<Row>, StoreError> {
        self.read(q, Want::All).await.map(Got::all)
    }

    pub async fn fetch_optional(&self, q: Query<'_>) -> Result<Option<Row>, StoreError> {
        self.read(q, Want::Optional).await.map(Got::optional)
    }

    pub async fn fetch_one(&self, q: Query<'_>) -> Result<Row, StoreError> {
        self.fetch_optional(q).await?.ok_or_else(no_row)
    }
}

/// A call that met an unavailable database makes the probe look.
fn watch<T>(health: &Option<Arc<Health>>, r: Result<T, StoreError>) -> Result<T, StoreError> {
    match health {
        Some(h) => h.watch(r),
        None => r,
    }
}

/// What a statement is run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Changed,
    All,
    Optional,
}

enum Got {
    Changed(u64),
    All(Vec<Row>),
    Optional(Option<Row>),
}

impl Got {
    fn changed(self) -> u64 {
        match self {
            Got::Changed(n) => n,
            _ => 0,
        }
    }

    fn all(self) -> Vec<Row> {
        match self {
            Got::All(rows) => rows,
            _ => Vec::new(),
        }
    }

    fn optional(self) -> Option<Row> {
        match self {
            Got::Optional(row) => row,
            _ => None,
        }
    }
}

fn no_row() -> StoreError {
    StoreError::Other("the statement returned no row".into())
}

async fn run_pg<'c>(
    on: impl sqlx::PgExecutor<'c>,
    q: Query<'_>,
    want: Want,
) -> Result<Got, sqlx::Error> {
    let q = q.pg();
    Ok(match want {
        Want::Changed => Got::Changed(q.execute(on).await?.rows_affected()),
        Want::All => Got::All(q.fetch_all(on).await?.into_iter().map(Row::Pg).collect()),
        Want::Optional => Got::Optional(q.fetch_optional(on).await?.map(Row::Pg)),
    })
}

async fn run_lite<'c>(
    on: impl sqlx::SqliteExecutor<'c>,
    q: Query<'_>,
    want: Want,
) -> Result<Got, sqlx::Error> {
    let q = q.sqlite();
    Ok(match want {
        Want::Changed => Got::Changed(q.execute(on).await?.rows_affected()),
        Want::All => Got::All(q.fetch_all(on).await?.into_iter().map(Row::Lite).collect()),
        Want::Optional => Got::Optional(q.fetch_optional(on).await?.map(Row::Lite)),
    })
}
