//! The revocation feed over real mTLS: Server-Sent Events carrying what
//! `WatchRevocations` carries, each event's `id:` its sequence, resumed with
//! `Last-Event-ID` or `?after=` without a gap or a repeat, heartbeats with the
//! head and no id, a cursor the store cannot serve refused (409) or ending the
//! stream (`event: resync`), verifiers only, across replicas, read by curl,
//! through the idle timeout, and ended at shutdown, SVID expiry or a store
//! outage.
use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::revocation_target::Target;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FEED: &str = "/oauth/revocations";

/// Heartbeats and re-reads every 100 ms.
fn fast() -> Settings {
    Settings::new()
        .watch_heartbeat(Duration::from_millis(100))
        .watch_poll(Duration::from_millis(100))
}

fn ids(messages: &[SseMessage]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            let id = m.id.as_deref().expect("an event has an id");
            assert_eq!(m.json()["sequence"].as_u64(), id.parse().ok(), "{m:?}");
            id.parse().unwrap()
        })
        .collect()
}

/// The answer of a feed refused before it opened, as JSON.
async fn refusal(feed: SseFeed) -> (u16, Value) {
    let status = feed.status;
    assert_eq!(feed.header("cache-control"), Some("no-store"));
    let body = feed.rest().await;
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, v)
}

/// The gRPC watch's refusal of `after_sequence`, for its message.
async fn grpc_refusal(app: &TestApp, after_sequence: u64) -> tonic::Status {
    app.verifier(VERIFIER)
        .await
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence,
            ..Default::default()
        })
        .await
        .expect_err("refused")
}

/// Removes the revocation events before `first`, as the pruner does once
/// every token they concern has expired (behind the broker's back, as the
/// database's superuser: the guard against deleting young events is off).
async fn prune_before(db_url: &str, first: u64) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM revocations WHERE seq < {first}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// Reads until a message that is not a heartbeat.
async fn after_heartbeats(feed: &mut SseFeed) -> Option<SseMessage> {
    loop {
        match feed.next().await {
            Some(m) if m.event == "heartbeat" => continue,
            other => return other,
        }
    }
}

#[tokio::test]
async fn events_arrive_in_order_with_their_sequence_as_id_and_heartbeats_carry_the_head() {
    let app = spawn_with(Arc::new(Pki::new()), fast()).await;
    assert_eq!(app.revoke_agents("a", 3).await, [1, 2, 3]);
    let mut feed = app.feed(VERIFIER, FEED, &[]).await;
    assert_eq!(feed.status, 200);
    assert_eq!(feed.header("content-type"), Some("text/event-stream"));
    assert_eq!(feed.header("cache-control"), Some("no-store"));
    let got = feed.events(3).await;
    assert_eq!(ids(&got), [1, 2, 3]);

    // The fields of gRPC's RevocationEvent, the time to the microsecond.
    let grpc = next_events(&mut app.watch(0).await, 3).await;
    for (m, e) in got.iter().zip(&grpc) {
        let Some(Target::Agent(agent)) = e.target.clone().and_then(|t| t.target) else {
            panic!("{e:?}")
        };
        let data = m.json();
        let at = e.at.unwrap();
        assert_eq!(
            data,
            json!({
                "sequence": e.sequence,
                "target": {"agent": agent},
                "reason": "drill",
                "actor": ADMIN,
                "trigger": "admin",
                "at": data["at"],
            })
        );
        assert_eq!(e.trigger, "admin");
        let sent = time::OffsetDateTime::parse(
            data["at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(
            sent.unix_timestamp_nanos(),
            i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos)
        );
    }
    // Caught up: a heartbeat at the head, without an id.
    assert_eq!(feed.heartbeat().await, 3);
    // What is committed next follows, with the next id.
    app.revoke_agents("b", 1).await;
    assert_eq!(ids(&feed.events(1).await), [4]);
    assert_eq!(feed.heartbeat().await, 4);
    // An open feed is a watcher, as a gRPC stream is.
    let (_, metrics) = app.http_get("/metrics").await;
    assert!(
        metric(&metrics, "mayfly_watch_subscribers") >= 1.0,
        "{metrics}"
    );

    // The security team may follow it too.
    let mut admin = app.feed(ADMIN, FEED, &[]).await;
    assert_eq!(admin.status, 200);
    assert_eq!(ids(&admin.events(4).await), [1, 2, 3, 4]);
}

