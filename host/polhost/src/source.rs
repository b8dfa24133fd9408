//! Getting a fetcher component's bytes from where its descriptor says they
//! are: memory, a file (its digest checked when the entry gives one), or an
//! OCI registry (pulled by digest, verified, cached content-addressed, so a
//! later start needs no registry).
//!
//! Owns "which bytes"; compiling and checking them against the contract is
//! the runtime's.

use std::path::PathBuf;

use crate::fetcher::ComponentSource;
use crate::runtime::{ComponentCache, cache_digest};

/// The most a component file or pulled layer may hold. The standard
/// fetchers are 0.1-0.4 MiB, a componentize-py fetcher ~20 MiB.
pub(crate) const MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// Why a component's bytes could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The file could not be read.
    #[error("{path}: cannot read the component: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The bytes are not those the configuration pins.
    #[error(
        "{location}: digest mismatch: the configuration says {expected}, the component is {actual}"
    )]
    DigestMismatch {
        /// Where the component came from.
        location: String,
        /// The configured digest.
        expected: String,
        /// The bytes' digest.
        actual: String,
    },
    /// Larger than [`MAX_COMPONENT_BYTES`].
    #[error("{location}: the component is larger than {MAX_COMPONENT_BYTES} bytes")]
    TooLarge {
        /// Where the component came from.
        location: String,
    },
    /// The registry could not be asked, or its answer is unusable.
    #[error("oci://{reference}: {message}")]
    Oci {
        /// The reference.
        reference: String,
        /// What went wrong (never a credential).
        message: String,
    },
}

/// The component's bytes.
pub(crate) async fn component_bytes(
    source: &ComponentSource,
    cache: Option<&ComponentCache>,
) -> Result<Vec<u8>, SourceError> {
    match source {
        ComponentSource::Bytes(bytes) => Ok(bytes.to_vec()),
        ComponentSource::File { path, digest } => {
            let read = |error| SourceError::Read {
                path: path.clone(),
                error,
            };
            let size = std::fs::metadata(path).map_err(read)?.len();
            if size > MAX_COMPONENT_BYTES {
                return Err(SourceError::TooLarge {
                    location: path.display().to_string(),
                });
            }
            let bytes = std::fs::read(path).map_err(read)?;
            if let Some(expected) = digest {
                check_digest(&path.display().to_string(), expected, &bytes)?;
            }
            Ok(bytes)
        }
        ComponentSource::Oci {
            reference,
            digest,
            credentials,
            insecure,
        } => {
            if let Some(bytes) = cache.and_then(|c| c.pulled(digest)) {
                tracing::debug!(reference = %reference, %digest, "component loaded from the cache, no registry asked");
                return Ok(bytes);
            }
            let bytes = pull(reference, digest, credentials.as_ref(), *insecure).await?;
            check_digest(&format!("oci://{reference}"), digest, &bytes)?;
            if let Some(cache) = cache {
                cache.keep_pulled(digest, &bytes);
            }
            Ok(bytes)
        }
    }
}

fn check_digest(location: &str, expected: &str, bytes: &[u8]) -> Result<(), SourceError> {
    let actual = cache_digest(bytes);
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(SourceError::DigestMismatch {
            location: location.to_string(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

#[cfg(feature = "oci")]
use crate::oci::pull;

#[cfg(not(feature = "oci"))]
async fn pull(
    reference: &str,
    _digest: &str,
    _credentials: Option<&crate::config::BearerCredentials>,
    _insecure: bool,
) -> Result<Vec<u8>, SourceError> {
    Err(SourceError::Oci {
        reference: reference.to_string(),
        message: "this polhost was built without the `oci` feature: pulling components from registries is not available".into(),
    })
}
