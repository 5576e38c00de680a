use crate::support::*;
use base64::Engine;
use mayfly::api::pb;
use mayfly::api::pb::revocation_target::Target;
use mayfly::store::{AuditStore, RevocationStore};
use std::collections::HashSet;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn introspection_is_inactive_for_anything_not_currently_valid() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (mut agent, cert) = app.tokens(AGENT).await;
    let minted = agent
        .minted(mint_request(&task.id, "customers/eu/1", 60))
        .await;

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
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let joins = app.revoke_concurrently(REVOKERS, EACH).await;

    // Read part of the stream, then disconnect while revokers are still going.
    let first = next_events(&mut stream, 10).await;
    drop(stream);
    let cursor = first.last().unwrap().sequence;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut resumed = v
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: cursor,
            ..Default::default()
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
    // Nothing further is pending but the heartbeat of a caught-up stream.
    loop {
        match tokio::time::timeout(Duration::from_millis(300), resumed.message()).await {
            Err(_) => break,
            Ok(Ok(Some(pb::WatchRevocationsResponse {
                kind: Some(pb::watch_revocations_response::Kind::Heartbeat(_)),
            }))) => continue,
            Ok(other) => panic!("no event beyond the last one: {other:?}"),
        }
    }
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
        .find(|e| e.action == mayfly::domain::audit::Action::MisuseReported)
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

// --- A revocation stream that never lies (issue 13) ---------------------------

/// Heartbeats every 100 ms, so a stream reads the store often.
fn fast_heartbeats() -> Settings {
    Settings::new().watch_heartbeat(Duration::from_millis(100))
}

/// Opens a revocation watch as the verifier, refused or not.
async fn open_watch(
    app: &TestApp,
    req: pb::WatchRevocationsRequest,
) -> Result<tonic::Streaming<pb::WatchRevocationsResponse>, tonic::Status> {
    app.verifier(VERIFIER)
        .await
        .watch_revocations(req)
        .await
        .map(|r| r.into_inner())
}

fn after(after_sequence: u64) -> pb::WatchRevocationsRequest {
    pb::WatchRevocationsRequest {
        after_sequence,
        ..Default::default()
    }
}

/// The next message that is not an event: `Ok(heartbeat sequence)`, or the
/// status the stream ended with (failing after 10 s, or if it just closes).
async fn next_heartbeat(
    stream: &mut tonic::Streaming<pb::WatchRevocationsResponse>,
) -> Result<u64, tonic::Status> {
    use pb::watch_revocations_response::Kind;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a heartbeat or an error within 10 s")?
            .expect("the stream stays open");
        if let Some(Kind::Heartbeat(hb)) = msg.kind {
            return Ok(hb.sequence);
        }
    }
}

fn agent_of(e: &pb::RevocationEvent) -> String {
    match e.target.clone().and_then(|t| t.target) {
        Some(Target::Agent(a)) => a,
        other => panic!("not an agent revocation: {other:?}"),
    }
}

/// Asserts a resync refusal naming the cursor and the store's head.
#[track_caller]
fn assert_resync(status: &tonic::Status, cursor: u64, head: u64) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let m = status.message();
    assert!(
        m.contains(&format!("revocation cursor {cursor} "))
            && m.contains(&format!("last revocation is {head}"))
            && m.contains("resync"),
        "{m}"
    );
}

