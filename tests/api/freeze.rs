//! The kill switch over the real server: a freeze stops new issuance to an agent,
//! a workflow or everything (mints, delegations, redemptions) until it is lifted,
//! and both are audited.
use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::freeze_target::Target;
use tonic::Code;

fn target(t: Target) -> Option<pb::FreezeTarget> {
    Some(pb::FreezeTarget { target: Some(t) })
}

async fn freeze(app: &TestApp, t: Target, reason: &str) -> pb::FreezeResponse {
    app.admin(ADMIN)
        .await
        .freeze(pb::FreezeRequest {
            target: target(t),
            reason: reason.into(),
        })
        .await
        .expect("freeze")
        .into_inner()
}

async fn unfreeze(app: &TestApp, t: Target) -> Result<pb::UnfreezeResponse, tonic::Status> {
    app.admin(ADMIN)
        .await
        .unfreeze(pb::UnfreezeRequest {
            target: target(t),
            reason: "incident closed".into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn try_mint(
    app: &TestApp,
    agent: &str,
    task: &str,
    n: u32,
) -> Result<pb::MintTokenResponse, tonic::Status> {
    app.tokens(agent)
        .await
        .0
        .mint_token(mint_request(task, &format!("customers/eu/{n}"), 60))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn freezing_an_agent_stops_its_issuance_until_lifted_and_both_are_audited() {
    let app = spawn_app().await;
    let t1 = app.open_task(AGENT, 600).await;
    let t2 = app.open_task(AGENT2, 600).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    let before = agent
        .minted(mint_request(&t1.id, "customers/eu/1", 60))
        .await;

    let f = freeze(
        &app,
        Target::Agent(AGENT.into()),
        "suspected prompt injection",
    )
    .await;
    assert!(!f.already_frozen);
    let again = freeze(&app, Target::Agent(AGENT.into()), "again").await;
    assert!(again.already_frozen);
    assert_eq!(again.freeze.unwrap().reason, "suspected prompt injection");

    let err = try_mint(&app, AGENT, &t1.id, 2).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("issuance is frozen for agent spiffe://example.org/agent/a1"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("suspected prompt injection"),
        "{}",
        err.message()
    );
    // Other agents mint; tokens already issued are not revoked by a freeze.
    try_mint(&app, AGENT2, &t2.id, 1).await.unwrap();
    assert!(introspect_active(&app, &before.token).await);
    // Nor may the frozen agent hand its token on.
    let err = agent
        .delegate(pb::DelegateRequest {
            parent_token: before.token.clone(),
            sub_agent: "spiffe://example.org/agent/helper-1".into(),
            scope: Some(scope("crm-api", "customers/eu/1", "read")),
            ttl_seconds: 10,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("frozen"), "{}", err.message());

    let listed = app
        .admin(ADMIN)
        .await
        .list_freezes(pb::ListFreezesRequest {})
        .await
        .unwrap()
        .into_inner()
        .freezes;
    assert_eq!(listed.len(), 1);

    let lifted = unfreeze(&app, Target::Agent(AGENT.into())).await.unwrap();
    assert_eq!(lifted.lifted.unwrap().actor, ADMIN);
    try_mint(&app, AGENT, &t1.id, 3).await.unwrap();
    let err = unfreeze(&app, Target::Agent(AGENT.into()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        app.get_task(&t1.id).await.state,
        pb::TaskState::Active as i32
    );

    let actions: Vec<String> = app
        .audit_by(ADMIN)
        .await
        .into_iter()
        .map(|e| e.action)
        .filter(|a| a.starts_with("issuance_"))
        .collect();
    assert_eq!(actions, ["issuance_frozen", "issuance_unfrozen"]);
    assert!(
        app.audit_by(AGENT)
            .await
            .iter()
            .any(|e| e.action == "mint_denied"
                && e.reason.as_deref().is_some_and(|r| r.contains("frozen")))
    );
}

#[tokio::test]
async fn freezing_a_workflow_or_everything_stops_every_agent_in_it() {
    let app = spawn_app().await;
    let t1 = app.open_task(AGENT, 600).await;
    let t2 = app.open_task(AGENT2, 600).await;
    freeze(
        &app,
        Target::Workflow("support".into()),
        "workflow under review",
    )
    .await;
    for (agent, task) in [(AGENT, &t1.id), (AGENT2, &t2.id)] {
        let err = try_mint(&app, agent, task, 1).await.unwrap_err();
        assert!(
            err.message().contains("workflow support"),
            "{}",
            err.message()
        );
    }
    unfreeze(&app, Target::Workflow("support".into()))
        .await
        .unwrap();
    try_mint(&app, AGENT, &t1.id, 2).await.unwrap();

    freeze(&app, Target::All(true), "kill switch drill").await;
    for (agent, task) in [(AGENT, &t1.id), (AGENT2, &t2.id)] {
        let err = try_mint(&app, agent, task, 3).await.unwrap_err();
        assert!(err.message().contains("all issuance"), "{}", err.message());
    }
    unfreeze(&app, Target::All(true)).await.unwrap();
    try_mint(&app, AGENT2, &t2.id, 4).await.unwrap();

    // Malformed targets name the field.
    let err = app
        .admin(ADMIN)
        .await
        .freeze(pb::FreezeRequest {
            target: target(Target::All(false)),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("target.all"), "{}", err.message());
}
