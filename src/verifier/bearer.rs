//! The bearer token of a request, read from its `Authorization` header as RFC
//! 6750 §2.1 defines it: `Bearer`, one or more spaces, one b64token.

/// Why a request carries no usable bearer token. Never echoes the header: it may
/// hold a token, or someone else's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("no Authorization header")]
    Missing,
    #[error("the Authorization header uses another scheme than Bearer")]
    OtherScheme,
    #[error("more than one Authorization header")]
    Repeated,
    #[error("the Authorization header is not Bearer and one token")]
    Malformed,
}

impl BearerError {
    /// True when the request carried no bearer credentials at all (no header, or
    /// another scheme): RFC 6750 §3.1 then wants a bare challenge, no error code,
    /// since the client may simply not know that authentication is needed. The
    /// others are malformed requests (`invalid_request`).
    pub fn is_missing_credentials(&self) -> bool {
        matches!(self, BearerError::Missing | BearerError::OtherScheme)
    }
}

/// The token of the request's `Authorization` header values (all of them, as
/// received: a request repeating the header is malformed, RFC 6750 §3.1).
///
/// The scheme is matched case-insensitively (RFC 9110 §11.1); the token must be
/// one b64token (`[A-Za-z0-9-._~+/]+=*`), so anything with a second word, a comma
/// or an auth-param is refused rather than guessed at. Whitespace around the whole
/// value is the header's own (RFC 9110 §5.5) and is ignored.
pub fn bearer_token<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<&'a str, BearerError> {
    let mut values = values.into_iter();
    let value = values.next().ok_or(BearerError::Missing)?;
    if values.next().is_some() {
        return Err(BearerError::Repeated);
    }
    let value = trim_ows(value);
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(i) => value.split_at(i),
        None => (value, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        let auth_scheme = !scheme.is_empty() && scheme.iter().all(|&b| is_tchar(b));
        return Err(if auth_scheme {
            BearerError::OtherScheme
        } else {
            BearerError::Malformed
        });
    }
    let token = &rest[rest.iter().take_while(|&&b| b == b' ').count()..];
    if !is_b64token(token) {
        return Err(BearerError::Malformed);
    }
    // A b64token is ASCII, so this never fails.
    std::str::from_utf8(token).map_err(|_| BearerError::Malformed)
}

/// Without the optional whitespace (SP, HTAB) around a field value.
fn trim_ows(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().take_while(|b| ows(b)).count();
    let end = v.len() - v[start..].iter().rev().take_while(|b| ows(b)).count();
    &v[start..end]
}

/// RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &[u8]) -> bool {
    let body = t.iter().take_while(|&&b| b != b'=').count();
    body > 0
        && t[..body]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        && t[body..].iter().all(|&b| b == b'=')
}

/// RFC 9110 §5.6.2 token characters, of which an auth-scheme is made.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(value: &str) -> Result<&str, BearerError> {
        bearer_token([value.as_bytes()])
    }

    #[test]
    fn a_bearer_header_yields_its_one_token() {
        assert_eq!(one("Bearer abc.DEF-_~+/=="), Ok("abc.DEF-_~+/=="));
        assert_eq!(
            one("bearer abc"),
            Ok("abc"),
            "the scheme is case-insensitive"
        );
        assert_eq!(one("BEARER   abc"), Ok("abc"), "1*SP");
        assert_eq!(
            one("  Bearer abc \t"),
            Ok("abc"),
            "the field's own whitespace"
        );
    }

    #[test]
    fn no_header_or_another_scheme_is_missing_credentials() {
        let none: [&[u8]; 0] = [];
        assert_eq!(bearer_token(none), Err(BearerError::Missing));
        assert_eq!(one("Basic dXNlcjpwYXNz"), Err(BearerError::OtherScheme));
        assert_eq!(one("DPoP abc"), Err(BearerError::OtherScheme));
        assert_eq!(one("Bearerabc"), Err(BearerError::OtherScheme));
        assert!(BearerError::Missing.is_missing_credentials());
        assert!(BearerError::OtherScheme.is_missing_credentials());
    }

    #[test]
    fn anything_else_is_a_malformed_request() {
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a,b",
            "Bearer a=b",
            "Bearer =",
            "Bearer\tabc",
            "Bearer token=\"abc\"",
            "Bearer abc\u{e9}",
            "B\u{e9}arer abc",
        ] {
            assert_eq!(one(bad), Err(BearerError::Malformed), "{bad:?}");
        }
        assert_eq!(
            bearer_token([b"Bearer a".as_slice(), b"Bearer a".as_slice()]),
            Err(BearerError::Repeated)
        );
        assert!(!BearerError::Malformed.is_missing_credentials());
        assert!(!BearerError::Repeated.is_missing_credentials());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::testing::{any_text, matching};
    use proptest::prelude::*;

    fn near_header() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            matching("(?i:bearer)?[ \t]{0,3}[A-Za-z0-9+/=._~, \"-]{0,24}")
                .prop_map(String::into_bytes),
            any_text().prop_map(|t| format!("Bearer {t}").into_bytes()),
            prop::collection::vec(any::<u8>(), 0..48),
        ]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_header_is_read_without_panicking_and_yields_only_a_b64token(
            value in near_header(),
        ) {
            if let Ok(token) = bearer_token([value.as_slice()]) {
                prop_assert!(is_b64token(token.as_bytes()));
                // The token is the end of the header, after the scheme and spaces.
                let trimmed = trim_ows(&value);
                prop_assert!(trimmed.ends_with(token.as_bytes()));
                prop_assert!(trimmed[..6].eq_ignore_ascii_case(b"bearer"));
                prop_assert!(trimmed[6..trimmed.len() - token.len()].iter().all(|&b| b == b' '));
            }
        }

        #[test]
        fn every_b64token_is_read_back_whatever_the_scheme_case_and_spacing(
            scheme in matching("(?i:bearer)"),
            spaces in 1usize..4,
            token in matching("[A-Za-z0-9._~+/-]{1,40}={0,2}"),
        ) {
            let value = format!("{scheme}{}{token}", " ".repeat(spaces));
            prop_assert_eq!(bearer_token([value.as_bytes()]), Ok(token.as_str()));
        }
    }
}
