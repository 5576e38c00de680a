//! The `mayfly` binary: parse the command line, set up logging, call the library.
#![forbid(unsafe_code)]
use anyhow::Context;
use clap::Parser;
use mayfly::cli::{Cli, Command, LogFormat};
use mayfly::clock::SystemClock;
use mayfly::config::Config;
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    mayfly::app::install_crypto();
    init_tracing(cli.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MAYFLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = Config::load(&config)?;
            let app = mayfly::app::build(cfg, Arc::new(SystemClock)).await?;
            app.run(shutdown_signal()).await
        }
        Command::DevCerts { dir, trust_domain } => {
            mayfly::identity::SpiffeId::parse(&format!("spiffe://{trust_domain}/x"))
                .with_context(|| format!("--trust-domain {trust_domain:?}"))?;
            for path in mayfly::identity::devcerts::write_dev_certs(&dir, &trust_domain)? {
                println!("wrote {path}");
            }
            Ok(())
        }
        Command::Policy(cmd) => policy_command(cmd),
        Command::Client(call) => mayfly::client::run(&cli.client, &call).await,
    }
}

fn policy_command(cmd: mayfly::cli::PolicyCommand) -> anyhow::Result<()> {
    use mayfly::cli::PolicyCommand;
    use mayfly::policy::{CedarPolicy, cases};
    match cmd {
        PolicyCommand::Validate { dir } => {
            let p = CedarPolicy::load(&dir, "validate").map_err(|e| {
                anyhow::anyhow!("{} is not a valid policy set:\n{e}", dir.display())
            })?;
            println!("{}: {} policies valid", dir.display(), p.status().policies);
            Ok(())
        }
        PolicyCommand::Test {
            dir,
            cases: file,
            environment,
        } => {
            let p = CedarPolicy::load(&dir, &environment).map_err(|e| {
                anyhow::anyhow!("{} is not a valid policy set:\n{e}", dir.display())
            })?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let set: cases::CaseFile = toml::from_str(&text)
                .with_context(|| format!("{} is not a valid cases file", file.display()))?;
            let mut failed = 0;
            for c in &set.cases {
                match cases::run_case(&p, c) {
                    Ok(None) => println!("ok    {}", c.name),
                    Ok(Some(diff)) => {
                        failed += 1;
                        println!("FAIL  {}\n      {diff}", c.name);
                    }
                    Err(e) => {
                        failed += 1;
                        println!("ERROR {}\n      {e}", c.name);
                    }
                }
            }
            println!(
                "{} cases, {} passed, {failed} failed",
                set.cases.len(),
                set.cases.len() - failed
            );
            if failed > 0 {
                anyhow::bail!("{failed} of {} policy cases failed", set.cases.len());
            }
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
