//! `mayfly bench`: its flags to a [`Plan`] and the parties' files, the run,
//! and its report printed (JSON or one field for scripts, a summary for people).
use super::{Parties, Plan, Report, TaskPlan, run};
use crate::cli::{BenchArgs, ClientArgs, Output};
use crate::client::{Broker, Failed, Printer, Svid, exit, parse_scope, table, usage};
use crate::domain::Scope;
use serde_json::{Value, json};

/// The agent's and the orchestrator's SVIDs and the broker, read from the
/// files the flags name.
fn parties(client: &ClientArgs, args: &BenchArgs) -> anyhow::Result<Parties> {
    Ok(Parties {
        broker: Broker::from_args(client)?,
        agent: Svid::read(("--cert", &client.cert), ("--key", &client.key))?,
        orchestrator: Svid::read(
            ("--orchestrator-cert", &args.orchestrator_cert),
            ("--orchestrator-key", &args.orchestrator_key),
        )?,
    })
}

fn plan(args: &BenchArgs) -> anyhow::Result<Plan> {
    let s = parse_scope(&args.scope)?;
    let scope = Scope::declared(s.audience, s.resource, s.action)
        .map_err(|e| usage(format!("--scope {:?}: {e}", args.scope)))?;
    Ok(Plan {
        edge: args.edge,
        // clap bounds it to 1..=100,000.
        concurrency: usize::try_from(args.concurrency).unwrap_or(usize::MAX),
        new_connection: args.new_connection,
        rate: args.rate,
        hold: args.hold,
        ttl: args.ttl,
        request_timeout: args.timeout,
        tasks: TaskPlan {
            workflow: args.workflow.clone(),
            scope,
            duration: args.task_duration,
            budget: args.task_budget,
            shared: args.one_task,
            objective: "mayfly bench".into(),
        },
    })
}

pub async fn command(client: &ClientArgs, output: Output, args: &BenchArgs) -> anyhow::Result<()> {
    let out = Printer::new(output, client.field.clone());
    let plan = plan(args)?;
    // As the client commands: a file that cannot be used is exit code 3.
    let parties = parties(client, args).map_err(|e| Failed {
        code: exit::UNREACHABLE,
        message: format!("{e:#}"),
    })?;
    let report = run(plan, &parties, args.warmup, args.duration).await?;
    out.print_or_text(&report, || summary(&report))
}

/// The report for people: one line per figure, then the kinds of error.
fn summary(r: &Report) -> String {
    let l = &r.latency_ms;
    let mut rows = json!({
        "edge": r.edge.name(),
        "connections": if r.new_connection { "a new one per request" } else { "kept open" },
        "concurrency": r.concurrency,
        "rate_limit": r.rate_limit.map(|x| format!("{x}/s")),
        "seconds": r.seconds,
        "requests": r.requests,
        "mints": r.mints,
        "mints_per_second": r.mints_per_second,
        "errors": r.errors,
        "budget_refusals": r.budget_refusals,
        "tasks_opened": r.tasks_opened,
        "latency_ms": format!(
            "p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p99, l.p99_9, l.max
        ),
        "unmeasured": format!(
            "{:.1} s, {} mints, {} tasks opened, {} errors (the first mint and the warm-up)",
            r.unmeasured.seconds, r.unmeasured.mints, r.unmeasured.tasks_opened, r.unmeasured.errors
        ),
    });
    if let Value::Object(m) = &mut rows {
        if r.hold > 0 {
            m.insert(
                "held_connections".into(),
                format!("{} of {} open", r.held_connections, r.hold).into(),
            );
        }
        if let Some(rate) = r.rate_limit
            && r.seconds > 0.0
            && (r.requests as f64 / r.seconds) < 0.95 * rate
        {
            m.insert(
                "note".into(),
                "the workers fell behind --rate (latency counts from when each request was due): more --concurrency"
                    .into(),
            );
        }
    }
    let mut text = table(&rows);
    if !r.error_kinds.is_empty() {
        let kinds: Vec<Value> = r
            .error_kinds
            .iter()
            .map(|k| json!({"kind": k.kind, "count": k.count, "examples": k.examples.join(" | ")}))
            .collect();
        text.push('\n');
        text.push_str(&table(&Value::Array(kinds)));
    }
    text
}
