use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

#[tokio::test]
async fn two_brokers_on_one_database_verify_each_others_tokens() {
    let pki = Arc::new(Pki::new());
    let a = spawn_with(pki.clone(), Settings::new()).await;
    let b = spawn_replica(pki.clone(), &a, Settings::new()).await;
    let task = a.open_task(AGENT, 600).await;
    let (mut on_a, _) = a.tokens(AGENT).await;
    let (mut on_b, _) = b.tokens(AGENT).await;
    let from_a = on_a
        .minted(mint_request(&task.id, "customers/eu/1", 60))
        .await;
    let from_b = on_b
        .minted(mint_request(&task.id, "customers/eu/2", 60))
        .await;
    assert!(
        introspect_active(&b, &from_a.token).await,
        "B verifies A's token"
    );
    assert!(
        introspect_active(&a, &from_b.token).await,
        "A verifies B's token"
    );
    let (_, jwks) = b.http_get("/.well-known/jwks.json").await;
    let jwks: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "each broker's JWKS serves both keys"
    );
    // A revocation through A is seen by B.
    a.tasks(ORCH)
        .await
        .complete_task(pb::CompleteTaskRequest {
            task_id: task.id.clone(),
        })
        .await
        .unwrap();
    assert!(!introspect_active(&b, &from_b.token).await);
}

