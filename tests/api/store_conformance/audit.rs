//! The audit trail: sealed into one hash chain as it is written (and, what
//! arrives unsealed, by `seal_audit`), which the independent Rust verifier
//! accepts; reading it back by task, by filter and by position, and the
//! per-agent access report. (Rows an older broker left unsealed, and two stores
//! on one database, are in tests/api/audit_sealed.rs: they need the rows.)
use super::fixtures::*;
use mayfly::domain::Target;
use mayfly::domain::audit::chain::{Checkpoint, GENESIS, Verifier};
use mayfly::domain::audit::{Action, AuditEvent};
use mayfly::domain::*;
use mayfly::domain::{Task, TaskId};
use mayfly::store::*;
use serde_json::json;
use uuid::Uuid;

/// Verifies the whole stored chain up to the head, as `mayfly audit verify` does,
/// optionally through a checkpoint; returns the actions in chain order.
async fn verify<S: Store>(s: &S, checkpoint: Option<&AuditHead>) -> Vec<String> {
    let head = s.audit_head().await.unwrap();
    assert_eq!(head.max_seq, head.seq, "events stored past the head");
    let chain = s.audit_chain(0, head.seq, 1000).await.unwrap();
    let mut v = match checkpoint {
        Some(c) => Verifier::with_checkpoint(c.seq, c.hash.clone()),
        None => Verifier::default(),
    };
    for e in &chain {
        v.push(e).unwrap_or_else(|broken| panic!("{broken}"));
    }
    v.finish(head.seq, &head.hash)
        .unwrap_or_else(|broken| panic!("{broken}"));
    chain.into_iter().map(|e| e.action).collect()
}

/// An event the broker files on its own (a refusal), at `secs`.
fn refusal(actor: &str, secs: i64) -> AuditEvent {
    AuditEvent::new(at(secs), actor, Action::CallDenied)
        .reason("the caller holds none of the roles the call requires")
        .detail(json!({"method": "mayfly.v1.AdminService/Revoke"}))
}

async fn append<S: Store>(s: &S, e: &AuditEvent) {
    s.append_audit(e).await.unwrap();
}

async fn query<S: Store>(s: &S, f: AuditFilter) -> Vec<(u64, AuditEvent)> {
    s.query_audit(&AuditFilter { limit: 1000, ..f })
        .await
        .unwrap()
}

fn events_of(found: Vec<(u64, AuditEvent)>) -> Vec<AuditEvent> {
    found.into_iter().map(|(_, e)| e).collect()
}

pub async fn an_empty_store_has_no_events_no_revocations_and_a_genesis_head<S: Store>(s: &S) {
    let empty = AuditHead {
        seq: 0,
        hash: GENESIS.to_vec(),
        max_seq: 0,
        anchor: Checkpoint::genesis(),
    };
    assert_eq!(s.audit_head().await.unwrap(), empty);
    assert_eq!(s.seal_audit(100).await.unwrap(), 0);
    assert_eq!(s.audit_head().await.unwrap(), empty);
    assert_eq!(s.audit_chain(0, 100, 100).await.unwrap(), vec![]);
    assert_eq!(query(s, AuditFilter::default()).await, vec![]);
    assert_eq!(verify(s, None).await, Vec::<String>::new());
    assert_eq!(s.last_revocation_seq().await.unwrap(), 0);
    assert_eq!(s.revocations_after(0, 100).await.unwrap(), vec![]);
}

/// Seals what arrived unsealed, as every broker does continuously: PostgreSQL's
/// one-statement token write leaves its event to the sealer (until the mint
/// path writes its events through the sealed write); every other write seals
/// its own as it commits.
async fn sealer<S: Store>(s: &S) {
    while s.seal_audit(3).await.unwrap() > 0 {}
}

