//! Group commit: mints queued behind a commit are recorded in one transaction,
//! and each is judged as it would have been alone. To queue mints for certain,
//! a test holds the database's write lock (PostgreSQL: the row of the first
//! mint's task; SQLite: the file's) while the first mint's batch waits on it,
//! queues the rest, then lets go.
use crate::faulty::Faults;
use crate::support::*;
use mayfly::broker::{Broker, BrokerError, Mint, MintRequest, StartTask};
use mayfly::clock::{Clock, ManualClock};
use mayfly::domain::audit::Action;
use mayfly::domain::refusal::{Refusal, TaskClosed};
use mayfly::domain::{FreezeTarget, Scope, SpiffeId, Task, TaskId, TaskState};
use mayfly::identity::Caller;
use mayfly::policy::CedarPolicy;
use mayfly::store::*;
use sqlx::Connection;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Postgres,
    Sqlite,
}

/// A broker over a store with fault switches, and how to reach its database.
struct Rig {
    broker: Arc<Broker>,
    store: Arc<SqlStore>,
    faults: Arc<Faults>,
    clock: ManualClock,
    db: Raw,
    _dir: tempfile::TempDir,
    _pg: Option<TestDb>,
}

/// The database's address, for a connection of the test's own.
enum Raw {
    Postgres(String),
    Sqlite(std::path::PathBuf),
}

async fn rig(kind: Kind, max_tokens: u32) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let (store, db, pg) = match kind {
        Kind::Postgres => {
            let pg = fresh_database().await;
            let store = SqlStore::postgres(&pg.url, 8, Duration::from_secs(10))
                .await
                .unwrap();
            (store, Raw::Postgres(pg.url.clone()), Some(pg))
        }
        Kind::Sqlite => {
            let path = dir.path().join("mayfly.db");
            let store = SqlStore::sqlite(&path, 4, Duration::from_secs(20))
                .await
                .unwrap();
            (store, Raw::Sqlite(path), None)
        }
    };
    let (store, faults) = Faults::over(store);
    let clock = ManualClock::new();
    let policy =
        Arc::new(CedarPolicy::load(&write_policies(dir.path(), max_tokens), "test").unwrap());
    let broker = Broker::new(
        store.clone(),
        policy,
        Arc::new(clock.clone()),
        "https://mayfly.test".into(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    Rig {
        broker: Arc::new(broker),
        store,
        faults,
        clock,
        db,
        _dir: dir,
        _pg: pg,
    }
}

/// The database's writes held (the first mint's batch waits), until dropped by
/// [`Held::release`].
enum Held {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Rig {
    fn caller(&self, id: &str) -> Caller {
        Caller {
            id: SpiffeId::parse(id).unwrap(),
            thumbprint: "dGh1bWJwcmludC1vZi10aGUtdGVzdC1jZXJ0aWZpY2F0ZQ".into(),
            valid_until: self.clock.now().unix_timestamp() + 3600,
        }
    }

    async fn open(&self, agent: &str) -> Task {
        self.broker
            .start_task(
                &self.caller(ORCH),
                StartTask {
                    agent: SpiffeId::parse(agent).unwrap(),
                    workflow: "support".into(),
                    objective: "answer ticket 4711".into(),
                    scopes: vec![Scope::declared("crm-api", "customers/eu/*", "read").unwrap()],
                    duration: Duration::from_secs(600),
                },
            )
            .await
            .unwrap()
    }

    /// Holds what `task`'s next token write needs.
    async fn hold(&self, task: TaskId) -> Held {
        match &self.db {
            Raw::Postgres(url) => {
                let mut c = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut c).await.unwrap();
                sqlx::query("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE")
                    .bind(task.0)
                    .execute(&mut c)
                    .await
                    .unwrap();
                Held::Postgres(c)
            }
            Raw::Sqlite(path) => {
                let mut c =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                Held::Sqlite(c)
            }
        }
    }

    /// A mint by `agent` in `task` for customer `n`, in a task of its own.
    fn mint(
        &self,
        agent: &str,
        task: TaskId,
        n: usize,
    ) -> tokio::task::JoinHandle<Result<Mint, BrokerError>> {
        let (broker, caller) = (self.broker.clone(), self.caller(agent));
        tokio::spawn(async move {
            broker
                .mint(
                    &caller,
                    MintRequest {
                        task,
                        scope: Scope::requested("crm-api", format!("customers/eu/{n}"), "read")
                            .unwrap(),
                        ttl: Duration::from_secs(60),
                    },
                )
                .await
        })
    }

    /// The tokens stored for `task`, and its count.
    async fn stored(&self, task: TaskId) -> (HashSet<uuid::Uuid>, u32) {
        let tokens = self
            .store
            .list_tokens(&TokenFilter {
                task: Some(task),
                agent: None,
                active_at: None,
                limit: 1000,
            })
            .await
            .unwrap();
        let count = self
            .store
            .get_task(task)
            .await
            .unwrap()
            .unwrap()
            .tokens_minted;
        (tokens.into_iter().map(|t| t.jti).collect(), count)
    }

    /// The task's audit events recording a minted token.
    async fn minted_events(&self, task: TaskId) -> usize {
        self.store
            .audit_for_task(task)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.action == Action::TokenMinted)
            .count()
    }
}

