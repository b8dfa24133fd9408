//! polhost's HTTP servers, over one implementation of OPA's bundle
//! protocol (strong SHA-256 ETags, `If-None-Match`, OPA long polling, bodies
//! streamed from the file):
//!
//! - [`serve_dir`], behind `polhost serve DIR`: `DIR/**/*.tar.gz` as
//!   bundles, for tests, demos and simple deployments.
//! - [`serve_api`], behind `polhost run --addr`: the agent's active bundles
//!   at `/bundles/<name>`, OPA's `/health` and `/v1/status`, and Prometheus
//!   `/metrics`, guarded by an optional bearer token (docs/local-api.md).
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use tokio_util::sync::CancellationToken;
//!
//! let listener = tokio::net::TcpListener::bind(polhost::server::DEFAULT_ADDR).await?;
//! let shutdown = CancellationToken::new();
//! // `GET /bundles/authz` now answers with `bundles/authz.tar.gz`.
//! polhost::server::serve_dir("bundles".into(), listener, shutdown).await
//! # }
//! ```

mod api;
mod dir;
mod listen;
mod protocol;

pub use api::metrics::{install_metrics_recorder, metrics_recorder};
pub use api::{ApiOptions, needs_token, serve_api};
pub use dir::{DEFAULT_ADDR, serve_dir};
/// What `/metrics` renders the recorder's part with.
pub use metrics_exporter_prometheus::{BuildError as MetricsError, PrometheusHandle};
