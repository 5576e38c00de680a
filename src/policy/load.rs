//! Loading a policy directory: the schema, the `.cedar` files and the entities,
//! validated strictly, with errors that name file, line and column; the workflows'
//! limits and the declared resources read from the entities; the policy set
//! sliced per action and tool or workflow.
use super::{Denied, DeviationResponse, WorkflowLimits};
use crate::domain::Scope;
use crate::domain::SpiffeId;
use cedar_policy::{
    ActionConstraint, Entities, Entity, EntityId, EntityTypeName, EntityUid, EvalResult, PolicyId,
    PolicySet, ResourceConstraint, RestrictedExpression, Schema, ValidationMode, Validator,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

pub const SCHEMA_FILE: &str = "schema.cedarschema";
pub const ENTITIES_FILE: &str = "entities.json";

/// Why a policy directory was refused: one line per problem, each
/// `file:line:column: message` where the position is known.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{}", .0.join("\n"))]
pub struct LoadError(pub Vec<String>);

/// A request Mayfly built that Cedar refused: a deny (fail closed) that says why,
/// with the whole error chain (the top-level message alone is often generic).
pub(super) fn input_error(e: &dyn std::error::Error) -> Denied {
    let mut reason = format!("policy input does not fit the schema: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        reason.push_str(&format!(": {s}"));
        source = s.source();
    }
    Denied::new(reason)
}

pub(super) fn load_error(file: &str, message: impl std::fmt::Display) -> LoadError {
    LoadError(vec![format!("{file}: {message}")])
}

/// `file:line:column: message` for a diagnostic whose labels point into `text`.
pub(super) fn located(
    file: &str,
    text: &str,
    d: &dyn miette::Diagnostic,
    message: String,
) -> String {
    let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
    match offset {
        Some(off) if off <= text.len() => {
            let before = &text[..off];
            let line = before.matches('\n').count() + 1;
            let column = before.rfind('\n').map(|i| off - i).unwrap_or(off + 1);
            format!("{file}:{line}:{column}: {message}")
        }
        _ => format!("{file}: {message}"),
    }
}

/// The files of a policy directory, and a fingerprint to notice changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFiles {
    pub schema: PathBuf,
    pub entities: PathBuf,
    pub policies: Vec<PathBuf>,
    pub(super) fingerprint: Vec<(PathBuf, Option<SystemTime>, u64)>,
}

impl PolicyFiles {
    pub fn scan(dir: &Path) -> Result<Self, LoadError> {
        let d = dir.display().to_string();
        let read = std::fs::read_dir(dir)
            .map_err(|e| load_error(&d, format!("cannot read the policy directory: {e}")))?;
        let mut policies = vec![];
        for entry in read {
            let path = entry.map_err(|e| load_error(&d, e))?.path();
            if path.extension().is_some_and(|e| e == "cedar") {
                policies.push(path);
            }
        }
        policies.sort();
        if policies.is_empty() {
            return Err(load_error(&d, "holds no .cedar policy file"));
        }
        let schema = dir.join(SCHEMA_FILE);
        let entities = dir.join(ENTITIES_FILE);
        let mut fingerprint = vec![];
        for p in [&schema, &entities].into_iter().chain(policies.iter()) {
            let meta = std::fs::metadata(p).map_err(|e| load_error(&p.display().to_string(), e))?;
            fingerprint.push((p.clone(), meta.modified().ok(), meta.len()));
        }
        Ok(PolicyFiles {
            schema,
            entities,
            policies,
            fingerprint,
        })
    }
}

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

