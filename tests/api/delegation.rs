//! Delegation (RFC 8693) over the real server: offers, redemption by the named
//! sub-agent over its own mTLS connection, every refusal, and cascade revocation
//! seen by a verifier.
use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::revocation_target::Target;
use mayfly::api::pb::token_service_client::TokenServiceClient;
use mayfly::identity::devcerts::Issued;
use mayfly::verifier::{RequiredScope, Verdict, Verifier, VerifierConfig};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const HELPER1: &str = "spiffe://example.org/agent/helper-1";
const HELPER2: &str = "spiffe://example.org/agent/helper-2";

/// The claims of a token, decoded without checking it (the verifier checks).
fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWS");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn delegate_request(parent: &str, sub: &str, s: pb::Scope, ttl: u64) -> pb::DelegateRequest {
    pb::DelegateRequest {
        parent_token: parent.into(),
        sub_agent: sub.into(),
        scope: Some(s),
        ttl_seconds: ttl,
    }
}

/// A support task for AGENT declaring CRM reads and writes of EU customers, and
/// AGENT's token for `customers/eu/42` read, with AGENT's certificate.
async fn support_parent(
    app: &TestApp,
    ttl: u64,
) -> (pb::Task, pb::MintTokenResponse, (Tokens, Issued)) {
    let mut req = start_request(AGENT, 3600);
    req.scopes.push(scope("crm-api", "customers/eu/*", "write"));
    let task = app.open_task_with(req).await;
    let (mut tokens, cert) = app.tokens(AGENT).await;
    let parent = tokens
        .mint_token(mint_request(&task.id, "customers/eu/42", ttl))
        .await
        .expect("mint the parent")
        .into_inner();
    (task, parent, (tokens, cert))
}

type Tokens = TokenServiceClient<Channel>;

async fn delegate(
    client: &mut Tokens,
    req: pb::DelegateRequest,
) -> Result<pb::DelegateResponse, tonic::Status> {
    client.delegate(req).await.map(|r| r.into_inner())
}

