//! Revocations: the gap-free sequence, an administrative revocation (tokens,
//! tasks and offers it covers), the stream's history and the feed of notices.
use super::dialect;
use super::driver::Arg;
use super::freezes;
use super::*;
use crate::domain::audit::Action;
use crate::domain::retention::CLOCK_MARGIN;
use crate::domain::{Target, Trigger};

fn event_from_row(r: &Row) -> Result<Event, StoreError> {
    let seq = seq(r, "seq")?;
    let kind = r.text("target_kind")?;
    let value = r.text("target")?;
    let trigger = r.text("trigger")?;
    Ok(Event {
        seq,
        revocation: Revocation {
            target: Target::from_parts(&kind, &value)
                .ok_or_else(|| corrupt(format!("revocation {seq} target {kind}:{value:?}")))?,
            reason: r.text("reason")?,
            actor: r.text("actor")?,
            trigger: Trigger::parse(&trigger)
                .ok_or_else(|| corrupt(format!("revocation {seq} trigger {trigger:?}")))?,
            at: r.time("at")?,
        },
    })
}

/// Takes the next sequence number (in PostgreSQL with the counter's row lock)
/// and the revocation's time: never earlier than the previous revocation's, so
/// times follow the sequence even when revokers' clocks or lock waits differ.
pub(super) async fn next_seq(tx: &mut Tx, r: &Revocation) -> Result<(u64, Revocation), StoreError> {
    let row = tx
        .fetch_one(
            query(
                "UPDATE revocation_counter SET last_seq = last_seq + 1,
                    last_at = CASE WHEN last_at > $1 THEN last_at ELSE $1 END
                 RETURNING last_seq, last_at",
            )
            .bind(r.at),
        )
        .await?;
    Ok((
        seq(&row, "last_seq")?,
        Revocation {
            at: row.time("last_at")?,
            ..r.clone()
        },
    ))
}

/// Records the event; every broker's watch streams wake when it commits.
pub(super) async fn insert_revocation(
    tx: &mut Tx,
    seq: u64,
    r: &Revocation,
) -> Result<(), StoreError> {
    tx.execute(
        query(
            "INSERT INTO revocations (seq, target_kind, target, reason, actor, trigger, at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(seq)
        .bind(r.target.kind())
        .bind(r.target.value())
        .bind(&r.reason)
        .bind(&r.actor)
        .bind(r.trigger.as_str())
        .bind(r.at),
    )
    .await?;
    tx.notify(Notice::Revocation(seq)).await
}

/// The condition a target puts on a table's `column`s, with its argument (`$3`):
/// the row's id, its agent or its workflow, or nothing for everything.
fn covering(target: &Target, id: &'static str) -> (String, Option<Arg<'static>>) {
    covering_at(target, id, 3)
}

/// [`covering`] with its argument at `$n`.
fn covering_at(target: &Target, id: &'static str, n: usize) -> (String, Option<Arg<'static>>) {
    match target {
        Target::Token(j) => (format!("{id} = ${n}"), Some((*j).into())),
        Target::Task(t) => (format!("{id} = ${n}"), Some(t.0.into())),
        Target::Agent(a) => (format!("agent = ${n}"), Some(a.to_string().into())),
        Target::Workflow(w) => (format!("workflow = ${n}"), Some(w.clone().into())),
        Target::All => ("1 = 1".into(), None),
    }
}

/// Marks every unrevoked token the target covers as revoked by `seq`; a token's
/// or an agent's revocation reaches every token delegated from theirs (a task's,
/// a workflow's or everything already covers whole tasks). Tokens expired more
/// than [`CLOCK_MARGIN`] before are dead everywhere already and are left as
/// they are (the event still names what it covers): a revocation costs what is
/// live, and never touches the rows the pruner deletes, whose retention is
/// longer than the margin (so the two never wait on each other's rows).
pub(super) async fn revoke_tokens(
    db: &Db,
    tx: &mut Tx,
    target: &Target,
    seq: u64,
    at: OffsetDateTime,
) -> Result<u64, StoreError> {
    const SET: &str = "UPDATE tokens SET revoked_at = $1, revocation_seq = $2
        WHERE revoked_at IS NULL AND expires_at > $3";
    let id = match target {
        Target::Task(_) => "task_id",
        _ => "jti",
    };
    let (filter, arg) = covering_at(target, id, 4);
    let dead_before = at - time::Duration::seconds(CLOCK_MARGIN.as_secs() as i64);
    let direct = tx
        .execute(
            query(format!("{SET} AND {filter}"))
                .bind(at)
                .bind(seq)
                .bind(dead_before)
                .bind_all(arg.clone()),
        )
        .await?;
    if !matches!(target, Target::Token(_) | Target::Agent(_)) {
        return Ok(direct);
    }
    let cascade = format!(
        "WITH RECURSIVE d (jti) AS (
            SELECT jti FROM tokens WHERE {filter}
            UNION
            SELECT c.jti FROM tokens c JOIN d ON c.parent_jti = d.jti
         )
         {SET} AND jti IN (SELECT jti FROM d)"
    );
    let mut total = direct;
    for _ in 0..dialect::cascade_passes(db) {
        let n = tx
            .execute(
                query(cascade.clone())
                    .bind(at)
                    .bind(seq)
                    .bind(dead_before)
                    .bind_all(arg.clone()),
            )
            .await?;
        total += n;
        if n == 0 {
            break;
        }
    }
    Ok(total)
}

