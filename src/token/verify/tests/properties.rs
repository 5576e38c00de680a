//! Properties over arbitrary and tampered tokens, with one key pair for all.
use super::*;
use crate::testing::{any_text, matching};
use proptest::prelude::*;
use std::sync::LazyLock;

static SIGNER: LazyLock<RawSigner> = LazyLock::new(RawSigner::new);
static GOOD: LazyLock<String> = LazyLock::new(|| {
    SIGNER.sign(
        at_header(),
        &serde_json::to_vec(&claims(1000)).expect("claims serialise"),
    )
});

/// Tokens signed once, for every pair of these `exp` and `nbf` (signing per
/// case would cost more than everything else the property does).
static WINDOWS: LazyLock<Vec<(String, Claims)>> = LazyLock::new(|| {
    let edges = [i64::MIN, -1, 0, 950, 999, 1000, 1001, 1050, i64::MAX];
    let mut signed = vec![];
    for exp in edges {
        for nbf in edges {
            let mut c = claims(1000);
            (c.exp, c.nbf) = (exp, nbf);
            let t = SIGNER.sign(
                at_header(),
                &serde_json::to_vec(&c).expect("claims serialise"),
            );
            signed.push((t, c));
        }
    }
    signed
});

/// Characters of compact JWSs, and a few that are not base64url.
fn near_token() -> impl Strategy<Value = String> {
    matching("[A-Za-z0-9_.=+/-]{0,80}")
}

fn b64_of_bytes() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..96).prop_map(|b| B64.encode(b))
}

