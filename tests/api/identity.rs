use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use mayfly::identity::devcerts::{DevCa, SvidSpec};
use rcgen::KeyUsagePurpose;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

async fn list_tasks_as(
    app: &TestApp,
    spec: &SvidSpec,
) -> Result<pb::ListTasksResponse, tonic::Status> {
    let id = app.issue(spec);
    let ch = match app.channel_with(Some(&id)).await {
        Ok(ch) => ch,
        Err(e) => return Err(tonic::Status::unavailable(format!("connect failed: {e}"))),
    };
    TaskServiceClient::new(ch)
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_call_without_a_client_certificate_is_unauthenticated() {
    let app = spawn_app().await;
    let ch = app.channel_with(None).await.unwrap();
    let err = TaskServiceClient::new(ch)
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("no client certificate"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn malformed_svids_are_unauthenticated_with_the_reason() {
    let app = spawn_app().await;
    let base = SvidSpec::workload(ORCH);
    let cases: Vec<(SvidSpec, &str)> = vec![
        (
            {
                let mut s = base.clone();
                s.uris.clear();
                s.dns = vec!["orch.example.org".into()];
                s
            },
            "no URI SAN",
        ),
        (
            {
                let mut s = base.clone();
                s.uris.push(ORCH2.into());
                s
            },
            "2 URI SANs",
        ),
        (
            {
                let mut s = base.clone();
                s.uris = vec!["https://example.org/orchestrator/o1".into()];
                s
            },
            "not a spiffe:// URI",
        ),
        (
            {
                let mut s = base.clone();
                s.uris = vec!["spiffe://example.org/orchestrator/../admin".into()];
                s
            },
            "not a valid SPIFFE ID",
        ),
        (
            {
                let mut s = base.clone();
                s.uris = vec!["spiffe://example.org".into()];
                s
            },
            "needs a path",
        ),
        (
            {
                let mut s = base.clone();
                s.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
                s
            },
            "lacks digitalSignature",
        ),
        (
            {
                let mut s = base.clone();
                s.uris = vec!["spiffe://other.org/orchestrator/o1".into()];
                s
            },
            "trust domain \"other.org\" is not configured",
        ),
    ];
    for (spec, want) in cases {
        let err = list_tasks_as(&app, &spec).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{want}: {err:?}");
        assert!(
            err.message().contains(want),
            "want {want:?} in {:?}",
            err.message()
        );
    }
    // The well-formed SVID of the same identity is accepted.
    assert!(list_tasks_as(&app, &base).await.is_ok());
}

#[tokio::test]
async fn an_expired_svid_or_a_ca_leaf_is_refused_at_the_handshake() {
    let app = spawn_app().await;
    let mut expired = SvidSpec::workload(ORCH);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    expired.not_before = expired.not_after - time::Duration::hours(1);
    let mut ca_leaf = SvidSpec::workload(ORCH);
    ca_leaf.is_ca = true;
    ca_leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    for spec in [expired, ca_leaf] {
        // The TLS layer refuses the chain (the reason is logged by the broker);
        // under TLS 1.3 the client learns it on its first call.
        let err = list_tasks_as(&app, &spec).await.unwrap_err();
        assert_ne!(err.code(), Code::Ok);
        assert!(
            matches!(
                err.code(),
                Code::Unauthenticated | Code::Unknown | Code::Unavailable | Code::Internal
            ),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_certificate_from_an_unconfigured_ca_is_refused() {
    let app = spawn_app().await;
    let rogue = DevCa::new(TD).unwrap();
    let id = rogue.svid(ORCH).unwrap();
    let result = match app.channel_with(Some(&id)).await {
        Ok(ch) => TaskServiceClient::new(ch)
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(result.is_err());
}

#[tokio::test]
async fn an_svid_must_chain_to_its_own_trust_domain_bundle() {
    let pki = Arc::new(Pki::new());
    let other = DevCa::new("partner.org").unwrap();
    let other_bundle = pki.path("partner.pem");
    std::fs::write(&other_bundle, other.cert_pem()).unwrap();
    let app = spawn_with(
        pki.clone(),
        Settings::new().trust_domain("partner.org", other_bundle),
    )
    .await;
    // partner.org's CA signing an example.org identity: the chain is good for the
    // TLS layer (partner.org is trusted) but not for example.org.
    let forged = other.issue(&SvidSpec::workload(ORCH)).unwrap();
    let ch = app.channel_with(Some(&forged)).await.unwrap();
    let err = TaskServiceClient::new(ch)
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message()
            .contains("does not chain to the bundle of trust domain \"example.org\""),
        "{}",
        err.message()
    );
    // A partner.org identity from partner.org's CA is authenticated (it has no role).
    let partner = other.svid("spiffe://partner.org/orchestrator/x").unwrap();
    let ch = app.channel_with(Some(&partner)).await.unwrap();
    let err = TaskServiceClient::new(ch)
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_role_that_may_not_make_the_call_is_permission_denied() {
    let app = spawn_app().await;
    // An agent calling AdminService.
    let (ch, _) = app.channel(AGENT).await;
    let err = pb::admin_service_client::AdminServiceClient::new(ch)
        .revoke(revoke_request(
            pb::revocation_target::Target::All(true),
            "x",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("admin role"), "{}", err.message());
    // An agent opening a task.
    let err = app
        .tasks(AGENT)
        .await
        .start_task(start_request(AGENT, 60))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // An orchestrator minting.
    let task = app.open_task(AGENT, 600).await;
    let (mut orch_tokens, _) = app.tokens(ORCH).await;
    let err = orch_tokens
        .refused(mint_request(&task.id, "customers/eu/1", 60))
        .await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("agent role"), "{}", err.message());
    // A verifier revoking.
    let err = app
        .admin(VERIFIER)
        .await
        .revoke(revoke_request(
            pb::revocation_target::Target::Task(task.id.clone()),
            "x",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn every_role_refusal_is_audited_with_the_caller_the_method_and_the_reason() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    // An agent revoking, an orchestrator minting, a verifier listing tasks.
    let err = app
        .admin(AGENT)
        .await
        .revoke(revoke_request(
            pb::revocation_target::Target::All(true),
            "x",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let (mut orch_tokens, _) = app.tokens(ORCH).await;
    let err = orch_tokens
        .refused(mint_request(&task.id, "customers/eu/1", 60))
        .await;
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = app
        .tasks(VERIFIER)
        .await
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let cases = [
        (AGENT, "mayfly.v1.AdminService/Revoke", "admin"),
        (ORCH, "mayfly.v1.TokenService/MintToken", "agent"),
        (
            VERIFIER,
            "mayfly.v1.TaskService/ListTasks",
            "orchestrator or admin",
        ),
    ];
    for (caller, method, roles) in cases {
        let denied: Vec<AuditRow> = app
            .audit_by(caller)
            .await
            .into_iter()
            .filter(|e| e.action == "call_denied")
            .collect();
        assert_eq!(denied.len(), 1, "{caller}: {denied:?}");
        let e = &denied[0];
        assert_eq!(e.outcome, "deny");
        assert_eq!(e.detail["method"], method, "{e:?}");
        assert_eq!(
            e.reason.as_deref(),
            Some(format!("{caller} does not hold the {roles} role this call requires").as_str())
        );
    }
    // Nothing was revoked: the refused Revoke took no sequence number.
    let r = app
        .admin(ADMIN)
        .await
        .revoke(revoke_request(
            pb::revocation_target::Target::All(true),
            "first real one",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.event.unwrap().sequence, 1);
}

#[tokio::test]
async fn a_call_without_a_valid_svid_is_not_audited() {
    let app = spawn_app().await;
    let ch = app.channel_with(None).await.unwrap();
    let err = TaskServiceClient::new(ch)
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let store = app.store().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(store.postgres_pool().expect("a PostgreSQL store"))
        .await
        .unwrap();
    assert_eq!(n, 0, "there is no trustworthy caller to record");
}

#[tokio::test]
async fn a_connection_that_outlives_its_svid_is_refused() {
    let app = spawn_app().await;
    let mut tasks = app.tasks(ORCH).await;
    tasks
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap();
    // The SVID is valid for a day; move the broker's clock past that.
    app.clock
        .advance(std::time::Duration::from_secs(2 * 24 * 3600));
    let err = tasks
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message()
            .contains("expired since this connection was made"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_revocation_watch_ends_when_the_verifiers_svid_expires() {
    let app = spawn_app().await;
    let mut watch = app.watch(0).await;
    app.clock
        .advance(std::time::Duration::from_secs(2 * 24 * 3600));
    let err = after_heartbeats(&mut watch).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("SVID expired"), "{}", err.message());
}

#[tokio::test]
async fn a_token_never_outlives_the_certificate_it_is_bound_to() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 3000).await;
    let mut spec = SvidSpec::workload(AGENT);
    // The broker judges validity by its own (manual) clock.
    use mayfly::clock::Clock;
    spec.not_after = app.clock.now() + time::Duration::seconds(100);
    let short = app.issue(&spec);
    let ch = app.channel_with(Some(&short)).await.unwrap();
    let minted = pb::token_service_client::TokenServiceClient::new(ch)
        .minted(mint_request(&task.id, "customers/eu/1", 300))
        .await;
    assert!(
        minted.ttl_seconds <= 100 && minted.ttl_seconds >= 95,
        "{}",
        minted.ttl_seconds
    );
}

#[tokio::test]
async fn refused_handshakes_are_counted_and_summed_up_in_a_line_per_interval_not_logged_one_by_one()
{
    let pki = Pki::new();
    let db = fresh_database().await;
    let cfg = Settings::new()
        .database(&db.url)
        .limits(Limits {
            log_summary_interval: Some(Duration::from_secs(1)),
            ..Limits::default()
        })
        .write(&pki);
    let served = Served::start(&cfg).await;

    let mut expired = SvidSpec::workload(ORCH);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    expired.not_before = expired.not_after - time::Duration::hours(1);
    let mut ca_leaf = SvidSpec::workload(ORCH);
    ca_leaf.is_ca = true;
    ca_leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let rogue_ca = DevCa::new(TD).unwrap();
    let rogue = rogue_ca.svid(ORCH).unwrap();
    for id in [
        pki.ca.issue(&expired).unwrap(),
        pki.ca.issue(&ca_leaf).unwrap(),
        rogue_ca.svid(ORCH).unwrap(),
    ] {
        assert!(served.list_tasks_as(&pki.ca, Some(&id)).await.is_err());
    }
    // An attacker repeating a refused handshake.
    const REPEATS: usize = 100;
    for _ in 0..REPEATS {
        assert!(served.list_tasks_as(&pki.ca, Some(&rogue)).await.is_err());
    }
    // And a well-formed SVID still gets through.
    let good = pki.ca.svid(ORCH).unwrap();
    served.list_tasks_as(&pki.ca, Some(&good)).await.unwrap();
    let (_, metrics) = http_get(served.http, "/metrics").await;
    let closed = metric(
        &metrics,
        "mayfly_connections_closed_total{listener=\"grpc\",reason=\"handshake_failed\"}",
    );
    assert!(closed >= (REPEATS + 3) as f64, "{closed}\n{metrics}");
    // Past a summary interval.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (_, log) = served.stop().await;
    assert!(!log.contains("TLS handshake failed"), "{log}");
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connections refused or closed by the broker"))
        .collect();
    // One line per interval with refusals, whatever their number.
    assert!(
        (1..=4).contains(&summaries.len()),
        "{} summary lines:\n{log}",
        summaries.len()
    );
    let counted: usize = summaries
        .iter()
        .filter_map(|l| l.split("handshake_failed=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|n| n.parse::<usize>().ok())
        .sum();
    // A client may retry a refused handshake: at least one each.
    assert!(counted >= REPEATS + 3, "{counted}: {log}");
    let all = summaries.join("\n");
    // The rogue CA has our CA's name, so the chain fails on its signature.
    for reason in ["certificate expired", "CaUsedAsEndEntity", "BadSignature"] {
        assert!(all.contains(reason), "no {reason:?} in:\n{all}");
    }
    assert!(log.len() < 16 * 1024, "{} bytes of log", log.len());
}
