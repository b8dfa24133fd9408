//! The `bundles` section: what to download, from which service, how often.
//! Owns its validation; it does not check that a bundle exists remotely.

use super::bundle_directory;
use super::error::ConfigError;
use super::keys;
use super::service::Service;
use super::tree::{self, Node};
use polhost_bundle::{Key, Signing};
use serde::Deserialize;
use std::time::Duration;

/// One entry of `bundles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Its key in `bundles`: also its directory name under
    /// `<persistence_directory>/bundles/`.
    pub name: String,
    /// The service it is fetched from (default: the first service).
    pub service: String,
    /// What to fetch from the service (default `bundles/<name>`); a leading
    /// `/` is kept as given.
    pub resource: String,
    /// Whether to keep the last activated bundle on disk (default false).
    pub persist: bool,
    /// When to ask again.
    pub polling: Polling,
    /// The largest bundle accepted, in bytes (default 1 GiB, never 0).
    pub size_limit_bytes: u64,
    /// `signing`, when set.
    pub signing: Option<Signing>,
}

/// `bundles.<name>.polling`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polling {
    /// `min_delay_seconds` (default 60 s).
    pub min_delay: Duration,
    /// `max_delay_seconds` (default 120 s, never below `min_delay`).
    pub max_delay: Duration,
    /// `long_polling_timeout_seconds`, when set (at least 1 s).
    pub long_polling_timeout: Option<Duration>,
}

impl Default for Polling {
    fn default() -> Polling {
        Polling {
            min_delay: Duration::from_secs(DEFAULT_MIN_DELAY_SECONDS),
            max_delay: Duration::from_secs(DEFAULT_MAX_DELAY_SECONDS),
            long_polling_timeout: None,
        }
    }
}

const DEFAULT_MIN_DELAY_SECONDS: u64 = 60;
const DEFAULT_MAX_DELAY_SECONDS: u64 = 120;
const DEFAULT_SIZE_LIMIT_BYTES: u64 = 1 << 30;

/// The keys of a bundle polhost reads; any other is reported as ignored.
const BUNDLE_KEYS: &[&str] = &[
    "service",
    "resource",
    "persist",
    "polling",
    "size_limit_bytes",
    "trigger",
    "signing",
];

const POLLING_KEYS: &[&str] = &[
    "min_delay_seconds",
    "max_delay_seconds",
    "long_polling_timeout_seconds",
];

#[derive(Deserialize)]
#[serde(expecting = "a map")]
struct BundleSection {
    service: Option<String>,
    resource: Option<String>,
    persist: Option<bool>,
    polling: Option<PollingSection>,
    size_limit_bytes: Option<u64>,
    trigger: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    signing: serde::de::IgnoredAny,
}

#[derive(Deserialize)]
#[serde(expecting = "a map")]
struct PollingSection {
    min_delay_seconds: Option<u64>,
    max_delay_seconds: Option<u64>,
    long_polling_timeout_seconds: Option<u64>,
}

/// Reads `bundles` (a map keyed by bundle name), checking each names one of
/// `services`.
pub(crate) fn parse_bundles(
    node: Option<&Node>,
    services: &[Service],
    keys: &[Key],
    ignored: &mut Vec<String>,
) -> Result<Vec<Bundle>, ConfigError> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    node.entries("bundles")?
        .iter()
        .map(|(name, value)| parse_bundle(name, value, services, keys, ignored))
        .collect()
}

