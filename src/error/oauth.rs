//! Errors as the OAuth front door answers them: RFC 6749 §5.2 JSON (`error`,
//! `error_description`) with the HTTP status its RFC names, the error codes of
//! RFC 6749, RFC 7009, RFC 8628 (step-up polling), RFC 8693 and RFC 8707. The
//! same refusals as on gRPC; only their spelling differs.
use super::bounded;
use crate::api::Refused;
use crate::broker::BrokerError;
use crate::domain::refusal::{Refusal, Widening};
use crate::revocation::WatchError;
use crate::store::StoreError;
use crate::token::KeyError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tracing::error;

/// The error codes Mayfly answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    InvalidTarget,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedTokenType,
    AccessDenied,
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
    TemporarilyUnavailable,
    ServerError,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::InvalidClient => "invalid_client",
            Code::InvalidGrant => "invalid_grant",
            Code::InvalidScope => "invalid_scope",
            Code::InvalidTarget => "invalid_target",
            Code::UnauthorizedClient => "unauthorized_client",
            Code::UnsupportedGrantType => "unsupported_grant_type",
            Code::UnsupportedTokenType => "unsupported_token_type",
            Code::AccessDenied => "access_denied",
            Code::AuthorizationPending => "authorization_pending",
            Code::SlowDown => "slow_down",
            Code::ExpiredToken => "expired_token",
            Code::TemporarilyUnavailable => "temporarily_unavailable",
            Code::ServerError => "server_error",
        }
    }

    /// RFC 6749 §5.2: 400, except a client that failed to authenticate (401).
    /// The store down is 503 and a broken invariant 500, so that clients retry
    /// the one and report the other.
    fn status(self) -> StatusCode {
        match self {
            Code::InvalidClient => StatusCode::UNAUTHORIZED,
            Code::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An OAuth error answer.
#[derive(Debug)]
pub struct OauthError {
    pub code: Code,
    pub status: StatusCode,
    pub description: String,
    /// Members added to the JSON object (a pending approval's `device_code`…).
    pub extra: Map<String, Value>,
}

impl OauthError {
    pub fn new(code: Code, description: impl Into<String>) -> Self {
        OauthError {
            code,
            status: code.status(),
            description: rfc6749_text(&bounded(description.into())),
            extra: Map::new(),
        }
    }

    /// `invalid_request` naming the parameter and why.
    pub fn invalid(param: impl std::fmt::Display, why: impl std::fmt::Display) -> Self {
        Self::new(Code::InvalidRequest, format!("{param}: {why}"))
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

/// `error_description` in the characters RFC 6749 §5.2 allows (printable
/// ASCII but `"` and `\`): quotes become `'`, a backslash `/`, `§` "sec.",
/// `…` "...", and anything else outside the set `?`. The sentence stays the
/// one a gRPC client reads, spelled for OAuth clients that check the set.
fn rfc6749_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push('\''),
            '\\' => out.push('/'),
            '§' => out.push_str("sec. "),
            '…' => out.push_str("..."),
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

impl IntoResponse for OauthError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), self.code.as_str().into());
        body.insert("error_description".into(), self.description.into());
        body.extend(self.extra);
        let mut resp = (self.status, axum::Json(Value::Object(body))).into_response();
        let h = resp.headers_mut();
        // RFC 6749 §5.1: token endpoint answers are never cached.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if self.code == Code::TemporarilyUnavailable {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<Refused> for OauthError {
    fn from(r: Refused) -> Self {
        match r {
            // RFC 6749 §5.2: client authentication failed (tls_client_auth: no
            // or a bad certificate).
            Refused::NoConnection | Refused::Unauthenticated(_) | Refused::Expired => {
                OauthError::new(Code::InvalidClient, r.to_string())
            }
            Refused::Role(e) => e.into(),
        }
    }
}

impl From<BrokerError> for OauthError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Refused(ref r) | BrokerError::Deviated(ref r) => {
                OauthError::new(refused(r), e.to_string())
            }
            BrokerError::BadToken { .. } => OauthError::new(Code::InvalidGrant, e.to_string()),
            BrokerError::Archive(_) => OauthError::new(Code::InvalidRequest, e.to_string()),
            BrokerError::Store(StoreError::Unavailable(cause)) => unavailable(&cause),
            BrokerError::Keys(cause @ KeyError::Lapsed) => unavailable(&cause),
            BrokerError::Keys(cause) => {
                error!(error = %cause, "signing key error");
                OauthError::new(Code::ServerError, "internal error")
            }
            BrokerError::Store(cause) => {
                crate::metrics::STORE_ERRORS.inc();
                error!(error = %cause, "store failure");
                OauthError::new(Code::ServerError, "internal store error")
            }
            BrokerError::Internal(cause) => {
                error!(error = %cause, "internal error");
                OauthError::new(Code::ServerError, "internal error")
            }
        }
    }
}

/// A revocation feed refused before it opens, or ended. A cursor the store
/// cannot serve is 409 Conflict, for both ways it can be wrong (ahead of the
/// store's head, before the history it keeps): the cursor conflicts with the
/// store's history as it stands, and asking again will not help (410 Gone
/// would fit the pruned case only, and say the feed itself is gone).
/// `invalid_request`, the cursor being the request's bad parameter; `first` and
/// `head` say where the history stands. The client resyncs: drops its claim of
/// completeness and reads from the start (no cursor).
impl From<WatchError> for OauthError {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::Resync(r) => OauthError::new(Code::InvalidRequest, r.to_string())
                .with_status(StatusCode::CONFLICT)
                .with("first", r.bounds.first)
                .with("head", r.bounds.head),
            // The store down: 503 temporarily_unavailable, as every endpoint.
            WatchError::Store(e) => BrokerError::Store(e).into(),
            expired @ WatchError::SvidExpired => {
                OauthError::new(Code::InvalidClient, expired.to_string())
            }
        }
    }
}

