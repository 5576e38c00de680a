//! Decisions with the example policies (`examples/policies`), loading errors and
//! reload, without a server.
use super::cases::{CaseFile, run_case};
use super::*;
use crate::domain::{TaskId, TaskState};
use std::path::{Path, PathBuf};
use std::str::FromStr;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies")
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn scope(s: &str) -> Scope {
    let p: Vec<&str> = s.split(' ').collect();
    Scope::declared(p[0], p[1], p[2]).unwrap()
}

/// 10:00 UTC: inside the payments workflow's office hours.
fn office_hours() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_428_000).unwrap()
}

fn task(agent: &str, workflow: &str) -> Task {
    let now = office_hours();
    Task {
        id: TaskId::new(),
        agent: agent.into(),
        workflow: workflow.into(),
        objective: "test".into(),
        scopes: vec![],
        state: TaskState::Active,
        opened_by: "spiffe://example.org/orchestrator/main".into(),
        created_at: now - Duration::from_secs(60),
        expires_at: now + Duration::from_secs(1200),
        ended_at: None,
        end_reason: None,
        tokens_minted: 0,
    }
}

fn mint(
    p: &CedarPolicy,
    env: &str,
    agent: &str,
    wf: &str,
    s: &str,
    ttl: u64,
) -> Result<Permit, Denied> {
    let t = task(agent, wf);
    p.mint_in(
        env,
        &MintInput {
            agent: &id(agent),
            task: &t,
            scope: &scope(s),
            requested_ttl: Duration::from_secs(ttl),
            delegation_depth: 0,
            now: office_hours(),
        },
    )
}

const SUPPORT: &str = "spiffe://example.org/agent/support-eu-1";
const CODER: &str = "spiffe://example.org/agent/coding-1";
const FINANCE: &str = "spiffe://example.org/agent/finance-1";

#[test]
fn every_example_case_passes() {
    let p = CedarPolicy::load(&examples(), "prod-eu").unwrap();
    let text = std::fs::read_to_string(examples().join("cases.toml")).unwrap();
    let set: CaseFile = toml::from_str(&text).unwrap();
    assert!(set.cases.len() >= 15);
    for c in &set.cases {
        assert_eq!(run_case(&p, "prod-eu", c), Ok(None), "{}", c.name);
    }
}

#[test]
fn a_permit_names_the_policy_that_permitted_it() {
    let p = CedarPolicy::load(&examples(), "prod-eu").unwrap();
    let permit = crm_read(&p).unwrap();
    assert_eq!(permit.policies, vec!["support-mint".to_string()]);
}

#[test]
fn an_explicit_forbid_wins_over_a_permit_and_names_itself_with_its_reason() {
    let p = CedarPolicy::load(&examples(), "prod-eu").unwrap();
    // coding-repos permits pushes to branches; never-push-to-main forbids main.
    mint(
        &p,
        "prod-eu",
        CODER,
        "code-review",
        "github repos/acme/api/branches/fix-1 push",
        60,
    )
    .unwrap();
    let d = mint(
        &p,
        "prod-eu",
        CODER,
        "code-review",
        "github repos/acme/api/branches/main push",
        60,
    )
    .unwrap_err();
    assert_eq!(d.policies, vec!["never-push-to-main".to_string()]);
    assert!(
        d.reason
            .contains("forbidden by policy never-push-to-main (no agent pushes to main"),
        "{}",
        d.reason
    );
}

#[test]
fn no_permit_is_a_denial_that_says_so() {
    let p = CedarPolicy::load(&examples(), "prod-eu").unwrap();
    let d = mint(
        &p,
        "prod-eu",
        SUPPORT,
        "support-triage",
        "crm-api customers/us/1 read",
        60,
    )
    .unwrap_err();
    assert!(d.policies.is_empty());
    assert!(
        d.reason
            .starts_with("no policy permits minting crm-api/customers/us/1#read"),
        "{}",
        d.reason
    );
}

#[test]
fn the_environment_and_the_data_sensitivity_change_the_outcome() {
    let p = CedarPolicy::load(&examples(), "prod-eu").unwrap();
    // payments-api is restricted: fine in prod-eu, refused anywhere else.
    mint(
        &p,
        "prod-eu",
        FINANCE,
        "payments",
        "payments-api invoices/881 read",
        60,
    )
    .unwrap();
    let d = mint(
        &p,
        "dev-us",
        FINANCE,
        "payments",
        "payments-api invoices/881 read",
        60,
    )
    .unwrap_err();
    assert_eq!(
        d.policies,
        vec!["restricted-data-stays-in-prod-eu".to_string()]
    );
    // tickets are internal: the environment does not matter.
    mint(
        &p,
        "dev-us",
        SUPPORT,
        "support-triage",
        "tickets tickets/4711 comment",
        60,
    )
    .unwrap();
}

