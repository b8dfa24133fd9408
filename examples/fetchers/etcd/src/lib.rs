//! An example polhost fetcher plugin: OPA bundles stored as etcd v3 values,
//! read through etcd's JSON gateway (grpc-gateway, `POST /v3/kv/range`).
//!
//! The bundle's `resource` is the etcd key; its value is the bundle (a
//! gzipped tar). The key's `mod_revision` is the etag: a poll first asks
//! for the key alone (`keys_only`), so a bundle that did not change costs
//! one small response and no value. When it changed, the value is read and
//! its own `mod_revision` becomes the etag, so the etag always names the
//! bytes written.
//!
//! Values come base64-encoded inside a JSON document, so they cannot be
//! spliced straight to the host: the response is read into memory, capped
//! at [`MAX_VALUE_BYTES`] of value, and decoded to the host in small chunks.

use polhost_fetcher::bindings::polhost::fetcher::host;
use polhost_fetcher::bindings::wasi::http::types::Method;
use polhost_fetcher::bindings::wasi::io::streams::StreamError;
use polhost_fetcher::config::ServiceConfig;
use polhost_fetcher::error::kind_of_status;
use polhost_fetcher::http::{self, Request, Response};
use polhost_fetcher::url::Url;
use polhost_fetcher::{
    BundleRequest, ErrorKind, FetchError, FetchOutcome, Fetcher, OutputStream, ResponseInfo,
    Service, base64, log,
};
use serde_json::{Value, json};

/// The largest value (bundle) this fetcher reads. etcd refuses requests
/// over 1.5 MiB by default (`--max-request-bytes`), so no default server
/// stores a larger value; a server configured for more is refused with a
/// message rather than growing the guest's memory without bound.
const MAX_VALUE_BYTES: usize = 2 << 20;

/// The largest value response read: the value in base64 (4 bytes per 3)
/// plus room for the JSON around it.
const MAX_VALUE_RESPONSE_BYTES: usize = MAX_VALUE_BYTES.div_ceil(3) * 4 + (64 << 10);

/// The largest `keys_only` response read: a header and one key.
const MAX_KEYS_ONLY_RESPONSE_BYTES: usize = 64 << 10;

/// The environment variable holding the etcd token when
/// `credentials.etcd_token.env` does not name another.
const DEFAULT_TOKEN_ENV: &str = "ETCD_TOKEN";

/// base64 text decoded per write: 4096 characters make 3072 bytes, under
/// the 4096 bytes `blocking-write-and-flush` takes at once.
const DECODE_CHUNK_CHARS: usize = 4096;

/// The one credential method this fetcher speaks.
const CREDENTIAL_METHOD: &str = "etcd_token";

struct EtcdFetcher;

impl Fetcher for EtcdFetcher {
    fn fetch(
        service: Service,
        bundle: BundleRequest,
        body: &OutputStream,
    ) -> Result<FetchOutcome, FetchError> {
        let config = ServiceConfig::parse(&service.name, &service.config)?;
        config.only_credential_methods("etcd", &[CREDENTIAL_METHOD])?;
        if bundle.resource.is_empty() {
            return Err(FetchError::invalid_config(format!(
                "bundles.{}.resource: empty: it names the etcd key that holds the bundle",
                bundle.name
            )));
        }
        let header_timeout_s = config.u64("response_header_timeout_seconds")?.unwrap_or(10);
        let mut origin_headers = service.headers;
        if let Some(token) = token(&config)? {
            // etcd takes the bare token, without a scheme.
            origin_headers.push(("Authorization".into(), token));
        }
        let range = RangeRequest {
            url: Url::service_path(&service.url, "v3/kv/range")?,
            key: &bundle.resource,
            origin_headers,
            first_byte_timeout_ms: header_timeout_s * 1000,
        };

        let Some(current) = range.send(Fetch::RevisionOnly)? else {
            return Err(range.not_found());
        };
        if bundle.etag.as_deref() == Some(current.mod_revision.as_str()) {
            return Ok(FetchOutcome::NotModified(info(current.mod_revision)));
        }
        log::debug(&format!(
            "etcd key {:?} is at mod_revision {} (active: {}): reading its value",
            range.key,
            current.mod_revision,
            bundle.etag.as_deref().unwrap_or("none")
        ));
        // The key may have changed again, or gone, since the first request:
        // the value response's own mod_revision is the etag of its bytes.
        let Some(kv) = range.send(Fetch::Value)? else {
            return Err(range.not_found());
        };
        if bundle.etag.as_deref() == Some(kv.mod_revision.as_str()) {
            return Ok(FetchOutcome::NotModified(info(kv.mod_revision)));
        }
        let encoded = kv.value.unwrap_or_default();
        write_decoded(&encoded, body, &range)?;
        Ok(FetchOutcome::Fetched(info(kv.mod_revision)))
    }
}

