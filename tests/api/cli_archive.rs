//! `mayfly audit archive` and `mayfly audit verify-archive`, the binary against
//! the real server on PostgreSQL and SQLite: an archive file that verifies
//! offline (no broker) against the checkpoint printed, the events gone, `audit
//! verify` passing from the anchor it shows, a file never overwritten, nothing
//! to archive, a tampered line named, a second archive continuing the first.
use crate::audit_archive::{sealer_caught_up, spawn_sqlite};
use crate::cli::{command_as, mayfly};
use crate::support::*;
use mayfly::clock::Clock;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn work(app: &TestApp) {
    let task = app.open_task(AGENT, 600).await;
    app.mint(AGENT, &task.id, "customers/eu/1", 60).await;
    sealer_caught_up(app).await;
}

/// `mayfly verify-archive` with no broker to reach (the defaults name none
/// that runs), in `dir`: (success, JSON output, stderr).
async fn verify_offline(dir: &Path, args: &[&str]) -> (bool, Value, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["--output", "json", "audit", "verify-archive"])
        .args(args)
        .current_dir(dir)
        .env_remove("MAYFLY_BROKER")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn the_cli_archives_and_verifies_archives_offline(app: &TestApp) {
    work(app).await;
    let cut = rfc3339(app.clock.now() + Duration::from_secs(5));
    app.clock.advance(Duration::from_secs(10));
    work(app).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (a1, a2) = (file("2026-q3.jsonl"), file("2026-q4.jsonl"));

    let archive = ["audit", "archive", "--before", &cut, "--out", &a1];
    let (ok, r, err) = mayfly(app, ADMIN, &archive).await;
    assert!(ok, "{err}");
    assert_eq!(r["archived"], true);
    assert_eq!(r["events_archived"], 2, "{r}");
    assert_eq!(r["events_removed"], 2);
    let checkpoint = r["checkpoint"].as_str().unwrap().to_string();
    assert!(checkpoint.starts_with("2:"), "{checkpoint}");
    let text = std::fs::read_to_string(&a1).unwrap();
    assert_eq!(text.lines().count(), 3, "a header and two events");
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["format"], "mayfly-audit-archive");
    assert_eq!(header["events"], 2);

    // The broker's chain now starts at the checkpoint; the file verifies
    // offline against it, as people read it too.
    let (ok, v, err) = mayfly(app, ADMIN, &["audit", "verify"]).await;
    assert!(ok, "{err}");
    assert_eq!(v["anchor"], checkpoint.as_str());
    let (ok, v, err) = verify_offline(dir.path(), &[&a1, "--checkpoint", &checkpoint]).await;
    assert!(ok, "{err}");
    assert_eq!(
        (v["intact"].clone(), v["events"].clone()),
        (true.into(), 2.into())
    );
    assert_eq!(v["checkpoint"], checkpoint.as_str());
    let human = command_as(app, ADMIN, &["audit", "verify-archive", &a1])
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&human.stdout);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("intact") && l.ends_with("true")),
        "{shown}"
    );

    // Never over an existing file; nothing to archive is said, and no file.
    let (ok, _, err) = mayfly(app, ADMIN, &archive).await;
    assert!(!ok);
    assert!(err.contains("never overwritten"), "{err}");
    assert_eq!(std::fs::read_to_string(&a1).unwrap(), text);
    let (ok, r, err) = mayfly(
        app,
        ADMIN,
        &["audit", "archive", "--before", &cut, "--out", &a2],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(r["archived"], false);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("nothing to archive"),
        "{r}"
    );
    assert!(!Path::new(&a2).exists());

    // A line edited in the file is named.
    let tampered = file("tampered.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    let edited = lines[2].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    std::fs::write(&tampered, [lines[0], lines[1], &edited, ""].join("\n")).unwrap();
    let (ok, v, err) = verify_offline(dir.path(), &[&tampered]).await;
    assert!(!ok);
    assert_eq!(
        (v["intact"].clone(), v["line"].clone()),
        (false.into(), 3.into())
    );
    assert!(err.contains("line 3") && err.contains("edited"), "{err}");
    let (ok, _, err) = verify_offline(dir.path(), &[&a1, "--checkpoint", "2:nothex"]).await;
    assert!(!ok && err.contains("--checkpoint"), "{err}");
    let (ok, _, err) = verify_offline(dir.path(), &[&file("missing.jsonl")]).await;
    assert!(!ok && err.contains("cannot read"), "{err}");

    // The next archive starts where this one ended, and verifies against it.
    let cut2 = rfc3339(app.clock.now() + Duration::from_secs(1));
    app.clock.advance(Duration::from_secs(10));
    work(app).await;
    let (ok, r, err) = mayfly(
        app,
        ADMIN,
        &["audit", "archive", "--before", &cut2, "--out", &a2],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(r["anchor"], checkpoint.as_str());
    let next = r["checkpoint"].as_str().unwrap().to_string();
    let (ok, v, err) = verify_offline(dir.path(), &[&a2, "--checkpoint", &checkpoint]).await;
    assert!(ok, "{err}");
    assert_eq!(v["anchor"], checkpoint.as_str());
    assert_eq!(v["checkpoint"], next.as_str());
    let (ok, v, _) = mayfly(app, ADMIN, &["audit", "verify", "--checkpoint", &next]).await;
    assert!(ok);
    assert_eq!(v["anchor"], next.as_str());
    // A checkpoint the store archived since: its archive verifies against it.
    let (ok, _, err) = mayfly(
        app,
        ADMIN,
        &["audit", "verify", "--checkpoint", &checkpoint],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("FailedPrecondition") && err.contains("verify-archive"),
        "{err}"
    );

    // Only the security team archives; a refusal leaves no file.
    let a3 = file("agent.jsonl");
    let (ok, _, err) = mayfly(
        app,
        AGENT,
        &["audit", "archive", "--before", &cut2, "--out", &a3],
    )
    .await;
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    assert!(!Path::new(&a3).exists());
}

#[tokio::test]
async fn the_cli_archives_the_audit_trail_on_postgresql_and_verifies_archives_offline() {
    let app = spawn_app().await;
    the_cli_archives_and_verifies_archives_offline(&app).await;
}

#[tokio::test]
async fn the_cli_archives_the_audit_trail_on_sqlite_and_verifies_archives_offline() {
    let (app, _dir) = spawn_sqlite().await;
    the_cli_archives_and_verifies_archives_offline(&app).await;
}
