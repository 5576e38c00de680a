//! Loading errors (each naming file, line and column where it can) and reload.
use super::*;

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