impl Held {
    async fn release(self) {
        match self {
            Held::Postgres(mut c) => sqlx::query("ROLLBACK").execute(&mut c).await.map(drop),
            Held::Sqlite(mut c) => sqlx::query("ROLLBACK").execute(&mut c).await.map(drop),
        }
        .unwrap()
    }
}

/// Long enough for spawned mints to pass their checks and queue (a mint's
/// work before its write is well under a millisecond).
const QUEUED: Duration = Duration::from_millis(500);

/// A mint's outcome, its token left out: the token's id, or the refusal.
type Outcome = Result<uuid::Uuid, BrokerError>;
type Outcomes = Vec<Outcome>;

fn outcome(m: Result<Mint, BrokerError>) -> Outcome {
    match m {
        Ok(Mint::Minted(m)) => Ok(m.jti),
        Ok(Mint::Pending(_)) => panic!("no approval is needed for reading customers"),
        Err(e) => Err(e),
    }
}

async fn outcomes(handles: Vec<tokio::task::JoinHandle<Result<Mint, BrokerError>>>) -> Outcomes {
    let mut out = Vec::new();
    for h in handles {
        out.push(outcome(h.await.unwrap()));
    }
    out
}

fn jtis(o: &Outcomes) -> HashSet<uuid::Uuid> {
    o.iter().filter_map(|m| m.as_ref().ok().copied()).collect()
}

fn out_of_budget(o: &Outcomes) -> usize {
    o.iter()
        .filter(|m| {
            matches!(
                m,
                Err(BrokerError::Refused(Refusal::OutOfBudget { .. })
                    | BrokerError::Deviated(Refusal::OutOfBudget { .. }))
            )
        })
        .count()
}

async fn queued_mints_share_one_transaction_and_each_is_judged_alone(kind: Kind) {
    let rig = rig(kind, 5).await;
    let (first, a, b) = (
        rig.open(AGENT).await,
        rig.open(AGENT).await,
        rig.open(AGENT2).await,
    );
    let held = rig.hold(first.id).await;
    let lone = rig.mint(AGENT, first.id, 0);
    tokio::time::sleep(QUEUED).await;
    let in_a: Vec<_> = (1..=8).map(|n| rig.mint(AGENT, a.id, n)).collect();
    let in_b: Vec<_> = (1..=3).map(|n| rig.mint(AGENT2, b.id, n)).collect();
    tokio::time::sleep(QUEUED).await;
    held.release().await;

    assert!(matches!(lone.await.unwrap(), Ok(Mint::Minted(_))));
    let (in_a, in_b) = (outcomes(in_a).await, outcomes(in_b).await);
    let commits = rig.store.group_commits();
    assert_eq!(
        commits.largest.load(Ordering::SeqCst),
        11,
        "the eleven mints queued behind the first commit went in one transaction"
    );
    // Task A's budget of five holds within the batch; B's mints are its own.
    // Past a budget is a deviation (the test workflow's response): the first
    // refused ends the task, the other two find it deviated.
    assert_eq!(jtis(&in_a).len(), 5, "{in_a:?}");
    assert_eq!(out_of_budget(&in_a), 1, "{in_a:?}");
    let deviated = |m: &&Outcome| {
        matches!(
            m,
            Err(BrokerError::Refused(Refusal::TaskClosed(
                TaskClosed::NotActive {
                    state: TaskState::Deviated,
                    ..
                }
            )))
        )
    };
    assert_eq!(in_a.iter().filter(deviated).count(), 2, "{in_a:?}");
    assert_eq!(jtis(&in_b).len(), 3, "{in_b:?}");
    for (task, got) in [(a.id, &in_a), (b.id, &in_b)] {
        let (stored, count) = rig.stored(task).await;
        assert_eq!(stored, jtis(got), "what is stored is what was handed out");
        assert_eq!(
            count as usize,
            stored.len(),
            "the task counts what it recorded"
        );
        assert_eq!(
            rig.minted_events(task).await,
            stored.len(),
            "one audit event per token"
        );
    }
}

