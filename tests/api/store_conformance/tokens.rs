//! Tokens: the budgeted, freeze-aware insert, reading back, status (through the
//! delegation chain) and listing.
use super::fixtures::*;
use mayfly::domain::Target;
use mayfly::domain::TaskState;
use mayfly::domain::*;
use mayfly::store::*;
use std::collections::BTreeSet;
use uuid::Uuid;

pub async fn an_accepted_token_reads_back_and_counts_against_the_budget<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tok = token(&t, 10);

    assert_eq!(
        s.insert_token(&tok, 5, &minted(&tok)).await.unwrap(),
        Ok(())
    );
    assert_eq!(s.get_token(tok.jti).await.unwrap(), Some(tok.clone()));
    assert_eq!(reread(s, &t).await.tokens_minted, 1);
    assert_eq!(
        s.token_status(tok.jti).await.unwrap(),
        Some(TokenStatus {
            revoked: false,
            task_state: TaskState::Active
        })
    );
    assert_eq!(
        s.audit_for_task(t.id).await.unwrap(),
        vec![opened(&t), minted(&tok)]
    );
    assert_eq!(s.get_token(Uuid::new_v4()).await.unwrap(), None);
}

pub async fn a_token_for_a_task_that_is_not_active_is_refused<S: Store>(s: &S) {
    let completed = open(s, task(AGENT, 0, 600)).await;
    complete(s, &completed, 10).await;
    assert_refused(
        s,
        &token(&completed, 20),
        BUDGET,
        Refusal::NotActive(TaskState::Completed),
    )
    .await;

    let revoked = open(s, task(AGENT, 0, 600)).await;
    revoke_ok(s, Target::Task(revoked.id), 10).await;
    assert_refused(
        s,
        &token(&revoked, 20),
        BUDGET,
        Refusal::NotActive(TaskState::Revoked),
    )
    .await;

    let ghost = task(AGENT, 0, 600);
    assert_refused(s, &token(&ghost, 20), BUDGET, Refusal::NoTask).await;
}

pub async fn a_token_for_another_agents_task_is_refused<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let theirs = TokenRecord {
        agent: agent_id(AGENT2),
        ..token(&t, 10)
    };
    assert_refused(s, &theirs, BUDGET, Refusal::NotOwner).await;
    mint(s, &t, 20).await;
}

pub async fn a_token_at_or_past_the_task_deadline_is_refused<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    assert_refused(s, &token(&t, 600), BUDGET, Refusal::PastDeadline).await;
    assert_refused(s, &token(&t, 700), BUDGET, Refusal::PastDeadline).await;
    mint(s, &t, 599).await;
}

pub async fn a_token_beyond_the_budget_is_refused<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    for secs in [10, 20] {
        let tok = token(&t, secs);
        assert_eq!(
            s.insert_token(&tok, 2, &minted(&tok)).await.unwrap(),
            Ok(())
        );
    }
    assert_refused(s, &token(&t, 30), 2, Refusal::OutOfBudget).await;
    assert_eq!(reread(s, &t).await.tokens_minted, 2);
    assert_refused(s, &token(&t, 30), 0, Refusal::OutOfBudget).await;
    // A larger budget (a policy reload) lets the task go on.
    let tok = token(&t, 40);
    assert_eq!(
        s.insert_token(&tok, 3, &minted(&tok)).await.unwrap(),
        Ok(())
    );
    assert_eq!(reread(s, &t).await.tokens_minted, 3);
}

pub async fn a_freeze_of_the_agent_stops_its_tokens_until_lifted<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let other = open(s, task(AGENT2, 0, 600)).await;
    let target = FreezeTarget::Agent(agent_id(AGENT));
    freeze(s, target.clone(), 10).await;

    assert_refused(s, &token(&t, 20), BUDGET, Refusal::Frozen).await;
    mint(s, &other, 20).await;

    unfreeze(s, &target, 30).await.expect("frozen");
    mint(s, &t, 40).await;
}

