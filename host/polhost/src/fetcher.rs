//! Fetchers as data: a [`FetcherDescriptor`] says everything the host needs
//! to know about one service type (its component, the credential methods it
//! accepts, its origin policy, how its grant is derived), and a
//! [`FetcherRegistry`] picks the descriptor that serves a service.
//!
//! Owns the question "which fetcher, with which capabilities?". It knows no
//! backend: the standard fetchers are descriptors like any plugin's
//! (`polhost-fetchers` ships them), and a plugin's grant comes only from the
//! operator's entry, never from the component.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{
    BearerCredentials, ComponentLocation, Config, Credentials, FetcherEntry, FetcherLimits, Service,
};
use crate::sandbox::{Grant, Origin, OriginPolicy};

/// Looks up an environment variable: injected, so the library reads no
/// ambient process state.
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Where a fetcher's component comes from.
#[derive(Clone, Debug)]
pub enum ComponentSource {
    /// Bytes in memory (the standard fetchers, embedded in the binary, or
    /// an embedder's own).
    Bytes(Cow<'static, [u8]>),
    /// A file; `digest` (`sha256:<hex>`), when given, must match it.
    File {
        /// The component file.
        path: PathBuf,
        /// The sha256 its bytes must have.
        digest: Option<String>,
    },
    /// An OCI artifact in the Wasm OCI layout, pulled by digest and cached.
    Oci {
        /// `registry/repository[:tag][@sha256:...]`, without `oci://`.
        reference: String,
        /// `sha256:<hex>` of the wasm layer.
        digest: String,
        /// How to authenticate to the registry.
        credentials: Option<BearerCredentials>,
        /// Plain HTTP to a registry that is not on a loopback address.
        insecure: bool,
    },
}

impl fmt::Display for ComponentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComponentSource::Bytes(bytes) => write!(f, "built in ({} bytes)", bytes.len()),
            ComponentSource::File { path, .. } => write!(f, "{}", path.display()),
            ComponentSource::Oci { reference, .. } => write!(f, "oci://{reference}"),
        }
    }
}

/// Which credential methods (keys under a service's `credentials`) a
/// fetcher accepts. The configuration parses any; this decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialMethods {
    /// Any method: the fetcher decides what it means (plugins).
    Any,
    /// Only these.
    Only(Vec<String>),
}

impl CredentialMethods {
    /// `CredentialMethods::Only` of a list of names.
    pub fn only(methods: &[&str]) -> CredentialMethods {
        CredentialMethods::Only(methods.iter().map(|m| m.to_string()).collect())
    }

    fn accepts(&self, method: &str) -> bool {
        match self {
            CredentialMethods::Any => true,
            CredentialMethods::Only(methods) => methods.iter().any(|m| m == method),
        }
    }
}

/// A function that adds to a service's grant what its credential method
/// needs (origins, files, environment variables), reading the service's
/// configuration and the injected environment. It never reads a secret's
/// value.
pub type DeriveGrant = fn(&mut Grant, &Service, &EnvLookup);

/// How a fetcher's grant is made, beyond its service URL's origin (which
/// every fetcher gets).
#[derive(Clone)]
pub enum GrantRule {
    /// Derived from the service's configuration by code that ships with
    /// polhost (the standard fetchers: an `s3_signing` provider chain names
    /// the files and variables it reads).
    Derived(DeriveGrant),
    /// Exactly these, declared by the operator (plugins).
    Declared {
        /// Origins beyond the service URL's.
        origins: Vec<Origin>,
        /// Variables `granted-env` may read.
        env: Vec<String>,
        /// Files `read-granted-file` may read.
        files: Vec<PathBuf>,
    },
}

impl fmt::Debug for GrantRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantRule::Derived(_) => f.write_str("Derived(..)"),
            GrantRule::Declared {
                origins,
                env,
                files,
            } => f
                .debug_struct("Declared")
                .field("origins", origins)
                .field("env", env)
                .field("files", files)
                .finish(),
        }
    }
}

/// Everything the host knows about the fetcher of one service type.
#[derive(Clone, Debug)]
pub struct FetcherDescriptor {
    service_type: String,
    source: ComponentSource,
    credentials: CredentialMethods,
    implied_by: Vec<String>,
    origin_policy: OriginPolicy,
    grant: GrantRule,
    limits: FetcherLimits,
    plugin: bool,
}

