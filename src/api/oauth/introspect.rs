//! Introspection (RFC 7662) for resource servers: whether a token is active
//! now (signed by a key this broker publishes, unexpired, not revoked, its task
//! active), with its claims, `cnf` among them (RFC 8705 §3.2). The broker call
//! of gRPC's `Introspect`.
use super::{OauthState, answer, no_store};
use crate::error::oauth::OauthError;
use crate::identity::Role;
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};

/// Who may introspect: as on gRPC.
const INTROSPECTORS: &[Role] = &[Role::Verifier, Role::Admin];

pub(super) async fn introspect(State(s): State<OauthState>, req: Request) -> Response {
    answer(active(&s, req).await)
}

async fn active(s: &OauthState, req: Request) -> Result<Response, OauthError> {
    let (_, form) = s
        .caller_and_form(req, "POST /oauth/introspect", INTROSPECTORS)
        .await?;
    // `token_type_hint` is only a hint (RFC 7662 §2.1): Mayfly issues one kind.
    let token = form.require("token")?;
    let Some(claims) = s.broker.introspect(token).await? else {
        // RFC 7662 §2.2: nothing about a token that is not active.
        return Ok(no_store(json!({"active": false})));
    };
    let mut body = serde_json::to_value(&claims)
        .map_err(|_| OauthError::new(crate::error::oauth::Code::ServerError, "encoding claims"))?;
    if let Value::Object(m) = &mut body {
        m.insert("active".into(), true.into());
        m.insert("token_type".into(), "Bearer".into());
    }
    Ok(no_store(body))
}
