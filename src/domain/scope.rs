//! A scope is (audience, resource pattern, action); coverage decides whether a
//! requested scope lies inside a declared one.
use super::text::{quote, quote_char};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest accepted audience, action and resource, in bytes.
const MAX_AUDIENCE: usize = 128;
const MAX_ACTION: usize = 64;
const MAX_RESOURCE: usize = 512;

/// Why a scope was refused; the message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("{field} contains a character that is not allowed: {}", quote_char(*.ch))]
    BadChar { field: &'static str, ch: char },
    #[error("resource has an empty path segment: {}", quote(.0))]
    EmptySegment(String),
    #[error(
        "resource segment {} mixes '*' with other characters; a wildcard is a whole segment",
        quote(.0)
    )]
    PartialWildcard(String),
    #[error(
        "{field} has a {segment:?} path segment; relative segments are not allowed, name the resource directly"
    )]
    DotSegment {
        field: &'static str,
        segment: &'static str,
    },
    #[error("resource may use '**' only as its last segment")]
    InnerDoubleStar,
    #[error("action must name one action, not '*'")]
    WildcardAction,
}

impl ScopeError {
    /// The part of the scope that is wrong: `audience`, `resource` or `action`.
    pub fn field(&self) -> &'static str {
        match self {
            ScopeError::Empty { field }
            | ScopeError::TooLong { field, .. }
            | ScopeError::BadChar { field, .. }
            | ScopeError::DotSegment { field, .. } => field,
            ScopeError::EmptySegment(_)
            | ScopeError::PartialWildcard(_)
            | ScopeError::InnerDoubleStar => "resource",
            ScopeError::WildcardAction => "action",
        }
    }
}

/// One permission. `resource` is a `/`-separated pattern: a `*` segment matches one
/// segment, a trailing `**` matches one or more. `action` may be `*` only in declared
/// scopes (workflows and tasks), never in a mint request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    pub audience: String,
    pub resource: String,
    pub action: String,
}

fn check_chars(field: &'static str, s: &str, max: usize, extra: &str) -> Result<(), ScopeError> {
    if s.is_empty() {
        return Err(ScopeError::Empty { field });
    }
    if s.len() > max {
        return Err(ScopeError::TooLong { field, max });
    }
    for ch in s.chars() {
        if !(ch.is_ascii_alphanumeric() || "-_.".contains(ch) || extra.contains(ch)) {
            return Err(ScopeError::BadChar { field, ch });
        }
    }
    Ok(())
}

impl Scope {
    /// Parses a declared scope (workflow envelope or task declaration): wildcards allowed.
    pub fn declared(
        audience: impl Into<String>,
        resource: impl Into<String>,
        action: impl Into<String>,
    ) -> Result<Self, ScopeError> {
        let scope = Scope {
            audience: audience.into(),
            resource: resource.into(),
            action: action.into(),
        };
        check_chars("audience", &scope.audience, MAX_AUDIENCE, ":")?;
        check_chars("resource", &scope.resource, MAX_RESOURCE, "/*:@+=,")?;
        if scope.action != "*" {
            check_chars("action", &scope.action, MAX_ACTION, "")?;
        }
        let segments: Vec<&str> = scope.resource.split('/').collect();
        for (i, seg) in segments.iter().enumerate() {
            if seg.is_empty() {
                return Err(ScopeError::EmptySegment(scope.resource.clone()));
            }
            // Coverage compares segments literally, but a resource server that
            // normalises paths reads `customers/eu/../us/1` as `customers/us/1`:
            // a pattern with `.` or `..` could reach outside what it appears to cover.
            if let Some(segment) = [".", ".."].into_iter().find(|d| seg == d) {
                return Err(ScopeError::DotSegment {
                    field: "resource",
                    segment,
                });
            }
            if seg.contains('*') && *seg != "*" && *seg != "**" {
                return Err(ScopeError::PartialWildcard(seg.to_string()));
            }
            if *seg == "**" && i + 1 != segments.len() {
                return Err(ScopeError::InnerDoubleStar);
            }
        }
        Ok(scope)
    }

