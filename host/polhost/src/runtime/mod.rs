//! The WebAssembly runtime fetchers run in: one wasmtime [`Engine`], one
//! pre-linked instance per fetcher component, and a fresh, bounded `Store`
//! per fetch.
//!
//! Owns instantiation, limits and the import policy; it knows no service
//! protocol and nothing about what happens to the bytes a fetcher writes.

mod bindings;
mod cache;
mod sink;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder};
use wasmtime_wasi::p2::DynOutputStream;

pub(crate) use bindings::{
    BundleRequest, ErrorKind, FetchOutcome, GuestError, ResponseInfo, Service,
};
pub(crate) use cache::{ComponentCache, sha256_digest as cache_digest};
pub(crate) use sink::{BundleSink, SinkFailure, SinkFailureSlot};

use crate::fetcher::SharedEnv;
use crate::net::Transport;
use crate::sandbox::{Grant, SandboxHooks};
use bindings::FetcherPre;
use state::FetchState;

/// How often the epoch advances: the granularity of the CPU deadline.
const EPOCH_TICK: Duration = Duration::from_millis(100);

/// Interfaces a fetcher may import; anything else is refused when the
/// component loads, naming the import. `wasi:filesystem`, `wasi:cli` and
/// `wasi:sockets` are there because language runtimes import them (Rust's
/// std the first two, CPython and SpiderMonkey all three): they are linked
/// to a context that grants nothing (no preopened directory, an empty
/// environment, every socket, lookup and connection denied; see
/// `state.rs`), so a fetcher that calls them gets an error at run time.
/// Network access is `wasi:http` only, through the sandbox hook.
pub(crate) const ALLOWED_IMPORTS: &[&str] = &[
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "wasi:http/types@",
    "wasi:http/outgoing-handler@",
    "polhost:fetcher/",
];

/// The export every fetcher has, whatever 0.1.x version of the contract it
/// was built against (wasmtime matches `0.1.y` imports and exports to the
/// host's `0.1.x`).
pub(crate) const FETCH_EXPORT_PREFIX: &str = "polhost:fetcher/fetch@0.1.";

/// Errors loading a fetcher or running one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The engine could not be configured.
    #[error("configuring the WebAssembly engine: {0}")]
    Engine(String),
    /// Not a component, or not one that fits the contract.
    #[error("fetcher {fetcher:?} is not a valid component: {message}")]
    InvalidComponent {
        /// The fetcher (its service type).
        fetcher: String,
        /// Why.
        message: String,
    },
    /// It imports an interface polhost does not grant.
    #[error(
        "fetcher {fetcher:?} imports {import}, which polhost does not grant to fetchers (allowed: {})",
        ALLOWED_IMPORTS.join(" ")
    )]
    ForbiddenImport {
        /// The fetcher.
        fetcher: String,
        /// The import.
        import: String,
    },
    /// It trapped (a panic, an out-of-bounds access, the CPU deadline, a
    /// failed memory growth).
    #[error("fetcher {fetcher:?} trapped: {message}")]
    Trap {
        /// The fetcher.
        fetcher: String,
        /// The trap, with the guest's backtrace where there is one.
        message: String,
    },
    /// It asked for more memory than its cap, and trapped.
    #[error("fetcher {fetcher:?} exceeded its memory limit ({} MiB): {message}", limit_bytes >> 20)]
    MemoryLimit {
        /// The fetcher.
        fetcher: String,
        /// The cap.
        limit_bytes: usize,
        /// The trap that followed the refused growth.
        message: String,
    },
    /// It ran wasm for its whole deadline.
    #[error("fetcher {fetcher:?} exceeded its CPU deadline ({timeout:?})")]
    CpuDeadline {
        /// The fetcher.
        fetcher: String,
        /// The deadline.
        timeout: Duration,
    },
    /// It ran past its wall-clock deadline.
    #[error("fetcher {fetcher:?} did not finish within {timeout:?}")]
    Timeout {
        /// The fetcher.
        fetcher: String,
        /// The deadline.
        timeout: Duration,
    },
}

/// Bounds applied to every fetch.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The most linear memory a fetcher instance may grow to.
    pub memory_bytes: usize,
    /// The most HTTP requests one fetch may send (redirects and token
    /// requests included).
    pub max_requests: u32,
    /// Wall-clock and CPU deadline of one fetch.
    pub fetch_timeout: Duration,
    /// How long a TCP connection may take.
    pub connect_timeout: Duration,
    /// The longest pause allowed in the middle of a response body.
    pub between_bytes_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            max_requests: 32,
            fetch_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            between_bytes_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// These limits, with a fetcher's own bounds where it has them.
    pub fn with(self, own: polhost_config::FetcherLimits) -> Limits {
        Limits {
            memory_bytes: own.memory_mib.map_or(self.memory_bytes, |mib| {
                (mib as usize).saturating_mul(1 << 20)
            }),
            max_requests: own.max_requests.unwrap_or(self.max_requests),
            fetch_timeout: own
                .timeout_seconds
                .map_or(self.fetch_timeout, Duration::from_secs),
            ..self
        }
    }
}