/// One loaded, validated policy set. Immutable: a reload builds a new one.
pub(super) struct Loaded {
    pub(super) schema: Schema,
    pub(super) policies: PolicySet,
    /// The schema's action entities, when it groups actions; else empty.
    pub(super) action_entities: Vec<Entity>,
    /// `policies` sliced by the action and the tool (Mint, DeclareScope) or
    /// workflow (StartTask) they can apply to: a decision evaluates only its
    /// slice, with the same outcome for a fraction of the work.
    pub(super) slices: HashMap<&'static str, HashMap<String, Slice>>,
    pub(super) entities: Entities,
    pub(super) reasons: HashMap<String, String>,
    pub(super) workflows: HashMap<String, WorkflowLimits>,
    pub(super) tools: HashMap<String, DataAttrs>,
    pub(super) resources: Vec<DeclaredResource>,
    pub(super) files: PolicyFiles,
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
fn specificity(pattern: &str) -> (usize, usize, bool, std::cmp::Reverse<String>) {
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

pub(super) fn workload(t: &str, id: &SpiffeId) -> Result<Entity, Denied> {
    Entity::new(
        uid(t, id.as_str()),
        HashMap::from([
            ("spiffe_id".to_string(), string(id.as_str())),
            ("trust_domain".to_string(), string(id.trust_domain())),
            ("path".to_string(), string(id.path())),
        ]),
        HashSet::new(),
    )
    .map_err(|e| input_error(&e))
}

/// Loads `dir`, and loads it again if a file changed while it was being read, so
/// a deploy that replaces several files is never taken half-way.
pub(super) fn load(dir: &Path) -> Result<Loaded, LoadError> {
    for _ in 0..3 {
        let loaded = load_once(dir)?;
        match PolicyFiles::scan(dir) {
            Ok(now) if now.fingerprint == loaded.files.fingerprint => return Ok(loaded),
            Ok(_) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(load_error(
        &dir.display().to_string(),
        "the policy files kept changing while they were read; deploy them atomically (write a new directory, then swap a symlink)",
    ))
}

fn load_once(dir: &Path) -> Result<Loaded, LoadError> {
    let files = PolicyFiles::scan(dir)?;
    let read =
        |p: &Path| std::fs::read_to_string(p).map_err(|e| load_error(&p.display().to_string(), e));

    let schema_file = files.schema.display().to_string();
    let schema_text = read(&files.schema)?;
    let (schema, _warnings) = Schema::from_cedarschema_str(&schema_text)
        .map_err(|e| LoadError(vec![located(&schema_file, &schema_text, &e, e.to_string())]))?;

    let mut policies = PolicySet::new();
    let mut sources: HashMap<String, (String, String)> = HashMap::new();
    let mut reasons = HashMap::new();
    let mut errors = vec![];
    for path in &files.policies {
        let file = path.display().to_string();
        let text = read(path)?;
        let set = match PolicySet::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                for d in e.iter() {
                    errors.push(located(&file, &text, d, d.to_string()));
                }
                continue;
            }
        };
        if set.templates().next().is_some() {
            errors.push(format!(
                "{file}: policy templates are not supported; write static policies"
            ));
            continue;
        }
        for p in set.policies() {
            // Ids go into denials and the audit trail: they must be stable, so
            // they are the author's, never a position in a file.
            let Some(id) = p.annotation("id").map(str::to_string) else {
                let head: String = p
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let head: String = head.chars().take(80).collect();
                errors.push(format!(
                    "{file}: every policy needs an @id(\"...\") annotation; this one has none: {head}"
                ));
                continue;
            };
            if let Some((other, _)) = sources.get(&id) {
                errors.push(format!("{file}: policy id {id:?} is also used in {other}"));
                continue;
            }
            if let Some(r) = p.annotation("reason") {
                reasons.insert(id.clone(), r.to_string());
            }
            if let Err(e) = policies.add(p.new_id(PolicyId::new(&id))) {
                errors.push(format!("{file}: {e}"));
            }
            sources.insert(id, (file.clone(), text.clone()));
        }
    }
    if !errors.is_empty() {
        return Err(LoadError(errors));
    }
    let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
    if !validation.validation_passed() {
        let errors = validation
            .validation_errors()
            .map(|e| {
                let id = e.policy_id().to_string();
                match sources.get(&id) {
                    Some((file, text)) => located(file, text, e, format!("policy {id}: {e}")),
                    None => format!("policy {id}: {e}"),
                }
            })
            .collect();
        return Err(LoadError(errors));
    }

    let entities_file = files.entities.display().to_string();
    let entities_text = read(&files.entities)?;
    let entities = Entities::from_json_str(&entities_text, Some(&schema))
        .map_err(|e| load_error(&entities_file, e))?;

    let mut workflows = HashMap::new();
    let mut tools = HashMap::new();
    let mut declared = vec![];
    let mut errors = vec![];
    for e in entities.iter() {
        let id = e.uid().id().unescaped().to_string();
        let what = format!("{entities_file}: {}", e.uid());
        match e.uid().type_name().to_string().as_str() {
            "Mayfly::Workflow" => match workflow_limits(e) {
                Ok(l) => {
                    workflows.insert(id, l);
                }
                Err(why) => errors.push(format!("{what}: {why}")),
            },
            "Mayfly::Tool" => {
                tools.insert(id, data_attrs(e));
            }
            "Mayfly::Resource" => declared.push((id, e)),
            _ => {}
        }
    }
    let mut resources = vec![];
    for (id, e) in declared {
        let (uid, attrs, path) = (e.uid(), data_attrs(e), attr_string(e, "path"));
        let what = format!("{entities_file}: Mayfly::Resource::{id:?}");
        let Some((tool, pattern)) = id.split_once('/') else {
            errors.push(format!(
                "{what}: the id must be \"<tool>/<resource pattern>\""
            ));
            continue;
        };
        if !tools.contains_key(tool) {
            errors.push(format!("{what}: tool {tool:?} is not declared"));
            continue;
        }
        if path.as_deref() != Some(pattern) {
            errors.push(format!("{what}: its path attribute must be {pattern:?}"));
            continue;
        }
        let tool_uid = super::load::uid("Mayfly::Tool", tool);
        if !matches!(e.attr("tool"), Some(Ok(EvalResult::EntityUid(t))) if t == tool_uid) {
            errors.push(format!("{what}: its tool attribute must be {tool_uid}"));
            continue;
        }
        // A declared resource sits inside its own tool only: decisions (and the
        // policy slicing) rely on a request never being `in` another tool.
        let foreign: Vec<String> = entities
            .ancestors(&uid)
            .into_iter()
            .flatten()
            .filter(|a| {
                let same_tool = (a.type_name().to_string() == "Mayfly::Tool"
                    && a.id().unescaped() == tool)
                    || (a.type_name().to_string() == "Mayfly::Resource"
                        && a.id().unescaped().split('/').next() == Some(tool));
                !same_tool
            })
            .map(|a| a.to_string())
            .collect();
        if !foreign.is_empty() {
            errors.push(format!(
                "{what}: may only be in tool {tool:?} and its declared resources, not in {}",
                foreign.join(", ")
            ));
            continue;
        }
        match Scope::declared(tool, pattern, "*") {
            Ok(scope) => resources.push(DeclaredResource { scope, uid, attrs }),
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(LoadError(errors));
    }
    // Most specific first, and always in the same order (the entities file's order
    // is a hash order): the first covering pattern gives a request its attributes.
    resources.sort_by_key(|d| std::cmp::Reverse(specificity(&d.scope.resource)));
    // Action entities are needed per request only when the schema groups actions
    // (`action in Group`); without groups, `in` on actions is equality.
    let action_entities = if schema.action_groups().next().is_some() {
        schema
            .action_entities()
            .map_err(|e| load_error(&schema_file, e))?
            .iter()
            .cloned()
            .collect()
    } else {
        vec![]
    };
    let keys = |a: &'static str| -> Vec<(&'static str, String)> {
        match a {
            "StartTask" => workflows.keys().map(|w| (a, w.clone())).collect(),
            _ => tools.keys().map(|t| (a, t.clone())).collect(),
        }
    };
    let slices = slice(&policies, ACTIONS.iter().flat_map(|a| keys(a)))
        .map_err(|e| load_error(&schema_file, e))?;
    let loaded = Loaded {
        schema,
        policies,
        slices,
        action_entities,
        entities,
        reasons,
        workflows,
        tools,
        resources,
        files,
    };
    // Prove the schema accepts what Mayfly sends, so no request fails later.
    loaded.self_check().map_err(|e| {
        load_error(
            &schema_file,
            format!("does not fit the requests Mayfly makes: {e}"),
        )
    })?;
    Ok(loaded)
}

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
        max_token_ttl: Duration::from_secs(positive("max_token_ttl_seconds", 24 * 3600)?),
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
