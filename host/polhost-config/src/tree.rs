//! The configuration document as an ordered tree of JSON-like values (YAML
//! tags dropped, keys as strings, `<<` merges applied), plus the helpers the
//! sections use to read it. Owns "where": it builds field paths.

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

/// Parses YAML text into a tree.
pub(crate) fn parse(text: &str) -> Result<Node, ConfigError> {
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ConfigError::yaml(&e))?;
    value.apply_merge().map_err(|e| ConfigError::yaml(&e))?;
    from_yaml(value, "")
}

fn from_yaml(value: serde_yaml::Value, path: &str) -> Result<Node, ConfigError> {
    use serde_yaml::Value;
    Ok(match value {
        Value::Null => Node::Null,
        Value::Bool(b) => Node::Bool(b),
        Value::Number(n) => Node::Number(number(&n, path)?),
        Value::String(s) => Node::String(s),
        Value::Sequence(items) => Node::List(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| from_yaml(item, &index(path, i)))
                .collect::<Result<_, _>>()?,
        ),
        Value::Mapping(mapping) => {
            let mut entries: Vec<(String, Node)> = Vec::with_capacity(mapping.len());
            for (key, value) in mapping {
                let key = map_key(key, path)?;
                let child = join(path, &key);
                if entries.iter().any(|(k, _)| *k == key) {
                    return Err(ConfigError::invalid(child, "duplicate key"));
                }
                let value = from_yaml(value, &child)?;
                entries.push((key, value));
            }
            Node::Map(entries)
        }
        // OPA reads YAML into JSON, which has no tags: keep the value.
        Value::Tagged(tagged) => from_yaml(tagged.value, path)?,
    })
}

fn number(n: &serde_yaml::Number, path: &str) -> Result<serde_json::Number, ConfigError> {
    if let Some(u) = n.as_u64() {
        Ok(u.into())
    } else if let Some(i) = n.as_i64() {
        Ok(i.into())
    } else {
        n.as_f64()
            .and_then(serde_json::Number::from_f64)
            .ok_or_else(|| ConfigError::invalid(path, "not a finite number"))
    }
}

/// A map key as JSON has it: strings as they are, numbers and booleans as
/// their text (what OPA's YAML-to-JSON conversion does).
fn map_key(key: serde_yaml::Value, path: &str) -> Result<String, ConfigError> {
    use serde_yaml::Value;
    match key {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Tagged(tagged) => map_key(tagged.value, path),
        Value::Null | Value::Sequence(_) | Value::Mapping(_) => Err(ConfigError::invalid(
            path,
            "map keys must be strings, numbers or booleans",
        )),
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

#[cfg(test)]
mod tests {
    use super::{Node, parse};

    #[test]
    fn maps_keep_file_order() {
        let node = parse("b: 1\na: 2\nc: 3\n").unwrap();
        let Node::Map(entries) = node else {
            panic!("not a map")
        };
        let keys: Vec<_> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "c"]);
    }

    #[test]
    fn non_string_keys_become_strings() {
        let node = parse("1: a\ntrue: b\n").unwrap();
        assert_eq!(node.get("1"), Some(&Node::String("a".into())));
        assert_eq!(node.get("true"), Some(&Node::String("b".into())));
    }

    #[test]
    fn merge_keys_are_applied() {
        let node = parse("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n").unwrap();
        let other = node.get("other").unwrap();
        assert_eq!(other.get("x"), Some(&Node::Number(1.into())));
        assert_eq!(other.get("y"), Some(&Node::Number(2.into())));
    }

    #[test]
    fn tags_are_dropped() {
        let node = parse("a: !custom hello\n").unwrap();
        assert_eq!(node.get("a"), Some(&Node::String("hello".into())));
    }

    #[test]
    fn key_duplicated_after_conversion_names_it() {
        let error = parse("top:\n  1: a\n  \"1\": b\n").unwrap_err();
        assert_eq!(error.to_string(), "top.1: duplicate key");
    }

    #[test]
    fn infinite_number_names_the_field() {
        let error = parse("a:\n  - .inf\n").unwrap_err();
        assert_eq!(error.to_string(), "a[0]: not a finite number");
    }
}
