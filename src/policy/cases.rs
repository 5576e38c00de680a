//! `mayfly policy test`: decision cases for policy authors. Each case names a
//! principal, an action, a resource and context, and the decision it expects.
use super::{CedarPolicy, MintInput, StartInput};
use crate::domain::SpiffeId;
use crate::domain::{Scope, Task, TaskId, TaskState};
use serde::Deserialize;
use std::time::Duration;
use time::OffsetDateTime;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
    /// Permitted, but the action waits for a security team's approval.
    #[serde(rename = "step_up")]
    StepUp,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An orchestrator opens a task (with its declared scopes).
    Start,
    /// An agent mints a token in a task.
    Mint,
}

/// One decision to check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub action: Kind,
    /// The orchestrator (start) or the agent (mint): a SPIFFE ID.
    pub principal: String,
    pub workflow: String,
    /// start: the agent the task is for.
    pub agent: Option<String>,
    /// start: declared scopes, each "<audience> <resource> <action>".
    #[serde(default)]
    pub scopes: Vec<String>,
    /// start: the task's duration.
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// mint: the requested scope.
    pub scope: Option<String>,
    /// mint: the requested TTL.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// mint: tokens the task has minted already.
    #[serde(default)]
    pub tokens_minted: u32,
    /// mint: the token's delegation depth (0, the default, for a token the task's
    /// agent mints itself; the principal is then a sub-agent).
    #[serde(default)]
    pub depth: u32,
    /// mint: how long the task has been running.
    #[serde(default, with = "humantime_serde")]
    pub task_age: Option<Duration>,
    /// `context.environment`; default the one given to `mayfly policy test`.
    pub environment: Option<String>,
    /// The time of the request (RFC 3339); default now.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub now: Option<OffsetDateTime>,
    pub expect: Expect,
    /// When set, a denial's reason must contain this text.
    pub reason_contains: Option<String>,
}

/// The outcome of one case: `None` when it matched, else what differed.
pub fn run_case(
    policy: &CedarPolicy,
    environment: &str,
    c: &Case,
) -> Result<Option<String>, String> {
    let environment = c.environment.as_deref().unwrap_or(environment);
    let now = c.now.unwrap_or_else(OffsetDateTime::now_utc);
    let principal = SpiffeId::parse(&c.principal).map_err(|e| format!("principal: {e}"))?;
    let scope = |s: &str| -> Result<Scope, String> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        match parts.as_slice() {
            [a, r, x] => Scope::declared(*a, *r, *x).map_err(|e| format!("scope {s:?}: {e}")),
            _ => Err(format!(
                "scope {s:?} must be \"<audience> <resource> <action>\""
            )),
        }
    };
    let result = match c.action {
        Kind::Start => {
            let agent = SpiffeId::parse(c.agent.as_deref().ok_or("agent is required for start")?)
                .map_err(|e| format!("agent: {e}"))?;
            let scopes = c
                .scopes
                .iter()
                .map(|s| scope(s))
                .collect::<Result<Vec<_>, _>>()?;
            policy.start_in(
                environment,
                &StartInput {
                    orchestrator: &principal,
                    agent: &agent,
                    workflow: &c.workflow,
                    objective: &c.name,
                    scopes: &scopes,
                    duration: c.duration.unwrap_or(Duration::from_secs(600)),
                    now,
                },
            )
        }
        Kind::Mint => {
            let requested = scope(c.scope.as_deref().ok_or("scope is required for mint")?)?;
            let age = c.task_age.unwrap_or_default();
            // A case file is outside input: a time or an age past the calendar
            // (time's years -9999 to 9999) is an error of the case, not a panic.
            let created_at = time::Duration::try_from(age)
                .ok()
                .and_then(|age| now.checked_sub(age))
                .ok_or_else(|| {
                    format!(
                        "task_age {} reaches before the earliest time there is",
                        humantime::format_duration(age)
                    )
                })?;
            let expires_at = now.checked_add(time::Duration::hours(1)).ok_or_else(|| {
                format!("now {now}: the task's hour runs past the latest time there is")
            })?;
            let task = Task {
                id: TaskId::new(),
                agent: principal.clone(),
                workflow: c.workflow.clone(),
                objective: c.name.clone(),
                scopes: vec![requested.clone()],
                state: TaskState::Active,
                opened_by: SpiffeId::parse("spiffe://mayfly.invalid/policy-test")
                    .map_err(|e| e.to_string())?,
                created_at,
                expires_at,
                ended_at: None,
                end_reason: None,
                tokens_minted: c.tokens_minted,
            };
            policy.mint_in(
                environment,
                &MintInput {
                    agent: &principal,
                    task: &task,
                    scope: &requested,
                    requested_ttl: c.ttl.unwrap_or(Duration::from_secs(300)),
                    delegation_depth: c.depth,
                    now,
                },
            )
        }
    };
    let step_up = |p: &super::Permit| {
        c.scope.as_deref().is_some_and(|s| {
            s.split_whitespace()
                .nth(2)
                .is_some_and(|a| p.limits.step_up_actions.iter().any(|x| x == a))
        }) && c.action == Kind::Mint
    };
    Ok(match (c.expect, result) {
        (Expect::Allow, Ok(p)) if step_up(&p) => Some(format!(
            "expected allow, got step_up (permitted by {}, but the workflow's step_up_actions hold the action)",
            p.policies.join(", ")
        )),
        (Expect::StepUp, Ok(p)) if !step_up(&p) => Some(format!(
            "expected step_up, got allow by {} without approval",
            p.policies.join(", ")
        )),
        (Expect::Allow | Expect::StepUp, Ok(_)) => None,
        (Expect::Allow | Expect::StepUp, Err(d)) => Some(format!(
            "expected {}, got deny: {}",
            if c.expect == Expect::Allow {
                "allow"
            } else {
                "step_up"
            },
            d.reason
        )),
        (Expect::Deny, Ok(p)) => Some(format!(
            "expected deny, got allow by {}",
            p.policies.join(", ")
        )),
        (Expect::Deny, Err(d)) => match &c.reason_contains {
            Some(want) if !d.reason.contains(want.as_str()) => Some(format!(
                "denied as expected, but the reason {:?} lacks {want:?}",
                d.reason
            )),
            _ => None,
        },
    })
}

