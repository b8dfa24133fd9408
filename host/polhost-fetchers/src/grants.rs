//! What each standard fetcher's credential methods need beyond the service
//! URL, derived from the service's configuration: one function per service
//! type (the descriptors' [`polhost::GrantRule::Derived`]). It only adds
//! origins, files and environment variables a configured method names
//! (least privilege); it never reads a secret's value. The environment is
//! the one the host was given, never the process's own.

use std::path::PathBuf;

use polhost::config::Service;
use polhost::{EnvLookup, Grant};
use serde_json::Value;

/// `http` and `oci`: nothing beyond the service URL and the bearer
/// `token_path` (which every derived grant gets).
pub(crate) fn none(_: &mut Grant, _: &Service, _: &EnvLookup) {}

/// `s3`: see [`s3_signing`].
pub(crate) fn s3(grant: &mut Grant, service: &Service, env: &EnvLookup) {
    s3_signing(grant, &service.raw, env);
}

/// `azure`: see [`azure_credentials`].
pub(crate) fn azure(grant: &mut Grant, service: &Service, env: &EnvLookup) {
    azure_credentials(grant, &service.raw, env);
}

/// `gcs`: see [`gcs_credentials`].
pub(crate) fn gcs(grant: &mut Grant, service: &Service, _: &EnvLookup) {
    gcs_credentials(grant, &service.raw);
}

/// The string at a path of keys, if it is a non-empty string.
fn text<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn present(value: &Value, path: &[&str]) -> bool {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .is_some_and(|v| !v.is_null())
}

/// A variable of the injected environment, if set and not empty.
fn var(env: &EnvLookup, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// The IMDS address OPA uses (polhost adds `metadata_credentials.endpoint`).
const AWS_IMDS: &str = "http://169.254.169.254";

/// `credentials.s3_signing`: each configured provider of OPA's chain gets
/// what it reads (see docs/s3.md).
fn s3_signing(grant: &mut Grant, raw: &Value, env: &EnvLookup) {
    let Some(signing) = raw.get("credentials").and_then(|c| c.get("s3_signing")) else {
        return;
    };
    // A provider's region falls back to AWS_REGION.
    let region_env = |grant: &mut Grant, provider: &str| {
        if text(signing, &[provider, "aws_region"]).is_none() {
            grant.add_env("AWS_REGION");
        }
    };
    if present(signing, &["environment_credentials"]) {
        for name in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_REGION",
        ] {
            grant.add_env(name);
        }
    }
    if present(signing, &["web_identity_credentials"]) {
        let provider = "web_identity_credentials";
        grant.add_env("AWS_ROLE_ARN");
        grant.add_env("AWS_WEB_IDENTITY_TOKEN_FILE");
        region_env(grant, provider);
        if let Some(token_file) = var(env, "AWS_WEB_IDENTITY_TOKEN_FILE") {
            grant.add_file(PathBuf::from(token_file));
        }
        match text(signing, &[provider, "endpoint"]) {
            Some(endpoint) => grant.add_origin_of_url(endpoint),
            None => {
                if text(signing, &[provider, "aws_domain"]).is_none() {
                    grant.add_env("AWS_DOMAIN");
                }
                let region = text(signing, &[provider, "aws_region"])
                    .map(str::to_string)
                    .or_else(|| var(env, "AWS_REGION"));
                let domain = text(signing, &[provider, "aws_domain"])
                    .map(str::to_string)
                    .or_else(|| var(env, "AWS_DOMAIN"))
                    .unwrap_or_else(|| "amazonaws.com".to_string());
                if let Some(region) = region.filter(|r| !r.is_empty()) {
                    grant.add_origin_of_url(&format!(
                        "https://sts.{}.{}",
                        region.to_ascii_lowercase(),
                        domain.to_ascii_lowercase()
                    ));
                }
            }
        }
    }
    if present(signing, &["profile_credentials"]) {
        let provider = "profile_credentials";
        region_env(grant, provider);
        if text(signing, &[provider, "profile"]).is_none() {
            grant.add_env("AWS_PROFILE");
        }
        let path = match text(signing, &[provider, "path"]) {
            Some(path) => Some(PathBuf::from(path)),
            None => {
                // The guest has no HOME of its own: grant the values it
                // needs to name the default file, and that file.
                grant.add_env("AWS_SHARED_CREDENTIALS_FILE");
                grant.add_env("HOME");
                match var(env, "AWS_SHARED_CREDENTIALS_FILE") {
                    Some(path) => Some(PathBuf::from(path)),
                    None => var(env, "HOME").map(|home| {
                        PathBuf::from(format!("{}/.aws/credentials", home.trim_end_matches('/')))
                    }),
                }
            }
        };
        if let Some(path) = path {
            grant.add_file(path);
        }
    }
    if present(signing, &["metadata_credentials"]) {
        let provider = "metadata_credentials";
        region_env(grant, provider);
        let endpoint = text(signing, &[provider, "endpoint"]).unwrap_or(AWS_IMDS);
        grant.add_origin_of_url(endpoint);
    }
}

