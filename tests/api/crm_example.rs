//! The example resource server (`examples/crm_server.rs`) run as a process against
//! the real broker, driven with curl over mTLS: a bound token reads, anything else
//! is refused with the verifier's verdict, and a replayed token gets its task
//! deviated through a misuse report.
use crate::support::*;
use mayfly::api::pb;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn example_binary() -> std::path::PathBuf {
    // target/<profile>/deps/api-<hash> -> target/<profile>/examples/crm_server
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("crm_server"))
        .unwrap()
}

#[tokio::test]
async fn the_example_crm_server_serves_bound_tokens_and_reports_replays() {
    let app = spawn_with(
        Arc::new(Pki::new()),
        Settings::new().watch_heartbeat(Duration::from_millis(100)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).unwrap();
    let server = app.pki.ca.server(VERIFIER, &["localhost"]).unwrap();
    w("ca.pem", app.pki.ca.cert_pem());
    w("verifier.crt", &server.cert_pem);
    w("verifier.key", &server.key_pem);
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _crm = tokio::process::Command::new(example_binary())
        .env("CRM_LISTEN", listen.to_string())
        .env("CRM_CERTS", dir.path())
        .env("MAYFLY_BROKER", format!("https://{}", app.grpc))
        .env("MAYFLY_ISSUER", "https://mayfly.test")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cargo test builds the examples");

    let task = app.open_task(AGENT, 600).await;
    let (mut tokens, agent) = app.tokens(AGENT).await;
    let token = tokens
        .minted(mint_request(&task.id, "customers/eu/42", 120))
        .await
        .token;
    w("agent.crt", &agent.cert_pem);
    w("agent.key", &agent.key_pem);
    let other = app.pki.ca.svid(AGENT2).unwrap();
    w("other.crt", &other.cert_pem);
    w("other.key", &other.key_pem);

    let get = |who: &str, path: &str| -> (String, String) {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--max-time", "5", "--cacert"])
            .arg(dir.path().join("ca.pem"))
            .arg("--cert")
            .arg(dir.path().join(format!("{who}.crt")))
            .arg("--key")
            .arg(dir.path().join(format!("{who}.key")))
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("https://localhost:{}{path}", listen.port()))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    };
    // Until the server listens and its verifier has heard the broker's first
    // heartbeat, answers are connection errors or 503 (stale).
    let mut first = (String::new(), String::new());
    for _ in 0..100 {
        first = get("agent", "/customers/eu/42");
        if first.0 == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(first.0, "200", "{first:?}");
    assert!(first.1.contains(AGENT), "{first:?}");

    assert_eq!(
        get("agent", "/customers/eu/43"),
        ("403".into(), "scope_not_covered".into())
    );
    assert_eq!(
        get("other", "/customers/eu/42"),
        ("403".into(), "not_bound_to_client".into())
    );
    // The replay was reported: the task deviates, and the token dies everywhere.
    let mut state = 0;
    for _ in 0..100 {
        state = app.get_task(&task.id).await.state;
        if state == pb::TaskState::Deviated as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, pb::TaskState::Deviated as i32);
    let mut last = (String::new(), String::new());
    for _ in 0..100 {
        last = get("agent", "/customers/eu/42");
        if last.0 == "401" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.1.starts_with("revoked"), "{last:?}");
}
