//! No token leaves the broker unless it is persisted: a mint whose write fails hands
//! back no token, driven directly on a broker over a store that can refuse the write.
use crate::faulty::Faults;
use crate::support::*;
use mayfly::broker::{Broker, BrokerError, DelegateRequest, Mint, MintRequest, StartTask};
use mayfly::clock::{Clock, ManualClock};
use mayfly::domain::SpiffeId;
use mayfly::domain::refusal::Refusal;
use mayfly::domain::*;
use mayfly::domain::{Scope, TaskId};
use mayfly::identity::Caller;
use mayfly::policy::CedarPolicy;
use mayfly::store::*;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::Code;

/// A caller as the transport would build it from a verified SVID valid for an hour.
fn caller(id: &str, clock: &ManualClock) -> Caller {
    Caller {
        id: SpiffeId::parse(id).unwrap(),
        thumbprint: "dGh1bWJwcmludC1vZi10aGUtdGVzdC1jZXJ0aWZpY2F0ZQ".into(),
        valid_until: clock.now().unix_timestamp() + 3600,
    }
}

async fn tokens_of(store: &SqlStore, task: TaskId) -> Vec<uuid::Uuid> {
    sqlx::query_scalar("SELECT jti FROM tokens WHERE task_id = $1")
        .bind(task.0)
        .fetch_all(store.postgres_pool().expect("a PostgreSQL store"))
        .await
        .unwrap()
}

