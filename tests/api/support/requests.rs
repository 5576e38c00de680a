//! Requests the tests send and reads of what comes back: scopes, task, mint and
//! revoke requests, plain HTTP, watch events, metrics.
use super::app::TestApp;
use super::pki::VERIFIER;
use mayfly::api::pb;
use mayfly::api::pb::token_service_client::TokenServiceClient;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::Channel;

pub fn scope(aud: &str, res: &str, action: &str) -> pb::Scope {
    pb::Scope {
        audience: aud.into(),
        resource: res.into(),
        action: action.into(),
    }
}

pub fn start_request(agent: &str, duration: u64) -> pb::StartTaskRequest {
    pb::StartTaskRequest {
        agent: agent.into(),
        workflow: "support".into(),
        objective: "answer ticket 4711 about an EU customer's invoice".into(),
        scopes: vec![
            scope("crm-api", "customers/eu/*", "read"),
            scope("tickets", "tickets/4711", "comment"),
        ],
        duration_seconds: duration,
    }
}

/// A mint request for `scope` under `task`, for `ttl` seconds.
pub fn mint_scope(task: &str, scope: pb::Scope, ttl: u64) -> pb::MintTokenRequest {
    pb::MintTokenRequest {
        task_id: task.into(),
        scope: Some(scope),
        ttl_seconds: ttl,
    }
}

/// A mint request to read `res` of the CRM, the support workflow's everyday scope.
pub fn mint_request(task: &str, res: &str, ttl: u64) -> pb::MintTokenRequest {
    mint_scope(task, scope("crm-api", res, "read"), ttl)
}

/// Deleting ticket 4711 for a minute: a mint the test policies hold for step-up
/// approval (the task must declare the scope).
pub fn ticket_delete_request(task: &str) -> pb::MintTokenRequest {
    mint_scope(task, scope("tickets", "tickets/4711", "delete"), 60)
}

/// An agent's TokenService client minting in one call, the outcome expected.
pub trait Mint {
    /// Mints, expecting success (a token, or an approval to wait for).
    async fn minted(&mut self, req: pb::MintTokenRequest) -> pb::MintTokenResponse;
    /// Mints, expecting a refusal: its status.
    async fn refused(&mut self, req: pb::MintTokenRequest) -> tonic::Status;
}

impl Mint for TokenServiceClient<Channel> {
    async fn minted(&mut self, req: pb::MintTokenRequest) -> pb::MintTokenResponse {
        self.mint_token(req).await.unwrap().into_inner()
    }

    async fn refused(&mut self, req: pb::MintTokenRequest) -> tonic::Status {
        self.mint_token(req).await.unwrap_err()
    }
}

pub fn revoke_request(target: pb::revocation_target::Target, reason: &str) -> pb::RevokeRequest {
    pb::RevokeRequest {
        target: Some(pb::RevocationTarget {
            target: Some(target),
        }),
        reason: reason.into(),
    }
}

/// Minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Reads the next `n` events from a watch stream, skipping heartbeats (failing
/// after 10 s).
pub async fn next_events(
    stream: &mut tonic::Streaming<pb::WatchRevocationsResponse>,
    n: usize,
) -> Vec<pb::RevocationEvent> {
    let mut out = vec![];
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a revocation event within 10 s")
            .expect("stream ok")
            .expect("stream open");
        if let Some(pb::watch_revocations_response::Kind::Event(ev)) = msg.kind {
            out.push(ev);
        }
    }
    out
}

/// The next message of a watch stream that is not a heartbeat: an event, the
/// end (`Ok(None)`) or the status it ended with (failing after 10 s). A stream
/// sends a heartbeat as soon as it is first caught up.
pub async fn after_heartbeats(
    stream: &mut tonic::Streaming<pb::WatchRevocationsResponse>,
) -> Result<Option<pb::WatchRevocationsResponse>, tonic::Status> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a message or the end within 10 s");
        match msg {
            Ok(Some(pb::WatchRevocationsResponse {
                kind: Some(pb::watch_revocations_response::Kind::Heartbeat(_)),
            })) => continue,
            other => return other,
        }
    }
}

pub async fn introspect_active(app: &TestApp, token: &str) -> bool {
    app.verifier(VERIFIER)
        .await
        .introspect(pb::IntrospectRequest {
            token: token.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .active
}

/// The value of one sample line of a Prometheus exposition (0 when absent).
pub fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
