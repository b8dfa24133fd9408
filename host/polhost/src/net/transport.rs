//! One service's HTTP client, behind the `wasi:http` hook: keep-alive
//! connections pooled per origin and reused across requests, fetches and
//! bundles; HTTP/2 where the server offers it by ALPN; the service's TLS.
//!
//! Why not wasmtime-wasi-http's default sender: it opens a new TCP and TLS
//! connection for every request and trusts only a bundled root list.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use polhost_config::Service;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

use super::Network;
use super::connect::{AddressRefused, Route};
use super::proxy::Proxies;
use super::tls::{self, TlsError};
use crate::sandbox::{Grant, shown_url};

/// How long an idle pooled connection is kept: longer than OPA's shortest
/// polling delay, so a service polled every few seconds keeps its
/// connection.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Connector = hyper_rustls::HttpsConnector<Route>;

/// The pooled client of one service.
pub struct Transport {
    client: Client<Connector, WasiBody>,
    /// For the `Proxy-Authorization` of plain requests through a proxy
    /// (a tunnel's is sent with its `CONNECT`).
    proxies: Arc<Proxies>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

/// How the last failed request failed, in the host's words (the guest
/// only gets a `wasi:http` error code): its URL without the query, and why.
pub(crate) type TransportFailure = Arc<Mutex<Option<TransportFault>>>;

/// One failed request, in the host's words.
#[derive(Clone, Debug)]
pub(crate) struct TransportFault {
    /// The URL, without its query.
    pub url: String,
    /// Why it failed.
    pub why: String,
    /// Whether the sandbox's address rule refused the connection (the
    /// fetch then fails as refused, whatever the fetcher made of it).
    pub address_refused: bool,
}

impl Transport {
    /// The client for `service`'s requests, connecting where `grant`
    /// allows (see `sandbox::address`) or through `network`'s proxies;
    /// connections time out after `connect_timeout`. Fails on TLS settings
    /// that cannot be used.
    pub fn new(
        service: &Service,
        grant: Arc<Grant>,
        network: &Network,
        connect_timeout: Duration,
    ) -> Result<Transport, TlsError> {
        let tls = tls::client_config(service, network)?;
        let route = Route::new(grant, network.proxies.clone(), connect_timeout);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(route);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Ok(Transport {
            client,
            proxies: network.proxies.clone(),
        })
    }

    /// Sends `request` within `options`' timeouts (the hook has clamped
    /// them). A failure is also described in `failure`, for the fetch's
    /// error.
    pub(crate) async fn send(
        &self,
        mut request: http::Request<WasiBody>,
        options: RequestOptions,
        failure: TransportFailure,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let shown = shown_url(request.uri());
        if request.uri().scheme_str() == Some("http")
            && let Some(proxy) = self.proxies.for_uri(request.uri())
            && let Some(authorization) = &proxy.authorization
        {
            request
                .headers_mut()
                .insert(http::header::PROXY_AUTHORIZATION, authorization.clone());
        }
        let record = |code: HttpError, detail: String| {
            if let Ok(mut slot) = failure.lock() {
                *slot = Some(TransportFault {
                    url: shown.clone(),
                    why: detail,
                    address_refused: matches!(code, HttpError::DestinationIpProhibited),
                });
            }
            code
        };
        let first_byte = options
            .first_byte_timeout
            .unwrap_or(Duration::from_secs(600));
        let between_bytes = options
            .between_bytes_timeout
            .unwrap_or(Duration::from_secs(600))
            .max(Duration::from_nanos(1));
        let response = match tokio::time::timeout(first_byte, self.client.request(request)).await {
            Err(_) => {
                return Err(record(
                    HttpError::ConnectionReadTimeout,
                    format!("no response within {first_byte:?}"),
                ));
            }
            Ok(Err(e)) => {
                let (code, detail) = classify(&e);
                return Err(record(code, detail));
            }
            Ok(Ok(response)) => response,
        };
        Ok(response.map(|incoming| {
            BetweenBytes {
                incoming,
                timeout: between_bytes,
                sleep: Box::pin(tokio::time::sleep(between_bytes)),
            }
            .boxed_unsync()
        }))
    }
}

/// The `wasi:http` code for a failed request and the host's description:
/// its causes (rustls says which certificate check failed), without
/// hyper's "client error (Connect)" wrapper or a cause that repeats the
/// one before.
fn classify(error: &hyper_util::client::legacy::Error) -> (HttpError, String) {
    let mut detail = String::new();
    let mut source = std::error::Error::source(error);
    let mut code = None;
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.contains(&text) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&text);
        }
        if code.is_none() {
            let inner = innermost(cause);
            let tls = inner.downcast_ref::<rustls::Error>();
            if inner.downcast_ref::<AddressRefused>().is_some() {
                code = Some(HttpError::DestinationIpProhibited);
            } else if let Some(tls) = tls {
                code = Some(match tls {
                    rustls::Error::InvalidCertificate(_) => HttpError::TlsCertificateError,
                    rustls::Error::AlertReceived(_) => HttpError::TlsAlertReceived {
                        alert_id: None,
                        alert_message: Some(tls.to_string()),
                    },
                    _ => HttpError::TlsProtocolError,
                });
            } else if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                code = match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => Some(HttpError::ConnectionRefused),
                    std::io::ErrorKind::TimedOut => Some(HttpError::ConnectionTimeout),
                    _ => None,
                };
            }
        }
        source = cause.source();
    }
    if detail.is_empty() {
        detail = error.to_string();
    }
    let code = code.unwrap_or_else(|| {
        if error.is_connect() {
            HttpError::ConnectionRefused
        } else {
            HttpError::HttpProtocolError
        }
    });
    (code, detail)
}

/// The error inside `error`'s `io::Error` wrappers: an `io::Error`'s
/// `source` skips the error it wraps, and TLS failures come wrapped twice
/// (tokio-rustls, then hyper-rustls).
fn innermost<'e>(
    mut error: &'e (dyn std::error::Error + 'static),
) -> &'e (dyn std::error::Error + 'static) {
    while let Some(inner) = error
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        error = inner;
    }
    error
}

/// A response body that fails when no bytes came for `timeout`.
struct BetweenBytes {
    incoming: hyper::body::Incoming,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Body for BetweenBytes {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                HttpError::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + self.timeout;
                self.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
