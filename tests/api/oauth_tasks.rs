//! Tasks over HTTP for orchestrators, over real mTLS: opened, read and
//! completed with JSON, as gRPC's TaskService does; the roles and field rules
//! of gRPC; bad input answered with the error and nothing stored.
use crate::support::*;
use serde_json::{Value, json};

fn open_body(agent: &str) -> Value {
    json!({
        "agent": agent,
        "workflow": "support",
        "objective": "answer ticket 4711 about an EU customer's invoice",
        "scopes": [{"audience": "crm-api", "resource": "customers/eu/*", "action": "read"}],
        "duration_seconds": 600,
    })
}

async fn post_json(client: &OauthClient, path: &str, body: &Value) -> Reply {
    client
        .send(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
}

#[tokio::test]
async fn an_orchestrator_opens_reads_and_completes_a_task_over_http() {
    let app = spawn_app().await;
    let (orch, _) = app.oauth(ORCH);
    let r = post_json(&orch, "/v1/tasks", &open_body(AGENT)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let task = r.json()["task"].clone();
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(task["agent"], AGENT);
    assert_eq!(task["state"], "active");
    assert_eq!(task["opened_by"], ORCH);

    // The agent mints in it over the front door; the task is the same one.
    let (agent, _) = app.oauth(AGENT);
    let m = agent
        .form(
            "/oauth/token",
            &form(&[
                ("grant_type", "client_credentials"),
                ("task_id", &id),
                ("audience", "crm-api"),
                ("scope", "read:customers/eu/42"),
                ("ttl_seconds", "60"),
            ]),
        )
        .await;
    assert_eq!(m.status, 200);
    let token = m.json()["access_token"].as_str().unwrap().to_string();

    let r = orch.get(&format!("/v1/tasks/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["task"]["tokens_minted"], 1);
    let (admin, _) = app.oauth(ADMIN);
    assert_eq!(admin.get(&format!("/v1/tasks/{id}")).await.status, 200);

    let r = orch
        .send("POST", &format!("/v1/tasks/{id}/complete"), &[], vec![])
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let done = r.json();
    assert_eq!(done["task"]["state"], "completed");
    assert!(done["revocation_sequence"].as_u64().unwrap() >= 1);
    assert!(
        !introspect_active(&app, &token).await,
        "its token died with it"
    );
    // Completing it again is refused, as on gRPC.
    let r = orch
        .send("POST", &format!("/v1/tasks/{id}/complete"), &[], vec![])
        .await;
    assert_eq!(r.error(), "invalid_grant");
    // gRPC sees the same task.
    assert_eq!(app.get_task(&id).await.state, 2);
}

#[tokio::test]
async fn tasks_over_http_keep_grpcs_roles_and_field_rules_and_store_nothing_refused() {
    let app = spawn_app().await;
    let (orch, _) = app.oauth(ORCH);
    let (agent, _) = app.oauth(AGENT);
    let before = app.stored().await;
    // An agent opens nothing; no certificate, nothing either.
    let r = post_json(&agent, "/v1/tasks", &open_body(AGENT)).await;
    assert_eq!(r.error(), "unauthorized_client");
    let r = post_json(&app.oauth_anonymous(), "/v1/tasks", &open_body(AGENT)).await;
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_client"));
    let before_bad = app.stored().await;
    let mut unknown = open_body(AGENT);
    unknown[format!("x{}", "y".repeat(5000))] = json!(1);
    let mut bad_scope = open_body(AGENT);
    bad_scope["scopes"][0]["action"] = json!("read write");
    let mut long = open_body(AGENT);
    long["duration_seconds"] = json!(0);
    let cases = [
        (open_body("not-a-spiffe-id"), "agent"),
        (bad_scope, "scopes[0]"),
        (long, "duration_seconds"),
        (unknown, "unknown field"),
        (json!({"agent": AGENT}), "missing field"),
        (json!([1, 2]), "is not a task to open"),
    ];
    for (body, says) in cases {
        let r = post_json(&orch, "/v1/tasks", &body).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (400, "invalid_request"),
            "{says}"
        );
        let d = r.json()["error_description"].as_str().unwrap().to_string();
        assert!(d.contains(says), "{says}: {d}");
        assert!(d.len() < 400, "quotes a short prefix only: {d}");
    }
    // Not JSON; too large.
    let r = orch
        .send(
            "POST",
            "/v1/tasks",
            &[("content-type", "text/plain")],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.error(), "invalid_request");
    let mut huge = open_body(AGENT);
    huge["objective"] = json!("x".repeat(100 * 1024));
    let r = post_json(&orch, "/v1/tasks", &huge).await;
    assert_eq!(r.status, 413);
    // Reading a task that is not one, or not a UUID.
    let r = orch
        .get(&format!("/v1/tasks/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(r.error(), "invalid_grant");
    assert_eq!(orch.get("/v1/tasks/4711").await.error(), "invalid_request");
    assert_eq!(app.stored().await, before_bad);
    // The role refusal was audited, like gRPC's; nothing else was written.
    assert!(app.stored().await[0] > before[0]);

    // Another orchestrator may not complete it.
    let id = post_json(&orch, "/v1/tasks", &open_body(AGENT))
        .await
        .json()["task"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (orch2, _) = app.oauth(ORCH2);
    let r = orch2
        .send("POST", &format!("/v1/tasks/{id}/complete"), &[], vec![])
        .await;
    assert_eq!(r.error(), "invalid_grant");
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("only that orchestrator")
    );
    assert_eq!(app.get_task(&id).await.state, 1, "still active");
}
