//! Cedar decisions through the real server: reasons and policy ids in errors and
//! the audit trail, context that changes the outcome, reload on file change
//! (atomic, invalid sets refused), and the policy commands.
use crate::support::*;
use mayfly::api::pb;
use mayfly::clock::Clock;
use serde_json::Value;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

/// `(action, reason, detail)` of every audit event, oldest first.
async fn audit(app: &TestApp) -> Vec<(String, Option<String>, Value)> {
    let mut conn = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    let rows: Vec<(String, Option<String>, Value)> =
        sqlx::query_as("SELECT action, reason, detail FROM audit_events ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    rows
}

fn policies_of(detail: &Value) -> Vec<String> {
    serde_json::from_value(detail["policies"].clone()).unwrap_or_default()
}

fn policy_dir(app: &TestApp) -> PathBuf {
    app.pki.dir.path().join("policies")
}

fn crm(res: &str, action: &str, ttl: u64, task: &str) -> pb::MintTokenRequest {
    mint_scope(task, scope("crm-api", res, action), ttl)
}

#[tokio::test]
async fn a_denial_names_the_deciding_policy_and_its_reason_in_the_error_and_the_audit_trail() {
    let app = spawn_app().await;
    let mut req = start_request(AGENT, 600);
    req.scopes.push(scope("crm-api", "customers/vip/1", "read"));
    let err = app.tasks(ORCH).await.start_task(req).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message()
            .contains("is forbidden by policy test-no-vip (nobody touches VIP customers)"),
        "{}",
        err.message()
    );
    let events = audit(&app).await;
    let (_, reason, detail) = events
        .iter()
        .find(|(a, _, _)| a == "task_open_denied")
        .expect("the denial is audited");
    assert!(reason.as_deref().unwrap_or("").contains("test-no-vip"));
    assert_eq!(policies_of(detail), ["test-no-vip"]);
}

#[tokio::test]
async fn every_permit_records_the_policies_that_permitted_it() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    app.mint(AGENT, &task.id, "customers/eu/1", 60).await;
    let events = audit(&app).await;
    let opened = events.iter().find(|(a, _, _)| a == "task_opened").unwrap();
    assert_eq!(
        policies_of(&opened.2),
        ["test-crm", "test-open-support", "test-tickets"]
    );
    let minted = events.iter().find(|(a, _, _)| a == "token_minted").unwrap();
    assert_eq!(policies_of(&minted.2), ["test-crm"]);
}

#[tokio::test]
async fn the_requested_ttl_changes_the_decision_and_a_policy_denial_is_not_a_deviation() {
    let app = spawn_app().await;
    let mut req = start_request(AGENT, 600);
    req.scopes.push(scope("crm-api", "customers/eu/*", "write"));
    let task = app.open_task_with(req).await;
    let (mut tokens, _) = app.tokens(AGENT).await;
    tokens
        .mint_token(crm("customers/eu/1", "write", 60, &task.id))
        .await
        .expect("a one-minute write token");
    let err = tokens
        .refused(crm("customers/eu/1", "write", 61, &task.id))
        .await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains(
            "forbidden by policy test-short-writes (CRM write tokens live at most one minute)"
        ),
        "{}",
        err.message()
    );
    let events = audit(&app).await;
    let denied = events.iter().find(|(a, _, _)| a == "mint_denied").unwrap();
    assert_eq!(policies_of(&denied.2), ["test-short-writes"]);
    // Inside its declared scopes, a policy denial leaves the task active.
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );
}

/// Polls `f` until it returns true, for at most ten seconds.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10s");
}

