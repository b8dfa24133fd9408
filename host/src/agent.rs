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

use crate::bundle::{self, BundleError, BundleSummary, ValidationLimits, Verification};
use crate::config::{Bundle, BundleLimits, Config, Service};
use crate::digest::HashingReader;
use crate::download::{self, Download, DownloadJob, FetchError};
use crate::runtime::{FetcherComponent, Limits, Runtime, RuntimeError};
use crate::sandbox::Grant;
use crate::store::{self, BundleDir, Metadata};
use crate::{fetchers, schedule};

/// Where an active bundle came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Loaded from the persistence directory at start.
    Disk,
    /// Downloaded from its service.
    Download,
}

/// A bundle that became active.
#[derive(Clone, Debug)]
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
}

/// What the agent reports to subscribers.
#[derive(Clone, Debug)]
pub enum Event {
    /// A bundle became active (at start from disk, or after a download).
    Activated(Activation),
    /// A poll found the active bundle current.
    NotModified { bundle: String },
    /// A poll failed; the active bundle (if any) stays active.
    Failed {
        bundle: String,
        kind: &'static str,
        message: String,
    },
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(
        "services.{service}.type: no fetcher for service type {service_type:?} (polhost has: {available})"
    )]
    NoFetcher {
        service: String,
        service_type: String,
        available: String,
    },
    /// A key in `keys` cannot be used (the message names its field).
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("persistence_directory {path}: {source}")]
    Persistence {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything the bundle tasks share.
struct Shared {
    runtime: Runtime,
    fetchers: HashMap<String, Arc<FetcherComponent>>,
    services: HashMap<String, (Service, Arc<Grant>)>,
    persistence_directory: PathBuf,
    events: broadcast::Sender<Event>,
    active: Mutex<HashMap<String, Activation>>,
    bundle_limits: BundleLimits,
    /// Per bundle name, how its signature is verified.
    verifications: HashMap<String, Arc<Verification>>,
}

/// The agent. Build it with [`Agent::new`], subscribe, then [`Agent::run`].
pub struct Agent {
    shared: Arc<Shared>,
    bundles: Vec<Bundle>,
}

impl Agent {
    /// Loads the fetcher of every configured service type (refusing a type
    /// polhost has no fetcher for) and prepares the bundles' directories.
    pub fn new(config: Config, limits: Limits) -> Result<Agent, AgentError> {
        let runtime = Runtime::new(limits)?
            .with_component_cache(component_cache_dir(&config.persistence_directory));
        let mut fetchers = HashMap::new();
        // Only services a bundle uses need a fetcher: a service kept for
        // something polhost does not do (decision logs, say) is no error.
        let used = config
            .services
            .iter()
            .filter(|s| config.bundles.iter().any(|b| b.service == s.name));
        for service in used {
            if fetchers.contains_key(&service.service_type) {
                continue;
            }
            let wasm =
                fetchers::standard(&service.service_type).ok_or_else(|| AgentError::NoFetcher {
                    service: service.name.clone(),
                    service_type: service.service_type.clone(),
                    available: fetchers::standard_types().collect::<Vec<_>>().join(", "),
                })?;
            let component = runtime.load(&service.service_type, wasm)?;
            tracing::debug!(
                fetcher = component.name(),
                digest = component.digest(),
                "fetcher loaded"
            );
            fetchers.insert(service.service_type.clone(), Arc::new(component));
        }
        let services = config
            .services
            .iter()
            .map(|service| {
                let grant = Grant::for_service(service);
                tracing::debug!(service = %service.name, "sandbox grant: {}", grant.describe());
                (service.name.clone(), (service.clone(), Arc::new(grant)))
            })
            .collect();
        for bundle in &config.bundles {
            let dir = BundleDir::new(&config.persistence_directory, &bundle.name, bundle.persist);
            dir.prepare().map_err(|source| AgentError::Persistence {
                path: dir.path().to_path_buf(),
                source,
            })?;
        }
        let mut verifications = HashMap::new();
        for bundle in &config.bundles {
            if let Some(verification) =
                Verification::new(&config.keys, bundle.signing.as_ref()).map_err(AgentError::Key)?
            {
                verifications.insert(bundle.name.clone(), Arc::new(verification));
            }
        }
        let (events, _) = broadcast::channel(256);
        Ok(Agent {
            shared: Arc::new(Shared {
                runtime,
                fetchers,
                services,
                persistence_directory: config.persistence_directory.clone(),
                events,
                active: Mutex::new(HashMap::new()),
                bundle_limits: config.bundle_limits,
                verifications,
            }),
            bundles: config.bundles,
        })
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
            .map(|(s, _)| s.service_type.as_str())
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
                        self.fail(bundle, "roots", message);
                        Err(())
                    }
                    Err(Refused::Io(e)) => {
                        self.fail(bundle, "io", format!("persisting the bundle: {e}"));
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
        let (service, grant) = self
            .services
            .get(&bundle.service)
            .expect("config validation guarantees the service exists");
        let fetcher = self
            .fetchers
            .get(&service.service_type)
            .expect("Agent::new loaded a fetcher for every service type");
        let dir = self.dir(bundle);
        download::download(DownloadJob {
            runtime: &self.runtime,
            fetcher,
            grant: grant.clone(),
            service,
            bundle,
            // OPA sends the etag of the active bundle, not of the last
            // response: after a failed download, ask for it all again.
            etag: active.and_then(|a| a.etag.clone()),
            dir: &dir,
            limits: self.limits(bundle),
            verification: self.verifications.get(&bundle.name).cloned(),
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
        let activation = activation(bundle, metadata, roots, path, Source::Download);
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

    fn fail(&self, bundle: &Bundle, kind: &'static str, message: String) {
        error!(kind, "bundle download failed: {message}");
        self.announce(Event::Failed {
            bundle: bundle.name.clone(),
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
            let (summary, sha256, size) =
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
                self.fail(bundle, "roots", message);
                return None;
            }
            let activation = activation(bundle, metadata, roots, path, Source::Disk);
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

/// Where compiled fetchers are cached: the user's cache directory
/// (`$XDG_CACHE_HOME/polhost/components`, else `~/.cache/...`), shared by
/// every configuration; without one (a service with no home), inside the
/// persistence directory.
fn component_cache_dir(persistence_directory: &Path) -> PathBuf {
    let user_cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")));
    match user_cache {
        Some(dir) => dir.join("polhost/components"),
        None => persistence_directory.join(".cache/components"),
    }
}

/// Validates a bundle file, returning what it holds, its SHA-256 and size.
fn validate_file(
    path: &Path,
    limits: ValidationLimits,
    verification: Option<&Verification>,
) -> Result<(BundleSummary, String, u64), BundleError> {
    let file = File::open(path).map_err(BundleError::Io)?;
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    let summary = bundle::validate_with(&mut reader, limits, verification)?;
    reader.drain().map_err(BundleError::Io)?;
    let (sha256, size) = reader.finish();
    Ok((summary, sha256, size))
}