pub async fn a_freeze_of_the_workflow_stops_its_tokens<S: Store>(s: &S) {
    let support = open(s, task_in(AGENT, WORKFLOW, 0, 600)).await;
    let billing = open(s, task_in(AGENT, OTHER_WORKFLOW, 0, 600)).await;
    freeze(s, FreezeTarget::Workflow(WORKFLOW.into()), 10).await;

    assert_refused(s, &token(&support, 20), BUDGET, Refusal::Frozen).await;
    mint(s, &billing, 20).await;
}

pub async fn a_freeze_of_all_issuance_stops_every_token<S: Store>(s: &S) {
    let t1 = open(s, task_in(AGENT, WORKFLOW, 0, 600)).await;
    let t2 = open(s, task_in(AGENT2, OTHER_WORKFLOW, 0, 600)).await;
    freeze(s, FreezeTarget::All, 10).await;

    assert_refused(s, &token(&t1, 20), BUDGET, Refusal::Frozen).await;
    assert_refused(s, &token(&t2, 20), BUDGET, Refusal::Frozen).await;

    unfreeze(s, &FreezeTarget::All, 30).await.expect("frozen");
    mint(s, &t2, 40).await;
}

pub async fn token_status_follows_revocation_and_the_task_state<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let revoked = mint(s, &t, 10).await;
    let live = mint(s, &t, 20).await;
    let status = |revoked, task_state| {
        Some(TokenStatus {
            revoked,
            task_state,
        })
    };

    revoke_ok(s, Target::Token(revoked.jti), 30).await;
    assert_eq!(
        s.token_status(revoked.jti).await.unwrap(),
        status(true, TaskState::Active)
    );
    assert_eq!(
        s.token_status(live.jti).await.unwrap(),
        status(false, TaskState::Active)
    );

    let deviated = open(s, task(AGENT, 0, 600)).await;
    let tok = mint(s, &deviated, 10).await;
    end(s, &deviated, TaskState::Deviated, 40).await;
    assert_eq!(
        s.token_status(tok.jti).await.unwrap(),
        status(true, TaskState::Deviated)
    );
    assert_eq!(s.token_status(Uuid::new_v4()).await.unwrap(), None);
}

/// A delegated token recorded after its parent was revoked (as a redemption racing
/// the revocation might be) is not marked itself, yet reads as revoked: the
/// status looks up the whole chain.
pub async fn a_token_whose_ancestor_is_revoked_reads_as_revoked<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let root = mint(s, &t, 10).await;
    let offer = delegate(s, &root, &[], SUB, 20).await;
    let middle = redeem_ok(s, &offer, 25).await;
    revoke_ok(s, Target::Token(root.jti), 30).await;

    // Recorded directly: `insert_token` checks the task, not the chain.
    let late = TokenRecord {
        parent: Some(middle.jti),
        depth: 2,
        ..token(&t, 40)
    };
    assert_eq!(
        s.insert_token(&late, BUDGET, &minted(&late)).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        s.get_token(late.jti).await.unwrap().unwrap().revoked_at,
        None
    );

    let status = s.token_status(late.jti).await.unwrap().unwrap();
    assert!(status.revoked, "a token under a revoked ancestor is live");
    assert_eq!(status.task_state, TaskState::Active);
}

