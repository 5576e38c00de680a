//! Archiving the audit trail over the real server and real mTLS, on PostgreSQL
//! and SQLite: the exported events verify offline, the archive removes them and
//! is audited, `VerifyAudit` still passes from the anchor it shows, a second
//! archive continues from the first; non-admins are refused; bad input and
//! requests that do not match the store are refused with nothing removed.
use crate::support::*;
use mayfly::api::pb;
use mayfly::clock::Clock;
use mayfly::domain::audit::archive::{ArchiveVerifier, Summary, event_line, header_line};
use mayfly::domain::audit::chain::{Checkpoint, Sealed, from_hex, to_hex};
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tonic::Code;

/// A broker on a fresh SQLite database file (kept in the returned directory).
pub async fn spawn_sqlite() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/mayfly.db", dir.path().display());
    let app = spawn_with(Arc::new(Pki::new()), Settings::new().database(&url)).await;
    (app, dir)
}

/// Audit events stored at or below `seq` (0: all), read from the database.
pub async fn stored_events(app: &TestApp, upto: u64) -> i64 {
    let sql = "SELECT count(*) FROM audit_events WHERE $1 = 0 OR seq <= $1";
    let upto = upto as i64;
    if app.db_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&app.db_url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(upto)
            .fetch_one(&mut c)
            .await
            .unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(upto)
            .fetch_one(&mut c)
            .await
            .unwrap()
    }
}

/// A task with two mints, as the agent: four events or so.
async fn work(app: &TestApp) {
    let task = app.open_task(AGENT, 600).await;
    app.mint(AGENT, &task.id, "customers/eu/1", 60).await;
    app.mint(AGENT, &task.id, "customers/eu/2", 60).await;
    sealer_caught_up(app).await;
}

