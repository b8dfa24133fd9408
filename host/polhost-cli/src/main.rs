//! The `polhost` command: a thin layer that parses arguments, sets up
//! logging and signals, reads the process environment once, and hands over
//! to the libraries (`polhost`, `polhost-fetchers`).

mod check;
mod progress;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::LazyLock;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use polhost::config::{Config, FetcherEntry, Override, process_env};
use polhost::{Agent, AgentError, FetcherDescriptor, server};

use progress::Progress;

/// Exit code for an unusable configuration or component.
const EXIT_CONFIG: u8 = 2;

/// What `--version` and `-V` print after `polhost `: the version, the
/// fetcher contract it speaks, and the digest of each standard fetcher
/// (what `polhost.fetchers.<type>.digest` would pin).
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut text = format!(
        "{}\nfetcher contract: {}\nstandard fetchers:",
        env!("CARGO_PKG_VERSION"),
        polhost::wit::PACKAGE
    );
    for (service_type, digest) in polhost_fetchers::digests() {
        text.push_str(&format!("\n  {service_type:<6} {digest}"));
    }
    text
});

#[derive(Parser)]
#[command(
    name = "polhost",
    version = VERSION.as_str(),
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
        /// Serve the local API (active bundles, health, status, metrics) on
        /// IP:PORT, localhost:PORT or :PORT; overrides polhost.server.addr.
        /// Not with --once.
        #[arg(long, value_parser = parse_addr)]
        addr: Option<SocketAddr>,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
    /// Check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Serve DIR/**/*.tar.gz as OPA bundles (ETag, 304, long polling).
    Serve {
        /// Directory holding the bundles.
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = server::DEFAULT_ADDR)]
        addr: SocketAddr,
    },
    /// Fetcher plugins: inspect a component, or get the WIT to build one.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Print a shell completion script (e.g. `polhost completions bash >
    /// /etc/bash_completion.d/polhost`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration as `run` would (fetchers resolved,
    /// components loaded and checked, grants derived, keys parsed) and
    /// print what each used service would run with; touches no bundle and
    /// creates no persistence directory. Exit 0 if valid, 2 if not.
    Check {
        /// OPA configuration file (YAML or JSON).
        config: PathBuf,
        #[command(flatten)]
        overrides: OverrideArgs,
    },
}

/// OPA's `--set` and `--set-file`, applied over the file.
#[derive(clap::Args)]
struct OverrideArgs {
    /// Set a value over the file, as OPA's --set: KEY=VALUE[,KEY=VALUE...]
    /// (repeatable)
    ///
    /// KEY is a dotted path (services.acme.url, bundles.authz.persist),
    /// list items by index (services[0].url); `\` escapes `.`, `,`, `=`.
    /// true/false, null and integers are typed, anything else is a string.
    /// Applied in order over the file, after ${ENV} substitution (which
    /// applies to VALUE too).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Set a value to a file's content, as OPA's --set-file:
    /// KEY=PATH[,KEY=PATH...] (repeatable)
    ///
    /// The content, surrounding whitespace trimmed, is a string value.
    /// Applied after every --set.
    #[arg(long = "set-file", value_name = "KEY=PATH")]
    set_file: Vec<String>,
}

impl OverrideArgs {
    /// The overrides, in OPA's order: every `--set`, then every
    /// `--set-file`.
    fn parse(&self) -> Result<Vec<Override>, Failure> {
        let sets = self.set.iter().map(|arg| Override::parse_set(arg));
        let files = self
            .set_file
            .iter()
            .map(|arg| Override::parse_set_file(arg));
        sets.chain(files)
            .collect::<Result<_, _>>()
            .map_err(|e| Failure::Config(e.into()))
    }
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
    // Bars only where someone watches them, and never inside JSON logs.
    let progress = match (&cli.command, cli.log_format) {
        (Command::Run { .. }, LogFormat::Text) => Progress::on_terminal(),
        _ => None,
    };
    init_logging(cli.log_format, progress.as_ref());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("polhost: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                config,
                once,
                addr,
                overrides,
            } => run(config, once, addr, &overrides, progress).await,
            Command::Config(ConfigCommand::Check { config, overrides }) => {
                check::check(config, &overrides).await
            }
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "polhost",
                    &mut std::io::stdout(),
                );
                Ok(ExitCode::SUCCESS)
            }
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
    load_config_with(path, &[])
}

fn load_config_with(path: &Path, overrides: &[Override]) -> Result<Config, Failure> {
    Config::load_with_overrides(path, &process_env, overrides)
        .map_err(|e| Failure::Config(e.into()))
}

/// What `run` and `config check` warn about a loaded configuration.
fn warn_about(config: &Config, path: &Path) {
    if !config.ignored_keys.is_empty() {
        tracing::warn!(
            "ignoring configuration keys polhost does not implement yet: {}",
            config.ignored_keys.join(", ")
        );
    }
    if config.bundles.is_empty() {
        tracing::warn!("{}: no bundles configured", path.display());
    }
}

/// An agent that could not be built or checked: exit 2 when the
/// configuration must change, 1 when the machine must.
fn agent_failure(path: &Path, e: AgentError) -> Failure {
    let config_error = e.is_config_error();
    let e = anyhow::Error::new(e).context(path.display().to_string());
    if config_error {
        Failure::Config(e)
    } else {
        Failure::Other(e)
    }
}

