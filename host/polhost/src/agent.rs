//! The agent: keeps every configured bundle downloaded, validated,
//! persisted and fresh. One task per bundle polls its service through the
//! service's fetcher, on OPA's schedule; a new bundle is committed to disk
//! and then announced as active.
//!
//! Owns scheduling and activation. Protocols belong to fetchers, checks to
//! [`crate::bundle`], file layout to [`crate::store`].

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::bundle::HashingReader;
use crate::bundle::{self, BundleError, BundleSummary, ValidationLimits, Verification};
use crate::config::{Bundle, BundleLimits, Config, Service};
use crate::download::{self, Download, DownloadJob, FailureKind, FetchError, ProgressFn};
use crate::fetcher::{FetcherRegistry, RegistryError, SharedEnv};
use crate::metrics;
use crate::net::{Network, Proxies, ProxyError, TlsError, Transport};
use crate::runtime::{self, FetcherComponent, Limits, Runtime, RuntimeError};
use crate::sandbox::Grant;
use crate::schedule;
use crate::source::{self, SourceError};
use crate::status::{BundleStatus, Failure};
use crate::store::{self, BundleDir, Metadata};

/// Where an active bundle came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// Loaded from the persistence directory at start.
    Disk,
    /// Downloaded from its service.
    Download,
}

/// A bundle that became active.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Activation {
    /// The bundle's name.
    pub bundle: String,
    /// The manifest's revision ("" if none).
    pub revision: String,
    /// Hex SHA-256 of `bundle.tar.gz`.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The etag the service gave it.
    pub etag: Option<String>,
    /// Where the active `bundle.tar.gz` is.
    pub path: PathBuf,
    /// Where it came from.
    pub source: Source,
    /// The roots it owns (`[""]`: everything).
    pub roots: Vec<String>,
    /// The activated file, open: what [`Activation::reader`] reads, even
    /// once a newer bundle has been renamed over `path`.
    file: Arc<File>,
}

impl Activation {
    /// A reader over exactly the bytes that were activated (the file as it
    /// was then, whatever has been committed since: the agent keeps it
    /// open). Readers are independent; each starts at the first byte.
    pub fn reader(&self) -> BundleReader {
        BundleReader {
            file: self.file.clone(),
            position: 0,
        }
    }
}

/// The bytes of one activation (see [`Activation::reader`]).
#[derive(Debug)]
pub struct BundleReader {
    file: Arc<File>,
    position: u64,
}

impl std::io::Read for BundleReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        // Positioned reads: readers of one activation share the file but
        // not a cursor.
        let n = self.file.read_at(buf, self.position)?;
        self.position += n as u64;
        Ok(n)
    }
}

/// What the agent reports to subscribers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// A bundle became active (at start from disk, or after a download).
    Activated(Activation),
    /// A poll found the active bundle current.
    NotModified {
        /// The bundle.
        bundle: String,
    },
    /// A poll failed; the active bundle (if any) stays active.
    Failed {
        /// The bundle.
        bundle: String,
        /// Its service.
        service: String,
        /// The fetcher (its service type) that served the poll.
        fetcher: String,
        /// What kind of failure.
        kind: FailureKind,
        /// What went wrong, naming the URL, file or field; never a secret.
        message: String,
    },
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A service has no fetcher, or its fetcher refuses its credentials.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A fetcher's component could not be had (a missing file, a digest
    /// mismatch, a registry that could not be asked).
    // The reason is the source, not in the message: `{:#}` prints both
    // (as the CLI does), and a message holding it too printed it twice.
    #[error("{field}")]
    Component {
        /// The field that names the component
        /// (`polhost.fetchers.<type>.component`, or the fetcher's name).
        field: String,
        /// Why.
        #[source]
        source: SourceError,
    },
    /// A key in `keys` cannot be used (the message names its field).
    #[error("{0}")]
    Key(String),
    /// A service's TLS settings cannot be used (a CA file that is not PEM,
    /// a client key that does not match its certificate).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A proxy variable (`HTTPS_PROXY`, ...) cannot be used.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// A fetcher does not fit the contract, or the engine failed.
    #[error("{field}")]
    Runtime {
        /// The field that names the component, as for `Component`.
        field: String,
        /// Why.
        #[source]
        source: RuntimeError,
    },
    /// The persistence directory cannot be used.
    #[error("persistence_directory {path}")]
    Persistence {
        /// The directory that failed.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// Whether the configuration must change for the agent to start (the
    /// CLI exits 2 for these), rather than the machine.
    pub fn is_config_error(&self) -> bool {
        match self {
            AgentError::Registry(_)
            | AgentError::Component { .. }
            | AgentError::Key(_)
            | AgentError::Tls(_)
            | AgentError::Proxy(_) => true,
            AgentError::Runtime { source, .. } => matches!(
                source,
                RuntimeError::InvalidComponent { .. } | RuntimeError::ForbiddenImport { .. }
            ),
            AgentError::Persistence { .. } => false,
        }
    }
}