    /// Parses the scope of a mint request: like [`Scope::declared`] but with one action.
    pub fn requested(
        audience: impl Into<String>,
        resource: impl Into<String>,
        action: impl Into<String>,
    ) -> Result<Self, ScopeError> {
        let scope = Self::declared(audience, resource, action)?;
        if scope.action == "*" {
            return Err(ScopeError::WildcardAction);
        }
        Ok(scope)
    }

    /// True when every (resource, action) that `other` permits is permitted by `self`.
    pub fn covers(&self, other: &Scope) -> bool {
        self.audience == other.audience
            && (self.action == "*" || self.action == other.action)
            && pattern_covers(&self.resource, &other.resource)
    }

    /// True when some (resource, action) is permitted by both scopes.
    pub fn overlaps(&self, other: &Scope) -> bool {
        self.audience == other.audience
            && (self.action == "*" || other.action == "*" || self.action == other.action)
            && patterns_overlap(&self.resource, &other.resource)
    }

    /// The `scope` claim of a token: `<action>:<resource>` (the audience is `aud`).
    pub fn claim(&self) -> String {
        format!("{}:{}", self.action, self.resource)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.audience, self.resource, self.action)
    }
}

/// Segment-wise coverage of resource patterns.
fn pattern_covers(outer: &str, inner: &str) -> bool {
    let outer: Vec<&str> = outer.split('/').collect();
    let inner: Vec<&str> = inner.split('/').collect();
    for (i, o) in outer.iter().enumerate() {
        if *o == "**" {
            // Covers whatever remains, as long as at least one segment remains.
            return inner.len() > i;
        }
        let Some(n) = inner.get(i) else {
            return false;
        };
        let ok = match *o {
            "*" => *n != "**",
            lit => *n == lit,
        };
        if !ok {
            return false;
        }
    }
    inner.len() == outer.len()
}

