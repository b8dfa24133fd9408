//! The `services` section: where bundles come from and with which
//! credentials. Owns their validation; it never puts a credential's value in
//! an error or a `Debug`.

use super::error::ConfigError;
use super::tree::{self, Node};
use polhost_bundle::Secret;
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// One entry of `services`.
#[derive(Clone, PartialEq)]
pub struct Service {
    /// Its key in `services`, or its `name` when `services` is a list.
    pub name: String,
    /// The base URL: absolute `http://` or `https://`, trailing `/` trimmed.
    pub url: String,
    /// `type`, lowercased, when given. Which fetcher serves the service
    /// when it is absent (OPA infers it from the credential method) is
    /// decided by the fetcher registry, not here: the configuration knows
    /// no backend.
    pub service_type: Option<String>,
    /// `headers`, in file order: sent with every request to the service.
    pub headers: Vec<(String, String)>,
    /// `response_header_timeout_seconds` (default 10, never 0).
    pub response_header_timeout_seconds: u64,
    /// `allow_insecure_tls` (default false): the server's certificate is
    /// not verified.
    pub allow_insecure_tls: bool,
    /// `tls`: the roots the server's certificate is verified against.
    pub tls: TlsSettings,
    /// The credential method.
    pub credentials: Credentials,
    /// The service's whole subtree as it appeared in the file after ${ENV}
    /// substitution (including `name` when services is a map: insert it).
    /// This is handed to the sandboxed fetcher of this service, and only to
    /// it.
    pub raw: serde_json::Value,
}

impl fmt::Debug for Service {
    /// Header values and `raw` may hold credentials: they are not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, _)| (name.as_str(), "***"))
            .collect();
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("service_type", &self.service_type)
            .field("headers", &headers)
            .field(
                "response_header_timeout_seconds",
                &self.response_header_timeout_seconds,
            )
            .field("allow_insecure_tls", &self.allow_insecure_tls)
            .field("tls", &self.tls)
            .field("credentials", &self.credentials)
            .field("raw", &format_args!("<not shown: may hold credentials>"))
            .finish()
    }
}

/// A service's credential method (at most one per service).
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// No `credentials`.
    None,
    /// `credentials.bearer`.
    Bearer(BearerCredentials),
    /// `credentials.client_tls`: mutual TLS, done by the host (the key
    /// never reaches a fetcher, which sees no credentials).
    ClientTls(ClientTls),
    /// Any other method (s3_signing, gcp_metadata, a plugin's own, ...):
    /// its key name. Its settings are the fetcher's (it gets them in
    /// `raw`); whether the fetcher accepts the method is for its
    /// descriptor to say.
    Other(String),
}

/// `credentials.bearer`: exactly one of `token` and `token_path`.
#[derive(Debug, Clone, PartialEq)]
pub struct BearerCredentials {
    /// The token itself.
    pub token: Option<Secret>,
    /// A file holding the token, read again for every request.
    pub token_path: Option<PathBuf>,
    /// The `Authorization` scheme (default `Bearer`).
    pub scheme: String,
}

/// `services[_].tls`, as OPA reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `ca_cert`: a PEM file of CA certificates trusted for this service,
    /// besides the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// `system_ca_required`: OPA fails when it cannot load the system's
    /// roots; so does polhost.
    pub system_ca_required: bool,
}

/// `credentials.client_tls`: a client certificate and its key, PEM files.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTls {
    /// `cert`: the certificate chain.
    pub cert: PathBuf,
    /// `private_key`: the key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// `private_key_passphrase`: the key is encrypted with it.
    pub private_key_passphrase: Option<Secret>,
}

/// The keys of a service polhost reads; any other is reported as ignored.
const SERVICE_KEYS: &[&str] = &[
    "name",
    "url",
    "type",
    "headers",
    "credentials",
    "response_header_timeout_seconds",
    "allow_insecure_tls",
    "tls",
];

const TLS_KEYS: &[&str] = &["ca_cert", "system_ca_required"];
const CLIENT_TLS_KEYS: &[&str] = &["cert", "private_key", "private_key_passphrase"];

const BEARER_KEYS: &[&str] = &["token", "token_path", "scheme"];

