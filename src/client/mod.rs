//! The client side of the CLI: an mTLS channel from a certificate, a key and a CA
//! bundle (`tls`, which `mayfly bench` reads them with too), and one file per
//! service (mirroring `api/`) with a function per command; `output` shows the
//! result (a message as it derives `Serialize`, see `api::json`) as JSON, a
//! table or one field.
mod admin;
mod archive;
mod args;
mod output;
mod task;
mod tls;
mod token;
mod verifier;

pub use args::parse_scope;
pub use output::{Printer, StdoutClosed, field_text, table};
pub use tls::{Broker, CONNECT_TIMEOUT, Svid};

use crate::api::pb;
use crate::api::pb::admin_service_client::AdminServiceClient;
use crate::api::pb::task_service_client::TaskServiceClient;
use crate::api::pb::token_service_client::TokenServiceClient;
use crate::api::pb::verifier_service_client::VerifierServiceClient;
use crate::cli::{
    ApprovalsCommand, AuditCommand, ClientArgs, ClientCommand, FreezeTargetArg, Output,
    QuarantineTargetArg, RevokeTarget, TaskCommand, TokenCommand,
};
use anyhow::{Context, bail};
use args::*;
use output::without;
use serde_json::{Value, json};
use std::time::Duration;
use tonic::transport::Channel;

/// Connects to the broker over mutual TLS with the caller's SVID.
pub async fn connect(args: &ClientArgs) -> anyhow::Result<Channel> {
    let broker = Broker::from_args(args)?;
    let svid = Svid::read(("--cert", &args.cert), ("--key", &args.key))?;
    broker.connect(&svid).await
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
pub fn usage(message: String) -> anyhow::Error {
    Failed {
        code: exit::USAGE,
        message,
    }
    .into()
}

/// A gRPC refusal as a message a person can act on, with its exit code.
pub(super) fn status(e: tonic::Status) -> anyhow::Error {
    refusal(e).into()
}

/// A gRPC refusal as a [`Failed`]: its exit code, and a message a person can
/// act on (`mayfly bench` puts who was refused in front of it).
pub fn refusal(e: tonic::Status) -> Failed {
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
}

pub async fn run(args: &ClientArgs, output: Output, cmd: &ClientCommand) -> anyhow::Result<()> {
    let out = Printer::new(output, args.field.clone());
    // Verifying an archive needs no broker.
    if let ClientCommand::Audit(AuditCommand::VerifyArchive { file, checkpoint }) = cmd {
        return archive::verify(&out, file, checkpoint.as_deref());
    }
    let ch = connect(args).await.map_err(|e| Failed {
        code: exit::UNREACHABLE,
        message: format!("{e:#}"),
    })?;
    let out = &out;
    match cmd {
        ClientCommand::Task(c) => task::run(ch, out, c).await,
        ClientCommand::Token(c) => token::run(ch, out, c).await,
        ClientCommand::Tokens {
            task,
            agent,
            active,
            limit,
        } => admin::tokens(ch, out, task, agent, active, limit).await,
        ClientCommand::Revoke { target, reason } => admin::revoke(ch, out, target, reason).await,
        ClientCommand::Approvals(c) => admin::approvals(ch, out, c).await,
        ClientCommand::Freeze { target, reason } => admin::freeze(ch, out, target, reason).await,
        ClientCommand::Unfreeze { target, reason } => {
            admin::unfreeze(ch, out, target, reason).await
        }
        ClientCommand::Freezes => admin::freezes(ch, out).await,
        ClientCommand::Quarantine {
            target: QuarantineTargetArg::Agent { agent },
            reason,
        } => admin::quarantine(ch, out, agent, reason).await,
        ClientCommand::Audit(c) => admin::audit(ch, out, c).await,
        ClientCommand::Watch { after } => verifier::watch(ch, out, *after).await,
        ClientCommand::Jwks => verifier::jwks(ch, out).await,
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