/// Whether some resource matches both patterns.
fn patterns_overlap(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    for i in 0.. {
        match (a.get(i), b.get(i)) {
            (Some(&"**"), Some(_)) | (Some(_), Some(&"**")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                if *x != "*" && *y != "*" && x != y {
                    return false;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parse = fn(&'static str, &'static str, &'static str) -> Result<Scope, ScopeError>;

    fn d(r: &str) -> Scope {
        Scope::declared("crm-api", r, "read").unwrap()
    }

    #[test]
    fn a_literal_pattern_covers_only_itself() {
        assert!(d("customers/eu/1").covers(&d("customers/eu/1")));
        assert!(!d("customers/eu/1").covers(&d("customers/eu/2")));
        assert!(!d("customers/eu").covers(&d("customers/eu/1")));
    }

    #[test]
    fn a_star_segment_covers_exactly_one_segment() {
        assert!(d("customers/eu/*").covers(&d("customers/eu/42")));
        assert!(d("customers/eu/*").covers(&d("customers/eu/*")));
        assert!(d("customers/*/42").covers(&d("customers/us/42")));
        assert!(!d("customers/eu/*").covers(&d("customers/eu/42/orders")));
        assert!(!d("customers/eu/*").covers(&d("customers/eu")));
        assert!(!d("customers/eu/*").covers(&d("customers/eu/**")));
        assert!(!d("customers/eu/*").covers(&d("customers/us/42")));
    }

    #[test]
    fn a_trailing_double_star_covers_any_depth_below() {
        assert!(d("customers/**").covers(&d("customers/eu/42/orders")));
        assert!(d("customers/**").covers(&d("customers/eu")));
        assert!(d("customers/**").covers(&d("customers/*/x")));
        assert!(d("customers/**").covers(&d("customers/eu/**")));
        assert!(!d("customers/**").covers(&d("customers")));
        assert!(!d("customers/eu/**").covers(&d("customers/**")));
        assert!(!d("customers/eu/42").covers(&d("customers/eu/**")));
    }

    #[test]
    fn audience_and_action_must_match() {
        let other_aud = Scope::declared("billing", "customers/eu/1", "read").unwrap();
        assert!(!d("customers/**").covers(&other_aud));
        let write = Scope::declared("crm-api", "customers/eu/1", "write").unwrap();
        assert!(!d("customers/**").covers(&write));
        let any = Scope::declared("crm-api", "customers/**", "*").unwrap();
        assert!(any.covers(&write));
    }

    #[test]
    fn malformed_scopes_are_refused_naming_the_field() {
        assert_eq!(
            Scope::declared("", "a", "read").unwrap_err().to_string(),
            "audience is empty"
        );
        assert!(matches!(
            Scope::declared("crm", "a//b", "read"),
            Err(ScopeError::EmptySegment(_))
        ));
        assert!(matches!(
            Scope::declared("crm", "/a", "read"),
            Err(ScopeError::EmptySegment(_))
        ));
        assert!(matches!(
            Scope::declared("crm", "cust*/1", "read"),
            Err(ScopeError::PartialWildcard(_))
        ));
        assert_eq!(
            Scope::declared("crm", "**/x", "read"),
            Err(ScopeError::InnerDoubleStar)
        );
        assert_eq!(
            Scope::requested("crm", "a", "*"),
            Err(ScopeError::WildcardAction)
        );
        assert!(matches!(
            Scope::declared("crm", "a b", "read"),
            Err(ScopeError::BadChar {
                field: "resource",
                ch: ' '
            })
        ));
        assert!(matches!(
            Scope::declared("crm", "a", "re ad"),
            Err(ScopeError::BadChar {
                field: "action",
                ..
            })
        ));
        assert!(matches!(
            Scope::declared("crm", "a".repeat(600), "read"),
            Err(ScopeError::TooLong {
                field: "resource",
                ..
            })
        ));
    }

    #[test]
    fn dot_and_dot_dot_segments_are_refused_naming_the_resource() {
        for r in [
            "customers/eu/../us/1",
            "customers/eu/..",
            "../customers/us/1",
            "customers/./eu/1",
            ".",
            "..",
            "customers/eu/../**",
        ] {
            for parse in [Scope::declared as Parse, Scope::requested] {
                let err = parse("crm-api", r, "read").unwrap_err();
                assert!(
                    matches!(
                        err,
                        ScopeError::DotSegment {
                            field: "resource",
                            ..
                        }
                    ),
                    "{r}: {err:?}"
                );
                assert!(err.to_string().starts_with("resource has a "), "{err}");
            }
        }
        assert_eq!(
            Scope::declared("crm-api", "customers/eu/../us/1", "read")
                .unwrap_err()
                .to_string(),
            "resource has a \"..\" path segment; relative segments are not allowed, name the resource directly"
        );
    }

    #[test]
    fn a_refusal_quotes_a_short_escaped_prefix_of_what_it_refuses() {
        let long = format!("customers/b*{}", "c".repeat(400));
        let err = Scope::declared("crm-api", &long, "read")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "resource segment \"b*{}…\" (402 bytes) mixes '*' with other characters; a wildcard is a whole segment",
                "c".repeat(30)
            )
        );
        let err = Scope::declared("crm-api", format!("{}//x", "d".repeat(300)), "read")
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("…\" (303 bytes)"), "{err}");
        assert_eq!(
            Scope::declared("crm-api", "a\u{202E}b", "read")
                .unwrap_err()
                .to_string(),
            "resource contains a character that is not allowed: '\\u{202e}'"
        );
    }

    #[test]
    fn dots_inside_a_segment_are_still_allowed() {
        for r in [
            "files/report.pdf",
            "files/.hidden",
            "files/...",
            "v1.2/x..y",
        ] {
            assert!(Scope::declared("crm-api", r, "read").is_ok(), "{r}");
        }
    }

    #[test]
    fn overlapping_patterns_share_a_resource() {
        assert!(d("customers/eu/**").overlaps(&d("customers/eu/*/payment-methods")));
        assert!(d("customers/*/1").overlaps(&d("customers/eu/*")));
        assert!(!d("customers/eu/*").overlaps(&d("customers/eu/*/payment-methods")));
        assert!(!d("customers/us/*").overlaps(&d("customers/eu/*")));
    }

    #[test]
    fn the_scope_claim_is_action_then_resource() {
        assert_eq!(d("customers/eu/*").claim(), "read:customers/eu/*");
    }
}

#[cfg(test)]
mod properties;
