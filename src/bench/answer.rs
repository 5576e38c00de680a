//! What the broker's answer to a mint counts as: a token, a refusal for
//! budget (a new task, and go on), or a failure, on either edge.
use super::figures::{Failure, short};
use crate::client::exit;

/// What a mint came to.
#[derive(Debug)]
pub(super) enum Outcome {
    Minted,
    /// The task's budget is spent: a new task, and go on.
    Budget,
    Failed(Failure),
}

/// The error and its causes, on one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    with_causes(e.to_string(), e.source())
}

/// `first`, then each cause in turn (one that repeats what is already said is
/// left out: tonic's and hyper's errors often wrap one another's words).
fn with_causes(first: String, mut at: Option<&dyn std::error::Error>) -> String {
    let mut s = first;
    while let Some(cause) = at {
        let c = cause.to_string();
        if !s.contains(&c) {
            s = format!("{s}: {c}");
        }
        at = cause.source();
    }
    s
}

/// A gRPC answer other than a token. `error::refused` answers a mint past its
/// task's budget RESOURCE_EXHAUSTED, and nothing else a mint can meet (the
/// other refusal with that code caps delegation offers).
pub(super) fn grpc_refusal(s: &tonic::Status) -> Outcome {
    if s.code() == tonic::Code::ResourceExhausted {
        return Outcome::Budget;
    }
    let f = crate::client::refusal(s.clone());
    // A status tonic made of a transport failure (the broker refused the
    // certificate in the handshake, say) says why only in its causes.
    let message = with_causes(s.message().to_string(), std::error::Error::source(s));
    Outcome::Failed(Failure::new(
        format!("grpc {:?}", s.code()),
        message,
        f.code,
    ))
}

/// A front-door answer: 200 with a Bearer token, or an RFC 6749 §5.2 error.
/// `error/oauth.rs` answers a mint past its task's budget `invalid_grant`,
/// as it does other faults of the task, so the refusal is told by its
/// description, the text of `Refusal::OutOfBudget` (a test holds the two
/// together). A body is never shown: a 200's holds a token.
pub(super) fn door_answer(status: u16, body: &[u8]) -> Outcome {
    #[derive(serde::Deserialize)]
    struct Token {
        access_token: String,
        token_type: String,
    }
    #[derive(serde::Deserialize)]
    struct Error {
        error: String,
        #[serde(default)]
        error_description: String,
    }
    if status == 200 {
        return match serde_json::from_slice::<Token>(body) {
            Ok(t) if !t.access_token.is_empty() && t.token_type == "Bearer" => Outcome::Minted,
            _ => Outcome::Failed(Failure::new(
                "200 without a token",
                "the answer holds no Bearer access_token",
                1,
            )),
        };
    }
    let Ok(e) = serde_json::from_slice::<Error>(body) else {
        return Outcome::Failed(Failure::new(
            status.to_string(),
            "the answer is not an OAuth error (RFC 6749 §5.2)",
            1,
        ));
    };
    if e.error == "invalid_grant" && e.error_description.contains(" exceeded its budget ") {
        return Outcome::Budget;
    }
    let code = match e.error.as_str() {
        "invalid_client" | "unauthorized_client" | "access_denied" => exit::REFUSED,
        "temporarily_unavailable" => exit::UNAVAILABLE,
        "invalid_request" | "invalid_scope" | "invalid_target" => exit::INVALID,
        "invalid_grant" => exit::CONFLICT,
        _ => 1,
    };
    Outcome::Failed(Failure::new(
        format!("{status} {}", short(&e.error, 40)),
        e.error_description,
        code,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerError;
    use crate::domain::refusal::Refusal;
    use crate::domain::{TaskClosed, TaskId, TaskState};
    use crate::error::oauth::OauthError;

    /// The front door's answer to `e`, as a client reads it.
    fn door(e: BrokerError) -> Outcome {
        let o = OauthError::from(e);
        let body =
            serde_json::json!({"error": o.code.as_str(), "error_description": o.description});
        door_answer(o.status.as_u16(), body.to_string().as_bytes())
    }

    #[test]
    fn a_budget_refusal_is_told_apart_as_each_edge_answers_it() {
        let task = TaskId::new();
        let spent = || BrokerError::Deviated(Refusal::OutOfBudget { task, max: 3 });
        assert!(matches!(grpc_refusal(&spent().into()), Outcome::Budget));
        assert!(matches!(door(spent()), Outcome::Budget));
        // Other faults of the task are failures on both edges.
        let closed = || {
            BrokerError::from(Refusal::from(TaskClosed::NotActive {
                task,
                state: TaskState::Deviated,
            }))
        };
        match grpc_refusal(&closed().into()) {
            Outcome::Failed(f) => assert_eq!(f.kind, "grpc FailedPrecondition"),
            other => panic!("{other:?}"),
        }
        match door(closed()) {
            Outcome::Failed(f) => {
                assert_eq!(f.kind, "400 invalid_grant");
                assert_eq!(f.code, exit::CONFLICT);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_front_door_answer_is_a_token_an_error_or_a_failure_that_shows_no_body() {
        let ok = br#"{"access_token":"eyJ.x.y","token_type":"Bearer","expires_in":60}"#;
        assert!(matches!(door_answer(200, ok), Outcome::Minted));
        for (status, body) in [
            (
                200,
                br#"{"access_token":"eyJ.x.y","token_type":"DPoP"}"#.as_slice(),
            ),
            (200, b"eyJ.x.y"),
            (502, b"<html>eyJ.x.y</html>"),
        ] {
            match door_answer(status, body) {
                Outcome::Failed(f) => assert!(!f.to_string().contains("eyJ"), "{f}"),
                other => panic!("{other:?}"),
            }
        }
        let refused = br#"{"error":"invalid_client","error_description":"invalid X.509-SVID: no"}"#;
        match door_answer(401, refused) {
            Outcome::Failed(f) => {
                assert_eq!(f.kind, "401 invalid_client");
                assert_eq!(f.message, "invalid X.509-SVID: no");
                assert_eq!(f.code, exit::REFUSED);
            }
            other => panic!("{other:?}"),
        }
    }
}
