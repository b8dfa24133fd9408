//! polhost's configuration: OPA's configuration file (`services`, `bundles`,
//! `persistence_directory`), parsed and validated, with errors naming the
//! file and field. It reads; it never fetches, writes or acts on the config.
//!
//! ```
//! use polhost_config::Config;
//!
//! let text = "
//! services:
//!   acmecorp:
//!     url: https://${HOST}/v1
//!     credentials:
//!       bearer:
//!         token: ${TOKEN}
//! bundles:
//!   authz:
//!     resource: bundles/authz.tar.gz
//! ";
//! let env = |name: &str| match name {
//!     "HOST" => Some("example.com".to_string()),
//!     "TOKEN" => Some("s3cr3t".to_string()),
//!     _ => None,
//! };
//! let config = Config::parse(text, &env)?;
//! assert_eq!(config.services[0].url, "https://example.com/v1");
//! assert_eq!(config.bundles[0].service, "acmecorp");
//! assert!(!format!("{config:?}").contains("s3cr3t"));
//! # Ok::<(), polhost_config::ConfigError>(())
//! ```
//!
//! Keys polhost does not implement are accepted and listed in
//! [`Config::ignored_keys`], for the caller to warn about; a top-level
//! `polhost` key holds polhost's own settings ([`Config::bundle_limits`],
//! [`Config::fetchers`]).

#![deny(missing_docs)]

mod bundle;
pub mod bundle_directory;
mod env;
mod error;
mod fetchers;
mod keys;
mod limits;
mod overrides;
mod read;
mod server;
mod service;
mod tree;
mod yaml;

pub use bundle::{Bundle, Polling};
pub use env::process_env;
pub use error::ConfigError;
pub use fetchers::{ComponentLocation, FetcherEntry, FetcherLimits};
pub use limits::BundleLimits;
pub use overrides::Override;
pub use polhost_bundle::{ALGORITHMS, Key, Secret, Signing};
pub use read::MAX_CONFIG_BYTES;
pub use server::{ServerSettings, parse_addr};
pub use service::{BearerCredentials, ClientTls, Credentials, Service, TlsSettings};

use std::path::{Path, PathBuf};
use tree::Node;

/// The parsed, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `services`, in file order (a list with `name`s or a map keyed by name).
    pub services: Vec<Service>,
    /// `bundles`, in file order; may be empty (the caller decides).
    pub bundles: Vec<Bundle>,
    /// `keys`, in file order: what bundle signatures are verified with.
    pub keys: Vec<Key>,
    /// `persistence_directory`; default `./.opa`, relative to the current
    /// directory (OPA's default is `$PWD/.opa`).
    pub persistence_directory: PathBuf,
    /// Field paths of keys accepted but not implemented, in the order met:
    /// `keys`, `decision_logs`, `bundles.authz.signing`,
    /// `services.acmecorp.tls`, ...
    pub ignored_keys: Vec<String>,
    /// `polhost.bundle`: caps on what a bundle archive may expand to.
    pub bundle_limits: BundleLimits,
    /// `polhost.fetchers`: fetcher plugins, one per service type, in file
    /// order.
    pub fetchers: Vec<FetcherEntry>,
    /// `polhost.server`: the local API of `polhost run`.
    pub server: ServerSettings,
}

/// The default `persistence_directory`.
const DEFAULT_PERSISTENCE_DIRECTORY: &str = "./.opa";