/// Builds an [`Agent`]: grants nothing by default (no environment, no
/// fetchers, no cache), and grants by named methods.
///
/// ```no_run
/// # async fn example(registry: polhost::FetcherRegistry) -> Result<(), Box<dyn std::error::Error>> {
/// use polhost::{Agent, config::{Config, process_env}};
///
/// let config = Config::load("config.yaml".as_ref(), &process_env)?;
/// let agent = Agent::builder(config)
///     .env(process_env)
///     .fetchers(registry) // e.g. polhost_fetchers::registry()
///     .build()
///     .await?;
/// agent.run_once().await;
/// # Ok(())
/// # }
/// ```
pub struct AgentBuilder {
    config: Config,
    env: SharedEnv,
    registry: FetcherRegistry,
    plugins_from_config: bool,
    limits: Limits,
    engine: Option<wasmtime::Engine>,
    epoch_ticker: bool,
    component_cache: Option<PathBuf>,
    progress: Option<Arc<ProgressFn>>,
}

impl AgentBuilder {
    /// Keeps bundles in `dir` instead of the configuration's
    /// `persistence_directory`.
    pub fn persistence_directory(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.persistence_directory = dir.into();
        self
    }

    /// Tells `report(bundle, bytes so far)` while a download streams in
    /// (for a progress bar). It is called from polhost's writer thread once
    /// per chunk of at most 1 MiB: keep it quick.
    pub fn progress(mut self, report: impl Fn(&str, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(report));
        self
    }

    /// How fetchers' granted environment variables are looked up (default:
    /// none is set).
    pub fn env(mut self, env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        self.env = Arc::new(env);
        self
    }

