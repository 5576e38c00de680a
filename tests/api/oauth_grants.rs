//! The token endpoint's step-up polling (RFC 8628 semantics) and token
//! exchange for delegation (RFC 8693) over real mTLS: approval, denial,
//! lapse, `slow_down`, and every widening or wrong exchange refused, including
//! the token-exchange bug classes of other servers.
use crate::support::*;
use base64::Engine;
use serde_json::{Value, json};
use std::time::Duration;

const HELPER1: &str = "spiffe://example.org/agent/helper-1";
const HELPER2: &str = "spiffe://example.org/agent/helper-2";
const OFFER: &str = "urn:mayfly:params:oauth:token-type:delegation-offer";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const DEVICE: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn token(client: &OauthClient, pairs: &[(&str, &str)]) -> Reply {
    client.form("/oauth/token", &form(pairs)).await
}

fn description(r: &Reply) -> String {
    r.json()["error_description"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A support task for AGENT that also declares deleting ticket 4711 (a step-up
/// action in the test policies).
async fn task_with_delete(app: &TestApp) -> String {
    let mut req = start_request(AGENT, 3600);
    req.scopes.push(scope("tickets", "tickets/4711", "delete"));
    app.open_task_with(req).await.id
}

async fn ask_delete(agent: &OauthClient, task: &str) -> Reply {
    token(
        agent,
        &[
            ("grant_type", "client_credentials"),
            ("task_id", task),
            ("audience", "tickets"),
            ("scope", "delete:tickets/4711"),
            ("ttl_seconds", "60"),
        ],
    )
    .await
}

async fn poll(agent: &OauthClient, code: &str) -> Reply {
    token(agent, &[("grant_type", DEVICE), ("device_code", code)]).await
}

async fn decide(app: &TestApp, id: &str, decision: mayfly::api::pb::Decision) {
    app.admin(ADMIN)
        .await
        .decide_approval(mayfly::api::pb::DecideApprovalRequest {
            approval_id: id.into(),
            decision: decision as i32,
            reason: "ticket 4711 checked".into(),
        })
        .await
        .expect("decide");
}

#[tokio::test]
async fn a_step_up_mint_is_polled_to_its_one_token_and_polling_too_fast_slows_down() {
    step_up_polled_to_its_one_token(&spawn_app().await).await;
}

#[tokio::test]
async fn sqlite_step_up_polling_and_token_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/mayfly.db", dir.path().display());
    let app = spawn_with(
        std::sync::Arc::new(Pki::new()),
        Settings::new().database(&url),
    )
    .await;
    step_up_polled_to_its_one_token(&app).await;
    exchange_down_a_chain(&app).await;
}

async fn step_up_polled_to_its_one_token(app: &TestApp) {
    let task = task_with_delete(app).await;
    let (agent, _) = app.oauth(AGENT);
    let r = ask_delete(&agent, &task).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (400, "authorization_pending")
    );
    let j = r.json();
    let code = j["device_code"].as_str().unwrap().to_string();
    assert_eq!(j["interval"], 5);
    assert!(j["expires_in"].as_i64().unwrap() > 800, "{j}");
    assert!(description(&r).contains(DEVICE), "{j}");

    // At once again: slow_down, and the interval grows by 5 s (RFC 8628 §3.5).
    let r = poll(&agent, &code).await;
    assert_eq!(r.error(), "slow_down");
    assert_eq!(r.json()["interval"], 10);
    // Waited: still pending.
    app.clock.advance(Duration::from_secs(11));
    let r = poll(&agent, &code).await;
    assert_eq!(r.error(), "authorization_pending");
    assert_eq!(r.json()["interval"], 10);
    // Asking to mint it again names the same approval to poll.
    let again = ask_delete(&agent, &task).await;
    assert_eq!(again.error(), "authorization_pending");
    assert_eq!(again.json()["device_code"], code.as_str());

    // Another agent cannot poll it; that costs it no poll slot either.
    let (agent2, _) = app.oauth(AGENT2);
    app.clock.advance(Duration::from_secs(11));
    assert_eq!(poll(&agent2, &code).await.error(), "invalid_grant");

    decide(app, &code, mayfly::api::pb::Decision::Approve).await;
    let r = poll(&agent, &code).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let t = r.json();
    assert_eq!(t["scope"], "delete:tickets/4711");
    let c = claims(t["access_token"].as_str().unwrap());
    assert_eq!(
        (c["aud"].as_str(), c["task"].as_str()),
        (Some("tickets"), Some(task.as_str()))
    );
    // One approval, one token: spent.
    app.clock.advance(Duration::from_secs(11));
    let r = poll(&agent, &code).await;
    assert_eq!(r.error(), "invalid_grant");
    assert!(description(&r).contains("spent"), "{}", description(&r));
    let deletes = app
        .task_tokens(&task)
        .await
        .into_iter()
        .filter(|t| t.scope.as_ref().is_some_and(|s| s.action == "delete"))
        .count();
    assert_eq!(deletes, 1);
    // A device_code that is not an approval id.
    assert_eq!(poll(&agent, "4711").await.error(), "invalid_grant");
}

#[tokio::test]
async fn a_denied_step_up_is_access_denied_and_a_lapsed_one_expired_token() {
    let app = spawn_app().await;
    let task = task_with_delete(&app).await;
    let (agent, _) = app.oauth(AGENT);
    let code = ask_delete(&agent, &task).await.json()["device_code"]
        .as_str()
        .unwrap()
        .to_string();
    decide(&app, &code, mayfly::api::pb::Decision::Deny).await;
    app.clock.advance(Duration::from_secs(6));
    let r = poll(&agent, &code).await;
    assert_eq!((r.status, r.error().as_str()), (400, "access_denied"));
    assert!(description(&r).contains(ADMIN), "{}", description(&r));

    // A second task: nobody decides, and the approval lapses (15 min).
    let task2 = task_with_delete(&app).await;
    let code2 = ask_delete(&agent, &task2).await.json()["device_code"]
        .as_str()
        .unwrap()
        .to_string();
    app.clock.advance(Duration::from_secs(16 * 60));
    let r = poll(&agent, &code2).await;
    assert_eq!((r.status, r.error().as_str()), (400, "expired_token"));
    assert!(app.task_tokens(&task2).await.is_empty());
}

/// AGENT's token for `customers/eu/42` read (`ttl` s), over the front door.
async fn parent_token(app: &TestApp, ttl: &str) -> (String, String, OauthClient) {
    let mut req = start_request(AGENT, 3600);
    req.scopes.push(scope("crm-api", "customers/eu/*", "write"));
    let task = app.open_task_with(req).await.id;
    let (agent, _) = app.oauth(AGENT);
    let r = token(
        &agent,
        &[
            ("grant_type", "client_credentials"),
            ("task_id", &task),
            ("audience", "crm-api"),
            ("scope", "read:customers/eu/42"),
            ("ttl_seconds", ttl),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    (
        task,
        r.json()["access_token"].as_str().unwrap().to_string(),
        agent,
    )
}

/// The holder's exchange of `subject` for an offer to `sub_agent`.
async fn offer(
    holder: &OauthClient,
    subject: &str,
    sub_agent: &str,
    audience: &str,
    scope: &str,
    ttl: &str,
) -> Reply {
    token(
        holder,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", ACCESS),
            ("requested_token_type", OFFER),
            ("sub_agent", sub_agent),
            ("audience", audience),
            ("scope", scope),
            ("ttl_seconds", ttl),
        ],
    )
    .await
}

async fn redeem(sub: &OauthClient, offer: &str) -> Reply {
    token(
        sub,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", offer),
            ("subject_token_type", OFFER),
        ],
    )
    .await
}

#[tokio::test]
async fn token_exchange_delegates_down_a_chain_that_keeps_every_actor() {
    exchange_down_a_chain(&spawn_app().await).await;
}

async fn exchange_down_a_chain(app: &TestApp) {
    // The coding workflow allows delegation two deep.
    let task = app
        .open_task_with(mayfly::api::pb::StartTaskRequest {
            agent: AGENT2.into(),
            workflow: "coding".into(),
            objective: "review the API repository".into(),
            scopes: vec![scope("github", "repos/acme/*", "read")],
            duration_seconds: 3600,
        })
        .await
        .id;
    let (root_agent, _) = app.oauth(AGENT2);
    let r = token(
        &root_agent,
        &[
            ("grant_type", "client_credentials"),
            ("task_id", &task),
            ("audience", "github"),
            ("scope", "read:repos/acme/*"),
            ("ttl_seconds", "300"),
        ],
    )
    .await;
    let parent = r.json()["access_token"].as_str().unwrap().to_string();
    let r = offer(
        &root_agent,
        &parent,
        HELPER1,
        "github",
        "read:repos/acme/api",
        "200",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let o = r.json();
    assert_eq!(o["issued_token_type"], OFFER);
    assert_eq!(o["token_type"], "N_A");
    assert_eq!(o["depth"], 1);
    let (helper1, cert1) = app.oauth(HELPER1);
    let r = redeem(&helper1, o["access_token"].as_str().unwrap()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let t1 = r.json();
    assert_eq!(t1["issued_token_type"], ACCESS);
    assert_eq!(t1["token_type"], "Bearer");
    assert_eq!(t1["scope"], "read:repos/acme/api");
    let child = t1["access_token"].as_str().unwrap().to_string();
    let (p, c) = (claims(&parent), claims(&child));
    assert_eq!(c["sub"], AGENT2, "the task's agent stays the subject");
    assert_eq!(c["act"], json!({"sub": HELPER1}));
    assert_eq!(
        c["cnf"]["x5t#S256"],
        mayfly::identity::thumbprint(&cert1.cert_der)
    );
    assert!(c["exp"].as_i64() <= p["exp"].as_i64());
    assert_eq!(c["task"], task.as_str());

    // Re-exchange: the grandchild keeps the whole chain; no fresh lifetime
    // beyond its parent's.
    let r = offer(
        &helper1,
        &child,
        HELPER2,
        "github",
        "read:repos/acme/api",
        "250",
    )
    .await;
    assert_eq!(r.error(), "invalid_request", "{}", description(&r));
    let r = offer(
        &helper1,
        &child,
        HELPER2,
        "github",
        "read:repos/acme/api",
        "100",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["depth"], 2);
    let (helper2, _) = app.oauth(HELPER2);
    let r = redeem(&helper2, r.json()["access_token"].as_str().unwrap()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let grandchild = r.json()["access_token"].as_str().unwrap().to_string();
    let g = claims(&grandchild);
    assert_eq!(g["act"], json!({"sub": HELPER2, "act": {"sub": HELPER1}}));
    assert_eq!(g["depth"], 2);
    assert!(g["exp"].as_i64() <= c["exp"].as_i64());
    assert_eq!(
        g["ancestors"],
        json!([p["jti"], c["jti"]]),
        "revoking either ancestor revokes it"
    );
    // A third level is past the workflow's depth.
    let (agent, _) = app.oauth(AGENT);
    let r = offer(
        &helper2,
        &grandchild,
        AGENT,
        "github",
        "read:repos/acme/api",
        "50",
    )
    .await;
    assert_eq!(r.error(), "access_denied", "{}", description(&r));
    // Revoking the root reaches the grandchild.
    let (admin, _) = app.oauth(ADMIN);
    assert_eq!(
        admin
            .form("/oauth/revoke", &form(&[("token", &parent)]))
            .await
            .status,
        200
    );
    let (verifier, _) = app.oauth(VERIFIER);
    let r = verifier
        .form("/oauth/introspect", &form(&[("token", &grandchild)]))
        .await;
    assert_eq!(r.json(), json!({"active": false}));
    drop(agent);
}

#[tokio::test]
async fn every_widening_and_every_wrong_exchange_is_refused() {
    let app = spawn_app().await;
    let (task, parent, agent) = parent_token(&app, "120").await;
    let before = app.task_tokens(&task).await.len();
    let cases = [
        // Audience widened: another tool (one the task declares).
        (
            offer(
                &agent,
                &parent,
                HELPER1,
                "tickets",
                "comment:tickets/4711",
                "60",
            )
            .await,
            "invalid_target",
            "audience",
        ),
        // Action widened: write from a read token.
        (
            offer(
                &agent,
                &parent,
                HELPER1,
                "crm-api",
                "write:customers/eu/42",
                "60",
            )
            .await,
            "invalid_scope",
            "action",
        ),
        // Resource widened: all of the EU from one customer.
        (
            offer(
                &agent,
                &parent,
                HELPER1,
                "crm-api",
                "read:customers/eu/*",
                "60",
            )
            .await,
            "invalid_scope",
            "resource",
        ),
        // A fresh lifetime beyond the parent's.
        (
            offer(
                &agent,
                &parent,
                HELPER1,
                "crm-api",
                "read:customers/eu/42",
                "3600",
            )
            .await,
            "invalid_request",
            "outlive",
        ),
        // To itself.
        (
            offer(
                &agent,
                &parent,
                AGENT,
                "crm-api",
                "read:customers/eu/42",
                "60",
            )
            .await,
            "invalid_request",
            "own holder",
        ),
        // Not a token of this broker.
        (
            offer(
                &agent,
                "a.b.c",
                HELPER1,
                "crm-api",
                "read:customers/eu/42",
                "60",
            )
            .await,
            "invalid_grant",
            "subject_token",
        ),
    ];
    for (r, code, says) in cases {
        let d = description(&r);
        assert_eq!(r.error(), code, "{d}");
        assert!(d.contains(says), "{code}: {d}");
    }
    // Malformed exchanges.
    let malformed: [(&[(&str, &str)], &str); 4] = [
        (
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &parent),
                ("subject_token_type", ACCESS),
                ("sub_agent", HELPER1),
                ("audience", "crm-api"),
                ("scope", "read:customers/eu/42"),
                ("ttl_seconds", "60"),
            ],
            "requested_token_type",
        ),
        (
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &parent),
                ("subject_token_type", ACCESS),
                ("requested_token_type", OFFER),
                ("actor_token", &parent),
                ("actor_token_type", ACCESS),
                ("sub_agent", HELPER1),
                ("audience", "crm-api"),
                ("scope", "read:customers/eu/42"),
                ("ttl_seconds", "60"),
            ],
            "actor_token",
        ),
        (
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &parent),
                ("subject_token_type", "urn:x:saml"),
            ],
            "subject_token_type",
        ),
        (
            &[("grant_type", EXCHANGE), ("subject_token_type", ACCESS)],
            "subject_token: is required",
        ),
    ];
    for (pairs, says) in malformed {
        let r = token(&agent, pairs).await;
        assert_eq!(r.error(), "invalid_request", "{}", description(&r));
        assert!(description(&r).contains(says), "{}", description(&r));
    }

    // The offer goes to HELPER1 only; redeemed once; its scope is fixed.
    let o = offer(
        &agent,
        &parent,
        HELPER1,
        "crm-api",
        "read:customers/eu/42",
        "60",
    )
    .await;
    let id = o.json()["access_token"].as_str().unwrap().to_string();
    let (helper1, _) = app.oauth(HELPER1);
    let (helper2, _) = app.oauth(HELPER2);
    let r = redeem(&helper2, &id).await;
    assert_eq!(r.error(), "invalid_grant", "{}", description(&r));
    let widened = token(
        &helper1,
        &[
            ("grant_type", EXCHANGE),
            ("subject_token", &id),
            ("subject_token_type", OFFER),
            ("scope", "read:customers/eu/*"),
        ],
    )
    .await;
    assert_eq!(widened.error(), "invalid_request");
    assert!(description(&widened).contains("fixed by the offer"));
    assert_eq!(redeem(&helper1, &id).await.status, 200);
    assert_eq!(
        redeem(&helper1, &id).await.error(),
        "invalid_grant",
        "redeemed once"
    );
    assert_eq!(
        redeem(&helper1, "not-an-offer").await.error(),
        "invalid_grant"
    );
    assert_eq!(app.task_tokens(&task).await.len(), before + 1);

    // A subject token checked against the caller: AGENT2 presenting AGENT's
    // token is refused, and as on gRPC that is a deviation of AGENT's task.
    let (agent2, _) = app.oauth(AGENT2);
    let r = offer(
        &agent2,
        &parent,
        HELPER1,
        "crm-api",
        "read:customers/eu/42",
        "60",
    )
    .await;
    assert_eq!(r.error(), "invalid_grant");
    assert!(description(&r).contains("bound to"), "{}", description(&r));
    assert_eq!(app.get_task(&task).await.state, 4, "deviated");
}