#[tokio::test]
async fn a_feed_resumed_with_last_event_id_or_after_gets_exactly_the_later_events() {
    let app = spawn_with(Arc::new(Pki::new()), fast()).await;
    const REVOKERS: usize = 3;
    const EACH: usize = 10;
    let total = (REVOKERS * EACH) as u64;
    let mut feed = app.feed(VERIFIER, FEED, &[]).await;
    let joins = app.revoke_concurrently(REVOKERS, EACH).await;
    // Part of the stream, then gone while the revokers go on.
    let first = ids(&feed.events(10).await);
    drop(feed);
    let last = first.last().unwrap().to_string();
    let mut resumed = app
        .feed(VERIFIER, FEED, &[("Last-Event-ID", last.as_str())])
        .await;
    assert_eq!(resumed.status, 200);
    let rest = ids(&resumed.events(total as usize - first.len()).await);
    for j in joins {
        j.await.unwrap();
    }
    let all: Vec<u64> = first.iter().chain(&rest).copied().collect();
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "gap-free, no repeats");
    // Nothing more: the next message is a heartbeat at the head.
    let next = resumed.next().await.unwrap();
    assert_eq!(
        (next.event.as_str(), next.json()["head"].as_u64()),
        ("heartbeat", Some(total))
    );

    // From the query, as a client that starts from a cursor it kept.
    let mut after = app.feed(VERIFIER, &format!("{FEED}?after=25"), &[]).await;
    assert_eq!(ids(&after.events(5).await), [26, 27, 28, 29, 30]);
    assert_eq!(after.next().await.unwrap().event, "heartbeat");
    // An EventSource opened at `?after=20` reconnects to the same URL with
    // the id of the last event it received: that is where it stands.
    let mut reconnected = app
        .feed(
            VERIFIER,
            &format!("{FEED}?after=20"),
            &[("Last-Event-ID", "28")],
        )
        .await;
    assert_eq!(ids(&reconnected.events(2).await), [29, 30]);
    assert_eq!(reconnected.next().await.unwrap().event, "heartbeat");

    // A cursor that is not a number, or two that contradict each other.
    for (path, last, says) in [
        (
            format!("{FEED}?after=ten"),
            None,
            "after: is not a sequence number",
        ),
        (
            FEED.to_string(),
            Some("x"),
            "Last-Event-ID: is not a sequence number",
        ),
        (
            format!("{FEED}?after=20"),
            Some("3"),
            "Last-Event-ID: is 3, before after=20",
        ),
        (
            format!("{FEED}?after=1&after=2"),
            None,
            "parameter 'after' is repeated",
        ),
    ] {
        let headers: Vec<(&str, &str)> = last.map(|l| ("Last-Event-ID", l)).into_iter().collect();
        let (status, body) = refusal(app.feed(VERIFIER, &path, &headers).await).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
        let description = body["error_description"].as_str().unwrap();
        assert!(description.starts_with(says), "{description}");
    }
}

#[tokio::test]
async fn a_cursor_past_the_head_is_refused_with_409_and_where_the_history_stands() {
    let app = spawn_with(Arc::new(Pki::new()), fast()).await;
    app.revoke_agents("a", 2).await;
    let resyncs = || async {
        let (_, m) = app.http_get("/metrics").await;
        metric(&m, "mayfly_watch_resyncs_total{reason=\"ahead\"}")
    };
    let before = resyncs().await;
    for (cursor, path, last) in [
        (3, format!("{FEED}?after=3"), None),
        (677, FEED.to_string(), Some("677")),
        (u64::MAX, format!("{FEED}?after={}", u64::MAX), None),
    ] {
        let headers: Vec<(&str, &str)> = last.map(|l| ("Last-Event-ID", l)).into_iter().collect();
        let (status, body) = refusal(app.feed(VERIFIER, &path, &headers).await).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(
            body,
            json!({
                "error": "invalid_request",
                // The sentence gRPC refuses the same cursor with.
                "error_description": grpc_refusal(&app, cursor).await.message(),
                "first": 1,
                "head": 2,
            })
        );
    }
    // Counted as gRPC's are (process-wide: other tests count too).
    assert!(resyncs().await >= before + 3.0);
    // At the head, the feed serves.
    let mut at_head = app.feed(VERIFIER, &format!("{FEED}?after=2"), &[]).await;
    assert_eq!(at_head.status, 200);
    assert_eq!(at_head.next().await.unwrap().event, "heartbeat");
}