/// Waits until the broker's sealer has sealed what arrived unsealed (on
/// PostgreSQL the mints' events: its one-statement token write does not seal
/// its own yet), as it does within `audit.seal_interval`. The tests' clock
/// jumps ahead faster than that: sealed after a jump, those events would sit in
/// the chain after events dated later, and an archive by time ends at the first
/// of those.
pub async fn sealer_caught_up(app: &TestApp) {
    let sql = "SELECT count(*) FROM audit_events WHERE seq IS NULL";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let unsealed: i64 = if app.db_url.starts_with("sqlite:") {
            let mut c = sqlx::SqliteConnection::connect(&app.db_url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
        } else {
            let mut c = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
        };
        if unsealed == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unsealed} events still unsealed after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ts(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

fn point(c: Option<&pb::AuditCheckpoint>) -> Checkpoint {
    let c = c.expect("a checkpoint");
    Checkpoint::new(c.sequence, from_hex(&c.hash).expect("hex"))
}

fn sealed(e: &pb::SealedAuditEvent) -> Sealed {
    Sealed {
        seq: e.sequence,
        prev_hash: from_hex(&e.prev_hash).unwrap(),
        hash: from_hex(&e.hash).unwrap(),
        at_micros: e.at_micros,
        actor: e.actor.clone(),
        action: e.action.clone(),
        outcome: e.outcome.clone(),
        task: e.task_id.clone(),
        agent: e.agent.clone(),
        jti: e.jti.clone(),
        reason: e.reason.clone(),
        detail: e.detail.clone(),
    }
}

/// Exports the events dated before `before` as `mayfly audit archive` does, a
/// page of `limit` at a time: the archive's lines and its last event.
async fn export(app: &TestApp, before: OffsetDateTime, limit: u32) -> (Vec<String>, Checkpoint) {
    let mut admin = app.admin(ADMIN).await;
    let req = pb::ExportAuditRequest {
        before: Some(ts(before)),
        limit,
        ..Default::default()
    };
    let first = admin.export_audit(req).await.unwrap().into_inner();
    let (anchor, through) = (point(first.anchor.as_ref()), point(first.through.as_ref()));
    let mut lines = vec![header_line(&anchor, &through, before).unwrap()];
    let mut page = first;
    loop {
        assert!(page.events.len() <= limit as usize);
        lines.extend(page.events.iter().map(|e| event_line(&sealed(e)).unwrap()));
        if page.next_after == 0 {
            return (lines, through);
        }
        let req = pb::ExportAuditRequest {
            through_sequence: through.seq,
            after_sequence: page.next_after,
            limit,
            ..Default::default()
        };
        page = admin.export_audit(req).await.unwrap().into_inner();
    }
}

fn verify_offline(lines: &[String], checkpoint: Option<Checkpoint>) -> Summary {
    let mut v = ArchiveVerifier::new(checkpoint);
    for l in lines {
        v.push(l).unwrap_or_else(|bad| panic!("{bad}"));
    }
    v.finish().unwrap_or_else(|bad| panic!("{bad}"))
}

async fn archive(
    app: &TestApp,
    through: &Checkpoint,
    before: OffsetDateTime,
) -> Result<pb::ArchiveAuditResponse, tonic::Status> {
    let req = pb::ArchiveAuditRequest {
        through_sequence: through.seq,
        through_hash: to_hex(&through.hash),
        before: Some(ts(before)),
    };
    let done = app.admin(ADMIN).await.archive_audit(req).await;
    done.map(tonic::Response::into_inner)
}

async fn verify(
    app: &TestApp,
    checkpoint: Option<&Checkpoint>,
) -> Result<pb::VerifyAuditResponse, tonic::Status> {
    let req = match checkpoint {
        Some(c) => pb::VerifyAuditRequest {
            checkpoint_sequence: c.seq,
            checkpoint_hash: to_hex(&c.hash),
        },
        None => pb::VerifyAuditRequest::default(),
    };
    let r = app.admin(ADMIN).await.verify_audit(req).await;
    r.map(tonic::Response::into_inner)
}

/// Archive, verify offline, verify the store from its anchor, archive again.
async fn archives_twice_and_the_chain_verifies_on_and_off_line(app: &TestApp) {
    work(app).await;
    let cut = app.clock.now() + Duration::from_secs(5);
    app.clock.advance(Duration::from_secs(10));
    work(app).await;
    let head = verify(app, None).await.unwrap();
    assert!(head.intact, "{}", head.problem);

    // Everything before the cut, paged two at a time, verifies offline.
    let (lines, through) = export(app, cut, 2).await;
    let first = verify_offline(&lines, None);
    assert_eq!((first.anchor.seq, first.last.clone()), (0, through.clone()));
    assert!(
        first.events >= 3 && first.events < head.head_sequence,
        "{first:?}"
    );

    let done = archive(app, &through, cut).await.unwrap();
    assert_eq!(done.events_archived, first.events);
    assert_eq!(done.events_removed, first.events);
    assert_eq!(point(done.previous_anchor.as_ref()), Checkpoint::genesis());
    assert_eq!(point(done.anchor.as_ref()), through);
    assert_eq!(
        stored_events(app, through.seq).await,
        0,
        "archived events stay"
    );

    // The store verifies from its anchor; a checkpoint at the anchor or after
    // it still passes, one before it is answered as archived.
    let now = verify(app, None).await.unwrap();
    assert!(now.intact, "{}", now.problem);
    assert_eq!(point(now.anchor.as_ref()), through);
    assert_eq!(now.events_checked, now.head_sequence - through.seq);
    assert!(verify(app, Some(&through)).await.unwrap().intact);
    let at_head = Checkpoint::new(head.head_sequence, from_hex(&head.head_hash).unwrap());
    assert!(verify(app, Some(&at_head)).await.unwrap().intact);
    let gone = verify(app, Some(&Checkpoint::new(2, first.anchor.hash.clone()))).await;
    let gone = gone.unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition);
    assert!(gone.message().contains("archived"), "{}", gone.message());
    // ...and the archive holding it passes through it.
    let second_event = serde_json::from_str::<serde_json::Value>(&lines[2]).unwrap();
    let two = Checkpoint::new(2, from_hex(second_event["hash"].as_str().unwrap()).unwrap());
    verify_offline(&lines, Some(two));

    // A second archive starts where the first ended.
    let cut2 = app.clock.now() + Duration::from_secs(1);
    app.clock.advance(Duration::from_secs(10));
    work(app).await;
    let (lines2, through2) = export(app, cut2, 1000).await;
    let second = verify_offline(&lines2, Some(first.last.clone()));
    assert_eq!(second.anchor, through);
    let done = archive(app, &through2, cut2).await.unwrap();
    assert_eq!(done.events_archived, through2.seq - through.seq);
    assert_eq!(point(done.previous_anchor.as_ref()), through);
    assert_eq!(stored_events(app, through2.seq).await, 0);
    let now = verify(app, None).await.unwrap();
    assert!(now.intact, "{}", now.problem);
    assert_eq!(point(now.anchor.as_ref()), through2);

    // Both archives are audited, in the chain.
    let audited = app
        .admin(ADMIN)
        .await
        .query_audit(pb::QueryAuditRequest {
            action: "audit_archived".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    // The first archive's own event was archived by the second.
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0].actor, ADMIN);
    let detail: serde_json::Value = serde_json::from_str(&audited[0].detail_json).unwrap();
    assert_eq!(detail["through_seq"], through2.seq);
    assert_eq!(detail["previous_seq"], through.seq);
    assert_eq!(detail["through_hash"], to_hex(&through2.hash));
    assert!(
        lines2
            .iter()
            .any(|l| l.contains("\"action\":\"audit_archived\""))
    );

    // Nothing dated before the cut is left to archive.
    let (lines, through) = export(app, cut2, 1000).await;
    assert_eq!((lines.len(), through), (1, through2));
}

#[tokio::test]
async fn archiving_on_postgresql_removes_what_the_archive_holds_and_the_chain_verifies() {
    let app = spawn_app().await;
    archives_twice_and_the_chain_verifies_on_and_off_line(&app).await;
}

#[tokio::test]
async fn archiving_on_sqlite_removes_what_the_archive_holds_and_the_chain_verifies() {
    let (app, _dir) = spawn_sqlite().await;
    archives_twice_and_the_chain_verifies_on_and_off_line(&app).await;
}

/// The status of an ArchiveAudit request as `who`.
async fn archive_as(app: &TestApp, who: &str, req: pb::ArchiveAuditRequest) -> tonic::Status {
    app.admin(who).await.archive_audit(req).await.unwrap_err()
}

#[tokio::test]
async fn only_admins_archive_and_bad_or_mismatched_requests_remove_nothing() {
    let app = spawn_app().await;
    work(&app).await;
    let cut = app.clock.now() + Duration::from_secs(1);
    app.clock.advance(Duration::from_secs(5));
    work(&app).await;
    let (_, through) = export(&app, cut, 1000).await;
    let head = verify(&app, None).await.unwrap();
    let good = pb::ArchiveAuditRequest {
        through_sequence: through.seq,
        through_hash: to_hex(&through.hash),
        before: Some(ts(cut)),
    };

    for who in [AGENT, ORCH, VERIFIER] {
        let s = archive_as(&app, who, good.clone()).await;
        assert_eq!(s.code(), Code::PermissionDenied, "{who}: {s:?}");
        let req = pb::ExportAuditRequest {
            before: Some(ts(cut)),
            ..Default::default()
        };
        let s = app.admin(who).await.export_audit(req).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{who}: {s:?}");
    }
    let denied = app.audit_by(AGENT).await;
    assert!(denied.iter().any(|e| e.action == "call_denied"
        && e.detail["method"] == "mayfly.v1.AdminService/ArchiveAudit"));
    let stored = stored_events(&app, 0).await;

    let bad = |edit: fn(&mut pb::ArchiveAuditRequest)| {
        let mut r = good.clone();
        edit(&mut r);
        r
    };
    for (req, field) in [
        (bad(|r| r.through_sequence = 0), "through_sequence"),
        (bad(|r| r.through_hash = "not hex".into()), "through_hash"),
        (bad(|r| r.through_hash.push('0')), "through_hash"),
        (bad(|r| r.before = None), "before"),
    ] {
        let s = archive_as(&app, ADMIN, req).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().starts_with(field), "{}", s.message());
    }
    let other_hash = to_hex(&from_hex(&head.head_hash).unwrap());
    for (req, says) in [
        (bad(|r| r.through_hash = "ab".repeat(32)), "another hash"),
        (
            pb::ArchiveAuditRequest {
                through_hash: other_hash,
                ..good.clone()
            },
            "another hash",
        ),
        (bad(|r| r.through_sequence = 10_000), "not sealed"),
        // Past the cut: its events are dated after `before`.
        (
            pb::ArchiveAuditRequest {
                through_sequence: head.head_sequence,
                through_hash: head.head_hash.clone(),
                ..good.clone()
            },
            "not before",
        ),
    ] {
        let s = archive_as(&app, ADMIN, req).await;
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
        assert!(s.message().contains(says), "{}", s.message());
    }
    for (req, field) in [
        (pb::ExportAuditRequest::default(), "before"),
        (
            pb::ExportAuditRequest {
                before: Some(ts(cut)),
                through_sequence: 1,
                ..Default::default()
            },
            "through_sequence",
        ),
        (
            pb::ExportAuditRequest {
                before: Some(ts(cut)),
                limit: 1001,
                ..Default::default()
            },
            "limit",
        ),
    ] {
        let s = app.admin(ADMIN).await.export_audit(req).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().starts_with(field), "{}", s.message());
    }
    assert_eq!(stored_events(&app, 0).await, stored, "nothing removed");
    let now = verify(&app, None).await.unwrap();
    assert_eq!(point(now.anchor.as_ref()), Checkpoint::genesis());

    // A chain edited past the triggers is not archived: that would remove the
    // evidence.
    let mut t = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    for sql in [
        "SET session_replication_role = replica",
        "UPDATE audit_events SET reason = 'routine' WHERE seq = 2",
    ] {
        sqlx::query(sql).execute(&mut t).await.unwrap();
    }
    let s = archive_as(&app, ADMIN, good).await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("broken at event 2"), "{}", s.message());
    assert_eq!(stored_events(&app, 0).await, stored, "nothing removed");
}

#[tokio::test]
async fn an_export_page_is_bounded_in_bytes_and_the_pages_reach_every_event() {
    use mayfly::domain::audit::{Action, AuditEvent};
    use mayfly::store::AuditStore;
    let app = spawn_app().await;
    let store = app.store().await;
    let big = "x".repeat(300 << 10);
    for n in 0..10 {
        let e = AuditEvent::new(app.clock.now(), "mayfly", Action::CallDenied)
            .detail(serde_json::json!({"n": n, "filler": big}));
        store.append_audit(&e).await.unwrap();
    }
    let later = app.clock.now() + Duration::from_secs(1);
    let mut admin = app.admin(ADMIN).await;
    let first = admin
        .export_audit(pb::ExportAuditRequest {
            before: Some(ts(later)),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let encoded = prost::Message::encoded_len(&first);
    assert!(encoded < (1 << 20) + (400 << 10), "{encoded} bytes");
    assert!(
        (2..10).contains(&first.events.len()),
        "{}",
        first.events.len()
    );
    let (lines, through) = export(&app, later, 1000).await;
    assert_eq!(through.seq, 10);
    assert_eq!(verify_offline(&lines, None).events, 10);
}