/// `mayfly policy validate`: prints its report and returns the exit code (0
/// valid, 2 an invalid policy set).
pub fn validate(dir: &std::path::Path) -> u8 {
    match CedarPolicy::load(dir, "validate") {
        Ok(p) => {
            println!("{}: {} policies valid", dir.display(), p.status().policies);
            0
        }
        Err(e) => {
            eprintln!("error: {} is not a valid policy set:\n{e}", dir.display());
            2
        }
    }
}

/// `mayfly policy test`: runs every case, prints its report and returns the exit
/// code (0 every case passed, 1 some case mismatched, 2 could not run: an
/// invalid policy set or cases file).
pub fn test(dir: &std::path::Path, cases: &std::path::Path, environment: &str) -> u8 {
    let policy = match CedarPolicy::load(dir, environment) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {} is not a valid policy set:\n{e}", dir.display());
            return 2;
        }
    };
    let set: CaseFile = match std::fs::read_to_string(cases)
        .map_err(|e| e.to_string())
        .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {} is not a valid cases file: {e}", cases.display());
            return 2;
        }
    };
    let mut failed = 0;
    for c in &set.cases {
        match run_case(&policy, environment, c) {
            Ok(None) => println!("ok    {}", c.name),
            Ok(Some(diff)) => {
                failed += 1;
                println!("FAIL  {}\n      {diff}", c.name);
            }
            Err(e) => {
                failed += 1;
                println!("ERROR {}\n      {e}", c.name);
            }
        }
    }
    let total = set.cases.len();
    println!("{total} cases, {} passed, {failed} failed", total - failed);
    u8::from(failed > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::LazyLock;

    /// The example policies, loaded once.
    pub(super) static POLICY: LazyLock<CedarPolicy> = LazyLock::new(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
        CedarPolicy::load(&dir, "prod-eu").expect("the example policies load")
    });

    pub(super) fn cases(text: &str) -> CaseFile {
        toml::from_str(text).expect("a valid cases file")
    }

    const MINT: &str = r#"
name = "mint"
action = "mint"
principal = "spiffe://example.org/agent/support-eu-1"
workflow = "support-triage"
scope = "crm-api customers/eu/42 read"
expect = "allow"
"#;

    #[test]
    fn a_task_age_beyond_the_calendar_is_an_error_not_a_panic() {
        let set = cases(&format!("[[case]]{MINT}task_age = \"100000years\"\n"));
        let got = run_case(&POLICY, "prod-eu", &set.cases[0]);
        assert!(
            matches!(&got, Err(e) if e.starts_with("task_age")),
            "{got:?}"
        );
    }

    #[test]
    fn a_time_at_the_end_of_the_calendar_is_an_error_not_a_panic() {
        let set = cases(&format!("[[case]]{MINT}now = \"9999-12-31T23:59:59Z\"\n"));
        let got = run_case(&POLICY, "prod-eu", &set.cases[0]);
        assert!(matches!(&got, Err(e) if e.starts_with("now")), "{got:?}");
    }
}

#[cfg(test)]
mod properties {
    use super::tests::POLICY;
    use super::*;
    use crate::testing::{any_text, matching, toml_string as quoted};
    use proptest::prelude::*;

