//! What a request needs: one action on one concrete resource, checked against a
//! token's `scope` claim with the broker's own coverage rule.
use crate::domain::{Scope, ScopeError};

/// Why a required scope could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequiredScopeError {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("resource must name one concrete resource, not a pattern with '*' or '**'")]
    Pattern,
}

/// The action and the concrete resource a request needs, e.g. `read` on
/// `customers/eu/42`. Resources use the broker's syntax: `/`-separated segments of
/// letters, digits and `-_.:@+=,`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredScope {
    /// The audience is checked on its own (`aud`); coverage compares the rest.
    scope: Scope,
}

/// Stands in for the audience while the resource and action are validated.
const ANY_AUDIENCE: &str = "audience";

impl RequiredScope {
    pub fn new(
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> Result<Self, RequiredScopeError> {
        let mut scope = Scope::requested(ANY_AUDIENCE, resource, action)?;
        if scope.resource.split('/').any(|s| s == "*" || s == "**") {
            return Err(RequiredScopeError::Pattern);
        }
        scope.audience.clear();
        Ok(RequiredScope { scope })
    }

    pub fn action(&self) -> &str {
        &self.scope.action
    }

    pub fn resource(&self) -> &str {
        &self.scope.resource
    }

    /// True when a token's `scope` claim (`<action>:<resource pattern>`) covers
    /// this action on this resource: `*` matches one segment, a trailing `**` one
    /// or more.
    pub fn is_covered_by(&self, claim: &str) -> bool {
        let Some((action, pattern)) = claim.split_once(':') else {
            return false;
        };
        let granted = Scope {
            audience: String::new(),
            resource: pattern.to_owned(),
            action: action.to_owned(),
        };
        granted.covers(&self.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(action: &str, resource: &str) -> RequiredScope {
        RequiredScope::new(action, resource).unwrap()
    }

    #[test]
    fn a_token_scope_covers_the_action_on_matching_resources_only() {
        let r = req("read", "customers/eu/42");
        assert!(r.is_covered_by("read:customers/eu/42"));
        assert!(r.is_covered_by("read:customers/eu/*"));
        assert!(r.is_covered_by("read:customers/**"));
        assert!(r.is_covered_by("read:*/eu/42"));
        assert!(!r.is_covered_by("write:customers/eu/42"), "another action");
        assert!(!r.is_covered_by("read:customers/us/*"), "another resource");
        assert!(!r.is_covered_by("read:customers/eu"), "the parent only");
        assert!(!r.is_covered_by("read:customers/eu/42/notes"));
        assert!(!r.is_covered_by("read:customers/*"), "'*' is one segment");
        assert!(!r.is_covered_by("read"), "no resource");
        assert!(!r.is_covered_by(""));
        assert!(!req("read", "customers/eu").is_covered_by("read:customers/eu/**"));
        assert!(req("read", "customers/eu/42/notes/1").is_covered_by("read:customers/eu/**"));
    }

    #[test]
    fn a_required_scope_names_one_action_on_one_concrete_resource() {
        assert_eq!(
            RequiredScope::new("read", "customers/*"),
            Err(RequiredScopeError::Pattern)
        );
        assert_eq!(
            RequiredScope::new("read", "customers/**"),
            Err(RequiredScopeError::Pattern)
        );
        assert_eq!(
            RequiredScope::new("*", "customers/1"),
            Err(RequiredScopeError::Scope(ScopeError::WildcardAction))
        );
        assert!(matches!(
            RequiredScope::new("read", "customers/../admin"),
            Err(RequiredScopeError::Scope(ScopeError::DotSegment { .. }))
        ));
        assert!(RequiredScope::new("read", "").is_err());
        let r = req("read", "customers/eu/42");
        assert_eq!((r.action(), r.resource()), ("read", "customers/eu/42"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::testing::{any_text, matching, path_pattern, small_segment};
    use proptest::prelude::*;

    fn near_field() -> impl Strategy<Value = String> {
        prop_oneof![matching("[a-z0-9_.:/*@+=, -]{0,24}"), any_text()]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_required_scope_and_claim_are_handled_without_panicking(
            action in near_field(),
            resource in near_field(),
            claim in near_field(),
        ) {
            let r = RequiredScope::new(action.as_str(), resource.as_str());
            let as_request = Scope::requested(ANY_AUDIENCE, resource.as_str(), action.as_str());
            match &r {
                Ok(r) => {
                    prop_assert_eq!((r.action(), r.resource()), (action.as_str(), resource.as_str()));
                    prop_assert!(!r.resource().split('/').any(|s| s == "*" || s == "**"));
                    let _ = r.is_covered_by(&claim);
                    // A token for exactly this action on exactly this resource.
                    let exact = format!("{action}:{resource}");
                    prop_assert!(r.is_covered_by(&exact));
                }
                Err(RequiredScopeError::Pattern) => prop_assert!(as_request.is_ok()),
                Err(RequiredScopeError::Scope(e)) => {
                    let refused = as_request.err();
                    prop_assert_eq!(refused.as_ref(), Some(e));
                }
            }
        }

        #[test]
        fn a_claim_covers_a_required_scope_exactly_as_the_broker_decides(
            pattern in path_pattern(),
            granted in prop::sample::select(vec!["read", "write", "*"]),
            wanted in prop::sample::select(vec!["read", "write"]),
            resource in prop::collection::vec(small_segment(), 1..6),
        ) {
            let resource = resource.join("/");
            let declared = Scope::declared("crm-api", pattern.text(), granted)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let requested = Scope::requested("crm-api", resource.as_str(), wanted)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let r = RequiredScope::new(wanted, resource.as_str())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(r.is_covered_by(&declared.claim()), declared.covers(&requested));
        }
    }
}
