//! What a bundle is and whether one is acceptable: the checks a downloaded
//! or persisted `bundle.tar.gz` must pass before it may become active.
//!
//! Streams: it reads the archive once, front to back, in constant memory,
//! and never writes anything.

mod manifest;
#[cfg(test)]
pub(crate) mod testing;
mod validate;

pub use manifest::Manifest;
pub use validate::{BundleError, BundleSummary, ValidationLimits, validate};
