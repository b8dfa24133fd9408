//! `edge-authz --config opa.yaml`: decisions of `data.<package>.allow` over
//! HTTP, with the bundle polhost keeps fresh (see the library's docs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use edge_authz::{Engines, Options, Service};

#[derive(Parser)]
#[command(
    name = "edge-authz",
    about = "An HTTP authorization service over the OPA bundle polhost keeps fresh"
)]
struct Cli {
    /// OPA configuration file (YAML or JSON): its services and bundles.
    #[arg(long)]
    config: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8181")]
    listen: SocketAddr,
    /// Decisions are data.<PACKAGE>.allow.
    #[arg(long, default_value = "authz")]
    package: String,
    /// The bundle to decide with (default: the configuration's only one).
    #[arg(long)]
    bundle: Option<String>,
    /// How a decision gets a regorus engine: pool (reuse idle ones) or
    /// clone (one clone per decision).
    #[arg(long, default_value_t = Engines::Pool)]
    engines: Engines,
    /// The time limit of one evaluation, in milliseconds (0: none).
    #[arg(long, default_value_t = 100)]
    eval_timeout_ms: u64,
    /// Where compiled fetcher components are cached (default:
    /// $XDG_CACHE_HOME/polhost/components or ~/.cache/polhost/components).
    #[arg(long)]
    component_cache: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGE_AUTHZ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let options = Options {
        config: cli.config,
        listen: cli.listen,
        package: cli.package,
        bundle: cli.bundle,
        engines: cli.engines,
        eval_timeout: (cli.eval_timeout_ms > 0).then(|| Duration::from_millis(cli.eval_timeout_ms)),
        component_cache: cli.component_cache.or_else(default_cache),
    };
    let service = match Service::start(options).await {
        Ok(service) => service,
        Err(e) => {
            eprintln!("edge-authz: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("edge-authz: installing the SIGTERM handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    service.stop().await;
    ExitCode::SUCCESS
}

/// The cache the `polhost` command uses too.
fn default_cache() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|dir| dir.join("polhost/components"))
}
