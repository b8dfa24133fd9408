//! `keys` and `bundles.<name>.signing`: the keys bundle signatures are
//! verified with, and which of them a bundle uses. Owns parsing and the
//! field-path errors; the keys' material is parsed and used by
//! [`polhost_bundle`].

use super::error::ConfigError;
use super::tree::{self, Node};
use polhost_bundle::{ALGORITHMS, Key, Secret, Signing};
use serde::Deserialize;

const KEY_KEYS: &[&str] = &["key", "algorithm", "scope"];

/// The fields read through serde. Not `key`: serde's type errors quote
/// the value (`invalid type: integer `12345678``), and an HMAC key is a
/// secret; it is read by hand, its errors naming only its kind.
#[derive(Deserialize)]
#[serde(expecting = "a map")]
struct KeySection {
    algorithm: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a map", deny_unknown_fields)]
struct SigningSection {
    keyid: Option<String>,
    scope: Option<String>,
    exclude_files: Option<Vec<String>>,
}

/// Reads `keys` (a map keyed by key id).
pub(crate) fn parse_keys(
    node: Option<&Node>,
    ignored: &mut Vec<String>,
) -> Result<Vec<Key>, ConfigError> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    let mut keys = Vec::new();
    for (id, value) in node.entries("keys")? {
        let path = tree::join("keys", id);
        for (key, _) in value.entries(&path)? {
            // `private_key` signs decision logs and bundles in OPA: not
            // polhost's job.
            if !KEY_KEYS.contains(&key.as_str()) {
                ignored.push(tree::join(&path, key));
            }
        }
        let section: KeySection = tree::deserialize(value, &path)?;
        let key_path = tree::join(&path, "key");
        let key = match value
            .get("key")
            .map(|key| key.opt_str(&key_path))
            .transpose()?
        {
            Some(Some(key)) if !key.is_empty() => Secret::new(key.to_string()),
            _ => {
                return Err(ConfigError::invalid(
                    key_path,
                    "required (a PEM public key, or the HMAC secret for HS256/384/512)",
                ));
            }
        };
        let algorithm = section.algorithm.unwrap_or_else(|| "RS256".to_string());
        if !ALGORITHMS.contains(&algorithm.as_str()) {
            return Err(ConfigError::invalid(
                tree::join(&path, "algorithm"),
                format!(
                    "unsupported algorithm {algorithm:?} (one of {})",
                    ALGORITHMS.join(", ")
                ),
            ));
        }
        keys.push(Key {
            id: id.clone(),
            key,
            algorithm,
            scope: section.scope.unwrap_or_default(),
        });
    }
    Ok(keys)
}

/// Reads `bundles.<name>.signing` at `path`; `keyid` must name one of `keys`.
pub(crate) fn parse_signing(node: &Node, path: &str, keys: &[Key]) -> Result<Signing, ConfigError> {
    let section: SigningSection = tree::deserialize(node, path)?;
    if let Some(keyid) = &section.keyid
        && !keys.iter().any(|k| &k.id == keyid)
    {
        return Err(ConfigError::invalid(
            tree::join(path, "keyid"),
            format!("no key {keyid:?} in keys"),
        ));
    }
    Ok(Signing {
        keyid: section.keyid.filter(|k| !k.is_empty()),
        scope: section.scope,
        exclude_files: section.exclude_files.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use crate::tests::{error, parse};

    const SERVICE: &str = "services:\n  s:\n    url: https://example.com\n";

    #[test]
    fn keys_and_signing_are_read_not_ignored() {
        let config = parse(&format!(
            "{SERVICE}keys:\n  k1:\n    key: ${{TOKEN}}\n    algorithm: HS256\n    scope: write\n  k2:\n    key: pem\n\
             bundles:\n  authz:\n    signing:\n      keyid: k1\n      scope: read\n      exclude_files: ['*.md']\n"
        ));
        assert!(config.ignored_keys.is_empty(), "{:?}", config.ignored_keys);
        assert_eq!(config.keys.len(), 2);
        assert_eq!(config.keys[0].id, "k1");
        assert_eq!(config.keys[0].key.expose(), "s3cr3t-t0ken");
        assert_eq!(config.keys[0].algorithm, "HS256");
        assert_eq!(config.keys[0].scope, "write");
        assert_eq!(config.keys[1].algorithm, "RS256", "OPA's default");
        let signing = config.bundles[0].signing.as_ref().unwrap();
        assert_eq!(signing.keyid.as_deref(), Some("k1"));
        assert_eq!(signing.scope.as_deref(), Some("read"));
        assert_eq!(signing.exclude_files, ["*.md"]);
        assert!(!format!("{config:?}").contains("s3cr3t-t0ken"));
    }

    #[test]
    fn key_errors_name_the_field() {
        assert_eq!(
            error("keys:\n  k:\n    algorithm: RS256\n"),
            "keys.k.key: required (a PEM public key, or the HMAC secret for HS256/384/512)"
        );
        assert!(
            error("keys:\n  k:\n    key: x\n    algorithm: none\n")
                .starts_with("keys.k.algorithm: unsupported algorithm \"none\""),
        );
        assert!(error("keys:\n  k:\n    key: [a]\n").starts_with("keys.k.key: invalid type"),);
    }

    #[test]
    fn signing_keyid_must_name_a_key() {
        assert_eq!(
            error(&format!(
                "{SERVICE}keys:\n  k:\n    key: x\nbundles:\n  authz:\n    signing:\n      keyid: other\n"
            )),
            "bundles.authz.signing.keyid: no key \"other\" in keys"
        );
        let message = error(&format!(
            "{SERVICE}bundles:\n  authz:\n    signing:\n      exclude_files: '*.md'\n"
        ));
        assert!(
            message.starts_with("bundles.authz.signing.exclude_files: invalid type"),
            "{message}"
        );
    }

    /// Issue 10, item 5: serde's "invalid type: integer `12345678`" printed
    /// the HMAC key.
    #[test]
    fn numeric_hmac_key_is_not_printed_in_the_error() {
        assert_eq!(
            error("keys: {k: {algorithm: HS256, key: 12345678}}\n"),
            "keys.k.key: invalid type: a number, expected a string"
        );
        for value in ["1234.5678", "true", "[12345678]", "{a: 12345678}"] {
            let message = error(&format!("keys: {{k: {{key: {value}}}}}\n"));
            assert!(
                message.starts_with("keys.k.key: invalid type: "),
                "{message}"
            );
            assert!(
                !message.contains("1234") && !message.contains("true"),
                "{message}"
            );
        }
    }

    #[test]
    fn numeric_hmac_key_set_on_the_command_line_is_not_printed() {
        let set = crate::Override::parse_set("keys.k.key=12345678").unwrap();
        let message = crate::Config::parse_with_overrides("", &crate::tests::test_env, &[set])
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "--set keys.k.key: invalid type: a number, expected a string"
        );
    }

    #[test]
    fn private_key_is_reported_ignored() {
        let config = parse("keys:\n  k:\n    key: x\n    private_key: y\n");
        assert_eq!(config.ignored_keys, ["keys.k.private_key"]);
    }
}
