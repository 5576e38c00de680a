//! Cedar values Mayfly builds and reads: entity ids and attribute values, and what
//! the entities file declares (a workflow's limits; a tool's or a resource's data
//! labels, and how the labels rank).
use super::{DeviationResponse, WorkflowLimits};
use crate::domain::Scope;
use cedar_policy::{Entity, EntityId, EntityTypeName, EntityUid, EvalResult, RestrictedExpression};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub(super) struct DataAttrs {
    pub(super) sensitivity: String,
    pub(super) destination: String,
    pub(super) environment: String,
}

/// A resource pattern declared in the entities file.
pub(super) struct DeclaredResource {
    pub(super) scope: Scope,
    pub(super) uid: EntityUid,
    pub(super) attrs: DataAttrs,
}

pub(super) const SENSITIVITY: [&str; 4] = ["public", "internal", "confidential", "restricted"];

/// Rank of a destination: `external` is more exposed than `internal`; unknown
/// labels rank above both.
pub(super) fn destination_rank(s: &str) -> usize {
    match s {
        "internal" => 0,
        "external" => 1,
        _ => 2,
    }
}

/// How specific a resource pattern is, for ordering: more literal segments, then
/// more segments, then no trailing `**`, then the pattern itself (a deterministic
/// tie-break, reversed so that the order is total).
pub(super) fn specificity(pattern: &str) -> (usize, usize, bool, std::cmp::Reverse<String>) {
    let segments: Vec<&str> = pattern.split('/').collect();
    let literal = segments
        .iter()
        .filter(|s| **s != "*" && **s != "**")
        .count();
    (
        literal,
        segments.len(),
        segments.last() != Some(&"**"),
        std::cmp::Reverse(pattern.to_string()),
    )
}

/// Rank of a sensitivity label; unknown labels rank above all known ones.
pub(super) fn sensitivity_rank(s: &str) -> usize {
    SENSITIVITY
        .iter()
        .position(|k| *k == s)
        .unwrap_or(SENSITIVITY.len())
}

pub(super) fn type_name(t: &str) -> EntityTypeName {
    // The names below are constants of the Mayfly schema.
    EntityTypeName::from_str(t).unwrap_or_else(|_| unreachable!("constant entity type name {t}"))
}

pub(super) fn uid(t: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name(t), EntityId::new(id))
}

pub(super) fn action(name: &str) -> EntityUid {
    uid("Mayfly::Action", name)
}

pub(super) fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

pub(super) fn long(n: i64) -> RestrictedExpression {
    RestrictedExpression::new_long(n)
}

pub(super) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

pub(super) fn attr_string(e: &Entity, key: &str) -> Option<String> {
    match e.attr(key) {
        Some(Ok(EvalResult::String(s))) => Some(s),
        _ => None,
    }
}

pub(super) fn attr_long(e: &Entity, key: &str) -> Option<i64> {
    match e.attr(key) {
        Some(Ok(EvalResult::Long(n))) => Some(n),
        _ => None,
    }
}

pub(super) fn attr_strings(e: &Entity, key: &str) -> Option<Vec<String>> {
    match e.attr(key) {
        Some(Ok(EvalResult::Set(set))) => set
            .iter()
            .map(|v| match v {
                EvalResult::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

pub(super) fn data_attrs(e: &Entity) -> DataAttrs {
    DataAttrs {
        sensitivity: attr_string(e, "sensitivity").unwrap_or_default(),
        destination: attr_string(e, "destination").unwrap_or_default(),
        environment: attr_string(e, "environment").unwrap_or_default(),
    }
}

pub(super) fn workflow_limits(e: &Entity) -> Result<WorkflowLimits, String> {
    let get = |k: &str| attr_long(e, k).ok_or_else(|| format!("{k} is missing or not a Long"));
    let positive = |k: &str, max: i64| -> Result<u64, String> {
        let v = get(k)?;
        if v < 1 || v > max {
            return Err(format!("{k} must be between 1 and {max}, not {v}"));
        }
        Ok(v as u64)
    };
    let depth = get("max_delegation_depth")?;
    if !(0..=16).contains(&depth) {
        return Err(format!(
            "max_delegation_depth must be between 0 and 16, not {depth}"
        ));
    }
    let deviation = match attr_string(e, "deviation_response").as_deref() {
        Some("revoke_task") => DeviationResponse::RevokeTask,
        Some("deny") => DeviationResponse::Deny,
        other => {
            return Err(format!(
                "deviation_response must be \"revoke_task\" or \"deny\", not {other:?}"
            ));
        }
    };
    Ok(WorkflowLimits {
        max_task_duration: Duration::from_secs(positive("max_task_seconds", 366 * 24 * 3600)?),
        max_token_ttl: Duration::from_secs(positive(
            "max_token_ttl_seconds",
            crate::domain::retention::MAX_TOKEN_TTL.as_secs() as i64,
        )?),
        max_tokens: positive("max_tokens", i64::from(u32::MAX))? as u32,
        max_delegation_depth: depth as u32,
        step_up_actions: attr_strings(e, "step_up_actions")
            .ok_or("step_up_actions must be a set of strings")?,
        step_up_retries: match get("step_up_retries")? {
            n @ 0..=1000 => n as u32,
            n => {
                return Err(format!(
                    "step_up_retries must be between 0 and 1000, not {n}"
                ));
            }
        },
        deviation,
    })
}
