//! Statuses, challenges and bodies of every refusal; quoting and descriptions.
use super::*;
use crate::token::{Claims, Confirmation};

const METADATA: &str = "https://crm.example:9443/.well-known/oauth-protected-resource";

fn crm() -> ProtectedResource {
    ProtectedResource::new("https://crm.example:9443", ["https://mayfly.example.org"]).unwrap()
}

fn required() -> RequiredScope {
    RequiredScope::new("read", "customers/eu/43").unwrap()
}

/// The auth-params of a `Bearer` challenge, values unquoted: an independent
/// reading of what [`challenge`] writes.
fn params(header: &str) -> Vec<(String, String)> {
    let mut rest = header.strip_prefix("Bearer ").expect("a Bearer challenge");
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect("name=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("a closing quote") {
                (_, '\\') => value.push(chars.next().expect("an escaped char").1),
                (i, '"') => break i + 1,
                (_, c) => value.push(c),
            }
        };
        out.push((name.to_string(), value));
        rest = after[end..].strip_prefix(", ").unwrap_or(&after[end..]);
    }
    out
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_str(&a.body).expect("a JSON body")
}

fn every_refusal() -> Vec<Verdict> {
    vec![
        Verdict::Malformed,
        Verdict::BadSignature,
        Verdict::UnknownKey,
        Verdict::WrongIssuer,
        Verdict::WrongAudience,
        Verdict::Expired,
        Verdict::NotYetValid,
        Verdict::LifetimeExceeded,
        Verdict::Revoked { sequence: 7 },
        Verdict::NotBoundToClient,
        Verdict::ScopeNotCovered,
        Verdict::Stale,
    ]
}

#[test]
fn no_token_gets_a_bare_challenge_pointing_to_the_metadata() {
    for why in [BearerError::Missing, BearerError::OtherScheme] {
        let a = crm().answer_bearer_error(&why);
        assert_eq!(a.status, 401);
        assert_eq!(
            a.www_authenticate.as_deref(),
            Some(format!("Bearer resource_metadata=\"{METADATA}\"").as_str())
        );
        assert_eq!(
            json(&a),
            serde_json::json!({"error_description": "a bearer token is required"})
        );
    }
}

#[test]
fn a_malformed_authorization_header_is_an_invalid_request() {
    for why in [BearerError::Malformed, BearerError::Repeated] {
        let a = crm().answer_bearer_error(&why);
        assert_eq!(a.status, 400);
        let p = params(a.www_authenticate.as_deref().unwrap());
        assert_eq!(p[0], ("error".into(), "invalid_request".into()));
        assert_eq!(p[1], ("error_description".into(), why.to_string()));
        assert_eq!(p[2], ("resource_metadata".into(), METADATA.into()));
        assert_eq!(json(&a)["error"], "invalid_request");
    }
}

#[test]
fn a_bad_token_is_invalid_a_narrow_one_insufficient_and_a_stale_verifier_unavailable() {
    for v in every_refusal() {
        let a = crm().answer_verdict(&v, &required()).unwrap();
        let body = json(&a);
        match v {
            Verdict::ScopeNotCovered => {
                assert_eq!(a.status, 403);
                let p = params(a.www_authenticate.as_deref().unwrap());
                let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(
                    names,
                    ["error", "error_description", "scope", "resource_metadata"]
                );
                assert_eq!(p[0].1, "insufficient_scope");
                assert_eq!(p[2].1, "read:customers/eu/43");
                assert_eq!(p[3].1, METADATA);
                assert_eq!(body["scope"], "read:customers/eu/43");
            }
            Verdict::Stale => {
                assert_eq!(a.status, 503);
                assert_eq!(a.www_authenticate, None, "the token may be fine");
                assert_eq!(body["error"], "temporarily_unavailable");
            }
            _ => {
                assert_eq!(a.status, 401, "{v}");
                let p = params(a.www_authenticate.as_deref().unwrap());
                assert_eq!(p.len(), 3, "{v}");
                assert_eq!(p[0], ("error".into(), "invalid_token".into()), "{v}");
                assert_eq!(p[2], ("resource_metadata".into(), METADATA.into()));
                assert_eq!(body["error"], "invalid_token");
                assert_eq!(body["error_description"], p[1].1.as_str());
            }
        }
    }
}

#[test]
fn a_token_bound_to_another_certificate_is_invalid_not_forbidden() {
    let a = crm()
        .answer_verdict(&Verdict::NotBoundToClient, &required())
        .unwrap();
    assert_eq!(a.status, 401);
    assert_eq!(
        a.www_authenticate.as_deref(),
        Some(
            format!(
                "Bearer error=\"invalid_token\", error_description=\"the token is bound to \
                 another client certificate\", resource_metadata=\"{METADATA}\""
            )
            .as_str()
        )
    );
}

