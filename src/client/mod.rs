//! The client side of the CLI: an mTLS channel from a certificate, a key and a CA
//! bundle, and one file per service (mirroring `api/`) with a function per
//! command; `output` shows the result (a message as it derives `Serialize`, see
//! `api::json`) as JSON, a table or one field.
mod admin;
mod archive;
mod args;
mod output;
mod task;
mod token;
mod verifier;

pub use args::parse_scope;
pub use output::{Printer, StdoutClosed, field_text, table};

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
pub(super) fn usage(message: String) -> anyhow::Error {
    Failed {
        code: exit::USAGE,
        message,
    }
    .into()
}

/// A gRPC refusal as a message a person can act on, with its exit code.
pub(super) fn status(e: tonic::Status) -> anyhow::Error {
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
