//! OPA's `s3_signing` credential providers, tried in OPA's order
//! (environment, web identity, profile, metadata): the first that yields
//! credentials signs the request. Each provider reads only what the host
//! granted for it (environment values, one file, one origin); no value it
//! reads ever reaches a message.

use polhost_fetcher::bindings::polhost::fetcher::host;
use polhost_fetcher::bindings::wasi::http::types::Method;
use polhost_fetcher::clock::{Utc, now_unix};
use polhost_fetcher::config::ServiceConfig;
use polhost_fetcher::http::{self, Request};
use polhost_fetcher::url::Url;
use polhost_fetcher::{ErrorKind, FetchError, log};

use crate::sigv4::Credentials;
use polhost_fetcher::{percent, xml};

/// What signing needs: the credentials and the region they sign for.
pub struct Signing {
    pub credentials: Credentials,
    pub region: String,
    /// The provider that answered, for the debug log.
    pub provider: &'static str,
}

const BASE: &str = "credentials.s3_signing";

/// The providers OPA knows, in the order it tries them.
const PROVIDERS: &[&str] = &[
    "environment_credentials",
    "assume_role_credentials",
    "web_identity_credentials",
    "profile_credentials",
    "metadata_credentials",
    "sso_credentials",
];

/// IMDS's address: OPA's only one (polhost adds `endpoint` for tests and
/// IMDS proxies).
const DEFAULT_IMDS: &str = "http://169.254.169.254";

/// Resolves the configured provider chain. `Ok(None)` when the service has
/// no `s3_signing` (anonymous requests to a public bucket).
pub fn resolve(config: &ServiceConfig) -> Result<Option<Signing>, FetchError> {
    config.only_credential_methods("s3", &["s3_signing"])?;
    if config.get(BASE).is_none() {
        return Ok(None);
    }
    match config.str(&format!("{BASE}.signature_version"))? {
        None | Some("4") => {}
        Some(other) => {
            return Err(config.invalid(
                &format!("{BASE}.signature_version"),
                &format!("{other:?} is not supported (polhost signs with version 4)"),
            ));
        }
    }
    let configured: Vec<&str> = PROVIDERS
        .iter()
        .copied()
        .filter(|p| config.get(&format!("{BASE}.{p}")).is_some())
        .collect();
    if configured.is_empty() {
        return Err(config.invalid(
            BASE,
            "names no credential provider (environment_credentials, web_identity_credentials, profile_credentials or metadata_credentials)",
        ));
    }
    let mut failures = Vec::new();
    for provider in &configured {
        let result = match *provider {
            "environment_credentials" => environment(config),
            "web_identity_credentials" => web_identity(config),
            "profile_credentials" => profile(config),
            "metadata_credentials" => metadata(config),
            other => Err(config.invalid(
                &format!("{BASE}.{other}"),
                "not supported by polhost's s3 fetcher",
            )),
        };
        match result {
            Ok(signing) => return Ok(Some(signing)),
            // One provider: its own error, with its own kind.
            Err(e) if configured.len() == 1 => return Err(e),
            Err(e) => failures.push(format!("{provider}: {}", e.message)),
        }
    }
    Err(FetchError::invalid_config(format!(
        "no s3_signing credential provider succeeded: {}",
        failures.join("; ")
    )))
}

fn env(name: &str) -> Option<String> {
    host::granted_env(name).filter(|v| !v.is_empty())
}

/// The region: the provider's `aws_region`, else `AWS_REGION`.
fn region(config: &ServiceConfig, provider: &str) -> Result<String, FetchError> {
    let field = format!("{BASE}.{provider}.aws_region");
    match config.str(&field)? {
        Some(region) if !region.is_empty() => Ok(region.to_string()),
        _ => env("AWS_REGION").ok_or_else(|| {
            config.invalid(
                &field,
                "not set, and AWS_REGION is not set in the environment",
            )
        }),
    }
}

