//! The policy set sliced per action and tool or workflow: which policies can
//! apply to a request, and which entities a decision over them must carry.
use super::values::action;
use cedar_policy::{ActionConstraint, EntityUid, PolicySet, ResourceConstraint};
use std::collections::HashMap;

/// The actions Mayfly asks about.
pub(super) const ACTIONS: [&str; 3] = ["StartTask", "DeclareScope", "Mint"];

/// Whether policy `p` could apply to a request for action `act` whose resource
/// is tool `key`'s (Mint, DeclareScope) or is workflow `key` (StartTask). Only
/// ever `false` when it provably cannot: a constraint naming an action group a
/// schema might add, or an entity of another kind, keeps the policy.
pub(super) fn could_apply(p: &cedar_policy::Policy, act: &str, key: &str) -> bool {
    let known = |a: &EntityUid| ACTIONS.iter().any(|k| *a == action(k));
    let this = action(act);
    let action_ok = match p.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => a == this || !known(&a),
        ActionConstraint::In(list) => list.iter().any(|a| *a == this || !known(a)),
    };
    let target = match p.resource_constraint() {
        ResourceConstraint::In(u) | ResourceConstraint::Eq(u) | ResourceConstraint::IsIn(_, u) => u,
        ResourceConstraint::Any | ResourceConstraint::Is(_) => return action_ok,
    };
    let id = target.id().unescaped();
    // A requested resource's id is "<tool>/<pattern>"; it is in its tool and in
    // declared resources of that tool only.
    let resource_ok = match (act, target.type_name().to_string().as_str()) {
        ("StartTask", "Mayfly::Workflow") => id == key,
        ("Mint" | "DeclareScope", "Mayfly::Tool") => id == key,
        ("Mint" | "DeclareScope", "Mayfly::Resource") => id.split('/').next() == Some(key),
        _ => true,
    };
    action_ok && resource_ok
}

/// One policy set per (action, tool or workflow).
pub(super) fn slice(
    all: &PolicySet,
    keys: impl Iterator<Item = (&'static str, String)>,
) -> Result<HashMap<&'static str, HashMap<String, Slice>>, String> {
    let mut out: HashMap<&'static str, HashMap<String, Slice>> = HashMap::new();
    for (act, key) in keys {
        let mut set = PolicySet::new();
        let mut needs = Needs::NONE;
        for p in all.policies().filter(|p| could_apply(p, act, &key)) {
            needs.file_entities |= reads_file_entity_attributes(p);
            needs.task |= mentions_task(p);
            set.add(p.clone()).map_err(|e| e.to_string())?;
        }
        out.entry(act).or_default().insert(
            key,
            Slice {
                policies: set,
                needs,
            },
        );
    }
    Ok(out)
}

/// The policies that can apply to one (action, tool or workflow).
pub(super) struct Slice {
    pub(super) policies: PolicySet,
    pub(super) needs: Needs,
}

/// Which entities a decision must carry besides the principal and the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Needs {
    /// Whether some policy reads attributes of an entity from the entities file
    /// (`context.workflow.max_tokens`, `resource.tool.sensitivity`, a literal
    /// entity's attribute). Only then does a decision need those entities: `in`
    /// needs only the request entities' ancestors, which they carry.
    pub(super) file_entities: bool,
    /// Whether some policy can reach the task entity (`context.task`, a
    /// `Mayfly::Task` literal or type). Without the entity, `in` on it would be
    /// false rather than an error, so this errs towards `true`.
    pub(super) task: bool,
}

impl Needs {
    const NONE: Needs = Needs {
        file_entities: false,
        task: false,
    };
    /// With no slice to go by (an action or key Mayfly did not slice for),
    /// every entity is carried.
    pub(super) const ALL: Needs = Needs {
        file_entities: true,
        task: true,
    };
}

/// Conservative: `true` when the word "task" appears, in any case, anywhere in
/// the policy's condition or scope (an attribute name, an entity type, a string
/// literal): annotations aside, which decide nothing. A false `true` only costs
/// the time to build the task entity.
pub(super) fn mentions_task(p: &cedar_policy::Policy) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.to_ascii_lowercase().contains("task"),
            serde_json::Value::Object(map) => map
                .iter()
                .any(|(k, inner)| k.to_ascii_lowercase().contains("task") || walk(inner)),
            serde_json::Value::Array(items) => items.iter().any(walk),
            _ => false,
        }
    }
    match p.to_json() {
        Ok(serde_json::Value::Object(mut map)) => {
            map.remove("annotations");
            walk(&serde_json::Value::Object(map))
        }
        _ => true,
    }
}

/// Conservative: `true` unless every attribute access (`.`, `has`, tags) in the
/// policy is on `principal`, `resource`, `context`, or the entities Mayfly builds
/// per request (`context.task`, `context.agent`, `context.orchestrator`). Erring
/// towards `true` only costs time; erring the other way cannot permit anything
/// either, since reading a missing entity is an evaluation error, and an error
/// denies.
pub(super) fn reads_file_entity_attributes(p: &cedar_policy::Policy) -> bool {
    fn built_per_request(left: &serde_json::Value) -> bool {
        if let Some(var) = left.get("Var").and_then(|v| v.as_str()) {
            return matches!(var, "principal" | "resource" | "context");
        }
        left.get(".").is_some_and(|dot| {
            dot.get("left")
                .and_then(|l| l.get("Var"))
                .and_then(|v| v.as_str())
                == Some("context")
                && matches!(
                    dot.get("attr").and_then(|a| a.as_str()),
                    Some("task" | "agent" | "orchestrator")
                )
        })
    }
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(map) => map.iter().any(|(k, inner)| {
                let access = matches!(k.as_str(), "." | "has" | "getTag" | "hasTag");
                (access && !inner.get("left").is_some_and(built_per_request)) || walk(inner)
            }),
            serde_json::Value::Array(items) => items.iter().any(walk),
            _ => false,
        }
    }
    p.to_json().map(|j| walk(&j)).unwrap_or(true)
}
