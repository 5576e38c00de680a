//! Several brokers on one PostgreSQL: a revocation committed through any replica
//! reaches the watch streams of every replica through LISTEN/NOTIFY, in one
//! gap-free sequence, surviving a lost listener connection; quiet streams send
//! heartbeats. Watch polling is set to an hour here, so only a notification (or
//! the catch-up after a reconnect) can deliver an event in time.
use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::revocation_target::Target;
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;

fn replica() -> Settings {
    // Neither a poll nor a heartbeat's re-read can deliver in time.
    Settings::new()
        .watch_poll(Duration::from_secs(3600))
        .watch_heartbeat(Duration::from_secs(3600))
}

/// Two replicas, returned once both listen for notifications (so an event can
/// only reach the other one by a notification, not by a start-up catch-up).
async fn two_replicas() -> (TestApp, TestApp) {
    let pki = Arc::new(Pki::new());
    let a = spawn_with(pki.clone(), replica()).await;
    let b = spawn_replica(pki, &a, replica()).await;
    wait_for_listeners(&a.db_url, 2).await;
    (a, b)
}

/// Waits until `n` brokers LISTEN on the database at `db_url`.
pub async fn wait_for_listeners(db_url: &str, n: i64) {
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    for _ in 0..200 {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if listening >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} replicas did not start listening within 10s");
}

fn agent_target(n: impl std::fmt::Display) -> Target {
    Target::Agent(format!("spiffe://example.org/agent/gone-{n}"))
}

#[tokio::test]
async fn a_revocation_through_one_replica_reaches_the_watchers_of_another() {
    let (a, b) = two_replicas().await;
    let mut on_b = b.watch(0).await;
    a.admin(ADMIN)
        .await
        .revoke(revoke_request(agent_target(1), "drill"))
        .await
        .unwrap();
    let ev = next_events(&mut on_b, 1).await.remove(0);
    assert_eq!(ev.sequence, 1);
    assert_eq!(
        ev.target.unwrap().target.unwrap(),
        agent_target(1),
        "the event revoked through A"
    );
}