    /// The fetchers the agent may use (default: none). The configuration's
    /// `polhost.fetchers` entries are added on top, each replacing the
    /// descriptor of its type, unless [`Self::plugins_from_config`] says no.
    pub fn fetchers(mut self, registry: FetcherRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// One more fetcher, replacing any of its type.
    pub fn fetcher(mut self, descriptor: crate::FetcherDescriptor) -> Self {
        self.registry.insert(descriptor);
        self
    }

    /// Whether the configuration's `polhost.fetchers` are loaded (default:
    /// yes).
    pub fn plugins_from_config(mut self, load: bool) -> Self {
        self.plugins_from_config = load;
        self
    }

    /// The bounds of every fetch (default: [`Limits::default`]); a plugin's
    /// own `limits` override them for its fetches.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Runs fetchers in `engine` (it must have epoch interruption on; see
    /// [`crate::engine`]) instead of one of the agent's own.
    pub fn engine(mut self, engine: wasmtime::Engine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// Whether the agent advances the engine's epoch on a thread of its own
    /// every 100 ms (default: yes). Say no when the embedder ticks it: the
    /// CPU deadline of a fetch counts those ticks.
    pub fn epoch_ticker(mut self, tick: bool) -> Self {
        self.epoch_ticker = tick;
        self
    }

    /// Caches compiled and pulled components in `dir` (default: no cache).
    /// It is used only while private to this user (see docs/architecture.md).
    pub fn component_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.component_cache = Some(dir.into());
        self
    }

    /// Resolves every used service to its fetcher, loads (pulling where
    /// needed) and checks each component, derives each service's grant and
    /// prepares the bundles' directories.
    pub async fn build(self) -> Result<Agent, AgentError> {
        let progress = self.progress.clone();
        let prepared = self.prepare().await?;
        let config = prepared.config;
        // Held for the agent's life; taken before anything in the
        // directory is cleaned, so a second instance harms no first one.
        let lock = store::lock(&config.persistence_directory).map_err(|source| {
            AgentError::Persistence {
                path: config.persistence_directory.clone(),
                source,
            }
        })?;
        for bundle in &config.bundles {
            let dir = BundleDir::new(&config.persistence_directory, &bundle.name, bundle.persist);
            dir.prepare().map_err(|source| AgentError::Persistence {
                path: dir.path().to_path_buf(),
                source,
            })?;
        }
        let (events, _) = broadcast::channel(256);
        let mut statuses = HashMap::new();
        let mut watches = HashMap::new();
        for bundle in &config.bundles {
            let fetcher = prepared
                .services
                .get(&bundle.service)
                .map(|s| s.fetcher.as_str())
                .unwrap_or_default();
            let status = BundleStatus::new(&bundle.name, &bundle.service, fetcher);
            statuses.insert(bundle.name.clone(), status);
            watches.insert(bundle.name.clone(), watch::Sender::new(None));
        }
        Ok(Agent {
            shared: Arc::new(Shared {
                runtime: prepared.runtime,
                fetchers: prepared.fetchers,
                services: prepared.services,
                persistence_directory: config.persistence_directory.clone(),
                _lock: lock,
                events,
                statuses: Mutex::new(statuses),
                watches,
                bundle_limits: config.bundle_limits,
                verifications: prepared.verifications,
                progress,
            }),
            bundles: config.bundles,
        })
    }

    /// Everything [`Self::build`] checks (fetchers resolved, components had
    /// and fitting the contract, grants derived, keys parsed), without
    /// touching the persistence directory or starting anything: what each
    /// used service would run with.
    pub async fn check(self) -> Result<Vec<ServicePlan>, AgentError> {
        let prepared = self.prepare().await?;
        let mut plans: Vec<ServicePlan> = prepared
            .services
            .values()
            .map(|entry| {
                let fetcher = &prepared.fetchers[&entry.fetcher];
                ServicePlan {
                    service: entry.service.name.clone(),
                    fetcher: entry.fetcher.clone(),
                    digest: fetcher.digest().to_string(),
                    grant: (*entry.grant).clone(),
                    limits: fetcher.limits(),
                }
            })
            .collect();
        let order = |name: &str| prepared.config.services.iter().position(|s| s.name == name);
        plans.sort_by_key(|plan| order(&plan.service));
        Ok(plans)
    }

    async fn prepare(self) -> Result<Prepared, AgentError> {
        let config = self.config;
        let registry = if self.plugins_from_config {
            self.registry.with_plugins(&config)
        } else {
            self.registry
        };
        let engine = match self.engine {
            Some(engine) => engine,
            None => runtime::engine().map_err(|source| AgentError::Runtime {
                field: "engine".into(),
                source,
            })?,
        };
        let mut runtime = Runtime::new(engine, self.epoch_ticker, self.limits, self.env.clone())
            .map_err(|source| AgentError::Runtime {
                field: "engine".into(),
                source,
            })?;
        if let Some(dir) = self.component_cache {
            runtime = runtime.with_component_cache(dir);
        }
        // Only services a bundle uses need a fetcher: a service kept for
        // something polhost does not do (decision logs, say) is no error.
        let used: Vec<&Service> = config
            .services
            .iter()
            .filter(|s| config.bundles.iter().any(|b| b.service == s.name))
            .collect();
        let proxies = Proxies::from_env(&*self.env).map_err(AgentError::Proxy)?;
        if !proxies.is_empty() {
            tracing::info!(
                "requests go through the proxies of HTTP_PROXY/HTTPS_PROXY (NO_PROXY and loopback excepted)"
            );
        }
        let network = Network::new(proxies);
        let mut fetchers: HashMap<String, Arc<FetcherComponent>> = HashMap::new();
        let mut services = HashMap::new();
        for service in used {
            let descriptor = registry.resolve(service)?;
            let service_type = descriptor.service_type().to_string();
            if !fetchers.contains_key(&service_type) {
                let field = if descriptor.is_plugin() {
                    format!("polhost.fetchers.{service_type}.component")
                } else {
                    format!("fetcher {service_type:?}")
                };
                let wasm = source::component_bytes(descriptor.source(), runtime.cache())
                    .await
                    .map_err(|source| AgentError::Component {
                        field: field.clone(),
                        source,
                    })?;
                let limits = runtime.limits().with(descriptor.limits());
                let component = runtime
                    .load(&service_type, &wasm, limits)
                    .map_err(|source| AgentError::Runtime { field, source })?;
                tracing::debug!(
                    fetcher = component.name(),
                    digest = component.digest(),
                    source = %descriptor.source(),
                    "fetcher loaded"
                );
                fetchers.insert(service_type.clone(), Arc::new(component));
            }
            let grant = Arc::new(descriptor.grant(service, &*self.env));
            tracing::debug!(service = %service.name, fetcher = %service_type, "sandbox grant: {}", grant.describe());
            let limits = fetchers[&service_type].limits();
            let transport =
                Transport::new(service, grant.clone(), &network, limits.connect_timeout)
                    .map_err(AgentError::Tls)?;
            if service.allow_insecure_tls {
                tracing::warn!(
                    service = %service.name,
                    "allow_insecure_tls: the certificates of service {:?} are not verified",
                    service.name
                );
            }
            services.insert(
                service.name.clone(),
                ServiceEntry {
                    service: service.clone(),
                    fetcher: service_type,
                    grant,
                    transport: Arc::new(transport),
                },
            );
        }
        let mut verifications = HashMap::new();
        for bundle in &config.bundles {
            if let Some(verification) =
                Verification::new(&config.keys, bundle.signing.as_ref()).map_err(AgentError::Key)?
            {
                verifications.insert(bundle.name.clone(), Arc::new(verification));
            }
        }
        Ok(Prepared {
            config,
            runtime,
            fetchers,
            services,
            verifications,
        })
    }
}

/// What [`AgentBuilder::check`] found a used service would run with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServicePlan {
    /// The service.
    pub service: String,
    /// The fetcher (its service type) that serves it.
    pub fetcher: String,
    /// `sha256:<hex>` of the fetcher's component.
    pub digest: String,
    /// What the fetcher may reach and read for this service.
    pub grant: Grant,
    /// The bounds of each fetch.
    pub limits: Limits,
}

