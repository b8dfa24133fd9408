//! The `polhost` command: a thin layer that parses arguments, sets up
//! logging and signals, and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use polhost::config::Config;
use polhost::runtime::Limits;
use polhost::{Agent, serve};

/// Exit code for an unusable configuration.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "polhost",
    version,
    about = "Keeps OPA policy bundles downloaded, validated, persisted and fresh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Keep the bundles of an OPA configuration file fresh.
    Run {
        /// OPA configuration file (YAML or JSON).
        config: PathBuf,
        /// Poll each bundle once and exit: 0 if every bundle is then
        /// active, 1 if not.
        #[arg(long)]
        once: bool,
    },
    /// Serve DIR/**/*.tar.gz as OPA bundles (ETag, 304, long polling).
    Serve {
        /// Directory holding the bundles.
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = serve::DEFAULT_ADDR)]
        addr: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("polhost: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { config, once } => run(config, once).await,
            Command::Serve { dir, addr } => serve_dir(dir, addr).await.map_err(Failure::Other),
        }
    });
    // Do not wait for a blocked consumer thread on the way out.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("polhost: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(e)) => {
            eprintln!("polhost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// The configuration is unusable: exit code 2.
    Config(anyhow::Error),
    Other(anyhow::Error),
}

async fn run(path: PathBuf, once: bool) -> Result<ExitCode, Failure> {
    let config = Config::load(&path).map_err(|e| Failure::Config(e.into()))?;
    if !config.ignored_keys.is_empty() {
        tracing::warn!(
            "ignoring configuration keys polhost does not implement yet: {}",
            config.ignored_keys.join(", ")
        );
    }
    if config.bundles.is_empty() {
        tracing::warn!("{}: no bundles configured", path.display());
    }
    let agent = Agent::new(config, Limits::default()).map_err(|e| match e {
        polhost::AgentError::NoFetcher { .. } | polhost::AgentError::Key(_) => {
            Failure::Config(anyhow::Error::new(e).context(path.display().to_string()))
        }
        e => Failure::Other(e.into()),
    })?;
    if once {
        let inactive = agent.run_once().await;
        return Ok(if inactive == 0 {
            ExitCode::SUCCESS
        } else {
            tracing::error!("{inactive} bundle(s) not active");
            ExitCode::FAILURE
        });
    }
    let shutdown = shutdown_on_signal();
    agent.run(shutdown).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn serve_dir(dir: PathBuf, addr: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        dir = %dir.display(),
        "serving bundles"
    );
    serve::serve(dir.clone(), listener, shutdown_on_signal())
        .await
        .with_context(|| format!("serving {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("POLHOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
