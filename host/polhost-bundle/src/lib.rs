//! What an OPA bundle is and whether one is acceptable: the checks a
//! downloaded or persisted `bundle.tar.gz` must pass before it may become
//! active (archive safety, OPA's rules, signatures, limits).
//!
//! Streams: it reads the archive once, front to back, in bounded memory,
//! and never writes anything; only when data files overlap does it read
//! the bundle's file a second time ([`FirstLook::finish`]). It has no runtime (no wasmtime, no tokio), so
//! it stands alone: the fuzz targets and any embedder use it as it is.
//!
//! ```
//! use polhost_bundle::{ValidationLimits, validate};
//!
//! // Not gzip: refused, with the reason.
//! let text = std::io::Cursor::new(b"plain text");
//! let err = validate(text, ValidationLimits::new(1 << 20)).unwrap_err();
//! assert!(err.to_string().contains("gzip"), "{err}");
//! ```

#![deny(missing_docs)]

mod data;
mod digest;
mod keys;
mod manifest;
mod paths;
mod rules;
mod secret;
mod signing;
#[cfg(test)]
pub(crate) mod testing;
mod validate;
mod yaml;

pub use digest::HashingReader;
pub use keys::{ALGORITHMS, Key, Signing};
pub use manifest::{Manifest, WasmResolver};
pub use rules::roots_overlap;
pub use secret::Secret;
pub use signing::{Verification, canonical_json, canonical_yaml};
pub use validate::{
    BundleError, BundleSummary, DEFAULT_MAX_DATA_KEYS, DEFAULT_MAX_EXPANSION_RATIO,
    DEFAULT_MAX_UNCOMPRESSED_BYTES, EXPANSION_GRACE_BYTES, FirstLook, ValidationLimits, validate,
    validate_stream, validate_with,
};
