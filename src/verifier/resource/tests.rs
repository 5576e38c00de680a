//! The metadata document, its well-known location, and the URLs refused.
use super::*;

const ISSUER: &str = "https://mayfly.example.org";

fn at(resource: &str) -> Result<ProtectedResource, ResourceError> {
    ProtectedResource::new(resource, [ISSUER])
}

fn why(r: Result<ProtectedResource, ResourceError>) -> &'static str {
    match r {
        Err(ResourceError::NotHttpsUrl { why, .. }) => why,
        other => panic!("expected a refused URL, got {other:?}"),
    }
}

#[test]
fn the_well_known_segment_goes_between_the_host_and_the_path() {
    let cases = [
        ("https://crm.example:9443", "https://crm.example:9443", ""),
        ("https://crm.example/", "https://crm.example", ""),
        ("https://crm.example/mcp", "https://crm.example", "/mcp"),
        (
            "https://crm.example:8443/tools/crm/",
            "https://crm.example:8443",
            "/tools/crm/",
        ),
        ("https://[::1]:9443/a%2Fb", "https://[::1]:9443", "/a%2Fb"),
    ];
    for (resource, origin, path) in cases {
        let r = at(resource).unwrap();
        assert_eq!(r.resource(), resource);
        assert_eq!(
            r.well_known_path(),
            format!("{WELL_KNOWN}{path}"),
            "{resource}"
        );
        assert_eq!(
            r.metadata_url(),
            format!("{origin}{WELL_KNOWN}{path}"),
            "{resource}"
        );
    }
}

#[test]
fn the_scheme_and_host_are_lower_cased_and_the_path_is_kept() {
    let r = at("HTTPS://CRM.Example:9443/MCP").unwrap();
    assert_eq!(r.resource(), "https://crm.example:9443/MCP");
    assert_eq!(
        r.metadata_url(),
        "https://crm.example:9443/.well-known/oauth-protected-resource/MCP"
    );
}

#[test]
fn a_resource_must_be_an_absolute_https_url_without_query_or_fragment() {
    assert_eq!(why(at("http://crm.example")), "the scheme must be https");
    assert_eq!(why(at("crm.example")), "the scheme must be https");
    assert_eq!(why(at("/mcp")), "the scheme must be https");
    assert_eq!(why(at("")), "the scheme must be https");
    assert_eq!(why(at("https://")), "it has no host");
    assert_eq!(why(at("https:///mcp")), "it has no host");
    assert_eq!(why(at("https://:9443")), "it has no host");
    assert_eq!(why(at("https://crm.example/#top")), "it has a fragment");
    assert_eq!(why(at("https://crm.example#")), "it has a fragment");
    assert_eq!(why(at("https://crm.example/mcp?v=1")), "it has a query");
    assert_eq!(why(at("https://crm.example?")), "it has a query");
    assert_eq!(
        why(at("https://admin:pw@crm.example")),
        "it has user information"
    );
    for port in ["0", "65536", "", "99999", "12a", "-1", "000443x"] {
        let url = format!("https://crm.example:{port}");
        assert_eq!(
            why(at(&url)),
            "its port is not a number from 1 to 65535",
            "{url}"
        );
    }
    for bad in [
        "https://crm example",
        "https://crm.example/a b",
        "https://crm.example/\"x\"",
        "https://crm.example/a\\b",
        "https://crm.example/%zz",
        "https://crm.example/%4",
        "https://crm.example/\u{e9}",
        "https://crm.example/\r\nX-Injected: 1",
        "https://crm.example/[x]",
    ] {
        assert_eq!(
            why(at(bad)),
            "it has a character a URL cannot carry unencoded",
            "{bad:?}"
        );
    }
    assert_eq!(why(at("https://[::1")), "its IPv6 literal is not closed");
    assert_eq!(why(at("https://[]")), "its IPv6 literal is not an address");
    assert_eq!(
        why(at("https://[v1.x]")),
        "its IPv6 literal is not an address"
    );
    assert_eq!(
        why(at("https://[::1]x")),
        "its host is not a name or an address"
    );
    assert_eq!(
        why(at("https://a!b")),
        "its host is not a name or an address"
    );
}

