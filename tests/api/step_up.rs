//! Step-up approval over the real server: a high-impact mint waits for a security
//! team's decision; one approval is good for one token; no retry until success.
use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::token_service_client::TokenServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const ADMIN2: &str = "spiffe://example.org/admin/s2";

/// A support task for AGENT that declares deleting ticket 4711 (a step-up action
/// in the test policies), and AGENT's token client.
async fn task_with_delete(app: &TestApp) -> (pb::Task, TokenServiceClient<Channel>) {
    let mut req = start_request(AGENT, 3600);
    req.scopes.push(scope("tickets", "tickets/4711", "delete"));
    let task = app.open_task_with(req).await;
    (task, app.tokens(AGENT).await.0)
}

async fn ask(
    agent: &mut TokenServiceClient<Channel>,
    task: &str,
) -> Result<pb::MintTokenResponse, tonic::Status> {
    agent
        .mint_token(ticket_delete_request(task))
        .await
        .map(|r| r.into_inner())
}

async fn await_approval(
    agent: &mut TokenServiceClient<Channel>,
    id: &str,
    wait: u32,
) -> pb::AwaitApprovalResponse {
    agent
        .await_approval(pb::AwaitApprovalRequest {
            approval_id: id.into(),
            wait_seconds: wait,
        })
        .await
        .expect("await approval")
        .into_inner()
}

async fn decide(
    app: &TestApp,
    who: &str,
    id: &str,
    decision: pb::Decision,
) -> Result<pb::Approval, tonic::Status> {
    app.admin(who)
        .await
        .decide_approval(pb::DecideApprovalRequest {
            approval_id: id.into(),
            decision: decision as i32,
            reason: format!("{who} checked the ticket"),
        })
        .await
        .map(|r| r.into_inner().approval.unwrap())
}

async fn approvals(app: &TestApp, task: &str, pending_only: bool) -> Vec<pb::Approval> {
    app.admin(ADMIN)
        .await
        .list_approvals(pb::ListApprovalsRequest {
            task_id: task.into(),
            pending_only,
            limit: 0,
        })
        .await
        .expect("list approvals")
        .into_inner()
        .approvals
}

fn pending(r: pb::MintTokenResponse) -> pb::Approval {
    assert!(
        r.token.is_empty() && r.jti.is_empty(),
        "no token before approval"
    );
    let a = r.approval.expect("a pending approval");
    assert_eq!(a.state, pb::ApprovalState::Pending as i32);
    a
}

fn delete_tokens(tokens: &[pb::TokenInfo]) -> usize {
    tokens
        .iter()
        .filter(|t| t.scope.as_ref().is_some_and(|s| s.action == "delete"))
        .count()
}

