//! The one place where errors become gRPC statuses. The client gets the reason,
//! never internals; the cause is logged once, here.
use crate::broker::BrokerError;
use crate::identity::VerifyError;
use crate::revocation::Resync;
use crate::store::StoreError;
use tonic::Status;
use tracing::error;

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        match e {
            BrokerError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            BrokerError::PermissionDenied(m) => Status::permission_denied(m),
            BrokerError::NotFound(m) => Status::not_found(m),
            BrokerError::FailedPrecondition(m) => Status::failed_precondition(m),
            BrokerError::ResourceExhausted(m) => Status::resource_exhausted(m),
            BrokerError::Store(StoreError::Unavailable(cause)) => {
                crate::metrics::STORE_ERRORS.inc();
                error!(error = %cause, "store unavailable");
                Status::unavailable(
                    // Not "nothing changed": a commit whose reply was lost may have
                    // landed. What holds is that nothing was handed out.
                    "the broker's store is unavailable; nothing was returned, retry later",
                )
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

pub fn unauthenticated(e: &VerifyError) -> Status {
    Status::unauthenticated(format!("invalid X.509-SVID: {e}"))
}

pub fn invalid(field: &'static str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}
