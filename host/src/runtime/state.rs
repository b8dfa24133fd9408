//! The data of one fetch's `Store`: WASI contexts with nothing granted
//! (no preopens, no environment, no args, no stdio), the sandbox hook, the
//! memory limiter, and the host side of `polhost:fetcher/host`.

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::polhost::fetcher::host::{self, LogLevel};
use crate::sandbox::{Grant, SandboxHooks};

pub(crate) struct FetchState {
    pub table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub hooks: SandboxHooks,
    pub limits: StoreLimits,
    grant: Arc<Grant>,
    env: Vec<(String, String)>,
}

impl FetchState {
    /// `env` holds the values of the environment variables the grant names,
    /// read by the host; nothing else of the environment is reachable.
    pub fn new(grant: Arc<Grant>, hooks: SandboxHooks, limits: StoreLimits) -> Self {
        let env = grant
            .env
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|v| (name.clone(), v)))
            .collect();
        FetchState {
            table: ResourceTable::new(),
            // Nothing inherited: stdio goes nowhere, no env, no preopens, no
            // network for wasi:sockets (a component importing it is refused
            // at load anyway: see runtime::ALLOWED_IMPORTS).
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            hooks,
            limits,
            grant,
            env,
        }
    }
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
            return Err(format!(
                "file {path:?} is not granted to service {:?}",
                self.grant.service
            ));
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
