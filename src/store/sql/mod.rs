//! The store: one implementation of every transaction script for PostgreSQL
//! (production; replicas share it) and SQLite (`mayfly dev`, a single broker).
//! One file per aggregate, named as the conformance files are; `driver` names
//! the two drivers and is the only place their types and encodings differ.
//! What the databases really do differently is in `dialect`, each with why: the
//! scripts ask it, never match on the database themselves.
//!
//! Every state change and its audit event commit together. In PostgreSQL
//! anything that takes the revocation counter takes it first, so transactions
//! always lock in the same order (counter, then tasks, then tokens), and the
//! audit chain's head last of all: a transaction's events are written, sealed,
//! as its last statement (`insert_audit`, `Tx::commit`).
use super::gate::Health;
use super::*;
use driver::{Conn, Db, Lite, Query, Row, Tx, corrupt, json, limit, map_err, query};
pub use mints::GroupCommits;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod approvals;
mod arg;
mod audit;
mod audit_archive;
mod delegations;
mod dialect;
mod driver;
mod filter;
mod freezes;
mod keys;
mod mints;
mod notices;
mod retention;
mod revocations;
mod row;
mod tasks;
mod tokens;

/// A write the store is about to make, as a [`FaultHook`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    InsertTask,
    EndTask,
    InsertToken,
    InsertDelegation,
    RedeemDelegation,
    InsertApproval,
    DecideApproval,
    SpendApproval,
    CountStepUpRefusal,
    Freeze,
    Unfreeze,
    Revoke,
    Quarantine,
    RegisterKey,
    AppendAudit,
    /// The commit of a batch of minted tokens, after its statements ran.
    CommitTokens,
    SealAudit,
    Prune,
    AnchorAudit,
    RemoveArchivedAudit,
}

impl Write {
    /// A write that records a token (a mint, a redemption, a spent approval).
    pub fn records_token(self) -> bool {
        matches!(
            self,
            Write::InsertToken | Write::RedeemDelegation | Write::SpendApproval
        )
    }
}

/// Fails chosen writes before they reach the database, as an unavailable
/// database would: for tests that drive the broker through an outage.
pub trait FaultHook: Send + Sync + 'static {
    fn before(&self, write: Write) -> Result<(), StoreError>;
}

/// The store over PostgreSQL or SQLite.
#[derive(Clone)]
pub struct SqlStore {
    db: Db,
    /// The group-commit writer of mints, started by the first one (over the
    /// store as gated and hooked by then).
    mints: Arc<OnceLock<mints::Mints>>,
    group_commits: Arc<GroupCommits>,
}

impl SqlStore {
    fn new(conn: Conn) -> Self {
        SqlStore {
            db: Db::new(conn),
            mints: Arc::default(),
            group_commits: Arc::default(),
        }
    }

    fn mints(&self) -> &mints::Mints {
        self.mints
            .get_or_init(|| mints::Mints::start(self.db.clone(), self.group_commits.clone()))
    }

    /// How the mints' writes have been batched so far.
    pub fn group_commits(&self) -> &GroupCommits {
        &self.group_commits
    }

