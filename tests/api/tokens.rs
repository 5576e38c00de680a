use crate::support::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use mayfly::api::pb;
use mayfly::domain::TaskId;
use mayfly::domain::audit::Action;
use mayfly::store::AuditStore;
use tonic::Code;

async fn jwks(app: &TestApp) -> JwkSet {
    let json = app
        .verifier(VERIFIER)
        .await
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    serde_json::from_str(&json).unwrap()
}

#[tokio::test]
async fn a_minted_token_verifies_with_the_jwks_and_is_bound_to_the_agent_certificate() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (mut agent, cert) = app.tokens(AGENT).await;
    let minted = agent
        .minted(mint_request(&task.id, "customers/eu/42", 120))
        .await;
    assert_eq!(minted.ttl_seconds, 120);

    // Verified independently of Mayfly's own code: jsonwebtoken with the JWKS key.
    let header = jsonwebtoken::decode_header(&minted.token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let set = jwks(&app).await;
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid in JWKS");
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&["crm-api"]);
    v.set_issuer(&["https://mayfly.test"]);
    // The broker runs on a test clock that starts at real time; allow a little skew.
    v.leeway = 5;
    let data = jsonwebtoken::decode::<serde_json::Value>(
        &minted.token,
        &DecodingKey::from_jwk(jwk).unwrap(),
        &v,
    )
    .expect("signature and claims verify");
    let c = data.claims;
    assert_eq!(c["sub"], AGENT);
    assert_eq!(c["aud"], "crm-api");
    assert_eq!(c["scope"], "read:customers/eu/42");
    assert_eq!(c["task"], task.id);
    assert_eq!(c["wf"], "support");
    assert_eq!(c["jti"], minted.jti);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 120);
    assert_eq!(c["nbf"], c["iat"]);
    assert_eq!(
        c["cnf"]["x5t#S256"],
        mayfly::identity::thumbprint(&cert.cert_der)
    );

    // Recorded with its audit event.
    let audit = app
        .store()
        .await
        .audit_for_task(TaskId(task.id.parse().unwrap()))
        .await
        .unwrap();
    let mint = audit
        .iter()
        .find(|e| e.action == Action::TokenMinted)
        .expect("mint audited");
    assert_eq!(mint.jti.unwrap().to_string(), minted.jti);
    assert!(
        !serde_json::to_string(&mint.detail)
            .unwrap()
            .contains(&minted.token)
    );
}

#[tokio::test]
async fn ttl_is_the_least_of_request_workflow_and_task_remaining() {
    let app = spawn_app().await;
    let long = app.open_task(AGENT, 3000).await;
    let short = app.open_task(AGENT, 90).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    let ttl = |r: pb::MintTokenResponse| r.ttl_seconds;
    assert_eq!(
        ttl(agent
            .minted(mint_request(&long.id, "customers/eu/1", 30))
            .await),
        30
    );
    assert_eq!(
        ttl(agent
            .minted(mint_request(&long.id, "customers/eu/1", 3600))
            .await),
        300
    );
    assert_eq!(
        ttl(agent
            .minted(mint_request(&short.id, "customers/eu/1", 3600))
            .await),
        90
    );
}

#[tokio::test]
async fn minting_for_another_agents_task_is_permission_denied() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (mut other, _) = app.tokens(AGENT2).await;
    let err = other
        .refused(mint_request(&task.id, "customers/eu/1", 60))
        .await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("belongs to another agent"),
        "{}",
        err.message()
    );
    // Not a deviation of the victim's task.
    let (mut agent, _) = app.tokens(AGENT).await;
    agent
        .minted(mint_request(&task.id, "customers/eu/1", 60))
        .await;
}