/// `environment_credentials`: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
/// AWS_REGION (all required, as in OPA), AWS_SESSION_TOKEN or
/// AWS_SECURITY_TOKEN.
fn environment(config: &ServiceConfig) -> Result<Signing, FetchError> {
    let need = |name: &str| {
        env(name).ok_or_else(|| {
            config.invalid(
                &format!("{BASE}.environment_credentials"),
                &format!("{name} is not set in the environment"),
            )
        })
    };
    Ok(Signing {
        credentials: Credentials {
            access_key_id: need("AWS_ACCESS_KEY_ID")?,
            secret_access_key: need("AWS_SECRET_ACCESS_KEY")?,
            session_token: env("AWS_SESSION_TOKEN").or_else(|| env("AWS_SECURITY_TOKEN")),
        },
        region: need("AWS_REGION")?,
        provider: "environment_credentials",
    })
}

/// `profile_credentials`: an INI credentials file (`path`, else
/// AWS_SHARED_CREDENTIALS_FILE, else `$HOME/.aws/credentials`), section
/// `profile` (else AWS_PROFILE, else `default`).
fn profile(config: &ServiceConfig) -> Result<Signing, FetchError> {
    let field = format!("{BASE}.profile_credentials");
    let path = match config.str(&format!("{field}.path"))? {
        Some(path) if !path.is_empty() => path.to_string(),
        _ => match env("AWS_SHARED_CREDENTIALS_FILE") {
            Some(path) => path,
            None => match env("HOME") {
                Some(home) => format!("{}/.aws/credentials", home.trim_end_matches('/')),
                None => {
                    return Err(config.invalid(
                        &format!("{field}.path"),
                        "not set, and neither AWS_SHARED_CREDENTIALS_FILE nor HOME is set",
                    ));
                }
            },
        },
    };
    let profile = match config.str(&format!("{field}.profile"))? {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => env("AWS_PROFILE").unwrap_or_else(|| "default".to_string()),
    };
    let bytes = host::read_granted_file(&path)
        .map_err(|e| config.invalid(&format!("{field}.path"), &format!("{path}: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        config.invalid(&format!("{field}.path"), &format!("{path}: not UTF-8 text"))
    })?;
    let section = ini_section(&text, &profile).ok_or_else(|| {
        config.invalid(
            &format!("{field}.profile"),
            &format!("credentials file {path} has no profile [{profile}]"),
        )
    })?;
    let key = |name: &str| {
        section
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let need = |name: &str| {
        key(name).ok_or_else(|| {
            config.invalid(
                &format!("{field}.profile"),
                &format!("profile [{profile}] in {path} does not contain {name:?}"),
            )
        })
    };
    Ok(Signing {
        credentials: Credentials {
            access_key_id: need("aws_access_key_id")?,
            secret_access_key: need("aws_secret_access_key")?,
            session_token: key("aws_session_token"),
        },
        region: region(config, "profile_credentials")?,
        provider: "profile_credentials",
    })
}

/// The `key = value` pairs of section `[name]` of an INI text.
fn ini_section(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut found = None;
    let mut current = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.trim() == name;
            if current && found.is_none() {
                found = Some(Vec::new());
            }
            continue;
        }
        if current && let (Some(entries), Some((k, v))) = (found.as_mut(), line.split_once('=')) {
            let entries: &mut Vec<(String, String)> = entries;
            entries.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    found
}

/// `metadata_credentials`: EC2 IMDSv2. A session token by PUT, then the
/// role's credentials. A fresh instance runs every fetch, so credentials
/// are fetched anew for each poll and never used past their `Expiration`.
fn metadata(config: &ServiceConfig) -> Result<Signing, FetchError> {
    let field = format!("{BASE}.metadata_credentials");
    let role = match config.str(&format!("{field}.iam_role"))? {
        Some(role) if !role.is_empty() => role.to_string(),
        _ => {
            return Err(config.invalid(
                &format!("{field}.iam_role"),
                "required (polhost does not read the ECS container credentials endpoint)",
            ));
        }
    };
    let endpoint = config
        .str(&format!("{field}.endpoint"))?
        .unwrap_or(DEFAULT_IMDS)
        .trim_end_matches('/')
        .to_string();
    let region = region(config, "metadata_credentials")?;

    let mut token_request = Request::new(
        Method::Put,
        Url::parse(&format!("{endpoint}/latest/api/token"))?,
    );
    token_request
        .headers
        .push(("X-aws-ec2-metadata-token-ttl-seconds".into(), "60".into()));
    token_request.first_byte_timeout_ms = Some(10_000);
    let response = http::send(&token_request)?;
    let url = response.url.clone();
    if response.status != 200 {
        return Err(FetchError::from_status(
            response.status,
            format!("PUT {url} (IMDSv2 token): answered {}", response.status),
        ));
    }
    let token = String::from_utf8_lossy(&response.read_to_vec(4096)?)
        .trim()
        .to_string();

    let mut request = Request::get(Url::parse(&format!(
        "{endpoint}/latest/meta-data/iam/security-credentials/{}",
        percent::encode(&role, false)
    ))?);
    request
        .origin_headers
        .push(("X-aws-ec2-metadata-token".into(), token));
    request.first_byte_timeout_ms = Some(10_000);
    let response = http::send(&request)?;
    let url = response.url.clone();
    if response.status != 200 {
        return Err(FetchError::from_status(
            response.status,
            format!(
                "GET {url} (IMDS credentials of role {role}): answered {}",
                response.status
            ),
        ));
    }
    let body = response.read_to_vec(64 * 1024)?;
    let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
        FetchError::protocol(format!("GET {url}: the IMDS credentials are not JSON"))
    })?;
    let text = |name: &str| {
        doc.get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    if text("Code") != "Success" {
        return Err(FetchError::new(
            ErrorKind::Unauthorized,
            format!(
                "GET {url}: IMDS credentials of role {role}: Code {:?}",
                text("Code")
            ),
        ));
    }
    check_expiry(
        &text("Expiration"),
        &format!("IMDS credentials of role {role}"),
    )?;
    let (access_key_id, secret_access_key) = (text("AccessKeyId"), text("SecretAccessKey"));
    if access_key_id.is_empty() || secret_access_key.is_empty() {
        return Err(FetchError::protocol(format!(
            "GET {url}: IMDS credentials of role {role} lack AccessKeyId or SecretAccessKey"
        )));
    }
    let token = text("Token");
    Ok(Signing {
        credentials: Credentials {
            access_key_id,
            secret_access_key,
            session_token: (!token.is_empty()).then_some(token),
        },
        region,
        provider: "metadata_credentials",
    })
}

/// Refuses credentials already expired (a clock or provider problem that
/// would otherwise show up as a confusing signature error).
fn check_expiry(expiration: &str, what: &str) -> Result<(), FetchError> {
    if let Some(at) = Utc::parse_rfc3339(expiration)
        && at.to_unix() <= now_unix()
    {
        return Err(FetchError::transient(format!(
            "{what} expired at {expiration}"
        )));
    }
    Ok(())
}

/// `web_identity_credentials`: STS AssumeRoleWithWebIdentity with
/// AWS_ROLE_ARN and the token in AWS_WEB_IDENTITY_TOKEN_FILE, at
/// `https://sts.<region>.<aws_domain>` (polhost's `endpoint` overrides it).
fn web_identity(config: &ServiceConfig) -> Result<Signing, FetchError> {
    let field = format!("{BASE}.web_identity_credentials");
    let need = |name: &str| {
        env(name)
            .ok_or_else(|| config.invalid(&field, &format!("{name} is not set in the environment")))
    };
    let role_arn = need("AWS_ROLE_ARN")?;
    let token_file = need("AWS_WEB_IDENTITY_TOKEN_FILE")?;
    let region = region(config, "web_identity_credentials")?;
    let endpoint = sts_endpoint(config, &region)?;
    let session_name = match config.str(&format!("{field}.session_name"))? {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => "open-policy-agent".to_string(),
    };
    let token = host::read_granted_file(&token_file).map_err(|e| {
        config.invalid(
            &field,
            &format!("AWS_WEB_IDENTITY_TOKEN_FILE {token_file}: {e}"),
        )
    })?;
    let token = String::from_utf8_lossy(&token).trim().to_string();

    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("RoleSessionName", session_name.as_str()),
        ("RoleArn", role_arn.as_str()),
        ("WebIdentityToken", token.as_str()),
        ("Version", "2011-06-15"),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", percent::encode(v, false)))
    .collect::<Vec<_>>()
    .join("&");
    let mut request = Request::new(Method::Post, Url::parse(&format!("{endpoint}/"))?);
    request.headers.push((
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    ));
    request.body = form.into_bytes();
    request.first_byte_timeout_ms = Some(10_000);
    let response = http::send(&request)?;
    let url = response.url.clone();
    let status = response.status;
    let body = String::from_utf8_lossy(&response.read_to_vec(64 * 1024)?).into_owned();
    if status != 200 {
        let code = xml::text(&body, "Code").unwrap_or_default();
        let message = xml::text(&body, "Message").unwrap_or_default();
        return Err(FetchError::from_status(
            status,
            format!(
                "POST {url} (STS AssumeRoleWithWebIdentity for {role_arn}): {status} {code}: {message}"
            ),
        ));
    }
    let get = |tag: &str| {
        xml::text(&body, tag)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                FetchError::protocol(format!(
                    "POST {url}: the AssumeRoleWithWebIdentity response has no {tag}"
                ))
            })
    };
    let credentials = Credentials {
        access_key_id: get("AccessKeyId")?,
        secret_access_key: get("SecretAccessKey")?,
        session_token: Some(get("SessionToken")?),
    };
    if let Some(expiration) = xml::text(&body, "Expiration") {
        check_expiry(&expiration, "STS credentials")?;
    }
    log::debug(&format!(
        "STS AssumeRoleWithWebIdentity: credentials for {role_arn}"
    ));
    Ok(Signing {
        credentials,
        region,
        provider: "web_identity_credentials",
    })
}