#[tokio::test]
async fn a_changed_policy_set_applies_without_a_restart_and_an_invalid_one_keeps_the_last_good() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let (mut tokens, _) = app.tokens(AGENT).await;
    tokens
        .minted(crm("customers/eu/1", "read", 60, &task.id))
        .await;

    let freeze = policy_dir(&app).join("freeze.cedar");
    std::fs::write(
        &freeze,
        "@id(\"crm-freeze\")\n@reason(\"the CRM is frozen for an incident\")\n\
         forbid (principal, action, resource in Mayfly::Tool::\"crm-api\");\n",
    )
    .unwrap();
    eventually("the freeze policy taking effect", async || {
        let r = tokens
            .mint_token(crm("customers/eu/1", "read", 60, &task.id))
            .await;
        matches!(r, Err(e) if e.message().contains("crm-freeze (the CRM is frozen"))
    })
    .await;

    // A broken edit is refused: the freeze stays in force, /readyz says so (and
    // only that: anyone may read it; the reason is logged).
    std::fs::write(
        policy_dir(&app).join("broken.cedar"),
        "permit (principal, action, resource) when {",
    )
    .unwrap();
    eventually("/readyz reporting the failed reload", async || {
        let (status, body) = app.http_get("/readyz").await;
        status == 200 && body.contains("policy reload failed") && !body.contains("broken.cedar")
    })
    .await;
    let err = tokens
        .refused(crm("customers/eu/1", "read", 60, &task.id))
        .await;
    assert!(err.message().contains("crm-freeze"), "{}", err.message());

    // Fixing the directory lifts both.
    std::fs::remove_file(policy_dir(&app).join("broken.cedar")).unwrap();
    std::fs::remove_file(&freeze).unwrap();
    eventually("the freeze being lifted", async || {
        tokens
            .mint_token(crm("customers/eu/1", "read", 60, &task.id))
            .await
            .is_ok()
    })
    .await;
    let (_, body) = app.http_get("/readyz").await;
    assert!(!body.contains("reload failed"), "{body}");
}

