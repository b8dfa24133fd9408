//! `polhost.fetchers`: fetcher plugins the operator adds or substitutes,
//! one entry per service type, and the grant each gets. Owns their parsing
//! and field-path errors; loading and checking the component against the
//! contract is the host's.
//!
//! A plugin's capabilities are exactly what its entry says (plus its
//! service's own URL): nothing here is inferred from the component.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::ConfigError;
use super::service::{self, BearerCredentials};
use super::tree::{self, Node};

/// One entry of `polhost.fetchers`.
#[derive(Debug, Clone, PartialEq)]
pub struct FetcherEntry {
    /// Its key: the service type it serves (lowercase).
    pub service_type: String,
    /// `component`: where the component comes from.
    pub component: ComponentLocation,
    /// `digest`: `sha256:<hex>` of the component's bytes (for `oci://`, the
    /// wasm layer's digest). Required for `oci://`; checked for a file when
    /// given.
    pub digest: Option<String>,
    /// `allowed_outbound_hosts`: origins (`scheme://host[:port]`) the
    /// fetcher may reach beyond its service's URL.
    pub allowed_outbound_hosts: Vec<String>,
    /// `env`: environment variables it may read through `granted-env`.
    pub env: Vec<String>,
    /// `files`: absolute paths it may read through `read-granted-file`.
    pub files: Vec<PathBuf>,
    /// `limits`: bounds of each fetch, where they differ from the host's.
    pub limits: FetcherLimits,
    /// `credentials.bearer`: how to authenticate to the component's
    /// registry (`oci://` only).
    pub registry_credentials: Option<BearerCredentials>,
    /// `insecure`: speak plain HTTP to a registry that is not on a loopback
    /// address (loopback registries always get plain HTTP, as Docker does).
    pub insecure: bool,
}

/// Where a plugin's component is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentLocation {
    /// A file. A relative path in a file loaded by [`crate::Config::load`]
    /// is relative to that file's directory.
    File(PathBuf),
    /// An OCI reference (`registry/repository[:tag][@sha256:...]`, written
    /// with `oci://` in the file).
    Oci(String),
}

/// `polhost.fetchers.<type>.limits`: each `None` keeps the host's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetcherLimits {
    /// `memory_mib`: the most linear memory an instance may grow to.
    pub memory_mib: Option<u64>,
    /// `timeout_seconds`: the wall-clock and CPU deadline of one fetch.
    pub timeout_seconds: Option<u64>,
    /// `max_requests`: HTTP requests per fetch.
    pub max_requests: Option<u32>,
}

/// The longest `timeout_seconds` accepted: a day. Longer is a typo, and
/// keeps every duration arithmetic far from overflow.
const MAX_TIMEOUT_SECONDS: u64 = 86_400;
/// The most `memory_mib` accepted: 4 GiB, the most a 32-bit memory holds.
const MAX_MEMORY_MIB: u64 = 4096;

const ENTRY_KEYS: &[&str] = &[
    "component",
    "digest",
    "allowed_outbound_hosts",
    "env",
    "files",
    "limits",
    "credentials",
    "insecure",
];

#[derive(Deserialize)]
#[serde(expecting = "a map")]
struct EntrySection {
    component: Option<String>,
    digest: Option<String>,
    allowed_outbound_hosts: Option<Vec<String>>,
    env: Option<Vec<String>>,
    files: Option<Vec<String>>,
    insecure: Option<bool>,
}

#[derive(Deserialize)]
#[serde(expecting = "a map", deny_unknown_fields)]
struct LimitsSection {
    memory_mib: Option<u64>,
    timeout_seconds: Option<u64>,
    max_requests: Option<u32>,
}

/// Reads `polhost.fetchers` (a map keyed by service type).
pub(crate) fn parse(
    node: Option<&Node>,
    ignored: &mut Vec<String>,
) -> Result<Vec<FetcherEntry>, ConfigError> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::new();
    for (service_type, value) in node.entries("polhost.fetchers")? {
        let path = tree::join("polhost.fetchers", service_type);
        if service_type.is_empty()
            || !service_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ConfigError::invalid(
                path,
                "a service type is letters, digits, '-' and '_'",
            ));
        }
        let service_type = service_type.to_lowercase();
        if entries
            .iter()
            .any(|e: &FetcherEntry| e.service_type == service_type)
        {
            return Err(ConfigError::invalid(
                path,
                format!("a second entry for service type {service_type:?}"),
            ));
        }
        entries.push(parse_entry(service_type, &path, value, ignored)?);
    }
    Ok(entries)
}

