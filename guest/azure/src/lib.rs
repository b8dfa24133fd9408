//! polhost's fetcher for Azure Blob Storage.
//!
//! `GET <url>/<resource>` (Get Blob) with `x-ms-version`, authorised by one
//! of: account SharedKey signing (`credentials.azure_shared_key`, a polhost
//! extension), a SAS token (`credentials.azure_sas`, a polhost extension),
//! or a managed-identity token (`credentials.azure_managed_identity`,
//! OPA's). Without credentials the request is anonymous (a public
//! container). `If-None-Match` with the active bundle's ETag: 304 is not
//! modified. Errors name the account, container, blob and Azure's error
//! code; keys, SAS signatures and tokens never appear in them (the SAS sits
//! in the query, which `Url`'s `Display` never prints).

// The fetcher is exported only on wasm (a native build, the unit tests,
// cannot link the component's export names), so natively it looks unused.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod blob;
pub mod shared_key;

use polhost_fetcher::bindings::polhost::fetcher::host;
use polhost_fetcher::clock::{Utc, now_unix};
use polhost_fetcher::config::ServiceConfig;
use polhost_fetcher::http::{self, Request};
use polhost_fetcher::url::Url;
use polhost_fetcher::{
    BundleRequest, FetchError, FetchOutcome, Fetcher, OutputStream, Service, log,
};
use polhost_fetcher::{base64, percent, xml};

use blob::Blob;

/// The storage service version polhost speaks (Get Blob needs one).
pub const MS_VERSION: &str = "2021-12-02";

/// OPA's defaults for `azure_managed_identity`.
const IMDS_TOKEN_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
const IMDS_API_VERSION: &str = "2018-02-01";
const APP_SERVICE_API_VERSION: &str = "2019-08-01";
const STORAGE_RESOURCE: &str = "https://storage.azure.com/";

struct AzureFetcher;

/// The configured credential method.
enum Auth {
    Anonymous,
    SharedKey { account: String, key: Vec<u8> },
    Sas(String),
    Bearer(String),
}

impl Fetcher for AzureFetcher {
    fn fetch(
        service: Service,
        bundle: BundleRequest,
        body: &OutputStream,
    ) -> Result<FetchOutcome, FetchError> {
        let config = ServiceConfig::parse(&service.name, &service.config)?;
        let mut url = blob::blob_url(&service.url, &bundle.resource)?;
        let target = Blob::of(&url);
        let auth = auth(&config, &target)?;

        let mut request_headers = vec![
            ("x-ms-version".to_string(), MS_VERSION.to_string()),
            (
                "x-ms-date".to_string(),
                Utc::from_unix(now_unix()).http_date(),
            ),
        ];
        if let Some(etag) = &bundle.etag {
            request_headers.push(("If-None-Match".to_string(), etag.clone()));
        }
        match &auth {
            Auth::Anonymous => {}
            Auth::SharedKey { account, key } => {
                let value = shared_key::authorization("GET", &url, &request_headers, account, key);
                request_headers.push(("Authorization".to_string(), value));
            }
            Auth::Sas(token) => {
                let separator = if url.path_and_query.contains('?') {
                    '&'
                } else {
                    '?'
                };
                url.path_and_query = format!("{}{separator}{token}", url.path_and_query);
            }
            Auth::Bearer(token) => {
                request_headers.push(("Authorization".to_string(), format!("Bearer {token}")));
            }
        }

        let mut request = Request::get(url.clone());
        request.headers.push((
            "User-Agent".into(),
            concat!("polhost/", env!("CARGO_PKG_VERSION"), " (fetcher-azure)").into(),
        ));
        let header_timeout_s = config.u64("response_header_timeout_seconds")?.unwrap_or(10);
        request.first_byte_timeout_ms = Some(header_timeout_s * 1000);
        request.origin_headers.extend(service.headers);
        // Signed and secret headers go to the service's origin only.
        request.origin_headers.extend(request_headers);

        let response = http::send(&request)?;
        let response = match response.into_bundle_outcome(body, bundle.etag, false)? {
            Ok(outcome) => return Ok(outcome),
            Err(failed) => failed,
        };
        let status = response.status;
        let header_code = response.header("x-ms-error-code");
        let text = response.error_text();
        let code = header_code
            .or_else(|| xml::text(&text, "Code"))
            .unwrap_or_default();
        // The first line only: Azure appends request ids and times.
        let message = xml::text(&text, "Message")
            .map(|m| m.lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let detail = polhost_fetcher::error::service_detail(&code, &message);
        Err(FetchError::from_status(
            status,
            format!("GET {target} ({url}): Azure answered {status}{detail}"),
        ))
    }
}

/// Reads the one credential method configured.
fn auth(config: &ServiceConfig, target: &Blob) -> Result<Auth, FetchError> {
    config.only_credential_methods(
        "azure",
        &["azure_shared_key", "azure_sas", "azure_managed_identity"],
    )?;
    if config.get("credentials.azure_shared_key").is_some() {
        let field = "credentials.azure_shared_key";
        let account = config
            .str(&format!("{field}.account_name"))?
            .map(str::to_string)
            .unwrap_or_else(|| target.account.clone());
        let encoded = config
            .str(&format!("{field}.account_key"))?
            .ok_or_else(|| config.invalid(&format!("{field}.account_key"), "required"))?;
        // Never echo the key, even a malformed one.
        let key = base64::decode(encoded)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                config.invalid(
                    &format!("{field}.account_key"),
                    "is not base64 (the storage account's access key)",
                )
            })?;
        return Ok(Auth::SharedKey { account, key });
    }
    if config.get("credentials.azure_sas").is_some() {
        let field = "credentials.azure_sas";
        let token = config
            .token_or_token_path(field)?
            .ok_or_else(|| config.invalid(field, "needs token or token_path"))?;
        let token = token.trim_start_matches('?').to_string();
        if token.is_empty() {
            return Err(config.invalid(&format!("{field}.token"), "is empty"));
        }
        return Ok(Auth::Sas(token));
    }
    if config.get("credentials.azure_managed_identity").is_some() {
        return managed_identity(config).map(Auth::Bearer);
    }
    Ok(Auth::Anonymous)
}

