//! What a bundle is and whether one is acceptable: the checks a downloaded
//! or persisted `bundle.tar.gz` must pass before it may become active.
//!
//! Streams: it reads the archive once, front to back, in constant memory,
//! and never writes anything.

mod manifest;
mod rules;
mod signing;
#[cfg(test)]
pub(crate) mod testing;
mod validate;

pub use manifest::{Manifest, WasmResolver};
pub use rules::roots_overlap;
pub use signing::{Verification, canonical_json, canonical_yaml};
pub use validate::{
    BundleError, BundleSummary, DEFAULT_MAX_DATA_KEYS, DEFAULT_MAX_EXPANSION_RATIO,
    DEFAULT_MAX_UNCOMPRESSED_BYTES, EXPANSION_GRACE_BYTES, ValidationLimits, validate,
    validate_with,
};
