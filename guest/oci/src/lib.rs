//! polhost's fetcher for OPA bundles stored in OCI registries
//! (`services.<x>.type: oci`), written against the OCI distribution spec
//! over `wasi:http`.
//!
//! One fetch: resolve the manifest (a tag on every poll; a digest is
//! immutable), walk an image index or Docker manifest list up to four
//! levels (skipping `unknown/unknown` attestation entries), take the first
//! `application/vnd.oci.image.layer.v1.tar+gzip` layer, answer
//! `not-modified` when its digest is the active bundle's etag (no blob
//! transfer), else stream the blob to the host, which verifies it against
//! the layer digest. Authentication: anonymous, OPA's `credentials.bearer`
//! (base64-encoded, as OPA does for OCI), and the registry token flow.

mod auth;
mod manifest;
mod reference;

use polhost_fetcher::config::ServiceConfig;
use polhost_fetcher::http::{self, Request, Response};
use polhost_fetcher::url::Url;
use polhost_fetcher::{
    BundleRequest, FetchError, FetchOutcome, Fetcher, OutputStream, ResponseInfo, Service, log,
};
use sha2::{Digest, Sha256};

use auth::{Challenge, Token};
use manifest::{Descriptor, Document};
use reference::{Reference, Target};

/// How deep image indexes may nest.
const MAX_INDEX_DEPTH: u32 = 4;
/// The largest manifest read (docker-registry's own limit is 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The largest token answer read.
const MAX_TOKEN_BYTES: usize = 64 << 10;

const USER_AGENT: &str = concat!("polhost/", env!("CARGO_PKG_VERSION"), " (fetcher-oci)");

struct OciFetcher;

impl Fetcher for OciFetcher {
    fn fetch(
        service: Service,
        bundle: BundleRequest,
        body: &OutputStream,
    ) -> Result<FetchOutcome, FetchError> {
        let config = ServiceConfig::parse(&service.name, &service.config)?;
        let base = Url::parse(&service.url)?;
        let reference = Reference::parse(&bundle.resource, &base.authority, &bundle.name)?;
        let header_timeout_s = config.u64("response_header_timeout_seconds")?.unwrap_or(10);
        let mut registry = Registry {
            origin: base.origin(),
            host: base.authority.clone(),
            reference,
            headers: service.headers,
            credential: auth::configured_authorization(&config)?,
            token: None,
            timeout_ms: header_timeout_s * 1000,
        };

        let found = registry.resolve()?;
        let layer = &found.layer;
        let info = ResponseInfo {
            etag: Some(layer.digest.clone()),
            digest: Some(layer.digest.clone()),
            media_type: Some(layer.media_type.clone()),
            long_polling: false,
        };
        if bundle.etag.as_deref() == Some(layer.digest.as_str()) {
            log::debug(&format!(
                "{}: layer {} is the active bundle: not modified (manifest {})",
                registry.describe(),
                layer.digest,
                found.manifest_digest
            ));
            return Ok(FetchOutcome::NotModified(info));
        }
        log::debug(&format!(
            "{}: downloading layer {} ({}) of manifest {}",
            registry.describe(),
            layer.digest,
            layer
                .size
                .map_or_else(|| "size unknown".to_string(), |s| format!("{s} bytes")),
            found.manifest_digest
        ));
        registry.download_blob(layer, body)?;
        Ok(FetchOutcome::Fetched(info))
    }
}

/// What a resolution found.
struct Found {
    /// The manifest that holds the layer.
    manifest_digest: String,
    layer: Descriptor,
}

/// One fetch's view of the registry: where, what, and the credentials.
struct Registry {
    /// `scheme://host:port` of the service `url` (its path is ignored, as in
    /// OPA: the API lives at `/v2/`).
    origin: String,
    /// `host:port`, for messages.
    host: String,
    reference: Reference,
    /// The service's `headers`: registry requests only.
    headers: Vec<(String, String)>,
    /// From `credentials.bearer`, if configured.
    credential: Option<String>,
    /// The registry token, once the token flow ran in this fetch.
    token: Option<Token>,
    timeout_ms: u64,
}

