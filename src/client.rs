//! The client side of the CLI: an mTLS channel from a certificate, a key and a CA
//! bundle, and one function per client command. Output is JSON on stdout.
use crate::api::pb;
use crate::api::pb::admin_service_client::AdminServiceClient;
use crate::api::pb::task_service_client::TaskServiceClient;
use crate::api::pb::token_service_client::TokenServiceClient;
use crate::api::pb::verifier_service_client::VerifierServiceClient;
use crate::cli::{
    ApprovalsCommand, AuditCommand, ClientArgs, ClientCommand, FreezeTargetArg, Output,
    RevokeTarget, TaskCommand, TokenCommand,
};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Connects to the broker over mutual TLS with the caller's SVID.
pub async fn connect(args: &ClientArgs) -> anyhow::Result<Channel> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("{what}: cannot read {}", p.display()))
    };
    let cert = read("--cert", &args.cert)?;
    let key = read("--key", &args.key)?;
    let ca = read("--ca", &args.ca)?;
    let uri: tonic::transport::Uri = args
        .broker
        .parse()
        .with_context(|| format!("--broker {:?} is not a URL", args.broker))?;
    let host = match (&args.server_name, uri.host()) {
        (Some(name), _) => name.clone(),
        (None, Some(h)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        (None, None) => bail!("--broker {:?} has no host", args.broker),
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(host);
    Channel::builder(uri)
        .tls_config(tls)
        .context("TLS configuration")?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the broker at {}", args.broker))
}

/// Exit codes of the client commands, so scripts can branch on them.
pub mod exit {
    /// The command could not run as asked (bad flags: clap's own code).
    pub const USAGE: u8 = 2;
    /// The broker could not be reached: URL, CA, certificate or key.
    pub const UNREACHABLE: u8 = 3;
    /// Refused: no valid SVID, or the role or policy does not allow it.
    pub const REFUSED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    /// The state does not allow it now: task not active, budget spent, already
    /// decided or redeemed.
    pub const CONFLICT: u8 = 6;
    /// The broker's store is down: nothing was issued; retry later.
    pub const UNAVAILABLE: u8 = 7;
    /// The request is malformed; the message names the field.
    pub const INVALID: u8 = 8;
}

/// A client command that failed, with the exit code that says how.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failed {
    pub code: u8,
    pub message: String,
}

/// A flag's value that cannot be used (exit code 2, as clap's own).
fn usage(message: String) -> anyhow::Error {
    Failed {
        code: exit::USAGE,
        message,
    }
    .into()
}

/// A gRPC refusal as a message a person can act on, with its exit code.
fn status(e: tonic::Status) -> anyhow::Error {
    use tonic::Code as C;
    let (code, hint) = match e.code() {
        C::Unauthenticated => (
            exit::REFUSED,
            " (check --cert/--key: a valid SVID of this trust domain)",
        ),
        C::PermissionDenied => (exit::REFUSED, ""),
        C::NotFound => (exit::NOT_FOUND, ""),
        C::FailedPrecondition | C::ResourceExhausted | C::AlreadyExists | C::Aborted => {
            (exit::CONFLICT, "")
        }
        C::Unavailable => (exit::UNAVAILABLE, " (retry later)"),
        C::InvalidArgument | C::OutOfRange => (exit::INVALID, ""),
        _ => (1, ""),
    };
    Failed {
        code,
        message: format!("{:?}: {}{hint}", e.code(), e.message()),
    }
    .into()
}

/// "audience resource action", as the CLI takes scopes.
pub fn parse_scope(s: &str) -> anyhow::Result<pb::Scope> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    match parts.as_slice() {
        [a, r, x] => Ok(pb::Scope {
            audience: a.to_string(),
            resource: r.to_string(),
            action: x.to_string(),
        }),
        _ => Err(usage(format!(
            "scope {s:?} must be three words: \"<audience> <resource> <action>\""
        ))),
    }
}

