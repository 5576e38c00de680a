//! Authorization server metadata (RFC 8414), built once at start and served
//! from memory to anyone: it names the endpoints, the grants, the client
//! authentication (`tls_client_auth`, RFC 8705) and Mayfly's own members for
//! the revocation feed, delegation offers, tasks and misuse reports.
use super::{DEVICE_CODE, OFFER_TYPE, TOKEN_EXCHANGE};
use serde_json::json;
use std::time::Duration;

/// The well-known path of the metadata (RFC 8414 §3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";

/// Where each endpoint is served on the mTLS port.
pub const TOKEN: &str = "/oauth/token";
pub const INTROSPECT: &str = "/oauth/introspect";
pub const REVOKE: &str = "/oauth/revoke";
pub const FEED: &str = "/oauth/revocations";
pub const JWKS: &str = "/.well-known/jwks.json";
/// Orchestrators' tasks (not OAuth: JSON, in the front door's error shape).
pub const TASKS: &str = "/v1/tasks";
/// Verifiers' misuse reports (JSON, as the tasks).
pub const MISUSE: &str = "/v1/misuse";

/// The metadata document and the path it is served at.
pub struct Metadata {
    /// `WELL_KNOWN` followed by the issuer's path, if it has one (RFC 8414 §3.1:
    /// the well-known segment goes between the host and the path).
    pub path: String,
    pub json: axum::body::Bytes,
}

impl Metadata {
    /// `issuer` is the `iss` of every token; `base` is where clients reach the
    /// mTLS port (both checked by `Config::validate`).
    pub fn new(issuer: &str, base: &str, heartbeat: Duration, poll: Duration) -> Metadata {
        let path = match url::Url::parse(issuer) {
            Ok(u) if u.path() != "/" => format!("{WELL_KNOWN}{}", u.path().trim_end_matches('/')),
            _ => WELL_KNOWN.to_string(),
        };
        let at = |p: &str| format!("{base}{p}");
        let doc = json!({
            "issuer": issuer,
            "token_endpoint": at(TOKEN),
            "introspection_endpoint": at(INTROSPECT),
            "revocation_endpoint": at(REVOKE),
            "jwks_uri": at(JWKS),
            // No authorization endpoint: every client is a workload that
            // authenticates itself; there is no user to redirect.
            "response_types_supported": [],
            "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE, DEVICE_CODE],
            "token_endpoint_auth_methods_supported": ["tls_client_auth"],
            "introspection_endpoint_auth_methods_supported": ["tls_client_auth"],
            "revocation_endpoint_auth_methods_supported": ["tls_client_auth"],
            "tls_client_certificate_bound_access_tokens": true,
            "access_token_signing_alg_values_supported": ["EdDSA"],
            "mayfly_revocation_feed_endpoint": at(FEED),
            "mayfly_revocation_feed_heartbeat_seconds": heartbeat.as_secs_f64(),
            "mayfly_step_up_interval_seconds": poll.as_secs(),
            "mayfly_delegation_offer_token_type": OFFER_TYPE,
            "mayfly_tasks_endpoint": at(TASKS),
            "mayfly_misuse_endpoint": at(MISUSE),
        });
        Metadata {
            path,
            json: axum::body::Bytes::from(doc.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_endpoint_under_the_base_url() {
        let m = Metadata::new(
            "https://mayfly.example",
            "https://mayfly.example:8443",
            Duration::from_secs(5),
            Duration::from_secs(5),
        );
        assert_eq!(m.path, WELL_KNOWN);
        let v: serde_json::Value = serde_json::from_slice(&m.json).unwrap();
        assert_eq!(v["issuer"], "https://mayfly.example");
        assert_eq!(
            v["token_endpoint"],
            "https://mayfly.example:8443/oauth/token"
        );
        assert_eq!(
            v["jwks_uri"],
            "https://mayfly.example:8443/.well-known/jwks.json"
        );
        assert_eq!(
            v["mayfly_misuse_endpoint"],
            "https://mayfly.example:8443/v1/misuse"
        );
        assert_eq!(v["tls_client_certificate_bound_access_tokens"], true);
        assert_eq!(
            v["token_endpoint_auth_methods_supported"][0],
            "tls_client_auth"
        );
    }

    #[test]
    fn an_issuer_with_a_path_is_served_under_the_well_known_segment() {
        let m = Metadata::new(
            "https://idp.example/tenants/a/",
            "https://idp.example/tenants/a",
            Duration::from_secs(5),
            Duration::from_secs(5),
        );
        assert_eq!(m.path, "/.well-known/oauth-authorization-server/tenants/a");
    }
}
