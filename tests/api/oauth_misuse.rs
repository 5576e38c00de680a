//! Misuse reported over HTTP by resource servers, over real mTLS: gRPC's
//! ReportMisuse behind `POST /v1/misuse`, advertised in the metadata. A live
//! token reported deviates its task and revokes its tokens; the role and field
//! rules are gRPC's.
use crate::oauth_deviation::active_over_http;
use crate::support::*;
use mayfly::api::pb::TaskState;
use mayfly::domain::audit::Action;
use serde_json::{Value, json};

const EVIDENCE: &str = "presented by x5t#S256 q1w2e3";

async fn report(client: &OauthClient, body: &Value) -> Reply {
    client
        .send(
            "POST",
            "/v1/misuse",
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
}

#[tokio::test]
async fn a_verifier_reporting_a_binding_mismatch_over_http_deviates_the_task_and_revokes_its_tokens()
 {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let reported = app.mint(AGENT, &task.id, "customers/eu/1", 60).await;
    let other = app.mint(AGENT, &task.id, "customers/eu/2", 60).await;
    let mut watch = app.watch(0).await;

    let (verifier, _) = app.oauth(VERIFIER);
    let body = json!({"token": reported.token, "kind": "binding_mismatch", "evidence": EVIDENCE});
    let r = report(&verifier, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let answer = r.json();
    assert_eq!(answer["task_id"], task.id.as_str());
    let seq = answer["revocation_sequence"].as_u64().unwrap();

    assert_eq!(
        app.get_task(&task.id).await.state,
        TaskState::Deviated as i32
    );
    for t in [&reported.token, &other.token] {
        assert!(!active_over_http(&app, t).await, "every token of the task");
    }
    let ev = next_events(&mut watch, 1).await.remove(0);
    assert_eq!(ev.sequence, seq);
    assert_eq!(ev.trigger, "deviation");
    assert_eq!(ev.actor, VERIFIER);
    let audit = app.task_audit(&task.id).await;
    let misuse = audit
        .iter()
        .find(|e| e.action == Action::MisuseReported)
        .expect("the report is audited");
    assert_eq!(misuse.actor, VERIFIER);
    assert_eq!(misuse.detail["kind"], "binding_mismatch");
    assert_eq!(misuse.detail["evidence"], EVIDENCE);

    // Reported again once the task has ended: recorded, nothing revoked.
    let again = json!({"token": other.token, "kind": "out_of_scope"});
    let r = report(&verifier, &again).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["task_id"], task.id.as_str());
    assert_eq!(r.json()["revocation_sequence"], Value::Null);
}

#[tokio::test]
async fn misuse_reports_over_http_keep_grpcs_role_and_field_rules() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let minted = app.mint(AGENT, &task.id, "customers/eu/1", 60).await;
    let good = json!({"token": minted.token, "kind": "binding_mismatch"});

    // Only verifiers report: not an agent (who could get another's task
    // revoked), an orchestrator or the security team, nor anyone unnamed.
    for who in [AGENT2, ORCH, ADMIN] {
        let (client, _) = app.oauth(who);
        let r = report(&client, &good).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (400, "unauthorized_client"),
            "{who}"
        );
    }
    let r = report(&app.oauth_anonymous(), &good).await;
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_client"));

    let (verifier, _) = app.oauth(VERIFIER);
    let before = app.stored().await;
    let mut unknown = good.clone();
    unknown["jti"] = json!(minted.jti);
    let cases = [
        (
            json!({"token": minted.token, "kind": "suspicious"}),
            "invalid_request",
            "kind: must be",
        ),
        (
            json!({"token": minted.token}),
            "invalid_request",
            "kind: must be",
        ),
        (
            json!({"kind": "out_of_scope"}),
            "invalid_request",
            "token: is required",
        ),
        (
            json!({"token": minted.token, "kind": "out_of_scope", "evidence": "a\nb"}),
            "invalid_request",
            "evidence: contains",
        ),
        (unknown, "invalid_request", "unknown field"),
        (
            json!("binding_mismatch"),
            "invalid_request",
            "request body: is not a misuse report",
        ),
        // A token that is not one of ours, named as the field it came in.
        (
            json!({"token": "not.a.jwt", "kind": "binding_mismatch"}),
            "invalid_grant",
            "token: ",
        ),
    ];
    for (body, error, says) in cases {
        let r = report(&verifier, &body).await;
        assert_eq!((r.status, r.error().as_str()), (400, error), "{says}");
        let d = r.json()["error_description"].as_str().unwrap().to_string();
        assert!(d.starts_with(says) || d.contains(says), "{says}: {d}");
        assert!(d.len() < 400, "quotes a short prefix only: {d}");
        assert!(!d.contains(&minted.token), "never the token: {d}");
    }
    let r = verifier
        .send(
            "POST",
            "/v1/misuse",
            &[("content-type", "application/x-www-form-urlencoded")],
            b"kind=binding_mismatch".to_vec(),
        )
        .await;
    assert_eq!(r.error(), "invalid_request");
    let huge = json!({"token": "x".repeat(20 * 1024), "kind": "binding_mismatch"});
    assert_eq!(report(&verifier, &huge).await.status, 413);

    assert_eq!(app.stored().await, before, "nothing stored");
    assert_eq!(app.get_task(&task.id).await.state, TaskState::Active as i32);
    assert!(active_over_http(&app, &minted.token).await);
}

#[tokio::test]
async fn the_metadata_advertises_the_misuse_and_tasks_endpoints() {
    let app = spawn_app().await;
    let r = app
        .oauth_anonymous()
        .get("/.well-known/oauth-authorization-server")
        .await;
    assert_eq!(r.status, 200);
    let m = r.json();
    assert_eq!(m["mayfly_misuse_endpoint"], "https://mayfly.test/v1/misuse");
    assert_eq!(m["mayfly_tasks_endpoint"], "https://mayfly.test/v1/tasks");
}
