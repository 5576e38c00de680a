use crate::support::*;
use mayfly::api::pb;
use serde_json::Value;

/// Runs the `mayfly` binary as `who` against `app`, asking for JSON.
pub(crate) async fn mayfly(app: &TestApp, who: &str, args: &[&str]) -> (bool, Value, String) {
    let mut with_json = vec!["--output", "json"];
    with_json.extend_from_slice(args);
    let out = run_as(app, who, &with_json).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The `mayfly` binary as `who` against `app`, with `args`, not yet run.
pub(crate) fn command_as(app: &TestApp, who: &str, args: &[&str]) -> tokio::process::Command {
    let dir = app.pki.dir.path();
    let name = who.rsplit('/').next().unwrap();
    let cert = dir.join(format!("{name}.crt"));
    if !cert.exists() {
        let id = app.pki.ca.svid(who).unwrap();
        std::fs::write(&cert, &id.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &id.key_pem).unwrap();
    }
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"));
    cmd.arg("--broker")
        .arg(format!("https://{}", app.grpc))
        .arg("--server-name")
        .arg("localhost")
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(dir.join(format!("{name}.key")))
        .args(args)
        .kill_on_drop(true);
    cmd
}

/// Runs the `mayfly` binary as `who` against `app`, as given.
async fn run_as(app: &TestApp, who: &str, args: &[&str]) -> std::process::Output {
    command_as(app, who, args).output().await.unwrap()
}

#[tokio::test]
async fn the_cli_drives_a_task_from_opening_to_revocation() {
    let app = spawn_app().await;
    let (ok, task, err) = mayfly(
        &app,
        ORCH,
        &[
            "task",
            "start",
            "--agent",
            AGENT,
            "--workflow",
            "support",
            "--objective",
            "triage",
            "--scope",
            "crm-api customers/eu/* read",
            "--duration",
            "10m",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(task["state"], "active");

    let (ok, minted, err) = mayfly(
        &app,
        AGENT,
        &[
            "token",
            "mint",
            "--task",
            &id,
            "--scope",
            "crm-api customers/eu/7 read",
            "--ttl",
            "2m",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(minted["ttl_seconds"], 120);
    let token = minted["token"].as_str().unwrap().to_string();

    let (ok, r, _) = mayfly(&app, VERIFIER, &["token", "introspect", &token]).await;
    assert!(ok);
    assert_eq!(r["active"], true);
    assert_eq!(r["claims"]["sub"], AGENT);

    let (ok, done, _) = mayfly(&app, ORCH, &["task", "complete", &id]).await;
    assert!(ok);
    assert_eq!(done["task"]["state"], "completed");
    let (_, r, _) = mayfly(&app, VERIFIER, &["token", "introspect", &token]).await;
    assert_eq!(r["active"], false);

    let (ok, list, _) = mayfly(&app, ORCH, &["task", "list", "--state", "completed"]).await;
    assert!(ok);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (ok, tokens, _) = mayfly(&app, ADMIN, &["tokens", "--task", &id]).await;
    assert!(ok);
    assert_eq!(tokens[0]["active"], false);

    let (ok, r, _) = mayfly(
        &app,
        ADMIN,
        &["revoke", "--reason", "drill", "agent", AGENT],
    )
    .await;
    assert!(ok);
    assert_eq!(r["event"]["sequence"], 2);

    // Refusals exit non-zero with the status and the reason.
    let (ok, _, err) = mayfly(&app, ADMIN, &["revoke", "all"]).await;
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument: reason: is required"),
        "{err}"
    );
    let (ok, _, err) = mayfly(&app, AGENT, &["revoke", "--reason", "x", "all"]).await;
    assert!(!ok);
    assert!(err.contains("PermissionDenied"), "{err}");
    let (ok, _, err) = mayfly(
        &app,
        AGENT,
        &[
            "token",
            "mint",
            "--task",
            &id,
            "--scope",
            "crm-api customers/eu/7",
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("must be three words"), "{err}");

    let (ok, jwks, _) = mayfly(&app, AGENT, &["jwks"]).await;
    assert!(ok);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_cli_delegates_redeems_and_decides_step_up_approvals() {
    let app = spawn_app().await;
    let mut req = start_request(AGENT, 600);
    req.scopes.push(scope("tickets", "tickets/4711", "delete"));
    let task = app.open_task_with(req).await;
    let helper = "spiffe://example.org/agent/helper-1";

    // Agent → sub-agent, each with its own certificate file.
    let (ok, parent, err) = mayfly(
        &app,
        AGENT,
        &[
            "token",
            "mint",
            "--task",
            &task.id,
            "--scope",
            "crm-api customers/eu/7 read",
            "--ttl",
            "2m",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, offer, err) = mayfly(
        &app,
        AGENT,
        &[
            "token",
            "delegate",
            "--token",
            parent["token"].as_str().unwrap(),
            "--to",
            helper,
            "--scope",
            "crm-api customers/eu/7 read",
            "--ttl",
            "1m",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(offer["depth"], 1);
    let id = offer["delegation_id"].as_str().unwrap();
    let (ok, _, err) = mayfly(&app, AGENT2, &["token", "redeem", id]).await;
    assert!(!ok);
    assert!(
        err.contains("PermissionDenied") && err.contains("names another sub-agent"),
        "{err}"
    );
    let (ok, child, err) = mayfly(&app, helper, &["token", "redeem", id]).await;
    assert!(ok, "{err}");
    assert!(child["token"].as_str().is_some_and(|t| !t.is_empty()));
    let (ok, listed, err) = mayfly(&app, ADMIN, &["tokens", "--task", &task.id]).await;
    assert!(ok, "{err}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["jti"] == child["jti"]
                && t["depth"] == 1
                && t["parent_jti"] == parent["jti"])
    );

    // Step-up: the mint prints a pending approval; the security team lists and
    // approves it; the agent's await prints the token.
    let delete = [
        "token",
        "mint",
        "--task",
        &task.id,
        "--scope",
        "tickets tickets/4711 delete",
        "--ttl",
        "1m",
    ];
    let (ok, asked, err) = mayfly(&app, AGENT, &delete).await;
    assert!(ok, "{err}");
    assert!(err.contains("mayfly token await"), "{err}");
    let approval = asked["approval"]["id"].as_str().unwrap().to_string();
    assert_eq!(asked["approval"]["state"], "pending");
    let (ok, pending, err) = mayfly(&app, ADMIN, &["approvals", "list"]).await;
    assert!(ok, "{err}");
    assert_eq!(pending[0]["id"], approval.as_str());
    assert_eq!(pending[0]["requester"], AGENT);
    assert_eq!(pending[0]["objective"], task.objective.as_str());
    let (ok, _, err) = mayfly(&app, ADMIN, &["approvals", "approve", &approval]).await;
    assert!(!ok, "a decision needs a reason");
    assert!(err.contains("--reason"), "{err}");
    let (ok, decided, err) = mayfly(
        &app,
        ADMIN,
        &[
            "approvals",
            "approve",
            &approval,
            "--reason",
            "ticket 4711 is spam, checked",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(decided["state"], "approved");
    let (ok, _, err) = mayfly(
        &app,
        ADMIN,
        &["approvals", "deny", &approval, "--reason", "too late"],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("FailedPrecondition") && err.contains("already approved"),
        "{err}"
    );
    let (ok, got, err) = mayfly(&app, AGENT, &["token", "await", &approval, "--wait", "5s"]).await;
    assert!(ok, "{err}");
    assert_eq!(got["approval"]["state"], "used");
    assert!(
        got["token"]["token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    // A second request, denied from the terminal.
    let (ok, asked, err) = mayfly(&app, AGENT, &delete).await;
    assert!(ok, "{err}");
    let second = asked["approval"]["id"].as_str().unwrap().to_string();
    let (ok, denied, err) = mayfly(
        &app,
        ADMIN,
        &["approvals", "deny", &second, "--reason", "not today"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(denied["state"], "denied");
    let (ok, got, err) = mayfly(&app, AGENT, &["token", "await", &second, "--wait", "0s"]).await;
    assert!(ok, "{err}");
    assert_eq!(got["approval"]["state"], "denied");
    assert_eq!(got["token"], Value::Null);
    let (ok, all, _) = mayfly(
        &app,
        ADMIN,
        &["approvals", "list", "--all", "--task", &task.id],
    )
    .await;
    assert!(ok);
    assert_eq!(all.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn audit_verify_exits_zero_on_an_intact_chain_and_one_naming_a_broken_event() {
    let app = spawn_app().await;
    app.open_task(AGENT, 600).await;
    app.open_task(AGENT, 600).await;
    let (ok, r, err) = mayfly(&app, ADMIN, &["audit", "verify"]).await;
    assert!(ok, "{err}");
    assert_eq!(r["intact"], true);
    assert_eq!(r["events_checked"], 2);

    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&app.db_url)
        .await
        .unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_events SET actor = 'spiffe://example.org/orchestrator/x' WHERE seq = 2",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (ok, r, err) = mayfly(&app, ADMIN, &["audit", "verify"]).await;
    assert!(!ok, "a broken chain exits non-zero");
    assert_eq!(r["intact"], false);
    assert_eq!(r["first_broken"], 2);
    assert!(err.contains("broken at event 2"), "{err}");
}

#[tokio::test]
async fn the_cli_freezes_and_unfreezes_issuance() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let mint = [
        "token",
        "mint",
        "--task",
        &task.id,
        "--scope",
        "crm-api customers/eu/7 read",
    ];
    let (ok, _, err) = mayfly(&app, ADMIN, &["freeze", "agent", AGENT]).await;
    assert!(
        !ok && err.contains("reason"),
        "a freeze needs a reason: {err}"
    );
    let (ok, f, err) = mayfly(
        &app,
        ADMIN,
        &["freeze", "agent", AGENT, "--reason", "incident 42"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(f["freeze"]["target"]["agent"], AGENT);
    assert_eq!(f["already_frozen"], false);
    let (ok, _, err) = mayfly(&app, AGENT, &mint).await;
    assert!(!ok);
    assert!(
        err.contains("PermissionDenied") && err.contains("incident 42"),
        "{err}"
    );
    let (ok, listed, _) = mayfly(&app, ADMIN, &["freezes"]).await;
    assert!(ok);
    assert_eq!(listed[0]["reason"], "incident 42");
    let (ok, _, err) = mayfly(
        &app,
        ADMIN,
        &["unfreeze", "agent", AGENT, "--reason", "resolved"],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = mayfly(&app, AGENT, &mint).await;
    assert!(ok, "{err}");
}

#[tokio::test]
async fn the_cli_quarantines_a_compromised_agent_in_one_call() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let before = app.mint(AGENT, &task.id, "customers/eu/7", 120).await;
    let (ok, _, err) = mayfly(&app, ADMIN, &["quarantine", "agent", AGENT]).await;
    assert!(
        !ok && err.contains("reason"),
        "a quarantine needs a reason: {err}"
    );
    let (ok, q, err) = mayfly(
        &app,
        ADMIN,
        &["quarantine", "agent", AGENT, "--reason", "incident 43"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(q["tokens_revoked"], 1);
    assert_eq!(q["tasks_stopped"], 1);
    assert_eq!(q["repeated"], false);
    assert_eq!(q["freeze"]["target"]["agent"], AGENT);
    assert_eq!(q["already_frozen"], false);
    assert_eq!(q["event"]["target"]["agent"], AGENT);
    // Its token is dead and its task revoked.
    assert!(!introspect_active(&app, &before.token).await);
    assert_eq!(
        app.get_task(&task.id).await.state,
        pb::TaskState::Revoked as i32
    );
    // Again: the same event, nothing new.
    let (ok, again, err) = mayfly(
        &app,
        ADMIN,
        &[
            "quarantine",
            "agent",
            AGENT,
            "--reason",
            "incident 43, again",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(again["repeated"], true);
    assert_eq!(again["event"]["sequence"], q["event"]["sequence"]);
    assert_eq!(again["already_frozen"], true);
    // A new task of it mints nothing while the freeze stands.
    let later = app.open_task(AGENT, 600).await;
    let mint = [
        "token",
        "mint",
        "--task",
        &later.id,
        "--scope",
        "crm-api customers/eu/7 read",
    ];
    let (ok, _, err) = mayfly(&app, AGENT, &mint).await;
    assert!(
        !ok && err.contains("PermissionDenied") && err.contains("incident 43"),
        "{err}"
    );
    // Lifted, the agent mints again.
    let (ok, _, err) = mayfly(
        &app,
        ADMIN,
        &["unfreeze", "agent", AGENT, "--reason", "resolved"],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = mayfly(&app, AGENT, &mint).await;
    assert!(ok, "{err}");
}

#[tokio::test]
async fn the_cli_answers_audit_questions_and_exports_json_lines() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    app.mint(AGENT, &task.id, "customers/eu/5", 60).await;
    app.mint(AGENT, &task.id, "customers/eu/6", 60).await;

    // JSON lines: every event, one per line, paged through with a cursor.
    let (ok, _, err) = mayfly(&app, ADMIN, &["audit", "events", "--agent", AGENT]).await;
    assert!(ok, "{err}");
    // (`mayfly` above wrote the admin's certificate as s1.crt / s1.key.)
    let dir = app.pki.dir.path();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .arg("--broker")
        .arg(format!("https://{}", app.grpc))
        .args(["--server-name", "localhost", "--ca"])
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("s1.crt"))
        .arg("--key")
        .arg(dir.join("s1.key"))
        .args([
            "audit", "events", "--jsonl", "--limit", "1", "--since", "1h",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "task opened and two mints");
    assert_eq!(lines[1]["action"], "token_minted");
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["sequence"].as_u64() < w[1]["sequence"].as_u64())
    );

    let (ok, story, err) = mayfly(&app, ADMIN, &["audit", "task", &task.id]).await;
    assert!(ok, "{err}");
    assert_eq!(story["task"]["objective"], task.objective.as_str());
    assert_eq!(story["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(story["events"].as_array().unwrap().len(), 3);

    let (ok, access, err) = mayfly(
        &app,
        ADMIN,
        &[
            "audit",
            "access",
            "--audience",
            "crm-api",
            "--resource",
            "customers/eu/5",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(access[0]["agent"], AGENT);
    assert_eq!(access[0]["tokens"], 1);
    let (ok, _, err) = mayfly(
        &app,
        ADMIN,
        &["audit", "events", "--since", "yesterday-ish"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("--since"), "{err}");
}

#[tokio::test]
async fn people_get_tables_and_scripts_get_exit_codes_they_can_branch_on() {
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    app.mint(AGENT, &task.id, "customers/eu/5", 60).await;

    // A list is a table with a header; a record is aligned field/value lines.
    let out = run_as(&app, ADMIN, &["tokens", "--task", &task.id]).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("JTI") && header.contains("SCOPE"),
        "{text}"
    );
    assert!(lines.next().unwrap().contains(&task.id), "{text}");
    let out = run_as(&app, ORCH, &["task", "get", &task.id]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("state") && l.ends_with("active")),
        "{text}"
    );

    let code = |out: std::process::Output| out.status.code().unwrap();
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        code(run_as(&app, ORCH, &["task", "get", &unknown]).await),
        5,
        "not found"
    );
    assert_eq!(
        code(run_as(&app, AGENT, &["tokens"]).await),
        4,
        "refused: not an admin"
    );
    assert_eq!(
        code(run_as(&app, ORCH, &["task", "get", "not-a-uuid"]).await),
        8,
        "invalid"
    );
    let done = run_as(&app, ORCH, &["task", "complete", &task.id]).await;
    assert!(done.status.success());
    assert_eq!(
        code(run_as(&app, ORCH, &["task", "complete", &task.id]).await),
        6,
        "not active"
    );
    let bad_scope = ["token", "mint", "--task", &task.id, "--scope", "crm-api"];
    assert_eq!(code(run_as(&app, AGENT, &bad_scope).await), 2, "usage");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["--broker", "https://127.0.0.1:1", "--ca"])
        .arg(app.pki.dir.path().join("ca.pem"))
        .args(["--cert", "/nonexistent.crt", "tokens"])
        .output()
        .await
        .unwrap();
    assert_eq!(code(out), 3, "unreachable: the certificate cannot be read");
}

#[tokio::test]
async fn the_cli_watches_revocations_of_every_target_and_freezes_every_target() {
    use tokio::io::AsyncBufReadExt;
    let app = spawn_app().await;
    // A verifier follows the stream as JSON lines.
    let mut watch = command_as(&app, VERIFIER, &["watch", "--after", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();

    // Every revocation target, and the field a script needs, by --field.
    let t1 = app.open_task(AGENT, 600).await;
    let t2 = app.open_task(AGENT, 600).await;
    let minted = app.mint(AGENT, &t1.id, "customers/eu/1", 60).await;
    let revocations: [&[&str]; 4] = [
        &["token", &minted.jti],
        &["task", &t2.id],
        &["workflow", "support"],
        &["all"],
    ];
    for (i, target) in revocations.iter().enumerate() {
        let mut args = vec!["revoke", "--reason", "drill"];
        args.extend_from_slice(target);
        let (ok, r, err) = mayfly(&app, ADMIN, &args).await;
        assert!(ok, "revoke {target:?}: {err}");
        assert_eq!(r["event"]["sequence"], i as u64 + 1, "{r}");
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .expect("watch prints the event")
            .unwrap()
            .expect("watch still running");
        let ev: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(ev["sequence"], i as u64 + 1, "{line}");
        assert_eq!(ev["reason"], "drill");
        assert_eq!(ev["actor"], ADMIN);
        let expected = match target {
            [kind, value] => serde_json::json!({ *kind: value }),
            _ => serde_json::json!("all"),
        };
        assert_eq!(ev["target"], expected, "{line}");
    }
    let (_, r, _) = mayfly(&app, VERIFIER, &["token", "introspect", &minted.token]).await;
    assert_eq!(r["active"], false);
    watch.kill().await.unwrap();
    // A reader that stops early (`| head -1`) ends the watch quietly, with 0.
    let watch = command_as(&app, VERIFIER, &["watch", "--after", "0"]);
    let mut piped = tokio::process::Command::new("bash");
    piped
        .arg("-c")
        .arg(r#""$0" "$@" | head -n 1; exit "${PIPESTATUS[0]}""#)
        .arg(watch.as_std().get_program())
        .args(watch.as_std().get_args())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let piped = piped.spawn().unwrap();
    // One more event once `head` is gone: the watch's next write finds no reader.
    // (A new task: revoking everything again, with nothing live, adds no event.)
    let t3 = app.open_task(AGENT, 600).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (ok, r, err) = mayfly(
        &app,
        ADMIN,
        &["revoke", "--reason", "again", "task", &t3.id],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(r["repeated"], false, "{r}");
    let piped = tokio::time::timeout(std::time::Duration::from_secs(10), piped.wait_with_output())
        .await
        .expect("the watch ends when its reader is gone")
        .unwrap();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.status.success(), "{:?}: {stderr}", piped.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&piped.stdout).lines().count(), 1);

    // --field prints one value as plain text; a missing one is a usage error.
    let out = run_as(&app, ORCH, &["task", "get", &t1.id, "--field", "state"]).await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "revoked\n");
    let out = run_as(
        &app,
        ORCH,
        &["task", "get", &t1.id, "--field", "scopes.0.audience"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "crm-api\n");
    let out = run_as(&app, ORCH, &["task", "get", &t1.id, "--field", "colour"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--field colour") && err.contains("state"),
        "{err}"
    );

    // Freezing a workflow and everything; each lifted cleanly.
    let t3 = app.open_task(AGENT, 600).await;
    let mint = [
        "token",
        "mint",
        "--task",
        &t3.id,
        "--scope",
        "crm-api customers/eu/7 read",
    ];
    let freezes: [&[&str]; 2] = [&["workflow", "support"], &["all"]];
    for target in freezes {
        let mut args = vec!["freeze", "--reason", "incident 7"];
        args.extend_from_slice(target);
        let (ok, f, err) = mayfly(&app, ADMIN, &args).await;
        assert!(ok, "freeze {target:?}: {err}");
        assert_eq!(f["already_frozen"], false);
        let (ok, listed, _) = mayfly(&app, ADMIN, &["freezes"]).await;
        assert!(ok);
        assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
        let out = run_as(&app, AGENT, &mint).await;
        assert_eq!(out.status.code(), Some(4), "refused while frozen");
        assert!(String::from_utf8_lossy(&out.stderr).contains("incident 7"));
        let mut args = vec!["unfreeze", "--reason", "resolved"];
        args.extend_from_slice(target);
        let (ok, lifted, err) = mayfly(&app, ADMIN, &args).await;
        assert!(ok, "unfreeze {target:?}: {err}");
        assert_eq!(lifted["lifted"]["reason"], "incident 7", "{lifted}");
        let (ok, _, err) = mayfly(&app, AGENT, &mint).await;
        assert!(ok, "issuance resumes after lifting {target:?}: {err}");
    }
    let (ok, listed, _) = mayfly(&app, ADMIN, &["freezes"]).await;
    assert!(ok);
    assert_eq!(listed, serde_json::json!([]));
}