/// One edit of a token's text.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, char),
    Insert(usize, char),
    Delete(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop_oneof![
        8 => prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".chars().collect::<Vec<_>>()
        ),
        1 => prop::sample::select(vec!['.', '=', '+', '/', ' ', 'é']),
    ];
    prop_oneof![
        4 => (any::<usize>(), ch.clone()).prop_map(|(i, c)| Edit::Replace(i, c)),
        1 => (any::<usize>(), ch).prop_map(|(i, c)| Edit::Insert(i, c)),
        1 => any::<usize>().prop_map(Edit::Delete),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(token: &str, e: &Edit) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let n = chars.len();
    match *e {
        Edit::Replace(i, c) => chars[i % n] = c,
        Edit::Insert(i, c) => chars.insert(i % (n + 1), c),
        Edit::Delete(i) => {
            chars.remove(i % n);
        }
        Edit::Truncate(i) => chars.truncate(i % n),
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

    #[test]
    fn any_text_is_refused_without_panicking(
        s in prop_oneof![any_text(), near_token()],
    ) {
        let _ = KeySet::kid_of(&s);
        prop_assert!(SIGNER.set.verify(&s, 1000, 0).is_err());
    }

    #[test]
    fn three_arbitrary_base64url_segments_are_refused(
        header in prop_oneof![
            b64_of_bytes(),
            Just(B64.encode(at_header().to_string())),
        ],
        payload in b64_of_bytes(),
        signature in prop_oneof![
            b64_of_bytes(),
            prop::collection::vec(any::<u8>(), 64).prop_map(|b| B64.encode(b)),
        ],
    ) {
        let t = format!("{header}.{payload}.{signature}");
        let _ = KeySet::kid_of(&t);
        prop_assert!(SIGNER.set.verify(&t, 1000, 0).is_err());
    }

    #[test]
    fn a_tampered_token_is_refused(edits in prop::collection::vec(edit(), 1..4)) {
        let mut t = GOOD.clone();
        for e in &edits {
            if t.is_empty() {
                break;
            }
            t = apply(&t, e);
        }
        let verdict = SIGNER.set.verify(&t, 1000, 0);
        if t == *GOOD {
            prop_assert_eq!(verdict, Ok(claims(1000)));
        } else {
            prop_assert!(verdict.is_err(), "{t} was accepted");
        }
    }

    #[test]
    fn a_flipped_bit_in_any_decoded_segment_is_refused(
        segment in 0usize..3,
        at in any::<usize>(),
        bit in 0u8..8,
    ) {
        let parts: Vec<&str> = GOOD.split('.').collect();
        let mut bytes = B64.decode(parts[segment]).expect("the good token decodes");
        let i = at % bytes.len();
        bytes[i] ^= 1 << bit;
        let mut parts: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
        parts[segment] = B64.encode(&bytes);
        prop_assert!(SIGNER.set.verify(&parts.join("."), 1000, 0).is_err());
    }

    #[test]
    fn only_an_eddsa_access_token_header_with_a_known_kid_verifies(
        alg in prop_oneof![
            Just("EdDSA".to_string()), Just("none".to_string()), Just("HS256".to_string()),
            Just("eddsa".to_string()), Just("ES256".to_string()), matching("[A-Za-z0-9]{0,6}"),
        ],
        typ in prop_oneof![
            Just(None), Just(Some("at+jwt".to_string())), Just(Some("AT+JWT".to_string())),
            Just(Some("application/at+jwt".to_string())), Just(Some("JWT".to_string())),
            matching("[a-z+/]{0,20}").prop_map(Some),
        ],
        kid in prop_oneof![
            Just(None), Just(Some(RAW_KID.to_string())), matching("[a-z]{0,4}").prop_map(Some),
        ],
        extra in prop::option::of((matching("[a-z]{1,4}"), any::<i64>())),
    ) {
        let mut header = serde_json::json!({ "alg": alg });
        if let Some(t) = &typ {
            header["typ"] = serde_json::json!(t);
        }
        if let Some(k) = &kid {
            header["kid"] = serde_json::json!(k);
        }
        if let Some((name, v)) = &extra {
            header[name] = serde_json::json!(v);
        }
        let t = SIGNER.sign(header.clone(), &serde_json::to_vec(&claims(1000)).expect("claims serialise"));
        let typ_ok = typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        });
        // The fields Mayfly reads decide; an extra member of the same name
        // replaces one of them.
        let fields_ok = alg == "EdDSA" && typ_ok && kid.as_deref() == Some(RAW_KID);
        let verdict = SIGNER.set.verify(&t, 1000, 0);
        if fields_ok && header.get("alg") == Some(&serde_json::json!("EdDSA"))
            && header.get("typ").is_some_and(|t| t.is_string())
            && header.get("kid") == Some(&serde_json::json!(RAW_KID))
        {
            prop_assert_eq!(verdict, Ok(claims(1000)));
        } else {
            prop_assert!(verdict.is_err(), "{header} was accepted");
        }
    }

    #[test]
    fn a_signed_token_is_valid_exactly_inside_its_time_window(
        signed in prop::sample::select(WINDOWS.clone()),
        now in prop_oneof![900i64..1100, any::<i64>(), Just(i64::MAX), Just(i64::MIN)],
        leeway in prop_oneof![0i64..120, any::<i64>(), Just(i64::MAX), Just(i64::MIN)],
    ) {
        let (t, c) = signed;
        // Keys are published until 1,000,000.
        let verdict = SIGNER.set.verify(&t, now, leeway);
        let expected = if now >= 1_000_000 {
            Err(TokenError::UnknownKey(RAW_KID.into()))
        } else if now >= c.exp.saturating_add(leeway) {
            Err(TokenError::Expired)
        } else if now.saturating_add(leeway) < c.nbf {
            Err(TokenError::NotYetValid)
        } else {
            Ok(c)
        };
        prop_assert_eq!(verdict, expected);
    }

    #[test]
    fn a_signed_payload_is_accepted_only_when_it_is_the_claims(
        payload in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            any_json().prop_map(|v| v.to_string().into_bytes()),
            claims_with_one_field_changed().prop_map(|v| v.to_string().into_bytes()),
        ],
    ) {
        let t = SIGNER.sign(at_header(), &payload);
        let verdict = SIGNER.set.verify(&t, 1000, 0);
        match serde_json::from_slice::<Claims>(&payload) {
            Ok(c) if c.nbf <= 1000 && 1000 < c.exp => prop_assert_eq!(verdict, Ok(c)),
            Ok(_) => prop_assert!(matches!(verdict, Err(TokenError::Expired | TokenError::NotYetValid))),
            Err(_) => prop_assert!(matches!(verdict, Err(TokenError::Malformed(_))), "{verdict:?}"),
        }
    }
}

/// Small JSON values of every kind.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        matching("[a-z]{0,6}").prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(matching("[a-z]{1,4}"), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The good claims with one member removed or given another JSON value.
fn claims_with_one_field_changed() -> impl Strategy<Value = serde_json::Value> {
    let good = serde_json::to_value(claims(1000)).expect("claims serialise");
    let names: Vec<String> = good
        .as_object()
        .map(|o| {
            o.keys()
                .cloned()
                .chain(["act", "depth", "ancestors"].map(String::from))
                .collect()
        })
        .unwrap_or_default();
    (prop::sample::select(names), prop::option::of(any_json())).prop_map(move |(name, v)| {
        let mut c = good.clone();
        if let Some(o) = c.as_object_mut() {
            match v {
                Some(v) => o.insert(name, v),
                None => o.remove(&name),
            };
        }
        c
    })
}