fn parse_bundle(
    name: &str,
    node: &Node,
    services: &[Service],
    keys: &[Key],
    ignored: &mut Vec<String>,
) -> Result<Bundle, ConfigError> {
    let path = tree::join("bundles", name);
    check_name(name).map_err(|why| ConfigError::invalid(&path, why))?;
    let section: BundleSection = tree::deserialize(node, &path)?;

    let manual = match section.trigger.as_deref() {
        None | Some("periodic") => false,
        Some("manual") => true,
        Some(other) => {
            return Err(ConfigError::invalid(
                tree::join(&path, "trigger"),
                format!("must be \"periodic\" or \"manual\", not {other:?}"),
            ));
        }
    };

    // In file order; `trigger: manual` is accepted but polhost polls anyway.
    for (key, value) in node.entries(&path)? {
        if !BUNDLE_KEYS.contains(&key.as_str()) || (key == "trigger" && manual) {
            ignored.push(tree::join(&path, key));
        } else if key == "polling" {
            tree::report_unknown_keys(value, &tree::join(&path, key), POLLING_KEYS, ignored)?;
        }
    }

    let service_path = tree::join(&path, "service");
    let service = match section.service.as_deref() {
        None | Some("") => match services.first() {
            Some(first) => first.name.clone(),
            None => {
                return Err(ConfigError::invalid(
                    service_path,
                    "no services are configured",
                ));
            }
        },
        Some(service) if services.iter().any(|s| s.name == service) => service.to_string(),
        Some(service) => {
            return Err(ConfigError::invalid(
                service_path,
                format!("no service named {service:?} is configured"),
            ));
        }
    };

    let resource = match section.resource {
        Some(resource) if !resource.is_empty() => resource,
        _ => format!("bundles/{name}"),
    };

    let size_limit_bytes = match section.size_limit_bytes {
        None => DEFAULT_SIZE_LIMIT_BYTES,
        Some(0) => {
            return Err(ConfigError::invalid(
                tree::join(&path, "size_limit_bytes"),
                "must be > 0",
            ));
        }
        Some(limit) => limit,
    };

    let polling = match section.polling {
        None => Polling::default(),
        Some(polling) => check_polling(&polling, &tree::join(&path, "polling"))?,
    };

    let signing = match node.get("signing") {
        None | Some(Node::Null) => None,
        Some(signing) => Some(keys::parse_signing(
            signing,
            &tree::join(&path, "signing"),
            keys,
        )?),
    };

    Ok(Bundle {
        name: name.to_string(),
        service,
        resource,
        persist: section.persist.unwrap_or(false),
        polling,
        size_limit_bytes,
        signing,
    })
}

/// The longest file name Linux file systems take.
const MAX_NAME_BYTES: usize = 255;

/// A bundle name becomes a directory: `<persistence_directory>/bundles/<name>/`.
/// OPA allows `/` in names (`authz/v2`), which nests the directories as
/// OPA's own persistence does; so each `/`-separated segment must be a
/// directory name of its own.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a bundle name must not be empty");
    }
    for segment in name.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.contains(['\\', '\0'])
        {
            return Err(
                "each '/'-separated part of a bundle name must be usable as a directory name (not empty, '.' or '..', no '\\' or NUL)",
            );
        }
        if segment.len() > MAX_NAME_BYTES {
            return Err(
                "each '/'-separated part of a bundle name is a directory name: at most 255 bytes",
            );
        }
        if bundle_directory::KEPT_FILES.contains(&segment)
            || segment.starts_with(bundle_directory::TEMP_PREFIX)
        {
            return Err(
                "a part of a bundle name must not be a file name polhost keeps in a bundle's directory (bundle.tar.gz, metadata.json, previous.tar.gz, previous.metadata.json, .download-*)",
            );
        }
    }
    Ok(())
}

fn check_polling(polling: &PollingSection, path: &str) -> Result<Polling, ConfigError> {
    let (min, max) = match (polling.min_delay_seconds, polling.max_delay_seconds) {
        (None, None) => (DEFAULT_MIN_DELAY_SECONDS, DEFAULT_MAX_DELAY_SECONDS),
        (Some(min), Some(max)) => (min, max),
        (Some(_), None) | (None, Some(_)) => {
            return Err(ConfigError::invalid(
                path,
                "both min_delay_seconds and max_delay_seconds must be configured, or neither",
            ));
        }
    };
    let max_path = tree::join(path, "max_delay_seconds");
    if max < min {
        return Err(ConfigError::invalid(
            max_path,
            format!("must be >= min_delay_seconds ({max} < {min})"),
        ));
    }
    if max == 0 {
        // OPA would poll in a tight loop.
        return Err(ConfigError::invalid(max_path, "must be > 0"));
    }
    let long_polling_timeout = match polling.long_polling_timeout_seconds {
        None => None,
        Some(0) => {
            return Err(ConfigError::invalid(
                tree::join(path, "long_polling_timeout_seconds"),
                "must be >= 1",
            ));
        }
        Some(seconds) => Some(Duration::from_secs(seconds)),
    };
    Ok(Polling {
        min_delay: Duration::from_secs(min),
        max_delay: Duration::from_secs(max),
        long_polling_timeout,
    })
}

