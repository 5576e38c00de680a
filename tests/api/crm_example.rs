//! The example resource server (`examples/crm_server.rs`) run as a process against
//! the real broker, driven with curl over mTLS: its RFC 9728 metadata is public, a
//! bound token reads, anything else is refused as an MCP server must (401 with a
//! challenge naming the metadata, 400, 403 `insufficient_scope`), and a replayed
//! token gets its task deviated through a misuse report.
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
async fn the_example_crm_server_serves_its_metadata_and_bound_tokens_and_reports_replays() {
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
        .env(
            "CRM_RESOURCE",
            format!("https://localhost:{}", listen.port()),
        )
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

    let port = listen.port();
    let metadata_url = format!("https://localhost:{port}/.well-known/oauth-protected-resource");
    let bare_challenge = format!("Bearer resource_metadata=\"{metadata_url}\"");
    // curl as `who` (no client certificate: None) with an Authorization header.
    let curl = |who: Option<&str>, authorization: Option<&str>, path: &str| -> Reply {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "5", "--cacert"])
            .arg(dir.path().join("ca.pem"))
            .args(["-w", "\n%header{www-authenticate}\n%{http_code}"]);
        if let Some(who) = who {
            cmd.arg("--cert")
                .arg(dir.path().join(format!("{who}.crt")))
                .arg("--key")
                .arg(dir.path().join(format!("{who}.key")));
        }
        if let Some(value) = authorization {
            cmd.args(["-H", &format!("Authorization: {value}")]);
        }
        let out = cmd
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.rsplitn(3, '\n');
        let code = lines.next().unwrap_or_default().to_string();
        let challenge = lines.next().unwrap_or_default().to_string();
        let body = lines.next().unwrap_or_default().to_string();
        Reply {
            code,
            challenge,
            body,
        }
    };
    let bearer = format!("Bearer {token}");
    let get = |who: &str, path: &str| curl(Some(who), Some(&bearer), path);

    // The metadata is public: no client certificate, no token, no verifier sync.
    let mut meta = Reply::default();
    for _ in 0..100 {
        meta = curl(None, None, "/.well-known/oauth-protected-resource");
        if meta.code == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(meta.code, "200", "{meta:?}");
    let doc: serde_json::Value = serde_json::from_str(&meta.body).unwrap();
    assert_eq!(doc["resource"], format!("https://localhost:{port}"));
    assert_eq!(
        doc["authorization_servers"],
        serde_json::json!(["https://mayfly.test"])
    );
    assert_eq!(
        doc["bearer_methods_supported"],
        serde_json::json!(["header"])
    );
    assert_eq!(doc["tls_client_certificate_bound_access_tokens"], true);
    assert_eq!(
        doc["scopes_supported"],
        serde_json::json!(["read:customers/*/*"])
    );

    // Until its verifier has heard the broker's first heartbeat, answers are 503
    // (stale).
    let mut first = Reply::default();
    for _ in 0..100 {
        first = get("agent", "/customers/eu/42");
        if first.code == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(first.code, "200", "{first:?}");
    assert!(first.body.contains(AGENT), "{first:?}");

    // No token, with or without a client certificate: the bare challenge that
    // starts an MCP client's discovery.
    for who in [Some("agent"), None] {
        let r = curl(who, None, "/customers/eu/42");
        assert_eq!(
            (r.code.as_str(), r.challenge.as_str()),
            ("401", bare_challenge.as_str())
        );
    }
    let r = curl(
        Some("agent"),
        Some("Basic YWRtaW46YWRtaW4="),
        "/customers/eu/42",
    );
    assert_eq!(
        (r.code.as_str(), r.challenge.as_str()),
        ("401", bare_challenge.as_str())
    );
    // A malformed header is a bad request; a garbage token an invalid one.
    let r = curl(Some("agent"), Some("Bearer two words"), "/customers/eu/42");
    assert_eq!(r.code, "400", "{r:?}");
    assert!(
        r.challenge.starts_with("Bearer error=\"invalid_request\""),
        "{r:?}"
    );
    let r = curl(Some("agent"), Some("Bearer not-a-jwt"), "/customers/eu/42");
    assert_eq!(r.code, "401", "{r:?}");
    assert_eq!(
        r.challenge,
        format!(
            "Bearer error=\"invalid_token\", error_description=\"the token is not a Mayfly \
             access token\", resource_metadata=\"{metadata_url}\""
        )
    );
    assert!(!r.body.contains(&token) && !r.challenge.contains(&token));

    // A good token outside its scope: 403 naming the scope the request needs.
    let r = get("agent", "/customers/eu/43");
    assert_eq!(r.code, "403", "{r:?}");
    assert_eq!(
        r.challenge,
        format!(
            "Bearer error=\"insufficient_scope\", error_description=\"the token's scope does \
             not cover this request\", scope=\"read:customers/eu/43\", \
             resource_metadata=\"{metadata_url}\""
        )
    );
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"], "insufficient_scope");

    // Another agent's certificate: not bound to it (RFC 8705: 401 invalid_token).
    let r = get("other", "/customers/eu/42");
    assert_eq!(r.code, "401", "{r:?}");
    assert!(
        r.challenge
            .contains("error_description=\"the token is bound to another client certificate\""),
        "{r:?}"
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
    let mut last = Reply::default();
    for _ in 0..100 {
        last = get("agent", "/customers/eu/42");
        if last.code == "401" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last.challenge.starts_with("Bearer error=\"invalid_token\""),
        "{last:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&last.body).unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("the token is revoked"),
        "{last:?}"
    );
    // Without a client certificate, a token is refused as bound to another one.
    let r = curl(None, Some(&bearer), "/customers/eu/42");
    assert_eq!(r.code, "401", "{r:?}");
    assert!(
        r.challenge.contains("bound to another client certificate"),
        "{r:?}"
    );
}

/// What curl read: the status, the `WWW-Authenticate` value and the body.
#[derive(Debug, Default)]
struct Reply {
    code: String,
    challenge: String,
    body: String,
}
