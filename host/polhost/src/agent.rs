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
use std::time::SystemTime;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::bundle::HashingReader;
use crate::bundle::{self, BundleError, BundleSummary, ValidationLimits, Verification};
use crate::config::{Bundle, BundleLimits, Config, Service};
use crate::download::{self, Download, DownloadJob, FailureKind, FetchError, ProgressFn};
use crate::fetcher::{FetcherRegistry, RegistryError, SharedEnv};
use crate::runtime::{self, FetcherComponent, Limits, Runtime, RuntimeError};
use crate::sandbox::Grant;
use crate::schedule;
use crate::source::{self, SourceError};
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
    #[error("{field}: {source}")]
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
    /// A fetcher does not fit the contract, or the engine failed.
    #[error("{field}: {source}")]
    Runtime {
        /// The field that names the component, as for `Component`.
        field: String,
        /// Why.
        #[source]
        source: RuntimeError,
    },
    /// The persistence directory cannot be used.
    #[error("persistence_directory {path}: {source}")]
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
            AgentError::Registry(_) | AgentError::Component { .. } | AgentError::Key(_) => true,
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
        for bundle in &config.bundles {
            let dir = BundleDir::new(&config.persistence_directory, &bundle.name, bundle.persist);
            dir.prepare().map_err(|source| AgentError::Persistence {
                path: dir.path().to_path_buf(),
                source,
            })?;
        }
        let (events, _) = broadcast::channel(256);
        Ok(Agent {
            shared: Arc::new(Shared {
                runtime: prepared.runtime,
                fetchers: prepared.fetchers,
                services: prepared.services,
                persistence_directory: config.persistence_directory.clone(),
                events,
                active: Mutex::new(HashMap::new()),
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
            let grant = descriptor.grant(service, &*self.env);
            tracing::debug!(service = %service.name, fetcher = %service_type, "sandbox grant: {}", grant.describe());
            services.insert(
                service.name.clone(),
                ServiceEntry {
                    service: service.clone(),
                    fetcher: service_type,
                    grant: Arc::new(grant),
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

/// A used service, the fetcher that serves it and its grant.
struct ServiceEntry {
    service: Service,
    fetcher: String,
    grant: Arc<Grant>,
}

/// Everything the bundle tasks share.
struct Shared {
    runtime: Runtime,
    fetchers: HashMap<String, Arc<FetcherComponent>>,
    services: HashMap<String, ServiceEntry>,
    persistence_directory: PathBuf,
    events: broadcast::Sender<Event>,
    active: Mutex<HashMap<String, Activation>>,
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
        let active = self.shared.active.lock().expect("active lock");
        active.get(bundle).cloned()
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The bundles active now.
    pub fn active(&self) -> Vec<Activation> {
        let active = self.shared.active.lock().expect("active lock");
        let mut list: Vec<_> = active.values().cloned().collect();
        list.sort_by(|a, b| a.bundle.cmp(&b.bundle));
        list
    }

    /// Activates persisted bundles, then polls every bundle until
    /// `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for bundle in &self.bundles {
            let shared = self.shared.clone();
            let bundle = bundle.clone();
            let shutdown = shutdown.clone();
            let span = shared.span(&bundle);
            tasks.spawn(
                async move {
                    let active = shared.restore(&bundle);
                    shared.poll_forever(&bundle, active, shutdown).await;
                }
                .instrument(span),
            );
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Activates persisted bundles, polls each bundle once, and returns how
    /// many bundles are not active afterwards.
    pub async fn run_once(&self) -> usize {
        let mut tasks = tokio::task::JoinSet::new();
        for bundle in &self.bundles {
            let shared = self.shared.clone();
            let bundle = bundle.clone();
            let span = shared.span(&bundle);
            tasks.spawn(
                async move {
                    let active = shared.restore(&bundle);
                    shared.poll(&bundle, active.as_ref()).await.is_ok() || active.is_some()
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

/// The outcome of one successful poll.
struct Polled {
    long_polling: bool,
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
            let polled = tokio::select! {
                _ = shutdown.cancelled() => return,
                polled = self.poll(bundle, active.as_ref()) => polled,
            };
            let delay = match polled {
                Ok((activation, polled)) => {
                    retries = 0;
                    if let Some(activation) = activation {
                        active = Some(activation);
                    }
                    schedule::after_success(&bundle.polling, polled.long_polling, &mut rng)
                }
                Err(()) => {
                    let delay = schedule::after_failure(&bundle.polling, retries, &mut rng);
                    retries += 1;
                    delay
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One download; activates what it brings. Failures are logged and
    /// announced here: the caller only needs to know to back off.
    async fn poll(
        &self,
        bundle: &Bundle,
        active: Option<&Activation>,
    ) -> Result<(Option<Activation>, Polled), ()> {
        match self.download(bundle, active).await {
            Ok(Download::NotModified(info)) => {
                tracing::debug!("bundle not modified");
                self.announce(Event::NotModified {
                    bundle: bundle.name.clone(),
                });
                Ok((
                    None,
                    Polled {
                        long_polling: info.long_polling,
                    },
                ))
            }
            Ok(Download::Fetched(fetched)) => {
                let long_polling = fetched.info.long_polling;
                match self.commit(bundle, fetched) {
                    Ok(activation) => Ok((Some(activation), Polled { long_polling })),
                    Err(Refused::Roots(message)) => {
                        self.fail(bundle, FailureKind::Roots, message);
                        Err(())
                    }
                    Err(Refused::Io(e)) => {
                        self.fail(
                            bundle,
                            FailureKind::Io,
                            format!("persisting the bundle: {e}"),
                        );
                        Err(())
                    }
                }
            }
            Err(e) => {
                self.fail(bundle, e.kind(), e.to_string());
                Err(())
            }
        }
    }

    async fn download(
        &self,
        bundle: &Bundle,
        active: Option<&Activation>,
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
            service: &entry.service,
            bundle,
            // OPA sends the etag of the active bundle, not of the last
            // response: after a failed download, ask for it all again.
            etag: active.and_then(|a| a.etag.clone()),
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
    /// that activation takes, so two bundles cannot both slip in).
    fn commit(&self, bundle: &Bundle, fetched: download::Fetched) -> Result<Activation, Refused> {
        let dir = self.dir(bundle);
        let roots = fetched.summary.roots();
        let mut active = self.active.lock().expect("active lock");
        check_roots(&active, &bundle.name, &roots).map_err(Refused::Roots)?;
        let metadata = Metadata {
            etag: fetched.info.etag.clone(),
            sha256: fetched.sha256.clone(),
            revision: fetched.summary.revision().to_string(),
            size: fetched.size,
            fetched_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        let path = dir.commit(fetched.file, &metadata).map_err(Refused::Io)?;
        // One task per bundle: nothing else commits it before this opens.
        let file = File::open(&path).map_err(Refused::Io)?;
        let activation = activation(bundle, metadata, roots, path, file, Source::Download);
        active.insert(bundle.name.clone(), activation.clone());
        drop(active);
        self.announce_activation(&activation);
        Ok(activation)
    }

    fn announce_activation(&self, activation: &Activation) {
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

    fn fail(&self, bundle: &Bundle, kind: FailureKind, message: String) {
        error!(kind = kind.as_str(), "bundle download failed: {message}");
        let fetcher = self
            .services
            .get(&bundle.service)
            .map(|s| s.fetcher.clone())
            .unwrap_or_default();
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
            let mut active = self.active.lock().expect("active lock");
            if let Err(message) = check_roots(&active, &bundle.name, &roots) {
                drop(active);
                self.fail(bundle, FailureKind::Roots, message);
                return None;
            }
            let activation = activation(bundle, metadata, roots, path, file, Source::Disk);
            active.insert(bundle.name.clone(), activation.clone());
            drop(active);
            self.announce_activation(&activation);
            return Some(activation);
        }
        if dir.bundle_path().exists() {
            warn!("no usable persisted bundle: downloading it again");
        }
        None
    }
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
    active: &HashMap<String, Activation>,
    name: &str,
    roots: &[String],
) -> Result<(), String> {
    let mut others: Vec<_> = active.values().filter(|a| a.bundle != name).collect();
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
    let summary = bundle::validate_with(&mut reader, limits, verification)?;
    reader.drain().map_err(BundleError::Io)?;
    let (sha256, size) = reader.finish();
    Ok((summary, sha256, size, file))
}
