//! The `wasi:http` hook every outgoing request of a fetcher passes through:
//! it refuses origins outside the grant (a redirect is a new request, so
//! redirects are checked too), caps the number of requests per fetch, and
//! clamps the guest's timeouts to the host's.

use std::sync::Arc;
use std::time::Duration;

use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::{Grant, Origin};

/// Per-fetch state of the hook.
pub(crate) struct SandboxHooks {
    grant: Arc<Grant>,
    limits: RequestLimits,
    sent: u32,
    /// Why the last refused request was refused, for the fetch's error (the
    /// guest only sees `HttpRequestDenied`).
    pub(crate) denial: Option<String>,
}

/// Bounds on one fetch's requests.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestLimits {
    pub max_requests: u32,
    pub connect_timeout: Duration,
    /// How long a response may take to start (the service's
    /// `response_header_timeout_seconds`, plus the long-polling wait).
    pub first_byte_timeout: Duration,
    pub between_bytes_timeout: Duration,
}

impl SandboxHooks {
    pub(crate) fn new(grant: Arc<Grant>, limits: RequestLimits) -> Self {
        SandboxHooks {
            grant,
            limits,
            sent: 0,
            denial: None,
        }
    }

    /// Why `uri` may not be requested, if it may not.
    fn refusal(&mut self, uri: &http::Uri) -> Option<String> {
        // The query is left out: it can carry a credential (a SAS token).
        let shown = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("?"),
            uri.authority().map(|a| a.as_str()).unwrap_or("?"),
            uri.path()
        );
        let Some(origin) = Origin::of_uri(uri) else {
            return Some(format!("request to {shown}: not an absolute http(s) URL"));
        };
        if !self.grant.allows_origin(&origin) {
            return Some(format!(
                "request to {shown}: origin {origin} is not granted to service {:?} (granted: {})",
                self.grant.service,
                self.grant
                    .origins
                    .iter()
                    .map(Origin::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.sent >= self.limits.max_requests {
            return Some(format!(
                "request to {shown}: more than {} requests in one fetch",
                self.limits.max_requests
            ));
        }
        None
    }

    fn clamp(&self, options: Option<RequestOptions>) -> RequestOptions {
        let options = options.unwrap_or_default();
        let at_most =
            |asked: Option<Duration>, limit: Duration| Some(asked.map_or(limit, |a| a.min(limit)));
        RequestOptions {
            connect_timeout: at_most(options.connect_timeout, self.limits.connect_timeout),
            first_byte_timeout: at_most(options.first_byte_timeout, self.limits.first_byte_timeout),
            between_bytes_timeout: at_most(
                options.between_bytes_timeout,
                self.limits.between_bytes_timeout,
            ),
        }
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for SandboxHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        if let Some(why) = self.refusal(request.uri()) {
            tracing::warn!(service = %self.grant.service, "sandbox refused {why}");
            self.denial = Some(why);
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        self.sent += 1;
        tracing::debug!(
            service = %self.grant.service,
            method = %request.method(),
            origin = ?Origin::of_uri(request.uri()).map(|o| o.to_string()),
            path = request.uri().path(),
            "fetcher request"
        );
        let options = self.clamp(options);
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}
