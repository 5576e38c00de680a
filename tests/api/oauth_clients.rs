//! The OAuth front door driven by clients no one here wrote: Authlib and httpx
//! (tests/oauth_clients/flows.py, from the virtual environment `.ci/run`
//! makes) and curl, against `mayfly serve` as a real process on PostgreSQL
//! (its own clock: step-up polling waits real seconds).
use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::admin_service_client::AdminServiceClient;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const HELPER1: &str = "spiffe://example.org/agent/helper-1";

/// The interpreter with the pinned clients: `MAYFLY_TEST_PYTHON`, else the
/// repository's `.venv` (made by `.ci/run`).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MAYFLY_TEST_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: the OAuth client tests run Authlib and httpx from it; make it with \
         `python3 -m venv .venv && .venv/bin/pip install -r tests/oauth_clients/requirements.txt` \
         (`.ci/run` does), or set MAYFLY_TEST_PYTHON",
        venv.display()
    );
    venv
}

/// The PEM files of the identities the clients use, in `dir`.
fn write_certs(pki: &Pki, dir: &Path) -> HashMap<&'static str, &'static str> {
    std::fs::write(dir.join("ca.pem"), pki.ca.cert_pem()).unwrap();
    let ids = HashMap::from([
        ("agent", AGENT),
        ("helper", HELPER1),
        ("verifier", VERIFIER),
        ("admin", ADMIN),
    ]);
    for (name, id) in &ids {
        let svid = pki.ca.svid(id).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), &svid.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &svid.key_pem).unwrap();
    }
    ids
}

async fn open(tasks: &mut TaskServiceClient<tonic::transport::Channel>, delete: bool) -> String {
    let mut req = start_request(AGENT, 3600);
    if delete {
        req.scopes.push(scope("tickets", "tickets/4711", "delete"));
    }
    tasks
        .start_task(req)
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
        .id
}

