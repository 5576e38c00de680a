use crate::cli::command_as;
use crate::support::*;
use mayfly::bench::{Edge, Parties, Plan, Report, TaskPlan};
use mayfly::client::{Broker, Svid};
use mayfly::domain::Scope;
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;

/// The bench's parties against `app`: the broker by its address, the test
/// agent and orchestrator with fresh SVIDs written into the test's directory.
fn parties(app: &TestApp) -> Parties {
    let svid = |name: &str, id: &str| {
        let issued = app.pki.ca.svid(id).unwrap();
        let (cert, key) = (
            app.pki.path(&format!("{name}.crt")),
            app.pki.path(&format!("{name}.key")),
        );
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        Svid::read(("--cert", &cert), ("--key", &key)).unwrap()
    };
    Parties {
        broker: Broker::new(
            &format!("https://{}", app.grpc),
            Some("localhost"),
            &app.pki.path("ca.pem"),
        )
        .unwrap(),
        agent: svid("bench-agent", AGENT),
        orchestrator: svid("bench-orchestrator", ORCH),
    }
}

/// Four workers minting EU customer reads in support tasks of `budget` mints.
fn plan(edge: Edge, new_connection: bool, budget: u64, shared: bool) -> Plan {
    Plan {
        edge,
        concurrency: 4,
        new_connection,
        rate: None,
        hold: 0,
        ttl: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        tasks: TaskPlan {
            workflow: "support".into(),
            scope: Scope::declared("crm-api", "customers/eu/*", "read").unwrap(),
            duration: Duration::from_secs(600),
            budget,
            shared,
            objective: "bench test".into(),
        },
    }
}

/// Tasks of the app's database in `state`.
async fn tasks_in(app: &TestApp, state: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state = $1")
        .bind(state)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// What a run minted and opened, measured or not.
fn all_mints(r: &Report) -> u64 {
    r.mints + r.unmeasured.mints
}
fn all_tasks(r: &Report) -> u64 {
    r.tasks_opened + r.unmeasured.tasks_opened
}

#[tokio::test]
async fn the_bench_mints_over_every_edge_in_new_tasks_as_budgets_run_out_and_every_token_is_stored()
{
    let app = spawn_with(Arc::new(Pki::new()), Settings::new().max_tokens(3)).await;
    let parties = parties(&app);
    let (mut minted, mut opened) = (0, 0);
    for (edge, fresh, shared) in [
        (Edge::Grpc, false, false),
        (Edge::Http, false, false),
        (Edge::Grpc, true, false),
        (Edge::Http, true, false),
        (Edge::H2, false, true),
    ] {
        let what = format!("{edge:?}, new connections {fresh}, one task {shared}");
        let r = mayfly::bench::run(
            plan(edge, fresh, 3, shared),
            &parties,
            Duration::ZERO,
            Duration::from_millis(500),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(r.errors, 0, "{what}: {:?}", r.error_kinds);
        assert!(r.mints > 0, "{what}: {r:?}");
        assert_eq!(r.requests, r.mints, "{what}");
        assert_eq!(
            r.budget_refusals, 0,
            "{what}: the bench kept within the budget"
        );
        // Three mints a task: every task was replaced as its budget ran out.
        assert!(r.tasks_opened > 0, "{what}: {r:?}");
        assert!(all_tasks(&r) * 3 >= all_mints(&r), "{what}: {r:?}");
        minted += all_mints(&r);
        opened += all_tasks(&r);
    }
    assert_eq!(tokens_stored(&app.db_url).await, minted as i64);
    assert_eq!(rows(&app.db_url, "tasks").await, opened as i64);
    assert_eq!(
        tasks_in(&app, "active").await,
        opened as i64,
        "none deviated"
    );
}

#[tokio::test]
async fn a_budget_smaller_than_the_bench_was_told_is_learnt_from_the_refusals_on_either_edge() {
    let app = spawn_with(Arc::new(Pki::new()), Settings::new().max_tokens(3)).await;
    let parties = parties(&app);
    let mut minted = 0;
    let mut refused = 0;
    for edge in [Edge::Grpc, Edge::Http] {
        let r = mayfly::bench::run(
            plan(edge, false, 50, false),
            &parties,
            Duration::ZERO,
            Duration::from_millis(500),
        )
        .await
        .unwrap();
        assert_eq!(r.errors, 0, "{edge:?}: {:?}", r.error_kinds);
        // Each worker's task at most once before the lowered budget holds.
        assert!((1..=4).contains(&r.budget_refusals), "{edge:?}: {r:?}");
        assert!(
            all_tasks(&r) > 4 + r.budget_refusals,
            "{edge:?}: went on in new tasks: {r:?}"
        );
        assert_eq!(r.requests, r.mints + r.budget_refusals, "{edge:?}");
        minted += all_mints(&r);
        refused += r.budget_refusals;
    }
    assert_eq!(tokens_stored(&app.db_url).await, minted as i64);
    // A mint past the budget is a deviation: those tasks are revoked, no other.
    assert_eq!(tasks_in(&app, "deviated").await, refused as i64);
}

#[tokio::test]
async fn mayfly_bench_reports_json_and_names_a_bad_file_or_a_refused_orchestrator() {
    let app = spawn_app().await;
    // `command_as` writes o1.crt / o1.key for the orchestrator.
    let dir = app.pki.dir.path().to_path_buf();
    let orch_cert = dir.join("o1.crt");
    let orch = app.pki.ca.svid(ORCH).unwrap();
    std::fs::write(&orch_cert, &orch.cert_pem).unwrap();
    std::fs::write(dir.join("o1.key"), &orch.key_pem).unwrap();
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "--output",
            "json",
            "bench",
            "--workflow",
            "support",
            "--task-budget",
            "5",
            "-c",
            "2",
            "-d",
            "300ms",
            "--warmup",
            "0s",
        ];
        args.extend_from_slice(extra);
        command_as(&app, AGENT, &args)
    };
    let o1 = orch_cert.to_str().unwrap();
    let o1_key = dir.join("o1.key");
    let o1_key = o1_key.to_str().unwrap();

    let out = bench(&["--orchestrator-cert", o1, "--orchestrator-key", o1_key])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["mints"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["edge"], "grpc");
    assert!(r["latency_ms"]["p99"].as_f64().is_some(), "{r}");

    // A file that is not there: exit 3, naming the flag and the path.
    let out = bench(&["--orchestrator-cert", "/nonexistent/orch.crt"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("--orchestrator-cert: cannot read /nonexistent/orch.crt"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // A key file for a certificate: named as such.
    let out = bench(&["--orchestrator-cert", o1, "--orchestrator-key", o1])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "--orchestrator-key {o1}: holds no PEM private key"
        )),
        "{err}"
    );

    // The agent's own SVID as the orchestrator's: the broker's refusal, said
    // as such (exit 4), before any load.
    let agent_cert = dir.join("a1.crt");
    let agent_key = dir.join("a1.key");
    let out = bench(&[
        "--orchestrator-cert",
        agent_cert.to_str().unwrap(),
        "--orchestrator-key",
        agent_key.to_str().unwrap(),
    ])
    .output()
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("refused to open a support task"), "{err}");
    assert!(err.contains("orchestrator role"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}
