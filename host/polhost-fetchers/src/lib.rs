//! polhost's standard fetchers: the components for `http`, `oci`, `s3`,
//! `azure` and `gcs`, compiled from `guest/` by the build script and carried
//! inside this crate, and the descriptor of each (what it accepts, how its
//! grant is derived). The core knows none of them: this crate hands them
//! over as data, the same kind a plugin is.
//!
//! ```no_run
//! # async fn example(config: polhost::config::Config) -> Result<(), polhost::AgentError> {
//! let agent = polhost::Agent::builder(config)
//!     .fetchers(polhost_fetchers::registry())
//!     .build()
//!     .await?;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod grants;

use std::borrow::Cow;

use polhost::{
    ComponentSource, CredentialMethods, DeriveGrant, FetcherDescriptor, FetcherRegistry, GrantRule,
    OriginPolicy,
};

include!(concat!(env!("OUT_DIR"), "/fetchers.rs"));

/// The component of the standard fetcher for `service_type`, if polhost
/// ships one.
pub fn component(service_type: &str) -> Option<&'static [u8]> {
    STANDARD
        .iter()
        .find(|(name, _)| *name == service_type)
        .map(|(_, wasm)| *wasm)
}

/// What one standard fetcher accepts and needs.
struct Description {
    service_type: &'static str,
    /// The credential methods it accepts.
    accepts: &'static [&'static str],
    /// The methods that select it when a service has no `type`.
    implied_by: &'static [&'static str],
    policy: OriginPolicy,
    grant: DeriveGrant,
}

const DESCRIPTIONS: &[Description] = &[
    Description {
        service_type: "http",
        accepts: &["bearer"],
        implied_by: &[],
        policy: OriginPolicy::Fixed,
        grant: grants::none,
    },
    Description {
        service_type: "oci",
        accepts: &["bearer"],
        implied_by: &[],
        // Registries send blobs to CDNs and clients to token services no
        // configuration names: learned from the registry's own answers,
        // one hop, for one fetch (docs/architecture.md).
        policy: OriginPolicy::LearnRedirectsAndTokenRealms,
        grant: grants::none,
    },
    Description {
        service_type: "s3",
        accepts: &["s3_signing"],
        implied_by: &["s3_signing"],
        policy: OriginPolicy::Fixed,
        grant: grants::s3,
    },
    Description {
        service_type: "azure",
        accepts: &["azure_shared_key", "azure_sas", "azure_managed_identity"],
        implied_by: &["azure_shared_key", "azure_sas", "azure_managed_identity"],
        policy: OriginPolicy::Fixed,
        grant: grants::azure,
    },
    Description {
        service_type: "gcs",
        accepts: &["gcp_metadata", "gcp_service_account"],
        implied_by: &["gcp_metadata", "gcp_service_account"],
        policy: OriginPolicy::Fixed,
        grant: grants::gcs,
    },
];

/// The standard fetchers' descriptors.
pub fn descriptors() -> Vec<FetcherDescriptor> {
    DESCRIPTIONS
        .iter()
        .map(|d| {
            let wasm =
                component(d.service_type).expect("the build script built every standard fetcher");
            FetcherDescriptor::new(d.service_type, ComponentSource::Bytes(Cow::Borrowed(wasm)))
                .with_credential_methods(CredentialMethods::only(d.accepts))
                .implied_by(d.implied_by)
                .with_origin_policy(d.policy)
                .with_grant(GrantRule::Derived(d.grant))
        })
        .collect()
}

/// A registry of the standard fetchers.
pub fn registry() -> FetcherRegistry {
    let mut registry = FetcherRegistry::new();
    for descriptor in descriptors() {
        registry.insert(descriptor);
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_standard_fetcher_has_a_component_and_a_descriptor() {
        let registry = registry();
        assert_eq!(registry.types(), ["http", "oci", "s3", "azure", "gcs"]);
        for (service_type, wasm) in STANDARD {
            assert!(wasm.starts_with(b"\0asm"), "{service_type}");
        }
    }

    #[test]
    fn types_are_inferred_from_credential_methods_as_opa_does() {
        let config = polhost::config::Config::parse(
            "services:
  a: {url: 'https://a', credentials: {s3_signing: {environment_credentials: {}}}}
  b: {url: 'https://b', credentials: {gcp_metadata: {}}}
  c: {url: 'https://c', credentials: {azure_managed_identity: {}}}
  d: {url: 'https://d', credentials: {bearer: {token: t}}}
  e: {url: 'https://e', type: OCI}
",
            &|_| None,
        )
        .unwrap();
        let registry = registry();
        let types: Vec<String> = config
            .services
            .iter()
            .map(|s| registry.resolve(s).unwrap().service_type().to_string())
            .collect();
        assert_eq!(types, ["s3", "gcs", "azure", "http", "oci"]);
    }

    #[test]
    fn only_oci_services_learn_origins() {
        let config = polhost::config::Config::parse(
            "services:\n  web:\n    url: http://127.0.0.1:8181\n  reg:\n    type: OCI\n    url: https://registry.example.com\n",
            &|_| None,
        )
        .unwrap();
        let registry = registry();
        let grants: Vec<_> = config
            .services
            .iter()
            .map(|s| registry.resolve(s).unwrap().grant(s, &|_| None))
            .collect();
        assert_eq!(grants[0].policy, OriginPolicy::Fixed);
        assert_eq!(grants[1].policy, OriginPolicy::LearnRedirectsAndTokenRealms);
    }
}