#[tokio::test]
async fn authlib_httpx_and_curl_use_every_grant_and_endpoint() {
    let pki = Arc::new(Pki::new());
    let db = fresh_database().await;
    let config = Settings::new()
        .database(&db.url)
        .oauth_poll(Duration::from_secs(1))
        .write(&pki);
    let served = Served::start(&config).await;
    let certs = tempfile::tempdir().unwrap();
    let ids = write_certs(&pki, certs.path());
    let orch = pki.ca.svid(ORCH).unwrap();
    let mut tasks = TaskServiceClient::new(served.channel(&pki.ca, &orch).await);
    let (task, task2, step_up) = (
        open(&mut tasks, false).await,
        open(&mut tasks, false).await,
        open(&mut tasks, true).await,
    );
    let admin_id = pki.ca.svid(ADMIN).unwrap();
    let mut admin = AdminServiceClient::new(served.channel(&pki.ca, &admin_id).await);
    let base = format!("https://localhost:{}", served.grpc.port());

    let cfg = serde_json::json!({
        "base": base,
        "ca": certs.path().join("ca.pem"),
        "certs": certs.path(),
        "ids": ids,
        "task": task,
        "task2": task2,
        "step_up_task": step_up,
    });
    let mut child = tokio::process::Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oauth_clients/flows.py"))
        .arg(cfg.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Python client");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut steps: HashMap<String, Value> = HashMap::new();
    let mut step_ups = vec![];
    let finished = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{line}"));
            if v["done"] == true {
                return true;
            }
            if let Some(code) = v["pending"].as_str() {
                assert_eq!(
                    (v["status"].as_u64(), v["error"].as_str()),
                    (Some(400), Some("authorization_pending"))
                );
                // Decided while the client polls.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let decision = match v["outcome"].as_str() {
                    Some("approve") => pb::Decision::Approve,
                    _ => pb::Decision::Deny,
                };
                admin
                    .decide_approval(pb::DecideApprovalRequest {
                        approval_id: code.into(),
                        decision: decision as i32,
                        reason: "ticket 4711 checked".into(),
                    })
                    .await
                    .expect("decide");
                continue;
            }
            let step = v["step"].as_str().unwrap().to_string();
            if step == "step_up" {
                step_ups.push(v);
            } else {
                steps.insert(step, v);
            }
        }
        false
    })
    .await;
    if finished != Ok(true) {
        let _ = child.kill().await;
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "the Python client did not finish: {finished:?}\n{}\nsteps so far: {steps:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(steps["metadata"]["issuer"], "https://mayfly.test");
    assert_eq!(steps["mint"]["token_type"], "Bearer");
    assert_eq!(steps["mint"]["scope"], "read:customers/eu/42");
    assert_eq!(steps["mint"]["expires_in"], 60);
    assert_eq!(steps["introspect"]["active"], true);
    assert_eq!(steps["introspect"]["sub"], AGENT);
    assert!(steps["introspect"]["cnf"]["x5t#S256"].is_string());
    assert_eq!(steps["password"]["error"], "unsupported_grant_type");
    assert_eq!(steps["out_of_scope"]["error"], "invalid_scope");
    assert_eq!(
        steps["offer"]["issued_token_type"],
        "urn:mayfly:params:oauth:token-type:delegation-offer"
    );
    assert_eq!(steps["offer"]["token_type"], "N_A");
    assert_eq!(steps["widen"]["error"], "invalid_scope");
    assert_eq!(steps["redeem"]["active"], true);
    assert_eq!(steps["redeem"]["act"]["sub"], HELPER1);
    assert_eq!(steps["redeem"]["sub"], AGENT);
    assert_eq!(steps["revoke"]["active"], false);
    assert_eq!(step_ups.len(), 2, "{step_ups:?}");
    assert_eq!(step_ups[0]["outcome"], "approve");
    assert_eq!(step_ups[0]["scope"], "delete:tickets/4711");
    assert_eq!(step_ups[1]["outcome"], "deny");
    assert_eq!(step_ups[1]["error"], "access_denied");
    // The first task deviated (the out-of-scope mint), as on gRPC.
    let first = tasks
        .get_task(pb::GetTaskRequest {
            task_id: task.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(first.state, pb::TaskState::Deviated as i32);

    // curl: the same endpoints, the same answers.
    let curl = |who: Option<&str>, args: &[&str]| -> (String, String) {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "--cacert"])
            .arg(certs.path().join("ca.pem"))
            .args(["-w", "\n%{http_code}"]);
        if let Some(who) = who {
            cmd.arg("--cert")
                .arg(certs.path().join(format!("{who}.crt")))
                .arg("--key")
                .arg(certs.path().join(format!("{who}.key")));
        }
        let out = cmd.args(args).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or_default();
        if code.is_empty() || code == "000" {
            panic!(
                "curl {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (code.to_string(), body.to_string())
    };
    let json = |s: &str| -> Value {
        serde_json::from_str(s).unwrap_or_else(|_| panic!("not JSON: {s:?}"))
    };
    let token_url = format!("{base}/oauth/token");
    let (code, body) = curl(
        None,
        &[&format!("{base}/.well-known/oauth-authorization-server")],
    );
    assert_eq!(code, "200", "{body}");
    assert_eq!(
        json(&body)["tls_client_certificate_bound_access_tokens"],
        true
    );
    let mint = [
        "-d",
        "grant_type=client_credentials",
        "-d",
        &format!("task_id={task2}"),
        "-d",
        "audience=crm-api",
        "-d",
        "scope=read:customers/eu/7",
        "-d",
        "ttl_seconds=30",
    ];
    let (code, body) = curl(Some("agent"), &[&mint[..], &[&token_url]].concat());
    assert_eq!(code, "200", "{body}");
    let token = json(&body)["access_token"].as_str().unwrap().to_string();
    let (code, body) = curl(
        Some("verifier"),
        &[
            "-d",
            &format!("token={token}"),
            &format!("{base}/oauth/introspect"),
        ],
    );
    assert_eq!(
        (code.as_str(), json(&body)["active"].as_bool()),
        ("200", Some(true)),
        "{body}"
    );
    // Without a certificate; a parameter twice; JSON instead of a form.
    let (code, body) = curl(None, &[&mint[..], &[&token_url]].concat());
    assert_eq!(
        (code.as_str(), json(&body)["error"].as_str()),
        ("401", Some("invalid_client"))
    );
    let (code, body) = curl(
        Some("agent"),
        &[&mint[..], &["-d", "audience=tickets", &token_url]].concat(),
    );
    assert_eq!(
        (code.as_str(), json(&body)["error"].as_str()),
        ("400", Some("invalid_request")),
        "{body}"
    );
    let (code, body) = curl(
        Some("agent"),
        &[
            "-H",
            "content-type: application/json",
            "-d",
            "{}",
            &token_url,
        ],
    );
    assert_eq!(
        (code.as_str(), json(&body)["error"].as_str()),
        ("400", Some("invalid_request")),
        "{body}"
    );
    let (_, log) = served.stop().await;
    assert!(!log.contains(&token), "a token reached the log");
}