#[tokio::test]
async fn a_cursor_before_the_kept_history_is_refused_and_the_feed_serves_from_the_start() {
    let app = spawn_with(Arc::new(Pki::new()), fast()).await;
    app.revoke_agents("a", 5).await;
    prune_before(&app.db_url, 3).await;
    for last in ["1", "2"] {
        let (status, body) =
            refusal(app.feed(VERIFIER, FEED, &[("Last-Event-ID", last)]).await).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(
            (body["first"].as_u64(), body["head"].as_u64()),
            (Some(3), Some(5))
        );
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.starts_with(&format!(
                "revocation cursor {last} is before the revocation history the store keeps, which starts at event 3"
            )),
            "{description}"
        );
        assert!(
            description.contains("watch again from sequence 0"),
            "{description}"
        );
    }
    // A resync (no cursor) or the first event kept: what is kept, gap-free.
    let mut start = app.feed(VERIFIER, FEED, &[]).await;
    assert_eq!(ids(&start.events(3).await), [3, 4, 5]);
    let mut kept = app.feed(VERIFIER, FEED, &[("Last-Event-ID", "3")]).await;
    assert_eq!(ids(&kept.events(2).await), [4, 5]);
}

#[tokio::test]
async fn a_store_rolled_back_under_an_open_feed_ends_it_with_a_resync_message() {
    let app = spawn_with(Arc::new(Pki::new()), fast()).await;
    app.revoke_agents("a", 5).await;
    let mut feed = app.feed(VERIFIER, FEED, &[]).await;
    assert_eq!(ids(&feed.events(5).await), [1, 2, 3, 4, 5]);
    assert_eq!(feed.heartbeat().await, 5);

    crate::verifier::roll_back_revocations(&app.db_url, 2).await;
    let last = after_heartbeats(&mut feed).await.expect("a last message");
    assert_eq!(
        (last.event.as_str(), last.id.as_deref()),
        ("resync", None),
        "{last:?}"
    );
    let data = last.json();
    assert_eq!(
        (data["first"].as_u64(), data["head"].as_u64()),
        (Some(1), Some(2))
    );
    let description = data["error_description"].as_str().unwrap();
    assert!(
        description.starts_with("revocation cursor 5 ")
            && description.contains("last revocation is 2")
            && description.contains("watch again from sequence 0"),
        "{description}"
    );
    assert_eq!(feed.next().await, None, "the feed ends after it");
    // Reconnecting with its last id, as an EventSource would, is refused.
    let (status, body) = refusal(app.feed(VERIFIER, FEED, &[("Last-Event-ID", "5")]).await).await;
    assert_eq!((status, body["head"].as_u64()), (409, Some(2)));
}

#[tokio::test]
async fn only_verifiers_and_the_security_team_may_follow_the_feed() {
    let app = spawn_app().await;
    let (status, body) = refusal(app.feed(AGENT, FEED, &[]).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
    let (status, body) = refusal(app.feed_as(None, FEED, &[]).await).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );
}

#[tokio::test]
async fn a_revocation_through_one_replica_reaches_a_feed_on_another() {
    // Neither a poll nor a heartbeat's re-read can deliver in time: only the
    // store's notification.
    let replica = || {
        Settings::new()
            .watch_poll(Duration::from_secs(3600))
            .watch_heartbeat(Duration::from_secs(3600))
    };
    let pki = Arc::new(Pki::new());
    let a = spawn_with(pki.clone(), replica()).await;
    let b = spawn_replica(pki, &a, replica()).await;
    crate::replicas::wait_for_listeners(&a.db_url, 2).await;
    let mut on_b = b.feed(VERIFIER, FEED, &[]).await;
    assert_eq!(on_b.status, 200);
    assert_eq!(a.revoke_agents("through-a", 1).await, [1]);
    let got = on_b.events(1).await;
    assert_eq!(ids(&got), [1]);
    assert_eq!(
        got[0].json()["target"],
        json!({"agent": "spiffe://example.org/agent/through-a-0"})
    );
    // The client loses B, events are committed through B meanwhile, and it
    // resumes on A from the last id it saw: exactly the later ones.
    drop(on_b);
    assert_eq!(b.revoke_agents("through-b", 2).await, [2, 3]);
    let mut on_a = a.feed(VERIFIER, FEED, &[("Last-Event-ID", "1")]).await;
    assert_eq!(on_a.status, 200);
    assert_eq!(ids(&on_a.events(2).await), [2, 3]);
}

