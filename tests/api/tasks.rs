use crate::support::*;
use mayfly::api::pb;
use mayfly::domain::audit::Action;
use mayfly::store::AuditStore;
use tonic::Code;

#[tokio::test]
async fn an_orchestrator_opens_reads_lists_and_completes_a_task() {
    let app = spawn_app().await;
    let mut tasks = app.tasks(ORCH).await;
    let task = app.open_task(AGENT, 600).await;
    assert_eq!(task.agent, AGENT);
    assert_eq!(task.opened_by, ORCH);
    assert_eq!(task.state, pb::TaskState::Active as i32);
    assert_eq!(task.scopes.len(), 2);
    let span = task.expires_at.unwrap().seconds - task.created_at.unwrap().seconds;
    assert_eq!(span, 600);

    let got = tasks
        .get_task(pb::GetTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.task.unwrap(), task);

    let other = app.open_task(AGENT2, 600).await;
    let mine = tasks
        .list_tasks(pb::ListTasksRequest {
            agent: AGENT.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(
        mine.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        vec![task.id.clone()]
    );

    let done = tasks
        .complete_task(pb::CompleteTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        done.task.as_ref().unwrap().state,
        pb::TaskState::Completed as i32
    );
    assert!(done.revocation_sequence >= 1);

    let active = tasks
        .list_tasks(pb::ListTasksRequest {
            state: pb::TaskState::Active as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(
        active.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        vec![other.id.clone()]
    );

    // Terminal states are final.
    let err = tasks
        .complete_task(pb::CompleteTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("is completed"), "{}", err.message());

    let audit = app
        .store()
        .await
        .audit_for_task(mayfly::domain::TaskId(task.id.parse().unwrap()))
        .await
        .unwrap();
    let actions: Vec<Action> = audit.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![
            Action::TaskOpened,
            Action::TaskCompleted,
            Action::Revocation
        ]
    );
    assert_eq!(
        audit[0].detail["objective"],
        "answer ticket 4711 about an EU customer's invoice"
    );
}

#[tokio::test]
async fn completing_a_task_revokes_every_token_with_one_event() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    let mut minted = vec![];
    for i in 1..=3 {
        let t = agent
            .minted(mint_request(&task.id, &format!("customers/eu/{i}"), 60))
            .await;
        assert!(introspect_active(&app, &t.token).await);
        minted.push(t);
    }
    // A token of another agent's task, to revoke after the completion.
    let other_task = app.open_task(AGENT2, 600).await;
    let other = app.mint(AGENT2, &other_task.id, "customers/eu/9", 60).await;

    let mut watch = app.watch(0).await;
    let completed = app
        .tasks(ORCH)
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let ev = next_events(&mut watch, 1).await.remove(0);
    assert_eq!(ev.sequence, completed.revocation_sequence);
    assert_eq!(ev.trigger, "task_completed");
    assert_eq!(ev.actor, ORCH);
    assert_eq!(
        ev.target.unwrap().target.unwrap(),
        pb::revocation_target::Target::Task(task.id.clone())
    );
    for t in &minted {
        assert!(!introspect_active(&app, &t.token).await, "{}", t.jti);
    }

    // The next revocation is the very next event: the completion made one, not
    // one per token.
    app.admin(ADMIN)
        .await
        .revoke(revoke_request(
            pb::revocation_target::Target::Token(other.jti.clone()),
            "leaked in a log",
        ))
        .await
        .unwrap();
    let next = next_events(&mut watch, 1).await.remove(0);
    assert_eq!(next.sequence, ev.sequence + 1);
    assert_eq!(next.trigger, "admin");
    assert_eq!(
        next.target.unwrap().target.unwrap(),
        pb::revocation_target::Target::Token(other.jti.clone())
    );
    assert!(!introspect_active(&app, &other.token).await);

    // And nothing more can be minted.
    let err = agent
        .refused(mint_request(&task.id, "customers/eu/4", 60))
        .await;
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn completing_another_orchestrators_task_is_refused_and_audited_with_the_reason() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let err = app
        .tasks(ORCH2)
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );

    let audit = app
        .store()
        .await
        .audit_for_task(mayfly::domain::TaskId(task.id.parse().unwrap()))
        .await
        .unwrap();
    let actions: Vec<Action> = audit.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![Action::TaskOpened, Action::TaskCompleteDenied]
    );
    let denied = &audit[1];
    assert_eq!(denied.actor, ORCH2);
    assert_eq!(denied.agent.as_deref(), Some(AGENT));
    assert_eq!(denied.reason.as_deref(), Some(err.message()));
    assert!(
        err.message()
            .contains("only that orchestrator may complete it"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn dot_segments_in_scopes_are_invalid_arguments_naming_the_field() {
    let app = spawn_app().await;
    let mut req = start_request(AGENT, 600);
    req.scopes = vec![scope("crm-api", "customers/eu/../us/*", "read")];
    let err = app.tasks(ORCH).await.start_task(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("scopes[0]: resource has a \"..\" path segment"),
        "{}",
        err.message()
    );

    // A task declared on customers/eu/** does not cover a path that climbs out of it.
    let mut req = start_request(AGENT, 600);
    req.scopes = vec![scope("crm-api", "customers/eu/**", "read")];
    let task = app.open_task_with(req).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    for res in ["customers/eu/../us/1", "customers/eu/./1"] {
        let err = agent.refused(mint_request(&task.id, res, 60)).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{res}");
        assert!(
            err.message().starts_with("scope: resource has a "),
            "{}",
            err.message()
        );
    }
    // Refused as malformed, not as a deviation: the task is untouched.
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );
}

#[tokio::test]
async fn a_task_outside_its_workflow_is_denied_with_the_reason() {
    let app = spawn_app().await;
    let mut tasks = app.tasks(ORCH).await;
    let mut req = start_request(AGENT, 600);
    req.scopes.push(scope("crm-api", "customers/us/*", "read"));
    let err = tasks.start_task(req).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("no policy permits declaring scope crm-api/customers/us/*#read"),
        "{}",
        err.message()
    );

    let err = tasks
        .start_task(start_request(AGENT, 7200))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("exceeds"), "{}", err.message());

    let mut req = start_request(AGENT, 600);
    req.workflow = "coding".into();
    req.scopes = vec![scope("github", "repos/acme/x", "push")];
    let err = tasks.start_task(req).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains(
            "no policy permits spiffe://example.org/orchestrator/o1 opening workflow \"coding\""
        ),
        "{}",
        err.message()
    );

    let mut req = start_request(AGENT, 600);
    req.workflow = "payroll".into();
    let err = tasks.start_task(req).await.unwrap_err();
    assert!(err.message().contains("not defined"), "{}", err.message());
}

