//! The request body of an OAuth endpoint: `application/x-www-form-urlencoded`
//! (RFC 6749 §3.2), refused unread when it is larger than the endpoint allows or
//! of another type; each parameter at most once (§3.2), an empty value as if it
//! were omitted (§3.1), parameters the endpoint does not know ignored (§3.2).
//! Mayfly's own endpoints (tasks, misuse reports) take JSON instead
//! ([`json_body`]), bounded the same way.
use crate::domain::text::quote;
use crate::error::oauth::OauthError;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use std::collections::BTreeMap;

/// The most parameters a body may carry: every endpoint knows fewer than 16, and
/// a body of thousands of empty pairs is refused rather than counted.
const MAX_PARAMS: usize = 64;

/// A parsed form: each parameter once, empty values dropped.
#[derive(Debug, Default)]
pub struct Form(pub(super) BTreeMap<String, String>);

impl Form {
    /// Reads a form body of at most `limit` bytes, within `deadline` (see
    /// [`bounded_body`]).
    pub async fn read(
        headers: &HeaderMap,
        body: Body,
        limit: usize,
        deadline: std::time::Duration,
    ) -> Result<Form, OauthError> {
        content_type(headers, FORM)?;
        Form::parse(&bounded_body(headers, body, limit, deadline).await?)
    }

    pub fn parse(bytes: &[u8]) -> Result<Form, OauthError> {
        let mut params = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, (name, value)) in form_urlencoded::parse(bytes).enumerate() {
            if i >= MAX_PARAMS {
                return Err(OauthError::invalid(
                    "request body",
                    format!("has more than {MAX_PARAMS} parameters"),
                ));
            }
            // Repeated is refused even when empty.
            if !seen.insert(name.to_string()) {
                return Err(repeated(&name));
            }
            // RFC 6749 §3.1: sent without a value, as if omitted.
            if !value.is_empty() {
                params.insert(name.into_owned(), value.into_owned());
            }
        }
        Ok(Form(params))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn require(&self, name: &str) -> Result<&str, OauthError> {
        self.get(name)
            .ok_or_else(|| OauthError::invalid(name, "is required"))
    }

    /// Refuses a parameter the grant fixes itself: a client that sends it
    /// expects it to count, and it would not.
    pub fn refuse(&self, name: &str, why: &str) -> Result<(), OauthError> {
        match self.get(name) {
            Some(_) => Err(OauthError::invalid(name, why)),
            None => Ok(()),
        }
    }
}

fn repeated(name: &str) -> OauthError {
    OauthError::new(
        crate::error::oauth::Code::InvalidRequest,
        format!(
            "parameter {} is repeated; each parameter may be sent once (RFC 6749 §3.2)",
            quote(name)
        ),
    )
}

const FORM: &str = "application/x-www-form-urlencoded";

/// The body of a request: at most `limit` bytes (a declared length is judged
/// from the headers, before a byte is read), arrived within `deadline` (a
/// client trickling it would otherwise hold its call, and so its connection,
/// open indefinitely).
pub async fn bounded_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    deadline: std::time::Duration,
) -> Result<axum::body::Bytes, OauthError> {
    let too_large = || {
        OauthError::invalid("request body", format!("is larger than {limit} bytes"))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| OauthError::invalid("Content-Length", "is not a number"))?;
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    tokio::time::timeout(deadline, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            OauthError::invalid(
                "request body",
                format!("did not arrive within {} s", deadline.as_secs_f64()),
            )
            .with_status(StatusCode::REQUEST_TIMEOUT)
        })?
        .map_err(|_| too_large())
}

/// How much of a JSON parser's message is quoted: enough to name the field
/// and the position, not a value of any length.
const MESSAGE_CHARS: usize = 120;

/// A JSON object (`application/json`, at most `limit` bytes, within `deadline`:
/// see [`bounded_body`]) as `T`, whose fields are the endpoint's; a body that is
/// not one is refused as not being `what` ("a task to open"), with the first
/// characters of the parser's message, which names the field or the position.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    deadline: std::time::Duration,
    what: &str,
) -> Result<T, OauthError> {
    content_type(headers, "application/json")?;
    let bytes = bounded_body(headers, body, limit, deadline).await?;
    // serde reads a struct from an array of its fields too (`["why"]`): the
    // fields are named, or it is not a request.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(OauthError::invalid(
            "request body",
            format!("is not {what}: a JSON object is expected"),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        // serde's message may carry a whole value (an unknown field's name, a
        // string of the wrong type): its first characters only.
        let message = e.to_string();
        let mut why: String = message.chars().take(MESSAGE_CHARS).collect();
        if why.len() < message.len() {
            why.push_str("...");
        }
        OauthError::invalid("request body", format!("is not {what}: {why}"))
    })
}

/// `expected` (a media type), with at most a `charset=utf-8`.
pub fn content_type(headers: &HeaderMap, expected: &str) -> Result<(), OauthError> {
    let wrong = |shown: &str| {
        OauthError::invalid(
            "Content-Type",
            format!("{shown}; send the request as {expected}"),
        )
    };
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Err(wrong("is missing"));
    };
    let v = v.to_str().map_err(|_| wrong("is not text"))?;
    let mut parts = v.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default();
    if !essence.eq_ignore_ascii_case(expected) {
        return Err(wrong(&format!("is {}", quote(essence))));
    }
    for p in parts {
        let ok = p.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("charset")
                && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        });
        if !ok {
            return Err(wrong(&format!("has the parameter {}", quote(p))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_parameter_is_refused_naming_it() {
        let e = Form::parse(b"grant_type=client_credentials&scope=a&scope=b").unwrap_err();
        assert!(
            e.description.contains("'scope' is repeated"),
            "{}",
            e.description
        );
        let e = Form::parse(b"scope=&scope=").unwrap_err();
        assert!(e.description.contains("repeated"), "{}", e.description);
    }

    #[test]
    fn empty_values_are_omitted_and_values_are_decoded() {
        let f = Form::parse(b"a=&b=x+y%2Fz&c=%E2%82%AC").unwrap();
        assert_eq!(f.get("a"), None);
        assert_eq!(f.get("b"), Some("x y/z"));
        assert_eq!(f.get("c"), Some("€"));
        assert!(
            f.require("a")
                .unwrap_err()
                .description
                .starts_with("a: is required")
        );
    }

    #[test]
    fn only_the_form_type_is_accepted() {
        let mut h = HeaderMap::new();
        assert!(content_type(&h, FORM).is_err());
        for ok in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-URLEncoded; charset=UTF-8",
            "application/x-www-form-urlencoded;charset=\"utf-8\"",
        ] {
            h.insert(header::CONTENT_TYPE, ok.parse().unwrap());
            assert!(content_type(&h, FORM).is_ok(), "{ok}");
        }
        for bad in [
            "application/json",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded; charset=latin1",
        ] {
            h.insert(header::CONTENT_TYPE, bad.parse().unwrap());
            let e = content_type(&h, FORM).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn a_body_of_many_parameters_is_refused() {
        let body: String = (0..100).map(|i| format!("p{i}=1&")).collect();
        assert!(Form::parse(body.as_bytes()).is_err());
    }
}