/// The engine and linker shared by every fetcher.
pub(crate) struct Runtime {
    engine: Engine,
    linker: Linker<FetchState>,
    limits: Limits,
    env: SharedEnv,
    cache: Option<cache::ComponentCache>,
    _ticker: Option<EpochTicker>,
}

/// An engine configured as fetchers need it: epoch interruption on (the
/// CPU deadline).
pub fn engine() -> Result<Engine, RuntimeError> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    Engine::new(&config).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}

impl Runtime {
    /// Links the interfaces a fetcher may import into `engine`'s linker.
    /// With `tick`, a thread advances the engine's epoch every 100 ms (the
    /// granularity of the CPU deadline); without, the embedder does.
    pub(crate) fn new(
        engine: Engine,
        tick: bool,
        limits: Limits,
        env: SharedEnv,
    ) -> Result<Runtime, RuntimeError> {
        let mut linker = Linker::new(&engine);
        link(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        Ok(Runtime {
            _ticker: tick.then(|| EpochTicker::start(engine.clone())),
            engine,
            linker,
            limits,
            env,
            cache: None,
        })
    }

    /// Keeps compiled components in `dir`, so a restart does not compile
    /// them again; the directory is used only while it is private (see
    /// `cache.rs`).
    pub(crate) fn with_component_cache(mut self, dir: PathBuf) -> Runtime {
        self.cache = Some(cache::ComponentCache::new(dir));
        self
    }

    /// The component cache, if any.
    pub(crate) fn cache(&self) -> Option<&cache::ComponentCache> {
        self.cache.as_ref()
    }

    /// The limits every fetch gets unless its fetcher has its own.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// Compiles a fetcher component, refuses it if it imports anything not
    /// in the allow-list or does not export the contract's `fetch`, and
    /// links it once for all its fetches.
    pub(crate) fn load(
        &self,
        fetcher: &str,
        wasm: &[u8],
        limits: Limits,
    ) -> Result<FetcherComponent, RuntimeError> {
        let invalid = |e: wasmtime::Error| RuntimeError::InvalidComponent {
            fetcher: fetcher.to_string(),
            message: format!("{e:#}"),
        };
        let component = match &self.cache {
            Some(cache) => cache.load(&self.engine, wasm),
            None => Component::new(&self.engine, wasm),
        }
        .map_err(invalid)?;
        let pre = self.check(&component, fetcher)?;
        Ok(FetcherComponent {
            name: fetcher.to_string(),
            digest: cache_digest(wasm),
            limits,
            pre,
        })
    }

    /// Checks a compiled component against the contract (its imports, its
    /// `fetch` export) and links it.
    pub(crate) fn check(
        &self,
        component: &Component,
        fetcher: &str,
    ) -> Result<FetcherPre<FetchState>, RuntimeError> {
        let invalid = |e: wasmtime::Error| RuntimeError::InvalidComponent {
            fetcher: fetcher.to_string(),
            message: format!("{e:#}"),
        };
        check_contract(&self.engine, component).map_err(|e| match e {
            ContractViolation::Import(import) => RuntimeError::ForbiddenImport {
                fetcher: fetcher.to_string(),
                import,
            },
            ContractViolation::NoFetchExport(exports) => RuntimeError::InvalidComponent {
                fetcher: fetcher.to_string(),
                message: format!(
                    "it does not export {FETCH_EXPORT_PREFIX}x (polhost:fetcher/fetch), so it does not fit the polhost:fetcher@0.1 world (exports: {})",
                    if exports.is_empty() { "none".to_string() } else { exports.join(", ") }
                ),
            },
        })?;
        let pre = self.linker.instantiate_pre(component).map_err(invalid)?;
        FetcherPre::new(pre).map_err(invalid)
    }
}

/// How a component does not fit the contract.
pub(crate) enum ContractViolation {
    /// It imports something outside [`ALLOWED_IMPORTS`].
    Import(String),
    /// It exports no `polhost:fetcher/fetch@0.1.x` (its exports listed).
    NoFetchExport(Vec<String>),
}

/// Whether `component` fits `polhost:fetcher@0.1.x` by its imports and
/// exports.
pub(crate) fn check_contract(
    engine: &Engine,
    component: &Component,
) -> Result<(), ContractViolation> {
    let ty = component.component_type();
    if let Some((import, _)) = ty
        .imports(engine)
        .find(|(import, _)| !ALLOWED_IMPORTS.iter().any(|p| import.starts_with(p)))
    {
        return Err(ContractViolation::Import(import.to_string()));
    }
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    if !exports.iter().any(|e| e.starts_with(FETCH_EXPORT_PREFIX)) {
        return Err(ContractViolation::NoFetchExport(exports));
    }
    Ok(())
}

fn link(linker: &mut Linker<FetchState>) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    bindings::polhost::fetcher::host::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    bindings::polhost::fetcher::types::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    Ok(())
}