async fn run(
    path: PathBuf,
    once: bool,
    addr: Option<SocketAddr>,
    overrides: &OverrideArgs,
    progress: Option<Progress>,
) -> Result<ExitCode, Failure> {
    let config = load_config_with(&path, &overrides.parse()?)?;
    warn_about(&config, &path);
    // Checked and bound before the agent is built: a refused address or a
    // port in use fails at once, not after the fetchers compile.
    let api = if once {
        None
    } else {
        LocalApi::bind(&config, addr, &path).await?
    };
    let cache = component_cache_dir(&config.persistence_directory);
    let mut builder = Agent::builder(config)
        .env(process_env)
        .fetchers(polhost_fetchers::registry())
        .component_cache(cache);
    if let Some(progress) = &progress {
        let progress = progress.clone();
        builder = builder.progress(move |bundle, bytes| progress.report(bundle, bytes));
    }
    let agent = builder.build().await.map_err(|e| agent_failure(&path, e))?;
    if let Some(progress) = &progress {
        progress.follow(agent.subscribe());
    }
    let code = if once {
        let inactive = agent.run_once().await;
        if inactive == 0 {
            ExitCode::SUCCESS
        } else {
            tracing::error!("{inactive} bundle(s) not active");
            ExitCode::FAILURE
        }
    } else {
        let agent = std::sync::Arc::new(agent);
        let shutdown = shutdown_on_signal();
        let server = api.map(|api| tokio::spawn(api.serve(agent.clone(), shutdown.clone())));
        agent.run(shutdown).await;
        if let Some(server) = server {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("local API: {e}"),
                Err(e) => tracing::error!("local API task: {e}"),
            }
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    };
    if let Some(progress) = &progress {
        progress.clear_all();
    }
    Ok(code)
}

/// `--addr` and `polhost.server.addr`: OPA's forms.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    polhost::config::parse_addr(text)
}

/// The local API of `run`, bound and ready to serve.
struct LocalApi {
    listener: tokio::net::TcpListener,
    options: server::ApiOptions,
}

impl LocalApi {
    /// Binds `--addr`, else `polhost.server.addr` (`None`: no server).
    /// Refused (exit 2) on an address others can reach without a token.
    async fn bind(
        config: &Config,
        cli_addr: Option<SocketAddr>,
        path: &Path,
    ) -> Result<Option<LocalApi>, Failure> {
        let (addr, origin) = match (cli_addr, config.server.addr) {
            (Some(addr), _) => (addr, "--addr"),
            (None, Some(addr)) => (addr, "polhost.server.addr"),
            (None, None) => return Ok(None),
        };
        let token = config.server.read_token().map_err(|e| {
            Failure::Config(anyhow::Error::new(e).context(path.display().to_string()))
        })?;
        if token.is_none() && server::needs_token(&addr) {
            return Err(Failure::Config(anyhow::anyhow!(
                "{origin} {addr}: not a loopback address, so others could read the bundles \
                 and status: set polhost.server.token or polhost.server.token_path, or \
                 listen on 127.0.0.1"
            )));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("{origin} {addr}: listening"))
            .map_err(Failure::Other)?;
        let mut options = server::ApiOptions::default();
        if let Some(token) = token {
            options = options.token(token);
        }
        // Before the agent is built, so fetcher instantiations count too.
        match server::install_metrics_recorder() {
            Ok(handle) => options = options.metrics(handle),
            Err(e) => tracing::warn!("/metrics without polhost's counters: {e}"),
        }
        Ok(Some(LocalApi { listener, options }))
    }

    async fn serve(
        self,
        agent: std::sync::Arc<Agent>,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        server::serve_api(agent, self.listener, self.options, shutdown).await
    }
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
    server::serve_dir(dir.clone(), listener, shutdown_on_signal())
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
    let mut entry = entry;
    if let polhost::config::ComponentLocation::File(path) = &mut entry.component
        && let Ok(cwd) = std::env::current_dir()
    {
        // Relative to where the user stands, not to a config file.
        *path = cwd.join(&*path);
    }
    let descriptor = FetcherDescriptor::from_entry(&entry);
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
pub(crate) fn component_cache_dir(persistence_directory: &Path) -> PathBuf {
    component_cache_dir_of_env(&process_env)
        .unwrap_or_else(|| persistence_directory.join(".cache/components"))
}

pub(crate) fn component_cache_dir_of_env(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
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

/// Dependencies that log what a request carries below `info`: wasmtime's
/// WASI bindings trace every host call with its arguments (the path and
/// query a fetcher sets: an Azure SAS `sig`, a presigned URL), oci-client
/// logs registry token responses and headers, reqwest can trace the bytes
/// of a connection. They are capped at `info` whatever `POLHOST_LOG` asks,
/// so that no level puts a secret in the log.
const CAPPED_TARGETS: [&str; 4] = [
    "wasmtime_wasi_http",
    "wasmtime_wasi",
    "oci_client",
    "reqwest",
];

fn init_logging(format: LogFormat, progress: Option<&Progress>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_env("POLHOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // A layer of its own, not a directive in `filter`: a directive the
    // user writes for the same target could not then lift it.
    let cap = CAPPED_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |cap, target| cap.with_target(*target, LevelFilter::INFO),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match (format, progress) {
        // Above the progress bars, which hide while a line is written.
        (LogFormat::Text, Some(progress)) => builder
            .with_writer(progress.log_writer())
            .finish()
            .with(cap)
            .init(),
        (LogFormat::Text, None) => builder
            .with_writer(std::io::stderr)
            .finish()
            .with(cap)
            .init(),
        (LogFormat::Json, _) => builder
            .with_writer(std::io::stderr)
            .json()
            .finish()
            .with(cap)
            .init(),
    }
}
