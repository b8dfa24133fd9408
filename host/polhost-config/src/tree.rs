//! The configuration document as an ordered tree of JSON-like values (YAML
//! tags dropped, keys as strings, `<<` merges applied; `yaml.rs` builds
//! it), plus the helpers the sections use to read it. Owns "where": it
//! builds field paths.

use super::error::ConfigError;
use serde::de::DeserializeOwned;

/// One value of the document. Maps keep file order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
}

/// An empty map, for sections written as `key:` with nothing after.
pub(crate) const EMPTY: &[(String, Node)] = &[];

impl Node {
    /// "a string", "a map", ...: for messages that must not show the value.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Number(_) => "a number",
            Node::String(_) => "a string",
            Node::List(_) => "a list",
            Node::Map(_) => "a map",
        }
    }

    /// The value under `key`, if this is a map holding it.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The entries of a map (`null` counts as an empty map); an error at
    /// `path` naming only the kind of anything else.
    pub(crate) fn entries(&self, path: &str) -> Result<&[(String, Node)], ConfigError> {
        match self {
            Node::Map(entries) => Ok(entries),
            Node::Null => Ok(EMPTY),
            other => Err(ConfigError::invalid(
                path,
                format!("invalid type: {}, expected a map", other.kind()),
            )),
        }
    }

    /// The string, `None` for null; an error at `path` naming only the kind
    /// of anything else (safe for credentials).
    pub(crate) fn opt_str(&self, path: &str) -> Result<Option<&str>, ConfigError> {
        match self {
            Node::String(s) => Ok(Some(s)),
            Node::Null => Ok(None),
            other => Err(ConfigError::invalid(
                path,
                format!("invalid type: {}, expected a string", other.kind()),
            )),
        }
    }

    /// The same value as JSON.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            Node::Null => serde_json::Value::Null,
            Node::Bool(b) => serde_json::Value::Bool(*b),
            Node::Number(n) => serde_json::Value::Number(n.clone()),
            Node::String(s) => serde_json::Value::String(s.clone()),
            Node::List(items) => {
                serde_json::Value::Array(items.iter().map(Node::to_json).collect())
            }
            Node::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Lists as ignored (by field path) every key of the map at `path` that is
/// not one of `known`: accepted, reported, never silently dropped.
pub(crate) fn report_unknown_keys(
    node: &Node,
    path: &str,
    known: &[&str],
    ignored: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (key, _) in node.entries(path)? {
        if !known.contains(&key.as_str()) {
            ignored.push(join(path, key));
        }
    }
    Ok(())
}

/// `base.key` (just `key` at the top); an empty key shows as `""`.
pub(crate) fn join(base: &str, key: &str) -> String {
    let key = if key.is_empty() { "\"\"" } else { key };
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

/// `base[i]`.
pub(crate) fn index(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// Deserializes a section (a map, `null` read as an empty map) into its
/// typed form; a type error names the field below `path` that has it.
pub(crate) fn deserialize<T: DeserializeOwned>(node: &Node, path: &str) -> Result<T, ConfigError> {
    let json = match node {
        Node::Null => serde_json::Value::Object(serde_json::Map::new()),
        Node::Map(_) => node.to_json(),
        other => {
            return Err(ConfigError::invalid(
                path,
                format!("invalid type: {}, expected a map", other.kind()),
            ));
        }
    };
    serde_path_to_error::deserialize(json).map_err(|error| {
        let inner = error.path().to_string();
        let field = if inner == "." {
            path.to_string()
        } else if inner.starts_with('[') {
            format!("{path}{inner}")
        } else {
            join(path, &inner)
        };
        ConfigError::invalid(field, error.into_inner().to_string())
    })
}