#[tokio::test]
async fn concurrent_revokers_on_two_replicas_make_one_gap_free_sequence_seen_by_both() {
    let (a, b) = two_replicas().await;
    const PER_REVOKER: usize = 15;
    let mut watches = [a.watch(0).await, b.watch(0).await];
    let mut joins = vec![];
    for (r, app) in [&a, &a, &b, &b].into_iter().enumerate() {
        let mut admin = app.admin(ADMIN).await;
        joins.push(tokio::spawn(async move {
            for i in 0..PER_REVOKER {
                admin
                    .revoke(revoke_request(agent_target(format!("{r}-{i}")), "drill"))
                    .await
                    .unwrap();
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let total = 4 * PER_REVOKER;
    let mut seen = vec![];
    for w in &mut watches {
        let events = next_events(w, total).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
        seen.push(events);
    }
    assert_eq!(seen[0], seen[1], "both replicas stream the same events");
}

#[tokio::test]
async fn a_replica_whose_listener_connection_dies_catches_up_without_losing_an_event() {
    let (a, b) = two_replicas().await;
    let mut on_b = b.watch(0).await;
    let mut admin = a.admin(ADMIN).await;
    admin
        .revoke(revoke_request(agent_target(1), "before"))
        .await
        .unwrap();
    assert_eq!(next_events(&mut on_b, 1).await[0].sequence, 1);

    // Cut every LISTEN connection on the database (both replicas'), then revoke
    // while they reconnect.
    let mut conn = sqlx::PgConnection::connect(&a.db_url).await.unwrap();
    let cut: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(!cut.is_empty(), "the replicas were listening");
    for n in 2..=4 {
        admin
            .revoke(revoke_request(agent_target(n), "during"))
            .await
            .unwrap();
    }
    let seqs: Vec<u64> = next_events(&mut on_b, 3)
        .await
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
}

#[tokio::test]
async fn a_quiet_watch_stream_sends_heartbeats_carrying_its_cursor() {
    let app = spawn_with(
        Arc::new(Pki::new()),
        Settings::new().watch_heartbeat(Duration::from_millis(100)),
    )
    .await;
    app.admin(ADMIN)
        .await
        .revoke(revoke_request(agent_target(1), "drill"))
        .await
        .unwrap();
    let mut watch = app.watch(0).await;
    let mut kinds = vec![];
    while kinds.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("a message within 10s")
            .unwrap()
            .unwrap();
        kinds.push(msg.kind.unwrap());
    }
    use pb::watch_revocations_response::Kind;
    assert!(
        matches!(&kinds[0], Kind::Event(e) if e.sequence == 1),
        "{kinds:?}"
    );
    for k in &kinds[1..] {
        assert!(
            matches!(k, Kind::Heartbeat(h) if h.sequence == 1 && h.at.is_some()),
            "{kinds:?}"
        );
    }
}

#[tokio::test]
async fn two_broker_processes_on_one_database_share_one_revocation_stream() {
    use mayfly::api::pb::admin_service_client::AdminServiceClient;
    use mayfly::api::pb::task_service_client::TaskServiceClient;
    use mayfly::api::pb::token_service_client::TokenServiceClient;
    use mayfly::api::pb::verifier_service_client::VerifierServiceClient;
    let pki = Pki::new();
    let db = fresh_database().await;
    // Polls and heartbeats an hour apart: only NOTIFY can carry the event.
    let cfg = Settings::new()
        .database(&db.url)
        .watch_poll(Duration::from_secs(3600))
        .watch_heartbeat(Duration::from_secs(3600))
        .write(&pki);
    let a = Served::start(&cfg).await;
    let b = Served::start(&cfg).await;
    wait_for_listeners(&db.url, 2).await;
    let id = |s: &str| pki.ca.svid(s).unwrap();

    let task = TaskServiceClient::new(a.channel(&pki.ca, &id(ORCH)).await)
        .start_task(start_request(AGENT, 600))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let token = TokenServiceClient::new(a.channel(&pki.ca, &id(AGENT)).await)
        .minted(mint_request(&task.id, "customers/eu/1", 60))
        .await
        .token;
    let mut on_b = VerifierServiceClient::new(b.channel(&pki.ca, &id(VERIFIER)).await);
    let introspect = pb::IntrospectRequest {
        token: token.clone(),
    };
    assert!(
        on_b.introspect(introspect.clone())
            .await
            .unwrap()
            .into_inner()
            .active
    );
    let mut watch = on_b
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    AdminServiceClient::new(a.channel(&pki.ca, &id(ADMIN)).await)
        .revoke(revoke_request(Target::Task(task.id.clone()), "drill"))
        .await
        .unwrap();
    let ev = next_events(&mut watch, 1).await.remove(0);
    assert_eq!(ev.sequence, 1);
    assert_eq!(ev.target.unwrap().target.unwrap(), Target::Task(task.id));
    assert!(
        !on_b
            .introspect(introspect)
            .await
            .unwrap()
            .into_inner()
            .active
    );
    drop(watch);
    for p in [a, b] {
        let (status, log) = p.stop().await;
        assert!(status.success(), "{log}");
    }
}

#[tokio::test]
async fn an_approval_decided_on_one_replica_wakes_the_agent_waiting_on_another() {
    let (a, b) = two_replicas().await;
    let mut req = start_request(AGENT, 600);
    req.scopes.push(scope("tickets", "tickets/4711", "delete"));
    let task = a.open_task_with(req).await;
    let (mut agent, _) = a.tokens(AGENT).await;
    let asked = agent.minted(ticket_delete_request(&task.id)).await;
    let id = asked.approval.expect("a pending approval").id;
    let waiting = {
        let id = id.clone();
        tokio::spawn(async move {
            agent
                .await_approval(pb::AwaitApprovalRequest {
                    approval_id: id,
                    wait_seconds: 300,
                })
                .await
                .unwrap()
                .into_inner()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.admin(ADMIN)
        .await
        .decide_approval(pb::DecideApprovalRequest {
            approval_id: id,
            decision: pb::Decision::Approve as i32,
            reason: "checked".into(),
        })
        .await
        .unwrap();
    // Replica A re-reads the store only hourly here: the notification wakes it.
    let got = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the decision on B wakes the wait on A")
        .unwrap();
    assert!(got.token.is_some_and(|t| !t.token.is_empty()));
}
