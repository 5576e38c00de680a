//! Revocation (RFC 7009): an agent gives back a token it holds before it
//! expires; the security team revokes any token. The token dies for every
//! verifier as any revocation does (an event on the revocation stream).
use super::{OauthState, answer};
use crate::broker::GivenBy;
use crate::error::oauth::OauthError;
use crate::identity::Role;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub(super) async fn revoke(State(s): State<OauthState>, req: Request) -> Response {
    answer(give_back(&s, req).await)
}

async fn give_back(s: &OauthState, req: Request) -> Result<Response, OauthError> {
    let (caller, form) = s
        .caller_and_form(req, "POST /oauth/revoke", &[Role::Agent, Role::Admin])
        .await?;
    // `token_type_hint` is only a hint (RFC 7009 §2.1): Mayfly issues one kind.
    let token = form.require("token")?;
    // A delegation offer (the `access_token` of a holder's exchange) is not
    // revoked here: answering 200 would tell its delegator it was withdrawn.
    if uuid::Uuid::parse_str(token).is_ok() {
        return Err(OauthError::new(
            crate::error::oauth::Code::UnsupportedTokenType,
            "a delegation offer is not revoked at this endpoint: it lapses at its expiry, and revoking the token it was offered from (or its task) ends it",
        ));
    }
    let by = if s.auth.roles.has(&caller.id, Role::Admin) {
        GivenBy::Admin
    } else {
        GivenBy::Holder
    };
    // RFC 7009 §2.2: 200 whether or not there was anything to revoke.
    s.broker.give_back(&caller, token, by).await?;
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