/// A checked configuration, its fetchers loaded: what `build` starts from.
struct Prepared {
    config: Config,
    runtime: Runtime,
    fetchers: HashMap<String, Arc<FetcherComponent>>,
    services: HashMap<String, ServiceEntry>,
    verifications: HashMap<String, Arc<Verification>>,
}

/// A used service, the fetcher that serves it, its grant and its client.
struct ServiceEntry {
    service: Service,
    fetcher: String,
    grant: Arc<Grant>,
    transport: Arc<Transport>,
}

/// Everything the bundle tasks share.
struct Shared {
    runtime: Runtime,
    fetchers: HashMap<String, Arc<FetcherComponent>>,
    services: HashMap<String, ServiceEntry>,
    persistence_directory: PathBuf,
    /// The persistence directory is this agent's while it lives.
    _lock: store::DirLock,
    events: broadcast::Sender<Event>,
    /// Every configured bundle's status, the active bundle included: the
    /// one place activation state lives (events only notify).
    statuses: Mutex<HashMap<String, BundleStatus>>,
    /// Per bundle, the current activation, for waiters (long polling).
    watches: HashMap<String, watch::Sender<Option<Activation>>>,
    bundle_limits: BundleLimits,
    /// Per bundle name, how its signature is verified.
    verifications: HashMap<String, Arc<Verification>>,
    progress: Option<Arc<ProgressFn>>,
}

/// The agent. Build it with [`Agent::new`], subscribe, then [`Agent::run`].
pub struct Agent {
    shared: Arc<Shared>,
    bundles: Vec<Bundle>,
}

impl Agent {
    /// A builder for an agent keeping `config`'s bundles fresh.
    pub fn builder(config: Config) -> AgentBuilder {
        AgentBuilder {
            config,
            env: Arc::new(|_: &str| None),
            registry: FetcherRegistry::new(),
            plugins_from_config: true,
            limits: Limits::default(),
            engine: None,
            epoch_ticker: true,
            component_cache: None,
            progress: None,
        }
    }

    /// The current activation of `bundle`, if it is active: its bytes stay
    /// readable through [`Activation::reader`] even after a newer one
    /// replaces it.
    pub fn current(&self, bundle: &str) -> Option<Activation> {
        let statuses = self.shared.statuses.lock().expect("status lock");
        statuses.get(bundle).and_then(|s| s.active.clone())
    }

    /// Events from now on. A subscriber that falls behind loses the oldest
    /// events (`RecvError::Lagged`), never state: [`Self::status`] has it.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The bundles active now, by name.
    pub fn active(&self) -> Vec<Activation> {
        let statuses = self.shared.statuses.lock().expect("status lock");
        let mut list: Vec<_> = statuses.values().filter_map(|s| s.active.clone()).collect();
        list.sort_by(|a, b| a.bundle.cmp(&b.bundle));
        list
    }

