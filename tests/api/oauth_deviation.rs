//! Deviations reported over HTTP by orchestrators, over real mTLS: the task the
//! orchestrator opened ends as deviated and every token of it dies, as gRPC's
//! ReportDeviation does; another orchestrator, an agent, a task that has ended
//! and bad input are refused, and nothing changes.
use crate::support::*;
use mayfly::api::pb::TaskState;
use mayfly::domain::audit::Action;
use mayfly::store::RevocationStore;
use serde_json::{Value, json};

const REASON: &str = "agent read customers outside ticket 4711";

async fn deviate(client: &OauthClient, task: &str, body: &Value) -> Reply {
    client
        .send(
            "POST",
            &format!("/v1/tasks/{task}/deviate"),
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
}

/// AGENT's mint in `task` over the front door.
async fn mint(app: &TestApp, task: &str) -> Reply {
    let (agent, _) = app.oauth(AGENT);
    agent
        .form("/oauth/token", &mint_form(task, "customers/eu/42"))
        .await
}

/// A token of AGENT in `task`, minted over the front door.
async fn minted(app: &TestApp, task: &str) -> String {
    let m = mint(app, task).await;
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    m.json()["access_token"].as_str().unwrap().to_string()
}

/// Whether `token` is active at `/oauth/introspect`, as the verifier asks.
pub(crate) async fn active_over_http(app: &TestApp, token: &str) -> bool {
    let (verifier, _) = app.oauth(VERIFIER);
    let r = verifier
        .form("/oauth/introspect", &form(&[("token", token)]))
        .await;
    assert_eq!(r.status, 200);
    r.json()["active"].as_bool().unwrap()
}

/// The description of a refusal, checked to be `error` with status 400.
fn refused(r: &Reply, error: &str) -> String {
    assert_eq!(
        (r.status, r.error().as_str()),
        (400, error),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["error_description"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_opening_orchestrator_reports_its_task_deviated_over_http_and_its_tokens_die() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let token = minted(&app, &task.id).await;
    assert!(active_over_http(&app, &token).await);
    let mut watch = app.watch(0).await;

    let (orch, _) = app.oauth(ORCH);
    let r = deviate(&orch, &task.id, &json!({"reason": REASON})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let done = r.json();
    assert_eq!(done["task"]["id"], task.id.as_str());
    assert_eq!(done["task"]["state"], "deviated");
    assert_eq!(done["task"]["end_reason"], REASON);
    let seq = done["revocation_sequence"].as_u64().unwrap();
    assert!(seq >= 1);

    // Its token is dead, for the front door as for gRPC.
    assert!(!active_over_http(&app, &token).await);
    assert!(!introspect_active(&app, &token).await);
    // The revocation is the store's and the feed's: the task, by the orchestrator.
    let ev = next_events(&mut watch, 1).await.remove(0);
    assert_eq!(ev.sequence, seq);
    assert_eq!(ev.trigger, "deviation");
    assert_eq!(ev.actor, ORCH);
    assert_eq!(ev.reason, REASON);
    let store = app.store().await;
    let stored = store.revocations_after(seq - 1, 10).await.unwrap();
    assert_eq!(stored.len(), 1, "one event for the task");
    assert_eq!(stored[0].revocation.trigger.as_str(), "deviation");
    // Audited with the orchestrator and its reason.
    let audit = app.task_audit(&task.id).await;
    let deviated = audit
        .iter()
        .find(|e| e.action == Action::TaskDeviated)
        .expect("the deviation is audited");
    assert_eq!(deviated.actor, ORCH);
    assert_eq!(deviated.reason.as_deref(), Some(REASON));
    // gRPC sees the same task, and it mints nothing more.
    assert_eq!(
        app.get_task(&task.id).await.state,
        TaskState::Deviated as i32
    );
    assert_eq!(mint(&app, &task.id).await.error(), "invalid_grant");
}

#[tokio::test]
async fn another_orchestrator_or_an_agent_reporting_a_deviation_is_refused_and_nothing_changes() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let token = minted(&app, &task.id).await;
    let before = app.stored().await;

    let (orch2, _) = app.oauth(ORCH2);
    let r = deviate(&orch2, &task.id, &json!({"reason": REASON})).await;
    let d = refused(&r, "invalid_grant");
    assert!(
        d.contains("only that orchestrator may report it deviated"),
        "{d}"
    );
    let (agent, _) = app.oauth(AGENT);
    let r = deviate(&agent, &task.id, &json!({"reason": REASON})).await;
    refused(&r, "unauthorized_client");
    let r = deviate(&app.oauth_anonymous(), &task.id, &json!({"reason": REASON})).await;
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_client"));

    // Still active, its token alive; only the two refusals were recorded.
    assert_eq!(app.get_task(&task.id).await.state, TaskState::Active as i32);
    assert!(active_over_http(&app, &token).await);
    let after = app.stored().await;
    assert_eq!(after[0], before[0] + 2, "two refusals audited");
    assert_eq!(after[1..], before[1..], "no token, no revocation");
    let denied = app.audit_by(ORCH2).await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].action, "task_deviate_denied");
    assert_eq!(
        app.audit_by(AGENT).await.last().unwrap().action,
        "call_denied"
    );
}

#[tokio::test]
async fn a_task_that_has_ended_is_not_reported_deviated_and_the_refusal_names_its_state() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    app.complete_task(&task.id).await;
    let before = app.stored().await;
    let (orch, _) = app.oauth(ORCH);
    let r = deviate(&orch, &task.id, &json!({"reason": REASON})).await;
    let d = refused(&r, "invalid_grant");
    assert!(d.contains("is completed, not active"), "{d}");
    assert_eq!(
        app.get_task(&task.id).await.state,
        TaskState::Completed as i32,
        "still completed"
    );
    assert_eq!(app.stored().await, before);
    // A task that does not exist.
    let r = deviate(
        &orch,
        &uuid::Uuid::new_v4().to_string(),
        &json!({"reason": REASON}),
    )
    .await;
    refused(&r, "invalid_grant");
}

