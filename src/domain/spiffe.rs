//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`) parsed as the SPIFFE ID spec says,
//! and the ID patterns that assign roles.
use super::text::{quote, quote_char};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
const MAX_LEN: usize = 2048;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    Scheme,
    #[error("SPIFFE ID is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    #[error(
        "trust domain contains {}; only lowercase letters, digits, '.', '-' and '_' are allowed",
        quote_char(*.0)
    )]
    TrustDomainChar(char),
    #[error("a workload SPIFFE ID needs a path after the trust domain")]
    NoPath,
    #[error("SPIFFE ID path has an empty segment or a trailing '/'")]
    EmptySegment,
    #[error("SPIFFE ID path may not contain '.' or '..' segments")]
    DotSegment,
    #[error(
        "SPIFFE ID path contains {}; only letters, digits, '.', '-' and '_' are allowed",
        quote_char(*.0)
    )]
    PathChar(char),
}

/// A workload SPIFFE ID: a trust domain and a non-empty path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct SpiffeId {
    id: String,
    td_end: usize,
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if let Some(ch) = td
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(*c)))
        {
            return Err(SpiffeIdError::TrustDomainChar(ch));
        }
        if path.is_empty() {
            return Err(SpiffeIdError::NoPath);
        }
        for seg in path[1..].split('/') {
            if seg.is_empty() {
                return Err(SpiffeIdError::EmptySegment);
            }
            if seg == "." || seg == ".." {
                return Err(SpiffeIdError::DotSegment);
            }
            if let Some(ch) = seg
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || ".-_".contains(*c)))
            {
                return Err(SpiffeIdError::PathChar(ch));
            }
        }
        Ok(SpiffeId {
            id: s.to_string(),
            td_end: SCHEME.len() + td.len(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.td_end]
    }

    /// The path, starting with '/'.
    pub fn path(&self) -> &str {
        &self.id[self.td_end..]
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.id
    }
}

impl From<&SpiffeId> for String {
    fn from(id: &SpiffeId) -> String {
        id.id.clone()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A pattern over SPIFFE IDs: `spiffe://<td>/<path pattern>` where a `*` segment
/// matches one path segment and a trailing `**` matches one or more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPattern {
    trust_domain: String,
    segments: Vec<String>,
    raw: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid SPIFFE ID pattern {}: {why}", quote(.pattern))]
pub struct PatternError {
    pub pattern: String,
    pub why: String,
}

impl IdPattern {
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        let err = |why: &str| PatternError {
            pattern: s.to_string(),
            why: why.to_string(),
        };
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| err("must start with \"spiffe://\""))?;
        let (td, path) = rest
            .split_once('/')
            .ok_or_else(|| err("needs a path after the trust domain"))?;
        if td.contains('*') {
            return Err(err("the trust domain cannot be a wildcard"));
        }
        let segments: Vec<String> = path.split('/').map(str::to_string).collect();
        if let Some(i) = segments.iter().position(|seg| seg == "**")
            && i + 1 != segments.len()
        {
            return Err(err("'**' may only be the last segment"));
        }
        // Validate by substituting a literal for each wildcard segment.
        let probe: Vec<&str> = segments
            .iter()
            .map(|seg| {
                if seg == "*" || seg == "**" {
                    "x"
                } else {
                    seg.as_str()
                }
            })
            .collect();
        SpiffeId::parse(&format!("{SCHEME}{td}/{}", probe.join("/")))
            .map_err(|e| err(&e.to_string()))?;
        Ok(IdPattern {
            trust_domain: td.to_string(),
            segments,
            raw: s.to_string(),
        })
    }

    /// True when some SPIFFE ID matches both patterns.
    pub fn overlaps(&self, other: &IdPattern) -> bool {
        if self.trust_domain != other.trust_domain {
            return false;
        }
        let (a, b) = (&self.segments, &other.segments);
        for i in 0.. {
            match (a.get(i).map(String::as_str), b.get(i).map(String::as_str)) {
                // Either side takes the rest; the other has at least one segment
                // here or already matched one (a `**` needs one or more).
                (Some("**"), Some(_)) | (Some(_), Some("**")) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(x), Some(y)) => {
                    if x != "*" && y != "*" && x != y {
                        return false;
                    }
                }
            }
        }
        false
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        if id.trust_domain() != self.trust_domain {
            return false;
        }
        let path: Vec<&str> = id.path()[1..].split('/').collect();
        for (i, p) in self.segments.iter().enumerate() {
            if p == "**" {
                return path.len() > i;
            }
            match path.get(i) {
                Some(seg) if p == "*" || p == seg => {}
                _ => return false,
            }
        }
        path.len() == self.segments.len()
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl<'de> Deserialize<'de> for IdPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IdPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_id_splits_into_trust_domain_and_path() {
        let id = SpiffeId::parse("spiffe://example.org/agent/support-1").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/agent/support-1");
        assert_eq!(id.to_string(), "spiffe://example.org/agent/support-1");
    }

