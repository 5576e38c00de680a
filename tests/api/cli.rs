use crate::helpers::*;
use serde_json::Value;

/// Runs the `mayfly` binary as `who` against `app`.
async fn mayfly(app: &TestApp, who: &str, args: &[&str]) -> (bool, Value, String) {
    let dir = app.pki.dir.path();
    let name = who.rsplit('/').next().unwrap();
    let cert = dir.join(format!("{name}.crt"));
    if !cert.exists() {
        let id = app.pki.ca.svid(who).unwrap();
        std::fs::write(&cert, &id.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &id.key_pem).unwrap();
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .arg("--broker")
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
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
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