impl FetcherDescriptor {
    /// A descriptor for `service_type` served by `source`: accepting any
    /// credential method, with a fixed origin policy and a grant of its
    /// service URL only, until said otherwise.
    pub fn new(service_type: impl Into<String>, source: ComponentSource) -> FetcherDescriptor {
        FetcherDescriptor {
            service_type: service_type.into().to_lowercase(),
            source,
            credentials: CredentialMethods::Any,
            implied_by: Vec::new(),
            origin_policy: OriginPolicy::Fixed,
            grant: GrantRule::Declared {
                origins: Vec::new(),
                env: Vec::new(),
                files: Vec::new(),
            },
            limits: FetcherLimits::default(),
            plugin: false,
        }
    }

    /// The descriptor an operator's `polhost.fetchers.<type>` entry makes:
    /// its grant is exactly the entry's.
    pub fn from_entry(entry: &FetcherEntry) -> FetcherDescriptor {
        let source = match &entry.component {
            ComponentLocation::File(path) => ComponentSource::File {
                path: path.clone(),
                digest: entry.digest.clone(),
            },
            ComponentLocation::Oci(reference) => ComponentSource::Oci {
                reference: reference.clone(),
                digest: entry.digest.clone().unwrap_or_default(),
                credentials: entry.registry_credentials.clone(),
                insecure: entry.insecure,
            },
        };
        let mut descriptor = FetcherDescriptor::new(&entry.service_type, source)
            .with_grant(GrantRule::Declared {
                // The config checked each origin's form.
                origins: entry
                    .allowed_outbound_hosts
                    .iter()
                    .filter_map(|o| Origin::of_url(o))
                    .collect(),
                env: entry.env.clone(),
                files: entry.files.clone(),
            })
            .with_limits(entry.limits);
        descriptor.plugin = true;
        descriptor
    }

    /// Accepts only these credential methods.
    pub fn with_credential_methods(mut self, methods: CredentialMethods) -> Self {
        self.credentials = methods;
        self
    }

    /// Serves services without a `type` whose credential method is one of
    /// `methods` (OPA infers `s3` from `s3_signing`, for example).
    pub fn implied_by(mut self, methods: &[&str]) -> Self {
        self.implied_by = methods.iter().map(|m| m.to_string()).collect();
        self
    }

    /// Whether origins learned from responses are reachable (see
    /// [`OriginPolicy`]).
    pub fn with_origin_policy(mut self, policy: OriginPolicy) -> Self {
        self.origin_policy = policy;
        self
    }

    /// How its grant is made.
    pub fn with_grant(mut self, grant: GrantRule) -> Self {
        self.grant = grant;
        self
    }

    /// Bounds that differ from the host's defaults.
    pub fn with_limits(mut self, limits: FetcherLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The service type it serves.
    pub fn service_type(&self) -> &str {
        &self.service_type
    }

    /// Where its component comes from.
    pub fn source(&self) -> &ComponentSource {
        &self.source
    }

    /// The credential methods it accepts.
    pub fn credential_methods(&self) -> &CredentialMethods {
        &self.credentials
    }

    /// Its own bounds (each `None`: the host's default).
    pub fn limits(&self) -> FetcherLimits {
        self.limits
    }

    /// Whether it came from the operator's `polhost.fetchers`.
    pub fn is_plugin(&self) -> bool {
        self.plugin
    }

    /// The capabilities its fetcher gets for `service`: the service URL's
    /// origin, then what the rule adds. Nothing else is reachable.
    pub fn grant(&self, service: &Service, env: &EnvLookup) -> Grant {
        let mut grant = Grant {
            service: service.name.clone(),
            policy: self.origin_policy,
            ..Grant::default()
        };
        grant.origins.extend(Origin::of_url(&service.url));
        match &self.grant {
            GrantRule::Derived(derive) => {
                // OPA's bearer `token_path` is the one credential file the
                // host itself knows of: every standard fetcher reads it.
                if let Credentials::Bearer(bearer) = &service.credentials
                    && let Some(path) = &bearer.token_path
                {
                    grant.add_file(path.clone());
                }
                derive(&mut grant, service, env);
            }
            GrantRule::Declared {
                origins,
                env,
                files,
            } => {
                for origin in origins {
                    grant.add_origin(origin.clone());
                }
                for name in env {
                    grant.add_env(name);
                }
                for file in files {
                    grant.add_file(file.clone());
                }
            }
        }
        grant
    }
}

/// Why a service has no usable fetcher. Each names the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No descriptor serves the service's type.
    #[error(
        "services.{service}.type: no fetcher for service type {service_type:?} (polhost has: {available}; add one under polhost.fetchers.{service_type})"
    )]
    UnknownType {
        /// The service.
        service: String,
        /// Its type.
        service_type: String,
        /// The types there are fetchers for.
        available: String,
    },
    /// The fetcher does not accept the service's credential method.
    #[error(
        "services.{service}.credentials.{method}: the {service_type} fetcher does not accept this credential method (it accepts: {accepted})"
    )]
    CredentialMethod {
        /// The service.
        service: String,
        /// Its type.
        service_type: String,
        /// The method.
        method: String,
        /// What the fetcher accepts.
        accepted: String,
    },
    /// OPA's Go credential plugins do not exist in polhost.
    #[error(
        "services.{service}.credentials.plugin: OPA Go plugins are not supported: write a fetcher plugin instead (docs/writing-a-fetcher.md) and name it under polhost.fetchers"
    )]
    GoPlugin {
        /// The service.
        service: String,
    },
}