/// What a range request asks for.
#[derive(Clone, Copy)]
enum Fetch {
    /// The key's revisions only (`keys_only`): no value is sent.
    RevisionOnly,
    /// The key with its value.
    Value,
}

/// One key of a range response.
struct KeyValue {
    mod_revision: String,
    /// base64 text; absent for `keys_only`, and for an empty value (proto3
    /// JSON leaves out empty fields).
    value: Option<String>,
}

/// A range request for one key.
struct RangeRequest<'a> {
    url: Url,
    key: &'a str,
    origin_headers: Vec<(String, String)>,
    first_byte_timeout_ms: u64,
}

impl RangeRequest<'_> {
    /// Asks for the key; `None` when etcd has no such key.
    fn send(&self, fetch: Fetch) -> Result<Option<KeyValue>, FetchError> {
        let mut document = json!({ "key": base64::encode(self.key.as_bytes()) });
        if let Fetch::RevisionOnly = fetch {
            document["keys_only"] = Value::Bool(true);
        }
        let mut request = Request::new(Method::Post, self.url.clone());
        request.headers.extend([
            (
                "User-Agent".to_string(),
                concat!("polhost/", env!("CARGO_PKG_VERSION"), " (fetcher-etcd)").to_string(),
            ),
            ("Content-Type".to_string(), "application/json".to_string()),
        ]);
        request.origin_headers = self.origin_headers.clone();
        request.first_byte_timeout_ms = Some(self.first_byte_timeout_ms);
        request.body = document.to_string().into_bytes();

        let response = http::send(&request)?;
        if response.status != 200 {
            return Err(self.refused(response));
        }
        let limit = match fetch {
            Fetch::RevisionOnly => MAX_KEYS_ONLY_RESPONSE_BYTES,
            Fetch::Value => MAX_VALUE_RESPONSE_BYTES,
        };
        let bytes = response.read_to_vec(limit).map_err(|e| match e.kind {
            // The SDK's message says GET; this was a POST, and the cap is
            // this fetcher's own.
            ErrorKind::Protocol => FetchError::protocol(format!(
                "{}: the response is larger than {limit} bytes (this fetcher reads values of at most {MAX_VALUE_BYTES} bytes)",
                self.describe()
            )),
            _ => e,
        })?;
        let document: Value = serde_json::from_slice(&bytes).map_err(|e| {
            FetchError::protocol(format!(
                "{}: the response is not JSON: {e}",
                self.describe()
            ))
        })?;
        drop(bytes);
        parse_range(document)
            .map_err(|why| FetchError::protocol(format!("{}: {why}", self.describe())))
    }

    /// The error for a response that is not 200, classified by etcd's gRPC
    /// code where it has one (an auth failure answers 400, 401 or 403).
    fn refused(&self, response: Response) -> FetchError {
        let status = response.status;
        let bytes = response.read_to_vec(4096).unwrap_or_default();
        let detail = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .map(|v| GrpcError {
                code: v.get("code").and_then(Value::as_u64),
                message: printable(v.get("message").and_then(Value::as_str).unwrap_or("")),
            })
            .unwrap_or_else(|| GrpcError {
                code: None,
                message: printable(&String::from_utf8_lossy(&bytes)),
            });
        let kind = detail.kind().unwrap_or_else(|| kind_of_status(status));
        let mut message = format!("{}: etcd answered {status}", self.describe());
        if !detail.message.is_empty() {
            message.push_str(&format!(": {}", detail.message));
        }
        if let Some(code) = detail.code {
            message.push_str(&format!(" (gRPC code {code})"));
        }
        if detail.message == ETCD_NO_USER {
            message.push_str(&format!(
                "; etcd has authentication enabled: configure credentials.{CREDENTIAL_METHOD}"
            ));
        }
        FetchError {
            kind,
            message,
            http_status: Some(status),
        }
    }

    fn not_found(&self) -> FetchError {
        FetchError::new(
            ErrorKind::NotFound,
            format!("{}: etcd has no key {:?}", self.describe(), self.key),
        )
    }

    fn describe(&self) -> String {
        format!("POST {} (key {:?})", self.url, self.key)
    }
}