pub async fn list_tokens_filters_by_task_agent_and_activity<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let live = mint(s, &t, 10).await;
    let expired = TokenRecord {
        expires_at: at(50),
        ..token(&t, 20)
    };
    assert_eq!(
        s.insert_token(&expired, BUDGET, &minted(&expired))
            .await
            .unwrap(),
        Ok(())
    );
    let revoked = mint(s, &t, 30).await;
    revoke_ok(s, Target::Token(revoked.jti), 35).await;
    let offer = delegate(s, &live, &[], SUB, 40).await;
    let delegated = redeem_ok(s, &offer, 45).await;
    let other = open(s, task(AGENT2, 0, 600)).await;
    let theirs = mint(s, &other, 15).await;

    let list = |task, agent: Option<&str>, active_at, limit| {
        let f = TokenFilter {
            task,
            agent: agent.map(agent_id),
            active_at,
            limit,
        };
        async move {
            let tokens = s.list_tokens(&f).await.unwrap();
            assert!(tokens.len() <= limit as usize, "longer than its limit");
            tokens.into_iter().map(|t| t.jti).collect::<BTreeSet<_>>()
        }
    };
    let set = |jtis: &[&TokenRecord]| jtis.iter().map(|t| t.jti).collect::<BTreeSet<_>>();
    let now = Some(at(100));

    assert_eq!(
        list(Some(t.id), None, None, 100).await,
        set(&[&live, &expired, &revoked, &delegated])
    );
    assert_eq!(
        list(None, Some(AGENT), None, 100).await,
        set(&[&live, &expired, &revoked])
    );
    assert_eq!(list(None, Some(SUB), None, 100).await, set(&[&delegated]));
    assert_eq!(
        list(None, None, now, 100).await,
        set(&[&live, &delegated, &theirs])
    );
    assert_eq!(list(Some(t.id), Some(AGENT), now, 100).await, set(&[&live]));
    assert_eq!(list(Some(other.id), Some(AGENT), None, 100).await, set(&[]));
    assert_eq!(list(None, None, None, 2).await.len(), 2);

    let f = TokenFilter {
        task: Some(other.id),
        agent: None,
        active_at: None,
        limit: 10,
    };
    assert_eq!(s.list_tokens(&f).await.unwrap(), vec![theirs], "as stored");
}

pub async fn concurrent_tokens_never_exceed_the_budget<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let tokens: Vec<TokenRecord> = (0..5).map(|i| token(&t, 10 + i)).collect();
    let audits: Vec<_> = tokens.iter().map(minted).collect();

    let accepted = futures::future::join_all(
        tokens
            .iter()
            .zip(&audits)
            .map(|(tok, a)| s.insert_token(tok, 2, a)),
    )
    .await;

    let recorded: Vec<Recorded> = accepted.into_iter().map(Result::unwrap).collect();
    // Every refusal is the budget's: none is mistaken for another reason.
    assert!(
        recorded
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(Refusal::OutOfBudget))),
        "{recorded:?}"
    );
    let accepted: Vec<bool> = recorded.iter().map(Result::is_ok).collect();
    assert_eq!(accepted.iter().filter(|a| **a).count(), 2, "{accepted:?}");
    assert_eq!(reread(s, &t).await.tokens_minted, 2);
    for (tok, ok) in tokens.iter().zip(&accepted) {
        let stored = s.get_token(tok.jti).await.unwrap().is_some();
        assert_eq!(
            stored, *ok,
            "token {} stored: {stored}, accepted: {ok}",
            tok.jti
        );
    }
}

/// A token written while its task ends: either the write found the task active
/// (and the ending revoked the token with the rest), or it found it ended and
/// says so with the state it found, writing nothing. Never a token that outlives
/// its task, never a refusal naming another reason.
pub async fn a_token_racing_the_end_of_its_task_is_refused_as_ended_or_revoked_with_it<S: Store>(
    s: &S,
) {
    for round in 0..8 {
        let t = open(s, task(AGENT, 0, 600)).await;
        let tok = token(&t, 10);
        let audit = minted(&tok);
        let (revocation, events) = ending(&t, TaskState::Completed, 10);
        let (written, ended) = tokio::join!(
            s.insert_token(&tok, BUDGET, &audit),
            s.end_task(t.id, TaskState::Completed, &revocation, &events),
        );
        assert!(
            matches!(ended.unwrap(), EndOutcome::Ended { .. }),
            "round {round}"
        );
        match written.unwrap() {
            Ok(()) => assert!(
                is_revoked(s, &tok).await,
                "round {round}: token outlived its task"
            ),
            Err(why) => {
                assert_eq!(
                    why,
                    Refusal::NotActive(TaskState::Completed),
                    "round {round}"
                );
                assert_eq!(s.get_token(tok.jti).await.unwrap(), None, "round {round}");
                assert_eq!(reread(s, &t).await.tokens_minted, 0, "round {round}");
            }
        }
    }
}
