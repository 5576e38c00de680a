//! A write transaction: its statements, its notices (told at commit) and its
//! audit events (written sealed as its last statement).
use super::{Conn, Db, Got, Query, Row, Want, map_err, no_row, run_lite, run_pg, watch};
use crate::domain::audit::AuditEvent;
use crate::store::sql::{audit, notices};
use crate::store::{Notice, StoreError};
use sqlx::{Postgres, Sqlite};
use tokio::sync::broadcast;

/// A write transaction; dropped without [`Tx::commit`], it rolls back.
pub(in crate::store::sql) struct Tx {
    inner: Inner,
    /// Where it runs: the gate its calls report to, and the dialect its commit
    /// asks how to write its audit events.
    db: Db,
    /// Its audit events, written sealed by the commit (see [`Tx::record_audit`]).
    audit: Vec<AuditEvent>,
}

enum Inner {
    Pg(sqlx::Transaction<'static, Postgres>),
    Lite {
        tx: sqlx::Transaction<'static, Sqlite>,
        notices: broadcast::Sender<Notice>,
        /// Told to this process's feeds once the commit is through.
        pending: Vec<Notice>,
    },
}

impl Tx {
    pub(super) async fn begin(db: &Db) -> Result<Tx, StoreError> {
        let inner = match &db.conn {
            Conn::Postgres(p) => p.begin().await.map(Inner::Pg),
            Conn::Sqlite(l) => l.writer.begin().await.map(|tx| Inner::Lite {
                tx,
                notices: l.notices.clone(),
                pending: Vec::new(),
            }),
        };
        let inner = watch(&db.health, inner.map_err(map_err))?;
        Ok(Tx {
            inner,
            db: db.clone(),
            audit: Vec::new(),
        })
    }

    async fn run(&mut self, q: Query<'_>, want: Want) -> Result<Got, StoreError> {
        let run = match &mut self.inner {
            Inner::Pg(tx) => run_pg(&mut **tx, q, want).await,
            Inner::Lite { tx, .. } => run_lite(&mut **tx, q, want).await,
        };
        watch(&self.db.health, run.map_err(map_err))
    }

    /// The database it runs on.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Records audit events, written sealed by [`Tx::commit`] as the
    /// transaction's last statement, in the order recorded; a rollback writes
    /// none. Last, because sealing takes the audit chain's head (the next
    /// position) under its row lock, held to the commit: a transaction that
    /// holds it waits on no other lock, so none deadlocks, and it is held only
    /// for the commit. A transaction that records none never touches the head.
    pub fn record_audit(&mut self, events: &[&AuditEvent]) {
        self.audit.extend(events.iter().map(|e| (*e).clone()));
    }

    /// [`Tx::record_audit`], for events the caller has no further use of.
    pub fn record_audit_owned(&mut self, events: Vec<AuditEvent>) {
        self.audit.extend(events);
    }

    /// Runs a statement; returns the rows it changed.
    pub async fn execute(&mut self, q: Query<'_>) -> Result<u64, StoreError> {
        self.run(q, Want::Changed).await.map(Got::changed)
    }

    pub async fn fetch_all(&mut self, q: Query<'_>) -> Result<Vec<Row>, StoreError> {
        self.run(q, Want::All).await.map(Got::all)
    }

    pub async fn fetch_optional(&mut self, q: Query<'_>) -> Result<Option<Row>, StoreError> {
        self.run(q, Want::Optional).await.map(Got::optional)
    }

    pub async fn fetch_one(&mut self, q: Query<'_>) -> Result<Row, StoreError> {
        self.fetch_optional(q).await?.ok_or_else(no_row)
    }

    /// Tells every broker on the database once (and only if) this transaction
    /// commits, in commit order.
    pub async fn notify(&mut self, n: Notice) -> Result<(), StoreError> {
        match &mut self.inner {
            Inner::Pg(tx) => {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(notices::CHANNEL)
                    .bind(notices::payload(n))
                    .execute(&mut **tx)
                    .await
                    .map_err(map_err)?;
            }
            Inner::Lite { pending, .. } => pending.push(n),
        }
        Ok(())
    }

    /// Writes the audit events recorded, sealed, then commits. SQLite's commit
    /// and its notices run in a task of their own, so a caller that stops
    /// waiting (a cancelled request) cannot commit a write without its notice.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let events = std::mem::take(&mut self.audit);
        if !events.is_empty() {
            audit::write_sealed(&mut self, &events).await?;
        }
        let done = match self.inner {
            Inner::Pg(tx) => tx.commit().await.map_err(map_err),
            Inner::Lite {
                tx,
                notices,
                pending,
            } if pending.is_empty() => {
                drop(notices);
                tx.commit().await.map_err(map_err)
            }
            Inner::Lite {
                tx,
                notices,
                pending,
            } => tokio::spawn(async move {
                tx.commit().await.map_err(map_err)?;
                for n in pending {
                    // No feed listening is fine: nobody to tell.
                    let _ = notices.send(n);
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|e| Err(StoreError::Other(format!("committing: {e}")))),
        };
        watch(&self.db.health, done)
    }

    /// Rolls back (what dropping does, but waiting for it).
    pub async fn rollback(self) -> Result<(), StoreError> {
        match self.inner {
            Inner::Pg(tx) => tx.rollback().await,
            Inner::Lite { tx, .. } => tx.rollback().await,
        }
        .map_err(map_err)
    }
}
