//! The command line: `serve`, `dev-certs`, client commands for orchestrators
//! (`task`), agents (`token`), security teams (`revoke`, `tokens`, `approvals`) and verifiers
//! (`watch`, `jwks`, `token introspect`), and `bench`, the load driver.
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

mod audit;
mod bench;

pub use audit::AuditCommand;
pub use bench::BenchArgs;

/// Mayfly: just-in-time, task-scoped, certificate-bound credentials for AI agents.
#[derive(Debug, Parser)]
#[command(name = "mayfly", version, about)]
pub struct Cli {
    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "MAYFLY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Client commands' output: `table` for people, `json` for scripts.
    #[arg(long, global = true, env = "MAYFLY_OUTPUT", default_value = "table")]
    pub output: Output,
    /// Connection settings of the client commands.
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
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
    /// Try Mayfly with no external services: a complete broker on an embedded
    /// SQLite database, with a generated dev CA, SVIDs for a sample agent,
    /// sub-agent, orchestrator, admin and verifier, and the example policies, all
    /// kept in one directory. Prints the commands that walk a task's life. Not
    /// for production.
    Dev {
        /// Directory for the database, certificates, policies and configuration
        /// (created if missing; kept across runs).
        #[arg(long, default_value = ".mayfly-dev")]
        dir: PathBuf,
        /// gRPC (mTLS) listen address.
        #[arg(long, default_value = "127.0.0.1:8443")]
        grpc_addr: std::net::SocketAddr,
        /// HTTP listen address (JWKS, health, readiness, metrics).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: std::net::SocketAddr,
    },
    /// Apply the database migrations and exit: for a schema owned by another role
    /// than the brokers' (which then run with `database.migrate = false`).
    Migrate {
        /// postgres:// (or sqlite://) URL of the schema's owner.
        #[arg(long, env = "MAYFLY_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// How long to wait for the database.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        connect_timeout: Duration,
    },
    /// Policy authors: check a policy directory and its decision cases.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Load a running broker: workers mint through one edge (gRPC or the OAuth
    /// front door) as the agent (`--cert`/`--key`), in tasks the orchestrator
    /// opens, and the client's figures are printed: mints a second, latency
    /// percentiles, errors by kind.
    Bench(BenchArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Load and strictly validate schema, policies and entities; exit 1 with
    /// file:line:column errors if anything is wrong.
    Validate { dir: PathBuf },
    /// Run decision cases (a TOML file of [[case]] tables) against a policy
    /// directory; print every mismatch and exit 1 if there is one.
    Test {
        dir: PathBuf,
        cases: PathBuf,
        /// `context.environment` for the decisions.
        #[arg(long, default_value = "prod-eu")]
        environment: String,
    },
}

/// How a client command reaches the broker: its URL and the caller's SVID.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Broker gRPC URL.
    #[arg(
        long,
        global = true,
        env = "MAYFLY_BROKER",
        default_value = "https://127.0.0.1:8443"
    )]
    pub broker: String,
    /// The caller's X.509-SVID certificate (PEM).
    #[arg(
        long,
        global = true,
        env = "MAYFLY_CERT",
        default_value = ".mayfly-dev/certs/agent.crt"
    )]
    pub cert: PathBuf,
    /// The caller's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "MAYFLY_KEY",
        default_value = ".mayfly-dev/certs/agent.key"
    )]
    pub key: PathBuf,
    /// CA bundle that signs the broker's certificate (PEM).
    #[arg(
        long,
        global = true,
        env = "MAYFLY_CA",
        default_value = ".mayfly-dev/certs/ca.pem"
    )]
    pub ca: PathBuf,
    /// Name to verify in the broker's certificate (default: the URL's host).
    #[arg(long, global = true, env = "MAYFLY_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Print only this field of the result, as plain text, for scripts:
    /// `TASK=$(mayfly task start … --field id)`. A dotted path reaches into
    /// records (`task.state`).
    #[arg(long, global = true)]
    pub field: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Orchestrators: open, complete, report deviated and read tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Agents: mint tokens. Verifiers: introspect them.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Security team: list tokens.
    Tokens {
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        /// Only tokens neither revoked nor expired.
        #[arg(long)]
        active: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Security team: revoke a token, a task, an agent or everything.
    Revoke {
        #[command(subcommand)]
        target: RevokeTarget,
        /// Why (required, audited).
        #[arg(long, global = true, default_value = "")]
        reason: String,
    },
    /// Security team: list pending step-up approvals, approve or deny them.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Security team: the kill switch. Stop all new issuance to an agent, a
    /// workflow or everything until lifted.
    Freeze {
        #[command(subcommand)]
        target: FreezeTargetArg,
        /// Why (required, audited).
        #[arg(long, global = true, default_value = "")]
        reason: String,
    },
    /// Security team: a compromised agent. Revoke every token and active task of
    /// it (one event) and freeze it until `unfreeze agent`, in one transaction.
    Quarantine {
        #[command(subcommand)]
        target: QuarantineTargetArg,
        /// Why (required, audited).
        #[arg(long, global = true, default_value = "")]
        reason: String,
    },
    /// Security team: lift a freeze.
    Unfreeze {
        #[command(subcommand)]
        target: FreezeTargetArg,
        /// Why (required, audited).
        #[arg(long, global = true, default_value = "")]
        reason: String,
    },
    /// Security team: the freezes in force.
    Freezes,
    /// Security team: the tamper-evident audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Verifiers: stream revocation events after a sequence number (JSON lines).
    Watch {
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Print the broker's JWKS.
    Jwks,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Open a task for an agent.
    Start {
        /// The agent's SPIFFE ID.
        #[arg(long)]
        agent: String,
        #[arg(long)]
        workflow: String,
        #[arg(long)]
        objective: String,
        /// A declared scope as "<audience> <resource> <action>"; repeat for more.
        #[arg(long, required = true)]
        scope: Vec<String>,
        /// How long the task may run, e.g. 30m.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Complete a task: every token of it is revoked.
    Complete {
        task: String,
    },
    /// Report that a task deviated (its agent left the objective): it ends as
    /// deviated, and every token of it is revoked.
    Deviate {
        task: String,
        /// What the agent did (required, one line, audited).
        #[arg(long)]
        reason: String,
    },
    Get {
        task: String,
    },
    List {
        #[arg(long)]
        agent: Option<String>,
        /// active | completed | expired | deviated | revoked
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token for one scope of one of your tasks.
    Mint {
        #[arg(long)]
        task: String,
        /// "<audience> <resource> <action>"
        #[arg(long)]
        scope: String,
        /// Requested lifetime, e.g. 5m; the broker may grant less.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        ttl: Duration,
    },
    /// Ask the broker whether a token is active (`-` reads it from stdin).
    Introspect { token: String },
    /// Wait for the decision on your step-up approval; approved, print its token.
    Await {
        approval: String,
        /// How long to wait, e.g. 5m (0s answers at once).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        wait: Duration,
    },
    /// Offer a sub-agent a token no wider than one of yours.
    Delegate {
        /// Your token to delegate from (`-` reads it from stdin).
        #[arg(long)]
        token: String,
        /// The sub-agent's SPIFFE ID.
        #[arg(long)]
        to: String,
        /// "<audience> <resource> <action>", within your token's scope.
        #[arg(long)]
        scope: String,
        /// Lifetime of the delegated token, e.g. 1m; not past your token's.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Sub-agents: redeem a delegation made to you.
    Redeem { delegation: String },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineTargetArg {
    Agent { agent: String },
}

#[derive(Debug, Subcommand)]
pub enum FreezeTargetArg {
    Agent { agent: String },
    Workflow { workflow: String },
    All,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Approvals waiting for a decision (with --all, every state), newest first.
    List {
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Approve a pending request: the agent gets exactly one token.
    Approve {
        approval: String,
        /// Why (required, audited).
        #[arg(long)]
        reason: String,
    },
    /// Deny a pending request; asking again does not reopen it.
    Deny {
        approval: String,
        /// Why (required, audited).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RevokeTarget {
    Token {
        jti: String,
    },
    Task {
        task: String,
    },
    Agent {
        agent: String,
    },
    /// Every token of every task of a workflow (its active tasks stop).
    Workflow {
        workflow: String,
    },
    All,
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::testing::{any_text, matching};
    use clap::{CommandFactory, FromArgMatches};
    use proptest::prelude::*;
    use std::cell::RefCell;

    thread_local! {
        /// The command tree, built once per thread: clap builds (and a clone
        /// copies) it on every parse, which costs more than the parsing.
        static COMMAND: RefCell<clap::Command> = RefCell::new(Cli::command());
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let matches = COMMAND.with(|c| c.borrow_mut().try_get_matches_from_mut(args))?;
        Cli::from_arg_matches(&matches)
    }

    /// Every duration flag, in a command line that is valid but for it.
    fn with_duration(which: usize, d: &str) -> Vec<&str> {
        let mut args = vec!["mayfly"];
        args.extend(match which {
            0 => vec!["token", "mint", "--task", "t", "--scope", "a b c", "--ttl"],
            1 => vec!["token", "await", "ap", "--wait"],
            2 => vec![
                "token", "delegate", "--token", "x", "--to", "y", "--scope", "a b c", "--ttl",
            ],
            3 => vec![
                "task",
                "start",
                "--agent",
                "a",
                "--workflow",
                "w",
                "--objective",
                "o",
                "--scope",
                "a b c",
                "--duration",
            ],
            _ => vec![
                "migrate",
                "--database-url",
                "postgres://x",
                "--connect-timeout",
            ],
        });
        args.push(d);
        args
    }

    /// The duration a parsed command line carries.
    fn duration_of(cli: &Cli) -> Option<Duration> {
        match &cli.command {
            Command::Migrate {
                connect_timeout, ..
            } => Some(*connect_timeout),
            Command::Client(ClientCommand::Token(TokenCommand::Mint { ttl, .. }))
            | Command::Client(ClientCommand::Token(TokenCommand::Delegate { ttl, .. })) => {
                Some(*ttl)
            }
            Command::Client(ClientCommand::Token(TokenCommand::Await { wait, .. })) => Some(*wait),
            Command::Client(ClientCommand::Task(TaskCommand::Start { duration, .. })) => {
                Some(*duration)
            }
            _ => None,
        }
    }

    fn duration_text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => (any::<u64>(), matching("( ?)(ns|us|ms|s|m|min|h|d|w|M|y|years|parsecs|)"))
                .prop_map(|(n, unit)| format!("{}{unit}", n >> (n % 64))),
            1 => matching("[0-9 hmsd.-]{0,12}"),
            1 => any_text(),
        ]
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config())]

        #[test]
        fn a_duration_argument_is_read_as_humantime_reads_it_or_refused(
            which in 0usize..5,
            d in duration_text(),
        ) {
            let parsed = parse(&with_duration(which, &d));
            match humantime::parse_duration(&d) {
                Ok(want) => {
                    let cli = parsed.map_err(|e| TestCaseError::fail(format!("{d:?}: {e}")))?;
                    prop_assert_eq!(duration_of(&cli), Some(want));
                }
                Err(_) => prop_assert!(parsed.is_err(), "{d:?} was accepted"),
            }
        }
    }
}