    fn one_of(values: &[&'static str]) -> impl Strategy<Value = String> + use<> {
        prop::sample::select(values.to_vec()).prop_map(String::from)
    }

    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            9 => one_of(&[
                "spiffe://example.org/orchestrator/main",
                "spiffe://example.org/orchestrator/finance",
                "spiffe://example.org/agent/support-eu-1",
                "spiffe://example.org/agent/coding-1",
                "spiffe://example.org/agent/finance-1",
            ]),
            1 => matching("(spiffe://|)[a-z.]{0,8}(/[a-z0-9*.-]{0,6}){0,3}"),
        ]
    }

    fn scope() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => one_of(&[
                "crm-api customers/eu/* read",
                "crm-api customers/eu/42 read",
                "crm-api customers/eu/42/payment-methods read",
                "tickets tickets/4711 comment",
                "payments invoices/1 pay",
                "repo src/** write",
            ]),
            1 => matching("[a-z-]{0,8}( +[a-z0-9/*.]{0,10}){0,4}"),
            1 => any_text(),
        ]
    }

    fn duration() -> impl Strategy<Value = String> {
        prop_oneof![
            9 => one_of(&["0s", "1s", "2m", "30m", "2h", "1d", "100000years", "500000000000years"]),
            1 => matching("[0-9]{1,20} ?(s|m|h|d|y|years|parsecs|)"),
        ]
    }

    fn time() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => one_of(&[
                "2026-11-20T10:00:00Z",
                "2026-11-20T23:30:00+02:00",
                "0000-01-01T00:00:00Z",
                "0000-01-01T00:00:00+23:59",
                "9999-12-31T23:59:59Z",
                "9999-12-31T23:00:00-23:59",
                "1970-01-01T00:00:00Z",
            ]),
            // Any year, hour and offset; days and months that exist.
            1 => matching("[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](Z|[+-][01][0-9]:[0-5][0-9])"),
        ]
    }

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            9 => Just("0".to_string()),
            9 => any::<u32>().prop_map(|n| n.to_string()),
            1 => Just("-1".to_string()),
            1 => Just("4294967296".to_string()),
        ]
    }

    /// One `[[case]]` table: every field present or not (the required ones
    /// mostly present, so that most cases reach a decision), with values the
    /// policies know, values at the edges of their types, and others.
    fn case() -> impl Strategy<Value = String> {
        let field = |name: &'static str, present: f64, value: BoxedStrategy<String>| {
            prop::option::weighted(present, value.prop_map(move |v| format!("{name} = {v}\n")))
        };
        let q = |s: BoxedStrategy<String>| s.prop_map(|v| quoted(&v)).boxed();
        let mostly = |valid: &[&'static str], other: &[&'static str]| {
            prop_oneof![29 => one_of(valid), 1 => one_of(other)].boxed()
        };
        let scopes = prop::collection::vec(scope(), 0..3).prop_map(|v| {
            format!(
                "[{}]",
                v.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", ")
            )
        });
        (
            (
                field(
                    "name",
                    0.97,
                    q(prop_oneof![4 => Just("c".to_string()), 1 => any_text()].boxed()),
                ),
                field(
                    "action",
                    0.97,
                    q(mostly(&["start", "mint"], &["stop", "Mint"])),
                ),
                field("principal", 0.97, q(id().boxed())),
                field(
                    "workflow",
                    0.97,
                    q(one_of(&["support-triage", "payments", "coding", "nope"]).boxed()),
                ),
                field("agent", 0.85, q(id().boxed())),
                field("scopes", 0.7, scopes.boxed()),
                field("duration", 0.5, q(duration().boxed())),
                field("scope", 0.85, q(scope().boxed())),
            ),
            (
                field("ttl", 0.5, q(duration().boxed())),
                field("tokens_minted", 0.3, number().boxed()),
                field("depth", 0.3, number().boxed()),
                field("task_age", 0.5, q(duration().boxed())),
                field(
                    "environment",
                    0.3,
                    q(one_of(&["prod-eu", "dev", ""]).boxed()),
                ),
                field("now", 0.5, q(time().boxed())),
                field(
                    "expect",
                    0.97,
                    q(mostly(&["allow", "deny", "step_up"], &["maybe"])),
                ),
                field(
                    "reason_contains",
                    0.3,
                    q(one_of(&["", "exceeds", "no policy"]).boxed()),
                ),
                prop::option::weighted(0.02, Just("bogus = 1\n".to_string())),
            ),
        )
            .prop_map(|(a, b)| {
                let (a0, a1, a2, a3, a4, a5, a6, a7) = a;
                let (b0, b1, b2, b3, b4, b5, b6, b7, b8) = b;
                let fields = [
                    a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7, b8,
                ];
                let mut t = String::from("[[case]]\n");
                for f in fields.into_iter().flatten() {
                    t += &f;
                }
                t
            })
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn any_text_is_a_cases_file_or_an_error_without_panicking(s in any_text()) {
            let _ = toml::from_str::<CaseFile>(&s);
        }

        #[test]
        fn any_case_runs_or_is_an_error_naming_the_field(text in case()) {
            if let Ok(set) = toml::from_str::<CaseFile>(&text) {
                for c in &set.cases {
                    if let Err(e) = run_case(&POLICY, "prod-eu", c) {
                        prop_assert!(
                            ["principal", "agent", "scope", "task_age", "now"]
                                .iter()
                                .any(|f| e.starts_with(f)),
                            "{e:?} names no field"
                        );
                    }
                }
            }
        }
    }
}