const DEFAULT_RESPONSE_HEADER_TIMEOUT_SECONDS: u64 = 10;
const MAX_RESPONSE_HEADER_TIMEOUT_SECONDS: u64 = 86_400;

/// Headers the HTTP layer sets itself and refuses from a fetcher
/// (wasmtime-wasi-http's forbidden list): configured on a service, every
/// fetch would fail, so they are refused at start.
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "http2-settings",
];

/// The fields read through serde (none of them a credential).
#[derive(Deserialize)]
#[serde(expecting = "a map")]
struct ServiceSection {
    name: Option<String>,
    url: Option<String>,
    #[serde(rename = "type")]
    service_type: Option<String>,
    response_header_timeout_seconds: Option<u64>,
    allow_insecure_tls: Option<bool>,
}

/// `tls` (no credential in it).
#[derive(Deserialize)]
#[serde(expecting = "a map")]
struct TlsSection {
    ca_cert: Option<PathBuf>,
    system_ca_required: Option<bool>,
}

/// Reads `services`: a list of entries with `name`, or a map keyed by name.
pub(crate) fn parse_services(
    node: Option<&Node>,
    ignored: &mut Vec<String>,
) -> Result<Vec<Service>, ConfigError> {
    let mut services: Vec<Service> = Vec::new();
    let mut paths: Vec<String> = Vec::new();
    match node {
        None | Some(Node::Null) => {}
        Some(Node::Map(entries)) => {
            for (name, value) in entries {
                let path = tree::join("services", name);
                if name.is_empty() {
                    return Err(ConfigError::invalid(path, "service name must not be empty"));
                }
                let section: ServiceSection = tree::deserialize(value, &path)?;
                services.push(parse_service(name, &path, value, section, ignored)?);
            }
        }
        Some(Node::List(items)) => {
            for (i, value) in items.iter().enumerate() {
                let path = tree::index("services", i);
                let section: ServiceSection = tree::deserialize(value, &path)?;
                let name_path = tree::join(&path, "name");
                let name = match section.name.as_deref() {
                    None => return Err(ConfigError::invalid(name_path, "required")),
                    Some("") => return Err(ConfigError::invalid(name_path, "must not be empty")),
                    Some(name) => name.to_string(),
                };
                if let Some(first) = services.iter().position(|s| s.name == name) {
                    return Err(ConfigError::invalid(
                        name_path,
                        format!("duplicate service name {name:?} (also at {})", paths[first]),
                    ));
                }
                services.push(parse_service(&name, &path, value, section, ignored)?);
                paths.push(path);
            }
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                "services",
                format!("invalid type: {}, expected a list or a map", other.kind()),
            ));
        }
    }
    Ok(services)
}

fn parse_service(
    name: &str,
    path: &str,
    node: &Node,
    section: ServiceSection,
    ignored: &mut Vec<String>,
) -> Result<Service, ConfigError> {
    tree::report_unknown_keys(node, path, SERVICE_KEYS, ignored)?;

    let url_path = tree::join(path, "url");
    let url = match section.url.as_deref() {
        None | Some("") => return Err(ConfigError::invalid(url_path, "required")),
        Some(url) => check_url(url).map_err(|why| {
            ConfigError::invalid(
                &url_path,
                format!("must be an absolute http:// or https:// URL: {why}"),
            )
        })?,
    };

    let tls = match node.get("tls") {
        None | Some(Node::Null) => TlsSettings::default(),
        Some(tls) => {
            let tls_path = tree::join(path, "tls");
            tree::report_unknown_keys(tls, &tls_path, TLS_KEYS, ignored)?;
            let section: TlsSection = tree::deserialize(tls, &tls_path)?;
            TlsSettings {
                ca_cert: section.ca_cert.filter(|p| !p.as_os_str().is_empty()),
                system_ca_required: section.system_ca_required.unwrap_or(false),
            }
        }
    };

    let headers = parse_headers(node.get("headers"), &tree::join(path, "headers"))?;
    let credentials = parse_credentials(
        node.get("credentials"),
        &tree::join(path, "credentials"),
        ignored,
    )?;

    let response_header_timeout_seconds = match section.response_header_timeout_seconds {
        None => DEFAULT_RESPONSE_HEADER_TIMEOUT_SECONDS,
        Some(0) => {
            return Err(ConfigError::invalid(
                tree::join(path, "response_header_timeout_seconds"),
                "must be > 0",
            ));
        }
        Some(seconds) if seconds > MAX_RESPONSE_HEADER_TIMEOUT_SECONDS => {
            // Larger values are typos, and past ~2^64 ns they wrap inside
            // timers: a day is refused with a message rather than becoming
            // a fraction of a second somewhere downstream.
            return Err(ConfigError::invalid(
                tree::join(path, "response_header_timeout_seconds"),
                format!("must be at most {MAX_RESPONSE_HEADER_TIMEOUT_SECONDS} (a day)"),
            ));
        }
        Some(seconds) => seconds,
    };

    let service_type = section
        .service_type
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase());

    // The fetcher gets the subtree as written, with the name it is known by.
    let mut raw = node.to_json();
    if let serde_json::Value::Null = raw {
        raw = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(map) = &mut raw {
        map.insert(
            "name".to_string(),
            serde_json::Value::String(name.to_string()),
        );
        // The host does TLS: a client key's passphrase (and where the keys
        // are) is not the fetcher's to see.
        if let Credentials::ClientTls(_) = credentials {
            map.remove("credentials");
        }
    }

    Ok(Service {
        name: name.to_string(),
        url,
        service_type,
        headers,
        response_header_timeout_seconds,
        allow_insecure_tls: section.allow_insecure_tls.unwrap_or(false),
        tls,
        credentials,
        raw,
    })
}