/// `--checkpoint "<sequence>:<hash>"`, as `mayfly audit verify` printed it.
fn parse_checkpoint(c: &str) -> anyhow::Result<(u64, String)> {
    let (seq, hash) = c
        .split_once(':')
        .ok_or_else(|| usage("--checkpoint must be \"<sequence>:<hash>\"".into()))?;
    let seq = seq
        .parse()
        .map_err(|_| usage(format!("--checkpoint sequence {seq:?} is not a number")))?;
    Ok((seq, hash.to_string()))
}

fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => time::OffsetDateTime::from_unix_timestamp(t.seconds)
            .ok()
            .and_then(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .map(Value::String)
            .unwrap_or(Value::Null),
        None => Value::Null,
    }
}

fn scope_json(s: &Option<pb::Scope>) -> Value {
    s.as_ref()
        .map(|s| json!({"audience": s.audience, "resource": s.resource, "action": s.action}))
        .unwrap_or(Value::Null)
}

fn task_json(t: &pb::Task) -> Value {
    let state = pb::TaskState::try_from(t.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TASK_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| t.state.to_string());
    json!({
        "id": t.id, "agent": t.agent, "workflow": t.workflow, "objective": t.objective,
        "scopes": t.scopes.iter().map(|s| scope_json(&Some(s.clone()))).collect::<Vec<_>>(),
        "state": state, "opened_by": t.opened_by, "created_at": ts(&t.created_at),
        "expires_at": ts(&t.expires_at), "ended_at": ts(&t.ended_at),
        "end_reason": t.end_reason, "tokens_minted": t.tokens_minted,
    })
}

fn event_json(e: &pb::RevocationEvent) -> Value {
    use pb::revocation_target::Target as T;
    let target = match e.target.as_ref().and_then(|t| t.target.as_ref()) {
        Some(T::Token(j)) => json!({"token": j}),
        Some(T::Task(t)) => json!({"task": t}),
        Some(T::Agent(a)) => json!({"agent": a}),
        Some(T::Workflow(w)) => json!({"workflow": w}),
        Some(T::All(_)) => json!("all"),
        None => Value::Null,
    };
    json!({"sequence": e.sequence, "target": target, "reason": e.reason, "actor": e.actor,
           "trigger": e.trigger, "at": ts(&e.at)})
}

fn minted_json(r: &pb::MintTokenResponse) -> Value {
    json!({"token": r.token, "jti": r.jti, "expires_at": ts(&r.expires_at), "ttl_seconds": r.ttl_seconds})
}

