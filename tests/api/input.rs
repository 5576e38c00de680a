//! Input that cannot fool a person or the transport, over the real server: text a
//! person reads carries no invisible or bidirectional control characters; a
//! refusal quotes only a short prefix of what it refuses; a body that is not
//! protobuf is the client's fault.
use crate::support::*;
use base64::Engine;
use mayfly::api::pb;
use mayfly::api::pb::revocation_target::Target;
use prost::bytes::{Buf, BufMut};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

const HIDDEN: &str = "invisible and bidirectional control characters are not accepted";

/// `text` with `ch` inserted after its first `after` characters.
fn with(text: &str, after: usize, ch: char) -> String {
    let mut s: String = text.chars().take(after).collect();
    s.push(ch);
    s.extend(text.chars().skip(after));
    s
}

fn freeze_target(t: pb::freeze_target::Target) -> Option<pb::FreezeTarget> {
    Some(pb::FreezeTarget { target: Some(t) })
}

/// Sends a request with free text `text` in one field, as the caller that may
/// make the call; the field's name as the refusal must give it.
async fn send_text(app: &TestApp, field: &str, text: &str) -> Result<(), tonic::Status> {
    let text = text.to_string();
    match field {
        "objective" => {
            let mut req = start_request(AGENT, 600);
            req.objective = text;
            app.tasks(ORCH).await.start_task(req).await.map(drop)
        }
        "workflow" => {
            let mut req = start_request(AGENT, 600);
            req.workflow = text;
            app.tasks(ORCH).await.start_task(req).await.map(drop)
        }
        "revoke reason" => app
            .admin(ADMIN)
            .await
            .revoke(revoke_request(
                Target::Task(uuid::Uuid::new_v4().to_string()),
                &text,
            ))
            .await
            .map(drop),
        "revoke target.workflow" => app
            .admin(ADMIN)
            .await
            .revoke(revoke_request(Target::Workflow(text), "incident 42"))
            .await
            .map(drop),
        "freeze reason" => app
            .admin(ADMIN)
            .await
            .freeze(pb::FreezeRequest {
                target: freeze_target(pb::freeze_target::Target::Agent(AGENT.into())),
                reason: text,
            })
            .await
            .map(drop),
        "freeze target.workflow" => app
            .admin(ADMIN)
            .await
            .freeze(pb::FreezeRequest {
                target: freeze_target(pb::freeze_target::Target::Workflow(text)),
                reason: "incident 42".into(),
            })
            .await
            .map(drop),
        "unfreeze reason" => app
            .admin(ADMIN)
            .await
            .unfreeze(pb::UnfreezeRequest {
                target: freeze_target(pb::freeze_target::Target::Agent(AGENT.into())),
                reason: text,
            })
            .await
            .map(drop),
        "decision reason" => app
            .admin(ADMIN)
            .await
            .decide_approval(pb::DecideApprovalRequest {
                approval_id: uuid::Uuid::new_v4().to_string(),
                decision: pb::Decision::Deny as i32,
                reason: text,
            })
            .await
            .map(drop),
        "evidence" => app
            .verifier(VERIFIER)
            .await
            .report_misuse(pb::ReportMisuseRequest {
                token: "not.a.token".into(),
                kind: "binding_mismatch".into(),
                evidence: text,
            })
            .await
            .map(drop),
        other => panic!("no request for {other}"),
    }
}

/// Every free-text field a person reads, with the name its refusal gives it.
const TEXT_FIELDS: &[(&str, &str)] = &[
    ("objective", "objective"),
    ("workflow", "workflow"),
    ("revoke reason", "reason"),
    ("revoke target.workflow", "target.workflow"),
    ("freeze reason", "reason"),
    ("freeze target.workflow", "target.workflow"),
    ("unfreeze reason", "reason"),
    ("decision reason", "reason"),
    ("evidence", "evidence"),
];

