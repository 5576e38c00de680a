use crate::helpers::*;
use base64::Engine;
use mayfly::api::pb;
use mayfly::api::pb::revocation_target::Target;
use mayfly::store::AuditStore;
use std::collections::HashSet;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn introspection_is_inactive_for_anything_not_currently_valid() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (mut agent, cert) = app.tokens(AGENT).await;
    let minted = agent
        .mint_token(mint_request(&task.id, "customers/eu/1", 60))
        .await
        .unwrap()
        .into_inner();

    let mut v = app.verifier(VERIFIER).await;
    let active = v
        .introspect(pb::IntrospectRequest {
            token: minted.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(active.active);
    assert_eq!(active.sub, AGENT);
    assert_eq!(active.aud, "crm-api");
    assert_eq!(active.scope, "read:customers/eu/1");
    assert_eq!(active.task_id, task.id);
    assert_eq!(active.jti, minted.jti);
    assert_eq!(
        active.cnf_x5t_s256,
        mayfly::identity::thumbprint(&cert.cert_der)
    );
    let claims: serde_json::Value = serde_json::from_str(&active.claims_json).unwrap();
    assert_eq!(claims["wf"], "support");

    // A bad signature: flip the payload.
    let parts: Vec<&str> = minted.token.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims_v: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims_v["scope"] = "write:customers/eu/1".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims_v.to_string()),
        parts[2]
    );
    // An unknown key: a token signed by a key the broker never published.
    let rogue = mayfly::token::SigningKey::generate().unwrap();
    let claims: mayfly::token::Claims = serde_json::from_value(claims_v.clone()).unwrap();
    let foreign = rogue.sign(&claims).unwrap();
    for bad in [
        forged,
        foreign,
        "garbage".to_string(),
        format!("{}.{}", parts[0], parts[1]),
    ] {
        let r = v
            .introspect(pb::IntrospectRequest { token: bad })
            .await
            .unwrap()
            .into_inner();
        assert!(!r.active);
        assert!(
            r.sub.is_empty() && r.claims_json.is_empty(),
            "an inactive answer carries no claims"
        );
    }
    let err = v
        .introspect(pb::IntrospectRequest {
            token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Expired: move the broker's clock past exp.
    app.clock.advance(Duration::from_secs(61));
    assert!(!introspect_active(&app, &minted.token).await);
}

#[tokio::test]
async fn the_watch_resumes_from_a_cursor_with_concurrent_revokers_missing_nothing_and_repeating_nothing()
 {
    let app = spawn_app().await;
    const REVOKERS: usize = 4;
    const EACH: usize = 15;
    let total = REVOKERS * EACH;

    let mut v = app.verifier(VERIFIER).await;
    let mut stream = v
        .watch_revocations(pb::WatchRevocationsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();

    let mut joins = vec![];
    for r in 0..REVOKERS {
        let mut admin = app.admin(ADMIN).await;
        joins.push(tokio::spawn(async move {
            for i in 0..EACH {
                let agent = format!("spiffe://example.org/agent/r{r}-{i}");
                admin
                    .revoke(revoke_request(Target::Agent(agent), "drill"))
                    .await
                    .unwrap();
            }
        }));
    }

    // Read part of the stream, then disconnect while revokers are still going.
    let first = next_events(&mut stream, 10).await;
    drop(stream);
    let cursor = first.last().unwrap().sequence;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut resumed = v
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: cursor,
        })
        .await
        .unwrap()
        .into_inner();
    let rest = next_events(&mut resumed, total - first.len()).await;
    for j in joins {
        j.await.unwrap();
    }

    let seqs: Vec<u64> = first
        .iter()
        .chain(rest.iter())
        .map(|e| e.sequence)
        .collect();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "gap-free, in order, no repeats"
    );
    let agents: HashSet<String> = first
        .iter()
        .chain(rest.iter())
        .map(|e| match e.target.clone().unwrap().target.unwrap() {
            Target::Agent(a) => a,
            other => panic!("unexpected target {other:?}"),
        })
        .collect();
    assert_eq!(agents.len(), total);
    // Nothing further is pending.
    let extra = tokio::time::timeout(Duration::from_millis(300), resumed.message()).await;
    assert!(extra.is_err(), "no event beyond the last one");
}

#[tokio::test]
async fn the_jwks_is_served_over_grpc_and_http_alike() {
    let app = spawn_app().await;
    let grpc = app
        .verifier(AGENT)
        .await
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    let (status, http) = app.http_get("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    let a: serde_json::Value = serde_json::from_str(&grpc).unwrap();
    let b: serde_json::Value = serde_json::from_str(&http).unwrap();
    assert_eq!(a, b);
    assert_eq!(a["keys"].as_array().unwrap().len(), 1);
    assert_eq!(a["keys"][0]["kty"], "OKP");
    assert_eq!(a["keys"][0]["crv"], "Ed25519");
    assert_eq!(a["keys"][0]["alg"], "EdDSA");
}

fn misuse(token: &str, kind: &str, evidence: &str) -> pb::ReportMisuseRequest {
    pb::ReportMisuseRequest {
        token: token.into(),
        kind: kind.into(),
        evidence: evidence.into(),
    }
}

#[tokio::test]
async fn a_misuse_report_deviates_the_task_and_is_audited_with_the_verifier_and_evidence() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let minted = app.mint(AGENT, &task.id, "customers/eu/1", 60).await;
    let mut watch = app.watch(0).await;
    let r = app
        .verifier(VERIFIER)
        .await
        .report_misuse(misuse(
            &minted.token,
            "binding_mismatch",
            "presented by x5t#S256 q1w2e3",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.task_id, task.id);
    assert!(r.revocation_sequence > 0);
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Deviated as i32
    );
    assert!(!introspect_active(&app, &minted.token).await);
    let ev = next_events(&mut watch, 1).await.remove(0);
    assert_eq!(ev.sequence, r.revocation_sequence);
    assert_eq!(ev.trigger, "deviation");
    assert_eq!(ev.actor, VERIFIER);

    let events = app
        .store()
        .await
        .audit_for_task(task.id.parse().unwrap())
        .await
        .unwrap();
    let report = events
        .iter()
        .find(|e| e.action == mayfly::audit::Action::MisuseReported)
        .expect("the report is audited");
    assert_eq!(report.actor, VERIFIER);
    assert_eq!(report.detail["evidence"], "presented by x5t#S256 q1w2e3");
    assert_eq!(report.detail["kind"], "binding_mismatch");

    // A second report on the ended task is recorded, and changes nothing.
    let again = app
        .verifier(VERIFIER)
        .await
        .report_misuse(misuse(
            &minted.token,
            "out_of_scope",
            "used for customers/us/1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revocation_sequence, 0);
}

#[tokio::test]
async fn bad_misuse_reports_are_refused_naming_what_is_wrong() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let minted = app.mint(AGENT, &task.id, "customers/eu/1", 60).await;
    let mut v = app.verifier(VERIFIER).await;
    let err = v
        .report_misuse(misuse(&minted.token, "suspicious", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("kind:"), "{}", err.message());
    let err = v
        .report_misuse(misuse("not.a.jwt", "binding_mismatch", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("token:"), "{}", err.message());
    // Only verifiers report; an agent cannot get another agent's task revoked.
    let (ch, _) = app.channel(AGENT2).await;
    let err = pb::verifier_service_client::VerifierServiceClient::new(ch)
        .report_misuse(misuse(&minted.token, "binding_mismatch", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );
}
