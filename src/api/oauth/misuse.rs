//! Misuse reports over HTTP, for resource servers that speak HTTP rather than
//! gRPC (the Python package's verifier and middleware): a token presented by
//! another certificate, or used outside its scope, deviates its task. The broker
//! call of gRPC's `ReportMisuse`, with its role (verifiers only), its field rules
//! (`api::verifier::misuse_input`) and its refusals, JSON in and out.
use super::{OauthState, answer, no_store, param};
use crate::api::pb;
use crate::api::verifier::{REPORTERS, misuse_input};
use crate::error::oauth::OauthError;
use axum::extract::{Request, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

/// `POST /v1/misuse`: the fields of gRPC's `ReportMisuseRequest`, by name. A
/// missing field is an empty one, judged by gRPC's rule with gRPC's sentence.
/// No `Debug`: it carries a bearer token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    #[serde(default)]
    token: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    evidence: String,
}

pub(super) async fn report(State(s): State<OauthState>, req: Request) -> Response {
    answer(reported(&s, req).await)
}

async fn reported(s: &OauthState, req: Request) -> Result<Response, OauthError> {
    let (caller, report): (_, Report) = s
        .caller_and_json(
            req,
            "POST /v1/misuse",
            REPORTERS,
            s.form_bytes,
            "a misuse report",
        )
        .await?;
    let request = pb::ReportMisuseRequest {
        token: report.token,
        kind: report.kind,
        evidence: report.evidence,
    };
    let (kind, evidence) = param(misuse_input(&request))?;
    let (task, seq) = s
        .broker
        .report_misuse(&caller, &request.token, kind, &evidence)
        .await?;
    // `null` when the task had already ended (the report is audited all the
    // same); gRPC says 0, which JSON need not.
    Ok(no_store(json!({
        "task_id": task.to_string(),
        "revocation_sequence": seq,
    })))
}
