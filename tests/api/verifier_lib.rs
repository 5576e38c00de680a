//! The verifier library (`mayfly::verifier`) against the real broker: keys from the
//! JWKS, certificate binding, scope, the live revocation set, failing closed.
#![cfg(feature = "verifier")]
use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::revocation_target::Target;
use mayfly::identity::devcerts::Issued;
use mayfly::verifier::{RequiredScope, Verdict, Verifier, VerifierConfig};
use std::sync::Arc;
use std::time::Duration;

const ISSUER: &str = "https://mayfly.test";

/// Heartbeats every 100 ms, so a verifier syncs fast and notices silence fast.
fn fast_heartbeats() -> Settings {
    Settings::new().watch_heartbeat(Duration::from_millis(100))
}

/// The config of a `crm-api` verifier on the app's clock, with a staleness bound
/// generous enough for a loaded test machine and a quick reconnect.
fn config(app: &TestApp) -> VerifierConfig {
    let mut c = VerifierConfig::new(ISSUER, "crm-api");
    c.clock = Arc::new(app.clock.clone());
    c.staleness = Duration::from_secs(5);
    c.reconnect_min = Duration::from_millis(20);
    c.reconnect_max = Duration::from_millis(200);
    c
}

/// A verifier connected to `app` as VERIFIER, caught up with the revocations.
async fn verifier_with(app: &TestApp, c: VerifierConfig) -> Verifier {
    let v = Verifier::connect(app.channel(VERIFIER).await.0, c)
        .await
        .expect("verifier connects");
    synced(&v).await;
    v
}

async fn synced(v: &Verifier) {
    tokio::time::timeout(Duration::from_secs(10), v.synced())
        .await
        .expect("the verifier catches up within 10 s");
}

fn read(resource: &str) -> RequiredScope {
    RequiredScope::new("read", resource).unwrap()
}

/// Checks until the verdict satisfies `done` (every 20 ms, at most 10 s); the
/// last verdict.
async fn check_until(
    v: &Verifier,
    token: &str,
    cert: &[u8],
    required: &RequiredScope,
    done: impl Fn(&Verdict) -> bool,
) -> Verdict {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let verdict = v.check(token, cert, required).await;
        if done(&verdict) || tokio::time::Instant::now() >= deadline {
            return verdict;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_revoked(v: &Verdict) -> bool {
    matches!(v, Verdict::Revoked { .. })
}

/// A task for `agent` and one token for `customers/eu/<n>`, with the agent's
/// certificate.
async fn task_and_token(app: &TestApp, agent: &str, n: u32) -> (pb::Task, String, Issued) {
    let task = app.open_task(agent, 600).await;
    let (mut tokens, cert) = app.tokens(agent).await;
    let minted = tokens
        .minted(mint_request(&task.id, &format!("customers/eu/{n}"), 60))
        .await;
    (task, minted.token, cert)
}

async fn revoke(app: &TestApp, target: Target) -> u64 {
    app.admin(ADMIN)
        .await
        .revoke(revoke_request(target, "verifier library test"))
        .await
        .expect("revoke")
        .into_inner()
        .event
        .expect("the revocation event")
        .sequence
}

#[tokio::test]
async fn a_minted_token_is_valid_only_for_its_audience_scope_certificate_and_time() {
    let app = spawn_with(Arc::new(Pki::new()), fast_heartbeats()).await;
    let mut c = config(&app);
    c.report_misuse = false;
    let v = verifier_with(&app, c.clone()).await;
    let (task, token, cert) = task_and_token(&app, AGENT, 1).await;
    let der = &cert.cert_der;
    let eu1 = read("customers/eu/1");

    let Verdict::Valid(claims) = v.check(&token, der, &eu1).await else {
        panic!("a fresh token with its certificate is valid");
    };
    assert_eq!(
        (claims.sub.as_str(), claims.task.as_str()),
        (AGENT, task.id.as_str())
    );

    // The same agent, another certificate: a stolen token.
    let other = app.pki.ca.svid(AGENT).unwrap();
    assert_eq!(
        v.check(&token, &other.cert_der, &eu1).await,
        Verdict::NotBoundToClient
    );
    assert_eq!(
        v.check(&token, der, &read("customers/eu/2")).await,
        Verdict::ScopeNotCovered
    );
    let write = RequiredScope::new("write", "customers/eu/1").unwrap();
    assert_eq!(v.check(&token, der, &write).await, Verdict::ScopeNotCovered);

    let mut tickets = c.clone();
    tickets.audience = "tickets".into();
    let for_tickets = verifier_with(&app, tickets).await;
    assert_eq!(
        for_tickets.check(&token, der, &eu1).await,
        Verdict::WrongAudience
    );
    let mut elsewhere = c.clone();
    elsewhere.issuer = "https://other.test".into();
    let other_issuer = verifier_with(&app, elsewhere).await;
    assert_eq!(
        other_issuer.check(&token, der, &eu1).await,
        Verdict::WrongIssuer
    );

    // Forged, foreign and garbage tokens.
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged_claims = claims.clone();
    forged_claims.scope = "read:customers/**".into();
    let payload = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&forged_claims).unwrap())
    };
    let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
    assert_eq!(v.check(&forged, der, &eu1).await, Verdict::BadSignature);
    let rogue = mayfly::token::SigningKey::generate().unwrap();
    let foreign = rogue.sign(&claims).unwrap();
    assert_eq!(v.check(&foreign, der, &eu1).await, Verdict::UnknownKey);
    assert_eq!(v.check("not-a-token", der, &eu1).await, Verdict::Malformed);

    // Past exp plus the 5 s leeway.
    app.clock.advance(Duration::from_secs(66));
    assert_eq!(v.check(&token, der, &eu1).await, Verdict::Expired);
}

