//! Step-up approvals: the one standing approval per request, listing, the race
//! of deciders, spending on exactly one token, and counting refused repeats.
use super::fixtures::*;
use mayfly::domain::audit::{Action, AuditEvent};
use mayfly::domain::*;
use mayfly::domain::{Scope, Task, TaskId};
use mayfly::store::*;
use uuid::Uuid;

/// Deleting customer `n`: a distinct step-up scope per approval.
fn delete(n: u32) -> Scope {
    Scope::requested("crm-api", format!("customers/eu/{n}"), "delete").unwrap()
}

async fn spend<S: Store>(s: &S, a: &Approval, tok: &TokenRecord, budget: u32) -> Spend {
    s.spend_approval(a.id, tok, budget, &spent(tok, a))
        .await
        .unwrap()
}

/// Spending `a` on `tok` gives `want` and writes nothing: no token, no count
/// against the budget, no audit event, the approval as it was.
async fn assert_not_spent<S: Store>(
    s: &S,
    a: &Approval,
    tok: &TokenRecord,
    budget: u32,
    want: Spend,
) {
    let task = s.get_task(tok.task).await.unwrap();
    let approval = s.get_approval(a.id).await.unwrap();
    let events = s.audit_for_task(tok.task).await.unwrap().len();
    assert_eq!(spend(s, a, tok, budget).await, want);
    assert_eq!(s.get_token(tok.jti).await.unwrap(), None, "token written");
    assert_eq!(
        s.get_task(tok.task).await.unwrap(),
        task,
        "the task changed"
    );
    assert_eq!(s.get_approval(a.id).await.unwrap(), approval);
    assert_eq!(s.audit_for_task(tok.task).await.unwrap().len(), events);
}

async fn standing<S: Store>(s: &S, t: &Task, scope: &Scope, secs: i64) -> Option<Approval> {
    s.standing_approval(t.id, &t.agent, scope, at(secs))
        .await
        .unwrap()
}

fn decisions_of(events: &[AuditEvent], a: &Approval) -> usize {
    events
        .iter()
        .filter(|e| matches!(e.action, Action::ApprovalGranted | Action::ApprovalRejected))
        .filter(|e| e.detail["approval"] == serde_json::json!(a.id))
        .count()
}

pub async fn an_approval_reads_back_as_pending_with_its_audit_event<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let a = approval(&t, delete_scope(), 10);

    assert!(s.insert_approval(&a, &requested(&a)).await.unwrap());
    assert_eq!(s.get_approval(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(standing(s, &t, &a.scope, 11).await, Some(a.clone()));
    assert_recorded(&s.audit_for_task(t.id).await.unwrap(), &requested(&a));
    assert_eq!(s.get_approval(Uuid::new_v4()).await.unwrap(), None);
}

pub async fn a_request_meets_the_approval_standing_for_its_task_requester_and_scope<S: Store>(
    s: &S,
) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let other = open(s, task(AGENT, 0, 600)).await;
    let a = request(s, approval(&t, delete(1), 10)).await;
    let events = s.audit_for_task(t.id).await.unwrap().len();

    let again = approval(&t, delete(1), 20);
    assert!(!s.insert_approval(&again, &requested(&again)).await.unwrap());
    assert_eq!(s.get_approval(again.id).await.unwrap(), None);
    assert_eq!(s.audit_for_task(t.id).await.unwrap().len(), events);
    assert_eq!(standing(s, &t, &delete(1), 20).await, Some(a));

    assert_eq!(standing(s, &t, &delete(2), 20).await, None, "another scope");
    assert_eq!(
        standing(s, &other, &delete(1), 20).await,
        None,
        "another task"
    );
    let by_other = s
        .standing_approval(t.id, &agent_id(AGENT2), &delete(1), at(20))
        .await
        .unwrap();
    assert_eq!(by_other, None, "another requester");
    request(s, approval(&t, delete(2), 20)).await;
    request(s, approval(&other, delete(1), 20)).await;
}

pub async fn a_denied_approval_keeps_standing_after_its_deadline<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 3600)).await;
    let a = request(s, approval(&t, delete(1), 10)).await;
    let denied = decide_ok(s, &a, false, 20).await;
    assert!(a.expires_at < at(1000));

    assert_eq!(standing(s, &t, &a.scope, 1000).await, Some(denied));
    let again = approval(&t, delete(1), 1000);
    assert!(
        !s.insert_approval(&again, &requested(&again)).await.unwrap(),
        "asking again reopened a denied request"
    );
}