    /// Every configured bundle's status, in the configuration's order.
    pub fn status(&self) -> Vec<BundleStatus> {
        let statuses = self.shared.statuses.lock().expect("status lock");
        self.bundles
            .iter()
            .filter_map(|b| statuses.get(&b.name).cloned())
            .collect()
    }

    /// One configured bundle's status.
    pub fn bundle_status(&self, bundle: &str) -> Option<BundleStatus> {
        let statuses = self.shared.statuses.lock().expect("status lock");
        statuses.get(bundle).cloned()
    }

    /// The current activation of a configured bundle, as a value that
    /// changes on each of its activations (`changed().await` wakes a long
    /// poll), or `None` for a bundle that is not configured.
    pub fn watch(&self, bundle: &str) -> Option<watch::Receiver<Option<Activation>>> {
        self.shared.watches.get(bundle).map(|w| w.subscribe())
    }

    /// Activates persisted bundles not yet active, then polls every
    /// bundle until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for bundle in &self.bundles {
            let shared = self.shared.clone();
            let bundle = bundle.clone();
            let shutdown = shutdown.clone();
            let span = shared.span(&bundle);
            tasks.spawn(
                async move {
                    let active = shared.active_or_restored(&bundle);
                    shared.poll_forever(&bundle, active, shutdown).await;
                }
                .instrument(span),
            );
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Activates persisted bundles not yet active, polls each bundle once,
    /// and returns how many bundles are not active afterwards.
    pub async fn run_once(&self) -> usize {
        let mut tasks = tokio::task::JoinSet::new();
        for bundle in &self.bundles {
            let shared = self.shared.clone();
            let bundle = bundle.clone();
            let span = shared.span(&bundle);
            tasks.spawn(
                async move {
                    let active = shared.active_or_restored(&bundle);
                    let polled = shared.poll(&bundle, active.as_ref()).await;
                    polled.is_ok() || active.is_some()
                }
                .instrument(span),
            );
        }
        let mut inactive = 0;
        while let Some(ok) = tasks.join_next().await {
            if !matches!(ok, Ok(true)) {
                inactive += 1;
            }
        }
        inactive
    }
}

/// A not-modified answer to a long poll sooner than this (or than half
/// the wait asked for, if shorter) means the server did not hold the
/// request: polling again at once would flood it (issue 10, item 8).
const LONG_POLL_MIN_HOLD: Duration = Duration::from_secs(1);

/// The outcome of one successful poll.
struct Polled {
    /// The activation to keep using: a new one, or the active one with the
    /// etag the service now gives its bytes. `None`: keep the active one.
    activation: Option<Activation>,
    /// Whether the service long-polled.
    long_polling: bool,
    /// Whether a new bundle was activated.
    changed: bool,
}

impl Shared {
    fn span(&self, bundle: &Bundle) -> tracing::Span {
        let fetcher = self
            .services
            .get(&bundle.service)
            .map(|s| s.fetcher.as_str())
            .unwrap_or("?");
        info_span!("bundle", name = %bundle.name, service = %bundle.service, fetcher = %fetcher)
    }

    fn dir(&self, bundle: &Bundle) -> BundleDir {
        BundleDir::new(&self.persistence_directory, &bundle.name, bundle.persist)
    }