#[tokio::test]
async fn a_token_presented_with_another_certificate_is_reported_and_its_task_deviates() {
    let app = spawn_with(Arc::new(Pki::new()), fast_heartbeats()).await;
    let v = verifier_with(&app, config(&app)).await;
    let (task, token, cert) = task_and_token(&app, AGENT, 1).await;
    let thief = app.pki.ca.svid(AGENT2).unwrap();

    assert_eq!(
        v.check(&token, &thief.cert_der, &read("customers/eu/1"))
            .await,
        Verdict::NotBoundToClient
    );
    // The report runs in the background; the broker deviates the task, and its
    // revocation reaches the verifier.
    let verdict = check_until(
        &v,
        &token,
        &cert.cert_der,
        &read("customers/eu/1"),
        is_revoked,
    )
    .await;
    assert!(is_revoked(&verdict), "{verdict:?}");
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Deviated as i32
    );
    let reports: Vec<_> = app
        .audit_by(VERIFIER)
        .await
        .into_iter()
        .filter(|e| e.action == "misuse_reported")
        .collect();
    assert_eq!(reports.len(), 1, "one report: {reports:?}");
    let evidence = reports[0].detail["evidence"].as_str().unwrap_or_default();
    assert!(
        evidence.contains(&mayfly::identity::thumbprint(&thief.cert_der)),
        "{evidence}"
    );
    assert!(
        !evidence.contains(&token),
        "the token is never in the evidence"
    );
}

