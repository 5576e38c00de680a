//! Examples: time windows, checkpoints, tables that escape hidden text.
use super::*;
use serde_json::json;

fn usage_code(e: &anyhow::Error) -> Option<u8> {
    e.downcast_ref::<Failed>().map(|f| f.code)
}

#[test]
fn an_audit_window_reaching_before_the_calendar_is_a_usage_error_not_a_panic() {
    for ago in ["100000years", "500000000000years"] {
        let e = when("--since", &Some(ago.into())).expect_err(ago);
        assert_eq!(usage_code(&e), Some(exit::USAGE), "{e}");
        assert!(e.to_string().starts_with("--since "), "{e}");
    }
    assert!(when("--until", &Some("1h".into())).is_ok_and(|t| t.is_some()));
}

#[test]
fn a_checkpoint_is_a_sequence_and_a_hash() {
    assert_eq!(parse_checkpoint("12:ab").ok(), Some((12, "ab".into())));
    assert_eq!(parse_checkpoint("12:a:b").ok(), Some((12, "a:b".into())));
    for bad in ["12", "x:ab", ":ab", "-1:ab", ""] {
        let e = parse_checkpoint(bad).expect_err(bad);
        assert_eq!(usage_code(&e), Some(exit::USAGE), "{e}");
    }
}

#[test]
fn tables_escape_text_that_could_fake_rows_or_reorder_what_is_read() {
    let t = table(&json!([
        {"id": "a", "objective": "pay\nb  fake-row", "reason": "x\u{202E}gnp.exe"},
        {"id": "b", "objective": "", "reason": null},
    ]));
    assert_eq!(t.lines().count(), 3, "{t}");
    assert!(t.contains("pay\\nb"), "{t}");
    assert!(t.contains("x\\u{202e}gnp.exe"), "{t}");
    assert!(t.lines().nth(2).unwrap().starts_with("b "), "{t}");
    // A tag character hides text from a reader; a Hangul filler shows as nothing.
    let t = table(&json!([{"objective": "ok\u{E0041}\u{3164}"}]));
    assert!(t.contains("ok\\u{e0041}\\u{3164}"), "{t}");
    assert_eq!(table(&json!([])), "(none)\n");
    assert_eq!(table(&json!({"k": [1, 2]})), "k  [1,2]\n");
}