impl Registry {
    /// `registry/repository:tag` for messages.
    fn describe(&self) -> String {
        format!("{}/{}", self.host, self.reference)
    }

    /// Finds the bundle layer of the reference, walking indexes.
    fn resolve(&mut self) -> Result<Found, FetchError> {
        let target = self.reference.target().to_string();
        let verify = matches!(self.reference.target, Target::Digest(_));
        let mut seen = Seen::default();
        match self.walk(&target, verify, 0, &mut seen)? {
            Some(found) => Ok(found),
            None => Err(FetchError::protocol(format!(
                "{}: no bundle layer ({}) found: {}",
                self.describe(),
                manifest::BUNDLE_LAYER,
                seen.explain()
            ))),
        }
    }

    fn walk(
        &mut self,
        target: &str,
        verify: bool,
        depth: u32,
        seen: &mut Seen,
    ) -> Result<Option<Found>, FetchError> {
        let (digest, document) = self.manifest(target, verify)?;
        match document {
            Document::Manifest { media_type, layers } => {
                seen.manifests += 1;
                if let Some(layer) = manifest::bundle_layer(&layers) {
                    reference::check_digest(&layer.digest).map_err(|why| {
                        FetchError::protocol(format!(
                            "{}: manifest {digest}: bundle layer: {why}",
                            self.describe()
                        ))
                    })?;
                    return Ok(Some(Found {
                        manifest_digest: digest,
                        layer: layer.clone(),
                    }));
                }
                seen.manifest_types.push(format!("{media_type} {digest}"));
                seen.layer_types
                    .extend(layers.into_iter().map(|l| l.media_type));
                Ok(None)
            }
            Document::Index(entries) => {
                if depth >= MAX_INDEX_DEPTH {
                    seen.too_deep += 1;
                    return Ok(None);
                }
                for entry in entries {
                    if entry.is_attestation() {
                        seen.attestations += 1;
                        continue;
                    }
                    let child = &entry.descriptor.digest;
                    reference::check_digest(child).map_err(|why| {
                        FetchError::protocol(format!(
                            "{}: index {digest}: entry: {why}",
                            self.describe()
                        ))
                    })?;
                    if let Some(found) = self.walk(child, true, depth + 1, seen)? {
                        return Ok(Some(found));
                    }
                }
                Ok(None)
            }
        }
    }

    /// GETs the manifest `target` (tag or digest); returns its digest and
    /// parsed document. A document fetched by digest must hash to it.
    fn manifest(&mut self, target: &str, verify: bool) -> Result<(String, Document), FetchError> {
        let path = format!("manifests/{target}");
        let separator = if target.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        let what = format!("manifest {}{separator}{target}", self.reference.repository);
        let response = self.get(&path, manifest::ACCEPT, &what)?;
        let content_type = response.header("content-type");
        let announced = response.header("docker-content-digest");
        let body = response.read_to_vec(MAX_MANIFEST_BYTES)?;
        let digest = format!("sha256:{}", hex(&Sha256::digest(&body)));
        if verify && digest != target {
            return Err(FetchError::protocol(format!(
                "{}: {what}: the registry sent a document whose digest is {digest}",
                self.host
            )));
        }
        if let Some(announced) = announced
            && announced.starts_with("sha256:")
            && announced != digest
        {
            return Err(FetchError::protocol(format!(
                "{}: {what}: Docker-Content-Digest {announced} does not match the body ({digest})",
                self.host
            )));
        }
        let document = Document::parse(&body, content_type.as_deref()).map_err(|why| {
            FetchError::protocol(format!("{}: {what} ({digest}): {why}", self.host))
        })?;
        Ok((digest, document))
    }

    /// Streams the layer's blob into the host (redirects to another origin,
    /// a CDN or object store, are followed without the registry's
    /// credentials).
    fn download_blob(&mut self, layer: &Descriptor, body: &OutputStream) -> Result<(), FetchError> {
        let what = format!("blob {}@{}", self.reference.repository, layer.digest);
        let response = self.get(&format!("blobs/{}", layer.digest), "*/*", &what)?;
        if let Some(size) = layer.size
            && let Some(length) = response
                .header("content-length")
                .and_then(|v| v.trim().parse::<u64>().ok())
            && length != size
        {
            return Err(FetchError::protocol(format!(
                "{}: {what}: the manifest says {size} bytes, the response {length}",
                self.host
            )));
        }
        let moved = response.stream_into(body)?;
        log::debug(&format!("{}: {what}: {moved} bytes", self.host));
        Ok(())
    }