/// What etcd says when a request carries no token and authentication is on.
const ETCD_NO_USER: &str = "etcdserver: user name is empty";

/// The error document the gateway answers with: `{"error", "message", "code"}`.
struct GrpcError {
    code: Option<u64>,
    message: String,
}

impl GrpcError {
    /// The kind its gRPC code implies, where the HTTP status does not say
    /// it: etcd answers a missing token with 400 (InvalidArgument).
    fn kind(&self) -> Option<ErrorKind> {
        const PERMISSION_DENIED: u64 = 7;
        const UNAUTHENTICATED: u64 = 16;
        match self.code {
            Some(PERMISSION_DENIED | UNAUTHENTICATED) => Some(ErrorKind::Unauthorized),
            _ if self.message == ETCD_NO_USER => Some(ErrorKind::Unauthorized),
            _ => None,
        }
    }
}

/// The key of a range response for one key, if it has one.
fn parse_range(mut document: Value) -> Result<Option<KeyValue>, String> {
    let kvs = match document.get_mut("kvs").map(Value::take) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(kvs)) => kvs,
        Some(_) => return Err("`kvs` is not a list".into()),
    };
    let mut kvs = kvs.into_iter();
    let (Some(mut kv), None) = (kvs.next(), kvs.next()) else {
        return Err("expected at most one key in `kvs`".into());
    };
    // proto3 JSON writes int64 as a string; accept a number too.
    let mod_revision = match kv.get("mod_revision") {
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.clone()
        }
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        _ => return Err("the key has no valid `mod_revision`".into()),
    };
    let value = match kv.get_mut("value").map(Value::take) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err("the key's `value` is not a string".into()),
    };
    Ok(Some(KeyValue {
        mod_revision,
        value,
    }))
}

/// Decodes the base64 `encoded` into the host's output-stream, a chunk at a
/// time, so the decoded bundle is never whole in guest memory.
fn write_decoded(
    encoded: &str,
    sink: &OutputStream,
    range: &RangeRequest,
) -> Result<u64, FetchError> {
    let malformed = || {
        FetchError::protocol(format!(
            "{}: the value is not valid base64",
            range.describe()
        ))
    };
    // Padding only at the very end: the SDK's decoder stops at the first `=`,
    // which would otherwise cut a chunk short without an error.
    let body_end = encoded.trim_end_matches('=').len();
    if !encoded.len().is_multiple_of(4)
        || encoded.len() - body_end > 2
        || encoded[..body_end].contains('=')
    {
        return Err(malformed());
    }
    let mut written = 0u64;
    // `len % 4 == 0` and chunks of a multiple of 4: each decodes alone.
    for chunk in encoded.as_bytes().chunks(DECODE_CHUNK_CHARS) {
        let text = std::str::from_utf8(chunk).map_err(|_| malformed())?;
        let bytes = base64::decode(text).ok_or_else(malformed)?;
        sink.blocking_write_and_flush(&bytes).map_err(|e| {
            let why = match e {
                StreamError::Closed => "the stream is closed".to_string(),
                StreamError::LastOperationFailed(e) => e.to_debug_string(),
            };
            FetchError::transient(format!(
                "{}: writing the bundle to polhost failed after {written} bytes: {why}",
                range.describe()
            ))
        })?;
        written += bytes.len() as u64;
    }
    Ok(written)
}

