//! The `polhost` command: a thin layer that parses arguments, sets up
//! logging and signals, reads the process environment once, and hands over
//! to the libraries (`polhost`, `polhost-fetchers`).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use polhost::config::{Config, FetcherEntry, process_env};
use polhost::{Agent, ComponentSource, FetcherDescriptor, serve};

/// Exit code for an unusable configuration or component.
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
    /// Fetcher plugins: inspect a component, or get the WIT to build one.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Show a component's world, imports and exports, digest and size, and
    /// whether it fits polhost:fetcher@0.1.x (exit 2 if not).
    Inspect {
        /// A component file, or oci://REGISTRY/REPOSITORY[:TAG][@sha256:...]
        component: String,
        /// For oci://: the sha256 of the wasm layer (required, as in
        /// polhost.fetchers).
        #[arg(long)]
        digest: Option<String>,
        /// Also show the grant each service of this configuration would
        /// give the component, were it the fetcher of its type.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the fetcher contract's WIT (fetcher.wit), or write it and its
    /// WASI dependencies into DIR (DIR/fetcher.wit, DIR/deps/...).
    Wit {
        /// Where to write the WIT files.
        dir: Option<PathBuf>,
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
            Command::Plugin(PluginCommand::Inspect {
                component,
                digest,
                config,
            }) => inspect(&component, digest, config).await,
            Command::Plugin(PluginCommand::Wit { dir }) => wit(dir).map_err(Failure::Other),
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
    /// The configuration (or a component it names) is unusable: exit 2.
    Config(anyhow::Error),
    Other(anyhow::Error),
}

fn load_config(path: &Path) -> Result<Config, Failure> {
    Config::load(path, &process_env).map_err(|e| Failure::Config(e.into()))
}

async fn run(path: PathBuf, once: bool) -> Result<ExitCode, Failure> {
    let config = load_config(&path)?;
    if !config.ignored_keys.is_empty() {
        tracing::warn!(
            "ignoring configuration keys polhost does not implement yet: {}",
            config.ignored_keys.join(", ")
        );
    }
    if config.bundles.is_empty() {
        tracing::warn!("{}: no bundles configured", path.display());
    }
    let cache = component_cache_dir(&config.persistence_directory);
    let agent = Agent::builder(config)
        .env(process_env)
        .fetchers(polhost_fetchers::registry())
        .component_cache(cache)
        .build()
        .await
        .map_err(|e| {
            let config_error = e.is_config_error();
            let e = anyhow::Error::new(e).context(path.display().to_string());
            if config_error {
                Failure::Config(e)
            } else {
                Failure::Other(e)
            }
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

async fn inspect(
    component: &str,
    digest: Option<String>,
    config: Option<PathBuf>,
) -> Result<ExitCode, Failure> {
    let config = config.as_deref().map(load_config).transpose()?;
    // The component is described as a polhost.fetchers entry would, so
    // the same checks apply (a digest for oci://, its form).
    let entry_text = format!(
        "polhost:\n  fetchers:\n    inspected:\n      component: {}\n{}",
        yaml_quote(component),
        digest
            .as_deref()
            .map(|d| format!("      digest: {}\n", yaml_quote(d)))
            .unwrap_or_default()
    );
    let entry: FetcherEntry = Config::parse(&entry_text, &|_| None)
        .map_err(|e| Failure::Config(anyhow::anyhow!("{component}: {e}")))?
        .fetchers
        .remove(0);
    let mut descriptor = FetcherDescriptor::from_entry(&entry);
    if let ComponentSource::File { path, .. } = descriptor.source() {
        // Relative to where the user stands, not to a config file.
        let path = std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.clone());
        descriptor = FetcherDescriptor::from_entry(&FetcherEntry {
            component: polhost::config::ComponentLocation::File(path),
            ..entry.clone()
        });
    }
    let cache = config
        .as_ref()
        .map(|c| component_cache_dir(&c.persistence_directory))
        .or_else(|| component_cache_dir_of_env(&process_env));
    let wasm = polhost::load_component(descriptor.source(), cache)
        .await
        .map_err(|e| Failure::Config(e.into()))?;
    let inspection = polhost::inspect(&wasm).map_err(|e| Failure::Config(e.into()))?;
    println!("component: {component}");
    println!("digest:    {}", inspection.digest);
    println!("size:      {} bytes", inspection.size);
    match &inspection.fits {
        Ok(()) => println!("fits:      yes, {}", polhost::wit::WORLD),
        Err(why) => println!("fits:      no: {why}"),
    }
    println!("imports:");
    for import in &inspection.imports {
        println!("  {import}");
    }
    println!("exports:");
    for export in &inspection.exports {
        println!("  {export}");
    }
    if let Some(world) = &inspection.world {
        println!("world:");
        for line in world.lines() {
            println!("  {line}");
        }
    }
    if let Some(config) = &config {
        println!("grants (with --config):");
        let registry = polhost_fetchers::registry().with_plugins(config);
        for service in &config.services {
            let service_type = registry.service_type_of(service);
            // Were this component the fetcher of the service's type: the
            // grant its entry in this configuration gives it, or, for a
            // standard type without an entry, the standard one.
            match registry.get(&service_type) {
                Some(descriptor) => {
                    let grant = descriptor.grant(service, &process_env);
                    let limits = polhost::Limits::default().with(descriptor.limits());
                    println!(
                        "  service {:?} (type {service_type}): {}; limits: memory {} MiB, {} requests, {} s",
                        service.name,
                        grant.describe(),
                        limits.memory_bytes >> 20,
                        limits.max_requests,
                        limits.fetch_timeout.as_secs()
                    );
                }
                None => println!(
                    "  service {:?} (type {service_type}): no fetcher for this type in the configuration",
                    service.name
                ),
            }
        }
    }
    Ok(match inspection.fits {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!(
                "polhost: {component} does not fit {}: {why}",
                polhost::wit::WORLD
            );
            ExitCode::from(EXIT_CONFIG)
        }
    })
}

/// `text` as a YAML single-quoted scalar (no escapes but `''`).
fn yaml_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn wit(dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let Some(dir) = dir else {
        print!("{}", polhost::wit::FILES[0].1);
        return Ok(ExitCode::SUCCESS);
    };
    for (path, text) in polhost::wit::FILES {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Where compiled and pulled components are cached: the user's cache
/// directory (`$XDG_CACHE_HOME/polhost/components`, else `~/.cache/...`),
/// shared by every configuration; without one (a service with no home),
/// inside the persistence directory. Whichever it is, the library uses it
/// only while it is private to this user.
fn component_cache_dir(persistence_directory: &Path) -> PathBuf {
    component_cache_dir_of_env(&process_env)
        .unwrap_or_else(|| persistence_directory.join(".cache/components"))
}

fn component_cache_dir_of_env(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            env("HOME")
                .filter(|h| !h.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })
        .map(|dir| dir.join("polhost/components"))
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