pub async fn a_lapsed_or_spent_approval_no_longer_stands<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 3600)).await;
    let lapsing = request(s, approval(&t, delete(1), 10)).await;
    let lapses = (lapsing.expires_at - at(0)).whole_seconds();
    assert_eq!(standing(s, &t, &delete(1), lapses - 1).await, Some(lapsing));
    assert_eq!(standing(s, &t, &delete(1), lapses).await, None);
    request(s, approval(&t, delete(1), lapses)).await;

    let a = request(s, approval(&t, delete(2), 20)).await;
    let approved = decide_ok(s, &a, true, 30).await;
    assert_eq!(standing(s, &t, &delete(2), 40).await, Some(approved));
    let tok = token_for(&t, delete(2), 40);
    assert_eq!(spend(s, &a, &tok, BUDGET).await, Spend::Spent);
    assert_eq!(standing(s, &t, &delete(2), 50).await, None);
    request(s, approval(&t, delete(2), 50)).await;
}

pub async fn list_approvals_is_newest_first_and_pending_at_excludes_closed_ones<S: Store>(s: &S) {
    let t1 = open(s, task(AGENT, 0, 600)).await;
    let t2 = open(s, task(AGENT2, 0, 600)).await;
    let a = request(s, approval(&t1, delete(1), 10)).await;
    let d = request(s, approval(&t2, delete(1), 15)).await;
    let b = request(s, approval(&t1, delete(2), 20)).await;
    let b = decide_ok(s, &b, true, 25).await;
    let lapsing = Approval {
        expires_at: at(40),
        ..approval(&t1, delete(3), 30)
    };
    let c = request(s, lapsing).await;
    complete(s, &t2, 50).await;

    let list = |task: Option<TaskId>, pending_at: Option<i64>, limit| async move {
        let f = ApprovalFilter {
            task,
            pending_at: pending_at.map(at),
            limit,
        };
        s.list_approvals(&f).await.unwrap()
    };
    let ids = |v: Vec<Approval>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(ids(list(None, None, 100).await), [c.id, b.id, d.id, a.id]);
    assert_eq!(ids(list(Some(t1.id), None, 100).await), [c.id, b.id, a.id]);
    assert_eq!(
        ids(list(None, Some(35), 100).await),
        [c.id, a.id],
        "decided, or of an ended task"
    );
    assert_eq!(ids(list(None, Some(100), 100).await), [a.id], "lapsed");
    assert_eq!(
        ids(list(Some(t2.id), Some(35), 100).await),
        Vec::<Uuid>::new()
    );
    assert_eq!(ids(list(None, None, 2).await), [c.id, b.id]);
    assert_eq!(list(Some(t1.id), None, 100).await[1], b, "as stored");
}

pub async fn deciding_a_pending_approval_records_the_decision_and_its_audit_event<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    for (n, approve) in [(1, true), (2, false)] {
        let a = request(s, approval(&t, delete(n), 10)).await;
        let decided = Approval {
            state: if approve {
                ApprovalState::Approved
            } else {
                ApprovalState::Denied
            },
            decided_by: Some(agent_id(ADMIN)),
            decided_at: Some(at(20)),
            decision_reason: Some(decision_reason(approve).into()),
            ..a.clone()
        };

        assert_eq!(
            decide(s, &a, approve, ADMIN, 20).await,
            Decide::Decided(decided.clone())
        );
        assert_eq!(s.get_approval(a.id).await.unwrap(), Some(decided));
        let events = s.audit_for_task(t.id).await.unwrap();
        assert_recorded(&events, &decision(&a, approve, ADMIN, 20));
        assert_eq!(decisions_of(&events, &a), 1);
    }
}