fn reloads(body: &str) -> u64 {
    body.split(" reloads")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn reloading_while_agents_mint_never_fails_or_half_applies_a_request() {
    let app = Arc::new(spawn_with(Arc::new(Pki::new()), Settings::new().max_tokens(100_000)).await);
    let dir = policy_dir(&app);
    let original = std::fs::read_to_string(dir.join("test.cedar")).unwrap();
    // Version B renames the CRM permit: every mint is permitted by exactly one of
    // the two ids, never by neither (a half-swapped set would deny).
    let renamed = original.replace("@id(\"test-crm\")", "@id(\"test-crm-b\")");
    assert_ne!(original, renamed);
    let task = app.open_task(AGENT, 600).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (dir, stop) = (dir.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = if n.is_multiple_of(2) {
                    &renamed
                } else {
                    &original
                };
                // Write then rename, as deploy tools do, so a reader never sees a
                // half-written file.
                std::fs::write(dir.join("test.cedar.tmp"), text).unwrap();
                std::fs::rename(dir.join("test.cedar.tmp"), dir.join("test.cedar")).unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let mut minters = vec![];
    for _ in 0..4 {
        let (app, task) = (app.clone(), task.id.clone());
        minters.push(tokio::spawn(async move {
            let (mut tokens, _) = app.tokens(AGENT).await;
            for i in 0..60 {
                tokens
                    .mint_token(crm(&format!("customers/eu/{i}"), "read", 60, &task))
                    .await
                    .expect("every mint during reloads succeeds");
            }
        }));
    }
    for m in minters {
        m.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();

    let (_, body) = app.http_get("/readyz").await;
    assert!(
        reloads(&body) >= 2,
        "the set was reloaded while minting: {body}"
    );
    assert!(!body.contains("reload failed"), "{body}");
    let events = audit(&app).await;
    let mut by = std::collections::BTreeMap::<Vec<String>, usize>::new();
    for (_, _, d) in events.iter().filter(|(a, _, _)| a == "token_minted") {
        *by.entry(policies_of(d)).or_default() += 1;
    }
    assert_eq!(by.values().sum::<usize>(), 240);
    assert_eq!(by.len(), 2, "both versions decided some mints: {by:?}");
    for ids in by.keys() {
        assert!(
            ids == &["test-crm"] || ids == &["test-crm-b"],
            "a mint permitted by {ids:?}"
        );
    }
}

fn mayfly() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mayfly"))
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies")
}

#[tokio::test]
async fn serve_refuses_an_invalid_policy_set_naming_the_file_and_line() {
    let pki = Pki::new();
    let cfg = Settings::new().database(&admin_url()).write(&pki);
    let dir = pki.dir.path().join("policies");
    std::fs::write(
        dir.join("broken.cedar"),
        "// fine so far\n@id(\"nope\") permit (principal, action, resource) when { context.nope };\n",
    )
    .unwrap();
    let out = mayfly()
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("MAYFLY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a valid policy set"), "{err}");
    assert!(err.contains("broken.cedar:2:"), "{err}");
}

#[test]
fn the_policy_commands_exit_codes_tell_pass_mismatch_and_invalid_apart() {
    let out = mayfly()
        .args(["policy", "validate"])
        .arg(examples())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("policies valid"));

    let cases = examples().join("cases.toml");
    let out = mayfly()
        .args(["policy", "test"])
        .arg(examples())
        .arg(&cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");

    // A case whose expectation is wrong: exit 1 and the difference printed.
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        r#"
[[case]]
name = "support reads EU customers (wrongly expected to be denied)"
action = "mint"
principal = "spiffe://example.org/agent/support-eu-1"
workflow = "support-triage"
scope = "crm-api customers/eu/42 read"
ttl = "1m"
expect = "deny"

[[case]]
name = "in dev-us, restricted payments data is refused"
action = "mint"
principal = "spiffe://example.org/agent/finance-1"
workflow = "payments"
scope = "payments-api invoices/881 read"
ttl = "1m"
now = "2026-11-23T10:00:00Z"
environment = "dev-us"
expect = "deny"
reason_contains = "restricted-data-stays-in-prod-eu"
"#,
    )
    .unwrap();
    let out = mayfly()
        .args(["policy", "test"])
        .arg(examples())
        .arg(&wrong)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  support reads EU customers")
            && stdout.contains("expected deny, got allow by support-mint"),
        "{stdout}"
    );
    assert!(stdout.contains("ok    in dev-us"), "{stdout}");
    assert!(stdout.contains("2 cases, 1 passed, 1 failed"), "{stdout}");

    // An invalid cases file or policy set: exit 2, naming what is wrong.
    std::fs::write(&wrong, "[[case]]\nname = 1\n").unwrap();
    let out = mayfly()
        .args(["policy", "test"])
        .arg(examples())
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a valid cases file"));

    let bad = tmp.path().join("bad");
    copy_dir(&examples(), &bad);
    std::fs::write(
        bad.join("x.cedar"),
        "@id(\"x\") forbid (principal, action, resource) when { 1 };\n",
    )
    .unwrap();
    let out = mayfly()
        .args(["policy", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.cedar:1:"), "{err}");
}

#[tokio::test]
async fn sighup_reloads_the_policy_set_of_a_running_broker() {
    let pki = Pki::new();
    let db = fresh_database().await;
    // An hour between file checks: only the signal can cause the reload.
    let cfg = Settings::new()
        .database(&db.url)
        .policy_reload(Duration::from_secs(3600))
        .write(&pki);
    let served = Served::start(&cfg).await;
    let count = |b: &str| -> usize {
        b.split(" policies,")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let body = served.readyz().await;
    assert!(body.contains(" 0 reloads"), "{body}");
    let before = count(&body);
    assert!(before > 0, "{body}");

    std::fs::write(
        pki.dir.path().join("policies/extra.cedar"),
        "@id(\"extra\")\nforbid (principal, action, resource in Mayfly::Tool::\"github\");\n",
    )
    .unwrap();
    served.signal("HUP");
    let mut body = String::new();
    for _ in 0..200 {
        body = served.readyz().await;
        if body.contains(" 1 reloads") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body.contains(" 1 reloads"), "{body}");
    assert_eq!(count(&body), before + 1, "{body}");
    let (status, log) = served.stop().await;
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("policies reloaded"), "{log}");
}

#[tokio::test]
async fn a_workflow_whose_deviation_response_is_deny_refuses_without_ending_the_task() {
    let app = spawn_app().await;
    let mut req = start_request(AGENT, 600);
    req.workflow = "lenient".into();
    req.scopes = vec![scope("tickets", "tickets/*", "comment")];
    let task = app.open_task_with(req).await;
    let (mut tokens, _) = app.tokens(AGENT).await;
    let ticket = |res: &str, action: &str| mint_scope(&task.id, scope("tickets", res, action), 60);
    // Outside the declared scopes: denied, and the task lives on.
    let err = tokens.refused(ticket("tickets/1", "close")).await;
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("deviation"), "{}", err.message());
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );
    // Over the budget of two: exhausted, and the task still lives on.
    for n in 1..=2 {
        tokens
            .minted(ticket(&format!("tickets/{n}"), "comment"))
            .await;
    }
    let err = tokens.refused(ticket("tickets/3", "comment")).await;
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Active as i32
    );
    assert_eq!(app.task_tokens(&task.id).await.len(), 2);
}