#[cfg(test)]
mod tests {
    use crate::tests::{error, parse};
    use std::time::Duration;

    const SERVICES: &str =
        "services:\n  s:\n    url: https://example.com\n  t:\n    url: https://t.example\n";

    /// A config with services `s` and `t` and one bundle `authz` whose body
    /// is `body` (indented 4).
    fn with_bundle(body: &str) -> String {
        format!("{SERVICES}bundles:\n  authz:\n{body}")
    }

    #[test]
    fn max_delay_below_min_names_field_and_values() {
        assert_eq!(
            error(&with_bundle(
                "    polling:\n      min_delay_seconds: 30\n      max_delay_seconds: 10\n"
            )),
            "bundles.authz.polling.max_delay_seconds: must be >= min_delay_seconds (10 < 30)"
        );
    }

    #[test]
    fn only_min_delay_is_rejected_like_opa() {
        assert_eq!(
            error(&with_bundle("    polling:\n      min_delay_seconds: 30\n")),
            "bundles.authz.polling: both min_delay_seconds and max_delay_seconds must be configured, or neither"
        );
    }

    #[test]
    fn only_max_delay_is_rejected_like_opa() {
        assert_eq!(
            error(&with_bundle("    polling:\n      max_delay_seconds: 30\n")),
            "bundles.authz.polling: both min_delay_seconds and max_delay_seconds must be configured, or neither"
        );
    }

    #[test]
    fn zero_max_delay_is_rejected() {
        assert_eq!(
            error(&with_bundle(
                "    polling:\n      min_delay_seconds: 0\n      max_delay_seconds: 0\n"
            )),
            "bundles.authz.polling.max_delay_seconds: must be > 0"
        );
    }

    #[test]
    fn equal_delays_and_zero_min_are_accepted() {
        let config = parse(&with_bundle(
            "    polling: {min_delay_seconds: 0, max_delay_seconds: 5}\n",
        ));
        assert_eq!(config.bundles[0].polling.min_delay, Duration::ZERO);
        let config = parse(&with_bundle(
            "    polling: {min_delay_seconds: 5, max_delay_seconds: 5}\n",
        ));
        assert_eq!(config.bundles[0].polling.max_delay, Duration::from_secs(5));
    }

    #[test]
    fn zero_long_polling_timeout_is_rejected() {
        assert_eq!(
            error(&with_bundle(
                "    polling:\n      long_polling_timeout_seconds: 0\n"
            )),
            "bundles.authz.polling.long_polling_timeout_seconds: must be >= 1"
        );
    }

    #[test]
    fn string_min_delay_names_field_and_value() {
        assert_eq!(
            error(&with_bundle(
                "    polling:\n      min_delay_seconds: abc\n      max_delay_seconds: 10\n"
            )),
            "bundles.authz.polling.min_delay_seconds: invalid type: string \"abc\", expected u64"
        );
    }

    #[test]
    fn negative_max_delay_names_field() {
        assert_eq!(
            error(&with_bundle(
                "    polling:\n      min_delay_seconds: 1\n      max_delay_seconds: -1\n"
            )),
            "bundles.authz.polling.max_delay_seconds: invalid value: integer `-1`, expected u64"
        );
    }

    #[test]
    fn fractional_size_limit_names_field() {
        assert_eq!(
            error(&with_bundle("    size_limit_bytes: 1.5\n")),
            "bundles.authz.size_limit_bytes: invalid type: floating point `1.5`, expected u64"
        );
    }

    #[test]
    fn polling_that_is_not_a_map_names_field() {
        assert_eq!(
            error(&with_bundle("    polling: 10\n")),
            "bundles.authz.polling: invalid type: integer `10`, expected a map"
        );
    }

    #[test]
    fn zero_size_limit_is_rejected() {
        assert_eq!(
            error(&with_bundle("    size_limit_bytes: 0\n")),
            "bundles.authz.size_limit_bytes: must be > 0"
        );
    }

    #[test]
    fn bundle_naming_unknown_service_is_rejected() {
        assert_eq!(
            error(&with_bundle("    service: nope\n")),
            "bundles.authz.service: no service named \"nope\" is configured"
        );
    }