#[tokio::test]
async fn invisible_and_bidirectional_characters_are_refused_in_every_text_a_person_reads() {
    let app = spawn_app().await;
    // The characters that make text display other than it reads: overrides and
    // isolates, marks, zero-width characters, a byte-order mark, a tag character
    // (invisible "ASCII smuggling"), a soft hyphen, a line separator and an escape.
    let cases = [
        ('\u{202E}', "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ('\u{202A}', "U+202A (LEFT-TO-RIGHT EMBEDDING)"),
        ('\u{2066}', "U+2066 (LEFT-TO-RIGHT ISOLATE)"),
        ('\u{2069}', "U+2069 (POP DIRECTIONAL ISOLATE)"),
        ('\u{200F}', "U+200F (RIGHT-TO-LEFT MARK)"),
        ('\u{061C}', "U+061C (ARABIC LETTER MARK)"),
        ('\u{200B}', "U+200B (ZERO WIDTH SPACE)"),
        ('\u{200D}', "U+200D (ZERO WIDTH JOINER)"),
        ('\u{2060}', "U+2060 (WORD JOINER)"),
        ('\u{FEFF}', "U+FEFF (ZERO WIDTH NO-BREAK SPACE)"),
        ('\u{E0041}', "U+E0041 (a tag character)"),
        ('\u{00AD}', "U+00AD (SOFT HYPHEN)"),
        ('\u{2028}', "U+2028 (LINE SEPARATOR)"),
        ('\u{001B}', "U+001B (ESCAPE)"),
        ('\u{0085}', "U+0085 (NEXT LINE)"),
    ];
    for (name, field) in TEXT_FIELDS {
        for (ch, described) in cases {
            // "Refund-order-" is 13 characters: the character is the 14th.
            let text = with("Refund-order-4711", 13, ch);
            let err = send_text(&app, name, &text)
                .await
                .expect_err(&format!("{name} with {described} is refused"));
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{name}: {described}: {err:?}"
            );
            assert_eq!(
                err.message(),
                format!("{field}: contains {described} at character 14; {HIDDEN}"),
                "{name}"
            );
        }
    }
    // The position counts characters, not bytes: after "Müller, " (8 characters,
    // 9 bytes) the override is the 9th.
    let err = send_text(&app, "objective", "Müller, \u{202E}fdp.exe")
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        format!("objective: contains U+202E (RIGHT-TO-LEFT OVERRIDE) at character 9; {HIDDEN}")
    );
    // Nothing was opened, revoked or frozen.
    let tasks = app
        .tasks(ORCH)
        .await
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "{tasks:?}");
    let freezes = app
        .admin(ADMIN)
        .await
        .list_freezes(pb::ListFreezesRequest {})
        .await
        .unwrap()
        .into_inner()
        .freezes;
    assert!(freezes.is_empty(), "{freezes:?}");
}

#[tokio::test]
async fn an_objective_may_span_lines_but_a_reason_or_evidence_is_one_line() {
    let app = spawn_app().await;
    let objective = "Answer ticket 4711:\n\t1. read the invoice\n\t2. comment on the ticket";
    let mut req = start_request(AGENT, 600);
    req.objective = objective.into();
    let task = app.open_task_with(req).await;
    assert_eq!(task.objective, objective);

    for (name, field) in TEXT_FIELDS.iter().filter(|(n, _)| *n != "objective") {
        for (ch, described) in [
            ('\n', "U+000A (LINE FEED)"),
            ('\t', "U+0009 (CHARACTER TABULATION)"),
        ] {
            let err = send_text(&app, name, &with("incident 42", 8, ch))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{name}");
            assert_eq!(
                err.message(),
                format!(
                    "{field}: contains {described} at character 9; this field is one line: line breaks and tabs are not accepted"
                ),
                "{name}"
            );
        }
    }
    // A carriage return rewrites what a terminal shows: refused even in an objective.
    let err = send_text(&app, "objective", "pay 10 EUR\rpay 9999 EUR")
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        format!("objective: contains U+000D (CARRIAGE RETURN) at character 11; {HIDDEN}")
    );
}