#[tokio::test]
async fn postgres_queued_mints_share_one_transaction_and_each_is_judged_alone() {
    queued_mints_share_one_transaction_and_each_is_judged_alone(Kind::Postgres).await;
}

#[tokio::test]
async fn sqlite_queued_mints_share_one_transaction_and_each_is_judged_alone() {
    queued_mints_share_one_transaction_and_each_is_judged_alone(Kind::Sqlite).await;
}

async fn a_batch_whose_commit_fails_fails_every_mint_and_stores_none(kind: Kind) {
    let rig = rig(kind, 50).await;
    let (first, a, b) = (
        rig.open(AGENT).await,
        rig.open(AGENT).await,
        rig.open(AGENT2).await,
    );
    let held = rig.hold(first.id).await;
    let lone = rig.mint(AGENT, first.id, 0);
    tokio::time::sleep(QUEUED).await;
    let mut queued: Vec<_> = (1..=4).map(|n| rig.mint(AGENT, a.id, n)).collect();
    queued.extend((1..=4).map(|n| rig.mint(AGENT2, b.id, n)));
    tokio::time::sleep(QUEUED).await;
    rig.faults.fail_commits.store(true, Ordering::SeqCst);
    held.release().await;

    let mut all = outcomes(queued).await;
    all.push(outcome(lone.await.unwrap()));
    assert_eq!(rig.store.group_commits().largest.load(Ordering::SeqCst), 8);
    for m in &all {
        match m {
            Err(BrokerError::Store(StoreError::Unavailable(why))) => {
                let status =
                    tonic::Status::from(BrokerError::Store(StoreError::Unavailable(why.clone())));
                assert_eq!(status.code(), Code::Unavailable);
            }
            other => panic!("a mint of a batch that did not commit got {other:?}"),
        }
    }
    for task in [first.id, a.id, b.id] {
        assert_eq!(
            rig.stored(task).await,
            (HashSet::new(), 0),
            "nothing of the batch is stored"
        );
        assert_eq!(rig.minted_events(task).await, 0);
    }

    // The writer goes on once commits succeed again.
    rig.faults.fail_commits.store(false, Ordering::SeqCst);
    let again = outcome(rig.mint(AGENT, a.id, 9).await.unwrap()).unwrap();
    assert_eq!(rig.stored(a.id).await, (HashSet::from([again]), 1));
}

#[tokio::test]
async fn postgres_a_batch_whose_commit_fails_fails_every_mint_and_stores_none() {
    a_batch_whose_commit_fails_fails_every_mint_and_stores_none(Kind::Postgres).await;
}

#[tokio::test]
async fn sqlite_a_batch_whose_commit_fails_fails_every_mint_and_stores_none() {
    a_batch_whose_commit_fails_fails_every_mint_and_stores_none(Kind::Sqlite).await;
}

/// PostgreSQL only: SQLite's one writer orders a freeze or an ending wholly
/// before or after a batch, never beside it.
#[tokio::test]
async fn what_commits_before_the_batch_refuses_the_mints_it_covers_and_no_other() {
    let rig = rig(Kind::Postgres, 50).await;
    let first = rig.open(AGENT).await;
    let (plain, frozen, completed, deviating) = (
        rig.open(AGENT).await,
        rig.open(AGENT2).await,
        rig.open(AGENT).await,
        rig.open(AGENT).await,
    );
    let held = rig.hold(first.id).await;
    let lone = rig.mint(AGENT, first.id, 0);
    tokio::time::sleep(QUEUED).await;
    let queue = |agent: &str, task: &Task| -> Vec<_> {
        (1..=2).map(|n| rig.mint(agent, task.id, n)).collect()
    };
    let (in_plain, in_frozen, in_completed, in_deviating) = (
        queue(AGENT, &plain),
        queue(AGENT2, &frozen),
        queue(AGENT, &completed),
        queue(AGENT, &deviating),
    );
    tokio::time::sleep(QUEUED).await;

    // While they wait: a2 is frozen, one task completed, and another deviates
    // (a mint outside its declared scopes).
    let admin = rig.caller(ADMIN);
    rig.broker
        .freeze(
            &admin,
            FreezeTarget::Agent(SpiffeId::parse(AGENT2).unwrap()),
            "incident 12".into(),
        )
        .await
        .unwrap();
    rig.broker
        .complete_task(&rig.caller(ORCH), completed.id)
        .await
        .unwrap();
    let strayed = rig
        .broker
        .mint(
            &rig.caller(AGENT),
            MintRequest {
                task: deviating.id,
                scope: Scope::requested("crm-api", "customers/us/1", "read").unwrap(),
                ttl: Duration::from_secs(60),
            },
        )
        .await;
    let strayed = outcome(strayed);
    assert!(
        matches!(strayed, Err(BrokerError::Deviated(_))),
        "{strayed:?}"
    );
    held.release().await;

    assert!(matches!(lone.await.unwrap(), Ok(Mint::Minted(_))));
    let in_plain = outcomes(in_plain).await;
    assert_eq!(
        jtis(&in_plain).len(),
        2,
        "the mints no freeze or ending covers: {in_plain:?}"
    );
    for m in outcomes(in_frozen).await {
        assert!(
            matches!(m, Err(BrokerError::Refused(Refusal::Frozen(_)))),
            "{m:?}"
        );
    }
    for (got, state) in [
        (outcomes(in_completed).await, TaskState::Completed),
        (outcomes(in_deviating).await, TaskState::Deviated),
    ] {
        for m in got {
            assert!(
                matches!(&m, Err(BrokerError::Refused(Refusal::TaskClosed(TaskClosed::NotActive { state: s, .. }))) if *s == state),
                "{m:?}"
            );
        }
    }
    assert_eq!(rig.store.group_commits().largest.load(Ordering::SeqCst), 8);
    for task in [frozen.id, completed.id, deviating.id] {
        assert_eq!(rig.stored(task).await, (HashSet::new(), 0));
    }
    assert_eq!(rig.stored(plain.id).await.0, jtis(&in_plain));
}