/// Rolls the store's revocations back to what it held at sequence `to`, as a
/// restore from a backup or a failover to a lagging standby would (as the
/// database's superuser, behind the broker's back, its triggers off). Tokens and tasks are left
/// as they are: the watch stream reads revocations only.
pub async fn roll_back_revocations(db_url: &str, to: u64) {
    use sqlx::Connection;
    // One transaction: a stream reading in between must not see the events
    // gone under the old head.
    let statements = [
        format!("DELETE FROM revocations WHERE seq > {to}"),
        format!(
            "UPDATE revocation_counter SET last_seq = {to},
             last_at = coalesce((SELECT at FROM revocations WHERE seq = {to}), last_at)"
        ),
    ];
    if db_url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(db_url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        for s in statements {
            sqlx::query(sqlx::AssertSqlSafe(s))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        // As a restore does (pg_restore --disable-triggers): the guard that
        // keeps young revocation events from being deleted does not apply.
        sqlx::query("SET LOCAL session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .unwrap();
        for s in statements {
            sqlx::query(sqlx::AssertSqlSafe(s))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn a_cursor_ahead_of_the_store_is_refused_and_no_heartbeat_claims_more_than_the_store_holds()
{
    let app = spawn_with(std::sync::Arc::new(Pki::new()), fast_heartbeats()).await;
    app.revoke_agents("a", 2).await;
    let head = app.store().await.last_revocation_seq().await.unwrap();
    assert_eq!(head, 2);
    for cursor in [0, 1, 2, 3, 677, u64::MAX] {
        match open_watch(&app, after(cursor)).await {
            Ok(mut stream) => {
                let beat = next_heartbeat(&mut stream).await;
                assert_eq!(beat.ok(), Some(head), "opened at {cursor}");
                assert!(cursor <= head, "a cursor ahead of the head was accepted");
            }
            Err(status) => {
                assert!(cursor > head, "refused at {cursor}: {status:?}");
                assert_resync(&status, cursor, head);
            }
        }
    }
    // Events committed later are delivered to streams opened at the head, and
    // heartbeats follow the head.
    let mut stream = open_watch(&app, after(head)).await.unwrap();
    let seqs = app.revoke_agents("b", 2).await;
    let got: Vec<u64> = next_events(&mut stream, 2)
        .await
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(got, seqs);
    assert_eq!(next_heartbeat(&mut stream).await.ok(), Some(4));
}

/// A stream at sequence 5 whose store is rolled back to 2 ends with the resync
/// status; its cursor is refused; from 0 the store's history is served.
async fn a_rolled_back_store_ends_the_stream_and_refuses_its_cursor(app: &TestApp) {
    app.revoke_agents("before", 5).await;
    let mut stream = open_watch(app, after(0)).await.unwrap();
    let sent = next_events(&mut stream, 5).await;
    assert_eq!(next_heartbeat(&mut stream).await.ok(), Some(5));

    roll_back_revocations(&app.db_url, 2).await;
    let rolled_back = tokio::time::Instant::now();
    let status = loop {
        match next_heartbeat(&mut stream).await {
            // Reads made before the rollback may still be on their way (on a
            // loaded machine for a while); a stream that goes on at 5 for long
            // after it has not noticed.
            Ok(5) if rolled_back.elapsed() < Duration::from_secs(5) => continue,
            Ok(other) => panic!("a heartbeat at {other} after the rollback to 2"),
            Err(status) => break status,
        }
    };
    assert_resync(&status, 5, 2);
    let refused = open_watch(app, after(5))
        .await
        .expect_err("cursor 5 refused");
    assert_resync(&refused, 5, 2);

    // Revocations committed after the restore reuse 3..5: served from 0.
    let reused = app.revoke_agents("after", 4).await;
    assert_eq!(reused, [3, 4, 5, 6]);
    let mut again = open_watch(app, after(0)).await.unwrap();
    let history = next_events(&mut again, 6).await;
    assert_eq!(history[..2], sent[..2], "what the store kept, as it was");
    let agents: Vec<String> = history[2..].iter().map(agent_of).collect();
    let new: Vec<String> = (0..4)
        .map(|i| format!("spiffe://example.org/agent/after-{i}"))
        .collect();
    assert_eq!(
        agents, new,
        "the events under the reused numbers are the new ones"
    );
    assert_eq!(next_heartbeat(&mut again).await.ok(), Some(6));
}

#[tokio::test]
async fn a_store_rolled_back_under_an_open_stream_ends_it_with_the_resync_status() {
    let app = spawn_with(std::sync::Arc::new(Pki::new()), fast_heartbeats()).await;
    a_rolled_back_store_ends_the_stream_and_refuses_its_cursor(&app).await;
}

#[tokio::test]
async fn a_sqlite_store_rolled_back_under_an_open_stream_ends_it_with_the_resync_status() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/mayfly.db", dir.path().display());
    let app = spawn_with(
        std::sync::Arc::new(Pki::new()),
        fast_heartbeats().database(&url),
    )
    .await;
    a_rolled_back_store_ends_the_stream_and_refuses_its_cursor(&app).await;
}

#[tokio::test]
async fn a_store_rolled_back_and_grown_past_the_cursor_again_ends_the_stream_instead_of_skipping() {
    // No heartbeat and no poll: the stream reads only when woken by a commit.
    let app = spawn_with(
        std::sync::Arc::new(Pki::new()),
        Settings::new()
            .watch_heartbeat(Duration::from_secs(3600))
            .watch_poll(Duration::from_secs(3600)),
    )
    .await;
    app.revoke_agents("before", 5).await;
    let mut stream = open_watch(&app, after(0)).await.unwrap();
    next_events(&mut stream, 5).await;

    roll_back_revocations(&app.db_url, 2).await;
    // 3..5 under reused numbers, then 6, which wakes the stream: sending 6 alone
    // would skip the new 3..5 for good.
    assert_eq!(app.revoke_agents("after", 4).await, [3, 4, 5, 6]);
    // The heartbeat it sent once caught up at 5 (before the rollback) may come
    // first; then the end, never an event.
    loop {
        let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an answer within 10 s");
        match end {
            Ok(Some(pb::WatchRevocationsResponse {
                kind: Some(pb::watch_revocations_response::Kind::Heartbeat(hb)),
            })) if hb.sequence == 5 => continue,
            Err(status) => break assert_resync(&status, 5, 6),
            Ok(msg) => {
                panic!("the stream went on after the store's history was replaced: {msg:?}")
            }
        }
    }
}

/// How a watch opened with `req` answers first: the status it is refused or
/// ended with, or `None` when it serves (an event or a heartbeat).
async fn refusal(app: &TestApp, req: pb::WatchRevocationsRequest) -> Option<tonic::Status> {
    let mut stream = match open_watch(app, req).await {
        Ok(s) => s,
        Err(status) => return Some(status),
    };
    match tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an answer within 10 s")
    {
        Ok(Some(_)) => None,
        Ok(None) => panic!("the stream closed without an answer"),
        Err(status) => Some(status),
    }
}

#[tokio::test]
async fn a_cursor_whose_event_the_store_replaced_is_refused_when_the_verifier_names_its_time() {
    let app = spawn_with(std::sync::Arc::new(Pki::new()), fast_heartbeats()).await;
    app.revoke_agents("before", 5).await;
    let mut stream = open_watch(&app, after(0)).await.unwrap();
    let old = next_events(&mut stream, 5).await.remove(4);
    drop(stream);

    // Restored to 2, then grown past 5 again (time has moved on meanwhile).
    roll_back_revocations(&app.db_url, 2).await;
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(app.revoke_agents("after", 4).await, [3, 4, 5, 6]);
    let new = next_events(&mut open_watch(&app, after(4)).await.unwrap(), 1)
        .await
        .remove(0);
    assert_ne!(old.at, new.at);

    let claim = |at| pb::WatchRevocationsRequest {
        after_sequence: 5,
        after_event_at: at,
    };
    let status = refusal(&app, claim(old.at)).await.expect("refused");
    assert_resync(&status, 5, 6);
    assert!(
        status.message().contains("names another event"),
        "{status:?}"
    );
    // The event as the store holds it, or no time (only its presence can then be
    // checked): served.
    assert!(refusal(&app, claim(new.at)).await.is_none());
    assert!(refusal(&app, claim(None)).await.is_none());
}
