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

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder};
use wasmtime_wasi::p2::DynOutputStream;

pub use bindings::{BundleRequest, ErrorKind, FetchOutcome, GuestError, ResponseInfo, Service};
pub(crate) use sink::{BundleSink, SinkFailure, SinkFailureSlot};

use crate::sandbox::{Grant, SandboxHooks};
use bindings::FetcherPre;
use state::FetchState;

/// How often the epoch advances: the granularity of the CPU deadline.
const EPOCH_TICK: Duration = Duration::from_millis(100);

/// Interfaces a fetcher may import. Everything else — `wasi:sockets`
/// first of all — is refused when the component loads. `wasi:filesystem`
/// and `wasi:cli` are allowed because Rust's std imports them; the
/// fetcher gets no preopened directory and an empty environment, so they
/// grant nothing.
const ALLOWED_IMPORTS: &[&str] = &[
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:filesystem/",
    "wasi:http/types@",
    "wasi:http/outgoing-handler@",
    "polhost:fetcher/",
];

/// Errors loading a fetcher or running one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("configuring the WebAssembly engine: {0}")]
    Engine(String),
    #[error("fetcher {fetcher:?} is not a valid component: {message}")]
    InvalidComponent { fetcher: String, message: String },
    #[error(
        "fetcher {fetcher:?} imports {import}, which polhost does not grant to fetchers (allowed: {})",
        ALLOWED_IMPORTS.join(" ")
    )]
    ForbiddenImport { fetcher: String, import: String },
    #[error("fetcher {fetcher:?} trapped: {message}")]
    Trap { fetcher: String, message: String },
    #[error("fetcher {fetcher:?} did not finish within {timeout:?}")]
    Timeout { fetcher: String, timeout: Duration },
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

/// The engine and linker shared by every fetcher.
pub struct Runtime {
    engine: Engine,
    linker: Linker<FetchState>,
    limits: Limits,
    cache: Option<cache::ComponentCache>,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Builds the engine (epoch interruption on) and links the interfaces a
    /// fetcher may import.
    pub fn new(limits: Limits) -> Result<Runtime, RuntimeError> {
        let engine_error = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(engine_error)?;
        let mut linker = Linker::new(&engine);
        link(&mut linker).map_err(engine_error)?;
        Ok(Runtime {
            _ticker: EpochTicker::start(engine.clone()),
            engine,
            linker,
            limits,
            cache: None,
        })
    }

    /// Keeps compiled components in `dir` (created 0700), so a restart
    /// does not compile them again.
    pub fn with_component_cache(mut self, dir: PathBuf) -> Runtime {
        self.cache = Some(cache::ComponentCache::new(dir));
        self
    }

    /// Compiles a fetcher component, refuses it if it imports anything not
    /// in the allow-list, and links it once for all its fetches.
    pub fn load(&self, fetcher: &str, wasm: &[u8]) -> Result<FetcherComponent, RuntimeError> {
        let invalid = |e: wasmtime::Error| RuntimeError::InvalidComponent {
            fetcher: fetcher.to_string(),
            message: format!("{e:#}"),
        };
        let component = match &self.cache {
            Some(cache) => cache.load(&self.engine, wasm),
            None => Component::new(&self.engine, wasm),
        }
        .map_err(invalid)?;
        for (import, _) in component.component_type().imports(&self.engine) {
            if !ALLOWED_IMPORTS.iter().any(|p| import.starts_with(p)) {
                return Err(RuntimeError::ForbiddenImport {
                    fetcher: fetcher.to_string(),
                    import: import.to_string(),
                });
            }
        }
        let pre = self.linker.instantiate_pre(&component).map_err(invalid)?;
        let pre = FetcherPre::new(pre).map_err(invalid)?;
        Ok(FetcherComponent {
            name: fetcher.to_string(),
            digest: format!("sha256:{}", hex::encode(Sha256::digest(wasm))),
            pre,
        })
    }
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
pub struct FetcherComponent {
    name: String,
    digest: String,
    pre: FetcherPre<FetchState>,
}

/// What a fetch call returned, with the host's view of any sandbox refusal.
pub(crate) struct CallOutcome {
    pub result: Result<FetchOutcome, GuestError>,
    /// Why the sandbox refused a request, if it did.
    pub denial: Option<String>,
}

impl FetcherComponent {
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
        grant: Arc<Grant>,
        first_byte_timeout: Duration,
        service: &Service,
        bundle: &BundleRequest,
        sink: BundleSink,
    ) -> Result<CallOutcome, RuntimeError> {
        let limits = runtime.limits;
        let hooks = SandboxHooks::new(
            grant.clone(),
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
        let mut store = Store::new(&runtime.engine, FetchState::new(grant, hooks, store_limits));
        store.limiter(|state| &mut state.limits);
        let ticks = limits.fetch_timeout.as_millis() / EPOCH_TICK.as_millis();
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX).max(1));

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
            let instance = self.pre.instantiate_async(&mut store).await?;
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
        match result {
            Err(_) => Err(RuntimeError::Timeout {
                fetcher: self.name.clone(),
                timeout: limits.fetch_timeout,
            }),
            Ok(Err(e)) => Err(trap(e)),
            Ok(Ok(result)) => Ok(CallOutcome { result, denial }),
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
