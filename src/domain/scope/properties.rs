//! Property tests of scope parsing and resource-pattern coverage.
use super::*;
use crate::testing::{PathPattern, any_text, matching, path_pattern, small_path, small_segment};
use proptest::prelude::*;

/// Text near scope fields: their alphabet, wildcards, separators and a few
/// characters they refuse.
fn near_field() -> impl Strategy<Value = String> {
    matching("[a-zA-Z0-9_.:/*@+=,# %-]{0,24}")
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        near_field(),
        any_text(),
        Just("*".to_string()),
        Just("..".to_string())
    ]
}

fn declared(resource: &str) -> Scope {
    Scope::declared("crm-api", resource, "read").expect("a generated pattern is valid")
}

fn resource(p: &PathPattern) -> Scope {
    declared(&p.text())
}

proptest! {
    #![proptest_config(crate::testing::proptest_config())]

    #[test]
    fn any_fields_are_parsed_or_refused_naming_the_field(
        audience in field(),
        res in field(),
        action in field(),
    ) {
        let declared = Scope::declared(audience.as_str(), res.as_str(), action.as_str());
        let requested = Scope::requested(audience.as_str(), res.as_str(), action.as_str());
        match &declared {
            Ok(s) => {
                prop_assert_eq!(
                    (s.audience.as_str(), s.resource.as_str(), s.action.as_str()),
                    (audience.as_str(), res.as_str(), action.as_str())
                );
                // The token's `scope` claim splits back at its first ':'.
                let claim = s.claim();
                prop_assert_eq!(claim.split_once(':'), Some((action.as_str(), res.as_str())));
                prop_assert!(s.covers(s), "{s} does not cover itself");
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(
                    ["audience ", "resource ", "action "].iter().any(|f| msg.starts_with(f)),
                    "{msg:?} names no field"
                );
            }
        }
        // A mint request is a declared scope with one action.
        match (&declared, &requested) {
            (Ok(_), Ok(_)) => prop_assert_ne!(action.as_str(), "*"),
            (Ok(_), Err(e)) => prop_assert_eq!(e, &ScopeError::WildcardAction),
            (Err(d), Err(r)) => prop_assert_eq!(d, r),
            (Err(_), Ok(_)) => prop_assert!(false, "requested accepts what declared refuses"),
        }
    }

    #[test]
    fn a_generated_pattern_is_accepted_and_covers_what_it_is_made_of(
        p in path_pattern(),
        fill in prop::collection::vec(small_segment(), 4),
        extra in 1usize..=3,
    ) {
        let s = Scope::declared("crm-api", p.text(), "read");
        prop_assert!(s.is_ok(), "{}: {:?}", p.text(), s);
        let s = s.expect("checked above");
        prop_assert!(s.covers(&s));
        prop_assert!(s.overlaps(&s));
        let concrete = Scope::requested("crm-api", p.instance(&fill, extra), "read");
        prop_assert!(concrete.is_ok(), "{:?}", concrete);
        let concrete = concrete.expect("checked above");
        prop_assert!(s.covers(&concrete), "{s} does not cover {concrete}");
        // The audience and the action are part of coverage.
        let mut other = concrete.clone();
        other.audience = "billing".into();
        prop_assert!(!s.covers(&other));
        other = concrete.clone();
        other.action = "write".into();
        prop_assert!(!s.covers(&other));
        let mut any_action = s.clone();
        any_action.action = "*".into();
        prop_assert!(any_action.covers(&other));
    }

    #[test]
    fn coverage_is_sound_transitive_and_antisymmetric(
        a in path_pattern(),
        b in path_pattern(),
        c in path_pattern(),
        fill in prop::collection::vec(small_segment(), 4),
        extra in 1usize..=3,
    ) {
        let (sa, sb, sc) = (resource(&a), resource(&b), resource(&c));
        if sa.covers(&sb) {
            // Whatever b permits, a permits.
            let r = declared(&b.instance(&fill, extra));
            prop_assert!(sa.covers(&r), "{sa} covers {sb} but not {r}");
            prop_assert!(sa.overlaps(&sb));
            if sb.covers(&sc) {
                prop_assert!(sa.covers(&sc), "{sa} covers {sb} covers {sc}");
            }
            if sb.covers(&sa) {
                prop_assert_eq!(&sa.resource, &sb.resource);
            }
        }
    }

    #[test]
    fn narrowing_a_pattern_never_widens_it(
        p in path_pattern(),
        lit in small_segment(),
        r in small_path(),
    ) {
        if let Some(n) = p.narrowed(&lit) {
            let (wide, narrow, r) = (resource(&p), resource(&n), declared(&r));
            prop_assert!(wide.covers(&narrow), "{wide} does not cover {narrow}");
            prop_assert!(!narrow.covers(&wide), "{narrow} covers {wide}");
            prop_assert!(!narrow.covers(&r) || wide.covers(&r));
        }
    }

    #[test]
    fn overlap_is_symmetric_and_found_wherever_a_resource_is_shared(
        a in path_pattern(),
        b in path_pattern(),
        r in small_path(),
    ) {
        let (sa, sb, r) = (resource(&a), resource(&b), declared(&r));
        prop_assert_eq!(sa.overlaps(&sb), sb.overlaps(&sa));
        if sa.covers(&r) && sb.covers(&r) {
            prop_assert!(sa.overlaps(&sb), "{sa} and {sb} both cover {r}");
        }
    }
}
