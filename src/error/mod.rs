//! The one place where errors become gRPC statuses (here) and OAuth answers
//! (`oauth`). The client gets the reason, never internals; the cause is logged
//! once, here.
use crate::broker::BrokerError;
use crate::domain::refusal::Refusal;
use crate::identity::VerifyError;
use crate::revocation::{Resync, WatchError};
use crate::store::StoreError;
use crate::token::KeyError;
use tonic::{Code, Status};
use tracing::error;

pub mod oauth;

/// The longest status message sent, in bytes. Every value a message quotes is
/// already a short prefix (`domain::text::quote`); this bounds what is left
/// (reasons naming SPIFFE IDs, policy reasons), since a client may refuse a large
/// `grpc-message` header outright (grpcio: "metadata exceeds hard limit") and
/// then never learns why it was refused.
pub const MAX_MESSAGE: usize = 4096;

/// `message`, cut on a character boundary to at most [`MAX_MESSAGE`] bytes.
pub(crate) fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    const MORE: &str = "…";
    let mut end = MAX_MESSAGE - MORE.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &message[..end])
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        match e {
            BrokerError::Refused(ref r) | BrokerError::Deviated(ref r) => {
                Status::new(refused(r), bounded(e.to_string()))
            }
            BrokerError::BadToken { .. } => Status::invalid_argument(bounded(e.to_string())),
            // The request does not match the audit trail as stored now.
            BrokerError::Archive(_) => Status::failed_precondition(bounded(e.to_string())),
            BrokerError::Store(StoreError::Unavailable(cause)) => store_unavailable(&cause),
            // The registration lapsed because the store could not be reached to
            // renew it: to the client, the store is unavailable.
            BrokerError::Keys(cause @ KeyError::Lapsed) => store_unavailable(&cause),
            BrokerError::Keys(cause) => {
                error!(error = %cause, "signing key error");
                Status::internal("internal error")
            }
            BrokerError::Store(cause) => {
                crate::metrics::STORE_ERRORS.inc();
                error!(error = %cause, "store failure");
                Status::internal("internal store error")
            }
            BrokerError::Internal(cause) => {
                error!(error = %cause, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// The status code a refusal is answered with (DESIGN's table): the role,
/// policy or ownership says no, PERMISSION_DENIED; the task, offer or approval
/// is not in a state that allows it, FAILED_PRECONDITION; a budget,
/// RESOURCE_EXHAUSTED. No wildcard: a new refusal chooses its code here.
fn refused(r: &Refusal) -> Code {
    use Refusal::*;
    match r {
        NotFound(_) => Code::NotFound,
        SelfDelegation => Code::InvalidArgument,
        OutOfBudget { .. } | TooManyOffers { .. } => Code::ResourceExhausted,
        TaskClosed(_)
        | ChangedWhileMinting { .. }
        | NoTimeLeft { .. }
        | ParentRevoked { .. }
        | AlreadyRedeemed { .. }
        | OfferLapsed { .. }
        | AncestorRevoked { .. }
        | OfferNoTimeLeft { .. }
        | ApprovalPending { .. }
        | ApprovalChanged { .. }
        | ApprovalSpent { .. }
        | ApprovalUnusable { .. }
        | ApprovalsUnusable { .. }
        | ApprovalLapsed { .. }
        | ApprovalDecided { .. } => Code::FailedPrecondition,
        MissingRole { .. }
        | Policy { .. }
        | NotOwner { .. }
        | NotOpener { .. }
        | WorkflowUndefined { .. }
        | Frozen(_)
        | OutOfScope { .. }
        | ForeignToken { .. }
        | OtherCertificate
        | InChain { .. }
        | NotAnAgent { .. }
        | Widens(_)
        | OutlivesParent { .. }
        | TooDeep { .. }
        | StepUpNotDelegated { .. }
        | NotTheSubAgent { .. }
        | ApprovalDenied { .. }
        | RepeatedStepUp { .. }
        | NotTheRequester { .. }
        | NotTheHolder { .. }
        | AgentDecides { .. }
        | OwnApproval { .. } => Code::PermissionDenied,
    }
}

/// UNAVAILABLE, counted and logged: nothing was handed out.
fn store_unavailable(cause: &dyn std::fmt::Display) -> Status {
    crate::metrics::STORE_ERRORS.inc();
    error!(error = %cause, "store unavailable");
    Status::unavailable(
        // Not "nothing changed": a commit whose reply was lost may have landed.
        // What holds is that nothing was handed out.
        "the broker's store is unavailable; nothing was returned, retry later",
    )
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        BrokerError::Store(e).into()
    }
}

/// FAILED_PRECONDITION, not OUT_OF_RANGE: OUT_OF_RANGE says the same call may
/// succeed once the state changes, and a cursor that the store's sequence catches
/// up with again names other events. The verifier must resync, not retry.
impl From<Resync> for Status {
    fn from(e: Resync) -> Status {
        Status::failed_precondition(e.to_string())
    }
}

/// A watch refused or ended: FAILED_PRECONDITION to resync (above), the
/// store's status, or UNAUTHENTICATED once the SVID has expired.
impl From<WatchError> for Status {
    fn from(e: WatchError) -> Status {
        match e {
            WatchError::Resync(r) => r.into(),
            WatchError::Store(e) => e.into(),
            expired @ WatchError::SvidExpired => Status::unauthenticated(expired.to_string()),
        }
    }
}

pub fn unauthenticated(e: &VerifyError) -> Status {
    Status::unauthenticated(bounded(format!("invalid X.509-SVID: {e}")))
}

/// INVALID_ARGUMENT naming the request field (`reason`, `scopes[2]`) and why.
pub fn invalid(field: impl std::fmt::Display, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(bounded(format!("{field}: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Missing, Target};

    #[test]
    fn a_status_message_is_cut_to_its_limit_on_a_character_boundary() {
        let short = invalid("reason", "is required");
        assert_eq!(short.message(), "reason: is required");
        // "workflow <name> not found"
        let name = "x".repeat(MAX_MESSAGE - "workflow  not found".len());
        let missing = Missing::Target(Target::Workflow(name));
        let at_limit = Status::from(BrokerError::from(Refusal::NotFound(missing)));
        assert_eq!(at_limit.code(), tonic::Code::NotFound);
        assert_eq!(at_limit.message().len(), MAX_MESSAGE);
        assert!(at_limit.message().ends_with("x not found"));
        for filler in ["x", "€", "👍"] {
            let long = BrokerError::from(Refusal::Policy {
                reason: filler.repeat(MAX_MESSAGE + 1),
                policies: vec![],
                sub_agent: None,
            });
            let status = Status::from(long);
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert!(status.message().len() <= MAX_MESSAGE, "{filler}");
            assert!(status.message().len() > MAX_MESSAGE - 8, "{filler}");
            assert!(status.message().ends_with('…'), "{filler}");
        }
    }

    #[test]
    fn refusals_are_answered_with_the_codes_the_design_names() {
        use crate::broker::BadToken;
        use crate::domain::{TaskClosed, TaskId, TaskState};
        let task = TaskId::new();
        let cases = [
            (Refusal::NotOwner { task }.into(), Code::PermissionDenied),
            (
                Refusal::from(TaskClosed::NotActive {
                    task,
                    state: TaskState::Completed,
                })
                .into(),
                Code::FailedPrecondition,
            ),
            (
                Refusal::NotFound(Missing::Task(task)).into(),
                Code::NotFound,
            ),
            (Refusal::SelfDelegation.into(), Code::InvalidArgument),
            (
                Refusal::OutOfBudget { task, max: 3 }.into(),
                Code::ResourceExhausted,
            ),
            (
                BrokerError::BadToken {
                    field: "parent_token",
                    why: BadToken::NotRecorded,
                },
                Code::InvalidArgument,
            ),
            (BrokerError::Keys(KeyError::Lapsed), Code::Unavailable),
        ];
        for (error, code) in cases {
            let shown = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{shown}");
            if code != Code::Unavailable {
                assert_eq!(status.message(), shown);
            }
        }
    }

    #[test]
    fn a_deviation_keeps_its_refusals_code_and_says_the_task_is_revoked() {
        use crate::domain::TaskId;
        let task = TaskId::new();
        let status = Status::from(BrokerError::Deviated(Refusal::OutOfBudget { task, max: 3 }));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            format!(
                "deviation: task {task} exceeded its budget of 3 tokens; the task is now deviated and its tokens are revoked"
            )
        );
    }
}