/// The descriptors polhost can use, one per service type.
#[derive(Clone, Debug, Default)]
pub struct FetcherRegistry {
    descriptors: Vec<FetcherDescriptor>,
}

/// The type of a service without `type` and without a credential method
/// that implies another: OPA's REST bundle protocol.
const DEFAULT_TYPE: &str = "http";

impl FetcherRegistry {
    /// An empty registry.
    pub fn new() -> FetcherRegistry {
        FetcherRegistry::default()
    }

    /// Adds `descriptor`, replacing any descriptor of the same type.
    pub fn insert(&mut self, descriptor: FetcherDescriptor) {
        self.descriptors
            .retain(|d| d.service_type != descriptor.service_type);
        self.descriptors.push(descriptor);
    }

    /// Adds the operator's `polhost.fetchers` entries, each replacing the
    /// descriptor of its type.
    pub fn with_plugins(mut self, config: &Config) -> FetcherRegistry {
        for entry in &config.fetchers {
            self.insert(FetcherDescriptor::from_entry(entry));
        }
        self
    }

    /// The descriptors, in the order added.
    pub fn descriptors(&self) -> &[FetcherDescriptor] {
        &self.descriptors
    }

    /// The descriptor of `service_type`.
    pub fn get(&self, service_type: &str) -> Option<&FetcherDescriptor> {
        self.descriptors
            .iter()
            .find(|d| d.service_type == service_type)
    }

    /// The type a service is served as: its `type`, else the type its
    /// credential method implies, else `http`.
    pub fn service_type_of(&self, service: &Service) -> String {
        if let Some(declared) = &service.service_type {
            return declared.clone();
        }
        if let Credentials::Other(method) = &service.credentials
            && let Some(descriptor) = self
                .descriptors
                .iter()
                .find(|d| d.implied_by.iter().any(|m| m == method))
        {
            return descriptor.service_type.clone();
        }
        DEFAULT_TYPE.to_string()
    }

    /// The descriptor that serves `service`, checked against its
    /// credential method.
    pub fn resolve(&self, service: &Service) -> Result<&FetcherDescriptor, RegistryError> {
        let service_type = self.service_type_of(service);
        let descriptor = self
            .get(&service_type)
            .ok_or_else(|| RegistryError::UnknownType {
                service: service.name.clone(),
                service_type: service_type.clone(),
                available: self.types().join(", "),
            })?;
        let method = match &service.credentials {
            // Mutual TLS is the host's: every fetcher's requests get it.
            Credentials::None | Credentials::ClientTls(_) => return Ok(descriptor),
            Credentials::Bearer(_) => "bearer",
            Credentials::Other(method) => method.as_str(),
        };
        if method == "plugin" && !descriptor.credentials.accepts(method) {
            return Err(RegistryError::GoPlugin {
                service: service.name.clone(),
            });
        }
        if !descriptor.credentials.accepts(method) {
            let accepted = match &descriptor.credentials {
                CredentialMethods::Any => "any".to_string(),
                CredentialMethods::Only(methods) if methods.is_empty() => "none".to_string(),
                CredentialMethods::Only(methods) => methods.join(", "),
            };
            return Err(RegistryError::CredentialMethod {
                service: service.name.clone(),
                service_type,
                method: method.to_string(),
                accepted,
            });
        }
        Ok(descriptor)
    }