pub async fn sealing_chains_committed_events_in_order_and_the_chain_verifies<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tok = mint(s, &t, 10).await;
    sealer(s).await;
    let d = delegate(s, &tok, &[], SUB, 20).await;
    redeem_ok(s, &d, 21).await;
    sealer(s).await;
    let a = request(s, approval(&t, delete_scope(), 30)).await;
    decide_ok(s, &a, true, 31).await;
    freeze(s, FreezeTarget::Agent(agent_id(AGENT2)), 40).await;
    unfreeze(s, &FreezeTarget::Agent(agent_id(AGENT2)), 41).await;
    revoke_ok(s, Target::Token(tok.jti), 50).await;
    complete(s, &t, 60).await;
    append(s, &refusal(AGENT, 70)).await;
    let committed = [
        Action::TaskOpened,
        Action::TokenMinted,
        Action::DelegationOffered,
        Action::TokenMinted,
        Action::ApprovalRequested,
        Action::ApprovalGranted,
        Action::IssuanceFrozen,
        Action::IssuanceUnfrozen,
        Action::Revocation,
        Action::TaskCompleted,
        Action::Revocation,
        Action::CallDenied,
    ]
    .map(|a| a.as_str().to_string());

    sealer(s).await;
    let head = s.audit_head().await.unwrap();
    assert_eq!(head.seq, committed.len() as u64);
    assert_eq!(
        verify(s, None).await,
        committed,
        "sealed out of commit order"
    );

    // Sealing more extends the chain without rewriting what was sealed.
    let later = open(s, task(AGENT2, 100, 600)).await;
    mint(s, &later, 110).await;
    sealer(s).await;
    let actions = verify(s, Some(&head)).await;
    assert_eq!(actions.len(), committed.len() + 2);
    let chain = s.audit_chain(0, head.seq, 1000).await.unwrap();
    assert_eq!(chain.last().unwrap().hash, head.hash);
}

/// Without a sealer: each write's events are in the chain when it returns, in
/// commit order, and the chain verifies. (Mints are left out: PostgreSQL's
/// one-statement token write leaves its event to the sealer for now.)
pub async fn events_are_in_the_chain_as_their_writes_commit<S: Store>(s: &S) {
    let head = || async { s.audit_head().await.unwrap().seq };
    let t = open(s, task(AGENT, 0, 600)).await;
    assert_eq!(head().await, 1);
    let a = request(s, approval(&t, delete_scope(), 10)).await;
    assert_eq!(head().await, 2);
    decide_ok(s, &a, false, 11).await;
    assert_eq!(head().await, 3);
    freeze(s, FreezeTarget::Workflow("billing".into()), 20).await;
    unfreeze(s, &FreezeTarget::Workflow("billing".into()), 21).await;
    assert_eq!(head().await, 5);
    revoke_ok(s, Target::Agent(agent_id(AGENT)), 30).await;
    let other = open(s, task(AGENT2, 40, 600)).await;
    complete(s, &other, 50).await;
    append(s, &refusal(AGENT2, 60)).await;
    let committed = [
        Action::TaskOpened,
        Action::ApprovalRequested,
        Action::ApprovalRejected,
        Action::IssuanceFrozen,
        Action::IssuanceUnfrozen,
        Action::TaskRevoked,
        Action::Revocation,
        Action::TaskOpened,
        Action::TaskCompleted,
        Action::Revocation,
        Action::CallDenied,
    ]
    .map(|a| a.as_str().to_string());
    assert_eq!(verify(s, None).await, committed);
    assert_eq!(
        query(s, AuditFilter::default()).await.len(),
        committed.len()
    );
    assert_eq!(s.seal_audit(100).await.unwrap(), 0, "none left unsealed");
}

pub async fn audit_chain_reads_a_window_of_positions<S: Store>(s: &S) {
    for secs in 0..6 {
        append(s, &refusal(AGENT, secs)).await;
    }
    sealed(s).await;
    let full = s.audit_chain(0, 6, 100).await.unwrap();
    let seqs =
        |v: &[mayfly::domain::audit::chain::Sealed]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&full), [1, 2, 3, 4, 5, 6]);

    assert_eq!(s.audit_chain(2, 6, 2).await.unwrap(), full[2..4]);
    assert_eq!(s.audit_chain(2, 4, 100).await.unwrap(), full[2..4]);
    assert_eq!(s.audit_chain(6, 6, 100).await.unwrap(), vec![]);
    assert_eq!(full[3].at_micros, at(3).unix_timestamp() * 1_000_000);
    assert_eq!(full[3].actor, AGENT);
    assert_eq!(full[3].action, Action::CallDenied.as_str());
    assert_eq!(full[3].outcome, Action::CallDenied.outcome());
}