/// Checks an absolute http(s) URL by hand and returns it without trailing
/// `/`; the error says why, without repeating the URL (it may hold a key).
pub(crate) fn check_url(url: &str) -> Result<String, &'static str> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("no scheme");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("the scheme must be http or https");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("user info is not allowed (use credentials)");
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err("unclosed '[' in the host");
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("unexpected text after the IPv6 host"),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    if let Some(port) = port
        && (port.is_empty()
            || port.parse::<u16>().is_err()
            || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("invalid port");
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Reads `headers`: a map of header name to string value, in file order.
/// Messages never show a value (it may be an `Authorization`).
fn parse_headers(node: Option<&Node>, path: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    let mut headers = Vec::new();
    for (name, value) in node.entries(path)? {
        let header_path = tree::join(path, name);
        if !is_token(name) {
            return Err(ConfigError::invalid(
                header_path,
                "not a valid HTTP header name",
            ));
        }
        if FORBIDDEN_HEADERS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(name))
        {
            return Err(ConfigError::invalid(
                header_path,
                "the HTTP layer sets this header itself: it cannot be configured",
            ));
        }
        let value = match value {
            Node::String(s) => s.clone(),
            other => {
                return Err(ConfigError::invalid(
                    header_path,
                    format!("invalid type: {}, expected a string", other.kind()),
                ));
            }
        };
        if value.contains(['\r', '\n', '\0']) {
            return Err(ConfigError::invalid(
                header_path,
                "a header value must not contain CR, LF or NUL",
            ));
        }
        headers.push((name.clone(), value));
    }
    Ok(headers)
}

/// Reads `credentials`: at most one method, of any name. Only `bearer` is
/// read here (the host grants its `token_path`); the others are the
/// fetcher's (it gets them in `raw`).
fn parse_credentials(
    node: Option<&Node>,
    path: &str,
    ignored: &mut Vec<String>,
) -> Result<Credentials, ConfigError> {
    let Some(node) = node else {
        return Ok(Credentials::None);
    };
    let entries = node.entries(path)?;
    let (method, value) = match entries {
        [] => return Ok(Credentials::None),
        [(method, value)] => (method, value),
        _ => {
            let methods: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
            return Err(ConfigError::invalid(
                path,
                format!(
                    "a maximum of one credential method may be specified, found {}: {}",
                    methods.len(),
                    methods.join(", ")
                ),
            ));
        }
    };
    let method_path = tree::join(path, method);
    if method == "bearer" {
        return parse_bearer(value, &method_path, ignored).map(Credentials::Bearer);
    }
    if method == "client_tls" {
        return parse_client_tls(value, &method_path, ignored).map(Credentials::ClientTls);
    }
    Ok(Credentials::Other(method.clone()))
}

