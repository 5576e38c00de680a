//! The command line: `serve`, `dev-certs`.
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Mayfly: just-in-time, task-scoped, certificate-bound credentials for AI agents.
#[derive(Debug, Parser)]
#[command(name = "mayfly", version, about)]
pub struct Cli {
    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "MAYFLY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker: gRPC over mTLS plus HTTP (JWKS, health, readiness).
    Serve {
        /// TOML configuration file. MAYFLY_DATABASE_URL, MAYFLY_GRPC_ADDR and
        /// MAYFLY_HTTP_ADDR override what it says.
        #[arg(long, short, env = "MAYFLY_CONFIG")]
        config: PathBuf,
    },
    /// Write a local CA and X.509-SVIDs (broker, agents, orchestrator, admin,
    /// verifier) for trying Mayfly without SPIRE. Not for production.
    DevCerts {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// Trust domain of the generated SPIFFE IDs.
        #[arg(long, default_value = "example.org")]
        trust_domain: String,
    },
}
