//! Cedar decisions over a loaded policy set: the request's entities and context,
//! denials that name the policies that made them, and reload that swaps the whole
//! set at once and keeps the old one when the new one is invalid.
use super::load::*;
use super::{Denied, MintInput, Permit, Policy, StartInput, WorkflowLimits};
use crate::domain::Scope;
use crate::domain::SpiffeId;
use crate::domain::text::quote;
use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicySet, Request,
    RestrictedExpression,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// What `/readyz` and the logs say about the policy set.
#[derive(Debug, Clone, Default)]
pub struct PolicyStatus {
    pub policies: usize,
    pub reloads: u64,
    pub failed_reloads: u64,
    /// The error of the last reload attempt, if it failed (the old set stays).
    pub last_error: Option<String>,
}

/// Cedar-backed decisions over a policy directory.
pub struct CedarPolicy {
    dir: PathBuf,
    environment: String,
    current: RwLock<Arc<Loaded>>,
    status: Mutex<PolicyStatus>,
    /// What the directory looked like when the last reload failed, so an
    /// unchanged broken set is not retried (and logged) on every tick.
    failed: Mutex<Option<Scan>>,
}

type Scan = Result<Vec<(PathBuf, Option<SystemTime>, u64)>, String>;

fn scan(dir: &Path) -> Scan {
    PolicyFiles::scan(dir)
        .map(|f| f.fingerprint)
        .map_err(|e| e.to_string())
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
    fn resource(&self, scope: &Scope, with_file: bool) -> Result<(Entity, Vec<Entity>), Denied> {
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
    fn workflow_entity(&self, wf: &EntityUid, needs: Needs) -> Option<Entity> {
        self.entities
            .get(wf)
            .filter(|_| needs.file_entities)
            .cloned()
    }

    /// The policies that can apply to the action on the tool (Mint,
    /// DeclareScope) or workflow (StartTask), and which entities they need.
    fn slice(&self, (act, key): (&str, &str)) -> (&PolicySet, Needs) {
        match self.slices.get(act).and_then(|m| m.get(key)) {
            Some(s) => (&s.policies, s.needs),
            None => (&self.policies, Needs::ALL),
        }
    }

    fn decide(
        &self,
        principal: EntityUid,
        // The action, and the policies that can apply to it (`Loaded::slice`).
        (act, policies): (&str, &PolicySet),
        resource: EntityUid,
        context: Vec<(String, RestrictedExpression)>,
        // The entities built for this request, and those from the entities file
        // it can reach that the slice needs (see `Needs`).
        (built, file): (Vec<Entity>, Vec<Entity>),
        // What was asked, for a denial's reason: only formatted on a denial.
        what: impl Fn() -> String,
    ) -> Result<Vec<String>, Denied> {
        let action_uid = action(act);
        let context = Context::from_pairs(context).map_err(|e| input_error(&e))?;
        // Unvalidated request and entities: `self_check` proved at load that what
        // Mayfly builds fits this schema, and validating per request triples the
        // cost of a decision.
        let request = Request::new(principal, action_uid, resource, context, None)
            .map_err(|e| input_error(&e))?;
        // Only the entities this request can reach: cheap, and not growing with
        // the entities file. Action entities only matter (and are only added) when
        // the schema groups actions.
        let entities = Entities::from_entities(
            built
                .into_iter()
                .chain(file)
                .chain(self.action_entities.iter().cloned()),
            None,
        )
        .map_err(|e| input_error(&e))?;
        let response = Authorizer::new().is_authorized(&request, policies, &entities);
        let ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|p| p.to_string())
            .collect();
        // A policy that fails to evaluate is skipped by Cedar; if it was a forbid,
        // that would open a hole. Refuse instead.
        if let Some(err) = response.diagnostics().errors().next() {
            return Err(Denied {
                reason: format!("{}: policy evaluation failed: {err}", what()),
                policies: match err {
                    cedar_policy::AuthorizationError::PolicyEvaluationError(e) => {
                        vec![e.policy_id().to_string()]
                    }
                },
            });
        }
        match response.decision() {
            Decision::Allow => Ok(ids),
            Decision::Deny if ids.is_empty() => {
                Err(Denied::new(format!("no policy permits {}", what())))
            }
            Decision::Deny => {
                let why: Vec<String> = ids
                    .iter()
                    .map(|id| match self.reasons.get(id) {
                        Some(r) => format!("{id} ({r})"),
                        None => id.clone(),
                    })
                    .collect();
                Err(Denied {
                    reason: format!("{} is forbidden by policy {}", what(), why.join(", ")),
                    policies: ids,
                })
            }
        }
    }

    pub(super) fn self_check(&self) -> Result<(), String> {
        let agent =
            SpiffeId::parse("spiffe://mayfly.invalid/self-check").map_err(|e| e.to_string())?;
        let task = crate::domain::Task {
            id: crate::domain::TaskId::new(),
            agent: agent.to_string(),
            workflow: "self-check".into(),
            objective: "self-check".into(),
            scopes: vec![],
            state: crate::domain::TaskState::Active,
            opened_by: agent.to_string(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            expires_at: OffsetDateTime::UNIX_EPOCH,
            ended_at: None,
            end_reason: None,
            tokens_minted: 0,
        };
        let scope = Scope {
            audience: "self-check".into(),
            resource: "x".into(),
            action: "read".into(),
        };
        let resource = Entity::new(
            uid("Mayfly::Resource", "self-check"),
            HashMap::from([
                (
                    "tool".to_string(),
                    RestrictedExpression::new_entity_uid(uid("Mayfly::Tool", "self-check")),
                ),
                ("path".to_string(), string("x")),
                ("sensitivity".to_string(), string("public")),
                ("destination".to_string(), string("internal")),
                ("environment".to_string(), string("self-check")),
            ]),
            HashSet::from([uid("Mayfly::Tool", "self-check")]),
        )
        .map_err(|e| e.to_string())?;
        let wf = uid("Mayfly::Workflow", "self-check");
        let input = MintInput {
            agent: &agent,
            task: &task,
            scope: &scope,
            requested_ttl: Duration::from_secs(1),
            delegation_depth: 0,
            now: OffsetDateTime::UNIX_EPOCH,
        };
        // The entities Mayfly builds per request must fit the schema too.
        let built = [
            workload("Mayfly::Agent", &agent).map_err(|d| d.reason)?,
            workload("Mayfly::Orchestrator", &agent).map_err(|d| d.reason)?,
            task_entity(&input, &wf, uid("Mayfly::Agent", agent.as_str())).map_err(|d| d.reason)?,
            resource.clone(),
        ];
        Entities::from_entities(built, Some(&self.schema)).map_err(|e| e.to_string())?;
        let check = |r: Result<Request, _>| {
            r.map(|_| ())
                .map_err(|e: cedar_policy::RequestValidationError| e.to_string())
        };
        let ctx = |pairs| Context::from_pairs(pairs).map_err(|e| e.to_string());
        check(Request::new(
            uid("Mayfly::Orchestrator", "x"),
            action("StartTask"),
            wf.clone(),
            ctx(start_context(
                &agent,
                1,
                std::slice::from_ref(&scope),
                "e",
                OffsetDateTime::UNIX_EPOCH,
            ))?,
            Some(&self.schema),
        ))?;
        check(Request::new(
            uid("Mayfly::Agent", "x"),
            action("DeclareScope"),
            resource.uid(),
            ctx(declare_context(&wf, &agent, &scope, "e"))?,
            Some(&self.schema),
        ))?;
        check(Request::new(
            uid("Mayfly::Agent", "x"),
            action("Mint"),
            resource.uid(),
            ctx(mint_context(&input, &wf, "e"))?,
            Some(&self.schema),
        ))?;
        Ok(())
    }
}

fn task_entity(i: &MintInput<'_>, wf_uid: &EntityUid, agent: EntityUid) -> Result<Entity, Denied> {
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

fn start_context(
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

fn declare_context(
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

fn mint_context(
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

impl CedarPolicy {
    /// Loads and validates a policy directory; refuses an invalid one.
    pub fn load(dir: &Path, environment: &str) -> Result<Self, LoadError> {
        let loaded = load(dir)?;
        let status = PolicyStatus {
            policies: loaded.policies.policies().count(),
            ..Default::default()
        };
        Ok(CedarPolicy {
            dir: dir.to_path_buf(),
            environment: environment.to_string(),
            current: RwLock::new(Arc::new(loaded)),
            status: Mutex::new(status),
            failed: Mutex::new(None),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Loads the directory again and swaps the whole set in at once. An invalid
    /// set leaves the current one in place; the error is kept for `status()`.
    pub fn reload(&self) -> Result<(), LoadError> {
        let result = load(&self.dir);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(loaded) => {
                status.policies = loaded.policies.policies().count();
                status.reloads += 1;
                status.last_error = None;
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                Ok(())
            }
            Err(e) => {
                status.failed_reloads += 1;
                status.last_error = Some(e.to_string());
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(scan(&self.dir));
                Err(e)
            }
        }
    }

    /// Reloads when a file was added, removed or changed since the last load
    /// (or the last failed attempt). `Ok(false)` when nothing changed.
    pub fn reload_if_changed(&self) -> Result<bool, LoadError> {
        let now = scan(&self.dir);
        let same = now
            .as_ref()
            .is_ok_and(|f| *f == self.current().files.fingerprint);
        let failed_same = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(&now);
        if same || failed_same {
            return Ok(false);
        }
        self.reload().map(|_| true)
    }

    pub fn status(&self) -> PolicyStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Policy for CedarPolicy {
    fn workflow(&self, name: &str) -> Option<WorkflowLimits> {
        self.current().workflows.get(name).cloned()
    }

    fn decide_start(&self, i: &StartInput<'_>) -> Result<Permit, Denied> {
        self.start_in(&self.environment, i)
    }

    fn decide_mint(&self, i: &MintInput<'_>) -> Result<Permit, Denied> {
        self.mint_in(&self.environment, i)
    }

    fn longest_token_ttl(&self) -> Duration {
        // The longest any set could allow: a reload may raise a workflow's TTL
        // while the key registration is already out.
        Duration::from_secs(24 * 3600).min(
            self.current()
                .workflows
                .values()
                .map(|w| w.max_token_ttl)
                .max()
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1)),
        )
    }
}

/// Decisions in a given environment (the broker's own, or a policy test case's).
impl CedarPolicy {
    pub fn start_in(&self, environment: &str, i: &StartInput<'_>) -> Result<Permit, Denied> {
        // One snapshot for the whole decision: a reload never splits it.
        let set = self.current();
        let wf = set
            .workflows
            .get(i.workflow)
            .ok_or_else(|| Denied::new(format!("workflow {} is not defined", quote(i.workflow))))?;
        if i.duration > wf.max_task_duration {
            return Err(Denied {
                reason: format!(
                    "duration {}s exceeds workflow {} maximum of {}s",
                    i.duration.as_secs(),
                    quote(i.workflow),
                    wf.max_task_duration.as_secs()
                ),
                policies: vec![format!("workflow:{}", i.workflow)],
            });
        }
        let wf_uid = uid("Mayfly::Workflow", i.workflow);
        let agent = workload("Mayfly::Agent", i.agent)?;
        let orch = workload("Mayfly::Orchestrator", i.orchestrator)?;
        let (slice, needs) = set.slice(("StartTask", i.workflow));
        let mut policies = set.decide(
            orch.uid(),
            ("StartTask", slice),
            wf_uid.clone(),
            start_context(i.agent, secs(i.duration), i.scopes, environment, i.now),
            (
                vec![agent.clone(), orch.clone()],
                set.workflow_entity(&wf_uid, needs).into_iter().collect(),
            ),
            || {
                format!(
                    "{} opening workflow {} for {}",
                    i.orchestrator,
                    quote(i.workflow),
                    i.agent
                )
            },
        )?;
        for (n, scope) in i.scopes.iter().enumerate() {
            let (slice, needs) = set.slice(("DeclareScope", &scope.audience));
            let (resource, mut file) =
                set.resource(scope, needs.file_entities)
                    .map_err(|d| Denied {
                        reason: format!("scopes[{n}]: {}", d.reason),
                        ..d
                    })?;
            file.extend(set.workflow_entity(&wf_uid, needs));
            let p = set.decide(
                agent.uid(),
                ("DeclareScope", slice),
                resource.uid(),
                declare_context(&wf_uid, i.orchestrator, scope, environment),
                (vec![agent.clone(), orch.clone(), resource], file),
                || format!("declaring scope {scope} in workflow {}", quote(i.workflow)),
            )?;
            policies.extend(p);
        }
        policies.sort();
        policies.dedup();
        Ok(Permit {
            policies,
            limits: wf.clone(),
        })
    }

    pub fn mint_in(&self, environment: &str, i: &MintInput<'_>) -> Result<Permit, Denied> {
        let set = self.current();
        let wf = set.workflows.get(&i.task.workflow).ok_or_else(|| {
            Denied::new(format!(
                "workflow {} is no longer defined",
                quote(&i.task.workflow)
            ))
        })?;
        let wf_uid = uid("Mayfly::Workflow", &i.task.workflow);
        let (slice, needs) = set.slice(("Mint", &i.scope.audience));
        let agent = workload("Mayfly::Agent", i.agent)?;
        // The task entity only when a policy can reach it (`Needs::task`). Its
        // agent is the task's own: for a delegated token (depth > 0) not the
        // principal, which is the sub-agent.
        let mut task = vec![];
        if needs.task {
            let owner = if i.delegation_depth == 0 {
                agent.uid()
            } else {
                let id = SpiffeId::parse(&i.task.agent).map_err(|e| {
                    Denied::new(format!("task {} has an invalid agent: {e}", i.task.id))
                })?;
                let owner = workload("Mayfly::Agent", &id)?;
                let uid = owner.uid();
                task.push(owner);
                uid
            };
            task.push(task_entity(i, &wf_uid, owner)?);
        }
        let (resource, mut file) = set.resource(i.scope, needs.file_entities)?;
        file.extend(set.workflow_entity(&wf_uid, needs));
        let (principal, requested) = (agent.uid(), resource.uid());
        let mut built = vec![agent, resource];
        built.extend(task);
        let policies = set.decide(
            principal,
            ("Mint", slice),
            requested,
            mint_context(i, &wf_uid, environment),
            (built, file),
            || format!("minting {} in task {}", i.scope, i.task.id),
        )?;
        Ok(Permit {
            policies,
            limits: wf.clone(),
        })
    }
}