#[tokio::test]
async fn text_in_any_script_is_accepted_and_read_back_as_sent() {
    let app = spawn_app().await;
    // Accents, right-to-left scripts (their direction comes from the letters, not
    // from control characters), CJK and an emoji with its presentation selector.
    let objective = "Frau Müller: Rechnung über 40 € — سؤال عن الفاتورة — 請求書について ✔️";
    let mut req = start_request(AGENT, 600);
    req.objective = objective.into();
    req.scopes.push(scope("tickets", "tickets/4711", "delete"));
    let task = app.open_task_with(req).await;
    assert_eq!(task.objective, objective);
    assert_eq!(app.get_task(&task.id).await.objective, objective);

    // The approver reads the same objective on the step-up approval.
    let pending = app
        .tokens(AGENT)
        .await
        .0
        .minted(ticket_delete_request(&task.id))
        .await
        .approval
        .expect("a pending approval");
    assert_eq!(pending.objective, objective);
    let decided = app
        .admin(ADMIN)
        .await
        .decide_approval(pb::DecideApprovalRequest {
            approval_id: pending.id.clone(),
            decision: pb::Decision::Deny as i32,
            reason: "Kein Löschen ohne Rückfrage — لا".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval
        .unwrap();
    assert_eq!(decided.decision_reason, "Kein Löschen ohne Rückfrage — لا");
}

/// A token whose header names a `kid` of `len` characters: it reaches the
/// broker's key lookup (an unknown key) before its signature is checked.
fn token_with_kid(len: usize) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k".repeat(len)});
    format!("{}.e30.c2ln", b64.encode(header.to_string()))
}

#[tokio::test]
async fn refusals_quote_at_most_a_short_prefix_of_a_huge_value() {
    let app = spawn_app().await;
    // As large as fits the smallest per-service message limit (16 KiB); a 20 KB
    // value is refused by that limit, from the message's length, before it is read.
    const HUGE: usize = 15 * 1024;
    let huge = "x".repeat(HUGE);
    let mut tasks = app.tasks(ORCH).await;
    let (mut agent, _) = app.tokens(AGENT).await;
    let mut admin = app.admin(ADMIN).await;

    let mut refusals: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "task_id",
            tasks
                .get_task(pb::GetTaskRequest {
                    task_id: huge.clone(),
                })
                .await
                .map(drop),
        ),
        (
            "task_id",
            tasks
                .complete_task(pb::CompleteTaskRequest {
                    task_id: huge.clone(),
                })
                .await
                .map(drop),
        ),
        (
            "task_id",
            agent
                .mint_token(mint_request(&huge, "customers/eu/1", 60))
                .await
                .map(drop),
        ),
        (
            "delegation_id",
            agent
                .redeem_delegation(pb::RedeemDelegationRequest {
                    delegation_id: huge.clone(),
                })
                .await
                .map(drop),
        ),
        (
            "approval_id",
            agent
                .await_approval(pb::AwaitApprovalRequest {
                    approval_id: huge.clone(),
                    wait_seconds: 0,
                })
                .await
                .map(drop),
        ),
        (
            "parent_token",
            agent
                .delegate(pb::DelegateRequest {
                    parent_token: token_with_kid(HUGE * 2 / 3),
                    sub_agent: AGENT2.into(),
                    scope: Some(scope("crm-api", "customers/eu/1", "read")),
                    ttl_seconds: 60,
                })
                .await
                .map(drop),
        ),
        (
            "target.token",
            admin
                .revoke(revoke_request(Target::Token(huge.clone()), "incident 42"))
                .await
                .map(drop),
        ),
        (
            "target.task",
            admin
                .revoke(revoke_request(Target::Task(huge.clone()), "incident 42"))
                .await
                .map(drop),
        ),
        (
            "task_id",
            admin
                .list_tokens(pb::ListTokensRequest {
                    task_id: huge.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "action",
            admin
                .query_audit(pb::QueryAuditRequest {
                    action: huge.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "agent",
            admin
                .list_tokens(pb::ListTokensRequest {
                    agent: format!("spiffe://example.org/{huge}"),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "objective",
            tasks
                .start_task({
                    let mut r = start_request(AGENT, 600);
                    r.objective = huge.clone();
                    r
                })
                .await
                .map(drop),
        ),
    ];
    // Scope parts are bounded (a resource is at most 512 bytes), but a refusal
    // still quotes only a prefix of the segment it refuses.
    let long_segment = format!("b*{}", "c".repeat(400));
    for (field, resource) in [
        ("scope", format!("customers/{long_segment}")),
        ("scope", format!("customers/{}//1", "d".repeat(400))),
    ] {
        refusals.push((
            field,
            agent
                .mint_token(mint_request(
                    &uuid::Uuid::new_v4().to_string(),
                    &resource,
                    60,
                ))
                .await
                .map(drop),
        ));
    }
    for (field, result) in refusals {
        let err = result.expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            err.message()
        );
        assert!(
            err.message().len() < 256,
            "{field}: a {} byte message: {}",
            err.message().len(),
            err.message()
        );
    }
    // What is quoted: a prefix, an ellipsis and the length.
    let err = tasks
        .get_task(pb::GetTaskRequest {
            task_id: huge.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        format!(
            "task_id: \"{}…\" ({HUGE} bytes) is not a task id (a UUID)",
            "x".repeat(32)
        )
    );
    // A short value is quoted whole, and what it hides is shown escaped.
    let err = tasks
        .get_task(pb::GetTaskRequest {
            task_id: "task-\u{202E}1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "task_id: \"task-\\u{202e}1\" is not a task id (a UUID)"
    );
    // Past the limit: a short refusal naming the size, not the value.
    let err = agent
        .refused(mint_request(&"x".repeat(20 * 1024), "customers/eu/1", 60))
        .await;
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
    assert!(err.message().len() < 256, "{err:?}");
}

/// Sends bytes as they are and reads the answer as bytes: a client that does not
/// speak protobuf.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

async fn send_raw(
    app: &TestApp,
    identity: &str,
    method: &'static str,
    body: &[u8],
) -> Result<Vec<u8>, tonic::Status> {
    let (ch, _) = app.channel(identity).await;
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body.to_vec()),
        PathAndQuery::from_static(method),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_request_body_that_is_not_protobuf_is_an_invalid_argument() {
    let app = spawn_app().await;
    // Bytes no message decodes from: a truncated tag; a truncated varint; a
    // length running past the end; a wire type protobuf does not have; field 0.
    let bodies: [&[u8]; 5] = [
        &[0x80],
        &[0x08, 0xff],
        &[0x0a, 0x7f, b'a'],
        &[0x0f],
        &[0x00],
    ];
    let calls = [
        (
            ORCH,
            "/mayfly.v1.TaskService/StartTask",
            "mayfly.v1.StartTaskRequest",
        ),
        (
            AGENT,
            "/mayfly.v1.TokenService/MintToken",
            "mayfly.v1.MintTokenRequest",
        ),
        (
            ADMIN,
            "/mayfly.v1.AdminService/Revoke",
            "mayfly.v1.RevokeRequest",
        ),
        (
            VERIFIER,
            "/mayfly.v1.VerifierService/ReportMisuse",
            "mayfly.v1.ReportMisuseRequest",
        ),
        // A streaming call decodes its request the same way.
        (
            VERIFIER,
            "/mayfly.v1.VerifierService/WatchRevocations",
            "mayfly.v1.WatchRevocationsRequest",
        ),
    ];
    for (who, method, message) in calls {
        for body in bodies {
            let err = send_raw(&app, who, method, body).await.expect_err(method);
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{method} {body:?}: {err:?}"
            );
            assert!(
                err.message().starts_with(&format!(
                    "request body is not a valid {message} protobuf message: "
                )),
                "{method}: {}",
                err.message()
            );
        }
    }
    // A string field that is not UTF-8 (field 3, the objective) is not protobuf either.
    let err = send_raw(
        &app,
        ORCH,
        "/mayfly.v1.TaskService/StartTask",
        &[0x1a, 0x02, 0xff, 0xfe],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with(
            "request body is not a valid mayfly.v1.StartTaskRequest protobuf message: "
        ),
        "{}",
        err.message()
    );
    // A well-formed body from the same raw client is served: the codec still speaks protobuf.
    let ok = send_raw(
        &app,
        ORCH,
        "/mayfly.v1.TaskService/ListTasks",
        &prost::Message::encode_to_vec(&pb::ListTasksRequest::default()),
    )
    .await
    .expect("a valid body is served");
    let listed: pb::ListTasksResponse = prost::Message::decode(ok.as_slice()).unwrap();
    assert!(listed.tasks.is_empty());
}