/// The STS origin web identity uses: `endpoint` (polhost), else OPA's
/// `https://sts.<region>.<aws_domain or AWS_DOMAIN or amazonaws.com>`.
fn sts_endpoint(config: &ServiceConfig, region: &str) -> Result<String, FetchError> {
    let field = format!("{BASE}.web_identity_credentials");
    if let Some(endpoint) = config.str(&format!("{field}.endpoint"))? {
        return Ok(endpoint.trim_end_matches('/').to_string());
    }
    let domain = match config.str(&format!("{field}.aws_domain"))? {
        Some(d) if !d.is_empty() => d.to_ascii_lowercase(),
        _ => env("AWS_DOMAIN")
            .map(|d| d.to_ascii_lowercase())
            .unwrap_or_else(|| "amazonaws.com".to_string()),
    };
    Ok(format!(
        "https://sts.{}.{domain}",
        region.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_ini_profile() {
        let text = "[default]\naws_access_key_id = A\n\n[prod]\n# note\naws_access_key_id=B\nAWS_SECRET_ACCESS_KEY = s=1\n";
        let prod = ini_section(text, "prod").unwrap();
        assert_eq!(
            prod,
            vec![
                ("aws_access_key_id".to_string(), "B".to_string()),
                ("aws_secret_access_key".to_string(), "s=1".to_string())
            ]
        );
        assert!(ini_section(text, "missing").is_none());
    }
}