fn parse_entry(
    service_type: String,
    path: &str,
    node: &Node,
    ignored: &mut Vec<String>,
) -> Result<FetcherEntry, ConfigError> {
    tree::report_unknown_keys(node, path, ENTRY_KEYS, ignored)?;
    let section: EntrySection = tree::deserialize(node, path)?;
    let component_path = tree::join(path, "component");
    let component = match section.component.as_deref() {
        None | Some("") => {
            return Err(ConfigError::invalid(
                component_path,
                "required: a file path, or oci://<registry>/<repository>[:tag][@sha256:<hex>]",
            ));
        }
        Some(location) => match location.strip_prefix("oci://") {
            Some(reference) => {
                ComponentLocation::Oci(check_reference(reference).map_err(|why| {
                    ConfigError::invalid(&component_path, format!("invalid OCI reference: {why}"))
                })?)
            }
            None if location.contains("://") => {
                return Err(ConfigError::invalid(
                    component_path,
                    "a file path or an oci:// reference (no other scheme is supported)",
                ));
            }
            None => ComponentLocation::File(PathBuf::from(location)),
        },
    };
    let digest_path = tree::join(path, "digest");
    let digest = match section.digest {
        None => None,
        Some(digest) => {
            Some(check_digest(&digest).map_err(|why| ConfigError::invalid(&digest_path, why))?)
        }
    };
    if matches!(component, ComponentLocation::Oci(_)) && digest.is_none() {
        return Err(ConfigError::invalid(
            digest_path,
            "required for an oci:// component: the sha256 of its wasm layer, so that what runs is what you reviewed",
        ));
    }
    let hosts_path = tree::join(path, "allowed_outbound_hosts");
    let allowed_outbound_hosts = section.allowed_outbound_hosts.unwrap_or_default();
    for (i, host) in allowed_outbound_hosts.iter().enumerate() {
        check_origin(host).map_err(|why| ConfigError::invalid(tree::index(&hosts_path, i), why))?;
    }
    let env = section.env.unwrap_or_default();
    for (i, name) in env.iter().enumerate() {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(ConfigError::invalid(
                tree::index(&tree::join(path, "env"), i),
                "not an environment variable name",
            ));
        }
    }
    let mut files = Vec::new();
    for (i, file) in section.files.unwrap_or_default().into_iter().enumerate() {
        if !Path::new(&file).is_absolute() {
            return Err(ConfigError::invalid(
                tree::index(&tree::join(path, "files"), i),
                "must be an absolute path",
            ));
        }
        files.push(PathBuf::from(file));
    }
    let limits = match node.get("limits") {
        None => FetcherLimits::default(),
        Some(limits) => parse_limits(limits, &tree::join(path, "limits"))?,
    };
    let registry_credentials = match node.get("credentials") {
        None | Some(Node::Null) => None,
        Some(credentials) => {
            let credentials_path = tree::join(path, "credentials");
            let mut bearer = None;
            for (method, value) in credentials.entries(&credentials_path)? {
                let method_path = tree::join(&credentials_path, method);
                if method != "bearer" {
                    return Err(ConfigError::invalid(
                        method_path,
                        "a component's registry takes credentials.bearer only ({scheme: Basic, token: \"user:password\"} or a bearer token)",
                    ));
                }
                bearer = Some(service::parse_bearer(value, &method_path, ignored)?);
            }
            bearer
        }
    };
    if registry_credentials.is_some() && !matches!(component, ComponentLocation::Oci(_)) {
        return Err(ConfigError::invalid(
            tree::join(path, "credentials"),
            "only an oci:// component is pulled with credentials",
        ));
    }
    Ok(FetcherEntry {
        service_type,
        component,
        digest,
        allowed_outbound_hosts,
        env,
        files,
        limits,
        registry_credentials,
        insecure: section.insecure.unwrap_or(false),
    })
}