#[tokio::test]
async fn curl_reads_the_feed_as_a_stock_client_over_http2_and_http1() {
    let app = spawn_with(Arc::new(Pki::new()), fast()).await;
    app.revoke_agents("a", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let id = app.pki.ca.svid(VERIFIER).unwrap();
    std::fs::write(dir.path().join("v.crt"), &id.cert_pem).unwrap();
    std::fs::write(dir.path().join("v.key"), &id.key_pem).unwrap();
    let curl = |version: &str| {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "-N", "--max-time", "2", version, "--cacert"])
            .arg(app.pki.path("ca.pem"))
            .arg("--cert")
            .arg(dir.path().join("v.crt"))
            .arg("--key")
            .arg(dir.path().join("v.key"))
            .args(["-H", "Last-Event-ID: 1"])
            .arg(format!("https://localhost:{}{FEED}", app.grpc.port()));
        cmd.output()
    };
    let (h2, h1) = tokio::join!(curl("--http2"), curl("--http1.1"));
    for out in [h2.unwrap(), h1.unwrap()] {
        // 28: still streaming when curl gave up, as a feed should be.
        assert_eq!(
            out.status.code(),
            Some(28),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut buf = out.stdout;
        let mut messages = vec![];
        while let Some(m) = take_message(&mut buf) {
            messages.push(m);
        }
        assert_eq!(messages[0].event, "revocation", "{messages:?}");
        assert_eq!(ids(&messages[..1]), [2]);
        assert!(messages.len() > 2, "heartbeats follow: {messages:?}");
        for beat in &messages[1..] {
            assert_eq!(
                (beat.event.as_str(), beat.id.as_deref()),
                ("heartbeat", None)
            );
            assert_eq!(beat.json()["head"], 2);
        }
    }
}

#[tokio::test]
async fn a_feed_outlives_the_idle_timeout_and_ends_at_shutdown() {
    let app = spawn_with(
        Arc::new(Pki::new()),
        fast().limits(Limits {
            idle_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        }),
    )
    .await;
    let mut feed = app.feed(VERIFIER, FEED, &[]).await;
    // Quiet for longer than the idle timeout: a call in flight all along.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(1500) {
        assert_eq!(feed.heartbeat().await, 0);
    }
    app.revoke_agents("a", 1).await;
    assert_eq!(ids(&feed.events(1).await), [1]);

    // Shut down: the feed ends (cleanly, not cut off) and the broker stops
    // long before its shutdown grace (10 s) would have dropped the connection.
    let stopping = Instant::now();
    let stopped = tokio::spawn(app.stop());
    assert_eq!(after_heartbeats(&mut feed).await, None);
    stopped.await.unwrap().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn a_feed_ends_with_an_error_message_once_the_svid_expires() {
    let app = spawn_with(Arc::new(Pki::new()), fast()).await;
    let mut feed = app.feed(VERIFIER, FEED, &[]).await;
    assert_eq!(feed.heartbeat().await, 0);
    // The SVID was valid for a day.
    app.clock.advance(Duration::from_secs(2 * 86_400));
    let last = after_heartbeats(&mut feed).await.expect("a last message");
    assert_eq!(last.event, "error", "{last:?}");
    let data = last.json();
    assert_eq!(data["error"], "invalid_client");
    assert!(
        data["error_description"]
            .as_str()
            .unwrap()
            .contains("reconnect with a fresh SVID"),
        "{data}"
    );
    assert_eq!(feed.next().await, None);
}

#[tokio::test]
async fn with_the_store_down_a_feed_ends_and_a_new_one_is_503() {
    let (app, proxy, _db) =
        spawn_behind_proxy(fast().connect_timeout(Duration::from_secs(1))).await;
    let mut feed = app.feed(VERIFIER, FEED, &[]).await;
    assert_eq!(feed.heartbeat().await, 0);
    proxy.cut();
    let last = after_heartbeats(&mut feed).await.expect("a last message");
    assert_eq!(last.event, "error", "{last:?}");
    assert_eq!(last.json()["error"], "temporarily_unavailable");
    assert_eq!(feed.next().await, None);

    let refused = app.feed(VERIFIER, FEED, &[]).await;
    assert_eq!(refused.header("retry-after"), Some("1"));
    let (status, body) = refusal(refused).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
}