pub async fn an_appended_event_reads_back_unchanged<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let rich = AuditEvent::new(at(10), AGENT, Action::MisuseReported)
        .task(t.id)
        .agent(AGENT)
        .jti(Uuid::new_v4())
        .reason("token replayed by another certificate — «東京» \"quoted\"\nnext line")
        .detail(json!({
            "presented_by": "x5t#S256:AbC-_",
            "n": 42,
            "ratio": 0.5,
            "nested": {"list": [1, "two", null, true], "empty": {}},
        }));
    // A refusal is filed under the task it names, even one that does not exist
    // (a revocation of an unknown task).
    let dangling = AuditEvent::new(at(11), ADMIN, Action::RevocationDenied)
        .task(TaskId::new())
        .reason("task not found");
    let bare = AuditEvent::new(at(12), "mayfly", Action::CallDenied);
    for e in [&rich, &dangling, &bare] {
        append(s, e).await;
    }

    assert_eq!(
        s.audit_for_task(t.id).await.unwrap(),
        vec![opened(&t), rich.clone()],
        "as committed"
    );
    let events = events_of(sealed(s).await);
    assert_eq!(events, vec![opened(&t), rich.clone(), dangling, bare]);
    assert_eq!(
        s.audit_for_task(t.id).await.unwrap(),
        vec![opened(&t), rich]
    );
    verify(s, None).await;
}

pub async fn audit_for_task_lists_a_tasks_events_oldest_first<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let other = open(s, task(AGENT2, 0, 600)).await;
    let tok1 = mint(s, &t, 10).await;
    mint(s, &other, 11).await;
    s.seal_audit(3).await.unwrap();
    let tok2 = mint(s, &t, 12).await;
    let want = vec![opened(&t), minted(&tok1), minted(&tok2)];

    assert_eq!(
        s.audit_for_task(t.id).await.unwrap(),
        want,
        "before the sealer sealed what arrived unsealed"
    );
    sealed(s).await;
    assert_eq!(s.audit_for_task(t.id).await.unwrap(), want, "sealed");
    assert_eq!(s.audit_for_task(TaskId::new()).await.unwrap(), vec![]);
}

pub async fn query_audit_finds_an_agents_events_as_actor_or_subject<S: Store>(s: &S) {
    let by_agent = refusal(AGENT, 1);
    let about_agent = refusal(ORCH, 2).agent(AGENT);
    let others = [refusal(ADMIN, 3).agent(AGENT2), refusal(AGENT2, 4)];
    for e in [&by_agent, &about_agent, &others[0], &others[1]] {
        append(s, e).await;
    }
    sealed(s).await;

    let agent = |a: &str| AuditFilter {
        agent: Some(agent_id(a)),
        ..Default::default()
    };
    let found = query(s, agent(AGENT)).await;
    assert_eq!(found, vec![(1, by_agent), (2, about_agent)]);
    assert_eq!(events_of(query(s, agent(AGENT2)).await), others);
    assert_eq!(query(s, agent(SUB)).await, vec![]);
}