/// Over mTLS, two replicas on one database mint concurrently in one task: its
/// budget holds exactly, and every token handed out is the one stored.
#[tokio::test]
async fn a_budget_holds_exactly_across_replicas_minting_at_once() {
    let pki = Arc::new(Pki::new());
    let one = spawn_with(pki.clone(), Settings::new().max_tokens(30)).await;
    let two = spawn_replica(pki, &one, Settings::new().max_tokens(30)).await;
    let task = one.open_task(AGENT, 600).await;
    let mut mints = Vec::new();
    for (r, app) in [&one, &two].into_iter().enumerate() {
        for c in 0..4 {
            let (client, _) = app.tokens(AGENT).await;
            for n in 0..10 {
                let mut client = client.clone();
                let req = mint_request(&task.id, &format!("customers/eu/{r}-{c}-{n}"), 60);
                mints.push(tokio::spawn(async move { client.mint_token(req).await }));
            }
        }
    }
    let mut handed = HashSet::new();
    for m in mints {
        match m.await.unwrap() {
            Ok(r) => {
                handed.insert(r.into_inner().jti);
            }
            Err(s) => assert!(
                matches!(s.code(), Code::ResourceExhausted | Code::FailedPrecondition),
                "a mint past the budget is refused for it, nothing else: {s:?}"
            ),
        }
    }
    assert_eq!(handed.len(), 30, "exactly the budget is handed out");
    let stored: HashSet<String> = one
        .task_tokens(&task.id)
        .await
        .into_iter()
        .map(|t| t.jti)
        .collect();
    assert_eq!(stored, handed);
    assert_eq!(one.get_task(&task.id).await.tokens_minted, 30);
}

/// A task's facts are read once; its count of tokens is not one of them: a
/// policy that reads it decides on the task as stored at each mint.
#[tokio::test]
async fn a_policy_reading_the_token_count_decides_on_the_stored_count() {
    let rig = rig(Kind::Postgres, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = write_policies(dir.path(), 50);
    std::fs::write(
        policies.join("count.cedar"),
        r#"@id("test-count")
@reason("two tokens per task, by count")
forbid (principal, action == Mayfly::Action::"Mint", resource) when { context.tokens_minted >= 2 };
"#,
    )
    .unwrap();
    let broker = Broker::new(
        rig.store.clone(),
        Arc::new(CedarPolicy::load(&policies, "test").unwrap()),
        Arc::new(rig.clock.clone()),
        "https://mayfly.test".into(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let task = rig.open(AGENT).await;
    let agent = rig.caller(AGENT);
    let mint = |n: usize| {
        broker.mint(
            &agent,
            MintRequest {
                task: task.id,
                scope: Scope::requested("crm-api", format!("customers/eu/{n}"), "read").unwrap(),
                ttl: Duration::from_secs(60),
            },
        )
    };
    outcome(mint(1).await).unwrap();
    outcome(mint(2).await).unwrap();
    let third = outcome(mint(3).await);
    assert!(
        matches!(&third, Err(BrokerError::Refused(Refusal::Policy { policies, .. })) if policies.iter().any(|p| p == "test-count")),
        "the third mint is judged on a count of two: {third:?}"
    );
}
