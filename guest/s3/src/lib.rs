//! polhost's fetcher for Amazon S3 and S3-compatible object stores.
//!
//! GET `<url>/<resource>` signed with AWS Signature Version 4
//! (`x-amz-content-sha256`, `x-amz-date`, the session token when the
//! credentials are temporary), with credentials from OPA's
//! `credentials.s3_signing` providers (see [`credentials`]). Path-style
//! (`https://s3.<region>.amazonaws.com/<bucket>`) and virtual-host style
//! (`https://<bucket>.s3.<region>.amazonaws.com`) service URLs both work:
//! the URL is used as written. `If-None-Match` with the active bundle's
//! ETag: 304 is not modified. Errors name the bucket, the key and S3's
//! error code; keys, secrets and tokens never appear in them.

pub mod credentials;
pub mod sigv4;

use polhost_fetcher::clock::{Utc, now_unix};
use polhost_fetcher::config::ServiceConfig;
use polhost_fetcher::http::{self, Request};
use polhost_fetcher::url::Url;
use polhost_fetcher::{
    BundleRequest, FetchError, FetchOutcome, Fetcher, OutputStream, Service, log,
};

use polhost_fetcher::{percent, xml};
use sigv4::{EMPTY_SHA256, Scope};

// Exported only on wasm: a native build (the unit tests) cannot link the
// component's export names.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct S3Fetcher;

impl Fetcher for S3Fetcher {
    fn fetch(
        service: Service,
        bundle: BundleRequest,
        body: &OutputStream,
    ) -> Result<FetchOutcome, FetchError> {
        let config = ServiceConfig::parse(&service.name, &service.config)?;
        let url = object_url(&service.url, &bundle.resource)?;
        let object = Object::of(&url);
        let signing_service = config
            .str("credentials.s3_signing.service")?
            .unwrap_or("s3")
            .to_string();

        let mut request = Request::get(url.clone());
        request.headers.push((
            "User-Agent".into(),
            concat!("polhost/", env!("CARGO_PKG_VERSION"), " (fetcher-s3)").into(),
        ));
        if let Some(etag) = &bundle.etag {
            request.headers.push(("If-None-Match".into(), etag.clone()));
        }
        let header_timeout_s = config.u64("response_header_timeout_seconds")?.unwrap_or(10);
        request.first_byte_timeout_ms = Some(header_timeout_s * 1000);
        request.origin_headers.extend(service.headers);

        if let Some(signing) = credentials::resolve(&config)? {
            log::debug(&format!(
                "signing {object} with {} (access key {}, region {})",
                signing.provider, signing.credentials.access_key_id, signing.region
            ));
            let amz_date = Utc::from_unix(now_unix()).basic();
            let mut signed = vec![
                ("host".to_string(), url.authority.clone()),
                ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
                ("x-amz-date".to_string(), amz_date.clone()),
            ];
            if let Some(token) = &signing.credentials.session_token {
                signed.push(("x-amz-security-token".to_string(), token.clone()));
            }
            if let Some(etag) = &bundle.etag {
                signed.push(("if-none-match".to_string(), etag.clone()));
            }
            let (path, query) = url
                .path_and_query
                .split_once('?')
                .unwrap_or((&url.path_and_query, ""));
            let authorization = sigv4::authorization(
                "GET",
                path,
                query,
                &signed,
                EMPTY_SHA256,
                &signing.credentials,
                &Scope {
                    amz_date: &amz_date,
                    region: &signing.region,
                    service: &signing_service,
                },
            );
            // Everything signed goes to the service's origin only: a
            // redirect elsewhere (which S3 does not do for GET) gets none.
            request
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("if-none-match"));
            for (name, value) in signed.into_iter().filter(|(n, _)| n != "host") {
                request.origin_headers.push((name, value));
            }
            request
                .origin_headers
                .push(("Authorization".into(), authorization));
        }

        let response = http::send(&request)?;
        let response = match response.into_bundle_outcome(body, bundle.etag, false)? {
            Ok(outcome) => return Ok(outcome),
            Err(failed) => failed,
        };
        let status = response.status;
        let text = response.error_text();
        let code = xml::text(&text, "Code").unwrap_or_default();
        let message = xml::text(&text, "Message").unwrap_or_default();
        let detail = polhost_fetcher::error::service_detail(&code, &message);
        Err(FetchError::from_status(
            status,
            format!("GET {object} ({url}): S3 answered {status}{detail}"),
        ))
    }
}

/// The object's URL: OPA's join of the service URL and the resource, its
/// path decoded and encoded again the way SigV4 canonicalises it, so the
/// path sent is the path signed.
pub fn object_url(service_url: &str, resource: &str) -> Result<Url, FetchError> {
    let mut url = Url::service_path(service_url, resource)?;
    let (path, query) = match url.path_and_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (url.path_and_query.clone(), None),
    };
    let path = percent::encode(&percent::decode(&path), true);
    url.path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    Ok(url)
}

/// The bucket and key a URL names, for messages: virtual-host style when
/// the host is `<bucket>.s3…`, else path-style (`/<bucket>/<key>`).
pub struct Object {
    pub bucket: String,
    pub key: String,
}

impl Object {
    pub fn of(url: &Url) -> Object {
        let path = url.path_and_query.split('?').next().unwrap_or("/");
        let path = percent::decode(path.trim_start_matches('/'));
        let host = url.authority.split(':').next().unwrap_or("");
        if let Some((bucket, rest)) = host.split_once('.')
            && (rest.starts_with("s3.") || rest.starts_with("s3-"))
        {
            return Object {
                bucket: bucket.to_string(),
                key: path,
            };
        }
        let (bucket, key) = path.split_once('/').unwrap_or((&path, ""));
        Object {
            bucket: bucket.to_string(),
            key: key.to_string(),
        }
    }
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(target_arch = "wasm32")]
polhost_fetcher::export_fetcher!(S3Fetcher);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_bucket_and_key_in_both_url_styles() {
        let path = object_url("http://127.0.0.1:9000/bundles", "/authz/b v1.tar.gz").unwrap();
        assert_eq!(path.path_and_query, "/bundles/authz/b%20v1.tar.gz");
        assert_eq!(
            Object::of(&path).to_string(),
            "s3://bundles/authz/b v1.tar.gz"
        );
        let vhost =
            object_url("https://bundles.s3.eu-west-1.amazonaws.com", "authz.tar.gz").unwrap();
        assert_eq!(Object::of(&vhost).to_string(), "s3://bundles/authz.tar.gz");
        let encoded = object_url("http://h/b", "a%2Bb.tar.gz").unwrap();
        assert_eq!(encoded.path_and_query, "/b/a%2Bb.tar.gz");
    }
}
