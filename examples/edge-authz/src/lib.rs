//! edge-authz: an HTTP authorization service that embeds polhost.
//!
//! polhost keeps one OPA bundle downloaded, validated and persisted; on
//! each activation edge-authz loads the activated bytes into a fresh
//! regorus engine and swaps it in atomically. `POST /authorize` with a JSON
//! body evaluates `data.<package>.allow` with that body as `input` and
//! answers `{"allow": true|false, "revision": "<active revision>"}`, or 503
//! until a first policy is active.
//!
//! The pieces, for an embedder to copy:
//!
//! * [`Authorizer`]: the active [`Policy`] behind an
//!   [`arc_swap::ArcSwapOption`]. A decision takes the policy once (one
//!   atomic load) and evaluates in an engine of *that* policy, so its
//!   `allow` and `revision` always belong together, whatever is swapped in
//!   meanwhile. A bundle that does not load keeps the previous policy.
//! * [`Authorizer::follow`]: the agent's events to swaps.
//! * [`Service`]: the agent, the follower and the HTTP server, started
//!   together.

#![deny(missing_docs)]

mod http;
mod policy;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use polhost::config::{Config, process_env};
use polhost::{Activation, Agent, Event};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use policy::{DecideError, Engines, LoadError, LoadSettings, Policy};
/// regorus's value type: what [`Authorizer::decide`] takes as `input`.
pub use regorus::Value;

/// The outcome of one decision.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Whether `data.<package>.allow` was `true`.
    pub allow: bool,
    /// The policy that decided.
    pub policy: Arc<Policy>,
}

impl Decision {
    /// The revision of the bundle that decided.
    pub fn revision(&self) -> &str {
        self.policy.revision()
    }
}

/// Why no decision was made.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    /// No policy is active yet.
    #[error("no policy is active yet")]
    NotReady,
    /// The active policy failed to decide.
    #[error(transparent)]
    Decide(#[from] DecideError),
}

/// What became of one activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    /// Loaded and swapped in, taking this long to load.
    Loaded(Duration),
    /// The policy of these bytes is already active.
    Unchanged,
    /// Not loaded: the previous policy (if any) stays active.
    Refused(String),
}

/// One activation, as the [`Authorizer`] handled it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReport {
    /// The bundle's revision.
    pub revision: String,
    /// Hex SHA-256 of the bundle.
    pub sha256: String,
    /// What became of it.
    pub outcome: LoadOutcome,
}

/// The active policy, swapped atomically.
pub struct Authorizer {
    current: ArcSwapOption<Policy>,
    settings: LoadSettings,
    engines: Engines,
    reports: watch::Sender<Option<LoadReport>>,
}

impl Authorizer {
    /// An authorizer with no policy yet.
    pub fn new(settings: LoadSettings, engines: Engines) -> Authorizer {
        Authorizer {
            current: ArcSwapOption::empty(),
            settings,
            engines,
            reports: watch::Sender::new(None),
        }
    }

    /// The active policy, if any.
    pub fn policy(&self) -> Option<Arc<Policy>> {
        self.current.load_full()
    }

    /// Decides for `input` with the active policy.
    pub fn decide(&self, input: Value) -> Result<Decision, DecisionError> {
        self.decide_with(input, self.engines)
    }

    /// [`Self::decide`], getting the engine as `engines` says rather than as
    /// configured (for comparing the two).
    pub fn decide_with(&self, input: Value, engines: Engines) -> Result<Decision, DecisionError> {
        // One load: the engine and the revision come from the same policy.
        let policy = self.current.load_full().ok_or(DecisionError::NotReady)?;
        let allow = policy.decide(input, engines)?;
        Ok(Decision { allow, policy })
    }

    /// Loads the activated bytes and swaps them in; on failure the active
    /// policy stays. Blocking (reads and compiles): call it from a blocking
    /// thread.
    pub fn install(&self, activation: &Activation) -> LoadReport {
        let unchanged = self
            .current
            .load()
            .as_ref()
            .is_some_and(|p| p.sha256() == activation.sha256);
        let outcome = if unchanged {
            LoadOutcome::Unchanged
        } else {
            self.load(activation)
        };
        let report = LoadReport {
            revision: activation.revision.clone(),
            sha256: activation.sha256.clone(),
            outcome,
        };
        self.reports.send_replace(Some(report.clone()));
        report
    }

    fn load(&self, activation: &Activation) -> LoadOutcome {
        let start = Instant::now();
        let loaded = Policy::load(
            activation.reader(),
            &activation.revision,
            &activation.sha256,
            &self.settings,
        );
        match loaded {
            Ok(policy) => {
                let elapsed = start.elapsed();
                let (modules, data_files) = policy.counts();
                // The swap: one atomic store of a policy built to the end.
                self.current.store(Some(Arc::new(policy)));
                info!(
                    bundle = %activation.bundle,
                    revision = %activation.revision,
                    sha256 = %activation.sha256,
                    modules,
                    data_files,
                    load_ms = elapsed.as_secs_f64() * 1e3,
                    "policy active"
                );
                LoadOutcome::Loaded(elapsed)
            }
            Err(e) => {
                let kept = self.current.load();
                error!(
                    bundle = %activation.bundle,
                    revision = %activation.revision,
                    sha256 = %activation.sha256,
                    kept = kept.as_ref().map(|p| p.revision()).unwrap_or("none"),
                    "bundle not loaded into regorus, keeping the previous policy: {e}"
                );
                LoadOutcome::Refused(e.to_string())
            }
        }
    }