#[tokio::test]
async fn revoking_a_token_a_task_or_an_agent_reaches_the_verifier() {
    let app = spawn_with(Arc::new(Pki::new()), fast_heartbeats()).await;
    let v = verifier_with(&app, config(&app)).await;
    let (task1, t1, cert) = task_and_token(&app, AGENT, 1).await;
    let (task2, t2, cert2) = task_and_token(&app, AGENT, 3).await;
    let (_, t3, cert3) = task_and_token(&app, AGENT2, 4).await;
    // A second token of task 1, on a connection with another certificate.
    let (mut tokens, sibling_cert) = app.tokens(AGENT).await;
    let sibling = tokens
        .minted(mint_request(&task1.id, "customers/eu/2", 60))
        .await
        .token;
    let ok = |v: &Verdict| v.is_valid();
    for (t, der, n) in [
        (&t1, &cert.cert_der, 1),
        (&sibling, &sibling_cert.cert_der, 2),
        (&t2, &cert2.cert_der, 3),
        (&t3, &cert3.cert_der, 4),
    ] {
        let r = read(&format!("customers/eu/{n}"));
        let verdict = v.check(t, der, &r).await;
        assert!(verdict.is_valid(), "{verdict:?}");
    }

    let claims1 = match v.check(&t1, &cert.cert_der, &read("customers/eu/1")).await {
        Verdict::Valid(c) => c,
        other => panic!("{other:?}"),
    };
    let seq = revoke(&app, Target::Token(claims1.jti.clone())).await;
    let verdict = check_until(&v, &t1, &cert.cert_der, &read("customers/eu/1"), is_revoked).await;
    assert_eq!(verdict, Verdict::Revoked { sequence: seq });
    assert!(
        check_until(
            &v,
            &sibling,
            &sibling_cert.cert_der,
            &read("customers/eu/2"),
            ok
        )
        .await
        .is_valid(),
        "the other token of the task stays valid"
    );

    // Completing a task revokes all its tokens.
    app.tasks(ORCH)
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: task2.id.clone(),
        })
        .await
        .unwrap();
    let verdict = check_until(
        &v,
        &t2,
        &cert2.cert_der,
        &read("customers/eu/3"),
        is_revoked,
    )
    .await;
    assert!(is_revoked(&verdict), "{verdict:?}");

    let seq = revoke(&app, Target::Agent(AGENT2.into())).await;
    let verdict = check_until(
        &v,
        &t3,
        &cert3.cert_der,
        &read("customers/eu/4"),
        is_revoked,
    )
    .await;
    assert_eq!(verdict, Verdict::Revoked { sequence: seq });
    assert_eq!(v.cursor(), seq, "every event applied, in order");
}

#[tokio::test]
async fn tokens_minted_after_an_agent_or_workflow_revocation_are_valid() {
    let app = spawn_with(Arc::new(Pki::new()), fast_heartbeats()).await;
    let v = verifier_with(&app, config(&app)).await;
    let (_, old, cert) = task_and_token(&app, AGENT, 1).await;
    let seq = revoke(&app, Target::Agent(AGENT.into())).await;
    let verdict = check_until(
        &v,
        &old,
        &cert.cert_der,
        &read("customers/eu/1"),
        is_revoked,
    )
    .await;
    assert_eq!(verdict, Verdict::Revoked { sequence: seq });

    // Beyond the 2 s skew margin, a new task's token is not concerned.
    app.clock.advance(Duration::from_secs(5));
    let (_, new, new_cert) = task_and_token(&app, AGENT, 2).await;
    let verdict = v
        .check(&new, &new_cert.cert_der, &read("customers/eu/2"))
        .await;
    assert!(verdict.is_valid(), "{verdict:?}");
    assert!(is_revoked(
        &v.check(&old, &cert.cert_der, &read("customers/eu/1")).await
    ));

    // The same for a workflow.
    let seq = revoke(&app, Target::Workflow("support".into())).await;
    let verdict = check_until(
        &v,
        &new,
        &new_cert.cert_der,
        &read("customers/eu/2"),
        is_revoked,
    )
    .await;
    assert_eq!(verdict, Verdict::Revoked { sequence: seq });
    app.clock.advance(Duration::from_secs(5));
    let (_, newer, cert) = task_and_token(&app, AGENT, 3).await;
    let verdict = v
        .check(&newer, &cert.cert_der, &read("customers/eu/3"))
        .await;
    assert!(verdict.is_valid(), "{verdict:?}");

    // And for everything.
    let seq = revoke(&app, Target::All(true)).await;
    let verdict = check_until(
        &v,
        &newer,
        &cert.cert_der,
        &read("customers/eu/3"),
        is_revoked,
    )
    .await;
    assert_eq!(verdict, Verdict::Revoked { sequence: seq });
}

