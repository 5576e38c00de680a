//! SPIRE rotates the broker's SVID and the trust bundle while it runs: the files
//! change, and new connections use them, with no restart.
use crate::support::*;
use mayfly::api::pb;
use mayfly::api::pb::task_service_client::TaskServiceClient;
use mayfly::identity::devcerts::{DevCa, Issued};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Lists tasks over a new connection that trusts `ca_pem` and presents `id`.
async fn call(app: &TestApp, ca_pem: &str, id: &Issued) -> Result<(), String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(&id.cert_pem, &id.key_pem))
        .domain_name("localhost");
    let ch = Channel::from_shared(format!("https://{}", app.grpc))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    TaskServiceClient::new(ch)
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .map(drop)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Waits (up to 10 s) until a call as `id`, trusting `ca_pem`, is refused.
async fn until_refused(app: &TestApp, ca_pem: &str, id: &Issued) {
    for _ in 0..100 {
        if call(app, ca_pem, id).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still accepted after the rotation");
}

/// A counter's value in the broker's `/metrics`.
async fn counter(app: &TestApp, name: &str) -> f64 {
    let (_, body) = app.http_get("/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

/// Waits (up to 10 s) until a call as `id`, trusting `ca_pem`, succeeds.
async fn until_accepted(app: &TestApp, ca_pem: &str, id: &Issued) {
    let mut last = String::new();
    for _ in 0..100 {
        match call(app, ca_pem, id).await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never accepted after the rotation: {last}");
}

#[tokio::test]
async fn a_rotated_bundle_and_broker_certificate_serve_new_connections_and_a_broken_one_is_refused()
{
    let pki = Arc::new(Pki::new());
    let app = spawn_with(
        pki.clone(),
        Settings::new().tls_reload(Duration::from_millis(100)),
    )
    .await;
    let old = pki.ca.svid(ORCH).unwrap();
    call(&app, pki.ca.cert_pem(), &old).await.unwrap();

    // SPIRE's next CA, of the same trust domain: not trusted yet.
    let next = DevCa::new(TD).unwrap();
    let new = next.svid(ORCH).unwrap();
    assert!(call(&app, pki.ca.cert_pem(), &new).await.is_err());

    // The bundle carries both CAs (SPIRE publishes the next one ahead of use).
    std::fs::write(
        pki.path("ca.pem"),
        format!("{}{}", pki.ca.cert_pem(), next.cert_pem()),
    )
    .unwrap();
    until_accepted(&app, pki.ca.cert_pem(), &new).await;
    call(&app, pki.ca.cert_pem(), &old).await.unwrap();

    // The broker's own SVID rotates to the next CA; the old CA leaves the bundle.
    let broker = next
        .server("spiffe://example.org/mayfly/broker", &["localhost"])
        .unwrap();
    std::fs::write(pki.path("broker.crt"), &broker.cert_pem).unwrap();
    std::fs::write(pki.path("broker.key"), &broker.key_pem).unwrap();
    std::fs::write(pki.path("ca.pem"), next.cert_pem()).unwrap();
    until_accepted(&app, next.cert_pem(), &new).await;
    // An SVID of the old CA is no longer accepted (once the bundle without it is
    // loaded: the files are written one after another), and a client that trusts
    // only the old CA no longer accepts the broker.
    until_refused(&app, next.cert_pem(), &old).await;
    let refused = call(&app, next.cert_pem(), &old).await.unwrap_err();
    assert!(
        !refused.starts_with("connect"),
        "refused at the call: {refused}"
    );
    assert!(call(&app, pki.ca.cert_pem(), &new).await.is_err());

    // A half-written rotation (a key that does not match the certificate) is
    // refused, retried at every check, and the last good set stays in force.
    let failures = counter(&app, "mayfly_tls_reload_failures_total").await;
    let stray = next.svid(AGENT).unwrap();
    std::fs::write(pki.path("broker.key"), &stray.key_pem).unwrap();
    for _ in 0..100 {
        if counter(&app, "mayfly_tls_reload_failures_total").await >= failures + 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        counter(&app, "mayfly_tls_reload_failures_total").await >= failures + 2.0,
        "the mismatched key was not refused (and retried)"
    );
    call(&app, next.cert_pem(), &new).await.unwrap();
    app.stop().await.unwrap();
}