    /// The last activation handled, and every one after it.
    pub fn reports(&self) -> watch::Receiver<Option<LoadReport>> {
        self.reports.subscribe()
    }

    /// Installs every activation of `bundle` the agent announces on
    /// `events` (subscribe before the agent runs, or an activation may be
    /// missed: the one active now is installed first either way), until
    /// `shutdown` or the agent is gone. Each load runs on a blocking
    /// thread, one at a time, in activation order.
    pub async fn follow(
        self: Arc<Self>,
        agent: Arc<Agent>,
        bundle: String,
        mut events: broadcast::Receiver<Event>,
        shutdown: CancellationToken,
    ) {
        if let Some(activation) = agent.current(&bundle) {
            self.install_blocking(activation).await;
        }
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.recv() => event,
            };
            match event {
                Ok(Event::Activated(activation)) if activation.bundle == bundle => {
                    self.install_blocking(activation).await;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Only the latest activation matters.
                    warn!("missed {missed} agent events; installing the current activation");
                    if let Some(activation) = agent.current(&bundle) {
                        self.install_blocking(activation).await;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn install_blocking(self: &Arc<Self>, activation: Activation) {
        let this = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || this.install(&activation)).await {
            error!("loading a bundle panicked: {e}");
        }
    }
}

/// What [`Service::start`] needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The OPA configuration file.
    pub config: PathBuf,
    /// Where to listen (port 0: any free port, see [`Service::addr`]).
    pub listen: SocketAddr,
    /// Decisions are `data.<package>.allow`.
    pub package: String,
    /// The bundle to decide with; `None`: the configuration's only bundle.
    pub bundle: Option<String>,
    /// How decisions get an engine.
    pub engines: Engines,
    /// The time limit of one evaluation (`None`: none).
    pub eval_timeout: Option<Duration>,
    /// Where polhost caches compiled fetcher components (`None`: no cache,
    /// they are compiled at every start).
    pub component_cache: Option<PathBuf>,
}

impl Options {
    /// Options for `config`, listening on `listen`, deciding
    /// `data.authz.allow` with the only bundle, pooled engines, 100 ms per
    /// evaluation, no component cache.
    pub fn new(config: impl Into<PathBuf>, listen: SocketAddr) -> Options {
        Options {
            config: config.into(),
            listen,
            package: "authz".into(),
            bundle: None,
            engines: Engines::default(),
            eval_timeout: Some(Duration::from_millis(100)),
            component_cache: None,
        }
    }
}

/// The running service: polhost's agent, the follower swapping policies in,
/// and the HTTP server. Dropping it stops it.
pub struct Service {
    addr: SocketAddr,
    bundle: String,
    agent: Arc<Agent>,
    authorizer: Arc<Authorizer>,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Service {
    /// Loads the configuration, builds the agent (the standard fetchers,
    /// the process environment), listens, and starts all three.
    pub async fn start(options: Options) -> anyhow::Result<Service> {
        use anyhow::Context;

        let config = Config::load(&options.config, &process_env)
            .with_context(|| options.config.display().to_string())?;
        let bundle = match options.bundle {
            Some(name) if config.bundles.iter().any(|b| b.name == name) => name,
            Some(name) => anyhow::bail!(
                "{}: no bundle {name:?} (configured: {})",
                options.config.display(),
                names(&config)
            ),
            None => match config.bundles.as_slice() {
                [only] => only.name.clone(),
                _ => anyhow::bail!(
                    "{}: name the bundle to decide with (configured: {})",
                    options.config.display(),
                    names(&config)
                ),
            },
        };
        let mut settings =
            LoadSettings::for_package(&options.package).map_err(anyhow::Error::msg)?;
        settings.eval_timeout = options.eval_timeout;

        let mut builder = Agent::builder(config)
            .env(process_env)
            .fetchers(polhost_fetchers::registry());
        if let Some(dir) = options.component_cache {
            builder = builder.component_cache(dir);
        }
        let agent = Arc::new(
            builder
                .build()
                .await
                .with_context(|| options.config.display().to_string())?,
        );
        let authorizer = Arc::new(Authorizer::new(settings, options.engines));
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("listening on {}", options.listen))?;
        let addr = listener.local_addr()?;

        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        // Subscribed before the agent runs: no activation is missed.
        let events = agent.subscribe();
        tasks.spawn(authorizer.clone().follow(
            agent.clone(),
            bundle.clone(),
            events,
            shutdown.clone(),
        ));
        let (runner, token) = (agent.clone(), shutdown.clone());
        tasks.spawn(async move { runner.run(token).await });
        tasks.spawn(http::serve(listener, authorizer.clone(), shutdown.clone()));
        info!(%addr, %bundle, entrypoint = %authorizer.settings.entrypoint, "edge-authz listening");
        Ok(Service {
            addr,
            bundle,
            agent,
            authorizer,
            shutdown,
            tasks,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bundle it decides with.
    pub fn bundle(&self) -> &str {
        &self.bundle
    }

    /// polhost's agent.
    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
    }

    /// The active policy and its swaps.
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    /// Stops polling, finishes the requests in flight, and returns.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn names(config: &Config) -> String {
    if config.bundles.is_empty() {
        return "none".into();
    }
    config
        .bundles
        .iter()
        .map(|b| b.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
