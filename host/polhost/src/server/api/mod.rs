//! The local API of `polhost run`, read from the agent's state: the active
//! bundles (OPA's bundle protocol, long polls woken by activations), OPA's
//! health checks and status document, Prometheus metrics, and the bearer
//! token that guards all of it.
//!
//! The agent keeps each bundle's status; this module only reads it (at
//! request or scrape time) and waits on the agent's activation watches.

mod auth;
mod bundles;
mod health;
pub(crate) mod metrics;
mod status;
mod time;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::listen::{self, Handler};
use super::protocol::{self, Body};
use crate::Agent;
use crate::bundle::Secret;

/// How often the metrics recorder's histograms are drained when nobody
/// scrapes (what `metrics-exporter-prometheus` leaves to its caller).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What the local API serves besides the agent's state.
#[derive(Clone, Default)]
pub struct ApiOptions {
    token: Option<Secret>,
    metrics: Option<PrometheusHandle>,
}

impl ApiOptions {
    /// Requires `Authorization: Bearer <token>` on every endpoint.
    pub fn token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }

    /// Appends what `handle`'s recorder holds (polhost's counters and
    /// histograms, OPA's counters) to `/metrics`; see
    /// [`super::install_metrics_recorder`].
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }
}

impl fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiOptions")
            .field("token", &self.token)
            .field("metrics", &self.metrics.is_some())
            .finish()
    }
}

/// Whether serving on `addr` needs a token: anything but a loopback
/// address can be reached by others, so polhost refuses to serve it
/// unguarded.
pub fn needs_token(addr: &SocketAddr) -> bool {
    !addr.ip().to_canonical().is_loopback()
}

/// Serves `agent`'s local API on `listener` until `shutdown` is cancelled
/// (held long polls then end with `304` at once).
///
/// Endpoints ([docs/local-api.md]): `GET`/`HEAD /bundles/<name>`,
/// `/health` (`?bundles`, `?plugins`), `/health/live`, `/health/ready`,
/// `/v1/status`, `/metrics`.
///
/// An error, before anything is served, if `listener` is on an address
/// others can reach ([`needs_token`]) and `options` has no token.
pub async fn serve_api(
    agent: Arc<Agent>,
    listener: TcpListener,
    options: ApiOptions,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    if options.token.is_none() && needs_token(&addr) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{addr} is not a loopback address: serving it requires a token"),
        ));
    }
    info!(%addr, token = options.token.is_some(), "serving the local API");
    if let Some(handle) = options.metrics.clone() {
        tokio::spawn(upkeep(handle, shutdown.clone()));
    }
    let api = Arc::new(Api {
        agent,
        token: options.token,
        metrics: options.metrics,
        shutdown: shutdown.clone(),
    });
    listen::serve_connections(listener, api, shutdown).await;
    info!("local API stopped");
    Ok(())
}

async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => handle.run_upkeep(),
        }
    }
}

/// One running API.
struct Api {
    agent: Arc<Agent>,
    token: Option<Secret>,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
}

impl Handler for Api {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(token) = &self.token
            && !auth::authorized(req.headers(), token)
        {
            return auth::unauthorized();
        }
        let path = req.uri().path();
        if let Some(name) = path.strip_prefix("/bundles/") {
            let name = name.to_string();
            return bundles::answer(self, &req, &name).await;
        }
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return protocol::method_not_allowed();
        }
        let query = req.uri().query().unwrap_or("");
        match path {
            "/health" => health::health(&self.agent, query),
            "/health/live" => health::live(),
            "/health/ready" => health::ready(&self.agent),
            "/v1/status" => status::status(&self.agent),
            "/metrics" => metrics::scrape(&self.agent, self.metrics.as_ref()),
            _ => protocol::not_found(),
        }
    }
}

/// `labels.id` of `/v1/status`: random, fixed for the life of the process
/// (OPA's is a UUID made at start).
fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut bytes: [u8; 16] = rand::random();
        // A version 4, variant 1 UUID, as OPA's.
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex = hex::encode(bytes);
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    })
}

/// A JSON response.
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("status documents serialize");
    protocol::with_body(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_go_without_a_token() {
        for addr in [
            "127.0.0.1:1",
            "127.1.2.3:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(!needs_token(&addr.parse().unwrap()), "{addr}");
        }
        for addr in ["0.0.0.0:1", "[::]:1", "10.0.0.1:1", "[::ffff:10.0.0.1]:1"] {
            assert!(needs_token(&addr.parse().unwrap()), "{addr}");
        }
    }

    #[test]
    fn instance_id_is_a_stable_v4_uuid() {
        let id = instance_id();
        assert_eq!(id, instance_id());
        let groups: Vec<_> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&id[14..15], "4");
    }

    #[test]
    fn options_debug_hides_the_token() {
        let options = ApiOptions::default().token(Secret::new("hunter2".into()));
        let shown = format!("{options:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
