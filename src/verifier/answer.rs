//! The HTTP answers of a protected tool: its metadata document, and the refusals
//! RFC 6750 §3, RFC 8705 §3 and RFC 9728 §5.1 define (and the MCP authorization
//! spec requires) — a status, a `WWW-Authenticate` challenge that points to the
//! metadata, and a small JSON body.
use super::{BearerError, ProtectedResource, RequiredScope, Verdict};

/// The content type of every [`Answer`] body.
pub const CONTENT_TYPE: &str = "application/json";

/// The longest `error_description` sent; the verdict says the rest in logs.
const MAX_DESCRIPTION: usize = 120;

/// What to send back: the status, the `WWW-Authenticate` value when there is a
/// challenge, and a JSON body ([`CONTENT_TYPE`]). Framework-neutral on purpose:
/// the verifier library depends on no HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub body: String,
}

/// The parameters of one challenge, or of the body that repeats them.
struct Refusal {
    status: u16,
    error: Option<&'static str>,
    description: String,
    scope: Option<String>,
    challenge: bool,
}

impl ProtectedResource {
    /// `200` with the metadata document (RFC 9728 §3.2), for
    /// [`ProtectedResource::well_known_path`].
    pub fn answer_metadata(&self) -> Answer {
        Answer {
            status: 200,
            www_authenticate: None,
            body: self.metadata().to_string(),
        }
    }

    /// The answer to a request without a usable bearer token: `401` with a bare
    /// challenge when it carried none (RFC 6750 §3.1: no error code then; this is
    /// what starts an MCP client's discovery), `400 invalid_request` when the
    /// `Authorization` header is malformed or repeated.
    pub fn answer_bearer_error(&self, why: &BearerError) -> Answer {
        let refusal = if why.is_missing_credentials() {
            Refusal {
                status: 401,
                error: None,
                description: "a bearer token is required".into(),
                scope: None,
                challenge: true,
            }
        } else {
            Refusal {
                status: 400,
                error: Some("invalid_request"),
                description: why.to_string(),
                scope: None,
                challenge: true,
            }
        };
        self.answer(refusal)
    }

    /// The answer to a refused check of a request that needed `required`; `None`
    /// for [`Verdict::Valid`], which the tool answers itself.
    ///
    /// - a token that is bad, expired, revoked, for another tool or issuer, or
    ///   bound to another certificate: `401 invalid_token`;
    /// - a good token whose scope does not cover the request: `403
    ///   insufficient_scope` with the `scope` needed (`<action>:<resource>`);
    /// - the verifier stale: `503` and no challenge, failing closed without
    ///   telling the client to get a new token, since this one may be fine.
    pub fn answer_verdict(&self, verdict: &Verdict, required: &RequiredScope) -> Option<Answer> {
        let invalid = |description: String| Refusal {
            status: 401,
            error: Some("invalid_token"),
            description,
            scope: None,
            challenge: true,
        };
        let refusal = match verdict {
            Verdict::Valid(_) => return None,
            Verdict::ScopeNotCovered => Refusal {
                status: 403,
                error: Some("insufficient_scope"),
                description: "the token's scope does not cover this request".into(),
                scope: Some(format!("{}:{}", required.action(), required.resource())),
                challenge: true,
            },
            Verdict::Stale => Refusal {
                status: 503,
                error: Some("temporarily_unavailable"),
                description: "tokens cannot be checked right now; retry shortly".into(),
                scope: None,
                challenge: false,
            },
            // RFC 8705 §3: a token presented over a connection whose client
            // certificate is not the one it is bound to is `invalid_token`, 401.
            // It is a bad credential for this client, not a lack of permission:
            // no scope would make it usable here, so 403 would mislead.
            Verdict::NotBoundToClient => {
                invalid("the token is bound to another client certificate".into())
            }
            Verdict::Malformed => invalid("the token is not a Mayfly access token".into()),
            Verdict::BadSignature => invalid("the token's signature does not verify".into()),
            Verdict::UnknownKey => invalid("the token is signed by an unknown key".into()),
            Verdict::WrongIssuer => invalid("the token is from another issuer".into()),
            Verdict::WrongAudience => invalid("the token is for another tool".into()),
            Verdict::Expired => invalid("the token has expired".into()),
            Verdict::NotYetValid => invalid("the token is not valid yet".into()),
            Verdict::LifetimeExceeded => invalid("the token's lifetime is too long".into()),
            Verdict::Revoked { sequence } => {
                invalid(format!("the token is revoked (event {sequence})"))
            }
        };
        Some(self.answer(refusal))
    }

    fn answer(&self, r: Refusal) -> Answer {
        let description = error_description(&r.description);
        let mut body = serde_json::Map::new();
        let mut params = Vec::new();
        if let Some(error) = r.error {
            body.insert("error".into(), error.into());
            params.push(("error", error.to_string()));
        }
        body.insert("error_description".into(), description.clone().into());
        // RFC 6750 §3.1: no error information when no credentials were sent.
        if r.error.is_some() {
            params.push(("error_description", description));
        }
        if let Some(scope) = r.scope {
            body.insert("scope".into(), scope.clone().into());
            params.push(("scope", scope));
        }
        params.push(("resource_metadata", self.metadata_url().to_string()));
        Answer {
            status: r.status,
            www_authenticate: r.challenge.then(|| challenge(&params)),
            body: serde_json::Value::Object(body).to_string(),
        }
    }
}

/// `Bearer name="value", …` (RFC 9110 §11.2 auth-params, values quoted).
fn challenge(params: &[(&str, String)]) -> String {
    let params: Vec<String> = params
        .iter()
        .map(|(name, value)| format!("{name}={}", quoted(value)))
        .collect();
    format!("Bearer {}", params.join(", "))
}

/// An RFC 9110 §5.6.4 quoted-string: `"` and `\` backslash-escaped. Anything but
/// printable ASCII becomes `?`: a header value must stay visible ASCII, and a
/// CR or LF would let the value end the header.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// RFC 6750 §3: `error_description` is `%x20-21 / %x23-5B / %x5D-7E` only; other
/// characters become `?`, and it is cut at [`MAX_DESCRIPTION`] characters.
fn error_description(text: &str) -> String {
    text.chars()
        .take(MAX_DESCRIPTION)
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests;