/// Moves the active tasks a target covers to `revoked`, each with its own audit
/// event, so "who ended this task and why" is answered per task.
async fn stop_tasks(tx: &mut Tx, r: &Revocation, seq: u64) -> Result<u64, StoreError> {
    if let Target::Token(_) = r.target {
        return Ok(0);
    }
    let (filter, arg) = covering(&r.target, "id");
    let stopped = tx
        .fetch_all(
            query(format!(
                "UPDATE tasks SET state = 'revoked', ended_at = $1, end_reason = $2
                 WHERE state = 'active' AND {filter} RETURNING id, agent"
            ))
            .bind(r.at)
            .bind(&r.reason)
            .bind_all(arg),
        )
        .await?;
    let mut events = Vec::with_capacity(stopped.len());
    for row in &stopped {
        let mut e = AuditEvent::new(r.at, r.actor.clone(), Action::TaskRevoked);
        e.task = Some(TaskId(row.uuid("id")?));
        e.agent = Some(row.text("agent")?);
        e.reason = Some(r.reason.clone());
        e.detail = serde_json::json!({ "sequence": seq });
        events.push(e);
    }
    insert_audit(tx, &events.iter().collect::<Vec<_>>()).await?;
    Ok(stopped.len() as u64)
}

/// The event a revocation of `r`'s target would only repeat, if it would: the
/// target was revoked before and nothing it covers is live now (no unrevoked
/// token that has not expired, no active task, no open offer to the agent). A
/// revoked token names the event that revoked it, whatever that event's target.
async fn repeated(tx: &mut Tx, r: &Revocation) -> Result<Option<Event>, StoreError> {
    let original = match &r.target {
        Target::Token(j) => {
            let q = query("SELECT revocation_seq FROM tokens WHERE jti = $1").bind(*j);
            match tx.fetch_optional(q).await? {
                Some(row) => row.int_opt("revocation_seq")?,
                None => None,
            }
        }
        target => {
            let (tokens, arg) = covering_at(
                target,
                if let Target::Task(_) = target {
                    "task_id"
                } else {
                    "jti"
                },
                2,
            );
            let (tasks, _) = covering_at(target, "id", 2);
            let offers = match target {
                Target::Agent(_) => {
                    "OR EXISTS (SELECT 1 FROM delegations
                    WHERE sub_agent = $2 AND redeemed_at IS NULL AND expires_at > $1)"
                }
                _ => "",
            };
            let live = query(format!(
                "SELECT EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL AND expires_at > $1 AND {tokens})
                    OR EXISTS (SELECT 1 FROM tasks WHERE state = 'active' AND {tasks}) {offers} AS live"
            ))
            .bind(r.at)
            .bind_all(arg);
            if tx.fetch_one(live).await?.bool("live")? {
                return Ok(None);
            }
            let last = query(
                "SELECT max(seq) AS seq FROM revocations WHERE target_kind = $1 AND target = $2",
            )
            .bind(r.target.kind())
            .bind(r.target.value());
            tx.fetch_one(last).await?.int_opt("seq")?
        }
    };
    let Some(seq) = original else { return Ok(None) };
    // A token's row may outlive the event that revoked it (pruned once older
    // than any token it concerns): then there is no original to answer with,
    // and the revocation is recorded again.
    let row = tx
        .fetch_optional(
            query(
                "SELECT seq, target_kind, target, reason, actor, trigger, at FROM revocations
                 WHERE seq = $1",
            )
            .bind(seq),
        )
        .await?;
    row.as_ref().map(event_from_row).transpose()
}

