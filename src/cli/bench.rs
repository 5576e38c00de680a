//! `mayfly bench`: the flags of the load driver. The broker, the CA and the
//! agent's SVID are the client commands' own (`--broker`, `--ca`, `--cert`,
//! `--key`); every default is `mayfly dev`'s, so that `mayfly bench` drives
//! `mayfly dev` as it starts.
use crate::bench::Edge;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The orchestrator's X.509-SVID certificate (PEM), which opens the
    /// agent's tasks.
    #[arg(long, default_value = ".mayfly-dev/certs/orchestrator.crt")]
    pub orchestrator_cert: PathBuf,
    /// The orchestrator's private key (PEM).
    #[arg(long, default_value = ".mayfly-dev/certs/orchestrator.key")]
    pub orchestrator_key: PathBuf,
    /// The workflow of the tasks.
    #[arg(long, default_value = "support-triage")]
    pub workflow: String,
    /// The tasks' declared scope, "<audience> <resource> <action>". Each mint
    /// asks for a resource of its own under it (every `*` or `**` segment
    /// filled in).
    #[arg(long, default_value = "crm-api customers/eu/* read")]
    pub scope: String,
    /// Mints per task before the next task is opened: the workflow's
    /// `max_tokens` (a mint past it is a deviation, and the broker revokes the
    /// task). A refusal for budget lowers it for the rest of the run.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub task_budget: u64,
    /// How long each task is opened for (within the workflow's longest); a
    /// task is replaced before it ends.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    pub task_duration: Duration,
    /// One task for all workers instead of one each: its mints are serialised
    /// on its budget.
    #[arg(long)]
    pub one_task: bool,
    /// The lifetime each mint asks for (the broker may grant less).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub ttl: Duration,
    /// Workers, each with one request in flight.
    #[arg(long, short = 'c', default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub concurrency: u64,
    /// How long to measure, e.g. 10s or 2m.
    #[arg(long, short = 'd', value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// How long to mint first, unmeasured (connections and the broker warm up).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// The way in: `grpc` (MintToken over HTTP/2, 4 connections shared),
    /// `http` (the OAuth front door over HTTP/1.1, a keep-alive connection
    /// per worker) or `h2` (the front door over 4 shared HTTP/2 connections).
    #[arg(long, value_enum, default_value = "grpc")]
    pub edge: Edge,
    /// Every request on a new mTLS connection (TCP, TLS handshake, request),
    /// the handshake counted in its latency.
    #[arg(long)]
    pub new_connection: bool,
    /// At most this many requests a second across all workers (to measure
    /// latency below the broker's capacity). Latency then counts from when a
    /// request was due.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Hold this many more mTLS connections open and idle for the run (to see
    /// the broker's memory with them).
    #[arg(long, default_value_t = 0)]
    pub hold: usize,
    /// How long one request (with the connection opened for it) may take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub timeout: Duration,
}