    /// GET `/v2/<repository>/<path>`, answering a Bearer challenge with the
    /// token flow (once per request: a token that expired or lacks the
    /// scope is replaced). Any status but 200 is an error naming the
    /// registry, the repository, the reference and the status.
    fn get(&mut self, path: &str, accept: &str, what: &str) -> Result<Response, FetchError> {
        let url = Url::parse(&format!(
            "{}/v2/{}/{path}",
            self.origin, self.reference.repository
        ))?;
        let mut response = self.send(&url, accept)?;
        if response.status == 401
            && let Some(challenge) = response
                .header("www-authenticate")
                .and_then(|h| Challenge::parse(&h))
            && challenge.is_bearer()
        {
            drop(response);
            self.token = Some(self.fetch_token(&challenge)?);
            response = self.send(&url, accept)?;
        }
        if response.status == 200 {
            return Ok(response);
        }
        Err(self.status_error(response, what))
    }

    fn send(&self, url: &Url, accept: &str) -> Result<Response, FetchError> {
        let mut request = Request::get(url.clone());
        request
            .headers
            .push(("User-Agent".into(), USER_AGENT.into()));
        request.headers.push(("Accept".into(), accept.into()));
        request.first_byte_timeout_ms = Some(self.timeout_ms);
        // The registry's headers and credentials stay on its origin: a blob
        // redirect to a CDN or object store gets none of them.
        request.origin_headers.extend(self.headers.iter().cloned());
        // A valid token replaces the configured credential; an expired one
        // is dropped, and the registry's next challenge fetches another.
        let authorization = self
            .token
            .as_ref()
            .and_then(Token::authorization)
            .or_else(|| self.credential.clone());
        if let Some(authorization) = authorization {
            request
                .origin_headers
                .push(("Authorization".into(), authorization));
        }
        http::send(&request)
    }

    /// The registry token flow: GET `realm?service=..&scope=..`, with the
    /// configured credential if there is one (anonymous otherwise).
    fn fetch_token(&self, challenge: &Challenge) -> Result<Token, FetchError> {
        let realm = challenge.realm.as_deref().ok_or_else(|| {
            FetchError::protocol(format!(
                "{}: the registry asked for a Bearer token without a realm",
                self.describe()
            ))
        })?;
        let realm_url = Url::parse(realm).map_err(|_| {
            FetchError::protocol(format!(
                "{}: the registry's token realm {realm:?} is not an absolute http(s) URL",
                self.describe()
            ))
        })?;
        let scope = challenge
            .scope
            .clone()
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        let mut query = Vec::new();
        if let Some(service) = &challenge.service {
            query.push(format!("service={}", auth::query_escape(service)));
        }
        query.push(format!("scope={}", auth::query_escape(&scope)));
        let separator = if realm_url.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = Url::parse(&format!(
            "{}{}{separator}{}",
            realm_url.origin(),
            realm_url.path_and_query,
            query.join("&")
        ))?;
        let mut request = Request::get(url);
        request
            .headers
            .push(("User-Agent".into(), USER_AGENT.into()));
        request.first_byte_timeout_ms = Some(self.timeout_ms);
        if let Some(credential) = &self.credential {
            request
                .origin_headers
                .push(("Authorization".into(), credential.clone()));
        }
        let response = http::send(&request)?;
        let status = response.status;
        if status != 200 {
            let detail = registry_error(response);
            let how = if self.credential.is_some() {
                "with the configured credentials"
            } else {
                "anonymously (no credentials configured)"
            };
            return Err(FetchError::from_status(
                status,
                format!(
                    "{}: token service {realm} answered {status} for scope {scope}, asked {how}{detail}",
                    self.describe()
                ),
            ));
        }
        let token = Token::from_response(&response.read_to_vec(MAX_TOKEN_BYTES)?, realm)?;
        log::debug(&format!(
            "{}: token from {realm} for {scope}, valid {}s (kept for this fetch)",
            self.describe(),
            token.lifetime_left().as_secs()
        ));
        Ok(token)
    }