/// A loaded fetcher, ready to be instantiated for a fetch.
pub(crate) struct FetcherComponent {
    name: String,
    digest: String,
    limits: Limits,
    pre: FetcherPre<FetchState>,
}

/// What one fetch may reach (its service's grant) and what its requests
/// are sent with (its service's client).
pub(crate) struct Reach {
    pub grant: Arc<Grant>,
    pub transport: Arc<Transport>,
}

/// What a fetch call returned, with the host's view of any sandbox refusal.
pub(crate) struct CallOutcome {
    pub result: Result<FetchOutcome, GuestError>,
    /// Why the sandbox refused a request, if it did.
    pub denial: Option<String>,
    /// How the host's last failed request failed (a certificate the
    /// service's roots do not trust, a refused connection), if one did:
    /// its URL and why.
    pub transport_failure: Option<crate::net::TransportFault>,
}

impl FetcherComponent {
    /// The bounds of each of its fetches.
    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }
    /// The fetcher's name (its service type, or its plugin name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `sha256:<hex>` of the component's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Runs one fetch in a fresh store. The sink is dropped (closing the
    /// byte stream) before this returns, whatever happened.
    pub(crate) async fn call(
        &self,
        runtime: &Runtime,
        Reach { grant, transport }: Reach,
        first_byte_timeout: Duration,
        service: &Service,
        bundle: &BundleRequest,
        sink: BundleSink,
    ) -> Result<CallOutcome, RuntimeError> {
        let limits = self.limits;
        let hooks = SandboxHooks::new(
            grant.clone(),
            transport,
            crate::sandbox::RequestLimits {
                max_requests: limits.max_requests,
                connect_timeout: limits.connect_timeout,
                first_byte_timeout,
                between_bytes_timeout: limits.between_bytes_timeout,
            },
        );
        let store_limits = StoreLimitsBuilder::new()
            .memory_size(limits.memory_bytes)
            .instances(16)
            .tables(64)
            .build();
        let env = grant
            .env
            .iter()
            .filter_map(|name| (runtime.env)(name).map(|value| (name.clone(), value)))
            .collect();
        let mut store = Store::new(
            &runtime.engine,
            FetchState::new(grant, hooks, store_limits, env),
        );
        store.limiter(|state| &mut state.limits);
        // Every epoch tick, a guest running wasm yields to the executor, so
        // a spinning fetcher cannot hold a runtime thread the other
        // bundles need; once it has run for the whole deadline it traps.
        let budget = u64::try_from(limits.fetch_timeout.as_millis() / EPOCH_TICK.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut ticks = 0u64;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            ticks += 1;
            if ticks >= budget {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                // tokio's own yield: a plain self-wake would land in the
                // worker's LIFO slot and run this guest again at once.
                Ok(wasmtime::UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });

        let trap = |e: wasmtime::Error| RuntimeError::Trap {
            fetcher: self.name.clone(),
            message: format!("{e:#}"),
        };
        let sink: DynOutputStream = Box::new(sink);
        let sink = store
            .data_mut()
            .table
            .push(sink)
            .map_err(|e| trap(e.into()))?;
        let borrowed = Resource::<DynOutputStream>::new_borrow(sink.rep());
        let call = async {
            let started = std::time::Instant::now();
            let instance = self.pre.instantiate_async(&mut store).await?;
            crate::metrics::instantiated(&self.name, started.elapsed());
            instance
                .polhost_fetcher_fetch()
                .call_fetch(&mut store, service, bundle, borrowed)
                .await
        };
        // The epoch deadline stops a guest spinning in wasm; this stops one
        // blocked in a host call (a stalled socket) too.
        let result = tokio::time::timeout(limits.fetch_timeout, call).await;
        // Close the byte stream whether or not the guest finished.
        let _ = store.data_mut().table.delete(sink);
        let denial = store.data_mut().hooks.denial.take();
        let transport_failure = store
            .data()
            .hooks
            .failure
            .lock()
            .ok()
            .and_then(|mut f| f.take());
        match result {
            Err(_) => Err(RuntimeError::Timeout {
                fetcher: self.name.clone(),
                timeout: limits.fetch_timeout,
            }),
            Ok(Err(e))
                if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) =>
            {
                Err(RuntimeError::CpuDeadline {
                    fetcher: self.name.clone(),
                    timeout: limits.fetch_timeout,
                })
            }
            Ok(Err(e)) if store.data().limits.memory_refused => Err(RuntimeError::MemoryLimit {
                fetcher: self.name.clone(),
                limit_bytes: limits.memory_bytes,
                message: format!("{e:#}"),
            }),
            Ok(Err(e)) => Err(trap(e)),
            Ok(Ok(result)) => Ok(CallOutcome {
                result,
                denial,
                transport_failure,
            }),
        }
    }
}

/// Advances the engine's epoch on a background thread; stops on drop.
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("polhost-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
