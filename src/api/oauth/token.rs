//! The token endpoint (RFC 6749 §3.2), for agents. Three grants, each the
//! broker call its gRPC twin makes:
//! - `client_credentials`: mint a token of a task (`MintToken`); an action that
//!   needs approval answers `authorization_pending` with the approval as an
//!   RFC 8628 `device_code`;
//! - `urn:ietf:params:oauth:grant-type:device_code`: poll that approval
//!   (`AwaitApproval` without waiting), its one token once approved;
//! - `urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693): a holder's
//!   token exchanged for a delegation offer to a sub-agent (`Delegate`), and
//!   the offer exchanged by the sub-agent for its child token
//!   (`RedeemDelegation`).
use super::{
    ACCESS_TOKEN_TYPE, DEVICE_CODE, Form, JWT_TYPE, OFFER_TYPE, OauthState, TOKEN_EXCHANGE,
    access_token, answer, no_store, param,
};
use crate::api::convert;
use crate::broker::{BrokerError, DelegateRequest, Mint, MintRequest};
use crate::domain::text::quote;
use crate::domain::{ApprovalState, Scope};
use crate::error::oauth::{Code, OauthError};
use crate::identity::{Caller, Role};
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::json;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::instrument;
use uuid::Uuid;

const ENDPOINT: &str = "POST /oauth/token";

#[instrument(skip_all, fields(caller, grant))]
pub(super) async fn token(State(s): State<OauthState>, req: Request) -> Response {
    answer(grant(&s, req).await)
}

async fn grant(s: &OauthState, req: Request) -> Result<Response, OauthError> {
    let (caller, form) = s.caller_and_form(req, ENDPOINT, &[Role::Agent]).await?;
    let grant = form.require("grant_type")?;
    tracing::Span::current()
        .record("caller", caller.id.as_str())
        .record("grant", grant);
    match grant {
        "client_credentials" => mint(s, &caller, &form).await,
        DEVICE_CODE => poll(s, &caller, &form).await,
        TOKEN_EXCHANGE => exchange(s, &caller, &form).await,
        other => Err(OauthError::new(
            Code::UnsupportedGrantType,
            format!(
                "grant_type {} is not supported; Mayfly's are client_credentials, {TOKEN_EXCHANGE} and {DEVICE_CODE}",
                quote(other)
            ),
        )),
    }
}

fn ttl(form: &Form) -> Result<Duration, OauthError> {
    let v = form.require("ttl_seconds")?;
    let secs = v.parse::<u64>().map_err(|_| {
        OauthError::invalid(
            "ttl_seconds",
            format!("{} is not a number of seconds", quote(v)),
        )
    })?;
    param(convert::seconds(
        "ttl_seconds",
        secs,
        convert::MAX_TTL_SECONDS,
    ))
}

/// The tool a token is for: `audience` (RFC 8693), or `resource` (RFC 8707,
/// an absolute URI), not both, once.
fn audience(form: &Form) -> Result<&str, OauthError> {
    match (form.get("audience"), form.get("resource")) {
        (Some(_), Some(_)) => Err(OauthError::new(
            Code::InvalidTarget,
            "audience and resource both name the tool: send one",
        )),
        (Some(a), None) => Ok(a),
        (None, Some(r))
            if r.split_once(':')
                .is_some_and(|(scheme, _)| is_scheme(scheme)) =>
        {
            Ok(r)
        }
        (None, Some(r)) => Err(OauthError::new(
            Code::InvalidTarget,
            format!(
                "resource: {} is not an absolute URI (RFC 8707); send a tool's name as audience",
                quote(r)
            ),
        )),
        (None, None) => Err(OauthError::new(
            Code::InvalidTarget,
            "audience: is required: the tool the token is for (or resource, RFC 8707)",
        )),
    }
}

/// RFC 3986 §3.1: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// The one scope a token is for: the tool from [`audience`], and `scope` as
/// the token's own `scope` claim spells it, `<action>:<resource>`.
pub(super) fn requested_scope(form: &Form) -> Result<Scope, OauthError> {
    let audience = audience(form)?;
    let scope = form.get("scope").ok_or_else(|| {
        OauthError::new(
            Code::InvalidScope,
            "scope: is required: one <action>:<resource>, as in read:customers/eu/42",
        )
    })?;
    if scope.contains([' ', '\t', '\n', '\r']) {
        return Err(OauthError::new(
            Code::InvalidScope,
            format!(
                "scope: {} names more than one scope; a Mayfly token is for exactly one <action>:<resource>",
                quote(scope)
            ),
        ));
    }
    let Some((action, resource)) = scope.split_once(':') else {
        return Err(OauthError::new(
            Code::InvalidScope,
            format!(
                "scope: {} is not <action>:<resource>, as in read:customers/eu/42",
                quote(scope)
            ),
        ));
    };
    Scope::requested(audience, resource, action).map_err(|e| {
        let code = match e.field() {
            "audience" => Code::InvalidTarget,
            _ => Code::InvalidScope,
        };
        OauthError::new(code, format!("scope: {e}"))
    })
}