#[tokio::test]
async fn malformed_mint_requests_name_the_field() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    let cases: Vec<(pb::MintTokenRequest, &str)> = vec![
        (
            {
                let mut r = mint_request(&task.id, "customers/eu/1", 60);
                r.scope = None;
                r
            },
            "scope: is required",
        ),
        (
            mint_request(&task.id, "customers//1", 60),
            "scope: resource has an empty path segment",
        ),
        (
            {
                let mut r = mint_request(&task.id, "customers/eu/1", 60);
                r.scope.as_mut().unwrap().action = "*".into();
                r
            },
            "scope: action must name one action",
        ),
        (
            {
                let mut r = mint_request(&task.id, "customers/eu/1", 60);
                r.scope.as_mut().unwrap().audience = "crm api".into();
                r
            },
            "scope: audience contains",
        ),
        (
            mint_request(&task.id, "customers/eu/1", 0),
            "ttl_seconds: must be at least 1",
        ),
        (
            mint_request(&task.id, "customers/eu/1", 100_000),
            "ttl_seconds: must be at most",
        ),
        (mint_request("not-a-task", "customers/eu/1", 60), "task_id:"),
    ];
    for (req, want) in cases {
        let err = agent.refused(req).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{want}");
        assert!(
            err.message().starts_with(want),
            "want {want:?}, got {:?}",
            err.message()
        );
    }
    // None of that was a deviation: the task still mints.
    agent
        .minted(mint_request(&task.id, "customers/eu/1", 60))
        .await;
}

#[tokio::test]
async fn a_scope_outside_the_task_is_a_deviation_that_revokes_the_whole_task() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    let good = agent
        .minted(mint_request(&task.id, "customers/eu/1", 60))
        .await;
    let mut watch = app.watch(0).await;

    // customers/eu/** is inside the workflow but wider than the task's customers/eu/*.
    let err = agent
        .refused(mint_request(&task.id, "customers/eu/1/orders", 60))
        .await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("not covered by the scopes declared"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("deviated"), "{}", err.message());

    let ev = next_events(&mut watch, 1).await.remove(0);
    assert_eq!(ev.trigger, "deviation");
    assert_eq!(
        ev.target.unwrap().target.unwrap(),
        pb::revocation_target::Target::Task(task.id.clone())
    );
    assert!(ev.reason.contains("customers/eu/1/orders"), "{}", ev.reason);
    assert!(!introspect_active(&app, &good.token).await);
    let got = app.get_task(&task.id).await;
    assert_eq!(got.state, pb::TaskState::Deviated as i32);
    assert!(got.end_reason.contains("not covered"));

    let err = agent
        .refused(mint_request(&task.id, "customers/eu/1", 60))
        .await;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("is deviated"), "{}", err.message());

    let audit = app
        .store()
        .await
        .audit_for_task(TaskId(task.id.parse().unwrap()))
        .await
        .unwrap();
    let actions: Vec<Action> = audit.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![
            Action::TaskOpened,
            Action::TokenMinted,
            Action::MintDenied,
            Action::TaskDeviated,
            Action::Revocation,
            Action::MintDenied
        ]
    );
}

#[tokio::test]
async fn exceeding_the_token_budget_is_resource_exhausted_and_a_deviation() {
    let app = spawn_with(
        std::sync::Arc::new(Pki::new()),
        Settings::new().max_tokens(3),
    )
    .await;
    let task = app.open_task(AGENT, 600).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    let mut tokens = vec![];
    for i in 0..3 {
        tokens.push(
            agent
                .minted(mint_request(&task.id, &format!("customers/eu/{i}"), 60))
                .await,
        );
    }
    let err = agent
        .refused(mint_request(&task.id, "customers/eu/9", 60))
        .await;
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("budget of 3 tokens"),
        "{}",
        err.message()
    );
    for t in &tokens {
        assert!(!introspect_active(&app, &t.token).await);
    }
    let got = app.get_task(&task.id).await;
    assert_eq!(got.state, pb::TaskState::Deviated as i32);
    assert_eq!(got.tokens_minted, 3);
}

#[tokio::test]
async fn concurrent_mints_never_exceed_the_budget() {
    let app = spawn_with(
        std::sync::Arc::new(Pki::new()),
        Settings::new().max_tokens(5),
    )
    .await;
    let task = app.open_task(AGENT, 600).await;
    let (agent, _) = app.tokens(AGENT).await;
    let mut joins = vec![];
    for i in 0..12 {
        let mut a = agent.clone();
        let id = task.id.clone();
        joins.push(tokio::spawn(async move {
            a.mint_token(mint_request(&id, &format!("customers/eu/{i}"), 60))
                .await
        }));
    }
    let mut ok = 0;
    for j in joins {
        if j.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert!(ok <= 5, "{ok} tokens minted against a budget of 5");
    let rows = app.task_tokens(&task.id).await;
    assert_eq!(rows.len(), ok);
}