/// The token endpoint OPA uses for `azure_managed_identity`.
const AZURE_IMDS: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// `azure_managed_identity`: the token endpoint's origin (`endpoint`, else
/// App Service's `IDENTITY_ENDPOINT` with `IDENTITY_HEADER`, else IMDS);
/// `azure_sas.token_path`: that file. SharedKey needs nothing: the key is
/// in the service's own configuration.
fn azure_credentials(grant: &mut Grant, raw: &Value, env: &EnvLookup) {
    let Some(credentials) = raw.get("credentials") else {
        return;
    };
    if let Some(path) = text(credentials, &["azure_sas", "token_path"]) {
        grant.add_file(PathBuf::from(path));
    }
    if present(credentials, &["azure_managed_identity"]) {
        match text(credentials, &["azure_managed_identity", "endpoint"]) {
            Some(endpoint) => grant.add_origin_of_url(endpoint),
            None => {
                grant.add_env("IDENTITY_ENDPOINT");
                grant.add_env("IDENTITY_HEADER");
                match var(env, "IDENTITY_ENDPOINT") {
                    Some(endpoint) => grant.add_origin_of_url(&endpoint),
                    None => grant.add_origin_of_url(AZURE_IMDS),
                }
            }
        }
    }
}

/// The metadata server OPA's `gcp_metadata` asks, and the token endpoint
/// polhost's `gcp_service_account` exchanges its JWT at, by default.
const GCP_METADATA: &str = "http://metadata.google.internal";
const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// `gcp_metadata`: the metadata server's origin (`endpoint`);
/// `gcp_service_account`: the key file and the token endpoint's origin.
fn gcs_credentials(grant: &mut Grant, raw: &Value) {
    let Some(credentials) = raw.get("credentials") else {
        return;
    };
    if present(credentials, &["gcp_metadata"]) {
        grant.add_origin_of_url(
            text(credentials, &["gcp_metadata", "endpoint"]).unwrap_or(GCP_METADATA),
        );
    }
    if present(credentials, &["gcp_service_account"]) {
        if let Some(path) = text(credentials, &["gcp_service_account", "key_path"]) {
            grant.add_file(PathBuf::from(path));
        }
        grant.add_origin_of_url(
            text(credentials, &["gcp_service_account", "token_url"]).unwrap_or(GOOGLE_TOKEN_URL),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_grant(signing: Value) -> Grant {
        let mut grant = Grant::default();
        s3_signing(
            &mut grant,
            &serde_json::json!({"credentials": {"s3_signing": signing}}),
            &|_| None,
        );
        grant
    }

    #[test]
    fn s3_environment_grants_the_aws_variables_only() {
        let grant = s3_grant(serde_json::json!({"environment_credentials": {}}));
        assert_eq!(
            grant.env,
            [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_SECURITY_TOKEN",
                "AWS_REGION"
            ]
        );
        assert!(grant.files.is_empty() && grant.origins.is_empty());
    }

    #[test]
    fn s3_profile_with_path_grants_that_file() {
        let grant = s3_grant(serde_json::json!({"profile_credentials": {
            "path": "/etc/aws/creds", "profile": "p", "aws_region": "eu-west-1"}}));
        assert_eq!(grant.files, [PathBuf::from("/etc/aws/creds")]);
        assert!(grant.env.is_empty() && grant.origins.is_empty());
    }

    #[test]
    fn s3_metadata_grants_imds_or_the_configured_endpoint() {
        let grant = s3_grant(serde_json::json!({"metadata_credentials": {"iam_role": "r"}}));
        assert_eq!(grant.origins, [polhost::Origin::of_url(AWS_IMDS).unwrap()]);
        assert_eq!(grant.env, ["AWS_REGION"]);
        let grant = s3_grant(serde_json::json!({"metadata_credentials": {
            "iam_role": "r", "aws_region": "x", "endpoint": "http://127.0.0.1:1234"}}));
        assert_eq!(
            grant.origins,
            [polhost::Origin::of_url("http://127.0.0.1:1234").unwrap()]
        );
        assert!(grant.env.is_empty());
    }

    #[test]
    fn s3_web_identity_grants_the_regional_sts_origin() {
        let grant = s3_grant(serde_json::json!({"web_identity_credentials": {
            "aws_region": "EU-West-1", "aws_domain": "amazonaws.com.cn"}}));
        assert_eq!(
            grant.origins,
            [polhost::Origin::of_url("https://sts.eu-west-1.amazonaws.com.cn").unwrap()]
        );
        assert_eq!(grant.env, ["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"]);
    }

    #[test]
    fn azure_managed_identity_grants_the_configured_token_endpoint_only() {
        let mut grant = Grant::default();
        azure_credentials(
            &mut grant,
            &serde_json::json!({"credentials": {"azure_managed_identity": {
                "endpoint": "http://127.0.0.1:9/metadata/identity/oauth2/token"}}}),
            &|_| None,
        );
        assert_eq!(
            grant.origins,
            [polhost::Origin::of_url("http://127.0.0.1:9").unwrap()]
        );
        assert!(grant.env.is_empty() && grant.files.is_empty());
        let mut grant = Grant::default();
        azure_credentials(
            &mut grant,
            &serde_json::json!({"credentials": {"azure_shared_key": {"account_key": "k"}}}),
            &|_| None,
        );
        assert_eq!(grant, Grant::default());
    }

    #[test]
    fn gcs_grants_the_metadata_server_or_the_key_file_and_token_endpoint() {
        let mut grant = Grant::default();
        gcs_credentials(
            &mut grant,
            &serde_json::json!({"credentials": {"gcp_metadata": {"scopes": ["s"]}}}),
        );
        assert_eq!(
            grant.origins,
            [polhost::Origin::of_url(GCP_METADATA).unwrap()]
        );
        let mut grant = Grant::default();
        gcs_credentials(
            &mut grant,
            &serde_json::json!({"credentials": {"gcp_service_account": {"key_path": "/k.json"}}}),
        );
        assert_eq!(grant.files, [PathBuf::from("/k.json")]);
        assert_eq!(
            grant.origins,
            [polhost::Origin::of_url(GOOGLE_TOKEN_URL).unwrap()]
        );
        assert!(grant.env.is_empty());
    }
}
