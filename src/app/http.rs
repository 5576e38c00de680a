//! The plain-HTTP port: JWKS, liveness, readiness and metrics.
use crate::broker::Broker;
use crate::policy::CedarPolicy;
use crate::store::Store;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use std::sync::Arc;
use std::time::Duration;
use tracing::error;

#[derive(Clone)]
pub(super) struct HttpState {
    pub broker: Arc<Broker>,
    pub store: Arc<dyn Store>,
    pub policy: Arc<CedarPolicy>,
}

pub(super) async fn jwks(State(s): State<HttpState>) -> axum::response::Response {
    match s.broker.jwks().await {
        Ok(jwks) => (
            [(axum::http::header::CACHE_CONTROL, "public, max-age=60")],
            Json(jwks),
        )
            .into_response(),
        Err(error) => {
            error!(%error, "JWKS: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

/// Prometheus text exposition. The active-task count is the store's; when the
/// store does not answer in time it is left at its last reading.
pub(super) async fn metrics(State(s): State<HttpState>) -> axum::response::Response {
    let active =
        match tokio::time::timeout(Duration::from_secs(2), s.store.count_active_tasks()).await {
            Ok(Ok(n)) => Some(n),
            _ => None,
        };
    let body =
        s.broker
            .metrics()
            .encode(active, s.broker.hub().watchers(), s.policy.status().reloads);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub(super) async fn readyz(State(s): State<HttpState>) -> axum::response::Response {
    // A failed policy reload does not make the broker unready (the last good set
    // keeps serving), but it is reported here for operators.
    let status = s.policy.status();
    let mut policy = format!(
        "\npolicy: {} policies, {} reloads, {} failed reloads",
        status.policies, status.reloads, status.failed_reloads
    );
    if let Some(e) = status.last_error {
        policy.push_str(&format!(
            "\npolicy reload failed, still serving the previous set:\n{e}"
        ));
    }
    match tokio::time::timeout(Duration::from_secs(2), s.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, format!("ready{policy}")).into_response(),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {error}{policy}"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store did not answer within 2s{policy}"),
        )
            .into_response(),
    }
}