#[tokio::test]
async fn a_bad_deviation_report_over_http_is_invalid_request_naming_the_field_and_stores_nothing() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (orch, _) = app.oauth(ORCH);
    let before = app.stored().await;
    let cases = [
        (json!({}), "reason: is required"),
        (json!({"reason": ""}), "reason: is required"),
        (json!({"reason": "   "}), "reason: is required"),
        (
            json!({"reason": "x".repeat(1025)}),
            "reason: is longer than 1024 bytes",
        ),
        (json!({"reason": "two\nlines"}), "reason: contains"),
        (json!({"reason": "a\u{202e}b"}), "reason: contains U+202E"),
        (
            json!({"reason": 7}),
            "is not a deviation report: invalid type",
        ),
        (
            json!({"reason": REASON, format!("x{}", "y".repeat(5000)): 1}),
            "unknown field",
        ),
        (json!([REASON]), "is not a deviation report"),
    ];
    for (body, says) in cases {
        let r = deviate(&orch, &task.id, &body).await;
        let d = refused(&r, "invalid_request");
        assert!(d.contains(says), "{says}: {d}");
        assert!(d.len() < 400, "quotes a short prefix only: {d}");
    }
    // Not JSON at all; not sent as JSON; too large; not a task id.
    let path = format!("/v1/tasks/{}/deviate", task.id);
    let json = [("content-type", "application/json")];
    let r = orch
        .send("POST", &path, &json, b"{\"reason\":".to_vec())
        .await;
    let d = refused(&r, "invalid_request");
    assert!(
        d.starts_with("request body: is not a deviation report"),
        "{d}"
    );
    let text = [("content-type", "text/plain")];
    let r = orch.send("POST", &path, &text, REASON.into()).await;
    assert!(refused(&r, "invalid_request").starts_with("Content-Type"));
    let huge = json!({"reason": "x".repeat(100 * 1024)});
    let r = deviate(&orch, &task.id, &huge).await;
    assert_eq!((r.status, r.error().as_str()), (413, "invalid_request"));
    let r = deviate(&orch, "4711", &json!({"reason": REASON})).await;
    assert!(refused(&r, "invalid_request").starts_with("task_id: "));

    assert_eq!(app.stored().await, before);
    assert_eq!(
        app.get_task(&task.id).await.state,
        TaskState::Active as i32,
        "still active"
    );
}
