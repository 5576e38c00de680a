//! Test-only support shared by the inline unit tests: the property tests' settings.
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
