//! Decisions with the example policies (`examples/policies`), without a server;
//! `loading` and `slicing` beside them.
use super::cases::{CaseFile, run_case};
use super::*;
use crate::domain::{TaskId, TaskState};
use std::path::{Path, PathBuf};

mod loading;
mod slicing;

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
        agent: SpiffeId::parse(agent).unwrap(),
        workflow: workflow.into(),
        objective: "test".into(),
        scopes: vec![],
        state: TaskState::Active,
        opened_by: SpiffeId::parse("spiffe://example.org/orchestrator/main").unwrap(),
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
