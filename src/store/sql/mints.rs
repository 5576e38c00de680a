//! Group commit: the tokens of mints that arrive together are recorded in one
//! transaction. One writer takes everything queued when its previous commit
//! finished (at most [`MAX_BATCH`] mints, nothing waited for): an idle broker's
//! mint goes alone and at once; under load, a commit's cost is shared by every
//! mint that queued behind the one before. A mint is answered only once the
//! transaction holding its token has committed; a batch that fails answers
//! every mint in it with the failure and has written none of it.
//!
//! The write judges each mint on its own, in arrival order, as it would have
//! been alone: its task's row is locked, then the owner, freezes, state and
//! deadline may refuse it; of the rest, a task takes as many as its budget has
//! left, earliest first, and its count moves once. PostgreSQL does all of that
//! in one statement over arrays (one prepared statement for any batch size);
//! SQLite's one writer runs each mint's statements in turn in the transaction,
//! which costs microseconds: its commit (a `fsync`) is what the batch shares.
use super::arg::List;
use super::dialect;
use super::driver::{Conn, Db, Row};
use super::tokens::{refusal_named, take};
use super::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// The most mints one transaction records: a batch's statement and its
/// answer stay small (PostgreSQL: 12 arrays of this length), and a mint waits
/// behind at most one such batch.
pub(super) const MAX_BATCH: usize = 256;

/// Mints queued for the writer at most; past it a mint waits for room, so
/// memory stays bounded however many connections mint.
const QUEUE: usize = 4 * MAX_BATCH;

/// A mint waiting for its token's write.
struct Pending {
    token: TokenRecord,
    budget: u32,
    audit: AuditEvent,
    answer: oneshot::Sender<Result<Recorded, StoreError>>,
}

/// How the writer has batched, for operators (`/metrics`) and tests.
#[derive(Debug, Default)]
pub struct GroupCommits {
    /// Transactions that recorded mints.
    pub batches: AtomicU64,
    /// Mints they judged.
    pub mints: AtomicU64,
    /// The most mints one transaction judged.
    pub largest: AtomicU64,
}

/// The queue to the writer, started with the store's first mint.
#[derive(Clone)]
pub(super) struct Mints {
    queue: mpsc::Sender<Pending>,
}

impl Mints {
    /// Starts the writer over `db`; it stops when the last handle is dropped,
    /// after answering what it holds.
    pub fn start(db: Db, stats: Arc<GroupCommits>) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(writer(db, pending, stats));
        Mints { queue }
    }

    /// Records `token` with its audit event, in the next batch; answers once
    /// that batch has committed (or failed).
    pub async fn record(
        &self,
        token: &TokenRecord,
        budget: u32,
        audit: &AuditEvent,
    ) -> Result<Recorded, StoreError> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            token: token.clone(),
            budget,
            audit: audit.clone(),
            answer,
        };
        let stopped = || StoreError::Unavailable("the token writer has stopped".into());
        self.queue.send(pending).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// The writer: a batch at a time, each everything queued meanwhile.