pub async fn a_decided_or_lapsed_approval_is_not_pending_and_an_unknown_one_not_found<S: Store>(
    s: &S,
) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let a = request(s, approval(&t, delete(1), 10)).await;
    let approved = decide_ok(s, &a, true, 20).await;
    let lapsing = request(s, approval(&t, delete(2), 30)).await;
    let ghost = approval(&t, delete(3), 30);
    let events = s.audit_for_task(t.id).await.unwrap().len();

    assert_eq!(
        decide(s, &a, false, ADMIN2, 40).await,
        Decide::NotPending(approved.clone()),
        "a second decider overturned the first"
    );
    let lapses = (lapsing.expires_at - at(0)).whole_seconds();
    let Decide::NotPending(lapsed) = decide(s, &lapsing, true, ADMIN, lapses).await else {
        panic!("a lapsed approval was decided");
    };
    assert_eq!(lapsed.state_at(at(lapses)), ApprovalState::Expired);
    assert_eq!(lapsed.decided_by, None);
    assert_eq!(decide(s, &ghost, true, ADMIN, 40).await, Decide::NotFound);

    assert_eq!(s.get_approval(a.id).await.unwrap(), Some(approved));
    assert_eq!(s.audit_for_task(t.id).await.unwrap().len(), events);
}

pub async fn two_concurrent_deciders_yield_exactly_one_decision<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    for n in 0..5 {
        let a = request(s, approval(&t, delete(n), 10)).await;

        let (r1, r2) = tokio::join!(
            decide(s, &a, true, ADMIN, 20),
            decide(s, &a, false, ADMIN2, 20)
        );

        let (winner, loser) = match (r1, r2) {
            (Decide::Decided(w), other) | (other, Decide::Decided(w)) => (w, other),
            (r1, r2) => panic!("nobody decided: {r1:?}, {r2:?}"),
        };
        assert_eq!(loser, Decide::NotPending(winner.clone()), "both decided");
        assert_eq!(s.get_approval(a.id).await.unwrap(), Some(winner));
        let events = s.audit_for_task(t.id).await.unwrap();
        assert_eq!(decisions_of(&events, &a), 1, "approval {n}");
    }
}

pub async fn an_approved_approval_is_spent_on_one_token_only<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let a = request(s, approval(&t, delete_scope(), 10)).await;
    let approved = decide_ok(s, &a, true, 20).await;
    let tok = token_for(&t, delete_scope(), 30);

    assert_eq!(spend(s, &a, &tok, BUDGET).await, Spend::Spent);

    let used = Approval {
        state: ApprovalState::Used,
        used_jti: Some(tok.jti),
        ..approved
    };
    assert_eq!(s.get_approval(a.id).await.unwrap(), Some(used.clone()));
    assert_eq!(s.get_token(tok.jti).await.unwrap(), Some(tok.clone()));
    assert_eq!(reread(s, &t).await.tokens_minted, 1);
    assert_recorded(&s.audit_for_task(t.id).await.unwrap(), &spent(&tok, &a));

    let second = token_for(&t, delete_scope(), 40);
    assert_not_spent(s, &a, &second, BUDGET, Spend::NotApproved(Box::new(used))).await;
}

pub async fn a_pending_denied_or_lapsed_approval_cannot_be_spent<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    let pending = request(s, approval(&t, delete(1), 10)).await;
    let denied = request(s, approval(&t, delete(2), 11)).await;
    let denied = decide_ok(s, &denied, false, 12).await;
    let lapsing = request(s, approval(&t, delete(3), 13)).await;
    let approved = decide_ok(s, &lapsing, true, 14).await;
    let lapses = (approved.expires_at - at(0)).whole_seconds();

    for (a, secs) in [(pending, 20), (denied, 20), (approved, lapses)] {
        let tok = token_for(&t, a.scope.clone(), secs);
        assert_not_spent(s, &a, &tok, BUDGET, Spend::NotApproved(Box::new(a.clone()))).await;
    }
    assert_eq!(reread(s, &t).await.tokens_minted, 0);
}