    /// Connects to PostgreSQL (failing after `timeout` when it is unreachable)
    /// and applies the migrations.
    pub async fn postgres(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let store = Self::postgres_unmigrated(url, max_connections, timeout).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to PostgreSQL without touching the schema.
    pub async fn postgres_unmigrated(
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
        Ok(Self::new(Conn::Postgres(pool)))
    }

    /// Opens (creating it if missing) the SQLite file a `sqlite:` URL names.
    pub async fn sqlite_url(
        url: &str,
        max_readers: u32,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        match DatabaseUrl::parse(url) {
            Ok(DatabaseUrl::Sqlite(path)) => Self::sqlite(&path, max_readers, timeout).await,
            _ => Err(StoreError::Other(format!(
                "{:?} does not name a database file: use sqlite://path/to/mayfly.db (an in-memory database would lose every token's record on restart)",
                crate::domain::text::quote(url)
            ))),
        }
    }

    /// Opens (creating it if missing) a SQLite database file, takes its lock file
    /// and applies the migrations. One broker process owns the file; every write
    /// goes through one connection, reads through a pool of read-only ones.
    pub async fn sqlite(
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
        dialect::SQLITE_MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| StoreError::Other(format!("applying migrations: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_readers.max(1))
            .acquire_timeout(timeout)
            .connect_with(base.read_only(true))
            .await
            .map_err(map_err)?;
        Ok(Self::new(Conn::Sqlite(Lite::new(writer, reader, lock))))
    }

    /// This store, failing fast while `health` says the database is down: reads
    /// under way are then given up, writes under way left to finish.
    pub fn gated(mut self, health: Arc<Health>) -> Self {
        self.db.health = Some(health);
        self.mints = Arc::default();
        self
    }

    /// This store, consulting `hook` before every write.
    pub fn with_faults(mut self, hook: Arc<dyn FaultHook>) -> Self {
        self.db.faults = Some(hook);
        self.mints = Arc::default();
        self
    }

    /// The PostgreSQL pool, for tests that inspect or damage rows directly.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.db.conn {
            Conn::Postgres(p) => Some(p),
            Conn::Sqlite(_) => None,
        }
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
        let migrator = dialect::migrator(&self.db);
        let run = match &self.db.conn {
            Conn::Postgres(p) => migrator.run(p).await,
            Conn::Sqlite(l) => migrator.run(&l.writer).await,
        };
        run.map_err(|e| StoreError::Other(format!("applying migrations: {e}")))?;
        Ok(migrator
            .iter()
            .map(|m| m.version)
            .filter(|v| !before.contains(v))
            .collect())
    }

    /// Refuses a schema that lacks a migration this version needs (when another
    /// role owns the schema and migrates it).
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let migrator = dialect::migrator(&self.db);
        let applied = self.applied_checksums().await?;
        let mut missing = vec![];
        for m in migrator.iter() {
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
        let present = query(dialect::MIGRATIONS_TABLE.of(&self.db));
        if !self.db.fetch_one(present).await?.bool("present")? {
            return Ok(vec![]);
        }
        let rows = self
            .db
            .fetch_all(query(
                "SELECT version, checksum FROM _sqlx_migrations WHERE success",
            ))
            .await?;
        rows.iter()
            .map(|r| Ok((r.int("version")?, r.bytes("checksum")?)))
            .collect()
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

/// Records audit events in `tx`, written sealed when it commits: as its last
/// statement, the events take the next positions of the audit chain (see
/// `Tx::record_audit` for why last). Dropped or rolled back, it writes none.
async fn insert_audit(tx: &mut Tx, events: &[&AuditEvent]) -> Result<(), StoreError> {
    tx.record_audit(events);
    Ok(())
}

/// A scope, from its three columns.
fn scope(r: &Row) -> Result<Scope, StoreError> {
    Ok(Scope {
        audience: r.text("audience")?,
        resource: r.text("resource")?,
        action: r.text("action")?,
    })
}

/// Sequence numbers and positions are stored as `bigint`.
fn seq(row: &Row, col: &str) -> Result<u64, StoreError> {
    row.u64(col)
}

#[async_trait]
impl Store for SqlStore {
    /// Not gated: the probe asks through this.
    async fn ping(&self) -> Result<(), StoreError> {
        dialect::ping(&self.db).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::gate::Status;

    #[tokio::test]
    async fn a_closed_gate_refuses_calls_but_not_the_probe_that_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health::new();
        let store = SqlStore::sqlite(&dir.path().join("mayfly.db"), 2, Duration::from_secs(5))
            .await
            .unwrap()
            .gated(health.clone());
        health.set(Status::Down {
            since: std::time::Instant::now(),
            error: "test".into(),
        });
        let read = store.get_task(TaskId(Uuid::new_v4())).await;
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
        let write = store.seal_audit(10).await;
        assert!(
            matches!(write, Err(StoreError::Unavailable(_))),
            "{write:?}"
        );
        store.ping().await.expect("the probe reaches the database");
    }

    #[tokio::test]
    async fn a_stored_agent_that_is_not_a_spiffe_id_reads_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mayfly.db");
        let store = SqlStore::sqlite(&path, 2, Duration::from_secs(5))
            .await
            .unwrap();
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_795_428_000).unwrap();
        let task = Task {
            id: TaskId::new(),
            agent: id("spiffe://example.org/agent"),
            workflow: "support".into(),
            objective: "answer ticket 4711".into(),
            scopes: vec![],
            state: TaskState::Active,
            opened_by: id("spiffe://example.org/orchestrator"),
            created_at: now,
            expires_at: now + Duration::from_secs(600),
            ended_at: None,
            end_reason: None,
            tokens_minted: 0,
        };
        let audit = AuditEvent::new(
            now,
            task.opened_by.as_str(),
            crate::domain::audit::Action::TaskOpened,
        );
        store.insert_task(&task, &audit).await.unwrap();
        let raw = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE tasks SET agent = 'agent-7'")
            .execute(&raw)
            .await
            .unwrap();
        let read = store.get_task(task.id).await;
        assert!(
            matches!(&read, Err(StoreError::Corrupt(why)) if why.contains("agent")),
            "{read:?}"
        );
    }
}