#[tokio::test]
async fn an_approved_request_yields_exactly_one_token_to_the_waiting_agent() {
    // No re-reading on a timer: only the decision's wake-up can deliver in time.
    let app = spawn_with(
        Arc::new(Pki::new()),
        Settings::new().watch_poll(Duration::from_secs(3600)),
    )
    .await;
    let (task, mut agent) = task_with_delete(&app).await;
    let a = pending(ask(&mut agent, &task.id).await.unwrap());
    // What the security team sees: what is asked, by whom, under which task.
    assert_eq!(a.requester, AGENT);
    assert_eq!(a.task_id, task.id);
    assert_eq!(a.objective, task.objective);
    assert_eq!(a.workflow, "support");
    assert_eq!(a.scope, Some(scope("tickets", "tickets/4711", "delete")));
    let listed = approvals(&app, "", true).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, a.id);

    // A zero wait answers at once: still pending.
    let now = await_approval(&mut agent, &a.id, 0).await;
    assert!(now.token.is_none());
    assert_eq!(
        now.approval.unwrap().state,
        pb::ApprovalState::Pending as i32
    );

    // The agent waits; the security team approves; the waiter gets its token.
    let mut waiter = agent.clone();
    let id = a.id.clone();
    let waiting = tokio::spawn(async move { await_approval(&mut waiter, &id, 30).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let decided = decide(&app, ADMIN, &a.id, pb::Decision::Approve)
        .await
        .unwrap();
    assert_eq!(decided.state, pb::ApprovalState::Approved as i32);
    assert_eq!(decided.decided_by, ADMIN);
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the decision wakes the waiter")
        .unwrap();
    let token = got.token.expect("the approved token");
    assert!(!token.token.is_empty());
    let spent = got.approval.unwrap();
    assert_eq!(spent.state, pb::ApprovalState::Used as i32);
    assert_eq!(spent.used_jti, token.jti);

    // Good for that one mint only.
    let again = await_approval(&mut agent, &a.id, 0).await;
    assert!(again.token.is_none());
    assert_eq!(
        again.approval.unwrap().state,
        pb::ApprovalState::Used as i32
    );
    let next = pending(ask(&mut agent, &task.id).await.unwrap());
    assert_ne!(next.id, a.id, "a second token needs a second approval");
    assert_eq!(delete_tokens(&app.task_tokens(&task.id).await), 1);

    // On record: the request, the decision with its reason, the token.
    let by_agent = app.audit_by(AGENT).await;
    assert!(by_agent.iter().any(|e| e.action == "approval_requested"
        && e.detail["approval"] == a.id.as_str()
        && e.detail["objective"] == task.objective.as_str()));
    assert!(by_agent.iter().any(|e| e.action == "token_minted"
        && e.detail["approval"] == a.id.as_str()
        && e.detail["approved_by"] == ADMIN));
    let by_admin = app.audit_by(ADMIN).await;
    assert!(by_admin.iter().any(|e| e.action == "approval_granted"
        && e.reason.as_deref() == Some("spiffe://example.org/admin/s1 checked the ticket")));
}

#[tokio::test]
async fn a_denied_request_yields_nothing_and_asking_again_does_not_reopen_it() {
    let app = spawn_app().await;
    let (task, mut agent) = task_with_delete(&app).await;
    let a = pending(ask(&mut agent, &task.id).await.unwrap());
    let denied = decide(&app, ADMIN, &a.id, pb::Decision::Deny)
        .await
        .unwrap();
    assert_eq!(denied.state, pb::ApprovalState::Denied as i32);
    let got = await_approval(&mut agent, &a.id, 5).await;
    assert!(got.token.is_none());
    assert_eq!(
        got.approval.unwrap().state,
        pb::ApprovalState::Denied as i32
    );

    let err = ask(&mut agent, &task.id).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("was denied by spiffe://example.org/admin/s1"),
        "{}",
        err.message()
    );
    assert_eq!(
        approvals(&app, &task.id, false).await.len(),
        1,
        "no new approval"
    );
    assert_eq!(delete_tokens(&app.task_tokens(&task.id).await), 0);
    // A decided approval cannot be decided again.
    let err = decide(&app, ADMIN2, &a.id, pb::Decision::Approve)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("already denied"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn an_approval_lapses_after_the_configured_time() {
    let app = spawn_app().await;
    let (task, mut agent) = task_with_delete(&app).await;
    let a = pending(ask(&mut agent, &task.id).await.unwrap());
    // The tests' broker keeps approvals for 15 minutes (the default).
    app.clock.advance(Duration::from_secs(15 * 60 + 1));
    let got = await_approval(&mut agent, &a.id, 5).await;
    assert!(got.token.is_none());
    assert_eq!(
        got.approval.unwrap().state,
        pb::ApprovalState::Expired as i32
    );
    let err = decide(&app, ADMIN, &a.id, pb::Decision::Approve)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("lapsed"), "{}", err.message());
    assert!(approvals(&app, &task.id, true).await.is_empty());
    // A lapsed request may be asked again: a fresh approval.
    let b = pending(ask(&mut agent, &task.id).await.unwrap());
    assert_ne!(a.id, b.id);
}

#[tokio::test]
async fn an_approved_but_unspent_approval_lapses_too() {
    let app = spawn_app().await;
    let (task, mut agent) = task_with_delete(&app).await;
    let a = pending(ask(&mut agent, &task.id).await.unwrap());
    decide(&app, ADMIN, &a.id, pb::Decision::Approve)
        .await
        .unwrap();
    app.clock.advance(Duration::from_secs(15 * 60 + 1));
    let got = await_approval(&mut agent, &a.id, 0).await;
    assert!(got.token.is_none());
    assert_eq!(
        got.approval.unwrap().state,
        pb::ApprovalState::Expired as i32
    );
    assert_eq!(delete_tokens(&app.task_tokens(&task.id).await), 0);
}

#[tokio::test]
async fn agents_never_decide_and_only_the_requester_waits() {
    let app = spawn_app().await;
    let (task, mut agent) = task_with_delete(&app).await;
    let a = pending(ask(&mut agent, &task.id).await.unwrap());
    // The requester (an agent) cannot reach the decision at all.
    let err = app
        .admin(AGENT)
        .await
        .decide_approval(pb::DecideApprovalRequest {
            approval_id: a.id.clone(),
            decision: pb::Decision::Approve as i32,
            reason: "I approve of myself".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("admin role"), "{}", err.message());
    // Another agent cannot wait for (and so spend) someone else's approval.
    let err = app
        .tokens(AGENT2)
        .await
        .0
        .await_approval(pb::AwaitApprovalRequest {
            approval_id: a.id.clone(),
            wait_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A decision needs a decision and a reason.
    let mut admin = app.admin(ADMIN).await;
    for (decision, reason, field) in [
        (pb::Decision::Unspecified, "ok", "decision"),
        (pb::Decision::Approve, " ", "reason"),
    ] {
        let err = admin
            .decide_approval(pb::DecideApprovalRequest {
                approval_id: a.id.clone(),
                decision: decision as i32,
                reason: reason.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    assert_eq!(
        approvals(&app, &task.id, true).await.len(),
        1,
        "still pending"
    );
}

#[tokio::test]
async fn two_approvers_racing_one_decision_wins_and_the_other_is_told_which() {
    let app = spawn_app().await;
    let (task, mut agent) = task_with_delete(&app).await;
    let a = pending(ask(&mut agent, &task.id).await.unwrap());
    let (first, second) = tokio::join!(
        decide(&app, ADMIN, &a.id, pb::Decision::Approve),
        decide(&app, ADMIN2, &a.id, pb::Decision::Deny)
    );
    let (won, lost) = match (first, second) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        (x, y) => panic!("exactly one decision wins: {x:?} {y:?}"),
    };
    assert_eq!(lost.code(), Code::FailedPrecondition);
    let verb = if won.state == pb::ApprovalState::Approved as i32 {
        "approved"
    } else {
        "denied"
    };
    assert!(
        lost.message()
            .contains(&format!("already {verb} by {}", won.decided_by)),
        "{}",
        lost.message()
    );
    let stored = approvals(&app, &task.id, false).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].state, won.state);
    assert_eq!(stored[0].decided_by, won.decided_by);
}

#[tokio::test]
async fn retrying_until_success_is_refused_without_new_approvals_and_then_a_deviation() {
    let app = spawn_app().await;
    let (task, mut agent) = task_with_delete(&app).await;
    let parent = app.mint(AGENT, &task.id, "customers/eu/1", 60).await;
    let a = pending(ask(&mut agent, &task.id).await.unwrap());
    // The workflow allows two repeats of a refused step-up request.
    for _ in 0..2 {
        let err = ask(&mut agent, &task.id).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("still pending"), "{}", err.message());
        assert!(err.message().contains(&a.id), "{}", err.message());
    }
    assert_eq!(
        approvals(&app, &task.id, false).await.len(),
        1,
        "no new approvals"
    );
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );

    // One more is a deviation: the task is revoked with its tokens.
    let err = ask(&mut agent, &task.id).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("deviation"), "{}", err.message());
    assert!(err.message().contains("3 times"), "{}", err.message());
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Deviated as i32
    );
    assert!(!introspect_active(&app, &parent.token).await);
    // And the pending approval can no longer yield a token: it is not even
    // listed as pending, and deciding it is refused.
    assert!(approvals(&app, "", true).await.is_empty());
    let err = decide(&app, ADMIN, &a.id, pb::Decision::Approve)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("can no longer be used"),
        "{}",
        err.message()
    );
    let err = agent
        .await_approval(pb::AwaitApprovalRequest {
            approval_id: a.id.clone(),
            wait_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(delete_tokens(&app.task_tokens(&task.id).await), 0);

    let refusals: Vec<_> = app
        .audit_by(AGENT)
        .await
        .into_iter()
        .filter(|e| e.action == "step_up_refused")
        .collect();
    assert_eq!(refusals.len(), 3);
    assert_eq!(refusals[2].detail["step_up_refusals"], 3);
}