#[test]
fn a_refusal_names_the_field_and_never_echoes_the_value() {
    let e = at("https://admin:hunter2@crm.example").unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("resource is not an absolute https URL"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    let e = ProtectedResource::new("https://crm.example", [ISSUER, "mayfly"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "authorization_servers[1] is not an absolute https URL: the scheme must be https"
    );
}

#[test]
fn at_least_one_issuer_without_query_or_fragment_is_required() {
    let none: [&str; 0] = [];
    assert_eq!(
        ProtectedResource::new("https://crm.example", none),
        Err(ResourceError::NoAuthorizationServer)
    );
    for bad in [
        "https://mayfly.example.org?x=1",
        "https://mayfly.example.org#x",
    ] {
        assert!(
            ProtectedResource::new("https://crm.example", [bad]).is_err(),
            "{bad}"
        );
    }
    let r = ProtectedResource::new(
        "https://crm.example",
        ["https://Mayfly.Example.org/tenant/1", ISSUER],
    )
    .unwrap();
    assert_eq!(
        r.metadata()["authorization_servers"],
        serde_json::json!(["https://mayfly.example.org/tenant/1", ISSUER])
    );
}

#[test]
fn the_document_carries_what_a_client_needs_and_only_what_was_set() {
    let bare = at("https://crm.example:9443").unwrap();
    assert_eq!(
        bare.metadata(),
        serde_json::json!({
            "resource": "https://crm.example:9443",
            "authorization_servers": [ISSUER],
            "bearer_methods_supported": ["header"],
            "tls_client_certificate_bound_access_tokens": true,
        })
    );
    let full = bare
        .with_scopes_supported(["read:customers/*/*", "write:customers/eu/**"])
        .unwrap()
        .with_resource_name("Toy CRM")
        .unwrap()
        .with_resource_documentation("https://docs.example/crm?lang=en#auth")
        .unwrap();
    assert_eq!(
        full.metadata(),
        serde_json::json!({
            "resource": "https://crm.example:9443",
            "authorization_servers": [ISSUER],
            "bearer_methods_supported": ["header"],
            "tls_client_certificate_bound_access_tokens": true,
            "scopes_supported": ["read:customers/*/*", "write:customers/eu/**"],
            "resource_name": "Toy CRM",
            "resource_documentation": "https://docs.example/crm?lang=en#auth",
        })
    );
}

#[test]
fn advertised_scopes_follow_the_brokers_scope_syntax() {
    let r = || at("https://crm.example").unwrap();
    for bad in [
        "read",
        ":customers/1",
        "read:",
        "read:customers/../admin",
        "read:a b",
    ] {
        let e = r()
            .with_scopes_supported(["read:customers/*", bad])
            .unwrap_err();
        assert!(
            matches!(&e, ResourceError::Scope { field, .. } if field == "scopes_supported[1]"),
            "{bad}: {e:?}"
        );
    }
    assert!(r().with_scopes_supported(["*:customers/**"]).is_ok());
    let none: [&str; 0] = [];
    assert!(
        r().with_scopes_supported(none)
            .unwrap()
            .metadata()
            .get("scopes_supported")
            .is_none()
    );
}

#[test]
fn a_name_must_be_printable_and_documentation_an_https_url() {
    let r = || at("https://crm.example").unwrap();
    assert_eq!(
        r().with_resource_name(" "),
        Err(ResourceError::ResourceName)
    );
    assert_eq!(
        r().with_resource_name("a\nb"),
        Err(ResourceError::ResourceName)
    );
    assert!(r().with_resource_name("Kundenstamm \u{e9}").is_ok());
    assert!(
        r().with_resource_documentation("http://docs.example")
            .is_err()
    );
    assert!(r().with_resource_documentation("docs").is_err());
}

mod properties {
    use super::*;
    use crate::testing::{any_text, matching};
    use proptest::prelude::*;

    fn near_url() -> impl Strategy<Value = String> {
        prop_oneof![
            matching("(?i:https?)://[a-zA-Z0-9.\\[\\]:@%/?#-]{0,24}"),
            any_text().prop_map(|t| format!("https://{t}")),
            any_text(),
        ]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_resource_is_judged_without_panicking_and_accepted_ones_are_header_safe(
            url in near_url(),
        ) {
            if let Ok(r) = at(&url) {
                prop_assert!(r.resource().starts_with("https://"));
                prop_assert!(r.resource().eq_ignore_ascii_case(&url));
                for text in [r.resource(), r.metadata_url()] {
                    prop_assert!(text.bytes().all(|b| b.is_ascii_graphic()));
                    prop_assert!(!text.contains(['#', '?', '"', '\\']));
                }
                prop_assert!(r.well_known_path().starts_with(WELL_KNOWN));
                prop_assert!(r.metadata_url().ends_with(r.well_known_path()));
            }
        }

        #[test]
        fn the_metadata_url_is_the_origin_then_the_well_known_suffix_then_the_path(
            host in matching("[a-z0-9-]{1,10}(\\.[a-z]{1,5}){0,2}"),
            port in proptest::option::of(1u16..),
            path in matching("(/[A-Za-z0-9._~!$&'()*+,;=:@-]{0,6}){0,4}"),
        ) {
            let origin = match port {
                Some(p) => format!("https://{host}:{p}"),
                None => format!("https://{host}"),
            };
            let r = at(&format!("{origin}{path}"))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let suffix = if path == "/" { "" } else { path.as_str() };
            prop_assert_eq!(r.well_known_path(), format!("{WELL_KNOWN}{suffix}"));
            prop_assert_eq!(r.metadata_url(), format!("{origin}{WELL_KNOWN}{suffix}"));
            prop_assert_eq!(r.resource(), format!("{origin}{path}"));
        }
    }
}
