//! Property tests of the front door's parsers of outside input: form bodies
//! and the mint's audience and scope parameters.
use super::Form;
use crate::testing::{any_text, matching};
use proptest::prelude::*;

/// A form body of names and values near the ones the endpoints read, encoded
/// or not, with separators and stray `%`.
fn near_body() -> impl Strategy<Value = String> {
    matching("[a-z_=&%+;0-9A-F:/.*-]{0,64}")
}

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

    #[test]
    fn any_body_is_parsed_or_refused_as_an_invalid_request(
        body in prop_oneof![near_body(), any_text()],
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        for input in [body.as_bytes(), &bytes[..]] {
            match Form::parse(input) {
                Ok(f) => {
                    // Every value kept is non-empty (an empty one is omitted).
                    for (_, v) in f.0.iter() {
                        prop_assert!(!v.is_empty());
                    }
                }
                Err(e) => prop_assert_eq!(e.code, crate::error::oauth::Code::InvalidRequest),
            }
        }
    }

    #[test]
    fn encoded_pairs_read_back_and_a_repeat_is_always_refused(
        pairs in proptest::collection::btree_map("[a-z_]{1,12}", any_text(), 0..8),
        repeat in any::<prop::sample::Index>(),
    ) {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            ser.append_pair(k, v);
        }
        let body = ser.finish();
        let f = Form::parse(body.as_bytes()).unwrap();
        for (k, v) in &pairs {
            prop_assert_eq!(f.get(k), (!v.is_empty()).then_some(v.as_str()));
        }
        if !pairs.is_empty() {
            let (k, _) = pairs.iter().nth(repeat.index(pairs.len())).unwrap();
            let twice = format!("{body}&{}=x", form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>());
            let e = Form::parse(twice.as_bytes()).unwrap_err();
            prop_assert!(e.description.contains("is repeated"), "{}", e.description);
        }
    }

    #[test]
    fn a_mint_scope_is_parsed_or_refused_and_reads_back_as_its_claim(
        audience in prop_oneof![matching("[a-z:-]{0,12}"), any_text()],
        resource in prop_oneof![matching("urn:[a-z]{1,6}:[a-z]{1,6}"), any_text()],
        scope in prop_oneof![matching("[a-z]{1,6}:[a-z0-9/*.]{1,16}"), any_text()],
        use_resource in any::<bool>(),
    ) {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        if use_resource {
            ser.append_pair("resource", &resource);
        } else {
            ser.append_pair("audience", &audience);
        }
        ser.append_pair("scope", &scope);
        let f = Form::parse(ser.finish().as_bytes()).unwrap();
        match super::token::requested_scope(&f) {
            Ok(s) => {
                prop_assert_eq!(s.claim(), scope);
                let named = if use_resource { &resource } else { &audience };
                prop_assert_eq!(&s.audience, named);
            }
            Err(e) => {
                use crate::error::oauth::Code;
                prop_assert!(matches!(e.code, Code::InvalidScope | Code::InvalidTarget), "{:?}", e.code);
                prop_assert!(!e.description.is_empty());
            }
        }
    }
}