#[tokio::test]
async fn with_the_store_down_nothing_is_minted_and_calls_are_unavailable() {
    let (app, proxy, direct) =
        spawn_behind_proxy(Settings::new().connect_timeout(Duration::from_secs(1))).await;
    let task = app.open_task(AGENT, 600).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    agent
        .minted(mint_request(&task.id, "customers/eu/1", 60))
        .await;
    assert_eq!(app.http_get("/readyz").await.0, 200);

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = agent
        .refused(mint_request(&task.id, "customers/eu/2", 60))
        .await;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("store is unavailable"),
        "{}",
        err.message()
    );
    // A refusal stays a refusal when its audit event cannot be written.
    let err = app
        .admin(AGENT)
        .await
        .revoke(revoke_request(
            pb::revocation_target::Target::All(true),
            "x",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Unready once the store probe has confirmed the outage.
    let t = std::time::Instant::now();
    loop {
        let (status, body) = app.http_get("/readyz").await;
        if status == 503 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.http_get("/healthz").await.0,
        200,
        "liveness does not depend on the store"
    );

    // Exactly the one token minted before the outage exists.
    assert_eq!(tokens_stored(&direct.url).await, 1);
}

#[tokio::test]
async fn http_health_and_grpc_health_and_reflection_answer() {
    let app = spawn_app().await;
    assert_eq!(app.http_get("/healthz").await, (200, "ok".to_string()));
    assert_eq!(app.http_get("/readyz").await.0, 200);
    let (ch, _) = app.channel(VERIFIER).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "mayfly.v1.TokenService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("{msg:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for svc in [
        "mayfly.v1.TaskService",
        "mayfly.v1.TokenService",
        "mayfly.v1.AdminService",
        "mayfly.v1.VerifierService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&svc.to_string()), "{svc} in {names:?}");
    }
}

fn mayfly_bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
}

#[tokio::test]
async fn serve_refuses_a_bad_config_naming_the_key() {
    let pki = Pki::new();
    let good = Settings::new().database("postgres://postgres@127.0.0.1:5432/postgres");
    // A good config with one key broken, as someone might write it.
    let broken = |section: &str, key: &str, value: toml::Value| {
        let mut table = good.table(&pki);
        table[section]
            .as_table_mut()
            .unwrap()
            .insert(key.into(), value);
        toml::to_string(&table).unwrap()
    };
    let cases = [
        (
            broken("policy", "reload_interval", "0s".into()),
            "policy.reload_interval: must be greater than zero",
        ),
        (
            broken("tasks", "sweep_interval", "soon".into()),
            "sweep_interval",
        ),
        (
            broken("roles", "superuser", toml::Value::Array(vec![])),
            "unknown field `superuser`",
        ),
    ];
    for (text, want) in cases {
        let path = pki.path("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = mayfly_bin()
            .args(["serve", "--config"])
            .arg(&path)
            .env_remove("MAYFLY_DATABASE_URL")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "want {want:?} in {err}");
    }
    let out = mayfly_bin()
        .args(["serve", "--config"])
        .arg(pki.path("missing.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[tokio::test]
async fn serve_reports_an_unreachable_database_clearly() {
    let pki = Pki::new();
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = Settings::new()
        .database(&format!(
            "postgres://postgres:hunter2@127.0.0.1:{port}/mayfly"
        ))
        .connect_timeout(Duration::from_secs(1))
        .write(&pki);
    let out = mayfly_bin()
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("MAYFLY_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot use the database at postgres://***@127.0.0.1:{port}/mayfly"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password is never printed");
}

#[tokio::test]
async fn dev_certs_then_serve_then_sigterm_drains_open_streams_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = mayfly_bin().arg("dev-certs").arg(&certs).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.pem",
        "broker.crt",
        "broker.key",
        "agent.crt",
        "orchestrator.crt",
        "admin.crt",
        "verifier.crt",
    ] {
        assert!(certs.join(f).exists(), "{f}");
    }
    let db = fresh_database().await;
    let grpc_port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http_port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mayfly.toml"))
            .unwrap();
    let cfg = dir.path().join("mayfly.toml");
    std::fs::write(&cfg, example.replace("../.mayfly-dev/certs/", "certs/")).unwrap();
    copy_dir(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies")),
        &dir.path().join("policies"),
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("MAYFLY_DATABASE_URL", &db.url)
        .env("MAYFLY_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("MAYFLY_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait for readiness.
    let http: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if TcpStream::connect(http).await.is_ok() && http_get(http, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "mayfly serve became ready");

    // The example's identities work end to end with the generated SVIDs.
    let client = |name: &str| {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(certs.join("ca.pem")).unwrap(),
            ))
            .identity(tonic::transport::Identity::from_pem(
                std::fs::read(certs.join(format!("{name}.crt"))).unwrap(),
                std::fs::read(certs.join(format!("{name}.key"))).unwrap(),
            ))
            .domain_name("localhost");
        tonic::transport::Channel::from_shared(format!("https://127.0.0.1:{grpc_port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    let orch = client("orchestrator").connect().await.unwrap();
    let task = TaskServiceClient::new(orch)
        .start_task(pb::StartTaskRequest {
            agent: "spiffe://example.org/agent/support-eu-1".into(),
            workflow: "support-triage".into(),
            objective: "triage".into(),
            scopes: vec![scope("crm-api", "customers/eu/*", "read")],
            duration_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let verifier = client("verifier").connect().await.unwrap();
    let mut watch = pb::verifier_service_client::VerifierServiceClient::new(verifier)
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!task.id.is_empty());

    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().unwrap().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    // The open stream ends cleanly, and the process exits 0.
    let end = after_heartbeats(&mut watch).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .unwrap();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    assert!(exit.success(), "{logs}");
    assert!(logs.contains("shut down cleanly"), "{logs}");
}

#[tokio::test]
async fn shutdown_ends_open_watch_streams_and_returns_cleanly() {
    let app = spawn_app().await;
    let mut watch = app.watch(0).await;
    let stopping = tokio::spawn(app.stop());
    let end = after_heartbeats(&mut watch).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("app stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_marks_every_service_and_the_server_not_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let app = spawn_app().await;
    let (ch, _) = app.channel(VERIFIER).await;
    let names = [
        "",
        "mayfly.v1.TaskService",
        "mayfly.v1.TokenService",
        "mayfly.v1.AdminService",
        "mayfly.v1.VerifierService",
    ];
    let mut watches = vec![];
    for name in names {
        let mut w = HealthClient::new(ch.clone())
            .watch(HealthCheckRequest {
                service: name.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = w.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32, "{name:?}");
        watches.push(w);
    }
    let stopping = tokio::spawn(app.stop());
    for (name, w) in names.iter().zip(watches.iter_mut()) {
        let next = tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .unwrap_or_else(|_| panic!("{name:?} reports a change at shutdown"))
            .unwrap()
            .unwrap();
        assert_eq!(next.status, ServingStatus::NotServing as i32, "{name:?}");
    }
    // Health watches are endless: the client ends them, and the broker finishes
    // draining.
    drop(watches);
    drop(ch);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("app stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn metrics_count_issuance_denials_revocations_deviations_and_read_the_store() {
    use mayfly::api::pb::revocation_target::Target;
    let app = spawn_app().await;
    let task = app.open_task(AGENT, 600).await;
    let other = app.open_task(AGENT, 600).await;
    app.mint(AGENT, &task.id, "customers/eu/1", 60).await;
    app.mint(AGENT, &task.id, "customers/eu/2", 60).await;
    // A denial (another agent's task) and a deviation (outside the declared scopes).
    let _ = app
        .tokens(AGENT2)
        .await
        .0
        .refused(mint_request(&task.id, "customers/eu/3", 60))
        .await;
    let _ = app
        .tokens(AGENT)
        .await
        .0
        .refused(mint_request(&other.id, "customers/us/1", 60))
        .await;
    app.admin(ADMIN)
        .await
        .revoke(revoke_request(
            Target::Task(task.id.clone()),
            "metrics test",
        ))
        .await
        .unwrap();
    let _watch = app.watch(0).await;

    // The active-task gauge is recounted from the store in the background.
    let t = std::time::Instant::now();
    let body = loop {
        let (status, body) = app.http_get("/metrics").await;
        assert_eq!(status, 200);
        if body.lines().any(|l| l == "mayfly_active_tasks 0")
            || t.elapsed() > Duration::from_secs(8)
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let has = |line: &str| body.lines().any(|l| l == line);
    for line in [
        "mayfly_tokens_issued_total{kind=\"direct\"} 2",
        "mayfly_denials_total{kind=\"mint_denied\"} 2",
        "mayfly_revocations_total{kind=\"admin\"} 1",
        "mayfly_revocations_total{kind=\"deviation\"} 1",
        "mayfly_deviations_total 1",
        "mayfly_active_tasks 0",
        "mayfly_watch_subscribers 1",
        "mayfly_mint_duration_seconds_count 2",
        "mayfly_policy_reloads_total 0",
    ] {
        assert!(has(line), "{line} missing from:\n{body}");
    }
    assert!(body.contains("mayfly_store_errors_total"), "{body}");
    // Never a token.
    assert!(!body.contains("eyJ"), "{body}");
}