#[tokio::test]
async fn the_example_workflows_decide_over_the_real_server() {
    let app = spawn_with(
        Arc::new(Pki::new()),
        Settings::new().policies(examples()).environment("prod-eu"),
    )
    .await;
    let (orch, fin_orch) = (
        "spiffe://example.org/orchestrator/main",
        "spiffe://example.org/orchestrator/finance",
    );
    let (support, coder, finance) = (
        "spiffe://example.org/agent/support-eu-1",
        "spiffe://example.org/agent/coding-1",
        "spiffe://example.org/agent/finance-1",
    );
    let open = async |by: &str, agent: &str, wf: &str, scopes: Vec<pb::Scope>| {
        app.tasks(by)
            .await
            .start_task(pb::StartTaskRequest {
                agent: agent.into(),
                workflow: wf.into(),
                objective: "example".into(),
                scopes,
                duration_seconds: 900,
            })
            .await
    };
    let mint = async |agent: &str, task: &str, s: pb::Scope| {
        app.tokens(agent)
            .await
            .0
            .mint_token(mint_scope(task, s, 60))
            .await
    };

    // Support: EU customer records yes, stored payment methods never.
    let t = open(
        orch,
        support,
        "support-triage",
        vec![scope("crm-api", "customers/eu/*", "read")],
    )
    .await
    .unwrap()
    .into_inner()
    .task
    .unwrap();
    mint(support, &t.id, scope("crm-api", "customers/eu/42", "read"))
        .await
        .unwrap();
    let err = open(
        orch,
        support,
        "support-triage",
        vec![scope("crm-api", "customers/us/*", "read")],
    )
    .await
    .unwrap_err();
    assert!(
        err.message().contains("no policy permits declaring scope"),
        "{}",
        err.message()
    );
    let err = open(
        orch,
        support,
        "support-triage",
        vec![scope("crm-api", "customers/eu/**", "read")],
    )
    .await
    .unwrap_err();
    assert!(
        err.message().contains("no-payment-methods-for-support"),
        "{}",
        err.message()
    );

    // Coding: pull requests and feature branches yes; a task may not even declare
    // a push to main (forbid wins over the branch permit).
    let t = open(
        orch,
        coder,
        "code-review",
        vec![
            scope("github", "repos/acme/api/pulls", "open_pr"),
            scope("github", "repos/acme/api/branches/fix-1", "push"),
        ],
    )
    .await
    .unwrap()
    .into_inner()
    .task
    .unwrap();
    mint(
        coder,
        &t.id,
        scope("github", "repos/acme/api/pulls", "open_pr"),
    )
    .await
    .unwrap();
    let err = open(
        orch,
        coder,
        "code-review",
        vec![scope("github", "repos/acme/api/branches/main", "push")],
    )
    .await
    .unwrap_err();
    assert!(
        err.message().contains("never-push-to-main"),
        "{}",
        err.message()
    );

    // Finance: only the finance orchestrator opens payments; paying needs step-up.
    let err = open(
        orch,
        finance,
        "payments",
        vec![scope("payments-api", "invoices/*", "read")],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let t = open(
        fin_orch,
        finance,
        "payments",
        vec![scope("payments-api", "invoices/*/payment", "pay")],
    )
    .await
    .unwrap()
    .into_inner()
    .task
    .unwrap();
    let paid = mint(
        finance,
        &t.id,
        scope("payments-api", "invoices/881/payment", "pay"),
    )
    .await;
    // The example permits payments in office hours only (UTC), and the test runs
    // at whatever hour it is: out of hours policy refuses before any approval.
    if (6..20).contains(&app.clock.now().hour()) {
        let pending = paid.unwrap().into_inner();
        assert!(pending.token.is_empty(), "paying waits for an approval");
        let approval = pending.approval.expect("a pending approval");
        assert_eq!(approval.state, pb::ApprovalState::Pending as i32);
        assert_eq!(approval.workflow, "payments");
    } else {
        let err = paid.unwrap_err();
        assert!(
            err.message().contains("payments-mint") || err.message().contains("no policy permits"),
            "{}",
            err.message()
        );
    }
    assert_eq!(
        app.get_task(&t.id).await.state,
        pb::TaskState::Active as i32
    );
}