/// `temporarily_unavailable` (503): nothing was handed out.
fn unavailable(cause: &dyn std::fmt::Display) -> OauthError {
    crate::metrics::STORE_ERRORS.inc();
    error!(error = %cause, "store unavailable");
    OauthError::new(
        Code::TemporarilyUnavailable,
        "the broker's store is unavailable; nothing was returned, retry later",
    )
}

/// The error code a refusal is answered with (README "Use Mayfly from any
/// language" has the table). The task, offer or approval a request stands on is
/// its grant: what is wrong with it is `invalid_grant`. What the request asks
/// for beyond what it may have is `invalid_scope`, or `invalid_target` for the
/// audience. What policy or the security team refuses is `access_denied`
/// (RFC 8628's code, which RFC 6749's registry lists for the token endpoint).
/// No wildcard: a new refusal chooses its code here.
fn refused(r: &Refusal) -> Code {
    use Refusal::*;
    match r {
        MissingRole { .. } => Code::UnauthorizedClient,
        SelfDelegation | OutlivesParent { .. } => Code::InvalidRequest,
        OutOfScope { .. } | Widens(Widening::Action { .. } | Widening::Resource { .. }) => {
            Code::InvalidScope
        }
        Widens(Widening::Audience { .. }) => Code::InvalidTarget,
        ApprovalPending { .. } => Code::AuthorizationPending,
        ApprovalLapsed { .. } => Code::ExpiredToken,
        ApprovalDenied { .. } => Code::AccessDenied,
        NotFound(_)
        | NotOwner { .. }
        | NotOpener { .. }
        | TaskClosed(_)
        | ChangedWhileMinting { .. }
        | NoTimeLeft { .. }
        | OutOfBudget { .. }
        | TooManyOffers { .. }
        | ForeignToken { .. }
        | OtherCertificate
        | ParentRevoked { .. }
        | AlreadyRedeemed { .. }
        | OfferLapsed { .. }
        | AncestorRevoked { .. }
        | OfferNoTimeLeft { .. }
        | NotTheSubAgent { .. }
        | ApprovalChanged { .. }
        | ApprovalSpent { .. }
        | ApprovalUnusable { .. }
        | ApprovalsUnusable { .. }
        | ApprovalDecided { .. }
        | NotTheRequester { .. } => Code::InvalidGrant,
        NotTheHolder { .. } => Code::UnauthorizedClient,
        Policy { .. }
        | WorkflowUndefined { .. }
        | Frozen(_)
        | InChain { .. }
        | NotAnAgent { .. }
        | TooDeep { .. }
        | StepUpNotDelegated { .. }
        | RepeatedStepUp { .. }
        | AgentDecides { .. }
        | OwnApproval { .. } => Code::AccessDenied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Missing, TaskId};

    #[test]
    fn refusals_are_answered_with_the_rfc_codes_and_statuses() {
        let task = TaskId::new();
        let cases: Vec<(BrokerError, Code, u16)> = vec![
            (Refusal::NotOwner { task }.into(), Code::InvalidGrant, 400),
            (
                Refusal::NotFound(Missing::Task(task)).into(),
                Code::InvalidGrant,
                400,
            ),
            (
                BrokerError::Deviated(Refusal::OutOfBudget { task, max: 3 }),
                Code::InvalidGrant,
                400,
            ),
            (
                Refusal::Widens(Widening::Audience {
                    asked: "a".into(),
                    held: "b".into(),
                })
                .into(),
                Code::InvalidTarget,
                400,
            ),
            (
                BrokerError::Keys(KeyError::Lapsed),
                Code::TemporarilyUnavailable,
                503,
            ),
            (BrokerError::Internal("x".into()), Code::ServerError, 500),
        ];
        for (e, code, status) in cases {
            let shown = e.to_string();
            let o = OauthError::from(e);
            assert_eq!(o.code, code, "{shown}");
            assert_eq!(o.status.as_u16(), status, "{shown}");
        }
    }

    #[test]
    fn descriptions_keep_to_the_characters_rfc_6749_allows() {
        let o = OauthError::new(
            Code::InvalidRequest,
            "scope: \"ré\\ad\u{202e}\" is repeated (RFC 6749 §3.2)…\n",
        );
        assert_eq!(
            o.description,
            "scope: 'r?/ad?' is repeated (RFC 6749 sec. 3.2)...?"
        );
        assert!(
            o.description
                .chars()
                .all(|c| matches!(c, ' '..='!' | '#'..='[' | ']'..='~'))
        );
    }

    #[test]
    fn a_client_without_a_valid_svid_is_invalid_client_401() {
        let o = OauthError::from(Refused::Unauthenticated(
            crate::identity::VerifyError::NoCertificate,
        ));
        assert_eq!((o.code, o.status.as_u16()), (Code::InvalidClient, 401));
        assert!(
            o.description.starts_with("invalid X.509-SVID"),
            "{}",
            o.description
        );
    }
}