    /// OPA's loop: poll, then sleep as [`schedule`] says, until shutdown.
    async fn poll_forever(
        &self,
        bundle: &Bundle,
        mut active: Option<Activation>,
        shutdown: CancellationToken,
    ) {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
        let mut retries = 0;
        loop {
            let started = Instant::now();
            let polled = tokio::select! {
                _ = shutdown.cancelled() => return,
                polled = self.poll(bundle, active.as_ref()) => polled,
            };
            let delay = match polled {
                Ok(polled) => {
                    retries = 0;
                    if let Some(activation) = polled.activation {
                        active = Some(activation);
                    }
                    let held = polled.long_polling
                        && (polled.changed || held_long_enough(bundle, started.elapsed()));
                    if polled.long_polling && !held {
                        warn!(
                            "the service claims long polling but answered at once: \
                             waiting the polling delay instead of asking again"
                        );
                    }
                    schedule::after_success(&bundle.polling, held, &mut rng)
                }
                Err(()) => {
                    let delay = schedule::after_failure(&bundle.polling, retries, &mut rng);
                    retries += 1;
                    delay
                }
            };
            self.update_status(&bundle.name, |s| {
                s.next_poll = Some(SystemTime::now() + delay);
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One download; activates what it brings. Failures are logged and
    /// announced here: the caller only needs to know to back off.
    async fn poll(&self, bundle: &Bundle, active: Option<&Activation>) -> Result<Polled, ()> {
        let started = Instant::now();
        self.update_status(&bundle.name, |s| s.requested(SystemTime::now()));
        // OPA sends the etag of the active bundle, not of the last
        // response: after a failed download, ask for it all again.
        let etag = active.and_then(|a| a.etag.clone());
        let sent_etag = etag.is_some();
        let (outcome, polled) = match self.download(bundle, etag).await {
            Ok(Download::NotModified(_)) if !sent_etag => {
                // Nothing was asked to be compared: a 304 here keeps no
                // bundle, so it must not pass for success (issue 10, item 6).
                let kind = FailureKind::Protocol;
                self.fail(
                    bundle,
                    kind,
                    None,
                    "the service answered not-modified (304) to a request that sent no etag: \
                     there is no bundle to keep"
                        .into(),
                );
                (kind.as_str(), Err(()))
            }
            Ok(Download::NotModified(info)) => {
                tracing::debug!("bundle not modified");
                self.update_status(&bundle.name, |s| s.succeeded(SystemTime::now()));
                metrics::not_modified(&bundle.name);
                self.announce(Event::NotModified {
                    bundle: bundle.name.clone(),
                });
                let polled = Polled {
                    activation: None,
                    long_polling: info.long_polling,
                    changed: false,
                };
                ("not-modified", Ok(polled))
            }
            Ok(Download::Fetched(fetched)) => {
                metrics::downloaded(&bundle.name, fetched.size);
                let long_polling = fetched.info.long_polling;
                match self.commit(bundle, active, fetched) {
                    Ok(Committed::Activated(activation)) => {
                        let polled = Polled {
                            activation: Some(activation),
                            long_polling,
                            changed: true,
                        };
                        ("activated", Ok(polled))
                    }
                    Ok(Committed::Unchanged(activation)) => {
                        self.announce(Event::NotModified {
                            bundle: bundle.name.clone(),
                        });
                        let polled = Polled {
                            activation: Some(activation),
                            long_polling,
                            changed: false,
                        };
                        ("unchanged", Ok(polled))
                    }
                    Err(Refused::Roots(message)) => {
                        self.fail(bundle, FailureKind::Roots, None, message);
                        (FailureKind::Roots.as_str(), Err(()))
                    }
                    Err(Refused::Io(e)) => {
                        let message = format!("persisting the bundle: {e}");
                        self.fail(bundle, FailureKind::Io, None, message);
                        (FailureKind::Io.as_str(), Err(()))
                    }
                }
            }
            Err(e) => {
                let kind = e.kind();
                self.fail(bundle, kind, e.http_status(), e.to_string());
                (kind.as_str(), Err(()))
            }
        };
        metrics::polled(&bundle.name, outcome, started.elapsed());
        polled
    }

    async fn download(
        &self,
        bundle: &Bundle,
        etag: Option<String>,
    ) -> Result<Download, FetchError> {
        let entry = self
            .services
            .get(&bundle.service)
            .expect("config validation guarantees the service exists");
        let fetcher = self
            .fetchers
            .get(&entry.fetcher)
            .expect("the builder loaded a fetcher for every used service");
        let dir = self.dir(bundle);
        download::download(DownloadJob {
            runtime: &self.runtime,
            fetcher,
            grant: entry.grant.clone(),
            transport: entry.transport.clone(),
            service: &entry.service,
            bundle,
            etag,
            dir: &dir,
            limits: self.limits(bundle),
            verification: self.verifications.get(&bundle.name).cloned(),
            progress: self.progress.clone(),
        })
        .await
    }

    fn limits(&self, bundle: &Bundle) -> ValidationLimits {
        self.bundle_limits.for_bundle(bundle.size_limit_bytes)
    }

    /// Persists and activates a downloaded bundle, unless its roots
    /// collide with another active bundle's (checked first, under the lock
    /// that activation takes, so two bundles cannot both slip in). The
    /// active bytes again, under a new etag, are not activated again: only
    /// the etag is kept, for the next request (issue 10, item 14).
    fn commit(
        &self,
        bundle: &Bundle,
        active: Option<&Activation>,
        fetched: download::Fetched,
    ) -> Result<Committed, Refused> {
        let dir = self.dir(bundle);
        let now = SystemTime::now();
        let metadata = Metadata {
            etag: fetched.info.etag.clone(),
            sha256: fetched.sha256.clone(),
            revision: fetched.summary.revision().to_string(),
            size: fetched.size,
            fetched_at: humantime::format_rfc3339_seconds(now).to_string(),
        };
        if let Some(active) = active.filter(|a| a.sha256 == fetched.sha256) {
            let mut same = active.clone();
            if same.etag != metadata.etag {
                if bundle.persist {
                    dir.write_metadata(&metadata).map_err(Refused::Io)?;
                }
                same.etag = metadata.etag;
            }
            tracing::debug!("downloaded bytes are the active bundle's: kept as they are");
            self.update_status(&bundle.name, |s| {
                s.downloaded(now);
                s.active = Some(same.clone());
            });
            return Ok(Committed::Unchanged(same));
        }
        let roots = fetched.summary.roots();
        let mut statuses = self.statuses.lock().expect("status lock");
        check_roots(&statuses, &bundle.name, &roots).map_err(Refused::Roots)?;
        let path = dir.commit(fetched.file, &metadata).map_err(Refused::Io)?;
        // One task per bundle: nothing else commits it before this opens.
        let file = File::open(&path).map_err(Refused::Io)?;
        let activation = activation(bundle, metadata, roots, path, file, Source::Download);
        let status = statuses
            .get_mut(&bundle.name)
            .expect("every bundle has a status");
        status.downloaded(now);
        status.activated(activation.clone(), now);
        drop(statuses);
        self.announce_activation(&activation);
        Ok(Committed::Activated(activation))
    }

    /// Applies `change` to `bundle`'s status.
    fn update_status(&self, bundle: &str, change: impl FnOnce(&mut BundleStatus)) {
        let mut statuses = self.statuses.lock().expect("status lock");
        if let Some(status) = statuses.get_mut(bundle) {
            change(status);
        }
    }

    /// After the status records `activation`: metrics and waiters first,
    /// then the log line and the event, as for [`Self::fail`].
    fn announce_activation(&self, activation: &Activation) {
        metrics::activated(&activation.bundle);
        if let Some(watch) = self.watches.get(&activation.bundle) {
            watch.send_replace(Some(activation.clone()));
        }
        info!(
            revision = %activation.revision,
            size = activation.size,
            sha256 = %activation.sha256,
            source = ?activation.source,
            path = %activation.path.display(),
            "bundle activated"
        );
        self.announce(Event::Activated(activation.clone()));
    }

    /// Records a failed poll: state (status, metrics) first, then the log
    /// line and the event, so whoever reacts to either reads the failure.
    fn fail(&self, bundle: &Bundle, kind: FailureKind, http_code: Option<u16>, message: String) {
        let fetcher = self
            .services
            .get(&bundle.service)
            .map(|s| s.fetcher.clone())
            .unwrap_or_default();
        metrics::failed(&bundle.name, &bundle.service, kind);
        self.update_status(&bundle.name, |s| {
            s.failed(Failure {
                kind,
                message: message.clone(),
                http_code,
                at: SystemTime::now(),
            })
        });
        error!(kind = kind.as_str(), "bundle download failed: {message}");
        self.announce(Event::Failed {
            bundle: bundle.name.clone(),
            service: bundle.service.clone(),
            fetcher,
            kind,
            message,
        });
    }

    fn announce(&self, event: Event) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// The bundle's activation: the one already active (from an earlier
    /// run), else the persisted copy, restored.
    fn active_or_restored(&self, bundle: &Bundle) -> Option<Activation> {
        let active = {
            let statuses = self.statuses.lock().expect("status lock");
            statuses.get(&bundle.name).and_then(|s| s.active.clone())
        };
        active.or_else(|| self.restore(bundle))
    }

    /// Validates and activates the persisted copy of a `persist: true`
    /// bundle, so it is served before (and without) any download.
    fn restore(&self, bundle: &Bundle) -> Option<Activation> {
        if !bundle.persist {
            return None;
        }
        let dir = self.dir(bundle);
        let verification = self.verifications.get(&bundle.name).map(|v| &**v);
        // The current pair, else the previous one: a pair is used only if
        // the bundle validates and its metadata names its digest.
        for (i, (path, meta_path)) in dir.pairs().into_iter().enumerate() {
            if !path.exists() {
                continue;
            }
            let (summary, sha256, size, file) =
                match validate_file(&path, self.limits(bundle), verification) {
                    Ok(found) => found,
                    Err(e) => {
                        warn!(path = %path.display(), "persisted bundle refused: {e}");
                        continue;
                    }
                };
            let recorded = match store::read_metadata(&meta_path) {
                Some(m) if m.sha256 == sha256 => m,
                other => {
                    warn!(
                        path = %path.display(),
                        "persisted bundle refused: {} does not match it (sha256 {} recorded, file has {sha256})",
                        meta_path.display(),
                        other.map(|m| m.sha256).unwrap_or_else(|| "missing".into())
                    );
                    continue;
                }
            };
            let path = if i == 0 {
                path
            } else {
                if let Err(e) = dir.promote_previous() {
                    warn!(dir = %dir.path().display(), "restoring the previous bundle: {e}");
                    return None;
                }
                info!("using the previous persisted bundle instead");
                dir.bundle_path()
            };
            let metadata = Metadata {
                etag: recorded.etag,
                sha256,
                revision: summary.revision().to_string(),
                size,
                fetched_at: recorded.fetched_at,
            };
            let roots = summary.roots();
            let mut statuses = self.statuses.lock().expect("status lock");
            if let Err(message) = check_roots(&statuses, &bundle.name, &roots) {
                drop(statuses);
                self.fail(bundle, FailureKind::Roots, None, message);
                return None;
            }
            let activation = activation(bundle, metadata, roots, path, file, Source::Disk);
            let status = statuses
                .get_mut(&bundle.name)
                .expect("every bundle has a status");
            status.activated(activation.clone(), SystemTime::now());
            drop(statuses);
            self.announce_activation(&activation);
            return Some(activation);
        }
        if dir.bundle_path().exists() {
            warn!("no usable persisted bundle: downloading it again");
        }
        None
    }
}

/// What a commit did with a downloaded bundle.
enum Committed {
    /// It is the active bundle now.
    Activated(Activation),
    /// Its bytes were the active bundle's: that stays active, with the
    /// etag the service gave them this time.
    Unchanged(Activation),
}

/// Why a downloaded bundle was not activated.
enum Refused {
    /// Its roots collide with another active bundle's.
    Roots(String),
    /// It could not be persisted.
    Io(std::io::Error),
}

fn activation(
    bundle: &Bundle,
    metadata: Metadata,
    roots: Vec<String>,
    path: PathBuf,
    file: File,
    source: Source,
) -> Activation {
    Activation {
        bundle: bundle.name.clone(),
        revision: metadata.revision,
        sha256: metadata.sha256,
        size: metadata.size,
        etag: metadata.etag,
        path,
        source,
        roots,
        file: Arc::new(file),
    }
}

/// OPA's rule across bundles: no two active bundles may own overlapping
/// roots. Says which roots of which bundles collide.
fn check_roots(
    statuses: &HashMap<String, BundleStatus>,
    name: &str,
    roots: &[String],
) -> Result<(), String> {
    let mut others: Vec<_> = statuses
        .values()
        .filter_map(|s| s.active.as_ref())
        .filter(|a| a.bundle != name)
        .collect();
    others.sort_by(|a, b| a.bundle.cmp(&b.bundle));
    for other in others {
        for mine in roots {
            if let Some(theirs) = other.roots.iter().find(|r| bundle::roots_overlap(mine, r)) {
                return Err(format!(
                    "bundle {name:?} not activated: its root {mine:?} overlaps root {theirs:?} of active bundle {:?}",
                    other.bundle
                ));
            }
        }
    }
    Ok(())
}

/// Validates a bundle file, returning what it holds, its SHA-256 and size,
/// and the open file those were read from (what an activation of it
/// serves, even if it is renamed).
fn validate_file(
    path: &Path,
    limits: ValidationLimits,
    verification: Option<&Verification>,
) -> Result<(BundleSummary, String, u64, File), BundleError> {
    let file = File::open(path).map_err(BundleError::Io)?;
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, &file));
    let first = bundle::validate_stream(&mut reader, limits, verification)?;
    reader.drain().map_err(BundleError::Io)?;
    let (sha256, size) = reader.finish();
    // A second look, only if a data rule needs one, through its own handle.
    let summary = first.finish(|| File::open(path))?;
    Ok((summary, sha256, size, file))
}

/// Whether a not-modified answer to a long poll came late enough to show
/// the server held it (see [`LONG_POLL_MIN_HOLD`]).
fn held_long_enough(bundle: &Bundle, took: Duration) -> bool {
    let asked = bundle
        .polling
        .long_polling_timeout
        .unwrap_or(LONG_POLL_MIN_HOLD);
    took >= LONG_POLL_MIN_HOLD.min(asked / 2)
}