fn parse_limits(node: &Node, path: &str) -> Result<FetcherLimits, ConfigError> {
    let section: LimitsSection = tree::deserialize(node, path)?;
    let positive = |value: Option<u64>, name: &str, max: u64| match value {
        Some(0) => Err(ConfigError::invalid(tree::join(path, name), "must be > 0")),
        Some(v) if v > max => Err(ConfigError::invalid(
            tree::join(path, name),
            format!("must be at most {max}"),
        )),
        v => Ok(v),
    };
    Ok(FetcherLimits {
        memory_mib: positive(section.memory_mib, "memory_mib", MAX_MEMORY_MIB)?,
        timeout_seconds: positive(
            section.timeout_seconds,
            "timeout_seconds",
            MAX_TIMEOUT_SECONDS,
        )?,
        max_requests: positive(
            section.max_requests.map(u64::from),
            "max_requests",
            u64::from(u32::MAX),
        )?
        .map(|n| n as u32),
    })
}

/// `sha256:<64 lowercase hex>`, lowercased.
fn check_digest(digest: &str) -> Result<String, &'static str> {
    let digest = digest.to_ascii_lowercase();
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(digest),
        _ => Err("must be sha256:<64 hex digits>"),
    }
}

/// `registry/repository[:tag][@sha256:<hex>]`: a registry host and a
/// repository at least; a digest, when given, well formed.
fn check_reference(reference: &str) -> Result<String, &'static str> {
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("contains whitespace or control characters");
    }
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        check_digest(digest).map_err(|_| "the @ digest must be sha256:<64 hex digits>")?;
    }
    let Some((registry, repository)) = name.split_once('/') else {
        return Err("expected <registry>/<repository>[:tag][@sha256:<hex>]");
    };
    if registry.is_empty() || repository.is_empty() || repository.starts_with(':') {
        return Err("expected <registry>/<repository>[:tag][@sha256:<hex>]");
    }
    Ok(reference.to_string())
}

/// `scheme://host[:port]` with an http(s) scheme and nothing after.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err("an origin is scheme://host[:port] (no scheme found)");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("an origin's scheme must be http or https");
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ', '*']) {
        return Err("an origin is scheme://host[:port], with no path, user, query or wildcard");
    }
    service::check_url(origin).map(|_| ())
}

