//! The names of the files polhost keeps in a bundle's directory
//! (`<persistence_directory>/bundles/<name>/`). They live here, beside the
//! bundle-name rules, because a nested name (`a/bundle.tar.gz`) must not
//! take one of them from bundle `a`; the store writes them.

/// The bundle file.
pub const BUNDLE_FILE: &str = "bundle.tar.gz";
/// The metadata beside it.
pub const METADATA_FILE: &str = "metadata.json";
/// The bundle that was current before the last commit.
pub const PREVIOUS_BUNDLE_FILE: &str = "previous.tar.gz";
/// Its metadata.
pub const PREVIOUS_METADATA_FILE: &str = "previous.metadata.json";
/// Temp files start with this, so leftovers of a crash are recognisable.
pub const TEMP_PREFIX: &str = ".download-";

/// The files that are read back.
pub const KEPT_FILES: [&str; 4] = [
    BUNDLE_FILE,
    METADATA_FILE,
    PREVIOUS_BUNDLE_FILE,
    PREVIOUS_METADATA_FILE,
];