    /// The service types there are fetchers for.
    pub fn types(&self) -> Vec<&str> {
        self.descriptors
            .iter()
            .map(|d| d.service_type.as_str())
            .collect()
    }
}

/// The environment as an embedder gives it: `Arc`ed so every part of the
/// agent can hold it.
pub(crate) type SharedEnv = Arc<EnvLookup>;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, &|_| None).unwrap()
    }

    fn registry() -> FetcherRegistry {
        let mut registry = FetcherRegistry::new();
        let bytes = || ComponentSource::Bytes(Cow::Borrowed(b"".as_slice()));
        registry.insert(
            FetcherDescriptor::new("http", bytes())
                .with_credential_methods(CredentialMethods::only(&["bearer"])),
        );
        registry.insert(
            FetcherDescriptor::new("s3", bytes())
                .with_credential_methods(CredentialMethods::only(&["s3_signing"]))
                .implied_by(&["s3_signing"]),
        );
        registry
    }

    #[test]
    fn the_type_is_declared_implied_by_the_credential_method_or_http() {
        let config = config(
            "services:
  a: {url: 'https://a'}
  b: {url: 'https://b', credentials: {s3_signing: {environment_credentials: {}}}}
  c: {url: 'https://c', type: S3}
  d: {url: 'https://d', type: etcd, credentials: {etcd_token: {}}}
",
        );
        let registry = registry();
        let types: Vec<String> = config
            .services
            .iter()
            .map(|s| registry.service_type_of(s))
            .collect();
        assert_eq!(types, ["http", "s3", "s3", "etcd"]);
        assert_eq!(
            registry
                .resolve(&config.services[3])
                .unwrap_err()
                .to_string(),
            "services.d.type: no fetcher for service type \"etcd\" (polhost has: http, s3; add one under polhost.fetchers.etcd)"
        );
    }

    #[test]
    fn a_credential_method_the_fetcher_lacks_is_named() {
        let config = config(
            "services:
  a: {url: 'https://a', type: s3, credentials: {bearer: {token: t}}}
  b: {url: 'https://b', credentials: {plugin: my_go_plugin}}
",
        );
        let registry = registry();
        assert_eq!(
            registry
                .resolve(&config.services[0])
                .unwrap_err()
                .to_string(),
            "services.a.credentials.bearer: the s3 fetcher does not accept this credential method (it accepts: s3_signing)"
        );
        assert!(
            registry
                .resolve(&config.services[1])
                .unwrap_err()
                .to_string()
                .starts_with("services.b.credentials.plugin: OPA Go plugins are not supported")
        );
    }

    #[test]
    fn a_plugin_replaces_the_standard_fetcher_and_accepts_any_method() {
        let config = config(
            "polhost:
  fetchers:
    http:
      component: /opt/http.wasm
      allowed_outbound_hosts: ['https://auth.example']
      env: [TOKEN]
      files: [/run/token]
services:
  a: {url: 'https://a.example/v1', credentials: {my_method: {x: 1}}}
",
        );
        let registry = registry().with_plugins(&config);
        let descriptor = registry.resolve(&config.services[0]).unwrap();
        assert!(descriptor.is_plugin());
        let grant = descriptor.grant(&config.services[0], &|_| Some("ignored".into()));
        assert_eq!(
            grant.describe(),
            "origins: https://a.example:443, https://auth.example:443; files: /run/token; env: TOKEN"
        );
    }

    #[test]
    fn a_declared_grant_ignores_the_service_credentials() {
        // Only the operator's entry grants: a token_path in the service is
        // not readable by a plugin unless the entry lists it.
        let config = config(
            "polhost:
  fetchers:
    http: {component: /opt/http.wasm}
services:
  a: {url: 'https://a.example', credentials: {bearer: {token_path: /run/secret}}}
",
        );
        let registry = registry().with_plugins(&config);
        let grant = registry
            .resolve(&config.services[0])
            .unwrap()
            .grant(&config.services[0], &|_| None);
        assert!(grant.files.is_empty(), "{grant:?}");
    }
}
