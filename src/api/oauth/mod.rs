//! The OAuth front door: the broker's use cases for agents and resource servers
//! that speak OAuth 2.0 and HTTP instead of gRPC, on the mTLS port beside it.
//! Callers authenticate with their X.509-SVID exactly as on gRPC (RFC 8705
//! `tls_client_auth`: the SPIFFE ID is the client), and every request goes to
//! the same broker call as its gRPC twin: this edge only parses forms and
//! spells answers.
//!
//! - `metadata`: RFC 8414 metadata (public, from memory), the endpoint paths.
//! - `form`: request bodies; `token`: the token endpoint (mint, step-up
//!   polling, token exchange for delegation); `introspect` (RFC 7662) and
//!   `revoke` (RFC 7009); `feed`: the revocation stream as Server-Sent Events;
//!   `tasks`: opening, reading, completing tasks and reporting them deviated,
//!   for orchestrators; `misuse`: misuse reports, for resource servers.
use super::Auth;
use crate::broker::{Broker, Minted};
use crate::error::oauth::OauthError;
use crate::identity::{Caller, ConnInfo, Role};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use crate::revocation::Pace;

mod feed;
mod form;
mod introspect;
pub mod metadata;
mod misuse;
mod poll;
#[cfg(test)]
mod properties;
mod revoke;
mod tasks;
mod token;

pub use form::Form;
pub use metadata::Metadata;

/// RFC 8693 §3 token type of an access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 §3: a JWT (Mayfly's access tokens are JWTs; either name works).
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Mayfly's token type of a delegation offer: what a parent's exchange issues,
/// and what the sub-agent's exchange redeems.
pub const OFFER_TYPE: &str = "urn:mayfly:params:oauth:token-type:delegation-offer";
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// What every endpoint needs.
#[derive(Clone)]
pub struct OauthState {
    pub broker: Arc<Broker>,
    pub auth: Auth,
    pub metadata: Arc<Metadata>,
    /// The largest form body, in bytes (`limits.token_message_bytes`), and how
    /// long it may take to arrive (`limits.first_request_timeout`).
    pub form_bytes: usize,
    pub form_deadline: Duration,
    /// Step-up polling: the interval and who polled when.
    pub polls: Arc<poll::Polls>,
    /// The revocation feed's pace (`[revocation]`, as the gRPC watch's).
    pub watch: Pace,
    /// Cancelled at shutdown: every feed ends.
    pub shutdown: CancellationToken,
}

/// How the front door is tuned, from `[limits]`, `[oauth]` and `[revocation]`.
pub struct Tuning {
    pub form_bytes: usize,
    pub form_deadline: Duration,
    pub poll_interval: Duration,
    pub watch: Pace,
}

impl OauthState {
    pub fn new(
        broker: Arc<Broker>,
        auth: Auth,
        metadata: Metadata,
        tuning: Tuning,
        shutdown: CancellationToken,
    ) -> Self {
        OauthState {
            broker,
            auth,
            metadata: Arc::new(metadata),
            form_bytes: tuning.form_bytes,
            form_deadline: tuning.form_deadline,
            polls: Arc::new(poll::Polls::new(tuning.poll_interval)),
            watch: tuning.watch,
            shutdown,
        }
    }

    /// The caller and its form: the caller first, so that a body is read only
    /// for a client that may call the endpoint. A `client_id`, if sent, must be
    /// the caller's SPIFFE ID (RFC 8705 §2: the certificate authenticates it).
    async fn caller_and_form(
        &self,
        req: Request,
        endpoint: &'static str,
        roles: &[Role],
    ) -> Result<(Caller, Form), OauthError> {
        let (parts, body) = req.into_parts();
        let caller = self
            .auth
            .check(parts.extensions.get::<ConnInfo>(), endpoint, roles)
            .await?;
        let form = Form::read(&parts.headers, body, self.form_bytes, self.form_deadline).await?;
        if let Some(id) = form.get("client_id")
            && id != caller.id.as_str()
        {
            return Err(OauthError::new(
                crate::error::oauth::Code::InvalidClient,
                format!(
                    "client_id {} is not the SPIFFE ID of the client certificate ({})",
                    crate::domain::text::quote(id),
                    caller.id
                ),
            ));
        }
        Ok((caller, form))
    }

