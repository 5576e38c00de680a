//! Retention over the real server: the pruner removes expired tokens, ended
//! tasks and old revocation events (PostgreSQL and SQLite), records what it did
//! in the audit trail and its metrics, and a watch cursor before the history
//! kept is refused with a resync status that says so.
use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::admin_service_client::AdminServiceClient;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use mayfly::api::pb::token_service_client::TokenServiceClient;
use mayfly::api::pb::verifier_service_client::VerifierServiceClient;
use mayfly::clock::{Clock, ManualClock};
use mayfly::identity::devcerts::SvidSpec;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

/// Everything pruned as soon as it may be, checked every second; the signing
/// key's registration renewed often, since the test moves the clock past it.
fn pruning() -> Settings {
    let h = |n: u64| Some(Duration::from_secs(n * 3600));
    Settings::new()
        .key_heartbeat(Duration::from_millis(100))
        .retention(Retention {
            interval: Some(Duration::from_secs(1)),
            batch: Some(2),
            tokens: h(2),
            offers: h(1),
            approvals: h(1),
            tasks: h(26),
            revocations: h(25),
        })
}

/// Polls `done` every 50 ms for up to 10 s.
async fn eventually<F, Fut>(what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} within 10 s");
}

/// A channel as `id` with an SVID valid for three days of the broker's clock,
/// which the test moves more than a day ahead.
async fn lasting(app: &TestApp, id: &str) -> tonic::transport::Channel {
    let now = app.clock.now();
    let spec = SvidSpec {
        not_before: now - time::Duration::minutes(5),
        not_after: now + time::Duration::days(3),
        ..SvidSpec::workload(id)
    };
    app.channel_with(Some(&app.issue(&spec)))
        .await
        .expect("connect")
}

/// Clients as each role, with SVIDs that outlast the test's move of the clock.
struct Clients {
    tasks: TaskServiceClient<Channel>,
    agent: TokenServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
    verifier: VerifierServiceClient<Channel>,
}

impl Clients {
    async fn new(app: &TestApp) -> Self {
        Clients {
            tasks: TaskServiceClient::new(lasting(app, ORCH).await),
            agent: TokenServiceClient::new(lasting(app, AGENT).await),
            admin: AdminServiceClient::new(lasting(app, ADMIN).await),
            verifier: VerifierServiceClient::new(lasting(app, VERIFIER).await),
        }
    }

    async fn open(&self, agent: &str) -> pb::Task {
        self.tasks
            .clone()
            .start_task(start_request(agent, 600))
            .await
            .expect("start task")
            .into_inner()
            .task
            .unwrap()
    }

    async fn get(&self, task: &str) -> Result<pb::Task, tonic::Status> {
        let r = self
            .tasks
            .clone()
            .get_task(pb::GetTaskRequest {
                task_id: task.into(),
            })
            .await?;
        Ok(r.into_inner().task.unwrap())
    }

    async fn complete(&self, task: &str) -> u64 {
        self.tasks
            .clone()
            .complete_task(pb::CompleteTaskRequest {
                task_id: task.into(),
            })
            .await
            .expect("complete")
            .into_inner()
            .revocation_sequence
    }

    async fn mint(&self, task: &str, resource: &str) -> pb::MintTokenResponse {
        self.agent
            .clone()
            .minted(mint_request(task, resource, 60))
            .await
    }

    async fn tokens(&self, task: &str) -> Vec<pb::TokenInfo> {
        self.admin
            .clone()
            .list_tokens(pb::ListTokensRequest {
                task_id: task.into(),
                ..Default::default()
            })
            .await
            .expect("list tokens")
            .into_inner()
            .tokens
    }

    async fn active(&self, token: &str) -> bool {
        self.verifier
            .clone()
            .introspect(pb::IntrospectRequest {
                token: token.into(),
            })
            .await
            .expect("introspect")
            .into_inner()
            .active
    }

    async fn watch(
        &self,
        after: u64,
    ) -> Result<tonic::Streaming<pb::WatchRevocationsResponse>, tonic::Status> {
        let r = self
            .verifier
            .clone()
            .watch_revocations(pb::WatchRevocationsRequest {
                after_sequence: after,
                ..Default::default()
            })
            .await?;
        Ok(r.into_inner())
    }
}