/// The string at `key` of `node` (at `path`), if any; a type error names
/// the field without quoting the value.
fn str_field<'n>(node: &'n Node, path: &str, key: &str) -> Result<Option<&'n str>, ConfigError> {
    match node.get(key) {
        Some(value) => value.opt_str(&tree::join(path, key)),
        None => Ok(None),
    }
}

/// Reads `credentials.client_tls` by hand: a serde type error would quote
/// the passphrase.
fn parse_client_tls(
    node: &Node,
    path: &str,
    ignored: &mut Vec<String>,
) -> Result<ClientTls, ConfigError> {
    tree::report_unknown_keys(node, path, CLIENT_TLS_KEYS, ignored)?;
    let field = |key: &str| -> Result<Option<&str>, ConfigError> {
        Ok(str_field(node, path, key)?.filter(|v| !v.is_empty()))
    };
    let required = |key: &str| -> Result<PathBuf, ConfigError> {
        field(key)?
            .map(PathBuf::from)
            .ok_or_else(|| ConfigError::invalid(tree::join(path, key), "required"))
    };
    Ok(ClientTls {
        cert: required("cert")?,
        private_key: required("private_key")?,
        private_key_passphrase: field("private_key_passphrase")?
            .map(|p| Secret::new(p.to_string())),
    })
}

/// Reads `credentials.bearer` by hand: a serde type error would quote the
/// token.
pub(crate) fn parse_bearer(
    node: &Node,
    path: &str,
    ignored: &mut Vec<String>,
) -> Result<BearerCredentials, ConfigError> {
    tree::report_unknown_keys(node, path, BEARER_KEYS, ignored)?;
    let field = |key: &str| str_field(node, path, key);
    let token = field("token")?;
    let token_path = field("token_path")?;
    let scheme = field("scheme")?;

    match (token, token_path) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                path,
                "token and token_path are mutually exclusive: set only one",
            ));
        }
        (None, None) => {
            return Err(ConfigError::invalid(
                path,
                "one of token or token_path is required",
            ));
        }
        (Some(""), None) => {
            return Err(ConfigError::invalid(
                tree::join(path, "token"),
                "must not be empty",
            ));
        }
        (None, Some("")) => {
            return Err(ConfigError::invalid(
                tree::join(path, "token_path"),
                "must not be empty",
            ));
        }
        (Some(token), None) if token.contains(['\r', '\n', '\0']) => {
            return Err(ConfigError::invalid(
                tree::join(path, "token"),
                "must not contain CR, LF or NUL",
            ));
        }
        _ => {}
    }
    let scheme = match scheme {
        None | Some("") => "Bearer".to_string(),
        Some(scheme) if is_token(scheme) => scheme.to_string(),
        Some(_) => {
            return Err(ConfigError::invalid(
                tree::join(path, "scheme"),
                "must be a single word (an HTTP authentication scheme such as Bearer)",
            ));
        }
    };
    Ok(BearerCredentials {
        token: token.map(|t| Secret::new(t.to_string())),
        token_path: token_path.map(PathBuf::from),
        scheme,
    })
}