fn read_customer() -> MintRequest {
    MintRequest {
        task: TaskId(uuid::Uuid::nil()),
        scope: Scope::requested("crm-api", "customers/eu/1", "read").unwrap(),
        ttl: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn a_token_whose_insert_fails_is_never_returned() {
    let db = fresh_database().await;
    let pg = SqlStore::postgres(&db.url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    let (store, faults) = Faults::over(pg.clone());
    faults.fail_inserts.store(true, Ordering::SeqCst);
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let policy = Arc::new(CedarPolicy::load(&write_policies(dir.path(), 5), "test").unwrap());
    let broker = Broker::new(
        store.clone(),
        policy,
        Arc::new(clock.clone()),
        "https://mayfly.test".into(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let agent = caller(AGENT, &clock);
    let task = broker
        .start_task(
            &caller(ORCH, &clock),
            StartTask {
                agent: agent.id.clone(),
                workflow: "support".into(),
                objective: "answer ticket 4711".into(),
                scopes: vec![Scope::declared("crm-api", "customers/eu/*", "read").unwrap()],
                duration: Duration::from_secs(600),
            },
        )
        .await
        .unwrap();

    let failed = broker
        .mint(
            &agent,
            MintRequest {
                task: task.id,
                ..read_customer()
            },
        )
        .await;
    let err = match failed {
        Ok(_) => panic!("a token was handed back"),
        Err(e) => e,
    };
    assert!(
        matches!(err, BrokerError::Store(StoreError::Unavailable(_))),
        "{err:?}"
    );
    assert_eq!(
        faults.insert_calls.load(Ordering::SeqCst),
        1,
        "the refusal came from the failed insert, not from an earlier check"
    );
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
    assert_eq!(tokens_of(&pg, task.id).await, Vec::<uuid::Uuid>::new());
    assert_eq!(
        broker.get_task(task.id).await.unwrap().tokens_minted,
        0,
        "nothing was counted against the budget"
    );

    // The store is back: the next mint is persisted and returned.
    faults.fail_inserts.store(false, Ordering::SeqCst);
    let minted = broker
        .mint(
            &agent,
            MintRequest {
                task: task.id,
                ..read_customer()
            },
        )
        .await
        .expect("mint once the store answers");
    let Mint::Minted(minted) = minted else {
        panic!("CRM reads need no approval")
    };
    assert!(!minted.token.is_empty());
    assert_eq!(tokens_of(&pg, task.id).await, vec![minted.jti]);
    assert!(broker.introspect(&minted.token).await.unwrap().is_some());
}

/// A broker over a store that can refuse token writes, with the test policies.
async fn faulty_broker(clock: &ManualClock) -> (Broker, Arc<Faults>, SqlStore, TestDb) {
    let db = fresh_database().await;
    let pg = SqlStore::postgres(&db.url, 4, Duration::from_secs(5))
        .await
        .unwrap();
    let (store, faults) = Faults::over(pg.clone());
    let dir = tempfile::tempdir().unwrap();
    let policy = Arc::new(CedarPolicy::load(&write_policies(dir.path(), 5), "test").unwrap());
    let broker = Broker::new(
        store.clone(),
        policy,
        Arc::new(clock.clone()),
        "https://mayfly.test".into(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    (broker, faults, pg, db)
}

/// A support task for AGENT declaring CRM reads and ticket deletes (step-up).
async fn support_task(broker: &Broker, clock: &ManualClock) -> TaskId {
    broker
        .start_task(
            &caller(ORCH, clock),
            StartTask {
                agent: SpiffeId::parse(AGENT).unwrap(),
                workflow: "support".into(),
                objective: "answer ticket 4711".into(),
                scopes: vec![
                    Scope::declared("crm-api", "customers/eu/*", "read").unwrap(),
                    Scope::declared("tickets", "tickets/4711", "delete").unwrap(),
                ],
                duration: Duration::from_secs(600),
            },
        )
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn a_redeemed_or_approved_token_whose_write_fails_is_never_returned() {
    let clock = ManualClock::new();
    let (broker, faults, pg, _db) = faulty_broker(&clock).await;
    let task = support_task(&broker, &clock).await;
    let agent = caller(AGENT, &clock);
    let helper = Caller {
        thumbprint: "aGVscGVyLWNlcnRpZmljYXRlLXRodW1icHJpbnQtMDAwMDA".into(),
        ..caller("spiffe://example.org/agent/helper-1", &clock)
    };
    let Mint::Minted(parent) = broker
        .mint(
            &agent,
            MintRequest {
                task,
                ..read_customer()
            },
        )
        .await
        .unwrap()
    else {
        panic!("CRM reads need no approval")
    };
    let offer = broker
        .delegate(
            &agent,
            DelegateRequest {
                parent_token: parent.token.clone(),
                sub_agent: helper.id.clone(),
                scope: Scope::requested("crm-api", "customers/eu/1", "read").unwrap(),
                ttl: Duration::from_secs(30),
                sub_agent_is_agent: true,
            },
        )
        .await
        .unwrap();

    // The store refuses the write: no child token, the offer stays redeemable.
    faults.fail_inserts.store(true, Ordering::SeqCst);
    let err = broker.redeem(&helper, offer.id).await.err().unwrap();
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
    assert_eq!(tokens_of(&pg, task).await, vec![parent.jti]);
    let Mint::Pending(approval) = broker
        .mint(
            &agent,
            MintRequest {
                task,
                scope: Scope::requested("tickets", "tickets/4711", "delete").unwrap(),
                ttl: Duration::from_secs(60),
            },
        )
        .await
        .unwrap()
    else {
        panic!("deleting needs approval")
    };
    broker
        .decide_approval(
            &caller(ADMIN, &clock),
            false,
            approval.id,
            true,
            "ok".into(),
        )
        .await
        .unwrap();
    let err = broker
        .await_approval(&agent, approval.id, Duration::ZERO)
        .await
        .err()
        .unwrap();
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
    assert_eq!(
        tokens_of(&pg, task).await,
        vec![parent.jti],
        "nothing written"
    );

    // The store is back: both are spent exactly once.
    faults.fail_inserts.store(false, Ordering::SeqCst);
    let child = broker.redeem(&helper, offer.id).await.unwrap();
    let (spent, token) = broker
        .await_approval(&agent, approval.id, Duration::ZERO)
        .await
        .unwrap();
    let token = token.expect("the approved token");
    assert_eq!(spent.state, ApprovalState::Used);
    let mut stored = tokens_of(&pg, task).await;
    stored.sort();
    let mut want = vec![parent.jti, child.jti, token.jti];
    want.sort();
    assert_eq!(stored, want);
}

#[tokio::test]
async fn nobody_decides_their_own_step_up_request_nor_does_any_agent() {
    let clock = ManualClock::new();
    let (broker, _faults, _pg, _db) = faulty_broker(&clock).await;
    let task = support_task(&broker, &clock).await;
    let agent = caller(AGENT, &clock);
    let Mint::Pending(approval) = broker
        .mint(
            &agent,
            MintRequest {
                task,
                scope: Scope::requested("tickets", "tickets/4711", "delete").unwrap(),
                ttl: Duration::from_secs(60),
            },
        )
        .await
        .unwrap()
    else {
        panic!("deleting needs approval")
    };
    // The transport lets only admins reach the decision, and configuration keeps
    // agent and admin patterns apart; the broker refuses both cases regardless.
    let own = broker
        .decide_approval(&agent, false, approval.id, true, "mine".into())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&own, BrokerError::Refused(Refusal::OwnApproval { .. })),
        "{own:?}"
    );
    let own = tonic::Status::from(own);
    assert_eq!(own.code(), Code::PermissionDenied);
    assert!(own.message().contains("their own request"), "{own:?}");
    let by_agent = broker
        .decide_approval(
            &caller(AGENT2, &clock),
            true,
            approval.id,
            true,
            "ok".into(),
        )
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            &by_agent,
            BrokerError::Refused(Refusal::AgentDecides { .. })
        ),
        "{by_agent:?}"
    );
    let by_agent = tonic::Status::from(by_agent);
    assert_eq!(by_agent.code(), Code::PermissionDenied);
    assert!(by_agent.message().contains("agent role"), "{by_agent:?}");
    let (still, _) = broker
        .await_approval(&agent, approval.id, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(still.state, ApprovalState::Pending);
}
