//! `polhost.bundle`: polhost's own bounds on what an archive may expand to,
//! beyond OPA's `size_limit_bytes`. Owns their parsing and defaults; the
//! checks themselves are [`polhost_bundle`]'s.

use super::error::ConfigError;
use super::tree::{self, Node};
use polhost_bundle as bundle;
use serde::Deserialize;

/// `polhost.bundle`: caps applied to every bundle, whatever its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleLimits {
    /// `max_expansion_ratio`: uncompressed bytes per compressed byte (past
    /// the first MiB); default 200.
    pub max_expansion_ratio: u64,
    /// `max_uncompressed_bytes`: the whole archive, uncompressed; default
    /// 8 GiB.
    pub max_uncompressed_bytes: u64,
    /// `max_data_keys`: object keys of overlapping data files held in
    /// memory to check their merge (data files themselves stream);
    /// default 1,000,000.
    pub max_data_keys: u64,
}

impl Default for BundleLimits {
    fn default() -> BundleLimits {
        BundleLimits {
            max_expansion_ratio: bundle::DEFAULT_MAX_EXPANSION_RATIO,
            max_uncompressed_bytes: bundle::DEFAULT_MAX_UNCOMPRESSED_BYTES,
            max_data_keys: bundle::DEFAULT_MAX_DATA_KEYS,
        }
    }
}

impl BundleLimits {
    /// The limits a bundle with `size_limit_bytes` is validated with.
    pub fn for_bundle(&self, size_limit_bytes: u64) -> bundle::ValidationLimits {
        bundle::ValidationLimits {
            file_size_limit: size_limit_bytes,
            max_expansion_ratio: self.max_expansion_ratio,
            max_uncompressed_bytes: self.max_uncompressed_bytes,
            max_data_keys: self.max_data_keys,
        }
    }
}

const POLHOST_KEYS: &[&str] = &["bundle", "fetchers", "server"];

#[derive(Deserialize)]
#[serde(expecting = "a map", deny_unknown_fields)]
struct Section {
    max_expansion_ratio: Option<u64>,
    max_uncompressed_bytes: Option<u64>,
    max_data_keys: Option<u64>,
}

/// Reads `polhost.bundle`; other keys under `polhost` are reported ignored.
pub(crate) fn parse(
    node: Option<&Node>,
    ignored: &mut Vec<String>,
) -> Result<BundleLimits, ConfigError> {
    let Some(node) = node else {
        return Ok(BundleLimits::default());
    };
    for (key, _) in node.entries("polhost")? {
        if !POLHOST_KEYS.contains(&key.as_str()) {
            ignored.push(tree::join("polhost", key));
        }
    }
    let Some(section) = node.get("bundle") else {
        return Ok(BundleLimits::default());
    };
    let section: Section = tree::deserialize(section, "polhost.bundle")?;
    let mut limits = BundleLimits::default();
    for (value, field, name) in [
        (
            section.max_expansion_ratio,
            &mut limits.max_expansion_ratio,
            "max_expansion_ratio",
        ),
        (
            section.max_uncompressed_bytes,
            &mut limits.max_uncompressed_bytes,
            "max_uncompressed_bytes",
        ),
        (
            section.max_data_keys,
            &mut limits.max_data_keys,
            "max_data_keys",
        ),
    ] {
        match value {
            None => {}
            Some(0) => {
                return Err(ConfigError::invalid(
                    format!("polhost.bundle.{name}"),
                    "must be > 0",
                ));
            }
            Some(v) => *field = v,
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use crate::tests::{error, parse};

    #[test]
    fn defaults_apply_without_a_polhost_key() {
        let limits = parse("").bundle_limits;
        assert_eq!(limits.max_expansion_ratio, 200);
        assert_eq!(limits.max_uncompressed_bytes, 8 << 30);
        assert_eq!(limits.max_data_keys, 1_000_000);
    }

    #[test]
    fn bundle_limits_are_read() {
        let config = parse(
            "polhost:\n  bundle:\n    max_expansion_ratio: 50\n    max_uncompressed_bytes: 1000\n    max_data_keys: 7\n",
        );
        let limits = config.bundle_limits;
        assert_eq!(
            (
                limits.max_expansion_ratio,
                limits.max_uncompressed_bytes,
                limits.max_data_keys
            ),
            (50, 1000, 7)
        );
        assert!(config.ignored_keys.is_empty(), "{:?}", config.ignored_keys);
    }

    #[test]
    fn bad_limits_name_the_field() {
        assert_eq!(
            error("polhost:\n  bundle:\n    max_expansion_ratio: 0\n"),
            "polhost.bundle.max_expansion_ratio: must be > 0"
        );
        assert!(
            error("polhost:\n  bundle:\n    max_uncompressed_bytes: lots\n")
                .starts_with("polhost.bundle.max_uncompressed_bytes: invalid type"),
        );
        let message = error("polhost:\n  bundle:\n    max_ratio: 3\n");
        assert!(
            message.starts_with("polhost.bundle") && message.contains("unknown field `max_ratio`"),
            "{message}"
        );
    }
}
