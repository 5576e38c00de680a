//! The audit trail: events written with the changes they record, and sealed
//! as they are written: at its commit, a transaction's events take the next
//! positions of the one hash chain, under the chain head's row lock, in the
//! INSERT that writes them ([`write_sealed`], which `Tx::commit` runs last), so
//! positions follow commit order and a rollback takes none. Events that arrive
//! with no position (an older broker's, during a rolling upgrade) are
//! sealed after, by [`AuditStore::seal_audit`],
//! under the same lock. And the queries over the chain.
use super::driver::micros;
use super::filter::Filter;
use super::*;
use super::{audit_archive, dialect};
use crate::domain::audit::Action;
use crate::domain::audit::chain;
use crate::domain::audit::chain::{Checkpoint, Sealed};

fn audit_from_row(r: &Row) -> Result<AuditEvent, StoreError> {
    let action = r.text("action")?;
    let action =
        Action::parse(&action).ok_or_else(|| corrupt(format!("audit action {action:?}")))?;
    Ok(AuditEvent {
        at: r.time("at")?,
        actor: r.text("actor")?,
        action,
        task: r.uuid_opt("task_id")?.map(TaskId),
        agent: r.text_opt("agent")?,
        jti: r.uuid_opt("jti")?,
        reason: r.text_opt("reason")?,
        detail: r.json("detail")?,
    })
}

/// An event row in the form the chain's hash covers (an unsealed row's position
/// and hashes are NULL, and read as 0 and empty).
fn sealed_from_row(r: &Row) -> Result<Sealed, StoreError> {
    Ok(Sealed {
        seq: r.int_opt("seq")?.map_or(Ok(0), |s| {
            u64::try_from(s).map_err(|e| corrupt(format!("seq {s}: {e}")))
        })?,
        prev_hash: r.bytes_opt("prev_hash")?.unwrap_or_default(),
        hash: r.bytes_opt("hash")?.unwrap_or_default(),
        at_micros: micros(r.time("at")?),
        actor: r.text("actor")?,
        action: r.text("action")?,
        outcome: r.text("outcome")?,
        task: r.text_opt("task_id")?,
        agent: r.text_opt("agent")?,
        jti: r.text_opt("jti")?,
        reason: r.text_opt("reason")?,
        detail: r.text("detail")?,
    })
}

/// Rows per SQLite insert: 12 arguments each, well under its limit.
const LITE_ROWS: usize = 500;

/// Writes `events` sealed inside `tx`, in order, after the chain's head, and
/// moves the head past them: the last statements of a transaction, run by its
/// commit (`Tx::commit`), for the head's row lock is then held to the commit.
pub(super) async fn write_sealed(tx: &mut Tx, events: &[AuditEvent]) -> Result<(), StoreError> {
    if let Some(q) = dialect::append_sealed(tx.db(), events) {
        let row = tx.fetch_one(q).await?;
        return all_written(row.u64("n")?, events);
    }
    // SQLite: one writer, so the head read here stays the head until the commit.
    let head = tx
        .fetch_one(query("SELECT last_seq, last_hash FROM audit_chain"))
        .await?;
    let (mut at, mut prev) = (seq(&head, "last_seq")?, head.bytes("last_hash")?);
    let mut sealed = Vec::with_capacity(events.len());
    for e in events {
        at += 1;
        let mut s = as_stored(e, at, prev);
        s.hash = chain::hash(&s, &s.prev_hash).to_vec();
        prev = s.hash.clone();
        sealed.push(s);
    }
    for chunk in sealed.chunks(LITE_ROWS) {
        tx.execute(lite_insert(chunk)).await?;
    }
    tx.execute(
        query("UPDATE audit_chain SET last_seq = $1, last_hash = $2")
            .bind(at)
            .bind(&prev),
    )
    .await?;
    Ok(())
}

/// An event in the form the chain's hash covers, at position `seq` after
/// `prev`, with each value as SQLite stores it: the time in Unix microseconds,
/// the UUIDs' hyphenated text, the detail's JSON text (what the driver binds
/// for them). [`lite_insert`] binds exactly these, so the hash covers the
/// stored bytes.
fn as_stored(e: &AuditEvent, seq: u64, prev: Vec<u8>) -> Sealed {
    Sealed {
        seq,
        prev_hash: prev,
        hash: Vec::new(),
        at_micros: micros(e.at),
        actor: e.actor.clone(),
        action: e.action.as_str().into(),
        outcome: e.action.outcome().into(),
        task: e.task.map(|t| t.0.to_string()),
        agent: e.agent.clone(),
        jti: e.jti.map(|j| j.to_string()),
        reason: e.reason.clone(),
        detail: e.detail.to_string(),
    }
}