#[test]
fn the_requested_ttl_changes_the_outcome_for_restricted_data() {
    let p = CedarPolicy::load(&examples(), "prod-eu").unwrap();
    mint(
        &p,
        "prod-eu",
        FINANCE,
        "payments",
        "payments-api invoices/881 read",
        120,
    )
    .unwrap();
    let d = mint(
        &p,
        "prod-eu",
        FINANCE,
        "payments",
        "payments-api invoices/881 read",
        121,
    )
    .unwrap_err();
    assert_eq!(d.policies, vec!["restricted-data-short-lived".to_string()]);
}

#[test]
fn a_wildcard_request_is_as_sensitive_as_the_most_sensitive_data_it_reaches() {
    let p = CedarPolicy::load(&examples(), "prod-eu").unwrap();
    // customers/eu/** reaches customers/eu/*/payment-methods (restricted).
    let d = mint(
        &p,
        "prod-eu",
        SUPPORT,
        "support-triage",
        "crm-api customers/eu/** read",
        60,
    )
    .unwrap_err();
    assert!(
        d.policies
            .contains(&"no-payment-methods-for-support".to_string()),
        "{d:?}"
    );
    // So is a request for the declared pattern itself.
    let d = mint(
        &p,
        "prod-eu",
        SUPPORT,
        "support-triage",
        "crm-api customers/eu/*/payment-methods read",
        60,
    )
    .unwrap_err();
    assert!(
        d.policies
            .contains(&"no-payment-methods-for-support".to_string()),
        "{d:?}"
    );
}

fn policy_dir(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "schema.cedarschema",
        "entities.json",
        "support.cedar",
        "guardrails.cedar",
    ] {
        std::fs::copy(examples().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("extra.cedar"), extra).unwrap();
    dir
}

#[test]
fn a_syntax_error_is_refused_with_file_line_and_column() {
    let dir = policy_dir(
        "// one\n// two\npermit (principal, action, resource) when { principal ==  };\n",
    );
    let e = CedarPolicy::load(dir.path(), "prod-eu")
        .err()
        .unwrap()
        .to_string();
    let file = dir.path().join("extra.cedar").display().to_string();
    assert!(e.starts_with(&format!("{file}:3:")), "{e}");
}

#[test]
fn a_policy_that_does_not_fit_the_schema_is_refused_naming_it_and_its_line() {
    let dir = policy_dir(
        "\n@id(\"typo\")\npermit (principal, action == Mayfly::Action::\"Mint\", resource)\nwhen { resource.sensitivty == \"public\" };\n",
    );
    let e = CedarPolicy::load(dir.path(), "prod-eu")
        .err()
        .unwrap()
        .to_string();
    let file = dir.path().join("extra.cedar").display().to_string();
    assert!(e.contains(&format!("{file}:4:")), "{e}");
    assert!(e.contains("policy typo"), "{e}");
    assert!(e.contains("sensitivty"), "{e}");
}

#[test]
fn bad_workflow_limits_and_duplicate_policy_ids_are_refused() {
    let dir = policy_dir("@id(\"support-mint\")\npermit (principal, action, resource);\n");
    let e = CedarPolicy::load(dir.path(), "prod-eu")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("policy id \"support-mint\" is also used in"),
        "{e}"
    );

    let dir = policy_dir("");
    let entities = std::fs::read_to_string(dir.path().join("entities.json")).unwrap();
    std::fs::write(
        dir.path().join("entities.json"),
        entities.replacen("\"max_tokens\": 50", "\"max_tokens\": 0", 1),
    )
    .unwrap();
    let e = CedarPolicy::load(dir.path(), "prod-eu")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("support-triage") && e.contains("max_tokens must be between 1"),
        "{e}"
    );
}