/// OPA's `azure_managed_identity`: a token for `resource` (default
/// `https://storage.azure.com/`) from `endpoint`, else App Service's
/// `IDENTITY_ENDPOINT` (with `IDENTITY_HEADER`), else IMDS.
fn managed_identity(config: &ServiceConfig) -> Result<String, FetchError> {
    let field = "credentials.azure_managed_identity";
    let get = |key: &str| -> Result<Option<String>, FetchError> {
        Ok(config
            .str(&format!("{field}.{key}"))?
            .filter(|v| !v.is_empty())
            .map(str::to_string))
    };
    let (endpoint, app_service) = match get("endpoint")? {
        Some(endpoint) => (endpoint, false),
        None => match host::granted_env("IDENTITY_ENDPOINT").filter(|v| !v.is_empty()) {
            Some(endpoint) => (endpoint, true),
            None => (IMDS_TOKEN_ENDPOINT.to_string(), false),
        },
    };
    let api_version = get("api_version")?.unwrap_or_else(|| {
        if app_service {
            APP_SERVICE_API_VERSION
        } else {
            IMDS_API_VERSION
        }
        .to_string()
    });
    let resource = get("resource")?.unwrap_or_else(|| STORAGE_RESOURCE.to_string());
    let mut query = vec![
        format!("api-version={}", percent::encode(&api_version, false)),
        format!("resource={}", percent::encode(&resource, false)),
    ];
    for key in ["object_id", "client_id", "mi_res_id"] {
        if let Some(value) = get(key)? {
            query.push(format!("{key}={}", percent::encode(&value, false)));
        }
    }
    let separator = if endpoint.contains('?') { '&' } else { '?' };
    let token_url = Url::parse(&format!("{endpoint}{separator}{}", query.join("&")))?;
    let mut request = Request::get(token_url);
    request
        .origin_headers
        .push(("Metadata".into(), "true".into()));
    if app_service && let Some(header) = host::granted_env("IDENTITY_HEADER") {
        request
            .origin_headers
            .push(("X-IDENTITY-HEADER".into(), header));
    }
    request.first_byte_timeout_ms = Some(10_000);
    let response = http::send(&request)?;
    let url = response.url.clone();
    let status = response.status;
    let body = response.read_to_vec(64 * 1024)?;
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = |name: &str| {
        doc.get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    if status != 200 {
        return Err(FetchError::from_status(
            status,
            format!(
                "GET {url} (managed identity token for {resource}): {status} {}: {}",
                text("error"),
                text("error_description")
            ),
        ));
    }
    let token = text("access_token");
    if token.is_empty() {
        return Err(FetchError::protocol(format!(
            "GET {url}: the managed identity answer has no access_token"
        )));
    }
    log::debug(&format!("managed identity token for {resource} from {url}"));
    Ok(token)
}

#[cfg(target_arch = "wasm32")]
polhost_fetcher::export_fetcher!(AzureFetcher);
