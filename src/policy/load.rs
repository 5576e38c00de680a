//! Loading a policy directory: the schema, the `.cedar` files and the entities,
//! validated strictly, with errors that name file, line and column; the workflows'
//! limits and the declared resources read from the entities; a reload taken only
//! when no file changed while it was read.
use super::WorkflowLimits;
use super::slice::{ACTIONS, Slice, slice};
use super::values::{
    DataAttrs, DeclaredResource, attr_string, data_attrs, specificity, workflow_limits,
};
use crate::domain::Scope;
use cedar_policy::{
    Entities, Entity, EvalResult, PolicyId, PolicySet, Schema, ValidationMode, Validator,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

pub const SCHEMA_FILE: &str = "schema.cedarschema";
pub const ENTITIES_FILE: &str = "entities.json";

/// Why a policy directory was refused: one line per problem, each
/// `file:line:column: message` where the position is known.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{}", .0.join("\n"))]
pub struct LoadError(pub Vec<String>);

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
    /// Whether a policy may read a task's count of tokens (`tokens_minted`):
    /// then a mint decides on the task as stored now, not as it was first read.
    pub(super) reads_token_count: bool,
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
        let tool_uid = super::values::uid("Mayfly::Tool", tool);
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
    // A policy's text naming the attribute at all (in a comment too) counts:
    // the check errs on the side of reading the task again.
    let reads_token_count = policies
        .policies()
        .any(|p| p.to_string().contains("tokens_minted"));
    let loaded = Loaded {
        reads_token_count,
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