    #[test]
    fn malformed_ids_are_refused_with_the_reason() {
        use SpiffeIdError::*;
        let cases = [
            ("https://example.org/a", Scheme),
            ("SPIFFE://example.org/a", Scheme),
            ("spiffe:///a", EmptyTrustDomain),
            ("spiffe://Example.org/a", TrustDomainChar('E')),
            ("spiffe://example.org:443/a", TrustDomainChar(':')),
            ("spiffe://user@example.org/a", TrustDomainChar('@')),
            ("spiffe://example.org", NoPath),
            ("spiffe://example.org/", EmptySegment),
            ("spiffe://example.org/a//b", EmptySegment),
            ("spiffe://example.org/a/", EmptySegment),
            ("spiffe://example.org/a/../b", DotSegment),
            ("spiffe://example.org/./b", DotSegment),
            ("spiffe://example.org/a?x=1", PathChar('?')),
            ("spiffe://example.org/a#frag", PathChar('#')),
            ("spiffe://example.org/a%20b", PathChar('%')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "{input}");
        }
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://example.org/{}", "a".repeat(2100))),
            Err(TooLong)
        );
    }

    #[test]
    fn patterns_match_by_trust_domain_and_path_segments() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let exact = IdPattern::parse("spiffe://example.org/orch").unwrap();
        assert!(exact.matches(&id("spiffe://example.org/orch")));
        assert!(!exact.matches(&id("spiffe://example.org/orch/x")));
        assert!(!exact.matches(&id("spiffe://other.org/orch")));

        let one = IdPattern::parse("spiffe://example.org/agent/*").unwrap();
        assert!(one.matches(&id("spiffe://example.org/agent/a1")));
        assert!(!one.matches(&id("spiffe://example.org/agent/a1/b")));
        assert!(!one.matches(&id("spiffe://example.org/agentx/a1")));

        let deep = IdPattern::parse("spiffe://example.org/agent/**").unwrap();
        assert!(deep.matches(&id("spiffe://example.org/agent/a1/b")));
        assert!(!deep.matches(&id("spiffe://example.org/agent")));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(IdPattern::parse("spiffe://example.org/**/x").is_err());
        assert!(IdPattern::parse("example.org/*").is_err());
        assert!(IdPattern::parse("spiffe://example.org/a*").is_err());
        assert!(IdPattern::parse("spiffe://*/admin").is_err());
        assert!(IdPattern::parse("spiffe://**/admin").is_err());
        assert!(IdPattern::parse("spiffe://example.org").is_err());
    }

    #[test]
    fn refusals_quote_a_short_escaped_prefix_of_what_they_refuse() {
        let huge = format!("spiffe://example.org/{}?", "a".repeat(5000));
        let err = IdPattern::parse(&huge).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "invalid SPIFFE ID pattern \"spiffe://example.org/aaaaaaaaaaa…\" (5022 bytes): "
            ),
            "{err}"
        );
        assert!(err.len() < 200, "{err}");
        assert_eq!(
            SpiffeId::parse("spiffe://example.org/a\u{202E}b")
                .unwrap_err()
                .to_string(),
            "SPIFFE ID path contains '\\u{202e}'; only letters, digits, '.', '-' and '_' are allowed"
        );
    }

    #[test]
    fn overlapping_patterns_are_detected() {
        let p = |s: &str| IdPattern::parse(s).unwrap();
        assert!(p("spiffe://e.org/agent/*").overlaps(&p("spiffe://e.org/agent/a")));
        assert!(p("spiffe://e.org/agent/**").overlaps(&p("spiffe://e.org/*/x/y")));
        assert!(p("spiffe://e.org/**").overlaps(&p("spiffe://e.org/admin/s1")));
        assert!(p("spiffe://e.org/*/s1").overlaps(&p("spiffe://e.org/admin/*")));
        assert!(!p("spiffe://e.org/agent/*").overlaps(&p("spiffe://e.org/admin/*")));
        assert!(!p("spiffe://e.org/agent/*").overlaps(&p("spiffe://e.org/agent/a/b")));
        assert!(!p("spiffe://e.org/agent/**").overlaps(&p("spiffe://e.org/agent")));
        assert!(!p("spiffe://e.org/agent/*").overlaps(&p("spiffe://o.org/agent/*")));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::testing::{
        PathPattern, any_text, matching, path_pattern, small_path, small_segment,
    };
    use proptest::prelude::*;

    fn text(p: &PathPattern, td: &str) -> String {
        format!("spiffe://{td}/{}", p.text())
    }

    fn instance(p: &PathPattern, td: &str, fill: &[String], extra: usize) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://{td}/{}", p.instance(fill, extra)))
            .expect("a generated ID is valid")
    }

    fn pattern(p: &PathPattern) -> IdPattern {
        IdPattern::parse(&text(p, "e.org")).expect("a generated pattern is valid")
    }

    fn id(path: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://e.org/{path}")).expect("a generated ID is valid")
    }

    /// Text near SPIFFE IDs: a scheme (or a near miss), then characters the
    /// parsers treat specially.
    fn near_id() -> impl Strategy<Value = String> {
        matching("(spiffe://|SPIFFE://|spiffe:/|https://|)[a-zA-Z0-9./_:@%?#* -]{0,40}")
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_text_is_parsed_or_refused_without_panicking(s in any_text()) {
            let _ = SpiffeId::parse(&s);
            let _ = IdPattern::parse(&s);
        }

        #[test]
        fn an_accepted_id_is_its_own_canonical_form(s in near_id()) {
            if let Ok(parsed) = SpiffeId::parse(&s) {
                prop_assert_eq!(parsed.as_str(), s.as_str());
                prop_assert!(parsed.path().starts_with('/'));
                prop_assert_eq!(
                    format!("spiffe://{}{}", parsed.trust_domain(), parsed.path()),
                    s.clone()
                );
                prop_assert_eq!(SpiffeId::parse(&parsed.to_string()), Ok(parsed.clone()));
                let json = serde_json::to_string(&parsed).expect("an ID serialises");
                prop_assert_eq!(serde_json::from_str::<SpiffeId>(&json).ok(), Some(parsed.clone()));
                // An ID is a pattern that matches itself.
                let p = IdPattern::parse(&s).expect("an ID is a valid pattern");
                prop_assert!(p.matches(&parsed));
            }
            if let Ok(p) = IdPattern::parse(&s) {
                prop_assert_eq!(p.as_str(), s.as_str());
                prop_assert!(p.overlaps(&p));
            }
        }

        #[test]
        fn a_well_formed_id_is_accepted_and_split_where_it_was_built(
            td in matching("[a-z0-9._-]{1,16}"),
            segs in prop::collection::vec(
                matching("[A-Za-z0-9._-]{1,8}").prop_filter("dot segments are refused", |s| s != "." && s != ".."),
                1..6,
            ),
        ) {
            let text = format!("spiffe://{td}/{}", segs.join("/"));
            let parsed = SpiffeId::parse(&text);
            prop_assert!(parsed.is_ok(), "{text}: {parsed:?}");
            let parsed = parsed.expect("checked above");
            prop_assert_eq!(parsed.trust_domain(), td.as_str());
            prop_assert_eq!(parsed.path(), format!("/{}", segs.join("/")));
        }

        #[test]
        fn a_pattern_matches_every_id_made_from_it_and_overlaps_itself(
            p in path_pattern(),
            fill in prop::collection::vec(small_segment(), 4),
            extra in 1usize..=3,
        ) {
            let parsed = IdPattern::parse(&text(&p, "e.org"));
            prop_assert!(parsed.is_ok(), "{:?}", parsed);
            let parsed = parsed.expect("checked above");
            prop_assert_eq!(parsed.as_str(), text(&p, "e.org"));
            prop_assert!(parsed.overlaps(&parsed));
            prop_assert!(parsed.matches(&instance(&p, "e.org", &fill, extra)));
            // Never across trust domains.
            prop_assert!(!parsed.matches(&instance(&p, "o.org", &fill, extra)));
            let other = IdPattern::parse(&text(&p, "o.org")).expect("valid in any domain");
            prop_assert!(!parsed.overlaps(&other));
        }

        #[test]
        fn patterns_that_match_one_id_overlap_both_ways(
            p in path_pattern(),
            q in path_pattern(),
            s in small_path(),
        ) {
            let (p, q, s) = (pattern(&p), pattern(&q), id(&s));
            prop_assert_eq!(p.overlaps(&q), q.overlaps(&p));
            if p.matches(&s) && q.matches(&s) {
                prop_assert!(p.overlaps(&q), "{} and {} both match {}", p.as_str(), q.as_str(), s);
            }
        }

        #[test]
        fn narrowing_a_pattern_never_widens_it(
            p in path_pattern(),
            lit in small_segment(),
            s in small_path(),
        ) {
            if let Some(n) = p.narrowed(&lit) {
                let (wide, narrow, s) = (pattern(&p), pattern(&n), id(&s));
                prop_assert!(!narrow.matches(&s) || wide.matches(&s),
                    "{} matches {} but {} does not", narrow.as_str(), s, wide.as_str());
                prop_assert!(wide.overlaps(&narrow));
            }
        }

        #[test]
        fn a_pattern_without_wildcards_matches_only_its_own_id(
            exact in small_path(),
            s in small_path(),
        ) {
            let p = IdPattern::parse(&format!("spiffe://e.org/{exact}")).expect("valid");
            prop_assert_eq!(p.matches(&id(&s)), s == exact);
        }
    }
}
