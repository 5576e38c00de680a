//! What a decision is asked about: the entities Mayfly builds per request (the
//! workloads, the task, the requested resource with the attributes of what it
//! reaches) and the context of each action.
use super::load::Loaded;
use super::slice::Needs;
use super::values::{
    DeclaredResource, destination_rank, long, secs, sensitivity_rank, string, uid,
};
use super::{Denied, MintInput};
use crate::domain::Scope;
use crate::domain::SpiffeId;
use crate::domain::text::quote;
use cedar_policy::{Entity, EntityUid, RestrictedExpression};
use std::collections::{HashMap, HashSet};
use time::OffsetDateTime;

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

impl Loaded {
    /// The requested resource as an entity, and the file entities a decision about
    /// it needs (its tool and the declared patterns covering it). The entity takes
    /// the attributes of the most specific declared pattern covering it (or of its
    /// tool), with the sensitivity of the most sensitive declared pattern it
    /// overlaps: a wildcard request is as sensitive as what it can reach. It is
    /// `in` its tool and in every declared pattern that covers it, so
    /// `resource in Mayfly::Resource::"crm-api/customers/eu/*/payment-methods"`
    /// holds for `customers/eu/42/payment-methods` too. Coverage, not overlap,
    /// makes a parent: a permit on a pattern never reaches a wider request.
    pub(super) fn resource(
        &self,
        scope: &Scope,
        with_file: bool,
    ) -> Result<(Entity, Vec<Entity>), Denied> {
        let id = format!("{}/{}", scope.audience, scope.resource);
        let probe = Scope {
            action: "*".into(),
            ..scope.clone()
        };
        let tool_uid = uid("Mayfly::Tool", &scope.audience);
        let (Some(tool), Some(tool_entity)) = (
            self.tools.get(&scope.audience),
            self.entities.get(&tool_uid),
        ) else {
            return Err(Denied::new(format!(
                "audience {} is not a tool the policies know",
                quote(&scope.audience)
            )));
        };
        // `resources` is sorted most specific first (deterministically), so the
        // first covering pattern gives the attributes.
        let covering: Vec<&DeclaredResource> = self
            .resources
            .iter()
            .filter(|d| d.scope.covers(&probe))
            .collect();
        let mut attrs = covering
            .first()
            .map(|d| d.attrs.clone())
            .unwrap_or_else(|| tool.clone());
        // The most restrictive sensitivity and destination of anything it reaches.
        for d in self.resources.iter().filter(|d| d.scope.overlaps(&probe)) {
            if sensitivity_rank(&d.attrs.sensitivity) > sensitivity_rank(&attrs.sensitivity) {
                attrs.sensitivity = d.attrs.sensitivity.clone();
            }
            if destination_rank(&d.attrs.destination) > destination_rank(&attrs.destination) {
                attrs.destination = d.attrs.destination.clone();
            }
        }
        let own = uid("Mayfly::Resource", &id);
        let mut needed = Vec::new();
        if with_file {
            needed.push(tool_entity.clone());
        }
        let mut parents = HashSet::from([tool_uid.clone()]);
        // In every covering pattern and in everything those are in (a request for
        // exactly a declared pattern keeps that pattern's own parents).
        for d in &covering {
            if d.uid != own {
                parents.insert(d.uid.clone());
            }
            for a in self.entities.ancestors(&d.uid).into_iter().flatten() {
                if *a != own {
                    parents.insert(a.clone());
                }
            }
        }
        for p in parents.iter().filter(|_| with_file) {
            if *p != tool_uid
                && let Some(e) = self.entities.get(p)
            {
                needed.push(e.clone());
            }
        }
        let entity = Entity::new(
            own,
            HashMap::from([
                (
                    "tool".to_string(),
                    RestrictedExpression::new_entity_uid(tool_uid),
                ),
                ("path".to_string(), string(&scope.resource)),
                ("sensitivity".to_string(), string(&attrs.sensitivity)),
                ("destination".to_string(), string(&attrs.destination)),
                ("environment".to_string(), string(&attrs.environment)),
            ]),
            parents,
        )
        .map_err(|e| input_error(&e))?;
        Ok((entity, needed))
    }

