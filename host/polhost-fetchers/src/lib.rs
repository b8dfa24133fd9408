//! polhost's standard fetchers: the components for `http`, `oci`, `s3`,
//! `azure` and `gcs`, compiled from `guest/` by the build script and carried
//! inside this crate, and the descriptor of each (what it accepts, how its
//! grant is derived). The core knows none of them: this crate hands them
//! over as data, the same kind a plugin is.
//!
//! An embedding, whole: a bundle server on 127.0.0.1 (polhost's own
//! `serve`), an agent with the standard fetchers, one poll, and the active
//! bundle read back.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::Read;
//! use polhost::{Agent, config::Config};
//!
//! // A directory of bundles, served as OPA's REST bundle protocol.
//! let www = tempfile::tempdir()?;
//! std::fs::create_dir(www.path().join("bundles"))?;
//! let bundle = include_bytes!("../../../examples/quickstart/bundles/authz.tar.gz");
//! std::fs::write(www.path().join("bundles/authz.tar.gz"), bundle)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}", listener.local_addr()?);
//! let stop = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(polhost::server::serve_dir(www.path().into(), listener, stop.clone()));
//!
//! let config = Config::parse(
//!     &format!("services:\n  local:\n    url: {url}\nbundles:\n  authz: {{}}\n"),
//!     &|_| None,
//! )?;
//! let state = tempfile::tempdir()?;
//! let agent = Agent::builder(config)
//!     .fetchers(polhost_fetchers::registry())
//!     .persistence_directory(state.path())
//!     .build()
//!     .await?;
//! assert_eq!(agent.run_once().await, 0, "every bundle is active");
//! let active = agent.current("authz").expect("authz is active");
//! assert_eq!(active.revision, "quickstart-1");
//! let mut bytes = Vec::new();
//! active.reader().read_to_end(&mut bytes)?;
//! assert_eq!(bytes, bundle);
//! # stop.cancel();
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

/// Each standard fetcher's service type and the `sha256:<hex>` digest of
/// its component, in the registry's order: what `polhost --version` shows
/// and what `polhost.fetchers.<type>.digest` would pin.
pub fn digests() -> Vec<(&'static str, String)> {
    use sha2::Digest;
    STANDARD
        .iter()
        .map(|(name, wasm)| {
            (
                *name,
                format!("sha256:{}", hex::encode(sha2::Sha256::digest(wasm))),
            )
        })
        .collect()
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
    fn digests_name_every_standard_fetcher() {
        let digests = digests();
        let types: Vec<_> = digests.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, ["http", "oci", "s3", "azure", "gcs"]);
        for (_, digest) in &digests {
            assert!(
                digest.starts_with("sha256:") && digest.len() == 71,
                "{digest}"
            );
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