    fn status_error(&self, response: Response, what: &str) -> FetchError {
        let status = response.status;
        let challenge = response
            .header("www-authenticate")
            .and_then(|h| Challenge::parse(&h));
        let url = response.url.clone();
        let detail = registry_error(response);
        let mut message = format!(
            "{}: GET {what} at {url}: registry answered {status}{detail}",
            self.describe()
        );
        if status == 401 {
            let how = match (&self.token, &self.credential) {
                (Some(_), _) => "the registry refused the token it asked for",
                (None, Some(_)) => "the registry refused the configured credentials",
                (None, None) => "no credentials configured",
            };
            let challenge = challenge.map_or_else(
                || "no WWW-Authenticate".to_string(),
                |c| format!("WWW-Authenticate: {}", c.describe()),
            );
            message.push_str(&format!(" ({challenge}; {how})"));
        }
        if (300..400).contains(&status) {
            message.push_str(" (a redirect the fetcher could not follow)");
        }
        FetchError::from_status(status, message)
    }
}

/// ` CODE message` from a registry's JSON error body, or the start of the
/// body; empty when there is none.
fn registry_error(response: Response) -> String {
    let text = response.error_text();
    if text.is_empty() {
        return String::new();
    }
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(errors) = json.get("errors").and_then(|e| e.as_array())
    {
        let parts: Vec<String> = errors
            .iter()
            .map(|e| {
                let field = |k| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
                format!("{} {}", field("code"), field("message"))
                    .trim()
                    .to_string()
            })
            .collect();
        if !parts.is_empty() {
            return format!(": {}", parts.join("; "));
        }
    }
    format!(": {text}")
}

/// What a walk saw, to explain a missing bundle layer.
#[derive(Default)]
struct Seen {
    manifests: u32,
    attestations: u32,
    too_deep: u32,
    manifest_types: Vec<String>,
    layer_types: Vec<String>,
}

impl Seen {
    fn explain(&self) -> String {
        let mut parts = Vec::new();
        if self.manifests == 0 {
            parts.push("no manifest to read".to_string());
        } else if self.layer_types.is_empty() {
            parts.push(format!("no layers in {} manifest(s)", self.manifests));
        } else {
            let mut types: Vec<&str> = Vec::new();
            for t in &self.layer_types {
                if !types.contains(&t.as_str()) {
                    types.push(t);
                }
            }
            parts.push(format!("layer media types found: {}", types.join(", ")));
        }
        if !self.manifest_types.is_empty() {
            parts.push(format!(
                "manifests read: {}",
                self.manifest_types.join(", ")
            ));
        }
        if self.attestations > 0 {
            parts.push(format!(
                "{} attestation entr{} (platform unknown/unknown) skipped",
                self.attestations,
                if self.attestations == 1 { "y" } else { "ies" }
            ));
        }
        if self.too_deep > 0 {
            parts.push(format!(
                "indexes nested deeper than {MAX_INDEX_DEPTH} levels skipped"
            ));
        }
        parts.join("; ")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_bundle_layer_is_explained() {
        let seen = Seen {
            manifests: 2,
            attestations: 1,
            manifest_types: vec!["application/vnd.oci.image.manifest.v1+json sha256:aa".into()],
            layer_types: vec!["a/x".into(), "b/y".into(), "a/x".into()],
            ..Seen::default()
        };
        assert_eq!(
            seen.explain(),
            "layer media types found: a/x, b/y; manifests read: application/vnd.oci.image.manifest.v1+json sha256:aa; 1 attestation entry (platform unknown/unknown) skipped"
        );
        let empty = Seen {
            manifests: 1,
            ..Seen::default()
        };
        assert_eq!(empty.explain(), "no layers in 1 manifest(s)");
    }
}

polhost_fetcher::export_fetcher!(OciFetcher);