    /// The workflow's entity from the file, when the slice reads file entities.
    pub(super) fn workflow_entity(&self, wf: &EntityUid, needs: Needs) -> Option<Entity> {
        self.entities
            .get(wf)
            .filter(|_| needs.file_entities)
            .cloned()
    }
}

pub(super) fn task_entity(
    i: &MintInput<'_>,
    wf_uid: &EntityUid,
    agent: EntityUid,
) -> Result<Entity, Denied> {
    Entity::new(
        uid("Mayfly::Task", &i.task.id.to_string()),
        HashMap::from([
            (
                "workflow".to_string(),
                RestrictedExpression::new_entity_uid(wf_uid.clone()),
            ),
            (
                "agent".to_string(),
                RestrictedExpression::new_entity_uid(agent),
            ),
            ("objective".to_string(), string(&i.task.objective)),
            ("scopes".to_string(), scope_set(&i.task.scopes)),
            (
                "age_seconds".to_string(),
                long(secs((i.now - i.task.created_at).unsigned_abs())),
            ),
            (
                "remaining_seconds".to_string(),
                long(secs(i.task.remaining(i.now))),
            ),
            (
                "tokens_minted".to_string(),
                long(i64::from(i.task.tokens_minted)),
            ),
            (
                "delegation_depth".to_string(),
                long(i64::from(i.delegation_depth)),
            ),
        ]),
        HashSet::from([wf_uid.clone()]),
    )
    .map_err(|e| input_error(&e))
}

/// Declared scopes as Cedar strings, `<audience>/<resource>#<action>`.
fn scope_set(scopes: &[Scope]) -> RestrictedExpression {
    RestrictedExpression::new_set(scopes.iter().map(|s| string(&s.to_string())))
}

pub(super) fn start_context(
    agent: &SpiffeId,
    duration: i64,
    scopes: &[Scope],
    env: &str,
    now: OffsetDateTime,
) -> Vec<(String, RestrictedExpression)> {
    vec![
        ("scopes".into(), scope_set(scopes)),
        (
            "agent".into(),
            RestrictedExpression::new_entity_uid(uid("Mayfly::Agent", agent.as_str())),
        ),
        ("duration_seconds".into(), long(duration)),
        (
            "scope_count".into(),
            long(i64::try_from(scopes.len()).unwrap_or(i64::MAX)),
        ),
        ("environment".into(), string(env)),
        ("now".into(), long(now.unix_timestamp())),
        ("hour_utc".into(), long(i64::from(now.hour()))),
    ]
}

pub(super) fn declare_context(
    wf: &EntityUid,
    orchestrator: &SpiffeId,
    scope: &Scope,
    env: &str,
) -> Vec<(String, RestrictedExpression)> {
    vec![
        (
            "workflow".into(),
            RestrictedExpression::new_entity_uid(wf.clone()),
        ),
        (
            "orchestrator".into(),
            RestrictedExpression::new_entity_uid(uid(
                "Mayfly::Orchestrator",
                orchestrator.as_str(),
            )),
        ),
        ("action".into(), string(&scope.action)),
        ("environment".into(), string(env)),
    ]
}

pub(super) fn mint_context(
    i: &MintInput<'_>,
    wf: &EntityUid,
    env: &str,
) -> Vec<(String, RestrictedExpression)> {
    let age = secs((i.now - i.task.created_at).unsigned_abs());
    vec![
        (
            "task".into(),
            RestrictedExpression::new_entity_uid(uid("Mayfly::Task", &i.task.id.to_string())),
        ),
        (
            "workflow".into(),
            RestrictedExpression::new_entity_uid(wf.clone()),
        ),
        ("action".into(), string(&i.scope.action)),
        ("requested_ttl_seconds".into(), long(secs(i.requested_ttl))),
        ("task_age_seconds".into(), long(age)),
        (
            "task_remaining_seconds".into(),
            long(secs(i.task.remaining(i.now))),
        ),
        (
            "tokens_minted".into(),
            long(i64::from(i.task.tokens_minted)),
        ),
        (
            "delegation_depth".into(),
            long(i64::from(i.delegation_depth)),
        ),
        ("environment".into(), string(env)),
        ("now".into(), long(i.now.unix_timestamp())),
        ("hour_utc".into(), long(i64::from(i.now.hour()))),
    ]
}