impl Config {
    /// Reads and parses a file; errors name the file. `${VAR}` is replaced
    /// with `env`'s `VAR` (empty when undefined): pass [`process_env`] for
    /// the process environment.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::load_with_overrides(path, env, &[])
    }

    /// [`Config::load`], with `--set`/`--set-file` values applied over the
    /// file (after its `${VAR}` substitution), in order: OPA applies every
    /// `--set` before every `--set-file`. An error in a value an override
    /// set names the flag and field instead of the file.
    pub fn load_with_overrides(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        let text = read::read_capped(path, MAX_CONFIG_BYTES).map_err(|e| match e {
            read::ReadError::Io(error) => ConfigError::Read {
                path: path.to_path_buf(),
                error,
            },
            read::ReadError::TooLarge => ConfigError::TooLarge {
                path: path.to_path_buf(),
                limit: MAX_CONFIG_BYTES,
            },
        })?;
        let mut config =
            Config::parse_with_overrides(&text, env, overrides).map_err(|e| e.in_file(path))?;
        if let Some(dir) = path.parent() {
            fetchers::rebase(&mut config.fetchers, dir);
        }
        Ok(config)
    }

    /// Parses text; `env` looks up variables for ${VAR} substitution. The
    /// text, before and after substitution, may hold at most
    /// [`MAX_CONFIG_BYTES`], and the YAML is read within budgets of values,
    /// depth and aliases (docs/configuration.md, "Limits").
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Config::parse_with_overrides(text, env, &[])
    }

    /// [`Config::parse`], with `--set`/`--set-file` values applied over the
    /// text's tree, in order (see [`Config::load_with_overrides`]).
    pub fn parse_with_overrides(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        let text = env::substitute(text, env, MAX_CONFIG_BYTES).map_err(|env::TooLong| {
            ConfigError::invalid(
                "",
                format!(
                    "the configuration text is larger than {}, the most polhost reads \
                     (counted after ${{ENV}} substitution)",
                    read::show_size(MAX_CONFIG_BYTES)
                ),
            )
        })?;
        let mut root = yaml::parse(&text)?;
        let set_paths = overrides::apply(&mut root, overrides, env)?;
        Config::from_tree(&root).map_err(|e| overrides::attribute(e, &set_paths))
    }

    /// Reads the sections of the document.
    fn from_tree(root: &Node) -> Result<Config, ConfigError> {
        let top = match root {
            Node::Map(entries) => entries.as_slice(),
            Node::Null => tree::EMPTY,
            other => {
                return Err(ConfigError::invalid(
                    "",
                    format!("the configuration must be a map, found {}", other.kind()),
                ));
            }
        };

        let mut ignored_keys = Vec::new();
        let (mut services, mut bundles, mut persistence_directory) = (None, None, None);
        let mut keys = None;
        let mut polhost_node = None;
        for (key, value) in top {
            match key.as_str() {
                "services" => services = Some(value),
                "bundles" => bundles = Some(value),
                "persistence_directory" => persistence_directory = Some(value),
                "keys" => keys = Some(value),
                "polhost" => polhost_node = Some(value),
                _ => ignored_keys.push(key.clone()),
            }
        }

        let services = service::parse_services(services, &mut ignored_keys)?;
        let bundle_limits = limits::parse(polhost_node, &mut ignored_keys)?;
        let fetchers = fetchers::parse(
            polhost_node.and_then(|node| node.get("fetchers")),
            &mut ignored_keys,
        )?;
        let server = server::parse(polhost_node.and_then(|node| node.get("server")))?;
        let keys = keys::parse_keys(keys, &mut ignored_keys)?;
        let bundles = bundle::parse_bundles(bundles, &services, &keys, &mut ignored_keys)?;
        let persistence_directory = match persistence_directory {
            None | Some(Node::Null) => PathBuf::from(DEFAULT_PERSISTENCE_DIRECTORY),
            Some(Node::String(dir)) if dir.is_empty() => {
                return Err(ConfigError::invalid(
                    "persistence_directory",
                    "must not be empty",
                ));
            }
            Some(Node::String(dir)) => PathBuf::from(dir),
            Some(other) => {
                return Err(ConfigError::invalid(
                    "persistence_directory",
                    format!("invalid type: {}, expected a string", other.kind()),
                ));
            }
        };

        Ok(Config {
            services,
            bundles,
            keys,
            persistence_directory,
            ignored_keys,
            bundle_limits,
            fetchers,
            server,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use polhost_bundle::Secret;
    use std::time::Duration;

    /// The environment tests see (never the process's).
    pub(crate) fn test_env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".to_string()),
            "TOKEN" => Some("s3cr3t-t0ken".to_string()),
            _ => None,
        }
    }

    pub(crate) fn parse(text: &str) -> Config {
        match Config::parse(text, &test_env) {
            Ok(config) => config,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    /// The message a user would see for an invalid `text`.
    pub(crate) fn error(text: &str) -> String {
        match Config::parse(text, &test_env) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_file_is_a_config_without_services_or_bundles() {
        for text in ["", "{}", "# only a comment\n", "---\n"] {
            let config = parse(text);
            assert!(
                config.services.is_empty() && config.bundles.is_empty(),
                "{text:?}"
            );
            assert_eq!(config.persistence_directory, PathBuf::from("./.opa"));
            assert!(config.ignored_keys.is_empty());
            assert!(config.fetchers.is_empty());
        }
    }

    #[test]
    fn services_without_bundles_is_valid() {
        let config = parse("services:\n  s:\n    url: https://example.com\n");
        assert_eq!(config.services.len(), 1);
        assert!(config.bundles.is_empty());
    }

    #[test]
    fn defaults_match_opa() {
        let config = parse("services:\n  s:\n    url: https://example.com/\nbundles:\n  authz:\n");
        let service = &config.services[0];
        assert_eq!(service.name, "s");
        assert_eq!(service.url, "https://example.com");
        assert_eq!(service.service_type, None);
        assert!(service.headers.is_empty());
        assert_eq!(service.response_header_timeout_seconds, 10);
        assert!(!service.allow_insecure_tls);
        assert_eq!(service.credentials, Credentials::None);
        assert_eq!(
            config.bundles,
            vec![Bundle {
                name: "authz".to_string(),
                service: "s".to_string(),
                resource: "bundles/authz".to_string(),
                persist: false,
                polling: Polling {
                    min_delay: Duration::from_secs(60),
                    max_delay: Duration::from_secs(120),
                    long_polling_timeout: None,
                },
                size_limit_bytes: 1073741824,
                signing: None,
            }]
        );
        assert_eq!(config.persistence_directory, PathBuf::from("./.opa"));
    }

    #[test]
    fn every_field_is_read() {
        let config = parse(
            "
services:
  acmecorp:
    url: https://example.com/v1/
    type: OCI
    headers:
      X-Tenant: acme
      Accept: application/gzip
    response_header_timeout_seconds: 30
    allow_insecure_tls: true
    credentials:
      bearer:
        token_path: /run/secrets/token
        scheme: Basic
bundles:
  authz:
    service: acmecorp
    resource: /ghcr.io/acme/authz:latest
    persist: true
    polling:
      min_delay_seconds: 10
      max_delay_seconds: 20
      long_polling_timeout_seconds: 30
    size_limit_bytes: 1000
persistence_directory: /var/lib/polhost
",
        );
        let service = &config.services[0];
        assert_eq!(service.url, "https://example.com/v1");
        assert_eq!(service.service_type.as_deref(), Some("oci"));
        assert_eq!(
            service.headers,
            [
                ("X-Tenant".to_string(), "acme".to_string()),
                ("Accept".to_string(), "application/gzip".to_string()),
            ]
        );
        assert_eq!(service.response_header_timeout_seconds, 30);
        assert!(service.allow_insecure_tls);
        assert_eq!(
            service.credentials,
            Credentials::Bearer(BearerCredentials {
                token: None,
                token_path: Some(PathBuf::from("/run/secrets/token")),
                scheme: "Basic".to_string(),
            })
        );
        let bundle = &config.bundles[0];
        assert_eq!(bundle.resource, "/ghcr.io/acme/authz:latest");
        assert!(bundle.persist);
        assert_eq!(
            bundle.polling,
            Polling {
                min_delay: Duration::from_secs(10),
                max_delay: Duration::from_secs(20),
                long_polling_timeout: Some(Duration::from_secs(30)),
            }
        );
        assert_eq!(bundle.size_limit_bytes, 1000);
        assert_eq!(
            config.persistence_directory,
            PathBuf::from("/var/lib/polhost")
        );
        assert!(config.ignored_keys.is_empty(), "{:?}", config.ignored_keys);
    }

    #[test]
    fn tls_and_client_tls_are_read_and_the_fetcher_does_not_see_the_key() {
        let config = parse(
            "
services:
  acmecorp:
    url: https://example.com
    tls:
      ca_cert: /etc/ca.pem
      system_ca_required: true
    credentials:
      client_tls:
        cert: /etc/client.pem
        private_key: /etc/client-key.pem
        private_key_passphrase: hunter2
bundles:
  authz: {service: acmecorp, resource: b.tar.gz}
",
        );
        let service = &config.services[0];
        assert_eq!(
            service.tls,
            TlsSettings {
                ca_cert: Some(PathBuf::from("/etc/ca.pem")),
                system_ca_required: true,
            }
        );
        let Credentials::ClientTls(client) = &service.credentials else {
            panic!("{:?}", service.credentials);
        };
        assert_eq!(client.cert, PathBuf::from("/etc/client.pem"));
        assert_eq!(client.private_key, PathBuf::from("/etc/client-key.pem"));
        assert_eq!(
            client.private_key_passphrase.as_ref().map(Secret::expose),
            Some("hunter2")
        );
        assert!(service.raw.get("credentials").is_none(), "{}", service.raw);
        assert!(!format!("{service:?}").contains("hunter2"));
    }

    #[test]
    fn client_tls_without_its_key_names_the_field() {
        let err = error(
            "services:\n  a:\n    url: https://a.example\n    credentials:\n      client_tls: {cert: /c.pem}\n",
        );
        assert_eq!(
            err,
            "services.a.credentials.client_tls.private_key: required"
        );
    }

    #[test]
    fn services_and_bundles_keep_file_order() {
        let config = parse(
            "services:\n  zeta: {url: 'https://z.example'}\n  alpha: {url: 'https://a.example'}\n\
             bundles:\n  b2: {service: alpha}\n  b1:\n",
        );
        let services: Vec<_> = config.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(services, ["zeta", "alpha"]);
        let bundles: Vec<_> = config.bundles.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(bundles, ["b2", "b1"]);
        assert_eq!(
            config.bundles[1].service, "zeta",
            "default is the first service"
        );
    }

    #[test]
    fn list_and_map_forms_of_services_give_the_same_config() {
        let map = parse(
            "services:\n  acmecorp:\n    url: https://example.com\n    credentials:\n      bearer:\n        token: t\n\
             \x20 other:\n    url: http://other.example\nbundles:\n  authz:\n",
        );
        let list = parse(
            "services:\n  - name: acmecorp\n    url: https://example.com\n    credentials:\n      bearer:\n        token: t\n\
             \x20 - name: other\n    url: http://other.example\nbundles:\n  authz:\n",
        );
        assert_eq!(map, list);
        assert_eq!(map.services[0].raw["name"], "acmecorp");
    }

    #[test]
    fn env_variables_are_substituted_before_parsing() {
        let config = parse(
            "services:\n  s:\n    url: https://${HOST}/v1\n    credentials:\n      bearer:\n        token: ${TOKEN}\n\
             bundles:\n  authz:\n    resource: bundles/${UNDEFINED}authz\n",
        );
        assert_eq!(config.services[0].url, "https://example.com/v1");
        let Credentials::Bearer(bearer) = &config.services[0].credentials else {
            panic!("not bearer");
        };
        assert_eq!(
            bearer.token.as_ref().map(Secret::expose),
            Some("s3cr3t-t0ken")
        );
        assert_eq!(config.bundles[0].resource, "bundles/authz");
        assert_eq!(
            config.services[0].raw["credentials"]["bearer"]["token"],
            "s3cr3t-t0ken"
        );
    }

    #[test]
    fn env_variable_can_hold_yaml_structure() {
        let env = |name: &str| {
            (name == "SERVICES").then(|| "{s: {url: 'https://x.example'}}".to_string())
        };
        let config = Config::parse("services: ${SERVICES}\n", &env).unwrap();
        assert_eq!(config.services[0].url, "https://x.example");
    }

    #[test]
    fn unimplemented_keys_are_listed_as_ignored() {
        let config = parse(
            "
labels: {app: x}
services:
  acmecorp:
    url: https://example.com
    tls: {ca_cert: /ca.pem, min_version: 1.3}
    credentials:
      bearer: {token: t, extra: 1}
bundles:
  authz:
    signing: {keyid: k}
    trigger: manual
    polling: {min_delay_seconds: 1, max_delay_seconds: 2, jitter: 3}
  other:
    trigger: periodic
    unknown_thing: true
keys: {k: {key: secret}}
decision_logs: {console: true}
polhost: {bundle: {}}
",
        );
        assert_eq!(
            config.ignored_keys,
            [
                "labels",
                "decision_logs",
                "services.acmecorp.tls.min_version",
                "services.acmecorp.credentials.bearer.extra",
                "bundles.authz.trigger",
                "bundles.authz.polling.jitter",
                "bundles.other.unknown_thing",
            ]
        );
    }

    #[test]
    fn debug_of_config_does_not_show_the_token() {
        let config = parse(
            "services:\n  s:\n    url: https://example.com\n    headers: {Authorization: 'Basic aGVhZGVyLXNlY3JldA=='}\n\
             \x20   credentials:\n      bearer:\n        token: ${TOKEN}\n",
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t-t0ken"), "{debug}");
        assert!(!debug.contains("aGVhZGVyLXNlY3JldA=="), "{debug}");
        assert!(debug.contains("Authorization"), "{debug}");
        assert!(debug.contains("token: Some(***)"), "{debug}");
    }

    #[test]
    fn yaml_syntax_error_gives_line_and_column() {
        let e = Config::parse("services:\n  s: [\n", &test_env).unwrap_err();
        let ConfigError::Yaml { line, column, .. } = &e else {
            panic!("not a YAML error: {e}");
        };
        assert!(line.is_some() && column.is_some(), "{e:?}");
        assert!(e.to_string().starts_with("invalid YAML: "), "{e}");
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn duplicate_yaml_key_is_a_yaml_error() {
        let message = error("bundles:\n  a: {}\n  a: {}\n");
        assert!(message.starts_with("invalid YAML: "), "{message}");
        assert!(
            message.contains("duplicate entry with key \"a\""),
            "{message}"
        );
    }

    #[test]
    fn top_level_list_is_rejected() {
        assert_eq!(
            error("- a\n- b\n"),
            "the configuration must be a map, found a list"
        );
    }

    #[test]
    fn empty_persistence_directory_names_field() {
        assert_eq!(
            error("persistence_directory: ''\n"),
            "persistence_directory: must not be empty"
        );
    }

    #[test]
    fn non_string_persistence_directory_names_field() {
        assert_eq!(
            error("persistence_directory: [a]\n"),
            "persistence_directory: invalid type: a list, expected a string"
        );
    }

    #[test]
    fn load_reads_a_file_and_errors_start_with_its_path() {
        let dir = std::env::temp_dir().join(format!("polhost-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yaml");
        std::fs::write(
            &good,
            "services:\n  s:\n    url: https://example.com\nbundles:\n  authz:\n",
        )
        .unwrap();
        let config = Config::load(&good, &test_env).unwrap();
        assert_eq!(config.bundles[0].service, "s");

        let bad = dir.join("config.yaml");
        std::fs::write(
            &bad,
            "services:\n  s:\n    url: https://example.com\nbundles:\n  authz:\n    polling:\n      \
             min_delay_seconds: 30\n      max_delay_seconds: 10\n",
        )
        .unwrap();
        assert_eq!(
            Config::load(&bad, &test_env).unwrap_err().to_string(),
            format!(
                "{}: bundles.authz.polling.max_delay_seconds: must be >= min_delay_seconds (10 < 30)",
                bad.display()
            )
        );

        let syntax = dir.join("syntax.yaml");
        std::fs::write(&syntax, "a: [\n").unwrap();
        let message = Config::load(&syntax, &test_env).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: invalid YAML: ", syntax.display())),
            "{message}"
        );

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_of_missing_file_names_the_path() {
        let path = Path::new("/nonexistent/polhost/config.yaml");
        let e = Config::load(path, &test_env).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Read { error, .. } if error.kind() == std::io::ErrorKind::NotFound)
        );
        assert!(
            e.to_string().starts_with(
                "/nonexistent/polhost/config.yaml: cannot read the configuration file: "
            ),
            "{e}"
        );
    }
}
