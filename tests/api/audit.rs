//! The hash-chained audit trail over the real server: intact after real work,
//! every kind of tampering found and named, append-only for ordinary writers, one
//! valid chain with two replicas writing at once. Tampering is done past the
//! tables' triggers, as their owner can.
use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::revocation_target::Target;
use sqlx::{Connection, PgConnection};
use std::sync::Arc;

async fn verify(app: &TestApp) -> pb::VerifyAuditResponse {
    app.admin(ADMIN)
        .await
        .verify_audit(pb::VerifyAuditRequest::default())
        .await
        .expect("verify audit")
        .into_inner()
}

/// A connection that writes past the store's triggers, as someone with the
/// database owner's rights can: the tamperer of these tests.
async fn tamperer(app: &TestApp) -> PgConnection {
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn count(app: &TestApp) -> i64 {
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Some real work: a task, mints, a refusal, a delegation, a revocation.
async fn workload(app: &TestApp) {
    let task = app.open_task(AGENT, 600).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    let parent = agent
        .minted(mint_request(&task.id, "customers/eu/1", 60))
        .await;
    agent
        .minted(mint_request(&task.id, "customers/eu/2", 60))
        .await;
    let _ = app
        .tokens(AGENT2)
        .await
        .0
        .refused(mint_request(&task.id, "customers/eu/3", 60))
        .await;
    agent
        .delegate(pb::DelegateRequest {
            parent_token: parent.token.clone(),
            sub_agent: "spiffe://example.org/agent/helper-1".into(),
            scope: Some(scope("crm-api", "customers/eu/1", "read")),
            ttl_seconds: 30,
        })
        .await
        .unwrap();
    app.admin(ADMIN)
        .await
        .revoke(revoke_request(Target::Token(parent.jti), "audit test"))
        .await
        .unwrap();
    // Verifying seals what arrived unsealed (the mints' events), so the
    // tampering below finds it sealed.
    assert!(verify(app).await.intact);
}

#[tokio::test]
async fn the_chain_is_intact_after_real_work_and_ordinary_writers_cannot_change_it() {
    let app = spawn_app().await;
    workload(&app).await;
    let r = verify(&app).await;
    assert!(r.intact, "{}: {}", r.first_broken, r.problem);
    assert_eq!(r.events_checked as i64, count(&app).await);
    assert!(r.events_checked >= 6, "{}", r.events_checked);

    // The store's own role cannot edit, delete or truncate an event.
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    for sql in [
        "UPDATE audit_events SET reason = 'nothing happened' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events",
        "UPDATE audit_chain SET last_seq = 1",
    ] {
        let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("append-only") || err.contains("only by sealing"),
            "{sql}: {err}"
        );
    }
    assert!(verify(&app).await.intact);
}

#[tokio::test]
async fn an_event_is_sealed_as_it_commits_and_brokers_seal_what_an_older_one_left_unsealed() {
    let app = spawn_app().await;
    app.open_task(AGENT, 600).await;
    // Read straight after the write: in the chain already.
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    let sealed: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE seq = 1 AND hash IS NOT NULL) FROM audit_events",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(sealed, (1, 1));

    // An event as a broker from before sealed writes wrote it, during a rolling
    // upgrade: no position. This broker's sealer seals it, after the sealed one.
    sqlx::query(
        "INSERT INTO audit_events (at, actor, action, outcome)
         VALUES (now(), 'mayfly', 'call_denied', 'deny')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM audit_events WHERE actor = 'mayfly'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if let Some(seq) = seq {
            assert_eq!(seq, 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still unsealed after 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = verify(&app).await;
    assert!(r.intact, "{}: {}", r.first_broken, r.problem);
    assert_eq!(r.events_checked, 2);
}

#[tokio::test]
async fn an_edited_event_is_named() {
    let app = spawn_app().await;
    workload(&app).await;
    let mut t = tamperer(&app).await;
    sqlx::query("UPDATE audit_events SET reason = 'routine' WHERE seq = 3")
        .execute(&mut t)
        .await
        .unwrap();
    let r = verify(&app).await;
    assert!(!r.intact);
    assert_eq!(r.first_broken, 3);
    assert!(r.problem.contains("edited"), "{}", r.problem);
    assert_eq!(r.events_checked, 2);

    // The detail too, even a change jsonb renders alike for other keys.
    let app = spawn_app().await;
    workload(&app).await;
    let mut t = tamperer(&app).await;
    sqlx::query("UPDATE audit_events SET detail = detail || '{\"scope\": null}' WHERE seq = 2")
        .execute(&mut t)
        .await
        .unwrap();
    assert_eq!(verify(&app).await.first_broken, 2);
}

#[tokio::test]
async fn a_deleted_event_is_named_in_the_middle_and_at_the_end() {
    let app = spawn_app().await;
    workload(&app).await;
    let mut t = tamperer(&app).await;
    sqlx::query("DELETE FROM audit_events WHERE seq = 4")
        .execute(&mut t)
        .await
        .unwrap();
    let r = verify(&app).await;
    assert_eq!((r.intact, r.first_broken), (false, 4));
    assert!(r.problem.contains("missing"), "{}", r.problem);

    let app = spawn_app().await;
    workload(&app).await;
    let last = verify(&app).await.head_sequence;
    let mut t = tamperer(&app).await;
    sqlx::query("DELETE FROM audit_events WHERE seq = $1")
        .bind(last as i64)
        .execute(&mut t)
        .await
        .unwrap();
    let r = verify(&app).await;
    assert_eq!((r.intact, r.first_broken), (false, last));
    assert!(r.problem.contains("head"), "{}", r.problem);
}

#[tokio::test]
async fn reordered_events_are_named() {
    let app = spawn_app().await;
    workload(&app).await;
    let mut t = tamperer(&app).await;
    for sql in [
        "UPDATE audit_events SET seq = -2 WHERE seq = 2",
        "UPDATE audit_events SET seq = 2 WHERE seq = 3",
        "UPDATE audit_events SET seq = 3 WHERE seq = -2",
    ] {
        sqlx::query(sql).execute(&mut t).await.unwrap();
    }
    let r = verify(&app).await;
    assert_eq!((r.intact, r.first_broken), (false, 2));
    assert!(r.problem.contains("previous hash"), "{}", r.problem);
}

#[tokio::test]
async fn two_replicas_writing_at_once_make_one_valid_chain() {
    let pki = Arc::new(Pki::new());
    let budget = || Settings::new().max_tokens(100);
    let a = spawn_with(pki.clone(), budget()).await;
    let b = spawn_replica(pki, &a, budget()).await;
    let task_a = a.open_task(AGENT, 600).await;
    let task_b = b.open_task(AGENT, 600).await;
    let mut writers = vec![];
    for (n, (app, task)) in [(&a, &task_a), (&b, &task_b)]
        .into_iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        let (mut agent, _) = app.tokens(AGENT).await;
        let task = task.id.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..10 {
                agent
                    .minted(mint_request(&task, &format!("customers/eu/{n}{i}"), 60))
                    .await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let r = verify(&b).await;
    assert!(r.intact, "{}: {}", r.first_broken, r.problem);
    assert_eq!(r.events_checked as i64, count(&a).await);
    assert!(r.events_checked >= 82, "{}", r.events_checked);
}

async fn verify_at(app: &TestApp, seq: u64, hash: &str) -> pb::VerifyAuditResponse {
    app.admin(ADMIN)
        .await
        .verify_audit(pb::VerifyAuditRequest {
            checkpoint_sequence: seq,
            checkpoint_hash: hash.into(),
        })
        .await
        .expect("verify audit")
        .into_inner()
}

#[tokio::test]
async fn a_whole_chain_rewritten_by_its_owner_is_caught_by_a_checkpoint_and_a_rewound_head_anyway()
{
    let app = spawn_app().await;
    workload(&app).await;
    let before = verify(&app).await;
    assert!(before.intact);
    assert_eq!(before.head_hash.len(), 64);

    // The owner edits event 2 and recomputes every hash after it, and the head.
    let mut t = tamperer(&app).await;
    sqlx::query("UPDATE audit_events SET reason = 'nothing happened' WHERE seq = 2")
        .execute(&mut t)
        .await
        .unwrap();
    for seq in 2..=before.head_sequence as i64 {
        sqlx::query(
            "UPDATE audit_events e SET prev_hash = p.hash,
                hash = mayfly_audit_hash(e.seq, p.hash, e.at, e.actor, e.action, e.outcome,
                                         e.task_id, e.agent, e.jti, e.reason, e.detail)
             FROM audit_events p WHERE p.seq = e.seq - 1 AND e.seq = $1",
        )
        .bind(seq)
        .execute(&mut t)
        .await
        .unwrap();
    }
    sqlx::query(
        "UPDATE audit_chain SET last_hash = (SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1)",
    )
    .execute(&mut t)
    .await
    .unwrap();
    // Consistent on its own, as any unkeyed chain is to its owner...
    assert!(verify(&app).await.intact);
    // ...but not with the head recorded earlier outside the database.
    let r = verify_at(&app, before.head_sequence, &before.head_hash).await;
    assert!(!r.intact);
    assert!(r.problem.contains("checkpoint"), "{}", r.problem);

    // Rewinding the head to hide the newest events is caught without one.
    sqlx::query("UPDATE audit_chain SET last_seq = last_seq - 2")
        .execute(&mut t)
        .await
        .unwrap();
    let r = verify(&app).await;
    assert!(!r.intact);
    assert!(
        r.problem.contains("rewound") || r.problem.contains("head"),
        "{}",
        r.problem
    );

    // A malformed checkpoint names the field.
    let err = app
        .admin(ADMIN)
        .await
        .verify_audit(pb::VerifyAuditRequest {
            checkpoint_sequence: 1,
            checkpoint_hash: "abc".into(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("checkpoint_hash"),
        "{}",
        err.message()
    );
}

async fn query(app: &TestApp, req: pb::QueryAuditRequest) -> pb::QueryAuditResponse {
    app.admin(ADMIN)
        .await
        .query_audit(req)
        .await
        .expect("query audit")
        .into_inner()
}

#[tokio::test]
async fn a_security_team_asks_what_an_agent_did_what_happened_under_a_task_and_who_touched_a_resource()
 {
    use mayfly::clock::Clock;
    let app = spawn_app().await;
    workload(&app).await;
    let t2 = app.open_task(AGENT2, 600).await;
    app.mint(AGENT2, &t2.id, "customers/eu/9", 60).await;

    // Everything AGENT did or that was about it, in chain order.
    let mine = query(
        &app,
        pb::QueryAuditRequest {
            agent: AGENT.into(),
            ..Default::default()
        },
    )
    .await;
    assert!(!mine.events.is_empty());
    assert!(
        mine.events
            .iter()
            .all(|e| e.actor == AGENT || e.agent == AGENT)
    );
    assert!(
        mine.events
            .windows(2)
            .all(|w| w[0].sequence < w[1].sequence)
    );
    assert!(mine.events.iter().any(|e| e.action == "token_minted"));

    // In a time window: now, yes; an hour ago, nothing.
    let now = app.clock.now();
    let ts = |t: time::OffsetDateTime| prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    };
    let window = |since, until| pb::QueryAuditRequest {
        agent: AGENT.into(),
        since: Some(ts(since)),
        until: Some(ts(until)),
        ..Default::default()
    };
    let hour = time::Duration::hours(1);
    let recent = query(
        &app,
        window(
            now - time::Duration::minutes(1),
            now + time::Duration::minutes(1),
        ),
    )
    .await;
    assert_eq!(recent.events.len(), mine.events.len());
    assert!(
        query(&app, window(now - 2 * hour, now - hour))
            .await
            .events
            .is_empty()
    );

    // By action, and paged with a cursor.
    let minted = query(
        &app,
        pb::QueryAuditRequest {
            action: "token_minted".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(minted.events.len(), 3);
    let mut seen = vec![];
    let mut after = 0;
    loop {
        let page = query(
            &app,
            pb::QueryAuditRequest {
                after_sequence: after,
                limit: 2,
                ..Default::default()
            },
        )
        .await;
        seen.extend(page.events.iter().map(|e| e.sequence));
        if page.next_after == 0 {
            break;
        }
        after = page.next_after;
    }
    assert_eq!(seen, (1..=seen.len() as u64).collect::<Vec<_>>());
    let err = app
        .admin(ADMIN)
        .await
        .query_audit(pb::QueryAuditRequest {
            action: "no_such_action".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("action"), "{}", err.message());

    // Under one task.
    let under = query(
        &app,
        pb::QueryAuditRequest {
            task_id: t2.id.clone(),
            ..Default::default()
        },
    )
    .await;
    let actions: Vec<&str> = under.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["task_opened", "token_minted"]);

    // Who touched crm-api, and EU record 9 in particular.
    let access = |resource: &str| {
        let resource = resource.to_string();
        let app = &app;
        async move {
            app.admin(ADMIN)
                .await
                .audit_access(pb::AuditAccessRequest {
                    audience: "crm-api".into(),
                    resource,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .agents
        }
    };
    let all = access("").await;
    let agents: Vec<&str> = all.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(agents, [AGENT, AGENT2]);
    assert_eq!(all[0].tokens, 2);
    let nine = access("customers/eu/9").await;
    assert_eq!(nine.len(), 1);
    assert_eq!(nine[0].agent, AGENT2);
    assert!(access("customers/us/*").await.is_empty());
}
