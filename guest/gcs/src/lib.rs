//! polhost's fetcher for Google Cloud Storage, over the JSON API.
//!
//! The object is named either as OPA documents it (a service `url` ending
//! in `/storage/v1/b/<bucket>/o` and a `resource` such as
//! `bundles%2Fauthz.tar.gz?alt=media`, used as written) or, as a polhost
//! convenience, by `resource: <bucket>/<object>` under a service URL
//! without that path (`https://storage.googleapis.com`).
//!
//! Each poll first reads the object's metadata (a small JSON document) and
//! compares its `generation` with the active bundle's: the same generation
//! is not-modified and no body is transferred. (fake-gcs-server ignores
//! `If-None-Match` on reads; comparing metadata works against it and real
//! GCS alike.) Otherwise the media is read with `alt=media` and
//! `ifGenerationMatch`, so the bytes are those of the generation reported.
//! Errors name the bucket, the object and Google's error reason; tokens and
//! keys never appear in them.

// The fetcher is exported only on wasm (a native build, the unit tests,
// cannot link the component's export names), so natively it looks unused.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod auth;
pub mod object;

use polhost_fetcher::config::ServiceConfig;
use polhost_fetcher::http::{self, Request, Response};
use polhost_fetcher::url::Url;
use polhost_fetcher::{
    BundleRequest, FetchError, FetchOutcome, Fetcher, OutputStream, ResponseInfo, Service, log,
};

use object::Object;

struct GcsFetcher;

impl Fetcher for GcsFetcher {
    fn fetch(
        service: Service,
        bundle: BundleRequest,
        body: &OutputStream,
    ) -> Result<FetchOutcome, FetchError> {
        let config = ServiceConfig::parse(&service.name, &service.config)?;
        let object = Object::locate(&service.url, &bundle.resource)?;
        let token = auth::token(&config)?;
        let header_timeout_s = config.u64("response_header_timeout_seconds")?.unwrap_or(10);
        let request = |url: Url| {
            let mut request = Request::get(url);
            request.headers.push((
                "User-Agent".into(),
                concat!("polhost/", env!("CARGO_PKG_VERSION"), " (fetcher-gcs)").into(),
            ));
            request.first_byte_timeout_ms = Some(header_timeout_s * 1000);
            request
                .origin_headers
                .extend(service.headers.iter().cloned());
            if let Some(token) = &token {
                request
                    .origin_headers
                    .push(("Authorization".into(), format!("Bearer {token}")));
            }
            request
        };

        // 1. The metadata: its generation says whether the bundle changed.
        let response = http::send(&request(object.metadata_url()?))?;
        if response.status != 200 {
            return Err(failure(&object, response));
        }
        let url = response.url.clone();
        let metadata: serde_json::Value = serde_json::from_slice(&response.read_to_vec(1 << 20)?)
            .map_err(|_| {
            FetchError::protocol(format!("GET {url}: the object metadata is not JSON"))
        })?;
        let field = |name: &str| {
            metadata
                .get(name)
                .and_then(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty())
        };
        let generation = field("generation");
        let version = generation
            .clone()
            .or_else(|| field("etag"))
            .ok_or_else(|| {
                FetchError::protocol(format!(
                    "GET {url}: the metadata of {object} has neither generation nor etag"
                ))
            })?;
        let info = ResponseInfo {
            etag: Some(version.clone()),
            digest: None,
            media_type: field("contentType"),
            long_polling: false,
        };
        if bundle.etag.as_deref() == Some(version.as_str()) {
            log::debug(&format!("{object}: generation {version} unchanged"));
            return Ok(FetchOutcome::NotModified(info));
        }

        // 2. The media, pinned to the generation just read.
        let response = http::send(&request(object.media_url(generation.as_deref())?))?;
        match response.status {
            200 => {
                response.stream_into(body)?;
                Ok(FetchOutcome::Fetched(info))
            }
            412 => Err(FetchError::transient(format!(
                "GET {object}: generation {version} was replaced while fetching; next poll takes the new one"
            ))),
            _ => Err(failure(&object, response)),
        }
    }
}

/// A failed response as an error naming the object and Google's reason.
fn failure(object: &Object, response: Response) -> FetchError {
    let (status, url) = (response.status, response.url.clone());
    let text = response.error_text();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let error = &doc["error"];
    let reason = error["errors"][0]["reason"]
        .as_str()
        .or_else(|| error["status"].as_str())
        .unwrap_or("");
    let message = error["message"].as_str().unwrap_or("");
    let detail = match (reason.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(": {reason}"),
        (true, false) => format!(": {message}"),
        (false, false) => format!(": {reason}: {message}"),
    };
    FetchError::from_status(
        status,
        format!("GET {object} ({url}): GCS answered {status}{detail}"),
    )
}

#[cfg(target_arch = "wasm32")]
polhost_fetcher::export_fetcher!(GcsFetcher);