    /// The caller and its JSON body as `T` (`what` names it in a refusal), of at
    /// most `limit` bytes ([`form::json_body`]): the caller first, as for a form.
    async fn caller_and_json<T: serde::de::DeserializeOwned>(
        &self,
        req: Request,
        endpoint: &'static str,
        roles: &[Role],
        limit: usize,
        what: &str,
    ) -> Result<(Caller, T), OauthError> {
        let (parts, body) = req.into_parts();
        let caller = self
            .auth
            .check(parts.extensions.get::<ConnInfo>(), endpoint, roles)
            .await?;
        let json = form::json_body(&parts.headers, body, limit, self.form_deadline, what).await?;
        Ok((caller, json))
    }
}

/// The routes of the front door, to merge with the gRPC router on the mTLS
/// port. `app::calls` lets only `PUBLIC` paths through without an SVID.
pub fn router(state: OauthState) -> Router {
    let well_known = state.metadata.path.clone();
    let feed = feed::Feed::new(&state);
    Router::new()
        .route(&well_known, get(served_metadata))
        .route(metadata::JWKS, get(jwks))
        .route(metadata::TOKEN, post(token::token))
        .route(metadata::INTROSPECT, post(introspect::introspect))
        .route(metadata::REVOKE, post(revoke::revoke))
        .route(metadata::TASKS, post(tasks::open))
        .route(&format!("{}/{{id}}", metadata::TASKS), get(tasks::get))
        .route(
            &format!("{}/{{id}}/complete", metadata::TASKS),
            post(tasks::complete),
        )
        .route(
            &format!("{}/{{id}}/deviate", metadata::TASKS),
            post(tasks::deviate),
        )
        .route(metadata::MISUSE, post(misuse::report))
        .route(metadata::FEED, get(feed::feed).with_state(feed))
        .with_state(state)
}

/// What the mTLS port answers for a path it does not serve: a gRPC call gets
/// gRPC's `UNIMPLEMENTED` (as tonic's own fallback would), anything else a 404
/// OAuth error, never a `200` a client could read as success (an RFC 7009
/// revocation is answered `200`).
pub async fn fallback(req: Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!(
            "{} is not a method of this broker",
            crate::domain::text::quote(req.uri().path())
        ))
        .into_http();
    }
    OauthError::invalid(
        "path",
        format!(
            "{} {} is not an endpoint of this broker; the metadata at {} names them",
            req.method(),
            crate::domain::text::quote(req.uri().path()),
            metadata::WELL_KNOWN
        ),
    )
    .with_status(axum::http::StatusCode::NOT_FOUND)
    .into_response()
}

/// Whether a path of the mTLS port is served to a client without an SVID: the
/// metadata documents, like the HTTP port's JWKS, are public.
pub fn is_public(path: &str) -> bool {
    path == metadata::JWKS || path.starts_with(metadata::WELL_KNOWN)
}

async fn served_metadata(State(s): State<OauthState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        Body::from(s.metadata.json.clone()),
    )
        .into_response()
}

/// From memory: the key set the broker last read (as on the HTTP port).
async fn jwks(State(s): State<OauthState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json(s.broker.jwks()),
    )
        .into_response()
}

/// A parameter parsed by the gRPC edge's rule for the field of the same name,
/// refused as `invalid_request` with that rule's sentence.
fn param<T>(r: Result<T, tonic::Status>) -> Result<T, OauthError> {
    r.map_err(|s| OauthError::new(crate::error::oauth::Code::InvalidRequest, s.message()))
}

/// A 200 JSON answer that must not be cached (RFC 6749 §5.1).
fn no_store(body: impl serde::Serialize) -> Response {
    no_store_as(axum::http::StatusCode::OK, body)
}

/// A JSON answer with `status` that must not be cached.
fn no_store_as(status: axum::http::StatusCode, body: impl serde::Serialize) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// RFC 6749 §5.1 (and RFC 8693 §2.2.1) for a minted access token.
fn access_token(m: &Minted) -> Response {
    no_store(json!({
        "access_token": m.token,
        // Certificate-bound (RFC 8705 §3), presented with the Bearer scheme.
        "token_type": "Bearer",
        "expires_in": m.ttl.as_secs(),
        "scope": m.scope.claim(),
        "issued_token_type": ACCESS_TOKEN_TYPE,
    }))
}

/// The answer an endpoint gives for `result`.
fn answer(result: Result<Response, OauthError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}