fn approval_json(a: &pb::Approval) -> Value {
    let state = pb::ApprovalState::try_from(a.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("APPROVAL_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| a.state.to_string());
    json!({
        "id": a.id, "task": a.task_id, "requester": a.requester, "scope": scope_json(&a.scope),
        "ttl_seconds": a.ttl_seconds, "state": state, "workflow": a.workflow,
        "objective": a.objective, "created_at": ts(&a.created_at), "expires_at": ts(&a.expires_at),
        "decided_by": a.decided_by, "decided_at": ts(&a.decided_at),
        "decision_reason": a.decision_reason, "used_jti": a.used_jti,
    })
}

/// A token argument, or stdin for `-`.
fn token_arg(token: &str) -> anyhow::Result<String> {
    if token != "-" {
        return Ok(token.to_string());
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
        .context("reading the token from stdin")?;
    Ok(s.trim().to_string())
}

/// Waits for a decision in calls of at most five minutes until `wait` is used up.
async fn await_decision(
    ch: Channel,
    approval: &str,
    wait: Duration,
) -> anyhow::Result<pb::AwaitApprovalResponse> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut client = TokenServiceClient::new(ch);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let r = client
            .await_approval(pb::AwaitApprovalRequest {
                approval_id: approval.to_string(),
                wait_seconds: u32::try_from(left.as_secs().min(300)).unwrap_or(300),
            })
            .await
            .map_err(status)?
            .into_inner();
        let pending = r
            .approval
            .as_ref()
            .is_some_and(|a| a.state == pb::ApprovalState::Pending as i32);
        if !pending || left.is_zero() {
            return Ok(r);
        }
    }
}

fn freeze_json(f: &pb::FreezeInfo) -> Value {
    use pb::freeze_target::Target as T;
    let target = match f.target.as_ref().and_then(|t| t.target.as_ref()) {
        Some(T::Agent(a)) => json!({"agent": a}),
        Some(T::Workflow(w)) => json!({"workflow": w}),
        Some(T::All(_)) => json!("all"),
        None => Value::Null,
    };
    json!({"target": target, "reason": f.reason, "actor": f.actor, "at": ts(&f.at)})
}

fn freeze_target(t: &FreezeTargetArg) -> pb::FreezeTarget {
    use pb::freeze_target::Target as T;
    pb::FreezeTarget {
        target: Some(match t {
            FreezeTargetArg::Agent { agent } => T::Agent(agent.clone()),
            FreezeTargetArg::Workflow { workflow } => T::Workflow(workflow.clone()),
            FreezeTargetArg::All => T::All(true),
        }),
    }
}

fn audit_event_json(e: &pb::AuditEventInfo) -> Value {
    let detail: Value = serde_json::from_str(&e.detail_json).unwrap_or(Value::Null);
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    json!({
        "sequence": e.sequence, "at": ts(&e.at), "actor": e.actor, "action": e.action,
        "outcome": e.outcome, "task": opt(&e.task_id), "agent": opt(&e.agent),
        "jti": opt(&e.jti), "reason": opt(&e.reason), "detail": detail,
    })
}

/// RFC 3339, or a duration ago ("90m", "1h").
fn when(flag: &str, s: &Option<String>) -> anyhow::Result<Option<prost_types::Timestamp>> {
    let Some(s) = s else { return Ok(None) };
    let t = match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        Ok(t) => t,
        Err(_) => {
            let ago = humantime::parse_duration(s).map_err(|_| {
                usage(format!(
                    "{flag} {s:?} is neither an RFC 3339 time nor a duration ago (e.g. 1h)"
                ))
            })?;
            // humantime reads up to 584 billion years; time's calendar starts in
            // year -9999.
            time::Duration::try_from(ago)
                .ok()
                .and_then(|ago| time::OffsetDateTime::now_utc().checked_sub(ago))
                .ok_or_else(|| {
                    usage(format!(
                        "{flag} {s:?} reaches before the earliest time there is"
                    ))
                })?
        }
    };
    Ok(Some(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }))
}