pub async fn spending_is_refused_when_the_task_refuses_the_token<S: Store>(s: &S) {
    let ended = open(s, task(AGENT, 0, 600)).await;
    let a = request(s, approval(&ended, delete(1), 10)).await;
    let a = decide_ok(s, &a, true, 20).await;
    complete(s, &ended, 30).await;
    let tok = token_for(&ended, delete(1), 40);
    let refused = Spend::Refused(Refusal::NotActive(TaskState::Completed));
    assert_not_spent(s, &a, &tok, BUDGET, refused).await;

    let t = open(s, task(AGENT2, 0, 600)).await;
    mint(s, &t, 5).await;
    let b = request(s, approval(&t, delete(1), 10)).await;
    let b = decide_ok(s, &b, true, 20).await;
    let tok = token_for(&t, delete(1), 30);
    assert_not_spent(s, &b, &tok, 1, Spend::Refused(Refusal::OutOfBudget)).await;

    let target = FreezeTarget::Agent(agent_id(AGENT2));
    freeze(s, target.clone(), 35).await;
    let tok = token_for(&t, delete(1), 40);
    assert_not_spent(s, &b, &tok, BUDGET, Spend::Refused(Refusal::Frozen)).await;
    unfreeze(s, &target, 45).await.expect("frozen");

    let tok = token_for(&t, delete(1), 50);
    assert_eq!(spend(s, &b, &tok, 2).await, Spend::Spent);
}

pub async fn refused_step_ups_are_counted_only_while_pending_or_denied<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 3600)).await;
    let count = |a: Approval, secs| async move {
        s.count_step_up_refusal(a.task, a.id, at(secs), &refused_step_up(&a, secs))
            .await
            .unwrap()
    };
    let pending = request(s, approval(&t, delete(1), 10)).await;
    assert_eq!(count(pending.clone(), 20).await, Some(1));
    assert_eq!(count(pending.clone(), 21).await, Some(2));
    assert_recorded(
        &s.audit_for_task(t.id).await.unwrap(),
        &refused_step_up(&pending, 20),
    );

    decide_ok(s, &pending, true, 30).await;
    let lapsing = request(s, approval(&t, delete(2), 40)).await;
    let lapses = (lapsing.expires_at - at(0)).whole_seconds();
    let events = s.audit_for_task(t.id).await.unwrap().len();
    assert_eq!(count(pending.clone(), 31).await, None, "approved meanwhile");
    assert_eq!(count(lapsing.clone(), lapses).await, None, "lapsed");
    assert_eq!(s.audit_for_task(t.id).await.unwrap().len(), events);

    let denied = request(s, approval(&t, delete(3), 50)).await;
    decide_ok(s, &denied, false, 60).await;
    assert_eq!(count(denied, 2000).await, Some(3), "a denial stands");
}

pub async fn two_concurrent_requests_open_one_approval<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    for n in 0..5 {
        let (a1, a2) = (approval(&t, delete(n), 10), approval(&t, delete(n), 10));
        let (e1, e2) = (requested(&a1), requested(&a2));

        let (r1, r2) = tokio::join!(s.insert_approval(&a1, &e1), s.insert_approval(&a2, &e2));

        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert!(r1 != r2, "request {n}: both opened: {r1}");
        let stored = [
            s.get_approval(a1.id).await.unwrap(),
            s.get_approval(a2.id).await.unwrap(),
        ];
        assert_eq!(stored.iter().flatten().count(), 1, "request {n}");
        let events = s.audit_for_task(t.id).await.unwrap();
        assert_eq!(count(&events, Action::ApprovalRequested), n as usize + 1);
    }
}

pub async fn two_concurrent_spends_of_one_approval_mint_one_token<S: Store>(s: &S) {
    let t = open(s, task(AGENT, 0, 600)).await;
    for n in 0..5 {
        let a = request(s, approval(&t, delete(n), 10)).await;
        decide_ok(s, &a, true, 20).await;
        let (tok1, tok2) = (token_for(&t, delete(n), 30), token_for(&t, delete(n), 30));
        let minted_before = reread(s, &t).await.tokens_minted;

        let (r1, r2) = tokio::join!(spend(s, &a, &tok1, BUDGET), spend(s, &a, &tok2, BUDGET));

        let spent = [&r1, &r2].iter().filter(|r| ***r == Spend::Spent).count();
        assert_eq!(spent, 1, "approval {n}: {r1:?}, {r2:?}");
        assert!(matches!(
            (&r1, &r2),
            (Spend::NotApproved(_), _) | (_, Spend::NotApproved(_))
        ));
        let stored = [
            s.get_token(tok1.jti).await.unwrap(),
            s.get_token(tok2.jti).await.unwrap(),
        ];
        assert_eq!(stored.iter().flatten().count(), 1, "approval {n}");
        assert_eq!(reread(s, &t).await.tokens_minted, minted_before + 1);
    }
}