#[test]
fn an_invalid_reload_keeps_the_previous_set_and_reports_why() {
    let dir = policy_dir("");
    let p = CedarPolicy::load(dir.path(), "prod-eu").unwrap();
    crm_read(&p).unwrap();

    std::fs::write(
        dir.path().join("extra.cedar"),
        "permit (principal, action, resource) when {",
    )
    .unwrap();
    assert!(p.reload_if_changed().is_err());
    let status = p.status();
    assert_eq!(status.failed_reloads, 1);
    assert!(status.last_error.unwrap().contains("extra.cedar:1:"));
    // The old set still decides.
    crm_read(&p).unwrap();
    // The same broken files are not retried on every tick.
    assert_eq!(p.reload_if_changed(), Ok(false));

    // A valid new set replaces it whole: here a forbid for all crm reads.
    std::fs::write(
        dir.path().join("extra.cedar"),
        "@id(\"crm-freeze\")\n@reason(\"crm is frozen\")\nforbid (principal, action, resource in Mayfly::Tool::\"crm-api\");\n",
    )
    .unwrap();
    assert_eq!(p.reload_if_changed(), Ok(true));
    assert!(p.status().last_error.is_none());
    let d = crm_read(&p).unwrap_err();
    assert!(
        d.reason.contains("crm-freeze (crm is frozen)"),
        "{}",
        d.reason
    );
}

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
            .filter(|p| super::load::could_apply(p, act, key))
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
fn declared_scopes_are_visible_to_policies_at_start_and_at_mint() {
    let dir = policy_dir(
        r#"
@id("one-scope-with-crm")
@reason("a task that reads the CRM declares nothing else")
forbid (principal, action == Mayfly::Action::"StartTask", resource)
when { context.scopes.contains("crm-api/customers/eu/*#read") && context.scope_count > 1 };

@id("no-tickets-from-crm-tasks")
forbid (principal, action == Mayfly::Action::"Mint", resource in Mayfly::Tool::"tickets")
when { context.task.scopes.contains("crm-api/customers/eu/*#read") };
"#,
    );
    let p = CedarPolicy::load(dir.path(), "prod-eu").unwrap();
    let start = |scopes: &[&str]| {
        let scopes: Vec<Scope> = scopes.iter().map(|s| scope(s)).collect();
        p.start_in(
            "prod-eu",
            &StartInput {
                orchestrator: &id("spiffe://example.org/orchestrator/main"),
                agent: &id(SUPPORT),
                workflow: "support-triage",
                objective: "test",
                scopes: &scopes,
                duration: Duration::from_secs(600),
                now: office_hours(),
            },
        )
    };
    start(&["crm-api customers/eu/* read"]).unwrap();
    let d = start(&["crm-api customers/eu/* read", "tickets tickets/1 comment"]).unwrap_err();
    assert_eq!(d.policies, vec!["one-scope-with-crm".to_string()]);

    let mut t = task(SUPPORT, "support-triage");
    let ticket = scope("tickets tickets/1 comment");
    let mint = |t: &Task| {
        p.mint_in(
            "prod-eu",
            &MintInput {
                agent: &id(SUPPORT),
                task: t,
                scope: &ticket,
                requested_ttl: Duration::from_secs(60),
                delegation_depth: 0,
                now: office_hours(),
            },
        )
    };
    t.scopes = vec![scope("tickets tickets/* comment")];
    mint(&t).unwrap();
    t.scopes.push(scope("crm-api customers/eu/* read"));
    assert_eq!(
        mint(&t).unwrap_err().policies,
        vec!["no-tickets-from-crm-tasks".to_string()]
    );
}

/// Appends entities to the copied entities file.
fn add_entities(dir: &Path, extra: serde_json::Value) {
    let path = dir.join("entities.json");
    let mut all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    all.extend(extra.as_array().unwrap().iter().cloned());
    std::fs::write(&path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
}

fn declared(pattern: &str, env: &str, parents: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "uid": { "type": "Mayfly::Resource", "id": format!("tickets/{pattern}") },
        "attrs": {
            "tool": { "__entity": { "type": "Mayfly::Tool", "id": "tickets" } },
            "path": pattern,
            "sensitivity": "internal", "destination": "internal", "environment": env
        },
        "parents": parents
    })
}

fn tool_parent(tool: &str) -> serde_json::Value {
    serde_json::json!({ "type": "Mayfly::Tool", "id": tool })
}

/// The support agent reads one EU customer: permitted by the example policies.
fn crm_read(p: &CedarPolicy) -> Result<Permit, Denied> {
    mint(
        p,
        "prod-eu",
        SUPPORT,
        "support-triage",
        "crm-api customers/eu/42 read",
        60,
    )
}

fn ticket(p: &CedarPolicy, res: &str) -> Result<Permit, Denied> {
    mint(
        p,
        "prod-eu",
        SUPPORT,
        "support-triage",
        &format!("tickets {res} comment"),
        60,
    )
}

#[test]
fn a_forbid_on_an_action_group_applies_to_its_member_actions() {
    let dir = policy_dir(
        "@id(\"no-data-access-to-tickets\")\nforbid (principal, action in Mayfly::Action::\"DataAccess\", resource in Mayfly::Tool::\"tickets\");\n",
    );
    let schema = std::fs::read_to_string(dir.path().join("schema.cedarschema")).unwrap();
    let schema = schema
        .replace(
            "  action DeclareScope appliesTo",
            "  action DataAccess;\n  action DeclareScope in [DataAccess] appliesTo",
        )
        .replace(
            "  action Mint appliesTo",
            "  action Mint in [DataAccess] appliesTo",
        );
    std::fs::write(dir.path().join("schema.cedarschema"), schema).unwrap();
    let p = CedarPolicy::load(dir.path(), "prod-eu").unwrap();
    let d = ticket(&p, "tickets/4711").unwrap_err();
    assert_eq!(d.policies, vec!["no-data-access-to-tickets".to_string()]);
}