static OUTPUT: std::sync::OnceLock<Output> = std::sync::OnceLock::new();
static FIELD: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// The field a dotted path names in `v`, as plain text (a string without quotes,
/// anything else as compact JSON).
pub fn field_text(v: &Value, path: &str) -> Option<String> {
    let mut at = v;
    for part in path.split('.') {
        at = match at {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(match at {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn print(v: &Value) -> anyhow::Result<()> {
    if let Some(Some(path)) = FIELD.get() {
        let text = field_text(v, path).ok_or_else(|| Failed {
            code: exit::USAGE,
            message: format!(
                "--field {path}: the result has no such field; it has: {}",
                match v {
                    Value::Object(m) => m.keys().cloned().collect::<Vec<_>>().join(", "),
                    _ => "no fields".into(),
                }
            ),
        })?;
        return emit(&format!("{text}\n"));
    }
    match OUTPUT.get().copied().unwrap_or(Output::Table) {
        Output::Json => emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        )),
        Output::Table => emit(&table(v)),
    }
}

/// Stdout's reader went away (`mayfly watch | head`): the binary exits quietly
/// with 141, as a process killed by SIGPIPE does; the streaming commands (`watch`,
/// `audit events --jsonl`) end with success instead, as their reader chose to stop.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// Writes to stdout.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        r => Ok(r?),
    }
}

/// A stream's line: a closed stdout ends the stream (`Ok(false)`).
fn emit_line(text: &str) -> anyhow::Result<bool> {
    match emit(&format!("{text}\n")) {
        Err(e) if e.is::<StdoutClosed>() => Ok(false),
        r => r.map(|()| true),
    }
}

/// A value for people: a list of records as a table (a column per field), a
/// record as aligned `field  value` lines, nested values as compact JSON.
pub fn table(v: &Value) -> String {
    fn cell(v: &Value) -> String {
        match v {
            Value::Null => "-".into(),
            Value::String(s) if s.is_empty() => "-".into(),
            Value::String(s) => safe(s),
            other => other.to_string(),
        }
    }
    // Text from the broker (an objective, a reason) is shown escaped where it could
    // fake rows or reorder what a person reads: the characters the broker refuses
    // in such text (`domain::text`), which text stored before that rule may hold.
    fn safe(s: &str) -> String {
        s.chars()
            .flat_map(|c| {
                let shown: Vec<char> = if crate::domain::text::is_hidden(c) {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                shown
            })
            .collect()
    }
    match v {
        Value::Array(rows) if rows.is_empty() => "(none)\n".into(),
        Value::Array(rows) => {
            let mut columns: Vec<String> = vec![];
            for r in rows {
                if let Value::Object(m) = r {
                    for k in m.keys() {
                        if !columns.contains(k) {
                            columns.push(k.clone());
                        }
                    }
                }
            }
            if columns.is_empty() {
                return rows.iter().map(|r| cell(r) + "\n").collect();
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| columns.iter().map(|c| cell(&r[c.as_str()])).collect())
                .collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].chars().count())
                        .chain([c.chars().count()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |row: Vec<String>| {
                let padded: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(s, w)| format!("{s:<w$}"))
                    .collect();
                padded.join("  ").trim_end().to_string() + "\n"
            };
            let mut out = line(columns.iter().map(|c| c.to_uppercase()).collect());
            for row in cells {
                out.push_str(&line(row));
            }
            out
        }
        Value::Object(m) => {
            let w = m.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            m.iter()
                .map(|(k, v)| format!("{k:<w$}  {}\n", cell(v)))
                .collect()
        }
        other => cell(other) + "\n",
    }
}

pub async fn run(args: &ClientArgs, output: Output, cmd: &ClientCommand) -> anyhow::Result<()> {
    let _ = OUTPUT.set(output);
    let _ = FIELD.set(args.field.clone());
    let ch = connect(args).await.map_err(|e| Failed {
        code: exit::UNREACHABLE,
        message: format!("{e:#}"),
    })?;
    match cmd {
        ClientCommand::Task(TaskCommand::Start {
            agent,
            workflow,
            objective,
            scope,
            duration,
        }) => {
            let scopes = scope
                .iter()
                .map(|s| parse_scope(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let r = TaskServiceClient::new(ch)
                .start_task(pb::StartTaskRequest {
                    agent: agent.clone(),
                    workflow: workflow.clone(),
                    objective: objective.clone(),
                    scopes,
                    duration_seconds: duration.as_secs(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(&r.task.as_ref().map(task_json).unwrap_or(Value::Null))?;
        }
        ClientCommand::Task(TaskCommand::Complete { task }) => {
            let r = TaskServiceClient::new(ch)
                .complete_task(pb::CompleteTaskRequest {
                    task_id: task.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(
                &json!({"task": r.task.as_ref().map(task_json), "revocation_sequence": r.revocation_sequence}),
            )?;
        }
        ClientCommand::Task(TaskCommand::Get { task }) => {
            let r = TaskServiceClient::new(ch)
                .get_task(pb::GetTaskRequest {
                    task_id: task.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(&r.task.as_ref().map(task_json).unwrap_or(Value::Null))?;
        }
        ClientCommand::Task(TaskCommand::List {
            agent,
            state,
            limit,
        }) => {
            let state = match state.as_deref() {
                None => 0,
                Some(s) => pb::TaskState::from_str_name(&format!("TASK_STATE_{}", s.to_uppercase()))
                    .ok_or_else(|| {
                        usage(format!(
                            "--state {s:?}: one of active, completed, expired, deviated, revoked"
                        ))
                    })? as i32,
            };
            let r = TaskServiceClient::new(ch)
                .list_tasks(pb::ListTasksRequest {
                    agent: agent.clone().unwrap_or_default(),
                    state,
                    limit: *limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            print(&Value::Array(r.tasks.iter().map(task_json).collect()))?;
        }
        ClientCommand::Token(TokenCommand::Mint { task, scope, ttl }) => {
            let r = TokenServiceClient::new(ch)
                .mint_token(pb::MintTokenRequest {
                    task_id: task.clone(),
                    scope: Some(parse_scope(scope)?),
                    ttl_seconds: ttl.as_secs(),
                })
                .await
                .map_err(status)?
                .into_inner();
            match &r.approval {
                Some(a) => {
                    eprintln!(
                        "this action needs a security team's approval; wait for it with: mayfly token await {}",
                        a.id
                    );
                    print(&json!({"approval": approval_json(a)}))?;
                }
                None => print(&minted_json(&r))?,
            }
        }
        ClientCommand::Token(TokenCommand::Await { approval, wait }) => {
            let r = await_decision(ch, approval, *wait).await?;
            print(&json!({
                "approval": r.approval.as_ref().map(approval_json),
                "token": r.token.as_ref().map(minted_json),
            }))?;
        }
        ClientCommand::Token(TokenCommand::Delegate {
            token,
            to,
            scope,
            ttl,
        }) => {
            let r = TokenServiceClient::new(ch)
                .delegate(pb::DelegateRequest {
                    parent_token: token_arg(token)?,
                    sub_agent: to.clone(),
                    scope: Some(parse_scope(scope)?),
                    ttl_seconds: ttl.as_secs(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(
                &json!({"delegation_id": r.delegation_id, "expires_at": ts(&r.expires_at), "depth": r.depth}),
            )?;
        }
        ClientCommand::Token(TokenCommand::Redeem { delegation }) => {
            let r = TokenServiceClient::new(ch)
                .redeem_delegation(pb::RedeemDelegationRequest {
                    delegation_id: delegation.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(&minted_json(&r))?;
        }
        ClientCommand::Freeze { target, reason } => {
            let r = AdminServiceClient::new(ch)
                .freeze(pb::FreezeRequest {
                    target: Some(freeze_target(target)),
                    reason: reason.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(
                &json!({"freeze": r.freeze.as_ref().map(freeze_json), "already_frozen": r.already_frozen}),
            )?;
        }
        ClientCommand::Unfreeze { target, reason } => {
            let r = AdminServiceClient::new(ch)
                .unfreeze(pb::UnfreezeRequest {
                    target: Some(freeze_target(target)),
                    reason: reason.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(&json!({"lifted": r.lifted.as_ref().map(freeze_json)}))?;
        }
        ClientCommand::Freezes => {
            let r = AdminServiceClient::new(ch)
                .list_freezes(pb::ListFreezesRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print(&Value::Array(r.freezes.iter().map(freeze_json).collect()))?;
        }
        ClientCommand::Audit(AuditCommand::Verify { checkpoint }) => {
            let (checkpoint_sequence, checkpoint_hash) = match checkpoint {
                None => (0, String::new()),
                Some(c) => parse_checkpoint(c)?,
            };
            let r = AdminServiceClient::new(ch)
                .verify_audit(pb::VerifyAuditRequest {
                    checkpoint_sequence,
                    checkpoint_hash,
                })
                .await
                .map_err(status)?
                .into_inner();
            let printed = print(&json!({
                "intact": r.intact, "events_checked": r.events_checked,
                "head_sequence": r.head_sequence, "head_hash": r.head_hash,
                "checkpoint": format!("{}:{}", r.head_sequence, r.head_hash),
                "first_broken": (!r.intact).then_some(r.first_broken),
                "problem": (!r.intact).then_some(&r.problem),
            }));
            // A broken chain fails the command whatever became of its output.
            if !r.intact {
                return Err(Failed {
                    code: 1,
                    message: format!(
                        "the audit chain is broken at event {}: {}",
                        r.first_broken, r.problem
                    ),
                }
                .into());
            }
            printed?;
        }
        ClientCommand::Audit(AuditCommand::Events {
            agent,
            task,
            action,
            since,
            until,
            limit,
            jsonl,
        }) => {
            let mut client = AdminServiceClient::new(ch);
            let mut req = pb::QueryAuditRequest {
                agent: agent.clone().unwrap_or_default(),
                task_id: task.clone().unwrap_or_default(),
                action: action.clone().unwrap_or_default(),
                since: when("--since", since)?,
                until: when("--until", until)?,
                after_sequence: 0,
                limit: *limit,
            };
            let mut all = vec![];
            loop {
                let r = client
                    .query_audit(req.clone())
                    .await
                    .map_err(status)?
                    .into_inner();
                for e in &r.events {
                    if *jsonl {
                        if !emit_line(&audit_event_json(e).to_string())? {
                            return Ok(());
                        }
                    } else {
                        all.push(audit_event_json(e));
                    }
                }
                // A page, or with --jsonl every page.
                if !*jsonl || r.next_after == 0 {
                    break;
                }
                req.after_sequence = r.next_after;
            }
            if !*jsonl {
                print(&Value::Array(all))?;
            }
        }
        ClientCommand::Audit(AuditCommand::Task { task }) => {
            let t = TaskServiceClient::new(ch.clone())
                .get_task(pb::GetTaskRequest {
                    task_id: task.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let mut admin = AdminServiceClient::new(ch);
            let tokens = admin
                .list_tokens(pb::ListTokensRequest {
                    task_id: task.clone(),
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            let mut events = vec![];
            let mut after = 0;
            loop {
                let r = admin
                    .query_audit(pb::QueryAuditRequest {
                        task_id: task.clone(),
                        after_sequence: after,
                        limit: 1000,
                        ..Default::default()
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                events.extend(r.events.iter().map(audit_event_json));
                if r.next_after == 0 {
                    break;
                }
                after = r.next_after;
            }
            let revocations: Vec<&Value> = events
                .iter()
                .filter(|e| e["action"] == "revocation" || e["action"] == "task_revoked")
                .collect();
            print(&json!({
                "task": t.task.as_ref().map(task_json),
                "tokens": tokens.tokens.iter().map(|t| json!({"jti": t.jti, "agent": t.agent,
                    "scope": scope_json(&t.scope), "issued_at": ts(&t.issued_at),
                    "expires_at": ts(&t.expires_at), "revoked_at": ts(&t.revoked_at),
                    "parent_jti": t.parent_jti, "depth": t.depth})).collect::<Vec<_>>(),
                "revocations": revocations,
                "events": events,
            }))?;
        }
        ClientCommand::Audit(AuditCommand::Access {
            audience,
            resource,
            since,
            until,
        }) => {
            let r = AdminServiceClient::new(ch)
                .audit_access(pb::AuditAccessRequest {
                    audience: audience.clone(),
                    resource: resource.clone().unwrap_or_default(),
                    since: when("--since", since)?,
                    until: when("--until", until)?,
                })
                .await
                .map_err(status)?
                .into_inner();
            print(&Value::Array(
                r.agents
                    .iter()
                    .map(|a| {
                        json!({"agent": a.agent, "tokens": a.tokens, "first": ts(&a.first),
                               "last": ts(&a.last), "resources": a.resources})
                    })
                    .collect(),
            ))?;
        }
        ClientCommand::Approvals(ApprovalsCommand::List { task, all, limit }) => {
            let r = AdminServiceClient::new(ch)
                .list_approvals(pb::ListApprovalsRequest {
                    task_id: task.clone().unwrap_or_default(),
                    pending_only: !*all,
                    limit: *limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            print(&Value::Array(
                r.approvals.iter().map(approval_json).collect(),
            ))?;
        }
        ClientCommand::Approvals(
            cmd @ (ApprovalsCommand::Approve { approval, reason }
            | ApprovalsCommand::Deny { approval, reason }),
        ) => {
            let decision = match cmd {
                ApprovalsCommand::Approve { .. } => pb::Decision::Approve,
                _ => pb::Decision::Deny,
            };
            let r = AdminServiceClient::new(ch)
                .decide_approval(pb::DecideApprovalRequest {
                    approval_id: approval.clone(),
                    decision: decision as i32,
                    reason: reason.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(
                &r.approval
                    .as_ref()
                    .map(approval_json)
                    .unwrap_or(Value::Null),
            )?;
        }
        ClientCommand::Token(TokenCommand::Introspect { token }) => {
            let token = if token == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("reading the token from stdin")?;
                s.trim().to_string()
            } else {
                token.clone()
            };
            let r = VerifierServiceClient::new(ch)
                .introspect(pb::IntrospectRequest { token })
                .await
                .map_err(status)?
                .into_inner();
            let claims: Value = if r.active {
                serde_json::from_str(&r.claims_json).unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            print(&json!({"active": r.active, "claims": claims}))?;
        }
        ClientCommand::Tokens {
            task,
            agent,
            active,
            limit,
        } => {
            let r = AdminServiceClient::new(ch)
                .list_tokens(pb::ListTokensRequest {
                    task_id: task.clone().unwrap_or_default(),
                    agent: agent.clone().unwrap_or_default(),
                    active_only: *active,
                    limit: *limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            let rows: Vec<Value> = r
                .tokens
                .iter()
                .map(|t| {
                    json!({"jti": t.jti, "task": t.task_id, "agent": t.agent, "workflow": t.workflow,
                           "scope": scope_json(&t.scope), "issued_at": ts(&t.issued_at),
                           "expires_at": ts(&t.expires_at), "revoked_at": ts(&t.revoked_at), "active": t.active,
                           "parent_jti": t.parent_jti, "depth": t.depth})
                })
                .collect();
            print(&Value::Array(rows))?;
        }
        ClientCommand::Revoke { target, reason } => {
            use pb::revocation_target::Target as T;
            let target = match target {
                RevokeTarget::Token { jti } => T::Token(jti.clone()),
                RevokeTarget::Task { task } => T::Task(task.clone()),
                RevokeTarget::Agent { agent } => T::Agent(agent.clone()),
                RevokeTarget::Workflow { workflow } => T::Workflow(workflow.clone()),
                RevokeTarget::All => T::All(true),
            };
            let r = AdminServiceClient::new(ch)
                .revoke(pb::RevokeRequest {
                    target: Some(pb::RevocationTarget {
                        target: Some(target),
                    }),
                    reason: reason.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(
                &json!({"event": r.event.as_ref().map(event_json), "tokens_revoked": r.tokens_revoked,
                          "tasks_stopped": r.tasks_stopped}),
            )?;
        }
        ClientCommand::Watch { after } => {
            let mut stream = VerifierServiceClient::new(ch)
                .watch_revocations(pb::WatchRevocationsRequest {
                    after_sequence: *after,
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            // Events as JSON lines; heartbeats only keep the stream honest.
            while let Some(msg) = stream.message().await.map_err(status)? {
                if let Some(pb::watch_revocations_response::Kind::Event(ev)) = msg.kind
                    && !emit_line(&event_json(&ev).to_string())?
                {
                    return Ok(());
                }
            }
        }
        ClientCommand::Jwks => {
            let r = VerifierServiceClient::new(ch)
                .get_jwks(pb::GetJwksRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let v: Value =
                serde_json::from_str(&r.jwks_json).context("the broker sent invalid JWKS JSON")?;
            print(&v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage_code(e: &anyhow::Error) -> Option<u8> {
        e.downcast_ref::<Failed>().map(|f| f.code)
    }

    #[test]
    fn an_audit_window_reaching_before_the_calendar_is_a_usage_error_not_a_panic() {
        for ago in ["100000years", "500000000000years"] {
            let e = when("--since", &Some(ago.into())).expect_err(ago);
            assert_eq!(usage_code(&e), Some(exit::USAGE), "{e}");
            assert!(e.to_string().starts_with("--since "), "{e}");
        }
        assert!(when("--until", &Some("1h".into())).is_ok_and(|t| t.is_some()));
    }

    #[test]
    fn a_checkpoint_is_a_sequence_and_a_hash() {
        assert_eq!(parse_checkpoint("12:ab").ok(), Some((12, "ab".into())));
        assert_eq!(parse_checkpoint("12:a:b").ok(), Some((12, "a:b".into())));
        for bad in ["12", "x:ab", ":ab", "-1:ab", ""] {
            let e = parse_checkpoint(bad).expect_err(bad);
            assert_eq!(usage_code(&e), Some(exit::USAGE), "{e}");
        }
    }

    #[test]
    fn tables_escape_text_that_could_fake_rows_or_reorder_what_is_read() {
        let t = table(&json!([
            {"id": "a", "objective": "pay\nb  fake-row", "reason": "x\u{202E}gnp.exe"},
            {"id": "b", "objective": "", "reason": null},
        ]));
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(t.contains("pay\\nb"), "{t}");
        assert!(t.contains("x\\u{202e}gnp.exe"), "{t}");
        assert!(t.lines().nth(2).unwrap().starts_with("b "), "{t}");
        // A tag character hides text from a reader; a Hangul filler shows as nothing.
        let t = table(&json!([{"objective": "ok\u{E0041}\u{3164}"}]));
        assert!(t.contains("ok\\u{e0041}\\u{3164}"), "{t}");
        assert_eq!(table(&json!([])), "(none)\n");
        assert_eq!(table(&json!({"k": [1, 2]})), "k  [1,2]\n");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::testing::{any_text, matching};
    use proptest::prelude::*;

    fn usage_message(e: &anyhow::Error) -> Option<&str> {
        e.downcast_ref::<Failed>()
            .filter(|f| f.code == exit::USAGE)
            .map(|f| f.message.as_str())
    }

    /// Words and the whitespace between them, as a shell passes one argument.
    fn spaced_words() -> impl Strategy<Value = String> {
        let word = prop_oneof![matching("[a-z0-9/*.:-]{1,10}"), any_text()];
        let gap = prop::sample::select(vec![" ", "  ", "\t", " \n ", "\u{3000}", "\u{a0}"]);
        (
            matching("[ \t]{0,2}"),
            prop::collection::vec((word, gap), 0..5),
        )
            .prop_map(|(lead, parts)| {
                let mut s = lead;
                for (w, g) in parts {
                    s += &w;
                    s += g;
                }
                s
            })
    }

    /// A time for `--since`/`--until`: RFC 3339, a duration ago (up to
    /// humantime's limit), or neither.
    fn window() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => (any::<u64>(), prop::sample::select(vec!["s", "m", "h", "d", "w", "M", "y", "years", "ms", "ns"]))
                .prop_map(|(n, unit)| format!("{}{unit}", n >> (n % 64))),
            1 => matching("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"),
            1 => any_text(),
        ]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn a_scope_argument_is_three_words_or_a_usage_error(s in spaced_words()) {
            let words: Vec<&str> = s.split_whitespace().collect();
            match parse_scope(&s) {
                Ok(scope) => {
                    prop_assert_eq!(words.len(), 3);
                    let parsed = [scope.audience.as_str(), scope.resource.as_str(), scope.action.as_str()];
                    prop_assert_eq!(&parsed[..], &words[..]);
                    // The canonical form, one space apart, reads back the same.
                    let again = parse_scope(&words.join(" "))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(again, scope);
                }
                Err(e) => {
                    prop_assert_ne!(words.len(), 3);
                    let message = usage_message(&e);
                    prop_assert!(message.is_some_and(|m| m.starts_with("scope ")), "{e}");
                }
            }
        }

        #[test]
        fn a_time_window_argument_is_a_time_or_a_usage_error_naming_the_flag(s in window()) {
            match when("--since", &Some(s.clone())) {
                Ok(t) => prop_assert!(t.is_some_and(|t| (0..1_000_000_000).contains(&t.nanos))),
                Err(e) => {
                    let message = usage_message(&e);
                    prop_assert!(message.is_some_and(|m| m.starts_with("--since ")), "{e}");
                }
            }
        }

        #[test]
        fn a_checkpoint_argument_reads_back_as_it_was_printed(
            seq in any::<u64>(),
            hash in prop_oneof![matching("[0-9a-f]{0,64}"), any_text()],
            other in any_text(),
        ) {
            let parsed = parse_checkpoint(&format!("{seq}:{hash}"))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed, (seq, hash));
            if let Err(e) = parse_checkpoint(&other) {
                let message = usage_message(&e);
                prop_assert!(message.is_some_and(|m| m.starts_with("--checkpoint ")), "{e}");
            }
        }

        #[test]
        fn a_field_path_finds_a_field_or_nothing_without_panicking(
            path in prop_oneof![matching("[a-z0-9.]{0,16}"), any_text()],
        ) {
            let v = serde_json::json!({"a": {"b": [1, {"c": "x"}]}, "n": null});
            let _ = field_text(&v, &path);
        }
    }
}
