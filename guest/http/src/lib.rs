//! polhost's fetcher for OPA's plain HTTP bundle services: what OPA's own
//! REST client does, as a sandboxed component.
//!
//! GET `<url>/<resource>` with the service's headers and bearer credential,
//! `If-None-Match` with the active bundle's etag (304 = not modified), and
//! long polling with `Prefer: modes=snapshot;wait=N` while the server
//! answers `application/vnd.openpolicyagent.bundles`.

use polhost_fetcher::config::ServiceConfig;
use polhost_fetcher::http::{self, Request};
use polhost_fetcher::url::Url;
use polhost_fetcher::{BundleRequest, FetchError, FetchOutcome, Fetcher, OutputStream, Service};

/// The content type with which a bundle server says it supports long polling.
const LONG_POLLING_MEDIA_TYPE: &str = "application/vnd.openpolicyagent.bundles";

struct HttpFetcher;

impl Fetcher for HttpFetcher {
    fn fetch(
        service: Service,
        bundle: BundleRequest,
        body: &OutputStream,
    ) -> Result<FetchOutcome, FetchError> {
        let config = ServiceConfig::parse(&service.name, &service.config)?;
        let mut request = Request::get(Url::service_path(&service.url, &bundle.resource)?);
        request.headers.push((
            "User-Agent".into(),
            concat!("polhost/", env!("CARGO_PKG_VERSION"), " (fetcher-http)").into(),
        ));
        request.origin_headers.extend(service.headers);
        if let Some(authorization) = bearer_authorization(&config)? {
            request
                .origin_headers
                .push(("Authorization".into(), authorization));
        }
        request.if_none_match = bundle.etag.clone();
        let header_timeout_s = config.u64("response_header_timeout_seconds")?.unwrap_or(10);
        request.first_byte_timeout_ms = Some(header_timeout_s * 1000);
        if let Some(wait) = bundle.long_polling_timeout_seconds {
            request
                .headers
                .push(("Prefer".into(), format!("modes=snapshot;wait={wait}")));
            request.first_byte_timeout_ms = Some((header_timeout_s + u64::from(wait)) * 1000);
        }

        let response = http::send(&request)?;
        let long_polling = bundle.long_polling_timeout_seconds.is_some()
            && response.header("content-type").as_deref() == Some(LONG_POLLING_MEDIA_TYPE);
        let response = match response.into_bundle_outcome(body, bundle.etag, long_polling)? {
            Ok(outcome) => return Ok(outcome),
            Err(failed) => failed,
        };
        let status = response.status;
        let url = response.url.clone();
        let text = response.error_text();
        let detail = if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        };
        Err(FetchError::from_status(
            status,
            format!("GET {url}: server answered {status}{detail}"),
        ))
    }
}

/// The `Authorization` value from `credentials.bearer` (OPA: `token` or
/// `token_path`, re-read on every request, and `scheme`, default Bearer).
/// Any other credential method is refused rather than silently skipped.
fn bearer_authorization(config: &ServiceConfig) -> Result<Option<String>, FetchError> {
    config.only_credential_methods("http", &["bearer"])?;
    Ok(config
        .bearer()?
        .map(|b| format!("{} {}", b.scheme, b.token)))
}

polhost_fetcher::export_fetcher!(HttpFetcher);