pub async fn query_audit_filters_by_task_action_and_time<S: Store>(s: &S) {
    let t1 = open(s, task(AGENT, -100, 600)).await;
    let t2 = open(s, task(AGENT, -100, 600)).await;
    let tok1 = mint(s, &t1, 2).await;
    let tok2 = mint(s, &t2, 4).await;
    let tok3 = mint(s, &t1, 6).await;
    sealed(s).await;
    let q = |task: Option<&Task>,
             action: Option<Action>,
             since: Option<i64>,
             until: Option<i64>| AuditFilter {
        task: task.map(|t| t.id),
        action: action.map(|a| a.as_str().into()),
        since: since.map(at),
        until: until.map(at),
        ..Default::default()
    };

    assert_eq!(
        events_of(query(s, q(Some(&t1), None, None, None)).await),
        vec![opened(&t1), minted(&tok1), minted(&tok3)]
    );
    assert_eq!(
        events_of(query(s, q(None, Some(Action::TokenMinted), None, None)).await),
        vec![minted(&tok1), minted(&tok2), minted(&tok3)]
    );
    assert_eq!(
        events_of(query(s, q(None, None, Some(1), Some(5))).await),
        vec![minted(&tok1), minted(&tok2)]
    );
    assert_eq!(
        events_of(query(s, q(Some(&t1), Some(Action::TokenMinted), Some(3), None)).await),
        vec![minted(&tok3)]
    );
    let none = q(Some(&t2), Some(Action::TaskCompleted), None, None);
    assert_eq!(query(s, none).await, vec![]);
}

pub async fn query_audit_pages_after_a_position<S: Store>(s: &S) {
    let events: Vec<AuditEvent> = (0..5).map(|secs| refusal(AGENT, secs)).collect();
    for e in &events {
        append(s, e).await;
    }
    // Sealed as appended: in the chain, with no sealer run.
    assert_eq!(query(s, AuditFilter::default()).await.len(), 5);

    let page = |after, limit| AuditFilter {
        after,
        limit,
        ..Default::default()
    };
    let found = s.query_audit(&page(2, 2)).await.unwrap();
    assert_eq!(found, vec![(3, events[2].clone()), (4, events[3].clone())]);
    let rest = s.query_audit(&page(4, 10)).await.unwrap();
    assert_eq!(rest, vec![(5, events[4].clone())]);
    assert_eq!(s.query_audit(&page(5, 10)).await.unwrap(), vec![]);
}

pub async fn token_access_counts_tokens_per_agent_and_resource<S: Store>(s: &S) {
    let mine = open(s, task(AGENT, 0, 600)).await;
    let theirs = open(s, task(AGENT2, 0, 600)).await;
    let eu1 = read_scope();
    let eu2 = mayfly::domain::Scope::requested("crm-api", "customers/eu/2", "read").unwrap();
    let billing = mayfly::domain::Scope::requested("billing-api", "invoices/7", "read").unwrap();
    for (t, scope, secs) in [
        (&mine, &eu1, 10),
        (&mine, &eu1, 20),
        (&mine, &eu2, 30),
        (&theirs, &eu1, 15),
        (&mine, &billing, 25),
    ] {
        let tok = token_for(t, scope.clone(), secs);
        assert_eq!(
            s.insert_token(&tok, BUDGET, &minted(&tok)).await.unwrap(),
            Ok(())
        );
        if secs == 20 {
            // Revoked later, it was still held: it counts.
            revoke_ok(s, Target::Token(tok.jti), 21).await;
        }
    }
    let access = |agent: &str, resource: &str, tokens, first, last| Access {
        agent: agent_id(agent),
        resource: resource.into(),
        tokens,
        first: at(first),
        last: at(last),
    };

    // Ordered by agent, then resource: the broker folds consecutive rows per agent.
    assert_eq!(
        s.token_access("crm-api", None, None).await.unwrap(),
        vec![
            access(AGENT, "customers/eu/1", 2, 10, 20),
            access(AGENT, "customers/eu/2", 1, 30, 30),
            access(AGENT2, "customers/eu/1", 1, 15, 15),
        ]
    );
    assert_eq!(
        s.token_access("crm-api", Some(at(12)), Some(at(25)))
            .await
            .unwrap(),
        vec![
            access(AGENT, "customers/eu/1", 1, 20, 20),
            access(AGENT2, "customers/eu/1", 1, 15, 15),
        ]
    );
    assert_eq!(s.token_access("hr-api", None, None).await.unwrap(), vec![]);
}
