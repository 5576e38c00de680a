//! One Cedar evaluation over a loaded set: the slice a request is decided by, the
//! authorizer, denials that name the policies that made them; and the check at
//! load that the schema accepts every request Mayfly builds.
use super::Denied;
use super::MintInput;
use super::load::Loaded;
use super::request::{
    declare_context, input_error, mint_context, start_context, task_entity, workload,
};
use super::slice::Needs;
use super::values::{action, string, uid};
use crate::domain::Scope;
use crate::domain::SpiffeId;
use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicySet, Request,
    RestrictedExpression,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use time::OffsetDateTime;

impl Loaded {
    /// The policies that can apply to the action on the tool (Mint,
    /// DeclareScope) or workflow (StartTask), and which entities they need.
    pub(super) fn slice(&self, (act, key): (&str, &str)) -> (&PolicySet, Needs) {
        match self.slices.get(act).and_then(|m| m.get(key)) {
            Some(s) => (&s.policies, s.needs),
            None => (&self.policies, Needs::ALL),
        }
    }

    pub(super) fn decide(
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
            agent: agent.clone(),
            workflow: "self-check".into(),
            objective: "self-check".into(),
            scopes: vec![],
            state: crate::domain::TaskState::Active,
            opened_by: agent.clone(),
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