#[test]
fn a_request_for_exactly_a_declared_pattern_keeps_that_patterns_parents() {
    let dir = policy_dir(
        "@id(\"no-notes\")\nforbid (principal, action == Mayfly::Action::\"Mint\", resource in Mayfly::Resource::\"tickets/notes\");\n",
    );
    add_entities(
        dir.path(),
        serde_json::json!([
            declared(
                "notes",
                "prod-eu",
                serde_json::json!([tool_parent("tickets")])
            ),
            declared(
                "tickets/*/notes",
                "prod-eu",
                serde_json::json!([tool_parent("tickets"), { "type": "Mayfly::Resource", "id": "tickets/notes" }])
            ),
        ]),
    );
    let p = CedarPolicy::load(dir.path(), "prod-eu").unwrap();
    ticket(&p, "tickets/42").unwrap();
    for res in ["tickets/42/notes", "tickets/*/notes"] {
        let d = ticket(&p, res).unwrap_err();
        assert_eq!(d.policies, vec!["no-notes".to_string()], "{res}");
    }
}

#[test]
fn a_declared_resource_inside_another_tool_is_refused_at_load() {
    let dir = policy_dir("");
    add_entities(
        dir.path(),
        serde_json::json!([declared(
            "tickets/*/notes",
            "prod-eu",
            serde_json::json!([tool_parent("tickets"), tool_parent("crm-api")])
        )]),
    );
    let e = CedarPolicy::load(dir.path(), "prod-eu")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("may only be in tool \"tickets\""), "{e}");
    assert!(e.contains("crm-api"), "{e}");
}

#[test]
fn which_declared_pattern_gives_the_attributes_does_not_depend_on_hash_order() {
    let dir = policy_dir(
        "@id(\"not-us\")\nforbid (principal, action == Mayfly::Action::\"Mint\", resource)\nwhen { resource.environment == \"prod-us\" };\n",
    );
    // Both cover tickets/eu/42 and are equally specific.
    add_entities(
        dir.path(),
        serde_json::json!([
            declared(
                "tickets/eu/*",
                "prod-eu",
                serde_json::json!([tool_parent("tickets")])
            ),
            declared(
                "tickets/*/42",
                "prod-us",
                serde_json::json!([tool_parent("tickets")])
            ),
        ]),
    );
    let outcomes: std::collections::HashSet<bool> = (0..20)
        .map(|_| {
            let p = CedarPolicy::load(dir.path(), "prod-eu").unwrap();
            ticket(&p, "tickets/eu/42").is_ok()
        })
        .collect();
    assert_eq!(outcomes.len(), 1, "the same decision on every load");
}

#[test]
fn templates_and_policies_without_an_id_are_refused() {
    let dir = policy_dir("permit (principal == ?principal, action, resource);\n");
    let e = CedarPolicy::load(dir.path(), "prod-eu")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("templates are not supported"), "{e}");
    let dir = policy_dir("forbid (principal, action, resource) when { context has agent };\n");
    let e = CedarPolicy::load(dir.path(), "prod-eu")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs an @id"), "{e}");
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
            super::load::reads_file_entity_attributes(p),
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
        assert_eq!(super::load::mentions_task(p), id != "plain", "{id}");
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

#[test]
fn a_sub_agents_decision_sees_the_task_owned_by_the_tasks_agent() {
    let dir = policy_dir(
        r#"
@id("sub-agents-never-own")
@reason("a sub-agent is never the task's agent")
forbid (principal, action == Mayfly::Action::"Mint", resource)
when { context.delegation_depth > 0 && context.task.agent == principal };

@id("owner-is-support")
@reason("delegated tokens only in tasks of EU support agents")
forbid (principal, action == Mayfly::Action::"Mint", resource)
when { context.delegation_depth > 0 && !(context.task.agent.path like "/agent/support-eu-*") };
"#,
    );
    let p = CedarPolicy::load(dir.path(), "prod-eu").unwrap();
    let t = task(SUPPORT, "support-triage");
    let decide = |agent: &str, depth: u32| {
        p.mint_in(
            "prod-eu",
            &MintInput {
                agent: &id(agent),
                task: &t,
                scope: &scope("crm-api customers/eu/42 read"),
                requested_ttl: Duration::from_secs(60),
                delegation_depth: depth,
                now: office_hours(),
            },
        )
    };
    decide(SUPPORT, 0).expect("the task's agent itself");
    decide("spiffe://example.org/agent/support-eu-2", 1)
        .expect("a sub-agent: the task is still the support agent's");
}
