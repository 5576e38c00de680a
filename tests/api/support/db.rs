//! The database of a test: a fresh PostgreSQL database per test, dropped with it,
//! and reads of what the broker stored (audit events, tokens).
use mayfly::store::SqlStore;
use sqlx::Connection;

pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of one test, dropped (with its connections) when the test ends.
pub struct TestDb {
    pub url: String,
    name: String,
}

/// Creates an empty database.
pub async fn fresh_database() -> TestDb {
    let admin = admin_url();
    let name = format!("mayfly_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL (DATABASE_URL)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    TestDb {
        url: format!("{base}/{name}"),
        name,
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// An audit event as stored, for checking what was recorded.
#[derive(Debug)]
pub struct AuditRow {
    pub action: String,
    pub outcome: String,
    pub task_id: Option<uuid::Uuid>,
    pub jti: Option<uuid::Uuid>,
    pub reason: Option<String>,
    pub detail: serde_json::Value,
}

/// The audit events `actor` caused, oldest first. (The store reads audit events by
/// task only; refusals of calls carry no task.)
pub async fn audit_by(store: &SqlStore, actor: &str) -> Vec<AuditRow> {
    use sqlx::Row;
    sqlx::query(
        "SELECT action, outcome, task_id, jti, reason, detail FROM audit_events
         WHERE actor = $1 ORDER BY id",
    )
    .bind(actor)
    .fetch_all(store.postgres_pool().expect("a PostgreSQL store"))
    .await
    .unwrap()
    .iter()
    .map(|r| AuditRow {
        action: r.get("action"),
        outcome: r.get("outcome"),
        task_id: r.get("task_id"),
        jti: r.get("jti"),
        reason: r.get("reason"),
        detail: r.get::<sqlx::types::Json<serde_json::Value>, _>("detail").0,
    })
    .collect()
}

/// Tokens stored in the database at `url`.
pub async fn tokens_stored(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM tokens")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Rows in `table` of the database at `url` (a table name the test names).
pub async fn rows(url: &str, table: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    // The table names are the tests' own constants.
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&mut conn)
        .await
        .unwrap()
}