async fn what_is_past_its_retention_is_pruned_and_a_cursor_before_the_history_resyncs(
    app: &TestApp,
) {
    let c = Clients::new(app).await;
    // Three tasks, each with a token, completed: revocation events 1, 2, 3.
    let mut old = vec![];
    for _ in 0..3 {
        let t = c.open(AGENT).await;
        let m = c.mint(&t.id, "customers/eu/1").await;
        c.complete(&t.id).await;
        old.push((t, m));
    }
    // A day and three hours later (now): their tokens expired long ago, their
    // tasks ended, their revocations older than any token they could concern.
    app.clock.advance(Duration::from_secs(27 * 3600));
    let live = c.open(AGENT).await;
    eventually("a mint once the key's registration is renewed", || async {
        c.agent
            .clone()
            .mint_token(mint_request(&live.id, "customers/eu/1", 60))
            .await
            .is_ok()
    })
    .await;
    let other = c.open(AGENT2).await;
    assert_eq!(c.complete(&other.id).await, 4);

    for (t, m) in &old {
        eventually("the ended task pruned", || async {
            matches!(c.get(&t.id).await, Err(s) if s.code() == Code::NotFound)
        })
        .await;
        assert!(c.tokens(&t.id).await.is_empty(), "its token pruned");
        assert!(!c.active(&m.token).await);
    }
    // What is live is untouched, and minting goes on.
    assert_eq!(c.get(&live.id).await.unwrap().id, live.id);
    assert_eq!(c.tokens(&live.id).await.len(), 1);
    c.mint(&live.id, "customers/eu/2").await;
    assert_eq!(c.tokens(&live.id).await.len(), 2);

    // Events 1 and 2 went; 3, the newest of the old ones, starts the history.
    eventually("revocation events pruned", || async {
        matches!(c.watch(2).await, Err(s) if s.code() == Code::FailedPrecondition)
    })
    .await;
    let refused = c
        .watch(2)
        .await
        .expect_err("a cursor before the history kept");
    assert!(
        refused.message().starts_with(
            "revocation cursor 2 is before the revocation history the store keeps, which starts at event 3"
        ),
        "{}",
        refused.message()
    );
    assert!(refused.message().contains("watch again from sequence 0"));
    // From the start (a resync) or from the first event kept: gap-free.
    let seqs: Vec<u64> = next_events(&mut c.watch(0).await.unwrap(), 2)
        .await
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(seqs, [3, 4]);
    assert_eq!(
        next_events(&mut c.watch(3).await.unwrap(), 1).await[0].sequence,
        4
    );

    // Audited, by the broker, with what went and up to when; counted. A pass
    // records its event once all its batches are done, which may be after
    // the deletions seen above.
    let pruned = || async {
        c.admin
            .clone()
            .query_audit(pb::QueryAuditRequest {
                action: "records_pruned".into(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events
    };
    let rows_of = |events: &[pb::AuditEventInfo]| {
        let mut rows = std::collections::HashMap::<String, u64>::new();
        for e in events {
            assert_eq!(e.actor, "mayfly");
            let d: serde_json::Value = serde_json::from_str(&e.detail_json).unwrap();
            for kind in ["tokens", "offers", "approvals", "tasks", "revocations"] {
                assert!(d[kind]["before"].is_i64(), "{d}");
                *rows.entry(kind.into()).or_default() += d[kind]["rows"].as_u64().unwrap();
            }
        }
        rows
    };
    eventually("pruning is audited", || async {
        let rows = rows_of(&pruned().await);
        rows.get("revocations") == Some(&2) && rows.get("tasks") == Some(&3)
    })
    .await;
    let rows = rows_of(&pruned().await);
    assert_eq!(rows["tokens"], 3);
    assert_eq!(rows["tasks"], 3);
    assert_eq!(rows["revocations"], 2);
    // Counted (process-wide: other brokers in this test process count too).
    let (_, metrics) = app.http_get("/metrics").await;
    assert!(metric(&metrics, "mayfly_pruned_rows_total{kind=\"tokens\"}") >= 3.0);
    assert!(metric(&metrics, "mayfly_pruned_rows_total{kind=\"revocations\"}") >= 2.0);
}

/// A clock 27 hours behind: what the test writes first is dated as old as the
/// database's own clock will find it once the test moves this one to the
/// present (PostgreSQL deletes no revocation event younger than 25 hours).
fn a_day_and_three_hours_ago() -> ManualClock {
    ManualClock::starting_at(time::OffsetDateTime::now_utc() - time::Duration::hours(27))
}

#[tokio::test]
async fn postgres_prunes_what_is_past_its_retention() {
    let app = spawn_on_clock(
        std::sync::Arc::new(Pki::new()),
        pruning(),
        a_day_and_three_hours_ago(),
    )
    .await;
    what_is_past_its_retention_is_pruned_and_a_cursor_before_the_history_resyncs(&app).await;
}

#[tokio::test]
async fn sqlite_prunes_what_is_past_its_retention() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/mayfly.db", dir.path().display());
    let app = spawn_on_clock(
        std::sync::Arc::new(Pki::new()),
        pruning().database(&url),
        a_day_and_three_hours_ago(),
    )
    .await;
    what_is_past_its_retention_is_pruned_and_a_cursor_before_the_history_resyncs(&app).await;
}

#[tokio::test]
async fn a_revocation_history_shorter_than_the_longest_token_is_refused_at_start() {
    let pki = Pki::new();
    let mut table = pruning().database("postgres://unused").table(&pki);
    table["retention"]["revocations"] = toml::Value::String("24h".into());
    let text = toml::to_string(&table).unwrap();
    let cfg = mayfly::config::Config::parse(&text, "test").unwrap();
    let e = cfg
        .validate()
        .expect_err("24h is shorter than a token may live");
    assert!(
        e.to_string()
            .starts_with("retention.revocations: must be between 25h and 3650d"),
        "{e}"
    );
}
