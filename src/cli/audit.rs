//! `mayfly audit …`: the security team's view of the tamper-evident audit
//! trail, and its archives.
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain from its anchor (the last event archived); exit 1
    /// naming the first broken event.
    Verify {
        /// "<sequence>:<hash>" from an earlier check, kept outside the database:
        /// the chain must still pass through it.
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// Events by or about an agent, under a task, of an action, in a window, in
    /// chain order. `--jsonl` pages through all of them, one JSON line each (for a
    /// SIEM).
    Events {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        task: Option<String>,
        /// e.g. token_minted, mint_denied, revocation
        #[arg(long)]
        action: Option<String>,
        /// RFC 3339, or a duration ago (e.g. 1h).
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339, or a duration ago.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        jsonl: bool,
    },
    /// Everything under one task: the task (objective, scopes, how it ended and
    /// why), its tokens and its events.
    Task { task: String },
    /// Which agents held tokens for an audience (and resources overlapping a
    /// pattern) in a window.
    Access {
        #[arg(long)]
        audience: String,
        #[arg(long)]
        resource: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
    /// Export the events dated before a time to a new file (JSON lines that
    /// verify offline), verify it, then remove those events from the store, its
    /// chain anchored at the last of them. Prints the checkpoint to keep: give it
    /// to `verify-archive --checkpoint` (this archive's last event, and where the
    /// next archive starts).
    Archive {
        /// RFC 3339, or a duration ago (e.g. 90d): events dated before it.
        #[arg(long)]
        before: String,
        /// The archive file to write; never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an archive file offline, without a broker: every hash, positions
    /// gap-free from where it starts, its last event; exit 1 naming the first
    /// bad line.
    VerifyArchive {
        file: PathBuf,
        /// "<sequence>:<hash>" kept earlier: the archive must pass through it,
        /// start after it (the previous archive's last event) or end at it.
        #[arg(long)]
        checkpoint: Option<String>,
    },
}
