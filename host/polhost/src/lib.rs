//! polhost keeps Open Policy Agent bundles downloaded, validated, persisted
//! and fresh. Each service type is served by a *fetcher*, a WebAssembly
//! component (see [`wit`]) that runs sandboxed in wasmtime and streams the
//! bundle's bytes to the host.
//!
//! This is the embeddable core: no CLI, no ambient process state (the
//! environment is injected), and no fetcher of its own. The standard
//! fetchers are descriptors in the `polhost-fetchers` crate; any other is a
//! [`FetcherDescriptor`] made from bytes, a file or an OCI reference.
//!
//! ```no_run
//! use polhost::{Agent, FetcherRegistry, config::{Config, process_env}};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example(registry: FetcherRegistry) -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load("config.yaml".as_ref(), &process_env)?;
//! let agent = Agent::builder(config)
//!     .env(process_env)
//!     .fetchers(registry) // polhost_fetchers::registry(): http, oci, s3, gcs, azure
//!     .build()
//!     .await?;
//! let mut events = agent.subscribe();
//! tokio::spawn(async move {
//!     while let Ok(event) = events.recv().await {
//!         println!("{event:?}");
//!     }
//! });
//! agent.run(CancellationToken::new()).await;
//! # Ok(())
//! # }
//! ```
//!
//! The data path, one private module each: `config` -> the agent (its
//! fetcher registry, scheduling) -> a download (a fresh wasm instance in
//! the sandbox, streaming into a consumer that validates with
//! [`bundle`]) -> the store -> activation events.

#![deny(missing_docs)]

mod agent;
mod download;
mod fetcher;
mod inspect;
mod metrics;
mod net;
#[cfg(feature = "oci")]
mod oci;
mod private_dir;
mod runtime;
mod sandbox;
mod schedule;
#[cfg(feature = "server")]
pub mod server;
mod source;
mod status;
mod store;
pub mod wit;

/// Bundle validation (the `polhost-bundle` crate).
pub use polhost_bundle as bundle;
/// OPA's configuration, parsed (the `polhost-config` crate).
pub use polhost_config as config;

pub use agent::{
    Activation, Agent, AgentBuilder, AgentError, BundleReader, Event, ServicePlan, Source,
};
pub use download::FailureKind;
pub use fetcher::{
    ComponentSource, CredentialMethods, DeriveGrant, EnvLookup, FetcherDescriptor, FetcherRegistry,
    GrantRule, RegistryError,
};
pub use inspect::{Inspection, inspect, load_component};
pub use net::{ProxyError, TlsError};
pub use runtime::{Limits, RuntimeError, engine};
pub use sandbox::{Grant, Origin, OriginPolicy};
pub use source::SourceError;
pub use status::{BundleStatus, Failure};