/// Rebases relative component files onto `dir` (the config file's
/// directory).
pub(crate) fn rebase(entries: &mut [FetcherEntry], dir: &Path) {
    for entry in entries {
        if let ComponentLocation::File(path) = &mut entry.component
            && path.is_relative()
        {
            *path = dir.join(&*path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{error, parse};

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_full_entry_is_read() {
        let config = parse(&format!(
            "polhost:
  fetchers:
    etcd:
      component: ./fetchers/etcd.wasm
      digest: sha256:{HEX}
      allowed_outbound_hosts: [https://auth.example.com, 'http://127.0.0.1:2379']
      env: [ETCD_TOKEN]
      files: [/run/secrets/etcd-token]
      limits: {{memory_mib: 64, timeout_seconds: 600, max_requests: 32}}
"
        ));
        assert_eq!(
            config.fetchers,
            [FetcherEntry {
                service_type: "etcd".into(),
                component: ComponentLocation::File("./fetchers/etcd.wasm".into()),
                digest: Some(format!("sha256:{HEX}")),
                allowed_outbound_hosts: vec![
                    "https://auth.example.com".into(),
                    "http://127.0.0.1:2379".into()
                ],
                env: vec!["ETCD_TOKEN".into()],
                files: vec!["/run/secrets/etcd-token".into()],
                limits: FetcherLimits {
                    memory_mib: Some(64),
                    timeout_seconds: Some(600),
                    max_requests: Some(32)
                },
                registry_credentials: None,
                insecure: false,
            }]
        );
        assert!(config.ignored_keys.is_empty(), "{:?}", config.ignored_keys);
    }

    #[test]
    fn an_oci_component_needs_a_digest() {
        assert_eq!(
            error(
                "polhost:\n  fetchers:\n    etcd:\n      component: oci://127.0.0.1:5000/f/etcd:1\n"
            ),
            "polhost.fetchers.etcd.digest: required for an oci:// component: the sha256 of its wasm layer, so that what runs is what you reviewed"
        );
        let config = parse(&format!(
            "polhost:\n  fetchers:\n    etcd:\n      component: oci://127.0.0.1:5000/f/etcd:1@sha256:{HEX}\n      digest: sha256:{HEX}\n      credentials:\n        bearer: {{scheme: Basic, token: 'u:p'}}\n"
        ));
        assert_eq!(
            config.fetchers[0].component,
            ComponentLocation::Oci(format!("127.0.0.1:5000/f/etcd:1@sha256:{HEX}"))
        );
        assert!(config.fetchers[0].registry_credentials.is_some());
        assert!(!format!("{config:?}").contains("u:p"));
    }

    #[test]
    fn each_malformed_field_is_named() {
        for (entry, expected) in [
            (
                "{component: ''}",
                "polhost.fetchers.x.component: required: a file path, or oci://<registry>/<repository>[:tag][@sha256:<hex>]",
            ),
            (
                "{component: 'https://example.com/x.wasm'}",
                "polhost.fetchers.x.component: a file path or an oci:// reference (no other scheme is supported)",
            ),
            (
                "{component: 'oci://registry-only'}",
                "polhost.fetchers.x.component: invalid OCI reference: expected <registry>/<repository>[:tag][@sha256:<hex>]",
            ),
            (
                "{component: x.wasm, digest: 'md5:abc'}",
                "polhost.fetchers.x.digest: must be sha256:<64 hex digits>",
            ),
            (
                "{component: x.wasm, allowed_outbound_hosts: ['https://a.example/path']}",
                "polhost.fetchers.x.allowed_outbound_hosts[0]: an origin is scheme://host[:port], with no path, user, query or wildcard",
            ),
            (
                "{component: x.wasm, allowed_outbound_hosts: ['a.example']}",
                "polhost.fetchers.x.allowed_outbound_hosts[0]: an origin is scheme://host[:port] (no scheme found)",
            ),
            (
                "{component: x.wasm, allowed_outbound_hosts: ['ftp://a.example']}",
                "polhost.fetchers.x.allowed_outbound_hosts[0]: an origin's scheme must be http or https",
            ),
            (
                "{component: x.wasm, allowed_outbound_hosts: ['http://a.example:99999']}",
                "polhost.fetchers.x.allowed_outbound_hosts[0]: invalid port",
            ),
            (
                "{component: x.wasm, env: ['A=B']}",
                "polhost.fetchers.x.env[0]: not an environment variable name",
            ),
            (
                "{component: x.wasm, files: [relative/token]}",
                "polhost.fetchers.x.files[0]: must be an absolute path",
            ),
            (
                "{component: x.wasm, limits: {memory_mib: 0}}",
                "polhost.fetchers.x.limits.memory_mib: must be > 0",
            ),
            (
                "{component: x.wasm, limits: {timeout_seconds: 18446744073709552}}",
                "polhost.fetchers.x.limits.timeout_seconds: must be at most 86400",
            ),
            (
                "{component: x.wasm, credentials: {bearer: {token: t}}}",
                "polhost.fetchers.x.credentials: only an oci:// component is pulled with credentials",
            ),
        ] {
            assert_eq!(
                error(&format!("polhost:\n  fetchers:\n    x: {entry}\n")),
                expected,
                "{entry}"
            );
        }
        assert_eq!(
            error("polhost:\n  fetchers:\n    'a b': {component: x.wasm}\n"),
            "polhost.fetchers.a b: a service type is letters, digits, '-' and '_'"
        );
    }

    #[test]
    fn load_resolves_a_relative_component_against_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "polhost:\n  fetchers:\n    etcd: {component: fetchers/etcd.wasm}\n    abs: {component: /opt/abs.wasm}\n",
        )
        .unwrap();
        let config = crate::Config::load(&path, &|_| None).unwrap();
        assert_eq!(
            config.fetchers[0].component,
            ComponentLocation::File(dir.path().join("fetchers/etcd.wasm"))
        );
        assert_eq!(
            config.fetchers[1].component,
            ComponentLocation::File("/opt/abs.wasm".into())
        );
    }
}
