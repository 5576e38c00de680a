//! Test-only support shared by the inline unit tests: the property tests' settings
//! and the generators several of them use (text, path patterns, TOML strings).
use proptest::test_runner::Config;

/// Cases per property when `PROPTEST_CASES` is not set.
pub const CASES: u32 = 10_000;

/// The settings of every property test: [`CASES`] cases (or `PROPTEST_CASES`, to
/// run more), and no failure-persistence files: a failure prints its minimal input,
/// and the input that found a bug becomes a named regression unit test instead.
pub fn proptest_config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    Config {
        failure_persistence: None,
        ..Config::with_cases(cases)
    }
}

/// Strings matching `regex`. The regex is parsed once, here: a `&str` used as a
/// strategy is parsed again for every case, which costs more than the parsers
/// under test.
pub fn matching(regex: &str) -> proptest::string::RegexGeneratorStrategy<String> {
    proptest::string::string_regex(regex).expect("a test regex is valid")
}

/// Any short text, every Unicode scalar value possible (biased, as proptest's
/// chars are, towards the special ones).
pub fn any_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop::collection::vec(any::<char>(), 0..48).prop_map(String::from_iter)
}

/// One segment of a generated path pattern.
#[derive(Debug, Clone)]
pub enum Seg {
    Lit(String),
    Star,
}

/// A generated `/`-separated path pattern, the shape SPIFFE ID patterns and scope
/// resources share: segments, each a literal or `*`, and maybe a trailing `**`.
#[derive(Debug, Clone)]
pub struct PathPattern {
    pub segments: Vec<Seg>,
    pub double_star: bool,
}

impl PathPattern {
    pub fn text(&self) -> String {
        let mut parts: Vec<&str> = self
            .segments
            .iter()
            .map(|s| match s {
                Seg::Lit(l) => l.as_str(),
                Seg::Star => "*",
            })
            .collect();
        if self.double_star {
            parts.push("**");
        }
        parts.join("/")
    }

    /// A concrete path the pattern matches: each `*` takes the next of `fill`, a
    /// `**` the next `extra` of them (`fill` is reused from the start when short).
    pub fn instance(&self, fill: &[String], extra: usize) -> String {
        let mut fill = fill.iter().cycle();
        let mut parts: Vec<String> = self
            .segments
            .iter()
            .map(|s| match s {
                Seg::Lit(l) => l.clone(),
                Seg::Star => fill.next().cloned().unwrap_or_else(|| "x".into()),
            })
            .collect();
        if self.double_star {
            parts.extend(fill.take(extra.max(1)).cloned());
        }
        parts.join("/")
    }

    /// The pattern with its first wildcard made narrower: a `*` becomes `lit`, or
    /// else a `**` gets `lit` in front of it. `None` when it has no wildcard.
    pub fn narrowed(&self, lit: &str) -> Option<PathPattern> {
        let mut p = self.clone();
        if let Some(s) = p.segments.iter_mut().find(|s| matches!(s, Seg::Star)) {
            *s = Seg::Lit(lit.to_string());
            return Some(p);
        }
        if p.double_star {
            p.segments.push(Seg::Lit(lit.to_string()));
            return Some(p);
        }
        None
    }
}

/// Path segments from a small alphabet, so that generated patterns and paths
/// often meet.
pub fn small_segment() -> impl proptest::strategy::Strategy<Value = String> {
    matching("[ab]{1,2}")
}

/// Path patterns of up to four segments over [`small_segment`], never empty.
pub fn path_pattern() -> impl proptest::strategy::Strategy<Value = PathPattern> {
    use proptest::prelude::*;
    let seg = prop_oneof![3 => small_segment().prop_map(Seg::Lit), 1 => Just(Seg::Star)];
    (prop::collection::vec(seg, 0..4), any::<bool>())
        .prop_filter("a pattern has a path", |(s, dd)| !s.is_empty() || *dd)
        .prop_map(|(segments, double_star)| PathPattern {
            segments,
            double_star,
        })
}

/// Concrete paths of one to five segments over [`small_segment`].
pub fn small_path() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop::collection::vec(small_segment(), 1..6).prop_map(|segs| segs.join("/"))
}

/// A TOML basic string holding `s`, escaped as TOML wants (control characters,
/// DEL included, as `\uXXXX`).
#[cfg(feature = "server")]
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            c if c.is_control() => out += &format!("\\u{:04X}", u32::from(c)),
            c => out.push(c),
        }
    }
    out + "\""
}