/// An HTTP token (RFC 9110 `tchar`s): header names, auth schemes.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::Credentials;
    use crate::tests::{error, parse};

    /// A config with one service `a` whose body is `body` (indented 4).
    fn with_service(body: &str) -> String {
        format!("services:\n  a:\n{body}")
    }

    #[test]
    fn missing_url_is_required() {
        assert_eq!(
            error(&with_service("    type: http\n")),
            "services.a.url: required"
        );
        assert_eq!(error("services:\n  a:\n"), "services.a.url: required");
    }

    #[test]
    fn empty_url_is_required() {
        assert_eq!(
            error(&with_service("    url: ''\n")),
            "services.a.url: required"
        );
    }

    #[test]
    fn url_with_other_scheme_is_rejected() {
        assert_eq!(
            error(&with_service("    url: ftp://example.com\n")),
            "services.a.url: must be an absolute http:// or https:// URL: the scheme must be http or https"
        );
    }

    #[test]
    fn relative_url_is_rejected() {
        assert_eq!(
            error(&with_service("    url: example.com/bundles\n")),
            "services.a.url: must be an absolute http:// or https:// URL: no scheme"
        );
    }

    #[test]
    fn url_without_host_is_rejected() {
        for url in ["https://", "https:///path", "http://:8080/x"] {
            assert_eq!(
                error(&with_service(&format!("    url: '{url}'\n"))),
                "services.a.url: must be an absolute http:// or https:// URL: no host",
                "{url}"
            );
        }
    }

    #[test]
    fn url_with_user_info_is_rejected_without_showing_it() {
        let message = error(&with_service("    url: https://user:pa55@example.com\n"));
        assert_eq!(
            message,
            "services.a.url: must be an absolute http:// or https:// URL: user info is not allowed (use credentials)"
        );
    }

    #[test]
    fn url_with_bad_port_is_rejected() {
        assert_eq!(
            error(&with_service("    url: https://example.com:http/\n")),
            "services.a.url: must be an absolute http:// or https:// URL: invalid port"
        );
    }

    #[test]
    fn url_forms_that_are_accepted() {
        for (url, expected) in [
            ("HTTPS://Example.com/", "HTTPS://Example.com"),
            ("http://127.0.0.1:8181", "http://127.0.0.1:8181"),
            ("http://[::1]:8181/v1//", "http://[::1]:8181/v1"),
            ("https://example.com/v1?x=1", "https://example.com/v1?x=1"),
        ] {
            let config = parse(&with_service(&format!("    url: '{url}'\n")));
            assert_eq!(config.services[0].url, expected);
        }
    }

    #[test]
    fn list_entry_without_name_names_its_index() {
        assert_eq!(
            error(
                "services:\n  - name: a\n    url: https://a.example\n  - url: https://b.example\n"
            ),
            "services[1].name: required"
        );
    }

    #[test]
    fn list_entry_with_empty_name_is_rejected() {
        assert_eq!(
            error("services:\n  - name: ''\n    url: https://a.example\n"),
            "services[0].name: must not be empty"
        );
    }

    #[test]
    fn list_entry_with_non_string_name_names_field() {
        assert_eq!(
            error("services:\n  - name: [a]\n    url: https://a.example\n"),
            "services[0].name: invalid type: sequence, expected a string"
        );
    }

    #[test]
    fn duplicate_service_names_are_rejected() {
        assert_eq!(
            error(
                "services:\n  - {name: a, url: 'https://a.example'}\n  - {name: a, url: 'https://b.example'}\n"
            ),
            "services[1].name: duplicate service name \"a\" (also at services[0])"
        );
    }

    #[test]
    fn empty_service_key_is_rejected() {
        assert_eq!(
            error("services:\n  '': {url: 'https://a.example'}\n"),
            "services.\"\": service name must not be empty"
        );
    }

    #[test]
    fn services_of_wrong_type_is_rejected() {
        assert_eq!(
            error("services: https://a.example\n"),
            "services: invalid type: a string, expected a list or a map"
        );
    }

    #[test]
    fn service_that_is_not_a_map_names_it() {
        assert_eq!(
            error("services:\n  a: https://a.example\n"),
            "services.a: invalid type: a string, expected a map"
        );
        assert_eq!(
            error("services:\n  - https://a.example\n"),
            "services[0]: invalid type: a string, expected a map"
        );
    }

    #[test]
    fn list_entry_errors_use_the_index_path() {
        assert_eq!(
            error(
                "services:\n  - name: a\n    url: https://a.example\n    response_header_timeout_seconds: 0\n"
            ),
            "services[0].response_header_timeout_seconds: must be > 0"
        );
    }

    #[test]
    fn zero_response_header_timeout_is_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    response_header_timeout_seconds: 0\n"
            )),
            "services.a.response_header_timeout_seconds: must be > 0"
        );
    }

    #[test]
    fn negative_response_header_timeout_names_field() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    response_header_timeout_seconds: -5\n"
            )),
            "services.a.response_header_timeout_seconds: invalid value: integer `-5`, expected u64"
        );
    }

    #[test]
    fn string_allow_insecure_tls_names_field() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    allow_insecure_tls: 'yes'\n"
            )),
            "services.a.allow_insecure_tls: invalid type: string \"yes\", expected a boolean"
        );
    }

    #[test]
    fn headers_that_are_not_a_map_are_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    headers: [a]\n"
            )),
            "services.a.headers: invalid type: a list, expected a map"
        );
    }

    #[test]
    fn non_string_header_value_names_header_without_value() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    headers: {X-Api-Key: 987654}\n"
            )),
            "services.a.headers.X-Api-Key: invalid type: a number, expected a string"
        );
    }

    #[test]
    fn invalid_header_name_is_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    headers: {'X Key': v}\n"
            )),
            "services.a.headers.X Key: not a valid HTTP header name"
        );
    }

    #[test]
    fn forbidden_service_headers_are_refused_at_start_naming_the_header() {
        // Issue 10, item 11: accepted at start, then every fetch failed with
        // an error that named neither the header nor the field.
        for name in [
            "Host",
            "Connection",
            "transfer-encoding",
            "Upgrade",
            "Proxy-Authorization",
        ] {
            assert_eq!(
                error(&with_service(&format!(
                    "    url: https://a.example\n    headers: {{{name}: x}}\n"
                ))),
                format!(
                    "services.a.headers.{name}: the HTTP layer sets this header itself: it cannot be configured"
                )
            );
        }
    }

    #[test]
    fn a_response_header_timeout_that_would_wrap_is_refused() {
        // Issue 10, item 10: 18446744073709552 s wrapped inside the fetcher
        // into a 0.38 s timeout.
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    response_header_timeout_seconds: 18446744073709552\n"
            )),
            "services.a.response_header_timeout_seconds: must be at most 86400 (a day)"
        );
        let config = parse(&with_service(
            "    url: https://a.example\n    response_header_timeout_seconds: 86400\n",
        ));
        assert_eq!(config.services[0].response_header_timeout_seconds, 86_400);
    }

    #[test]
    fn header_value_with_line_break_is_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    headers: {X-Key: \"a\\r\\nEvil: 1\"}\n"
            )),
            "services.a.headers.X-Key: a header value must not contain CR, LF or NUL"
        );
    }

    #[test]
    fn two_credential_methods_are_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    credentials:\n      bearer: {token: t}\n      oauth2: {token_url: 'https://t'}\n"
            )),
            "services.a.credentials: a maximum of one credential method may be specified, found 2: bearer, oauth2"
        );
    }

    #[test]
    fn any_credential_method_is_accepted_here() {
        // A plugin's own method: whether its fetcher accepts it is the
        // fetcher registry's question, not the configuration's.
        let config = parse(&with_service(
            "    url: https://a.example\n    type: etcd\n    credentials:\n      etcd_token: {}\n",
        ));
        assert_eq!(
            config.services[0].credentials,
            Credentials::Other("etcd_token".to_string())
        );
        assert!(config.ignored_keys.is_empty(), "{:?}", config.ignored_keys);
    }

    #[test]
    fn credentials_that_are_not_a_map_are_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    credentials: bearer\n"
            )),
            "services.a.credentials: invalid type: a string, expected a map"
        );
    }

    #[test]
    fn a_method_of_any_shape_is_the_fetchers_to_judge() {
        // OPA's `credentials.plugin` is a string: the registry refuses it
        // with its own message, the configuration only records it.
        let config = parse(&with_service(
            "    url: https://a.example\n    credentials:\n      plugin: my_go_plugin\n",
        ));
        assert_eq!(
            config.services[0].credentials,
            Credentials::Other("plugin".to_string())
        );
    }

    #[test]
    fn bearer_with_token_and_token_path_is_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    credentials:\n      bearer: {token: t, token_path: /t}\n"
            )),
            "services.a.credentials.bearer: token and token_path are mutually exclusive: set only one"
        );
    }

    #[test]
    fn bearer_without_token_or_token_path_is_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    credentials:\n      bearer: {scheme: Bearer}\n"
            )),
            "services.a.credentials.bearer: one of token or token_path is required"
        );
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    credentials:\n      bearer:\n"
            )),
            "services.a.credentials.bearer: one of token or token_path is required"
        );
    }

    #[test]
    fn empty_token_path_is_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    credentials:\n      bearer: {token_path: ''}\n"
            )),
            "services.a.credentials.bearer.token_path: must not be empty"
        );
    }

    #[test]
    fn empty_token_from_undefined_variable_is_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    credentials:\n      bearer: {token: '${UNDEFINED}'}\n"
            )),
            "services.a.credentials.bearer.token: must not be empty"
        );
    }

    #[test]
    fn token_of_wrong_type_is_rejected_without_showing_it() {
        let message = error(&with_service(
            "    url: https://a.example\n    credentials:\n      bearer: {token: 8675309}\n",
        ));
        assert_eq!(
            message,
            "services.a.credentials.bearer.token: invalid type: a number, expected a string"
        );
    }

    #[test]
    fn token_with_line_break_is_rejected_without_showing_it() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    credentials:\n      bearer:\n        token: |\n          s3cr3t\n"
            )),
            "services.a.credentials.bearer.token: must not contain CR, LF or NUL"
        );
    }

    #[test]
    fn scheme_with_space_is_rejected() {
        assert_eq!(
            error(&with_service(
                "    url: https://a.example\n    credentials:\n      bearer: {token: t, scheme: 'Bearer x'}\n"
            )),
            "services.a.credentials.bearer.scheme: must be a single word (an HTTP authentication scheme such as Bearer)"
        );
    }

    #[test]
    fn type_is_only_what_the_file_declares() {
        let config = parse(&with_service(
            "    url: https://a.example\n    credentials:\n      s3_signing: {}\n",
        ));
        assert_eq!(config.services[0].service_type, None);
        assert_eq!(
            config.services[0].credentials,
            Credentials::Other("s3_signing".to_string())
        );
    }

    #[test]
    fn explicit_type_wins_and_is_lowercased() {
        let config = parse(&with_service(
            "    url: https://a.example\n    type: OCI\n    credentials:\n      s3_signing: {}\n",
        ));
        assert_eq!(config.services[0].service_type.as_deref(), Some("oci"));
    }

    #[test]
    fn other_credential_methods_are_not_ignored_keys() {
        let config = parse(&with_service(
            "    url: https://a.example\n    credentials:\n      oauth2: {token_url: 'https://t', client_secret: x}\n",
        ));
        assert!(config.ignored_keys.is_empty(), "{:?}", config.ignored_keys);
    }

    #[test]
    fn raw_is_the_substituted_subtree_with_name_and_nothing_else() {
        let config = parse(
            "services:\n  a:\n    url: https://${HOST}\n    tls: {ca_cert: /ca.pem}\n  b:\n    url: https://b.example\n",
        );
        assert_eq!(
            config.services[0].raw,
            serde_json::json!({"name": "a", "url": "https://example.com", "tls": {"ca_cert": "/ca.pem"}})
        );
        assert_eq!(
            config.services[1].raw,
            serde_json::json!({"name": "b", "url": "https://b.example"})
        );
    }

    #[test]
    fn map_key_wins_over_a_name_field() {
        let config = parse("services:\n  a:\n    name: other\n    url: https://a.example\n");
        assert_eq!(config.services[0].name, "a");
        assert_eq!(config.services[0].raw["name"], "a");
    }

    /// Issue 10, item 5, for every field that holds a secret: a value of the
    /// wrong kind is named by its kind, never shown. The credential methods
    /// the host does not read (s3_signing's keys, oauth2's client_secret,
    /// ...) give no error here at all: they reach the fetcher unread.
    #[test]
    fn secret_fields_never_echo_a_wrongly_typed_value() {
        let fields = [
            "services: {s: {url: 'https://a.example', credentials: {bearer: {token: VALUE}}}}",
            "services: {s: {url: 'https://a.example', headers: {Authorization: VALUE}}}",
            "keys: {k: {key: VALUE}}",
            "polhost: {fetchers: {x: {component: 'oci://r.example/f:1', digest: 'sha256:0000000000000000000000000000000000000000000000000000000000000000', credentials: {bearer: {token: VALUE}}}}}",
            "services: {s: {url: 'https://a.example', credentials: {s3_signing: {static: {secret_access_key: VALUE}}}}}",
            "services: {s: {url: 'https://a.example', credentials: {oauth2: {client_secret: VALUE}}}}",
        ];
        for field in fields {
            for value in ["12345678", "1234.5678", "[12345678]", "{x: 12345678}"] {
                let text = format!("{}\n", field.replace("VALUE", value));
                if let Err(e) = crate::Config::parse(&text, &crate::tests::test_env) {
                    let message = e.to_string();
                    assert!(!message.contains("1234"), "{text}: {message}");
                    assert!(message.contains("invalid type: a "), "{text}: {message}");
                }
            }
        }
    }
}