    #[test]
    fn bundles_without_services_are_rejected() {
        assert_eq!(
            error("bundles:\n  authz:\n    resource: x\n"),
            "bundles.authz.service: no services are configured"
        );
    }

    #[test]
    fn bundle_names_the_service_it_uses() {
        let config = parse(&with_bundle("    service: t\n"));
        assert_eq!(config.bundles[0].service, "t");
    }

    #[test]
    fn a_300_byte_bundle_name_is_a_field_error_not_file_name_too_long() {
        // Issue 10, item 12: such a name reached the file system and failed
        // there ("File name too long", exit 1) instead of naming the field.
        let name = "b".repeat(300);
        assert_eq!(
            error(&format!(
                "services:\n  s: {{url: 'https://s'}}\nbundles:\n  {name}: {{}}\n"
            )),
            format!(
                "bundles.{name}: each '/'-separated part of a bundle name is a directory name: at most 255 bytes"
            )
        );
        let name = "b".repeat(255);
        parse(&format!(
            "services:\n  s: {{url: 'https://s'}}\nbundles:\n  {name}: {{}}\n"
        ));
    }

    #[test]
    fn bundle_name_that_is_not_a_directory_name_is_rejected() {
        for name in [
            "'..'", "'.'", "a//b", "'../etc'", "'a/..'", "'a\\b'", "/a", "a/",
        ] {
            let text = format!("{SERVICES}bundles:\n  {name}: {{}}\n");
            let message = error(&text);
            assert!(
                message.ends_with(
                    ": each '/'-separated part of a bundle name must be usable as a directory name (not empty, '.' or '..', no '\\' or NUL)"
                ),
                "{name}: {message}"
            );
            assert!(message.starts_with("bundles."), "{message}");
        }
        for name in ["a/bundle.tar.gz", "a/metadata.json", "a/.download-x"] {
            let message = error(&format!("{SERVICES}bundles:\n  {name}: {{}}\n"));
            assert!(
                message.contains("must not be a file name polhost keeps"),
                "{name}: {message}"
            );
        }
    }

    #[test]
    fn bundle_names_with_a_slash_are_nested_directories_as_in_opa() {
        let config = parse(&format!(
            "{SERVICES}bundles:\n  authz/v2: {{}}\n  authz: {{}}\n"
        ));
        assert_eq!(config.bundles[0].name, "authz/v2");
        assert_eq!(config.bundles[0].resource, "bundles/authz/v2");
        assert_eq!(config.bundles[1].name, "authz");
    }

    #[test]
    fn empty_bundle_name_is_rejected() {
        assert_eq!(
            error(&format!("{SERVICES}bundles:\n  '': {{}}\n")),
            "bundles.\"\": a bundle name must not be empty"
        );
    }

    #[test]
    fn bundle_with_dots_inside_its_name_is_accepted() {
        let config = parse(&format!("{SERVICES}bundles:\n  authz..v1: {{}}\n"));
        assert_eq!(config.bundles[0].resource, "bundles/authz..v1");
    }

    #[test]
    fn unknown_trigger_is_rejected() {
        assert_eq!(
            error(&with_bundle("    trigger: sometimes\n")),
            "bundles.authz.trigger: must be \"periodic\" or \"manual\", not \"sometimes\""
        );
    }

    #[test]
    fn bundles_as_a_list_are_rejected() {
        assert_eq!(
            error(&format!("{SERVICES}bundles:\n  - authz\n")),
            "bundles: invalid type: a list, expected a map"
        );
    }

    #[test]
    fn bundle_that_is_not_a_map_names_it() {
        assert_eq!(
            error(&format!("{SERVICES}bundles:\n  authz: yes\n")),
            "bundles.authz: invalid type: a string, expected a map"
        );
    }

    #[test]
    fn persist_of_wrong_type_names_field() {
        assert_eq!(
            error(&with_bundle("    persist: 1\n")),
            "bundles.authz.persist: invalid type: integer `1`, expected a boolean"
        );
    }

    #[test]
    fn empty_service_and_resource_fall_back_to_defaults_like_opa() {
        let config = parse(&with_bundle("    service: ''\n    resource: ''\n"));
        assert_eq!(config.bundles[0].service, "s");
        assert_eq!(config.bundles[0].resource, "bundles/authz");
    }
}
