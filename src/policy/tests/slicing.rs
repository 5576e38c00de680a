//! Slicing: a policy that could apply is never skipped, and a decision carries
//! every entity its slice's policies can read.
use super::*;
use std::str::FromStr;

#[test]
fn slicing_never_skips_a_policy_that_could_apply() {
    // Policies on another tool or workflow, or on another action, are skipped;
    // anything the slicer cannot rule out is kept.
    let set = cedar_policy::PolicySet::from_str(
        r#"
        @id("github-only") permit (principal, action, resource in Mayfly::Tool::"github");
        @id("crm-pattern") permit (principal, action, resource in Mayfly::Resource::"crm-api/customers/**");
        @id("start-only") permit (principal, action == Mayfly::Action::"StartTask", resource);
        @id("payments-wf") permit (principal, action, resource == Mayfly::Workflow::"payments");
        @id("group") permit (principal, action in [Mayfly::Action::"SomeGroup"], resource);
        @id("any") forbid (principal, action, resource);
        "#,
    )
    .unwrap();
    let kept = |act: &str, key: &str| -> Vec<String> {
        let mut v: Vec<String> = set
            .policies()
            .filter(|p| crate::policy::slice::could_apply(p, act, key))
            .map(|p| p.annotation("id").unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        kept("Mint", "crm-api"),
        ["any", "crm-pattern", "group", "payments-wf"]
    );
    assert_eq!(
        kept("Mint", "github"),
        ["any", "github-only", "group", "payments-wf"]
    );
    assert_eq!(
        kept("StartTask", "payments"),
        [
            "any",
            "crm-pattern",
            "github-only",
            "group",
            "payments-wf",
            "start-only"
        ]
    );
    assert_eq!(
        kept("StartTask", "support-triage"),
        ["any", "crm-pattern", "github-only", "group", "start-only"]
    );
}

#[test]
fn policies_can_read_attributes_of_workflows_and_tools_from_the_entities_file() {
    // Both forbids are false with the real attributes; had the entities been left
    // out, reading them would be an evaluation error, which denies.
    let dir = policy_dir(
        r#"
@id("huge-budgets") forbid (principal, action == Mayfly::Action::"Mint", resource)
when { context.workflow.max_tokens > 1000 };
@id("public-tools") forbid (principal, action == Mayfly::Action::"Mint", resource)
when { resource.tool.sensitivity == "public" };
"#,
    );
    let p = CedarPolicy::load(dir.path(), "prod-eu").unwrap();
    ticket(&p, "tickets/4711").unwrap();
    crm_read(&p).unwrap();
}

#[test]
fn only_policies_that_read_file_entities_make_decisions_load_them() {
    let set = cedar_policy::PolicySet::from_str(
        r#"
        @id("plain") permit (principal, action, resource)
        when { principal.path like "/agent/*" && resource.sensitivity == "x" && context.task.tokens_minted > 1
               && context.agent.trust_domain == "t" && context.workflow == Mayfly::Workflow::"w" };
        @id("workflow") permit (principal, action, resource) when { context.workflow.max_tokens > 1 };
        @id("tool") permit (principal, action, resource) when { resource.tool has sensitivity };
        @id("literal") permit (principal, action, resource) when { Mayfly::Tool::"t".sensitivity == "x" };
        "#,
    )
    .unwrap();
    for p in set.policies() {
        let id = p.annotation("id").unwrap();
        assert_eq!(
            crate::policy::slice::reads_file_entity_attributes(p),
            id != "plain",
            "{id}"
        );
    }
}

#[test]
fn only_policies_that_can_reach_the_task_make_decisions_build_it() {
    let set = cedar_policy::PolicySet::from_str(
        r#"
        @id("plain") @reason("tasks and Task in annotations decide nothing")
        permit (principal, action, resource)
        when { principal.path like "/agent/*" && context.tokens_minted < 5 };
        @id("attr") permit (principal, action, resource) when { context.task.tokens_minted > 1 };
        @id("has") permit (principal, action, resource) when { context has task };
        @id("in") forbid (principal, action, resource) when { context.task in Mayfly::Workflow::"w" };
        @id("is") forbid (principal, action, resource) when { context.workflow is Mayfly::Task };
        @id("literal") forbid (principal, action, resource) when { Mayfly::Task::"t" in Mayfly::Workflow::"w" };
        "#,
    )
    .unwrap();
    for p in set.policies() {
        let id = p.annotation("id").unwrap();
        assert_eq!(
            crate::policy::slice::mentions_task(p),
            id != "plain",
            "{id}"
        );
    }
}

#[test]
fn a_forbid_on_the_tasks_workflow_membership_still_applies() {
    // Without the task entity, `context.task in ...` would be false, not an
    // error: the forbid below would silently stop applying.
    let dir = policy_dir(
        r#"
@id("no-support-tickets") @reason("membership of the task decides")
forbid (principal, action == Mayfly::Action::"Mint", resource in Mayfly::Tool::"tickets")
when { context.task in Mayfly::Workflow::"support-triage" };
"#,
    );
    let p = CedarPolicy::load(dir.path(), "prod-eu").unwrap();
    let d = ticket(&p, "tickets/4711").unwrap_err();
    assert_eq!(d.policies, vec!["no-support-tickets".to_string()]);
    // The CRM slice has no policy that reaches the task, and still permits.
    crm_read(&p).unwrap();
}