/// An administrative revocation inside `tx`, without its audit event: see
/// [`RevocationStore::revoke`] and [`revocation_audit`].
pub(super) async fn revoke_in(
    db: &Db,
    tx: &mut Tx,
    r: &Revocation,
) -> Result<Option<Revoked>, StoreError> {
    // Revokers take turns at the counter (in PostgreSQL its row lock, taken
    // first as everywhere), so of two identical revocations racing, the second
    // reads what the first committed.
    tx.execute(query(format!(
        "SELECT last_seq FROM revocation_counter {}",
        dialect::lock(db, "FOR UPDATE")
    )))
    .await?;
    let exists = match &r.target {
        Target::Token(j) => {
            Some(query("SELECT EXISTS (SELECT 1 FROM tokens WHERE jti = $1) AS e").bind(*j))
        }
        Target::Task(t) => {
            Some(query("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1) AS e").bind(t.0))
        }
        // An agent or workflow may be revoked before it has any task.
        Target::Agent(_) | Target::Workflow(_) | Target::All => None,
    };
    if let Some(q) = exists
        && !tx.fetch_one(q).await?.bool("e")?
    {
        return Ok(None);
    }
    if let Some(event) = repeated(tx, r).await? {
        // Nothing new to revoke: the stream gets nothing.
        return Ok(Some(Revoked {
            event,
            tokens_revoked: 0,
            tasks_stopped: 0,
            repeated: true,
        }));
    }
    let (seq, r) = next_seq(tx, r).await?;
    let tasks = stop_tasks(tx, &r, seq).await?;
    if let Target::Agent(a) = &r.target {
        // Offers to a revoked agent lapse with its tokens: it redeems none of
        // them afterwards (in PostgreSQL a redemption in flight holds the offer's
        // row, and this waits for it; its child is then revoked below).
        tx.execute(
            query(
                "UPDATE delegations SET expires_at = CASE WHEN expires_at < $2 THEN expires_at ELSE $2 END
                 WHERE sub_agent = $1 AND redeemed_at IS NULL AND expires_at > $2",
            )
            .bind(a.to_string())
            .bind(r.at),
        )
        .await?;
    }
    insert_revocation(tx, seq, &r).await?;
    let tokens = revoke_tokens(db, tx, &r.target, seq, r.at).await?;
    Ok(Some(Revoked {
        event: Event { seq, revocation: r },
        tokens_revoked: tokens,
        tasks_stopped: tasks,
        repeated: false,
    }))
}

/// `audit` with what a revocation did: its event's sequence, what it revoked
/// and stopped, and whether it only repeated an earlier one.
fn revocation_audit(audit: &AuditEvent, revoked: &Revoked) -> AuditEvent {
    let mut audit = audit.clone();
    if let serde_json::Value::Object(m) = &mut audit.detail {
        m.insert("sequence".into(), revoked.event.seq.into());
        m.insert("tokens_revoked".into(), revoked.tokens_revoked.into());
        m.insert("tasks_stopped".into(), revoked.tasks_stopped.into());
        if revoked.repeated {
            m.insert("repeated".into(), true.into());
        }
    }
    audit
}

#[async_trait]
impl RevocationStore for SqlStore {
    async fn revoke(
        &self,
        r: &Revocation,
        audit: &AuditEvent,
    ) -> Result<Option<Revoked>, StoreError> {
        let mut tx = self.db.begin(Write::Revoke).await?;
        let Some(revoked) = revoke_in(&self.db, &mut tx, r).await? else {
            // Nothing is written and no sequence number taken.
            tx.rollback().await?;
            return Ok(None);
        };
        insert_audit(&mut tx, &[&revocation_audit(audit, &revoked)]).await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }

    async fn quarantine(
        &self,
        r: &Revocation,
        f: &Freeze,
        audit: &AuditEvent,
    ) -> Result<Quarantined, StoreError> {
        match (&r.target, &f.target) {
            (Target::Agent(a), FreezeTarget::Agent(b)) if a == b => {}
            _ => {
                return Err(StoreError::Other(
                    "a quarantine revokes and freezes one agent".into(),
                ));
            }
        }
        let mut tx = self.db.begin(Write::Quarantine).await?;
        // The counter first, as every revocation takes it; then the freeze.
        let revoked = revoke_in(&self.db, &mut tx, r)
            .await?
            .ok_or_else(|| StoreError::Other("an agent's revocation found no target".into()))?;
        let (freeze, newly_frozen) = freezes::freeze_in(&mut tx, f).await?;
        let mut audit = revocation_audit(audit, &revoked);
        if let serde_json::Value::Object(m) = &mut audit.detail {
            m.insert("newly_frozen".into(), newly_frozen.into());
        }
        insert_audit(&mut tx, &[&audit]).await?;
        tx.commit().await?;
        Ok(Quarantined {
            revoked,
            freeze,
            newly_frozen,
        })
    }

    async fn revocations_after(&self, after: u64, n: u32) -> Result<Vec<Event>, StoreError> {
        let db = &self.db;
        let rows = db
            .fetch_all(
                query(
                    "SELECT seq, target_kind, target, reason, actor, trigger, at FROM revocations
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(after)
                .bind(limit(n)),
            )
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn last_revocation_seq(&self) -> Result<u64, StoreError> {
        let db = &self.db;
        let row = db
            .fetch_one(query("SELECT last_seq FROM revocation_counter"))
            .await?;
        seq(&row, "last_seq")
    }

    /// Not gated: the feed reconnects by itself.
    async fn revocation_feed(&self) -> Result<Box<dyn RevocationFeed>, StoreError> {
        self.db.feed().await
    }
}