#[tokio::test]
async fn malformed_start_requests_name_the_field() {
    let app = spawn_app().await;
    let mut tasks = app.tasks(ORCH).await;
    let cases: Vec<(pb::StartTaskRequest, &str)> = vec![
        (
            {
                let mut r = start_request(AGENT, 600);
                r.agent = "agent-1".into();
                r
            },
            "agent:",
        ),
        (
            {
                let mut r = start_request(AGENT, 600);
                r.agent = String::new();
                r
            },
            "agent: is required",
        ),
        (
            {
                let mut r = start_request(AGENT, 600);
                r.objective = " ".into();
                r
            },
            "objective: is required",
        ),
        (
            {
                let mut r = start_request(AGENT, 600);
                r.workflow = String::new();
                r
            },
            "workflow: is required",
        ),
        (
            {
                let mut r = start_request(AGENT, 600);
                r.scopes.clear();
                r
            },
            "scopes: at least one",
        ),
        (
            {
                let mut r = start_request(AGENT, 600);
                r.scopes[1].resource = "tickets//1".into();
                r
            },
            "scopes[1]: resource has an empty path segment",
        ),
        (
            {
                let mut r = start_request(AGENT, 600);
                r.scopes[0].audience = String::new();
                r
            },
            "scopes[0]: audience is empty",
        ),
        (
            start_request(AGENT, 0),
            "duration_seconds: must be at least 1",
        ),
    ];
    for (req, want) in cases {
        let err = tasks.start_task(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{want}");
        assert!(
            err.message().starts_with(want),
            "want {want:?}, got {:?}",
            err.message()
        );
    }
    let err = tasks
        .get_task(pb::GetTaskRequest {
            task_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("task_id:"));
    let err = tasks
        .get_task(pb::GetTaskRequest {
            task_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = tasks
        .list_tasks(pb::ListTasksRequest {
            state: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("state:"));
}

#[tokio::test]
async fn the_sweeper_expires_overdue_tasks_and_revokes_their_tokens() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 60).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    let t = agent
        .minted(mint_request(&task.id, "customers/eu/1", 300))
        .await;
    // TTL is capped by the task's remaining time.
    assert_eq!(t.ttl_seconds, 60);
    let mut watch = app.watch(0).await;
    app.clock.advance(std::time::Duration::from_secs(61));
    let ev = next_events(&mut watch, 1).await.remove(0);
    assert_eq!(ev.trigger, "task_expired");
    assert_eq!(ev.actor, "mayfly");
    let got = app.get_task(&task.id).await;
    assert_eq!(got.state, pb::TaskState::Expired as i32);
    assert!(!introspect_active(&app, &t.token).await);
    let rows = app.task_tokens(&task.id).await;
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0].revoked_at.is_some(),
        "the expired task's token row is revoked"
    );
}
