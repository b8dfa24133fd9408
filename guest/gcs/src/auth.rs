//! Access tokens for GCS: OPA's `gcp_metadata` (the metadata server's
//! access token for `scopes`, or its identity token for `audience`) and
//! polhost's `gcp_service_account` (a JWT signed with the service
//! account's key, exchanged at the token endpoint, RFC 7523). Tokens and
//! keys never reach a message.

use polhost_fetcher::bindings::wasi::http::types::Method;
use polhost_fetcher::clock::now_unix;
use polhost_fetcher::config::ServiceConfig;
use polhost_fetcher::http::{self, Request};
use polhost_fetcher::url::Url;
use polhost_fetcher::{FetchError, log};
use polhost_fetcher::{base64, percent};
use rsa::RsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use sha2::Sha256;

/// OPA's defaults for `gcp_metadata`.
const METADATA_ENDPOINT: &str = "http://metadata.google.internal";
const ACCESS_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
const IDENTITY_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";

/// polhost's defaults for `gcp_service_account`.
const TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const READ_ONLY_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";

/// The bearer token for the configured method; `None` without credentials.
pub fn token(config: &ServiceConfig) -> Result<Option<String>, FetchError> {
    config.only_credential_methods("gcs", &["gcp_metadata", "gcp_service_account"])?;
    if config.get("credentials.gcp_metadata").is_some() {
        return metadata(config).map(Some);
    }
    if config.get("credentials.gcp_service_account").is_some() {
        return service_account(config).map(Some);
    }
    Ok(None)
}

fn strings(config: &ServiceConfig, path: &str) -> Result<Vec<String>, FetchError> {
    match config.get(path) {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| config.invalid(path, "must be a list of strings"))
            })
            .collect(),
        Some(_) => Err(config.invalid(path, "must be a list of strings")),
    }
}

/// `gcp_metadata`, as OPA's `v1/plugins/rest/gcp.go`: exactly one of
/// `audience` and `scopes`; header `Metadata-Flavor: Google`.
fn metadata(config: &ServiceConfig) -> Result<String, FetchError> {
    let field = "credentials.gcp_metadata";
    let audience = config
        .str(&format!("{field}.audience"))?
        .filter(|a| !a.is_empty());
    let scopes = strings(config, &format!("{field}.scopes"))?;
    let endpoint = config
        .str(&format!("{field}.endpoint"))?
        .filter(|e| !e.is_empty())
        .unwrap_or(METADATA_ENDPOINT)
        .trim_end_matches('/')
        .to_string();
    let url = match (audience, scopes.is_empty()) {
        (Some(_), false) | (None, true) => {
            return Err(config.invalid(field, "needs exactly one of audience and scopes"));
        }
        (Some(audience), true) => {
            let path = config
                .str(&format!("{field}.id_token_path"))?
                .or(config.str(&format!("{field}.identity_token_path"))?)
                .unwrap_or(IDENTITY_TOKEN_PATH);
            format!(
                "{endpoint}{path}?audience={}",
                percent::encode(audience, false)
            )
        }
        (None, false) => {
            let path = config
                .str(&format!("{field}.access_token_path"))?
                .unwrap_or(ACCESS_TOKEN_PATH);
            let scopes: Vec<String> = scopes.iter().map(|s| percent::encode(s, false)).collect();
            format!("{endpoint}{path}?scopes={}", scopes.join(","))
        }
    };
    let identity = url.contains("?audience=");
    let mut request = Request::get(Url::parse(&url)?);
    request
        .origin_headers
        .push(("Metadata-Flavor".into(), "Google".into()));
    request.first_byte_timeout_ms = Some(10_000);
    let response = http::send(&request)?;
    let (status, url) = (response.status, response.url.clone());
    if status != 200 {
        return Err(FetchError::from_status(
            status,
            format!("GET {url} (GCP metadata server token): answered {status}"),
        ));
    }
    let body = response.read_to_vec(64 * 1024)?;
    let token = if identity {
        String::from_utf8_lossy(&body).trim().to_string()
    } else {
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        doc["access_token"].as_str().unwrap_or("").to_string()
    };
    if token.is_empty() {
        return Err(FetchError::protocol(format!(
            "GET {url}: the metadata server answered no token"
        )));
    }
    log::debug(&format!("GCP metadata server token from {url}"));
    Ok(token)
}

/// `gcp_service_account` (polhost extension): the key file's
/// `client_email` and `private_key` sign an RS256 JWT for `scopes`
/// (default read-only storage), exchanged at `token_url`.
fn service_account(config: &ServiceConfig) -> Result<String, FetchError> {
    let field = "credentials.gcp_service_account";
    let key_file = config
        .read_file_at(&format!("{field}.key_path"))?
        .ok_or_else(|| config.invalid(&format!("{field}.key_path"), "required"))?;
    let key: serde_json::Value = serde_json::from_slice(&key_file).map_err(|_| {
        config.invalid(
            &format!("{field}.key_path"),
            "is not a service-account JSON key file",
        )
    })?;
    let email = key["client_email"].as_str().unwrap_or("");
    let pem = key["private_key"].as_str().unwrap_or("");
    if email.is_empty() || pem.is_empty() {
        return Err(config.invalid(
            &format!("{field}.key_path"),
            "the key file lacks client_email or private_key",
        ));
    }
    let private = RsaPrivateKey::from_pkcs8_pem(pem).map_err(|_| {
        config.invalid(
            &format!("{field}.key_path"),
            "private_key is not a PKCS#8 PEM RSA key",
        )
    })?;
    let token_url = config
        .str(&format!("{field}.token_url"))?
        .unwrap_or(TOKEN_URL)
        .to_string();
    let mut scopes = strings(config, &format!("{field}.scopes"))?;
    if scopes.is_empty() {
        scopes.push(READ_ONLY_SCOPE.to_string());
    }
    let now = now_unix();
    let header = base64::encode_url(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "iss": email,
        "scope": scopes.join(" "),
        "aud": token_url,
        "iat": now,
        "exp": now + 3600,
    });
    let claims = base64::encode_url(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{claims}");
    let signature = SigningKey::<Sha256>::new(private).sign(signing_input.as_bytes());
    let assertion = format!(
        "{signing_input}.{}",
        base64::encode_url(&signature.to_bytes())
    );

    let mut request = Request::new(Method::Post, Url::parse(&token_url)?);
    request.headers.push((
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    ));
    request.body = format!(
        "grant_type={}&assertion={assertion}",
        percent::encode("urn:ietf:params:oauth:grant-type:jwt-bearer", false)
    )
    .into_bytes();
    request.first_byte_timeout_ms = Some(10_000);
    let response = http::send(&request)?;
    let (status, url) = (response.status, response.url.clone());
    let body = response.read_to_vec(64 * 1024)?;
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != 200 {
        return Err(FetchError::from_status(
            status,
            format!(
                "POST {url} (service account {email} token): {status} {}: {}",
                doc["error"].as_str().unwrap_or(""),
                doc["error_description"].as_str().unwrap_or("")
            ),
        ));
    }
    let token = doc["access_token"].as_str().unwrap_or("").to_string();
    if token.is_empty() {
        return Err(FetchError::protocol(format!(
            "POST {url}: the token endpoint answered no access_token"
        )));
    }
    log::debug(&format!("service account {email}: token from {url}"));
    Ok(token)
}