/// One statement inserting sealed events into SQLite.
fn lite_insert(events: &[Sealed]) -> Query<'_> {
    const COLUMNS: usize = 12;
    let mut args = Vec::with_capacity(events.len() * COLUMNS);
    for e in events {
        let row: [driver::Arg<'_>; COLUMNS] = [
            e.at_micros.into(),
            e.actor.as_str().into(),
            e.action.as_str().into(),
            e.outcome.as_str().into(),
            (&e.task).into(),
            (&e.agent).into(),
            (&e.jti).into(),
            (&e.reason).into(),
            e.detail.as_str().into(),
            e.seq.into(),
            e.prev_hash.as_slice().into(),
            e.hash.as_slice().into(),
        ];
        args.extend(row);
    }
    // One event (most transactions'): the statement is built once.
    if let [_] = events {
        return query(ONE_LITE_ROW).bind_all(args);
    }
    let values: Vec<String> = (0..events.len())
        .map(|i| {
            let n: Vec<String> = (1..=COLUMNS)
                .map(|k| format!("${}", i * COLUMNS + k))
                .collect();
            format!("({})", n.join(", "))
        })
        .collect();
    query(format!("{LITE_INSERT} VALUES {}", values.join(", "))).bind_all(args)
}

const LITE_INSERT: &str = "INSERT INTO audit_events (at, actor, action, outcome, task_id, agent, jti, reason, detail, seq, prev_hash, hash)";
const ONE_LITE_ROW: &str = "INSERT INTO audit_events (at, actor, action, outcome, task_id, agent, jti, reason, detail, seq, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// The server's count of events written is all of them.
fn all_written(n: u64, events: &[AuditEvent]) -> Result<(), StoreError> {
    match n == events.len() as u64 {
        true => Ok(()),
        false => Err(StoreError::Other(format!(
            "{} audit events to write, {n} written",
            events.len()
        ))),
    }
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn append_audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let db = &self.db;
        let events = std::slice::from_ref(e);
        // One statement needs no transaction of its own: one round trip.
        if let Some(q) = dialect::append_sealed(db, events) {
            let row = db.write_optional(Write::AppendAudit, q).await?;
            let n = row.map_or(Ok(0), |r| r.u64("n"))?;
            return all_written(n, events);
        }
        let mut tx = db.begin(Write::AppendAudit).await?;
        insert_audit(&mut tx, &[e]).await?;
        tx.commit().await
    }

    async fn audit_for_task(&self, task: TaskId) -> Result<Vec<AuditEvent>, StoreError> {
        let db = &self.db;
        let rows = db
            .fetch_all(
                query(
                    "SELECT at, actor, action, task_id, agent, jti, reason, detail FROM audit_events
                     WHERE task_id = $1 ORDER BY seq IS NULL, seq, id",
                )
                .bind(task.0),
            )
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn audit_chain(&self, after: u64, upto: u64, n: u32) -> Result<Vec<Sealed>, StoreError> {
        let db = &self.db;
        let rows = db
            .fetch_all(
                query(format!(
                    "SELECT seq, prev_hash, hash, at, actor, action, outcome, {}, agent, {}, reason, {}
                     FROM audit_events WHERE seq > $1 AND seq <= $3 ORDER BY seq LIMIT $2",
                    dialect::stored_text(db, "task_id"),
                    dialect::stored_text(db, "jti"),
                    dialect::stored_text(db, "detail")
                ))
                .bind(after)
                .bind(limit(n))
                .bind(upto),
            )
            .await?;
        rows.iter().map(sealed_from_row).collect()
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        audit_archive::head(&self.db).await
    }

    async fn audit_dated_before(
        &self,
        after: u64,
        upto: u64,
        before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        audit_archive::dated_before(&self.db, after, upto, before).await
    }

    async fn anchor_audit(
        &self,
        from: &Checkpoint,
        through: &Checkpoint,
        audit: &AuditEvent,
    ) -> Result<Anchoring, StoreError> {
        audit_archive::anchor(&self.db, from, through, audit).await
    }

    async fn remove_archived_audit(&self, n: u32) -> Result<u64, StoreError> {
        audit_archive::remove(&self.db, n).await
    }

    async fn seal_audit(&self, batch: u32) -> Result<u32, StoreError> {
        let db = &self.db;
        if let Some(q) = dialect::seal_on_the_server(db, batch) {
            let row = db.write_optional(Write::SealAudit, q).await?;
            return row.map_or(Ok(0), |r| r.u32("n"));
        }
        let mut tx = db.begin(Write::SealAudit).await?;
        let row = tx
            .fetch_one(query("SELECT last_seq, last_hash FROM audit_chain"))
            .await?;
        let (mut at, mut prev) = (seq(&row, "last_seq")?, row.bytes("last_hash")?);
        let rows = tx
            .fetch_all(
                query(
                    "SELECT id, NULL AS seq, NULL AS prev_hash, NULL AS hash, at, actor, action, outcome,
                            task_id, agent, jti, reason, detail
                     FROM audit_events WHERE seq IS NULL ORDER BY id LIMIT $1",
                )
                .bind(batch),
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        for r in &rows {
            at += 1;
            let mut e = sealed_from_row(r)?;
            e.seq = at;
            let hash = chain::hash(&e, &prev);
            tx.execute(
                query("UPDATE audit_events SET seq = $2, prev_hash = $3, hash = $4 WHERE id = $1")
                    .bind(r.int("id")?)
                    .bind(at)
                    .bind(&prev)
                    .bind(&hash[..]),
            )
            .await?;
            prev = hash.to_vec();
        }
        tx.execute(
            query("UPDATE audit_chain SET last_seq = $1, last_hash = $2")
                .bind(at)
                .bind(&prev),
        )
        .await?;
        tx.commit().await?;
        Ok(rows.len() as u32)
    }

    async fn query_audit(&self, f: &AuditFilter) -> Result<Vec<(u64, AuditEvent)>, StoreError> {
        let mut w = Filter::default();
        w.and("seq > ?", f.after)
            .and_some("task_id = ?", f.task.map(|t| t.0))
            .and_some("action = ?", f.action.as_deref())
            .and_some("at >= ?", f.since)
            .and_some("at < ?", f.until);
        let rest = w.conditions();
        let n = w.arg(limit(f.limit));
        let within = match &f.agent {
            None => rest,
            // By (actor) or about (agent) the agent: each side walks its own
            // index in chain order, so a rare agent is found as fast as a busy one.
            Some(agent) => {
                let a = w.arg(agent.to_string());
                format!(
                    "seq IN (
                        SELECT seq FROM (SELECT seq FROM audit_events WHERE actor = {a} AND {rest} ORDER BY seq LIMIT {n}) AS by_actor
                        UNION
                        SELECT seq FROM (SELECT seq FROM audit_events WHERE agent = {a} AND {rest} ORDER BY seq LIMIT {n}) AS about_agent
                    )"
                )
            }
        };
        let sql = format!(
            "SELECT seq, at, actor, action, task_id, agent, jti, reason, detail FROM audit_events
             WHERE {within} ORDER BY seq LIMIT {n}"
        );
        let rows = self.db.fetch_all(query(sql).bind_all(w.args())).await?;
        rows.iter()
            .map(|r| Ok((seq(r, "seq")?, audit_from_row(r)?)))
            .collect()
    }

    async fn token_access(
        &self,
        audience: &str,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<Access>, StoreError> {
        let mut w = Filter::default();
        w.and("audience = ?", audience)
            .and_some("issued_at >= ?", since)
            .and_some("issued_at < ?", until);
        let sql = format!(
            "SELECT agent, resource, count(*) AS n, min(issued_at) AS first, max(issued_at) AS last
             FROM tokens WHERE {} GROUP BY agent, resource ORDER BY agent, resource",
            w.conditions()
        );
        let rows = self.db.fetch_all(query(sql).bind_all(w.args())).await?;
        rows.iter()
            .map(|r| {
                Ok(Access {
                    agent: r.spiffe_id("agent")?,
                    resource: r.text("resource")?,
                    tokens: r.u64("n")?,
                    first: r.time("first")?,
                    last: r.time("last")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
