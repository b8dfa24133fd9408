//! The data of one fetch's `Store`: WASI contexts with nothing granted
//! (no preopens, no environment, no args, no stdio), the sandbox hook, the
//! memory limiter, and the host side of `polhost:fetcher/host`.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::polhost::fetcher::host::{self, LogLevel};
use crate::sandbox::{Grant, SandboxHooks};

pub(crate) struct FetchState {
    pub table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub hooks: SandboxHooks,
    pub limits: RecordingLimits,
    grant: Arc<Grant>,
    env: Vec<(String, String)>,
}

impl FetchState {
    /// `env` holds the values of the environment variables the grant names,
    /// looked up by the host; nothing else of the environment is reachable.
    pub fn new(
        grant: Arc<Grant>,
        hooks: SandboxHooks,
        limits: StoreLimits,
        env: Vec<(String, String)>,
    ) -> Self {
        FetchState {
            table: ResourceTable::new(),
            wasi: denying_wasi_ctx(),
            http: WasiHttpCtx::new(),
            hooks,
            limits: RecordingLimits {
                limits,
                memory_refused: false,
            },
            grant,
            env,
        }
    }
}

/// The store's limits, remembering whether a memory growth was refused, so
/// that the trap that usually follows can be reported as the memory cap it
/// is.
pub(crate) struct RecordingLimits {
    limits: StoreLimits,
    pub memory_refused: bool,
}

impl ResourceLimiter for RecordingLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.memory_refused |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// A WASI context that grants nothing: stdio goes nowhere, no environment,
/// no arguments, no preopened directory, and `wasi:sockets` denies every
/// TCP and UDP socket, every name lookup and every address (runtimes such
/// as CPython import it; a fetcher's network is `wasi:http` only).
fn denying_wasi_ctx() -> WasiCtx {
    let mut builder = WasiCtx::builder();
    builder
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    builder.build()
}

impl WasiView for FetchState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for FetchState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl host::Host for FetchState {
    fn log(&mut self, level: LogLevel, message: String) {
        // The caller's span (bundle, service) is current: see runtime::call.
        match level {
            LogLevel::Trace => tracing::trace!(target: "polhost::fetcher", "{message}"),
            LogLevel::Debug => tracing::debug!(target: "polhost::fetcher", "{message}"),
            LogLevel::Info => tracing::info!(target: "polhost::fetcher", "{message}"),
            LogLevel::Warn => tracing::warn!(target: "polhost::fetcher", "{message}"),
            LogLevel::Error => tracing::error!(target: "polhost::fetcher", "{message}"),
        }
    }

    fn read_granted_file(&mut self, path: String) -> Result<Vec<u8>, String> {
        let granted = self
            .grant
            .files
            .iter()
            .any(|p| p.as_os_str() == path.as_str());
        if !granted {
            let refusal = format!(
                "file {path:?} is not granted to service {:?}",
                self.grant.service
            );
            // A refused read fails the fetch, as a refused request does:
            // the operator must see the violation, whatever the fetcher
            // makes of it.
            let denial = format!(
                "read of file {path:?}: not granted to service {:?}",
                self.grant.service
            );
            tracing::warn!(service = %self.grant.service, "sandbox refused {denial}");
            self.hooks.denial = Some(denial);
            return Err(refusal);
        }
        // The content is a credential: only the error (which names the
        // path, never the content) leaves this function other than to the
        // guest.
        std::fs::read(&path).map_err(|e| format!("cannot read {path:?}: {e}"))
    }

    fn granted_env(&mut self, name: String) -> Option<String> {
        self.env
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }
}

impl super::bindings::polhost::fetcher::types::Host for FetchState {}