#[tokio::test]
async fn the_verifier_fails_closed_once_the_broker_has_been_silent_past_the_bound() {
    let app = spawn_with(Arc::new(Pki::new()), fast_heartbeats()).await;
    let mut c = config(&app);
    c.staleness = Duration::from_millis(300);
    let v = verifier_with(&app, c).await;
    let (_, token, cert) = task_and_token(&app, AGENT, 1).await;
    let r = read("customers/eu/1");
    assert!(v.check(&token, &cert.cert_der, &r).await.is_valid());

    app.stop().await.unwrap();
    let started = tokio::time::Instant::now();
    let verdict = check_until(&v, &token, &cert.cert_der, &r, |v| *v == Verdict::Stale).await;
    assert_eq!(verdict, Verdict::Stale);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_key_of_another_replica_is_fetched_when_a_token_first_names_it() {
    let pki = Arc::new(Pki::new());
    let a = spawn_with(pki.clone(), fast_heartbeats()).await;
    // Connected before B exists: its keys are not in the JWKS fetched at start.
    let v = verifier_with(&a, config(&a)).await;
    let b = spawn_replica(pki.clone(), &a, fast_heartbeats()).await;
    let (_, token, cert) = task_and_token(&b, AGENT, 1).await;
    let verdict = v
        .check(&token, &cert.cert_der, &read("customers/eu/1"))
        .await;
    assert!(verdict.is_valid(), "{verdict:?}");

    // A key nobody publishes stays unknown, and is not fetched again at once.
    let Verdict::Valid(claims) = verdict else {
        unreachable!()
    };
    let rogue = mayfly::token::SigningKey::generate().unwrap();
    let foreign = rogue.sign(&claims).unwrap();
    for _ in 0..3 {
        assert_eq!(
            v.check(&foreign, &cert.cert_der, &read("customers/eu/1"))
                .await,
            Verdict::UnknownKey
        );
    }
}

/// A broker with fast heartbeats, and a verifier following it through a proxy
/// the test can cut, synced.
async fn synced_through_proxy(
    tune: impl FnOnce(&mut VerifierConfig),
) -> (TestApp, Proxy, Verifier) {
    let app = spawn_with(Arc::new(Pki::new()), fast_heartbeats()).await;
    let proxy = Proxy::to(app.grpc.to_string()).await;
    let id = app.pki.ca.svid(VERIFIER).unwrap();
    let channel = mtls_channel(proxy.addr, &app.pki.ca, Some(&id))
        .await
        .unwrap();
    let mut c = config(&app);
    tune(&mut c);
    let v = Verifier::connect(channel, c).await.unwrap();
    synced(&v).await;
    (app, proxy, v)
}

#[tokio::test]
async fn revocations_made_while_the_stream_was_cut_are_applied_after_it_reconnects() {
    let (app, proxy, v) = synced_through_proxy(|_| {}).await;
    let (_, t1, cert) = task_and_token(&app, AGENT, 1).await;
    let (task2, t2, cert2) = task_and_token(&app, AGENT, 2).await;
    let (r1, r2) = (read("customers/eu/1"), read("customers/eu/2"));
    let before = v.cursor();

    proxy.cut();
    // Let the cut take effect before anything is revoked.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Verdict::Valid(c1) = v.check(&t1, &cert.cert_der, &r1).await else {
        panic!("valid before the revocation");
    };
    let s1 = revoke(&app, Target::Token(c1.jti)).await;
    app.tasks(ORCH)
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: task2.id.clone(),
        })
        .await
        .unwrap();
    // The verifier cannot have heard: still within the staleness bound, it
    // accepts the token (which is why the bound must stay short).
    assert!(v.check(&t1, &cert.cert_der, &r1).await.is_valid());
    assert_eq!(v.cursor(), before);

    proxy.restore();
    let verdict = check_until(&v, &t1, &cert.cert_der, &r1, is_revoked).await;
    assert_eq!(verdict, Verdict::Revoked { sequence: s1 });
    let verdict = check_until(&v, &t2, &cert2.cert_der, &r2, is_revoked).await;
    assert_eq!(verdict, Verdict::Revoked { sequence: s1 + 1 });
    assert_eq!(
        v.cursor(),
        s1 + 1,
        "resumed from its cursor, both events once"
    );
}