#[test]
fn a_revoked_token_is_told_which_event_revoked_it() {
    let a = crm()
        .answer_verdict(&Verdict::Revoked { sequence: 42 }, &required())
        .unwrap();
    assert_eq!(
        json(&a)["error_description"],
        "the token is revoked (event 42)"
    );
}

#[test]
fn a_valid_token_gets_no_refusal() {
    let claims = Claims {
        iss: "https://mayfly.example.org".into(),
        sub: "spiffe://example.org/agent/a".into(),
        aud: "crm-api".into(),
        exp: 1300,
        iat: 1000,
        nbf: 1000,
        jti: "j".into(),
        scope: "read:customers/eu/*".into(),
        task: "t".into(),
        wf: "w".into(),
        cnf: Confirmation {
            x5t_s256: "x".into(),
        },
        act: None,
        client_id: "a".into(),
        depth: 0,
        ancestors: vec![],
    };
    assert_eq!(
        crm().answer_verdict(&Verdict::Valid(claims), &required()),
        None
    );
}

#[test]
fn the_metadata_is_served_as_json() {
    let r = crm();
    let a = r.answer_metadata();
    assert_eq!((a.status, a.www_authenticate.as_ref()), (200, None));
    assert_eq!(json(&a), r.metadata());
}

#[test]
fn quoted_strings_escape_quotes_and_backslashes_and_drop_control_characters() {
    assert_eq!(quoted(""), "\"\"");
    assert_eq!(quoted("a b"), "\"a b\"");
    assert_eq!(quoted(r#"say "hi"\now"#), r#""say \"hi\"\\now""#);
    assert_eq!(quoted("a\r\nSet-Cookie: x"), "\"a??Set-Cookie: x\"");
    assert_eq!(quoted("\t\u{7f}\u{e9}\u{1F600}"), "\"????\"");
}

#[test]
fn descriptions_keep_only_the_characters_rfc_6750_allows() {
    assert_eq!(error_description("the token's scope"), "the token's scope");
    assert_eq!(error_description("a \"b\" \\c\n\u{e9}"), "a ?b? ?c??");
    let long = "x".repeat(500);
    assert_eq!(error_description(&long).len(), MAX_DESCRIPTION);
}

mod properties {
    use super::*;
    use crate::testing::{any_text, matching};
    use proptest::prelude::*;

    /// RFC 6750 §3: `error_description` and `error` characters.
    fn description_char(c: char) -> bool {
        matches!(c, '\x20'..='\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn a_quoted_string_is_visible_ascii_and_reads_back_as_its_printable_input(
            value in any_text(),
        ) {
            let q = quoted(&value);
            prop_assert!(q.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
            let p = params(&format!("Bearer x={q}"));
            let printable: String = value
                .chars()
                .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
                .collect();
            prop_assert_eq!(p, vec![("x".to_string(), printable)]);
        }

        #[test]
        fn a_description_never_carries_a_disallowed_character(text in any_text()) {
            let d = error_description(&text);
            prop_assert!(d.chars().all(description_char), "{:?}", d);
            prop_assert!(d.chars().count() <= MAX_DESCRIPTION);
        }

        #[test]
        fn every_refusal_of_any_resource_is_a_well_formed_challenge(
            path in matching("(/[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,6}){0,3}"),
            verdict in prop::sample::select(every_refusal()),
            sequence in any::<u64>(),
        ) {
            // Percent signs that do not start an escape are not a URL: skip those.
            let Ok(r) = ProtectedResource::new(format!("https://crm.example{path}"), ["https://m.example"])
            else { return Ok(()) };
            let verdict = match verdict {
                Verdict::Revoked { .. } => Verdict::Revoked { sequence },
                v => v,
            };
            let a = r.answer_verdict(&verdict, &required()).expect("a refusal");
            prop_assert!(serde_json::from_str::<serde_json::Value>(&a.body).is_ok());
            let Some(header) = a.www_authenticate else {
                prop_assert_eq!(a.status, 503);
                return Ok(());
            };
            prop_assert!(header.bytes().all(|b| b == b' ' || b.is_ascii_graphic()));
            let p = params(&header);
            let last = p.last().cloned().unwrap_or_default();
            prop_assert_eq!(last, ("resource_metadata".to_string(), r.metadata_url().to_string()));
            for (name, value) in &p {
                if name != "resource_metadata" {
                    prop_assert!(value.chars().all(description_char), "{}={:?}", name, value);
                }
            }
        }
    }
}
