//! Deviations reported by orchestrators over gRPC (TaskService.ReportDeviation)
//! and the CLI (`mayfly task deviate`): only the orchestrator that opened an
//! active task reports it; the task ends as deviated and every token of it is
//! revoked with one event, audited with the orchestrator and its reason.
use crate::cli::{command_as, mayfly};
use crate::support::*;
use mayfly::api::pb;
use mayfly::domain::audit::Action;
use tonic::Code;

const REASON: &str = "agent read customers outside ticket 4711";

fn report(task: &str, reason: &str) -> pb::ReportDeviationRequest {
    pb::ReportDeviationRequest {
        task_id: task.into(),
        reason: reason.into(),
    }
}

async fn refused(app: &TestApp, who: &str, req: pb::ReportDeviationRequest) -> tonic::Status {
    app.tasks(who)
        .await
        .report_deviation(req)
        .await
        .expect_err("refused")
}

#[tokio::test]
async fn a_reported_deviation_ends_the_task_and_revokes_every_token_of_it_with_one_event() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    let mut minted = vec![];
    for i in 1..=2 {
        let t = agent
            .minted(mint_request(&task.id, &format!("customers/eu/{i}"), 60))
            .await;
        minted.push(t);
    }
    let mut watch = app.watch(0).await;
    let r = app
        .tasks(ORCH)
        .await
        .report_deviation(report(&task.id, REASON))
        .await
        .unwrap()
        .into_inner();
    let ended = r.task.unwrap();
    assert_eq!(ended.state, pb::TaskState::Deviated as i32);
    assert_eq!(ended.end_reason, REASON);

    let ev = next_events(&mut watch, 1).await.remove(0);
    assert_eq!(ev.sequence, r.revocation_sequence);
    assert_eq!(ev.trigger, "deviation");
    assert_eq!(ev.actor, ORCH);
    assert_eq!(ev.reason, REASON);
    assert_eq!(
        ev.target.unwrap().target.unwrap(),
        pb::revocation_target::Target::Task(task.id.clone())
    );
    for t in &minted {
        assert!(!introspect_active(&app, &t.token).await, "{}", t.jti);
    }
    let err = agent
        .refused(mint_request(&task.id, "customers/eu/3", 60))
        .await;
    assert_eq!(err.code(), Code::FailedPrecondition);

    let audit = app.task_audit(&task.id).await;
    let deviated = audit
        .iter()
        .find(|e| e.action == Action::TaskDeviated)
        .expect("audited");
    assert_eq!(deviated.actor, ORCH);
    assert_eq!(deviated.reason.as_deref(), Some(REASON));
    let (_, metrics) = app.http_get("/metrics").await;
    assert_eq!(metric(&metrics, "mayfly_deviations_total"), 1.0);
    assert_eq!(
        metric(&metrics, "mayfly_revocations_total{kind=\"deviation\"}"),
        1.0
    );
}

#[tokio::test]
async fn only_the_opening_orchestrator_reports_a_deviation_and_the_refusal_is_audited() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let err = refused(&app, ORCH2, report(&task.id, REASON)).await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("only that orchestrator may report it deviated"),
        "{}",
        err.message()
    );
    let err = refused(&app, AGENT, report(&task.id, REASON)).await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );

    let audit = app.task_audit(&task.id).await;
    let actions: Vec<Action> = audit.iter().map(|e| e.action).collect();
    assert_eq!(actions, vec![Action::TaskOpened, Action::TaskDeviateDenied]);
    assert_eq!(audit[1].actor, ORCH2);
    assert_eq!(audit[1].agent.as_deref(), Some(AGENT));
}

#[tokio::test]
async fn a_deviation_report_of_an_ended_task_or_with_a_bad_field_is_refused_naming_it() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let before = app.stored().await;
    for (req, says) in [
        (report(&task.id, ""), "reason: is required"),
        (report(&task.id, " \t "), "reason: is required"),
        (
            report(&task.id, &"x".repeat(1025)),
            "reason: is longer than 1024 bytes",
        ),
        (report(&task.id, "one\rline"), "reason: contains"),
        (report("", REASON), "task_id: is required"),
        (report("4711", REASON), "task_id: \"4711\" is not a task id"),
    ] {
        let err = refused(&app, ORCH, req).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{says}");
        assert!(err.message().starts_with(says), "{says}: {}", err.message());
    }
    let unknown = uuid::Uuid::new_v4().to_string();
    let err = refused(&app, ORCH, report(&unknown, REASON)).await;
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(app.stored().await, before, "nothing stored");

    app.complete_task(&task.id).await;
    let err = refused(&app, ORCH, report(&task.id, REASON)).await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("is completed, not active"),
        "{}",
        err.message()
    );
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Completed as i32
    );
}

#[tokio::test]
async fn the_cli_reports_a_task_deviated() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let minted = app.mint(AGENT, &task.id, "customers/eu/1", 60).await;

    // Without a reason: usage (clap), and the broker is not asked.
    let out = command_as(&app, ORCH, &["task", "deviate", &task.id])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = command_as(&app, ORCH, &["task", "deviate", &task.id, "--reason", ""])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(8), "malformed: the field is named");
    assert!(String::from_utf8_lossy(&out.stderr).contains("reason: is required"));

    let deviate = ["task", "deviate", &task.id, "--reason", REASON];
    let (ok, done, err) = mayfly(&app, ORCH, &deviate).await;
    assert!(ok, "{err}");
    assert_eq!(done["task"]["state"], "deviated");
    assert_eq!(done["task"]["end_reason"], REASON);
    assert!(done["revocation_sequence"].as_u64().unwrap() >= 1);
    assert!(!introspect_active(&app, &minted.token).await);

    // Again: the task is not active (exit 6), naming its state.
    let out = command_as(&app, ORCH, &deviate).output().await.unwrap();
    assert_eq!(out.status.code(), Some(6));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is deviated, not active"), "{stderr}");
}