#[tokio::test]
async fn a_verifier_cut_off_turns_stale_and_recovers_when_the_broker_is_back() {
    let (app, proxy, v) = synced_through_proxy(|c| c.staleness = Duration::from_millis(300)).await;
    let (_, token, cert) = task_and_token(&app, AGENT, 1).await;
    let r = read("customers/eu/1");
    assert!(v.check(&token, &cert.cert_der, &r).await.is_valid());

    proxy.cut();
    let verdict = check_until(&v, &token, &cert.cert_der, &r, |v| *v == Verdict::Stale).await;
    assert_eq!(verdict, Verdict::Stale);
    proxy.restore();
    let verdict = check_until(&v, &token, &cert.cert_der, &r, Verdict::is_valid).await;
    assert!(verdict.is_valid(), "{verdict:?}");
}

/// A resource server depends on `mayfly` with `default-features = false,
/// features = ["verifier"]`: none of the broker's dependencies come with it.
#[test]
fn the_verifier_feature_alone_pulls_in_none_of_the_brokers_dependencies() {
    let tree = |features: &[&str]| {
        let out = std::process::Command::new(env!("CARGO"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["tree", "--locked", "-e", "normal", "--prefix", "none"])
            .args(features)
            .output()
            .expect("cargo tree runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let has = |tree: &str, krate: &str| tree.lines().any(|l| l.starts_with(&format!("{krate} v")));
    let server = [
        "sqlx",
        "cedar-policy",
        "axum",
        "clap",
        "rcgen",
        "tracing-subscriber",
        "tonic-health",
    ];
    let full = tree(&[]);
    for krate in server {
        assert!(has(&full, krate), "the broker build should have {krate}");
    }
    let lib = tree(&["--no-default-features", "--features", "verifier"]);
    for krate in server {
        assert!(!has(&lib, krate), "the verifier library pulls in {krate}");
    }
    for krate in ["tonic", "rustls", "ring", "x509-parser"] {
        assert!(has(&lib, krate), "the verifier library needs {krate}");
    }
}

/// Waits until the verifier's cursor is `seq` (at most 10 s).
async fn cursor_reaches(v: &Verifier, seq: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while v.cursor() != seq {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cursor {} never reached {seq}",
            v.cursor()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_verifier_whose_brokers_store_is_restored_turns_stale_resyncs_and_applies_reused_numbers()
{
    // Heartbeats every second: a resync stays stale for at least that long.
    let app = spawn_with(
        Arc::new(Pki::new()),
        Settings::new().watch_heartbeat(Duration::from_secs(1)),
    )
    .await;
    let v = verifier_with(&app, config(&app)).await;
    let (task1, t1, c1) = task_and_token(&app, AGENT, 1).await;
    let (task2, t2, c2) = task_and_token(&app, AGENT, 2).await;
    let (task3, t3, c3) = task_and_token(&app, AGENT2, 3).await;
    let (r1, r2, r3) = (
        read("customers/eu/1"),
        read("customers/eu/2"),
        read("customers/eu/3"),
    );
    // The backup holds event 1; events 2 and 3 are lost by the restore.
    assert_eq!(revoke(&app, Target::Task(task1.id.clone())).await, 1);
    assert_eq!(revoke(&app, Target::Task(task2.id.clone())).await, 2);
    let gone = "spiffe://example.org/agent/gone";
    assert_eq!(revoke(&app, Target::Agent(gone.into())).await, 3);
    let verdict = check_until(&v, &t2, &c2.cert_der, &r2, is_revoked).await;
    assert_eq!(verdict, Verdict::Revoked { sequence: 2 });
    cursor_reaches(&v, 3).await;
    assert!(v.check(&t3, &c3.cert_der, &r3).await.is_valid());

    crate::verifier::roll_back_revocations(&app.db_url, 1).await;
    let verdict = check_until(&v, &t3, &c3.cert_der, &r3, |v| *v == Verdict::Stale).await;
    assert_eq!(
        verdict,
        Verdict::Stale,
        "fails closed once the broker says so"
    );

    // Committed after the restore, under the numbers 2 and 3 the verifier had
    // passed, and one past them.
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(revoke(&app, Target::Task(task3.id.clone())).await, 2);
    let x = "spiffe://example.org/agent/x";
    assert_eq!(revoke(&app, Target::Agent(x.into())).await, 3);
    let y = "spiffe://example.org/agent/y";
    assert_eq!(revoke(&app, Target::Agent(y.into())).await, 4);
    let verdict = check_until(&v, &t3, &c3.cert_der, &r3, is_revoked).await;
    assert_eq!(verdict, Verdict::Revoked { sequence: 2 });
    cursor_reaches(&v, 4).await;
    synced(&v).await;

    // The store's history is applied, and the revocation the restore lost stays
    // in force (under its number of the old history).
    assert_eq!(
        v.check(&t1, &c1.cert_der, &r1).await,
        Verdict::Revoked { sequence: 1 }
    );
    assert_eq!(
        v.check(&t2, &c2.cert_der, &r2).await,
        Verdict::Revoked { sequence: 2 }
    );
    // Fresh again: a token nothing revoked is valid.
    let (_, t5, c5) = task_and_token(&app, AGENT, 5).await;
    let verdict = v.check(&t5, &c5.cert_der, &read("customers/eu/5")).await;
    assert!(verdict.is_valid(), "{verdict:?}");
}

#[tokio::test]
async fn a_verifier_reconnecting_to_a_restored_store_that_has_passed_its_cursor_resyncs() {
    let (app, proxy, v) = synced_through_proxy(|_| {}).await;
    let (task1, t1, c1) = task_and_token(&app, AGENT, 1).await;
    let (task2, t2, c2) = task_and_token(&app, AGENT, 2).await;
    let (r1, r2) = (read("customers/eu/1"), read("customers/eu/2"));
    let kept = "spiffe://example.org/agent/kept";
    assert_eq!(revoke(&app, Target::Agent(kept.into())).await, 1);
    assert_eq!(revoke(&app, Target::Task(task1.id.clone())).await, 2);
    let verdict = check_until(&v, &t1, &c1.cert_der, &r1, is_revoked).await;
    assert_eq!(verdict, Verdict::Revoked { sequence: 2 });
    cursor_reaches(&v, 2).await;

    // While the verifier is cut off (a failover), the store goes back to event
    // 1 and then past 2 again with other events.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(50)).await;
    crate::verifier::roll_back_revocations(&app.db_url, 1).await;
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(revoke(&app, Target::Task(task2.id.clone())).await, 2);
    let z = "spiffe://example.org/agent/z";
    assert_eq!(revoke(&app, Target::Agent(z.into())).await, 3);
    assert!(v.check(&t2, &c2.cert_der, &r2).await.is_valid());

    // Resuming after 2 would skip the new event 2: the broker refuses the cursor,
    // whose event (by its time) is another one now, and the verifier replays
    // from the start.
    proxy.restore();
    let verdict = check_until(&v, &t2, &c2.cert_der, &r2, is_revoked).await;
    assert_eq!(verdict, Verdict::Revoked { sequence: 2 });
    cursor_reaches(&v, 3).await;
    assert!(is_revoked(&v.check(&t1, &c1.cert_der, &r1).await));
}