async fn redeem(client: &mut Tokens, id: &str) -> Result<pb::MintTokenResponse, tonic::Status> {
    client
        .redeem_delegation(pb::RedeemDelegationRequest {
            delegation_id: id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// AGENT's offer to HELPER1 of `customers/eu/42` read from `parent`.
async fn offer_eu42(agent: &mut Tokens, parent: &str, ttl: u64) -> pb::DelegateResponse {
    let req = delegate_request(
        parent,
        HELPER1,
        scope("crm-api", "customers/eu/42", "read"),
        ttl,
    );
    delegate(agent, req).await.expect("delegate")
}

fn refused<T>(r: Result<T, tonic::Status>, code: Code, says: &str) -> String {
    let Err(err) = r else {
        panic!("expected a refusal saying {says:?}, got success");
    };
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(
        err.message().contains(says),
        "{:?} lacks {says:?}",
        err.message()
    );
    err.message().to_string()
}

#[tokio::test]
async fn a_sub_agent_redeems_a_narrower_token_bound_to_its_own_certificate() {
    let app = spawn_app().await;
    let (task, parent, (mut agent, parent_cert)) = support_parent(&app, 120).await;
    let (mut helper, helper_cert) = app.tokens(HELPER1).await;

    let offer = delegate(
        &mut agent,
        delegate_request(
            &parent.token,
            HELPER1,
            scope("crm-api", "customers/eu/42", "read"),
            60,
        ),
    )
    .await
    .expect("delegate");
    assert_eq!(offer.depth, 1);
    let child = redeem(&mut helper, &offer.delegation_id)
        .await
        .expect("the named sub-agent redeems");
    assert!(child.approval.is_none());
    assert!(
        child.ttl_seconds <= 60 && child.ttl_seconds >= 59,
        "{}",
        child.ttl_seconds
    );

    let c = claims(&child.token);
    let p = claims(&parent.token);
    assert_eq!(c["sub"], AGENT, "the task's agent stays the subject");
    assert_eq!(c["client_id"], HELPER1, "the holder is the client");
    assert_eq!(c["act"], json!({"sub": HELPER1}), "RFC 8693 actor chain");
    assert_eq!(c["depth"], 1);
    assert_eq!(c["ancestors"], json!([parent.jti]));
    assert_eq!(c["task"], task.id);
    assert_eq!(c["scope"], "read:customers/eu/42");
    assert!(c["exp"].as_i64() <= p["exp"].as_i64());
    assert_ne!(c["cnf"], p["cnf"], "bound to the sub-agent's certificate");
    assert_ne!(helper_cert.cert_der, parent_cert.cert_der);

    // Introspection finds it active; the admin's listing shows its parent.
    let active = app
        .verifier(VERIFIER)
        .await
        .introspect(pb::IntrospectRequest {
            token: child.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(active.active);
    let listed = app.task_tokens(&task.id).await;
    let row = listed.iter().find(|t| t.jti == child.jti).expect("listed");
    assert_eq!((row.agent.as_str(), row.depth), (HELPER1, 1));
    assert_eq!(row.parent_jti, parent.jti);
    assert_eq!(
        app.get_task(&task.id).await.tokens_minted,
        2,
        "the child counts against the budget"
    );

    // The offer and the child's mint are on record.
    let offered = app.audit_by(AGENT).await;
    assert!(offered.iter().any(|e| e.action == "delegation_offered"
        && e.detail["sub_agent"] == HELPER1
        && e.detail["delegation"] == offer.delegation_id.as_str()));
    let minted = app.audit_by(HELPER1).await;
    assert!(minted.iter().any(|e| e.action == "token_minted"
        && e.detail["parent_jti"] == parent.jti.as_str()
        && e.detail["depth"] == 1));
}

#[tokio::test]
async fn every_widening_every_limit_and_every_wrong_redemption_is_refused_and_audited() {
    let app = spawn_app().await;
    let (task, parent, (mut agent, _)) = support_parent(&app, 60).await;
    let (mut helper1, _) = app.tokens(HELPER1).await;
    let (mut helper2, _) = app.tokens(HELPER2).await;
    let eu42 = || scope("crm-api", "customers/eu/42", "read");
    let offer = |s: pb::Scope, ttl: u64| delegate_request(&parent.token, HELPER1, s, ttl);

    // Widening, each part named: audience, action, resource, lifetime.
    let wider = [
        (
            offer(scope("tickets", "tickets/4711", "comment"), 30),
            "scope.audience",
        ),
        (
            offer(scope("crm-api", "customers/eu/42", "write"), 30),
            "scope.action",
        ),
        (
            offer(scope("crm-api", "customers/eu/*", "read"), 30),
            "scope.resource",
        ),
        (
            offer(scope("crm-api", "customers/eu/43", "read"), 30),
            "scope.resource",
        ),
        (offer(eu42(), 3600), "outlive the parent token"),
    ];
    for (req, says) in wider {
        refused(
            delegate(&mut agent, req).await,
            Code::PermissionDenied,
            says,
        );
    }
    // A sub-agent the policy does not allow for this workflow.
    let msg = refused(
        delegate(
            &mut agent,
            delegate_request(&parent.token, AGENT2, eu42(), 30),
        )
        .await,
        Code::PermissionDenied,
        "test-delegates",
    );
    assert!(msg.contains(AGENT2), "{msg}");
    // Not an agent at all; the caller itself; not a token.
    refused(
        delegate(
            &mut agent,
            delegate_request(&parent.token, ORCH, eu42(), 30),
        )
        .await,
        Code::PermissionDenied,
        "does not hold the agent role",
    );
    refused(
        delegate(
            &mut agent,
            delegate_request(&parent.token, AGENT, eu42(), 30),
        )
        .await,
        Code::InvalidArgument,
        "sub_agent",
    );
    refused(
        delegate(
            &mut agent,
            delegate_request("not-a-token", HELPER1, eu42(), 30),
        )
        .await,
        Code::InvalidArgument,
        "parent_token",
    );

    // Depth beyond the workflow's limit (support allows 1).
    let first = delegate(&mut agent, offer(eu42(), 30)).await.unwrap();
    let child = redeem(&mut helper1, &first.delegation_id).await.unwrap();
    refused(
        delegate(
            &mut helper1,
            delegate_request(&child.token, HELPER2, eu42(), 10),
        )
        .await,
        Code::PermissionDenied,
        "depth 2 exceeds",
    );

    // Redeemed by another identity; redeemed twice; no such offer.
    refused(
        redeem(&mut helper2, &first.delegation_id).await,
        Code::PermissionDenied,
        "names another sub-agent",
    );
    refused(
        redeem(&mut helper1, &first.delegation_id).await,
        Code::FailedPrecondition,
        "already redeemed",
    );
    refused(
        redeem(&mut helper1, &uuid::Uuid::new_v4().to_string()).await,
        Code::NotFound,
        "not found",
    );

    // Redeemed after the parent was revoked.
    let late = delegate(&mut agent, offer(eu42(), 30)).await.unwrap();
    app.admin(ADMIN)
        .await
        .revoke(revoke_request(
            Target::Token(parent.jti.clone()),
            "parent withdrawn",
        ))
        .await
        .unwrap();
    refused(
        redeem(&mut helper1, &late.delegation_id).await,
        Code::FailedPrecondition,
        "was revoked",
    );
    // The revoked parent cannot be delegated any more either.
    refused(
        delegate(&mut agent, offer(eu42(), 10)).await,
        Code::FailedPrecondition,
        "was revoked",
    );

    // None of these was a deviation: the task is still active.
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );
    // Every refusal is on record with its reason, under the task (all but the
    // garbage token, which names no task: a malformed request, like any other).
    let mut denied = app.audit_by(AGENT).await;
    denied.extend(app.audit_by(HELPER1).await);
    denied.retain(|e| e.action == "delegation_denied");
    assert_eq!(denied.len(), 10, "{denied:#?}");
    assert!(
        denied
            .iter()
            .all(|e| e.reason.is_some() && e.task_id.is_some())
    );
    let mut redeem_denied = app.audit_by(HELPER1).await;
    redeem_denied.extend(app.audit_by(HELPER2).await);
    redeem_denied.retain(|e| e.action == "redeem_denied");
    assert_eq!(redeem_denied.len(), 3, "{redeem_denied:#?}");
}

#[tokio::test]
async fn two_redemptions_racing_yield_exactly_one_token() {
    let app = spawn_app().await;
    let (task, parent, (mut agent, _)) = support_parent(&app, 60).await;
    let offer = offer_eu42(&mut agent, &parent.token, 30).await;
    let (mut one, _) = app.tokens(HELPER1).await;
    let mut two = one.clone();
    let (a, b) = tokio::join!(
        redeem(&mut one, &offer.delegation_id),
        redeem(&mut two, &offer.delegation_id)
    );
    assert_eq!(
        u8::from(a.is_ok()) + u8::from(b.is_ok()),
        1,
        "{:?} {:?}",
        a.err(),
        b.err()
    );
    let children = app
        .task_tokens(&task.id)
        .await
        .into_iter()
        .filter(|t| t.depth == 1)
        .count();
    assert_eq!(children, 1);
}

#[tokio::test]
async fn a_sub_agents_deviation_revokes_the_whole_task() {
    let app = spawn_app().await;
    let (task, parent, (mut agent, _)) = support_parent(&app, 60).await;
    let (mut helper, _) = app.tokens(HELPER1).await;
    let offer = offer_eu42(&mut agent, &parent.token, 30).await;
    let child = redeem(&mut helper, &offer.delegation_id).await.unwrap();

    // The sub-agent reaches outside the task's declared scopes.
    refused(
        delegate(
            &mut helper,
            delegate_request(
                &child.token,
                HELPER2,
                scope("crm-api", "customers/us/1", "read"),
                10,
            ),
        )
        .await,
        Code::PermissionDenied,
        "deviation",
    );
    let t = app.get_task(&task.id).await;
    assert_eq!(t.state, pb::TaskState::Deviated as i32);
    let tokens = app.task_tokens(&task.id).await;
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().all(|t| t.revoked_at.is_some()), "{tokens:#?}");

    // Another task: an agent presenting someone else's token to delegate it.
    let (task, parent, _) = support_parent(&app, 60).await;
    let (mut thief, _) = app.tokens(AGENT2).await;
    refused(
        delegate(
            &mut thief,
            delegate_request(
                &parent.token,
                HELPER1,
                scope("crm-api", "customers/eu/42", "read"),
                10,
            ),
        )
        .await,
        Code::PermissionDenied,
        "deviation",
    );
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Deviated as i32
    );

    // A third: a verifier reports the sub-agent's token replayed by another
    // certificate; the whole task goes, the parent agent's token with it.
    let (task, parent, (mut agent, _)) = support_parent(&app, 60).await;
    let offer = offer_eu42(&mut agent, &parent.token, 30).await;
    let child = redeem(&mut helper, &offer.delegation_id).await.unwrap();
    app.verifier(VERIFIER)
        .await
        .report_misuse(pb::ReportMisuseRequest {
            token: child.token.clone(),
            kind: "binding_mismatch".into(),
            evidence: "presented by spiffe://example.org/agent/unknown".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Deviated as i32
    );
    assert!(!introspect_active(&app, &parent.token).await);
}

/// A `github` verifier on the app's clock, caught up with the revocations.
async fn github_verifier(app: &TestApp) -> Verifier {
    let mut c = VerifierConfig::new("https://mayfly.test", "github");
    c.clock = Arc::new(app.clock.clone());
    c.staleness = Duration::from_secs(5);
    c.report_misuse = false;
    let v = Verifier::connect(app.channel(VERIFIER).await.0, c)
        .await
        .expect("verifier connects");
    tokio::time::timeout(Duration::from_secs(10), v.synced())
        .await
        .expect("synced");
    v
}

/// A coding task for AGENT2 (the workflow allows depth 2) and the chain AGENT2 →
/// HELPER1 → HELPER2: the three tokens and the grandchild holder's certificate.
async fn two_level_chain(app: &TestApp) -> (pb::Task, [pb::MintTokenResponse; 3], Issued) {
    let task = app
        .open_task_with(pb::StartTaskRequest {
            agent: AGENT2.into(),
            workflow: "coding".into(),
            objective: "review the API repository".into(),
            scopes: vec![scope("github", "repos/acme/*", "read")],
            duration_seconds: 3600,
        })
        .await;
    let (mut root_agent, _) = app.tokens(AGENT2).await;
    let (mut helper1, _) = app.tokens(HELPER1).await;
    let (mut helper2, cert) = app.tokens(HELPER2).await;
    let root = root_agent
        .minted(mint_scope(
            &task.id,
            scope("github", "repos/acme/*", "read"),
            300,
        ))
        .await;
    let api = || scope("github", "repos/acme/api", "read");
    let first = delegate(
        &mut root_agent,
        delegate_request(&root.token, HELPER1, api(), 200),
    )
    .await
    .unwrap();
    let child = redeem(&mut helper1, &first.delegation_id).await.unwrap();
    let second = delegate(
        &mut helper1,
        delegate_request(&child.token, HELPER2, api(), 100),
    )
    .await
    .unwrap();
    assert_eq!(second.depth, 2);
    let grandchild = redeem(&mut helper2, &second.delegation_id).await.unwrap();
    (task, [root, child, grandchild], cert)
}

async fn revoked_within_10s(v: &Verifier, token: &str, cert: &[u8]) -> Verdict {
    let required = RequiredScope::new("read", "repos/acme/api").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let verdict = v.check(token, cert, &required).await;
        if matches!(verdict, Verdict::Revoked { .. }) || tokio::time::Instant::now() >= deadline {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn revoking_an_ancestor_token_an_agent_of_the_chain_or_the_task_reaches_the_grandchild() {
    let app = spawn_with(
        Arc::new(Pki::new()),
        Settings::new().watch_heartbeat(Duration::from_millis(100)),
    )
    .await;
    let v = github_verifier(&app).await;
    let admin = || async { app.admin(ADMIN).await };
    let required = RequiredScope::new("read", "repos/acme/api").unwrap();

    // 1. The root token.
    let (task, [root, child, grandchild], cert) = two_level_chain(&app).await;
    let Verdict::Valid(c) = v.check(&grandchild.token, &cert.cert_der, &required).await else {
        panic!("the grandchild is valid with its holder's certificate");
    };
    assert_eq!(c.sub, AGENT2);
    assert_eq!(c.actors().collect::<Vec<_>>(), [HELPER2, HELPER1]);
    assert_eq!(c.depth, 2);
    assert_eq!(c.ancestors, [root.jti.clone(), child.jti.clone()]);
    let revoked = admin()
        .await
        .revoke(revoke_request(
            Target::Token(root.jti.clone()),
            "root withdrawn",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.tokens_revoked, 3, "the root and both descendants");
    let verdict = revoked_within_10s(&v, &grandchild.token, &cert.cert_der).await;
    assert!(matches!(verdict, Verdict::Revoked { .. }), "{verdict:?}");
    let tokens = app.task_tokens(&task.id).await;
    assert!(tokens.iter().all(|t| t.revoked_at.is_some()), "{tokens:#?}");
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );

    // 2. The intermediate agent: HELPER1 is neither the subject nor the holder
    //    of the grandchild, only in its act chain.
    let (task, [_, _, grandchild], cert) = two_level_chain(&app).await;
    assert!(matches!(
        v.check(&grandchild.token, &cert.cert_der, &required).await,
        Verdict::Valid(_)
    ));
    admin()
        .await
        .revoke(revoke_request(
            Target::Agent(HELPER1.into()),
            "helper compromised",
        ))
        .await
        .unwrap();
    let verdict = revoked_within_10s(&v, &grandchild.token, &cert.cert_der).await;
    assert!(matches!(verdict, Verdict::Revoked { .. }), "{verdict:?}");
    let tokens = app.task_tokens(&task.id).await;
    let unrevoked: Vec<_> = tokens.iter().filter(|t| t.revoked_at.is_none()).collect();
    assert_eq!(
        unrevoked.len(),
        1,
        "only the root, held by AGENT2, lives on"
    );
    assert_eq!(unrevoked[0].depth, 0);

    // 3. The task.
    let (task, [_, _, grandchild], cert) = two_level_chain(&app).await;
    admin()
        .await
        .revoke(revoke_request(
            Target::Task(task.id.clone()),
            "task stopped",
        ))
        .await
        .unwrap();
    let verdict = revoked_within_10s(&v, &grandchild.token, &cert.cert_der).await;
    assert!(matches!(verdict, Verdict::Revoked { .. }), "{verdict:?}");

    // 4. The parent agent: AGENT2's tasks stop, every descendant dies.
    let (task, [_, _, grandchild], cert) = two_level_chain(&app).await;
    admin()
        .await
        .revoke(revoke_request(
            Target::Agent(AGENT2.into()),
            "agent retired",
        ))
        .await
        .unwrap();
    let verdict = revoked_within_10s(&v, &grandchild.token, &cert.cert_der).await;
    assert!(matches!(verdict, Verdict::Revoked { .. }), "{verdict:?}");
    let tokens = app.task_tokens(&task.id).await;
    assert!(tokens.iter().all(|t| t.revoked_at.is_some()), "{tokens:#?}");
}

#[tokio::test]
async fn revoking_a_sub_agent_lapses_the_offers_made_to_it_and_open_offers_are_capped() {
    let app = spawn_app().await;
    let (task, parent, (mut agent, _)) = support_parent(&app, 120).await;
    let eu42 = || scope("crm-api", "customers/eu/42", "read");
    let offer = delegate(
        &mut agent,
        delegate_request(&parent.token, HELPER1, eu42(), 30),
    )
    .await
    .unwrap();
    app.admin(ADMIN)
        .await
        .revoke(revoke_request(
            Target::Agent(HELPER1.into()),
            "helper compromised",
        ))
        .await
        .unwrap();
    let (mut helper, _) = app.tokens(HELPER1).await;
    refused(
        redeem(&mut helper, &offer.delegation_id).await,
        Code::FailedPrecondition,
        "lapsed",
    );
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );

    // One offer was lapsed; fill the parent's open offers up to the cap.
    for _ in 0..mayfly::broker::MAX_OPEN_OFFERS {
        delegate(
            &mut agent,
            delegate_request(&parent.token, HELPER2, eu42(), 30),
        )
        .await
        .unwrap();
    }
    refused(
        delegate(
            &mut agent,
            delegate_request(&parent.token, HELPER2, eu42(), 30),
        )
        .await,
        Code::ResourceExhausted,
        "open delegations",
    );
}
