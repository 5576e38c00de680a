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
        Ok(code) => code,
        // Whoever read stdout went away: quietly, as SIGPIPE would have it.
        Err(e) if e.is::<mayfly::client::StdoutClosed>() => std::process::ExitCode::from(141),
        Err(e) => {
            eprintln!("error: {e:#}");
            match e.downcast_ref::<mayfly::client::Failed>() {
                Some(f) => std::process::ExitCode::from(f.code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MAYFLY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: a log file or collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let done = match cli.command {
        Command::Serve { config } => {
            let cfg = Config::load(&config)?;
            let app = mayfly::app::build(cfg, Arc::new(SystemClock)).await?;
            app.run(shutdown_signal()).await
        }
        Command::Dev {
            dir,
            grpc_addr,
            http_addr,
        } => {
            // Bound first: the issuer (and the metadata's URLs) name the port.
            let listeners = mayfly::app::Listeners::bind(grpc_addr, http_addr).await?;
            let (d, cfg) = mayfly::dev::prepare(
                &dir,
                listeners.grpc.local_addr()?,
                listeners.http.local_addr()?,
            )?;
            let app = mayfly::app::build_on(cfg, Arc::new(SystemClock), listeners).await?;
            let exe = std::env::current_exe().context("locating the mayfly binary")?;
            print!(
                "{}",
                mayfly::dev::banner(&d, &exe, app.grpc_addr()?, app.http_addr()?)
            );
            std::io::Write::flush(&mut std::io::stdout())?;
            app.run(shutdown_signal()).await
        }
        Command::Migrate {
            database_url,
            connect_timeout,
        } => {
            let shown = mayfly::store::redacted(&database_url);
            let parsed = mayfly::store::DatabaseUrl::parse(&database_url)
                .map_err(|why| anyhow::anyhow!("--database-url {why}"))?;
            if let mayfly::store::DatabaseUrl::Sqlite(path) = parsed {
                mayfly::store::SqlStore::sqlite(&path, 1, connect_timeout)
                    .await
                    .with_context(|| format!("migrating {shown}"))?;
                println!("{shown}: schema is current");
            } else {
                let store =
                    mayfly::store::SqlStore::postgres_unmigrated(&database_url, 1, connect_timeout)
                        .await
                        .with_context(|| format!("cannot use the database at {shown}"))?;
                let applied = store
                    .migrate()
                    .await
                    .with_context(|| format!("migrating {shown}"))?;
                if applied.is_empty() {
                    println!("{shown}: schema is current");
                } else {
                    for v in applied {
                        println!("{shown}: applied migration {v}");
                    }
                }
            }
            Ok(())
        }
        Command::DevCerts { dir, trust_domain } => {
            mayfly::domain::SpiffeId::parse(&format!("spiffe://{trust_domain}/x"))
                .with_context(|| format!("--trust-domain {trust_domain:?}"))?;
            for path in mayfly::identity::devcerts::write_dev_certs(&dir, &trust_domain)? {
                println!("wrote {path}");
            }
            Ok(())
        }
        // Exit codes scripts can trust: 0 valid / all cases pass, 1 a case
        // mismatched, 2 the policy set or the cases file is invalid.
        Command::Policy(cmd) => {
            use mayfly::cli::PolicyCommand;
            use mayfly::policy::cases;
            return Ok(std::process::ExitCode::from(match cmd {
                PolicyCommand::Validate { dir } => cases::validate(&dir),
                PolicyCommand::Test {
                    dir,
                    cases: file,
                    environment,
                } => cases::test(&dir, &file, &environment),
            }));
        }
        Command::Bench(args) => mayfly::bench::command(&cli.client, cli.output, &args).await,
        Command::Client(call) => mayfly::client::run(&cli.client, cli.output, &call).await,
    };
    done.map(|()| std::process::ExitCode::SUCCESS)
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