async fn writer(db: Db, mut queue: mpsc::Receiver<Pending>, stats: Arc<GroupCommits>) {
    let mut next: Option<Pending> = None;
    loop {
        let first = match next.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut batch = vec![first];
        // A task's mints in one batch share the budget they were decided with
        // (a policy reload between two of them can change it): one that differs
        // starts the next batch, so each task's count is judged against one
        // budget, exactly as the mints one by one would be.
        let mut budgets = HashMap::from([(batch[0].token.task, batch[0].budget)]);
        while batch.len() < MAX_BATCH {
            let Ok(p) = queue.try_recv() else { break };
            if *budgets.entry(p.token.task).or_insert(p.budget) != p.budget {
                next = Some(p);
                break;
            }
            batch.push(p);
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.mints.fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .largest
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        crate::metrics::MINT_BATCH_SIZE.observe(batch.len() as f64);
        let answers = write(&db, &batch).await;
        for (p, a) in batch.into_iter().zip(answers) {
            // A caller that stopped waiting is told nothing: its token is
            // recorded (or not) all the same, and never handed out.
            let _ = p.answer.send(a);
        }
    }
}

/// Each mint's answer, in the batch's order.
async fn write(db: &Db, batch: &[Pending]) -> Vec<Result<Recorded, StoreError>> {
    let failed = match in_one_transaction(db, batch).await {
        Ok(answers) => return answers.into_iter().map(Ok).collect(),
        Err(e) => e,
    };
    match failed {
        // One mint's bad input must not fail the others: alone, each gets its
        // own answer. A batch that never reached its commit wrote nothing.
        Failed::Before(StoreError::Other(_)) if batch.len() > 1 => {
            let mut answers = Vec::with_capacity(batch.len());
            for p in batch {
                let alone = in_one_transaction(db, std::slice::from_ref(p)).await;
                answers.push(match alone {
                    Ok(mut a) => a
                        .pop()
                        .ok_or_else(|| StoreError::Other("the token write judged no mint".into())),
                    Err(Failed::Before(e) | Failed::Commit(e)) => Err(e),
                });
            }
            answers
        }
        Failed::Before(e) | Failed::Commit(e) => batch.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// Where a batch failed: before its commit (nothing was written), or at it.
enum Failed {
    Before(StoreError),
    Commit(StoreError),
}

async fn in_one_transaction(db: &Db, batch: &[Pending]) -> Result<Vec<Recorded>, Failed> {
    let mut tx = db.begin(Write::InsertToken).await.map_err(Failed::Before)?;
    if let Some(q) = dialect::batch_plans(db) {
        tx.execute(q).await.map_err(Failed::Before)?;
    }
    let judged = match &db.conn {
        Conn::Postgres(_) => judge_in_one_statement(&mut tx, batch).await,
        Conn::Sqlite(_) => judge_one_by_one(db, &mut tx, batch).await,
    }
    .map_err(Failed::Before)?;
    let events: Vec<AuditEvent> = batch
        .iter()
        .zip(&judged)
        .filter(|(_, j)| j.is_ok())
        .map(|(p, _)| minted_event(&p.token, &p.audit))
        .collect();
    tx.record_audit_owned(events);
    db.may_commit(Write::CommitTokens).map_err(Failed::Before)?;
    // The outcome of a commit that failed is the database's to know: every
    // mint is told the store is unavailable, and retries.
    tx.commit().await.map_err(|e| {
        Failed::Commit(match e {
            StoreError::Unavailable(m) => StoreError::Unavailable(m),
            other => StoreError::Unavailable(format!("committing the batch's tokens: {other}")),
        })
    })?;
    Ok(judged)
}

/// The audit event of a recorded token, naming it as the row does.
pub(super) fn minted_event(t: &TokenRecord, audit: &AuditEvent) -> AuditEvent {
    let mut audit = audit.clone();
    audit.task = Some(t.task);
    audit.agent = Some(t.agent.to_string());
    audit.jti = Some(t.jti);
    audit.at = t.issued_at;
    audit
}

/// SQLite: each mint's judgement and write in turn ([`take`]), in the one
/// writer's transaction.
async fn judge_one_by_one(
    db: &Db,
    tx: &mut Tx,
    batch: &[Pending],
) -> Result<Vec<Recorded>, StoreError> {
    let mut judged = Vec::with_capacity(batch.len());
    for p in batch {
        judged.push(take(db, tx, &p.token, &p.token.agent, p.budget).await?);
    }
    Ok(judged)
}

/// PostgreSQL's batch statement ([`judge_in_one_statement`]), built once.
///
/// `r` is the batch, one row per mint with its position (`ord`); `k` locks the
/// tasks it names, in id order (two writers never wait on each other in a
/// cycle) and, once locked, reads each as it stands; `j` bars a mint for what
/// does not depend on the others (no task, another agent's, frozen, not active,
/// past its deadline, as the single write's `REFUSAL` does); `v` counts the
/// unbarred mints of each task in order and refuses those past its budget;
/// then each task's count moves once and the tokens are inserted. The answer:
/// each mint's refusal (NULL: recorded), its task's state, and the rows written.
const BATCH: &str = "WITH r AS (
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::text[],
                             $10::timestamptz[], $11::timestamptz[], $12::bigint[])
            WITH ORDINALITY AS r (jti, task_id, agent, workflow, audience, resource, action,
                                  kid, cert_thumbprint, issued_at, expires_at, budget, ord)
     ), k AS (
        SELECT id, agent, state, expires_at, tokens_minted FROM tasks
        WHERE id = ANY ($2::uuid[]) ORDER BY id FOR NO KEY UPDATE
     ), j AS (
        SELECT r.*, k.state, k.tokens_minted, CASE
            WHEN k.id IS NULL THEN 'task'
            WHEN k.agent <> r.agent THEN 'owner'
            WHEN EXISTS (SELECT 1 FROM freezes f WHERE f.kind = 'all'
                OR (f.kind = 'agent' AND f.target = r.agent)
                OR (f.kind = 'workflow' AND f.target = r.workflow)) THEN 'frozen'
            WHEN k.state <> 'active' THEN 'state'
            WHEN k.expires_at <= r.issued_at THEN 'deadline'
            END AS barred
        FROM r LEFT JOIN k ON k.id = r.task_id
     ), v AS (
        SELECT j.*, CASE
            WHEN barred IS NOT NULL THEN barred
            WHEN tokens_minted + row_number() OVER (PARTITION BY task_id, barred IS NULL ORDER BY ord) > budget
                THEN 'budget'
            END AS refusal
        FROM j
     ), n AS (
        SELECT task_id, count(*) AS taken FROM v WHERE refusal IS NULL GROUP BY task_id
     ), t AS (
        UPDATE tasks SET tokens_minted = tasks.tokens_minted + n.taken
        FROM n WHERE tasks.id = n.task_id
        RETURNING tasks.id
     ), tok AS (
        INSERT INTO tokens (jti, task_id, agent, workflow, audience, resource, action, kid,
                            cert_thumbprint, issued_at, expires_at, parent_jti, depth)
        SELECT jti, task_id, agent, workflow, audience, resource, action, kid,
               cert_thumbprint, issued_at, expires_at, NULL, 0
        FROM v WHERE refusal IS NULL
        RETURNING jti
     )
     SELECT ord, refusal, state, (SELECT count(*) FROM tok) AS recorded FROM v ORDER BY ord";

/// Judges and records a batch of direct mints (no parent, depth 0) in one
/// statement: each mint's answer, in order.
async fn judge_in_one_statement(
    tx: &mut Tx,
    batch: &[Pending],
) -> Result<Vec<Recorded>, StoreError> {
    let col =
        |f: fn(&TokenRecord) -> &str| List::Text(batch.iter().map(|p| Some(f(&p.token))).collect());
    let q = super::driver::query(BATCH)
        .bind(List::Uuid(
            batch.iter().map(|p| Some(p.token.jti)).collect(),
        ))
        .bind(List::Uuid(
            batch.iter().map(|p| Some(p.token.task.0)).collect(),
        ))
        .bind(col(|t| t.agent.as_str()))
        .bind(col(|t| &t.workflow))
        .bind(col(|t| &t.scope.audience))
        .bind(col(|t| &t.scope.resource))
        .bind(col(|t| &t.scope.action))
        .bind(col(|t| &t.kid))
        .bind(col(|t| &t.cert_thumbprint))
        .bind(List::Time(
            batch.iter().map(|p| p.token.issued_at).collect(),
        ))
        .bind(List::Time(
            batch.iter().map(|p| p.token.expires_at).collect(),
        ))
        .bind(List::Int(
            batch.iter().map(|p| i64::from(p.budget)).collect(),
        ));
    let rows = tx.fetch_all(q).await?;
    if rows.len() != batch.len() {
        return Err(StoreError::Other(format!(
            "the token write judged {} of {} mints",
            rows.len(),
            batch.len()
        )));
    }
    let mut judged = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if row.u64("ord")? != i as u64 + 1 {
            return Err(StoreError::Other(
                "the token write answered out of order".into(),
            ));
        }
        judged.push(judgement(row)?);
    }
    let taken = judged.iter().filter(|j| j.is_ok()).count() as u64;
    let recorded = rows.first().map_or(Ok(0), |r| r.u64("recorded"))?;
    if taken != recorded {
        return Err(StoreError::Other(format!(
            "the token write took {taken} tokens and recorded {recorded}"
        )));
    }
    Ok(judged)
}

/// One mint's answer in the batch's result.
fn judgement(row: &Row) -> Result<Recorded, StoreError> {
    match row.text_opt("refusal")? {
        None => Ok(Ok(())),
        Some(why) => refusal_named(&why, row).map(Err),
    }
}
