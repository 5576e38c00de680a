//! Property tests of the CLI's scope, time-window, checkpoint, field-path and
//! duration arguments.
use super::*;
use crate::testing::{any_text, matching};
use proptest::prelude::*;

fn usage_message(e: &anyhow::Error) -> Option<&str> {
    e.downcast_ref::<Failed>()
        .filter(|f| f.code == exit::USAGE)
        .map(|f| f.message.as_str())
}

/// Words and the whitespace between them, as a shell passes one argument.
fn spaced_words() -> impl Strategy<Value = String> {
    let word = prop_oneof![matching("[a-z0-9/*.:-]{1,10}"), any_text()];
    let gap = prop::sample::select(vec![" ", "  ", "\t", " \n ", "\u{3000}", "\u{a0}"]);
    (
        matching("[ \t]{0,2}"),
        prop::collection::vec((word, gap), 0..5),
    )
        .prop_map(|(lead, parts)| {
            let mut s = lead;
            for (w, g) in parts {
                s += &w;
                s += g;
            }
            s
        })
}

/// A time for `--since`/`--until`: RFC 3339, a duration ago (up to
/// humantime's limit), or neither.
fn window() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => (any::<u64>(), prop::sample::select(vec!["s", "m", "h", "d", "w", "M", "y", "years", "ms", "ns"]))
            .prop_map(|(n, unit)| format!("{}{unit}", n >> (n % 64))),
        1 => matching("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"),
        1 => any_text(),
    ]
}

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

    #[test]
    fn a_scope_argument_is_three_words_or_a_usage_error(s in spaced_words()) {
        let words: Vec<&str> = s.split_whitespace().collect();
        match parse_scope(&s) {
            Ok(scope) => {
                prop_assert_eq!(words.len(), 3);
                let parsed = [scope.audience.as_str(), scope.resource.as_str(), scope.action.as_str()];
                prop_assert_eq!(&parsed[..], &words[..]);
                // The canonical form, one space apart, reads back the same.
                let again = parse_scope(&words.join(" "))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(again, scope);
            }
            Err(e) => {
                prop_assert_ne!(words.len(), 3);
                let message = usage_message(&e);
                prop_assert!(message.is_some_and(|m| m.starts_with("scope ")), "{e}");
            }
        }
    }

    #[test]
    fn a_time_window_argument_is_a_time_or_a_usage_error_naming_the_flag(s in window()) {
        match when("--since", &Some(s.clone())) {
            Ok(t) => prop_assert!(t.is_some_and(|t| (0..1_000_000_000).contains(&t.nanos))),
            Err(e) => {
                let message = usage_message(&e);
                prop_assert!(message.is_some_and(|m| m.starts_with("--since ")), "{e}");
            }
        }
    }

    #[test]
    fn a_checkpoint_argument_reads_back_as_it_was_printed(
        seq in any::<u64>(),
        hash in prop_oneof![matching("[0-9a-f]{0,64}"), any_text()],
        other in any_text(),
    ) {
        let parsed = parse_checkpoint(&format!("{seq}:{hash}"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed, (seq, hash));
        if let Err(e) = parse_checkpoint(&other) {
            let message = usage_message(&e);
            prop_assert!(message.is_some_and(|m| m.starts_with("--checkpoint ")), "{e}");
        }
    }

    #[test]
    fn a_field_path_finds_a_field_or_nothing_without_panicking(
        path in prop_oneof![matching("[a-z0-9.]{0,16}"), any_text()],
    ) {
        let v = serde_json::json!({"a": {"b": [1, {"c": "x"}]}, "n": null});
        let _ = field_text(&v, &path);
    }
}
