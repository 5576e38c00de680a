//! The plain-HTTP port: JWKS, liveness, readiness and metrics.
use crate::broker::Broker;
use crate::policy::CedarPolicy;
use crate::store::Health;
use crate::store::gate::Status as HealthStatus;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use std::sync::Arc;

#[derive(Clone)]
pub(super) struct HttpState {
    pub broker: Arc<Broker>,
    pub health: Arc<Health>,
    pub policy: Arc<CedarPolicy>,
}

/// From memory: the key set the broker last read (see `Broker::jwks`).
pub(super) async fn jwks(State(s): State<HttpState>) -> axum::response::Response {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=60")],
        Json(s.broker.jwks()),
    )
        .into_response()
}

/// Prometheus text exposition, from values kept in process (the active-task
/// count is refreshed in the background, not read per scrape).
pub(super) async fn metrics(State(s): State<HttpState>) -> axum::response::Response {
    let body = s
        .broker
        .metrics()
        .encode(s.broker.hub().watchers(), s.policy.status().reloads);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Ready while the store probe finds the store answering (see `store::gate`).
/// Anyone may ask, so it says what holds, not why: the store's error and a failed
/// policy reload's details are in the log (and `mayfly policy validate`).
pub(super) async fn readyz(State(s): State<HttpState>) -> axum::response::Response {
    // A failed policy reload does not make the broker unready (the last good set
    // keeps serving), but it is reported here for operators.
    let status = s.policy.status();
    let mut policy = format!(
        "\npolicy: {} policies, {} reloads, {} failed reloads",
        status.policies, status.reloads, status.failed_reloads
    );
    if status.last_error.is_some() {
        policy.push_str(
            "\npolicy reload failed, still serving the previous set (the reason is in the log)",
        );
    }
    match s.health.status() {
        HealthStatus::Up => (StatusCode::OK, format!("ready{policy}")).into_response(),
        HealthStatus::Down { since, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the store has not answered for {}s{policy}",
                since.elapsed().as_secs()
            ),
        )
            .into_response(),
    }
}
