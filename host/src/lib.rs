//! polhost keeps Open Policy Agent bundles downloaded, validated, persisted
//! and fresh. Each service type is served by a *fetcher*, a WebAssembly
//! component (see `wit/fetcher.wit`) that runs sandboxed in wasmtime and
//! streams the bundle's bytes to the host.
//!
//! The library stands alone; the `polhost` binary is a thin CLI over it.
//!
//! ```no_run
//! use polhost::{Agent, config::Config, runtime::Limits};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load("config.yaml".as_ref())?;
//! let agent = Agent::new(config, Limits::default())?;
//! let mut events = agent.subscribe();
//! let shutdown = CancellationToken::new();
//! tokio::spawn(async move {
//!     while let Ok(event) = events.recv().await {
//!         println!("{event:?}");
//!     }
//! });
//! agent.run(shutdown).await;
//! # Ok(())
//! # }
//! ```
//!
//! The data path, one module each: [`config`] -> [`agent`] (scheduling,
//! via [`schedule`]) -> [`download`] (a [`runtime`] instance inside the
//! [`sandbox`], streaming into a consumer that hashes with [`digest`] and
//! checks with [`bundle`]) -> [`store`] -> activation events.

pub mod agent;
pub mod bundle;
pub mod config;
pub mod digest;
pub mod download;
pub mod fetchers;
pub mod runtime;
pub mod sandbox;
pub mod schedule;
pub mod secret;
pub mod serve;
pub mod store;

pub use agent::{Activation, Agent, AgentError, Event, Source};