/// The token of `credentials.etcd_token`, from the environment variable its
/// `env` names (default `ETCD_TOKEN`), which the operator must grant under
/// `polhost.fetchers.<type>.env`. The variable is polhost's own, fixed when
/// it starts: rotating the token means restarting polhost.
fn token(config: &ServiceConfig) -> Result<Option<String>, FetchError> {
    // Present even as `etcd_token: {}` or `etcd_token:` (null): either asks
    // for the token, and a request without it must not go out silently.
    let asked = config
        .get("credentials")
        .and_then(|c| c.get(CREDENTIAL_METHOD))
        .is_some();
    if !asked {
        return Ok(None);
    }
    let field = format!("credentials.{CREDENTIAL_METHOD}.env");
    let name = config.str(&field)?.unwrap_or(DEFAULT_TOKEN_ENV);
    match host::granted_env(name) {
        Some(token) if !token.trim().is_empty() => Ok(Some(token.trim().to_string())),
        _ => Err(config.invalid(
            &field,
            &format!("the token's variable {name} is unset, empty or not granted to this fetcher (list it under polhost.fetchers.<type>.env)"),
        )),
    }
}

/// The response info of a key at `mod_revision`.
fn info(mod_revision: String) -> ResponseInfo {
    ResponseInfo {
        etag: Some(mod_revision),
        digest: None,
        media_type: None,
        long_polling: false,
    }
}

/// `text` without control characters, at most 300 of them: a server's
/// words in a one-line message.
fn printable(text: &str) -> String {
    let text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
    text.trim().to_string()
}

polhost_fetcher::export_fetcher!(EtcdFetcher);

#[cfg(test)]
mod tests {
    use super::{GrpcError, parse_range};
    use polhost_fetcher::ErrorKind;
    use serde_json::json;

    #[test]
    fn a_range_response_gives_its_key_or_none() {
        let kv = parse_range(json!({"header": {}, "kvs": [{"key": "a2V5", "mod_revision": "42", "value": "aGk="}], "count": "1"}))
            .unwrap()
            .unwrap();
        assert_eq!(kv.mod_revision, "42");
        assert_eq!(kv.value.as_deref(), Some("aGk="));
        let keys_only = parse_range(json!({"kvs": [{"key": "a2V5", "mod_revision": 7}]}))
            .unwrap()
            .unwrap();
        assert_eq!(
            (keys_only.mod_revision.as_str(), keys_only.value),
            ("7", None)
        );
        assert!(
            parse_range(json!({"header": {"revision": "3"}}))
                .unwrap()
                .is_none()
        );
        assert!(parse_range(json!({"kvs": [{"mod_revision": "-1"}]})).is_err());
        assert!(
            parse_range(json!({"kvs": [{"mod_revision": "1"}, {"mod_revision": "2"}]})).is_err()
        );
    }

    #[test]
    fn auth_failures_are_unauthorized_whatever_the_status() {
        let kind = |code, message: &str| {
            GrpcError {
                code,
                message: message.into(),
            }
            .kind()
        };
        assert_eq!(
            kind(Some(16), "etcdserver: invalid auth token"),
            Some(ErrorKind::Unauthorized)
        );
        assert_eq!(
            kind(Some(7), "etcdserver: permission denied"),
            Some(ErrorKind::Unauthorized)
        );
        assert_eq!(
            kind(Some(3), "etcdserver: user name is empty"),
            Some(ErrorKind::Unauthorized)
        );
        assert_eq!(kind(Some(3), "etcdserver: key is not provided"), None);
    }
}