async fn mint(s: &OauthState, caller: &Caller, form: &Form) -> Result<Response, OauthError> {
    let input = MintRequest {
        task: param(convert::task_id("task_id", form.require("task_id")?))?,
        scope: requested_scope(form)?,
        ttl: ttl(form)?,
    };
    match s.broker.mint(caller, input).await {
        Ok(Mint::Minted(m)) => Ok(access_token(&m)),
        Ok(Mint::Pending(a)) => {
            let now = s.auth.clock.now();
            s.polls.polled(a.id, &caller.id, now);
            Err(pending(s, a.id, a.expires_at, now))
        }
        Err(e) => {
            // Asked again while pending: the same approval to poll.
            let pending_id = match &e {
                BrokerError::Refused(crate::domain::refusal::Refusal::ApprovalPending {
                    approval,
                    ..
                }) => Some(*approval),
                _ => None,
            };
            let answer = OauthError::from(e);
            Err(match pending_id {
                Some(id) => answer
                    .with("device_code", id.to_string())
                    .with("interval", s.polls.interval(id).as_secs()),
                None => answer,
            })
        }
    }
}

/// `authorization_pending` for approval `id`, as an RFC 8628 device
/// authorization: poll with its `device_code` every `interval` seconds.
fn pending(
    s: &OauthState,
    id: Uuid,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> OauthError {
    let interval = s.polls.interval(id).as_secs();
    OauthError::new(
        Code::AuthorizationPending,
        format!(
            "the action needs a security team's approval; approval {id} is pending: poll with grant_type={DEVICE_CODE} and device_code={id} every {interval} s"
        ),
    )
    .with("device_code", id.to_string())
    .with("interval", interval)
    .with("expires_in", (expires_at - now).whole_seconds().max(0))
}

async fn poll(s: &OauthState, caller: &Caller, form: &Form) -> Result<Response, OauthError> {
    let code = form.require("device_code")?;
    let id = Uuid::parse_str(code).map_err(|_| {
        OauthError::new(
            Code::InvalidGrant,
            format!("device_code: {} is not an approval id", quote(code)),
        )
    })?;
    let now = s.auth.clock.now();
    if let Some(interval) = s.polls.too_soon(id, &caller.id, now) {
        return Err(OauthError::new(
            Code::SlowDown,
            format!(
                "polled sooner than every {} s; wait that long between polls",
                interval.as_secs()
            ),
        )
        .with("interval", interval.as_secs()));
    }
    let (approval, minted) = s.broker.await_approval(caller, id, Duration::ZERO).await?;
    if let Some(m) = minted {
        s.polls.forget(id);
        return Ok(access_token(&m));
    }
    let now = s.auth.clock.now();
    let settled = |code, why: String| {
        s.polls.forget(id);
        Err(OauthError::new(code, why))
    };
    match approval.state_at(now) {
        ApprovalState::Pending | ApprovalState::Approved => {
            s.polls.polled(id, &caller.id, now);
            Err(pending(s, id, approval.expires_at, now))
        }
        ApprovalState::Denied => settled(
            Code::AccessDenied,
            format!(
                "approval {id} was denied by {}: {}",
                approval.decided_by.as_ref().map_or("?", |d| d.as_str()),
                approval.decision_reason.as_deref().unwrap_or("")
            ),
        ),
        ApprovalState::Expired => settled(
            Code::ExpiredToken,
            format!("approval {id} lapsed before it was decided or used; ask again"),
        ),
        ApprovalState::Used => settled(
            Code::InvalidGrant,
            format!(
                "approval {id} was spent on its one token{}",
                approval
                    .used_jti
                    .map(|j| format!(" ({j})"))
                    .unwrap_or_default()
            ),
        ),
    }
}

async fn exchange(s: &OauthState, caller: &Caller, form: &Form) -> Result<Response, OauthError> {
    let why = "is not accepted: the actor is the client its certificate authenticates";
    form.refuse("actor_token", why)?;
    form.refuse("actor_token_type", why)?;
    let subject = form.require("subject_token")?;
    match form.require("subject_token_type")? {
        ACCESS_TOKEN_TYPE | JWT_TYPE => offer(s, caller, form, subject).await,
        OFFER_TYPE => redeem(s, caller, form, subject).await,
        other => Err(OauthError::invalid(
            "subject_token_type",
            format!(
                "{} is not one Mayfly exchanges: {ACCESS_TOKEN_TYPE} (a token of yours, for an offer to a sub-agent) or {OFFER_TYPE} (an offer to you)",
                quote(other)
            ),
        )),
    }
}

/// The holder's exchange: its token for an offer of a narrower one to
/// `sub_agent` (the offer is not an access token: `token_type` `N_A`).
async fn offer(
    s: &OauthState,
    caller: &Caller,
    form: &Form,
    subject: &str,
) -> Result<Response, OauthError> {
    match form.get("requested_token_type") {
        Some(OFFER_TYPE) => {}
        Some(other) => {
            return Err(OauthError::invalid(
                "requested_token_type",
                format!(
                    "{} cannot be had for a token of yours: exchange it for a delegation offer ({OFFER_TYPE}), which the sub-agent redeems with its own certificate",
                    quote(other)
                ),
            ));
        }
        None => {
            return Err(OauthError::invalid(
                "requested_token_type",
                format!(
                    "is required with an access token as subject_token: {OFFER_TYPE}, an offer the sub-agent redeems with its own certificate"
                ),
            ));
        }
    }
    let sub_agent = param(convert::spiffe_id(
        "sub_agent",
        form.get("sub_agent").unwrap_or_default(),
    ))?;
    let input = DelegateRequest {
        parent_token: subject.to_string(),
        sub_agent_is_agent: s.auth.roles.has(&sub_agent, Role::Agent),
        sub_agent,
        scope: requested_scope(form)?,
        ttl: ttl(form)?,
    };
    let d = s
        .broker
        .delegate(caller, input)
        .await
        .map_err(subject_field)?;
    let left = (d.expires_at - s.auth.clock.now()).whole_seconds().max(0);
    Ok(no_store(json!({
        "access_token": d.id.to_string(),
        "issued_token_type": OFFER_TYPE,
        "token_type": "N_A",
        "expires_in": left,
        "depth": d.depth,
    })))
}

/// The sub-agent's exchange: an offer to it, for its child token, bound to its
/// own certificate.
async fn redeem(
    s: &OauthState,
    caller: &Caller,
    form: &Form,
    subject: &str,
) -> Result<Response, OauthError> {
    match form.get("requested_token_type") {
        None | Some(ACCESS_TOKEN_TYPE | JWT_TYPE) => {}
        Some(other) => {
            return Err(OauthError::invalid(
                "requested_token_type",
                format!("{}: an offer is redeemed for an access token", quote(other)),
            ));
        }
    }
    let fixed = "is fixed by the offer; send only the offer";
    for p in ["audience", "resource", "scope", "ttl_seconds", "sub_agent"] {
        form.refuse(p, fixed)?;
    }
    let id = Uuid::parse_str(subject).map_err(|_| {
        OauthError::new(
            Code::InvalidGrant,
            format!(
                "subject_token: {} is not a delegation offer",
                quote(subject)
            ),
        )
    })?;
    let m = s.broker.redeem(caller, id).await?;
    Ok(access_token(&m))
}

/// The broker names the holder's token `parent_token` (its gRPC field); here
/// it is `subject_token`.
fn subject_field(e: BrokerError) -> BrokerError {
    match e {
        BrokerError::BadToken { why, .. } => BrokerError::BadToken {
            field: "subject_token",
            why,
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Form {
        Form::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn a_scope_is_one_action_and_resource_for_one_audience() {
        let s = requested_scope(&form("audience=crm-api&scope=read:customers/eu/42")).unwrap();
        assert_eq!(
            (s.audience.as_str(), s.resource.as_str(), s.action.as_str()),
            ("crm-api", "customers/eu/42", "read")
        );
        let s = requested_scope(&form("resource=urn:tool:crm&scope=read:a")).unwrap();
        assert_eq!(s.audience, "urn:tool:crm");
        let cases = [
            ("scope=read:a", Code::InvalidTarget),
            (
                "audience=crm-api&resource=urn:x&scope=read:a",
                Code::InvalidTarget,
            ),
            ("resource=crm-api&scope=read:a", Code::InvalidTarget),
            ("audience=crm%20api&scope=read:a", Code::InvalidTarget),
            ("audience=crm-api", Code::InvalidScope),
            ("audience=crm-api&scope=read", Code::InvalidScope),
            ("audience=crm-api&scope=read:a+write:b", Code::InvalidScope),
            ("audience=crm-api&scope=*:a", Code::InvalidScope),
            ("audience=crm-api&scope=read:a/../b", Code::InvalidScope),
        ];
        for (body, code) in cases {
            let e = requested_scope(&form(body)).unwrap_err();
            assert_eq!(e.code, code, "{body}: {}", e.description);
        }
    }

    #[test]
    fn ttl_seconds_is_required_and_bounded() {
        assert_eq!(
            ttl(&form("ttl_seconds=60")).unwrap(),
            Duration::from_secs(60)
        );
        for bad in [
            "",
            "ttl_seconds=0",
            "ttl_seconds=-1",
            "ttl_seconds=1e3",
            "ttl_seconds=86401",
        ] {
            let e = ttl(&form(bad)).unwrap_err();
            assert_eq!(e.code, Code::InvalidRequest, "{bad}");
            assert!(
                e.description.starts_with("ttl_seconds"),
                "{bad}: {}",
                e.description
            );
        }
    }
}
