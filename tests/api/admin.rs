use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::revocation_target::Target;
use tonic::Code;

async fn mint(app: &TestApp, agent: &str, task: &str, res: &str) -> pb::MintTokenResponse {
    app.mint(agent, task, res, 120).await
}

async fn task_state(app: &TestApp, id: &str) -> i32 {
    app.get_task(id).await.state
}

#[tokio::test]
async fn revoking_a_token_kills_only_that_token() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let a = mint(&app, AGENT, &task.id, "customers/eu/1").await;
    let b = mint(&app, AGENT, &task.id, "customers/eu/2").await;
    let r = app
        .admin(ADMIN)
        .await
        .revoke(revoke_request(
            Target::Token(a.jti.clone()),
            "leaked in a log",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.tokens_revoked, 1);
    assert_eq!(r.tasks_stopped, 0);
    let ev = r.event.unwrap();
    assert_eq!(ev.actor, ADMIN);
    assert_eq!(ev.trigger, "admin");
    assert_eq!(ev.reason, "leaked in a log");
    assert!(!introspect_active(&app, &a.token).await);
    assert!(introspect_active(&app, &b.token).await);
    assert_eq!(
        task_state(&app, &task.id).await,
        pb::TaskState::Active as i32
    );
}

#[tokio::test]
async fn revoking_a_token_again_answers_the_original_event_and_adds_nothing() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let a = mint(&app, AGENT, &task.id, "customers/eu/1").await;
    let b = mint(&app, AGENT, &task.id, "customers/eu/2").await;
    let mut admin = app.admin(ADMIN).await;
    let first = admin
        .revoke(revoke_request(Target::Token(a.jti.clone()), "leaked"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.repeated);
    let again = admin
        .revoke(revoke_request(
            Target::Token(a.jti.clone()),
            "leaked, again",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(again.repeated);
    assert_eq!(again.tokens_revoked, 0);
    assert_eq!(again.event, first.event, "not the original event");
    // The repeat took no sequence number: the next revocation is the next one.
    let next = admin
        .revoke(revoke_request(Target::Token(b.jti.clone()), "leaked too"))
        .await
        .unwrap()
        .into_inner();
    let seq = |r: &pb::RevokeResponse| r.event.as_ref().unwrap().sequence;
    assert_eq!(seq(&next), seq(&first) + 1);
    // The repeated request is on the audit trail.
    let repeats: Vec<_> = audit_by(&app.store().await, ADMIN)
        .await
        .into_iter()
        .filter(|e| e.action == "revocation" && e.detail["repeated"] == true)
        .collect();
    assert_eq!(repeats.len(), 1, "{repeats:?}");
    assert_eq!(repeats[0].reason.as_deref(), Some("leaked, again"));
}

#[tokio::test]
async fn revoking_a_task_stops_it_and_kills_its_tokens() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let other = app.open_task(AGENT, 600).await;
    let a = mint(&app, AGENT, &task.id, "customers/eu/1").await;
    let b = mint(&app, AGENT, &other.id, "customers/eu/1").await;
    let r = app
        .admin(ADMIN)
        .await
        .revoke(revoke_request(
            Target::Task(task.id.clone()),
            "objective changed",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.tokens_revoked, r.tasks_stopped), (1, 1));
    assert!(!introspect_active(&app, &a.token).await);
    assert!(introspect_active(&app, &b.token).await);
    assert_eq!(
        task_state(&app, &task.id).await,
        pb::TaskState::Revoked as i32
    );
}

#[tokio::test]
async fn revoking_an_agent_stops_its_active_tasks_and_kills_its_tokens() {
    let app = spawn_app().await;
    let t1 = app.open_task(AGENT, 600).await;
    let t2 = app.open_task(AGENT, 600).await;
    let t3 = app.open_task(AGENT2, 600).await;
    let a = mint(&app, AGENT, &t1.id, "customers/eu/1").await;
    let b = mint(&app, AGENT, &t2.id, "customers/eu/1").await;
    let c = mint(&app, AGENT2, &t3.id, "customers/eu/1").await;
    let r = app
        .admin(ADMIN)
        .await
        .revoke(revoke_request(
            Target::Agent(AGENT.into()),
            "compromised host",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.tokens_revoked, r.tasks_stopped), (2, 2));
    assert!(!introspect_active(&app, &a.token).await);
    assert!(!introspect_active(&app, &b.token).await);
    assert!(introspect_active(&app, &c.token).await);
    assert_eq!(
        task_state(&app, &t1.id).await,
        pb::TaskState::Revoked as i32
    );
    assert_eq!(task_state(&app, &t3.id).await, pb::TaskState::Active as i32);
    // Its tasks are final: it cannot mint again in them.
    let (mut agent, _) = app.tokens(AGENT).await;
    let err = agent
        .refused(mint_request(&t1.id, "customers/eu/1", 60))
        .await;
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn revoking_all_kills_every_token() {
    let app = spawn_app().await;
    let t1 = app.open_task(AGENT, 600).await;
    let t2 = app.open_task(AGENT2, 600).await;
    let a = mint(&app, AGENT, &t1.id, "customers/eu/1").await;
    let b = mint(&app, AGENT2, &t2.id, "customers/eu/1").await;
    let r = app
        .admin(ADMIN)
        .await
        .revoke(revoke_request(Target::All(true), "incident 42"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.tokens_revoked, r.tasks_stopped), (2, 2));
    assert!(!introspect_active(&app, &a.token).await);
    assert!(!introspect_active(&app, &b.token).await);
}

#[tokio::test]
async fn bad_revocations_are_refused_with_the_reason() {
    let app = spawn_app().await;
    let mut admin = app.admin(ADMIN).await;
    let err = admin
        .revoke(revoke_request(Target::All(true), ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("reason: is required"));
    let err = admin
        .revoke(revoke_request(Target::All(false), "x"))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("target.all: must be true"));
    let err = admin
        .revoke(pb::RevokeRequest {
            target: None,
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("target: is required"));
    let err = admin
        .revoke(revoke_request(Target::Token("abc".into()), "x"))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("target.token:"));
    let err = admin
        .revoke(revoke_request(Target::Agent("bob".into()), "x"))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("target.agent:"));
    let err = admin
        .revoke(revoke_request(
            Target::Token(uuid::Uuid::new_v4().to_string()),
            "x",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = admin
        .revoke(revoke_request(
            Target::Task(uuid::Uuid::new_v4().to_string()),
            "x",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // None of these refusals consumed a sequence number.
    let r = admin
        .revoke(revoke_request(Target::All(true), "first real one"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.event.unwrap().sequence, 1);
}

#[tokio::test]
async fn tokens_are_listed_by_task_agent_and_activity() {
    let app = spawn_app().await;
    let t1 = app.open_task(AGENT, 600).await;
    let t2 = app.open_task(AGENT2, 600).await;
    let a = mint(&app, AGENT, &t1.id, "customers/eu/1").await;
    let b = mint(&app, AGENT, &t1.id, "customers/eu/2").await;
    let c = mint(&app, AGENT2, &t2.id, "customers/eu/3").await;
    let mut admin = app.admin(ADMIN).await;
    admin
        .revoke(revoke_request(Target::Token(b.jti.clone()), "test"))
        .await
        .unwrap();
    let list = |task: &str, agent: &str, active_only: bool| pb::ListTokensRequest {
        task_id: task.into(),
        agent: agent.into(),
        active_only,
        limit: 0,
    };
    let jtis = |r: pb::ListTokensResponse| {
        let mut v: Vec<String> = r.tokens.into_iter().map(|t| t.jti).collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        jtis(
            admin
                .list_tokens(list(&t1.id, "", false))
                .await
                .unwrap()
                .into_inner()
        ),
        sorted(vec![a.jti.clone(), b.jti.clone()])
    );
    assert_eq!(
        jtis(
            admin
                .list_tokens(list("", AGENT2, false))
                .await
                .unwrap()
                .into_inner()
        ),
        vec![c.jti.clone()]
    );
    assert_eq!(
        jtis(
            admin
                .list_tokens(list("", AGENT, true))
                .await
                .unwrap()
                .into_inner()
        ),
        vec![a.jti.clone()]
    );
    let all = admin
        .list_tokens(list("", "", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.tokens.len(), 3);
    let revoked = all.tokens.iter().find(|t| t.jti == b.jti).unwrap();
    assert!(!revoked.active && revoked.revoked_at.is_some());
    assert_eq!(revoked.scope.as_ref().unwrap().resource, "customers/eu/2");
}

#[tokio::test]
async fn every_task_an_admin_revocation_stops_is_audited_with_the_reason() {
    use mayfly::domain::TaskId;
    use mayfly::domain::audit::Action;
    use mayfly::store::AuditStore;
    let app = spawn_app().await;
    let t1 = app.open_task(AGENT, 600).await;
    let t2 = app.open_task(AGENT, 600).await;
    app.admin(ADMIN)
        .await
        .revoke(revoke_request(
            Target::Agent(AGENT.into()),
            "compromised host",
        ))
        .await
        .unwrap();
    let store = app.store().await;
    for t in [&t1, &t2] {
        let audit = store
            .audit_for_task(TaskId(t.id.parse().unwrap()))
            .await
            .unwrap();
        let stopped = audit
            .iter()
            .find(|e| e.action == Action::TaskRevoked)
            .expect("task_revoked audited");
        assert_eq!(stopped.actor, ADMIN);
        assert_eq!(stopped.reason.as_deref(), Some("compromised host"));
        assert_eq!(stopped.detail["sequence"], 1);
    }
}

#[tokio::test]
async fn revoking_an_unknown_target_is_refused_and_audited_with_the_reason() {
    use mayfly::domain::TaskId;
    use mayfly::domain::audit::Action;
    use mayfly::store::AuditStore;
    let app = spawn_app().await;
    let mut admin = app.admin(ADMIN).await;
    let jti = uuid::Uuid::new_v4();
    let task = uuid::Uuid::new_v4();
    for target in [
        Target::Token(jti.to_string()),
        Target::Task(task.to_string()),
    ] {
        let err = admin
            .revoke(revoke_request(target, "suspected leak"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }

    let denied = app.audit_by(ADMIN).await;
    assert_eq!(denied.len(), 2, "{denied:?}");
    for e in &denied {
        assert_eq!(e.action, "revocation_denied");
        assert_eq!(e.outcome, "deny");
        assert_eq!(e.detail["requested_reason"], "suspected leak");
    }
    assert_eq!(
        denied[0].reason.as_deref(),
        Some(format!("token {jti} not found").as_str())
    );
    assert_eq!(denied[0].jti, Some(jti));
    assert_eq!(denied[0].detail["target"], "token");
    assert_eq!(
        denied[1].reason.as_deref(),
        Some(format!("task {task} not found").as_str())
    );
    assert_eq!(denied[1].task_id, Some(task));
    // Filed under the task it named, so a query by task finds it.
    let by_task = app
        .store()
        .await
        .audit_for_task(TaskId(task))
        .await
        .unwrap();
    assert_eq!(by_task.len(), 1);
    assert_eq!(by_task[0].action, Action::RevocationDenied);
    assert_eq!(by_task[0].actor, ADMIN);
}

#[tokio::test]
async fn revoking_a_workflow_stops_its_tasks_and_kills_their_tokens_and_nothing_else() {
    let app = spawn_app().await;
    let support = app.open_task(AGENT, 600).await;
    let a = mint(&app, AGENT, &support.id, "customers/eu/1").await;
    let mut req = start_request(AGENT2, 600);
    req.workflow = "coding".into();
    req.scopes = vec![scope("github", "repos/acme", "read")];
    let coding = app.open_task_with(req).await;
    let c = app
        .tokens(AGENT2)
        .await
        .0
        .minted(mint_scope(
            &coding.id,
            scope("github", "repos/acme", "read"),
            60,
        ))
        .await;
    let mut watch = app.watch(0).await;
    let r = app
        .admin(ADMIN)
        .await
        .revoke(revoke_request(
            Target::Workflow("support".into()),
            "workflow withdrawn",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.tokens_revoked, r.tasks_stopped), (1, 1));
    assert!(!introspect_active(&app, &a.token).await);
    assert!(introspect_active(&app, &c.token).await);
    assert_eq!(
        task_state(&app, &support.id).await,
        pb::TaskState::Revoked as i32
    );
    assert_eq!(
        task_state(&app, &coding.id).await,
        pb::TaskState::Active as i32
    );
    let ev = next_events(&mut watch, 1).await.remove(0);
    assert_eq!(
        ev.target.unwrap().target.unwrap(),
        Target::Workflow("support".into())
    );
    let err = app
        .admin(ADMIN)
        .await
        .revoke(revoke_request(Target::Workflow("two words".into()), "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("target.workflow:"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_quarantine_is_the_security_teams_and_names_an_agent_and_a_reason() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let minted = mint(&app, AGENT, &task.id, "customers/eu/1").await;
    let quarantine = |agent: &str, reason: &str| pb::QuarantineRequest {
        agent: agent.into(),
        reason: reason.into(),
    };
    // An agent cannot quarantine, not even itself.
    let err = app
        .admin(AGENT)
        .await
        .quarantine(quarantine(AGENT, "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut admin = app.admin(ADMIN).await;
    let err = admin
        .quarantine(quarantine("agent-7", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("agent:"), "{}", err.message());
    let err = admin.quarantine(quarantine(AGENT, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("reason:"), "{}", err.message());
    // Nothing of that reached the agent.
    assert!(introspect_active(&app, &minted.token).await);
    let q = admin
        .quarantine(quarantine(AGENT, "exfiltrating"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((q.tokens_revoked, q.tasks_stopped), (1, 1));
    assert!(!introspect_active(&app, &minted.token).await);
}
