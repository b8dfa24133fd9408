//! YAML (and JSON, a subset of it) text to the configuration's tree.
//! Owns the parser, serde-saphyr, and the budgets that keep hostile text
//! (alias bombs, deep nesting, huge scalars) from costing more than a
//! bounded amount of memory and time; the tree is built only from what
//! fits them.
//!
//! The parser reads into [`Raw`] (keys of any kind, floats as they are);
//! [`from_raw`] then makes the [`Node`] tree OPA's YAML-to-JSON conversion
//! would: keys as strings, non-finite numbers refused, each error at its
//! field path.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{DuplicateKeyPolicy, MergeKeyPolicy, NonFiniteFloatPolicy};

use super::error::ConfigError;
use super::read::{MAX_CONFIG_BYTES, show_size};
use super::tree::{self, Node};

/// The most values (scalars, lists and maps) a document may hold, each
/// use of an alias counted again: ample for any OPA configuration, and
/// what bounds the tree's memory (tens of MiB at most).
pub(crate) const MAX_NODES: usize = 250_000;
/// The deepest nesting of lists and maps (OPA's own sections are at most
/// five deep); also bounds the recursion of building and dropping a tree.
pub(crate) const MAX_DEPTH: usize = 64;
/// The most aliases (`*name`) and anchors (`&name`) a document may use.
pub(crate) const MAX_ALIASES: usize = 10_000;
/// The most bytes of scalar text, each use of an alias counted again: four
/// times the file cap, so aliases cannot multiply a small file's text.
pub(crate) const MAX_SCALAR_BYTES: usize = 4 * MAX_CONFIG_BYTES;

/// The parser's settings: the budgets above, and the YAML reading the
/// configuration had with serde_yaml (YAML 1.2 booleans, `0755` and `1_000`
/// as strings, duplicate keys refused, `<<` merges applied).
fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(MAX_CONFIG_BYTES),
            max_events: 4 * MAX_NODES,
            max_aliases: MAX_ALIASES,
            max_anchors: MAX_ALIASES,
            max_recorded_anchor_events: MAX_NODES,
            max_recorded_anchor_bytes: MAX_SCALAR_BYTES,
            max_depth: MAX_DEPTH,
            max_documents: 1,
            max_nodes: MAX_NODES,
            max_total_scalar_bytes: MAX_SCALAR_BYTES,
            max_merge_keys: MAX_ALIASES,
            // Counts, not a ratio, bound the cost: one anchor merged into
            // hundreds of bundles is a fair configuration.
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_NODES,
            max_replay_stack_depth: MAX_DEPTH,
        },
        duplicate_keys: DuplicateKeyPolicy::Error,
        merge_keys: MergeKeyPolicy::Merge,
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        // Refused by `from_raw`, which names the field.
        non_finite_float_policy: NonFiniteFloatPolicy::PassThrough,
        // A snippet would quote the text around the error: a token's line.
        with_snippet: false,
    }
}

/// Parses YAML text into a tree.
pub(crate) fn parse(text: &str) -> Result<Node, ConfigError> {
    let raw: Raw = serde_saphyr::from_str_with_options(text, options()).map_err(|e| error(&e))?;
    from_raw(raw, "")
}

/// The parser's error as polhost words it: where, and what, never a value.
fn error(error: &serde_saphyr::Error) -> ConfigError {
    use serde_saphyr::Error;
    let location = error.location();
    let line = location.map(|l| l.line() as usize);
    let column = location.map(|l| l.column() as usize);
    let at = |what: String| match (line, column) {
        (Some(line), Some(column)) => format!("{what} at line {line}, column {column}"),
        _ => what,
    };
    let message = match cause(error) {
        Error::DuplicateMappingKey { key: Some(key), .. } => {
            at(format!("duplicate entry with key {key:?}"))
        }
        Error::DuplicateMappingKey { key: None, .. } => at("duplicate entry".to_string()),
        Error::Budget { breach, .. } => at(over_budget(breach)),
        Error::AliasReplayLimitExceeded { .. } | Error::AliasExpansionLimitExceeded { .. } => at(
            format!("aliases expand to more than {MAX_NODES} values, polhost's limit"),
        ),
        Error::AliasReplayStackDepthExceeded { .. } => at(format!(
            "aliases nest deeper than {MAX_DEPTH} levels, polhost's limit"
        )),
        Error::MultipleDocuments { .. } => {
            at("more than one YAML document: a configuration is one".to_string())
        }
        other => other.to_string(),
    };
    ConfigError::yaml(line, column, message)
}

/// The error itself, out of the wrappers that add where an alias was
/// defined or a snippet of the text.
fn cause(error: &serde_saphyr::Error) -> &serde_saphyr::Error {
    match error.without_snippet() {
        serde_saphyr::Error::AliasError { error, .. } => cause(error),
        other => other,
    }
}

/// What a budget breach means for the operator.
fn over_budget(breach: &BudgetBreach) -> String {
    let counted_again = "each use of an alias counts again";
    match breach {
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => {
            format!("more than {MAX_NODES} values, polhost's limit ({counted_again})")
        }
        BudgetBreach::Depth { .. } => {
            format!("nested deeper than {MAX_DEPTH} levels, polhost's limit")
        }
        BudgetBreach::Aliases { .. } => format!("more than {MAX_ALIASES} aliases, polhost's limit"),
        BudgetBreach::Anchors { .. } => format!("more than {MAX_ALIASES} anchors, polhost's limit"),
        BudgetBreach::MergeKeys { .. } => {
            format!("more than {MAX_ALIASES} merge keys, polhost's limit")
        }
        BudgetBreach::ScalarBytes { .. } | BudgetBreach::RecordedAnchorBytes { .. } => format!(
            "more than {} of text in values, polhost's limit ({counted_again})",
            show_size(MAX_SCALAR_BYTES)
        ),
        BudgetBreach::RecordedAnchorEvents { .. } => {
            format!("anchors hold more than {MAX_NODES} values, polhost's limit")
        }
        BudgetBreach::Documents { .. } => {
            "more than one YAML document: a configuration is one".to_string()
        }
        BudgetBreach::InputBytes { .. } => format!(
            "larger than {}, polhost's limit",
            show_size(MAX_CONFIG_BYTES)
        ),
        // Counts only: no text of the document.
        other => format!("beyond polhost's YAML limits ({other:?})"),
    }
}

/// A YAML value as the parser gives it.
#[derive(Debug)]
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    List(Vec<Raw>),
    Map(Vec<(Raw, Raw)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Raw, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        Raw::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        Raw::deserialize(deserializer)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Raw, E> {
        Ok(Raw::Int(i))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Raw, E> {
        Ok(Raw::UInt(u))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Raw, E> {
        Ok(Raw::Float(f))
    }

    fn visit_str<E>(self, s: &str) -> Result<Raw, E> {
        Ok(Raw::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Raw, E> {
        Ok(Raw::String(s))
    }

    /// `!!binary`: JSON has no bytes; UTF-8 text is kept as a string.
    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Raw, E> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Raw::String(s.to_string())),
            Err(_) => Err(E::custom("a !!binary value that is not UTF-8 text")),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Raw::Map(entries))
    }
}

/// The tree of `raw`, whose place in the document is `path`.
fn from_raw(raw: Raw, path: &str) -> Result<Node, ConfigError> {
    Ok(match raw {
        Raw::Null => Node::Null,
        Raw::Bool(b) => Node::Bool(b),
        Raw::Int(i) => Node::Number(i.into()),
        Raw::UInt(u) => Node::Number(u.into()),
        Raw::Float(f) => Node::Number(
            serde_json::Number::from_f64(f)
                .ok_or_else(|| ConfigError::invalid(path, "not a finite number"))?,
        ),
        Raw::String(s) => Node::String(s),
        Raw::List(items) => Node::List(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| from_raw(item, &tree::index(path, i)))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Map(raw_entries) => {
            let mut entries: Vec<(String, Node)> = Vec::with_capacity(raw_entries.len());
            // A set, not a scan of `entries`: a map of many keys must not
            // cost their square.
            let mut seen: HashSet<String> = HashSet::with_capacity(raw_entries.len());
            for (key, value) in raw_entries {
                let key = map_key(key, path)?;
                let child = tree::join(path, &key);
                if !seen.insert(key.clone()) {
                    return Err(ConfigError::invalid(child, "duplicate key"));
                }
                let value = from_raw(value, &child)?;
                entries.push((key, value));
            }
            Node::Map(entries)
        }
    })
}

/// A map key as JSON has it: strings as they are, numbers and booleans as
/// their text (what OPA's YAML-to-JSON conversion does).
fn map_key(key: Raw, path: &str) -> Result<String, ConfigError> {
    match key {
        Raw::String(s) => Ok(s),
        Raw::Int(i) => Ok(i.to_string()),
        Raw::UInt(u) => Ok(u.to_string()),
        Raw::Float(f) => Ok(match serde_json::Number::from_f64(f) {
            Some(n) => n.to_string(),
            None if f.is_nan() => ".nan".to_string(),
            None if f > 0.0 => ".inf".to_string(),
            None => "-.inf".to_string(),
        }),
        Raw::Bool(b) => Ok(b.to_string()),
        Raw::Null | Raw::List(_) | Raw::Map(_) => Err(ConfigError::invalid(
            path,
            "map keys must be strings, numbers or booleans",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_DEPTH, MAX_NODES, Node, parse};
    use crate::ConfigError;

    fn yaml_message(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Yaml { message, .. }) => message,
            other => panic!("expected a YAML error, got {other:?}"),
        }
    }

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
        let node = parse("1: a\ntrue: b\n1.5: c\n").unwrap();
        assert_eq!(node.get("1"), Some(&Node::String("a".into())));
        assert_eq!(node.get("true"), Some(&Node::String("b".into())));
        assert_eq!(node.get("1.5"), Some(&Node::String("c".into())));
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
        let node = parse("a: !custom hello\nb: !!str 123\n").unwrap();
        assert_eq!(node.get("a"), Some(&Node::String("hello".into())));
        assert_eq!(node.get("b"), Some(&Node::String("123".into())));
    }

    #[test]
    fn scalars_are_typed_as_serde_yaml_typed_them() {
        // YAML 1.2 booleans only; leading zeros and underscores stay text.
        let node = parse(
            "yes: yes\non: off\nt: True\noctal: 0755\nsep: 1_000\nhex: 0x10\nneg: -5\n\
             half: 1.5\nnothing: ~\n",
        )
        .unwrap();
        assert_eq!(node.get("yes"), Some(&Node::String("yes".into())));
        assert_eq!(node.get("on"), Some(&Node::String("off".into())));
        assert_eq!(node.get("t"), Some(&Node::Bool(true)));
        assert_eq!(node.get("octal"), Some(&Node::String("0755".into())));
        assert_eq!(node.get("sep"), Some(&Node::String("1_000".into())));
        assert_eq!(node.get("hex"), Some(&Node::Number(16.into())));
        assert_eq!(node.get("neg"), Some(&Node::Number((-5).into())));
        assert_eq!(
            node.get("half"),
            Some(&Node::Number(serde_json::Number::from_f64(1.5).unwrap()))
        );
        assert_eq!(node.get("nothing"), Some(&Node::Null));
    }

    #[test]
    fn json_is_yaml() {
        let node = parse("{\n\t\"a\": [1, {\"b\": null}],\n\t\"c\": \"x\"\n}\n").unwrap();
        assert_eq!(node.get("c"), Some(&Node::String("x".into())));
        assert_eq!(
            node.get("a"),
            Some(&Node::List(vec![
                Node::Number(1.into()),
                Node::Map(vec![("b".into(), Node::Null)])
            ]))
        );
    }

    #[test]
    fn key_duplicated_after_conversion_names_it() {
        let error = parse("top:\n  1: a\n  \"1\": b\n").unwrap_err();
        assert_eq!(error.to_string(), "top.1: duplicate key");
    }

    #[test]
    fn duplicate_key_gives_its_line_and_column() {
        assert_eq!(
            yaml_message("bundles:\n  a: {}\n  a: {}\n"),
            "duplicate entry with key \"a\" at line 3, column 3"
        );
    }

    #[test]
    fn infinite_number_names_the_field() {
        let error = parse("a:\n  - .inf\n").unwrap_err();
        assert_eq!(error.to_string(), "a[0]: not a finite number");
    }

    #[test]
    fn more_than_one_document_is_refused() {
        assert!(
            yaml_message("a: 1\n---\nb: 2\n").starts_with("more than one YAML document"),
            "{}",
            yaml_message("a: 1\n---\nb: 2\n")
        );
    }

    /// Issue 10, item 1: 3.8 KB that expand to 90 million values (serde_yaml
    /// went past 1 GiB in 2 s) are refused at the budget.
    #[test]
    fn yaml_alias_bomb_is_refused_within_the_node_budget() {
        let text = alias_bomb();
        assert!(text.len() < 4096);
        let message = yaml_message(&text);
        // Whichever budget it meets first (the anchor's copies, here).
        assert!(
            message.contains(&format!("{MAX_NODES} values, polhost's limit at line ")),
            "{message}"
        );
    }

    /// Nine levels of ten aliases each: the classic billion laughs.
    #[test]
    fn billion_laughs_is_refused() {
        let mut text = String::from("a0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
        for i in 1..9 {
            let aliases = vec![format!("*a{}", i - 1); 10].join(",");
            text.push_str(&format!("a{i}: &a{i} [{aliases}]\n"));
        }
        let message = yaml_message(&text);
        assert!(message.contains("polhost's limit"), "{message}");
    }

    #[test]
    fn an_aliased_large_scalar_is_refused_at_the_text_budget() {
        let text = format!(
            "a: &a {}\nb: [{}]\n",
            "x".repeat(1 << 20),
            vec!["*a"; 64].join(",")
        );
        let message = yaml_message(&text);
        assert!(
            message.starts_with("more than 16 MiB of text in values"),
            "{message}"
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let message = yaml_message(&text);
        assert!(message.contains("polhost's limit"), "{message}");
        let text = format!("{}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn one_anchor_may_be_merged_into_many_maps() {
        let mut text = String::from("defaults: &d {service: s, persist: true}\nbundles:\n");
        for i in 0..500 {
            text.push_str(&format!("  b{i}: {{<<: *d}}\n"));
        }
        let node = parse(&text).unwrap();
        let bundles = node.get("bundles").unwrap().entries("bundles").unwrap();
        assert_eq!(bundles.len(), 500);
    }

    #[test]
    fn a_map_of_many_keys_parses() {
        // As many keys as the node budget allows (a key and a value are
        // two values); duplicates are found with a set, not by a scan of
        // the earlier keys, whose cost would be their square.
        let keys = MAX_NODES / 2 - 1;
        let mut text = String::with_capacity(keys * 10);
        for i in 0..keys {
            text.push_str(&format!("k{i}: 1\n"));
        }
        let node = parse(&text).unwrap();
        assert_eq!(node.entries("").unwrap().len(), keys);
    }

    /// 3.8 KB: 1 000 scalars, aliased 300 times, aliased 300 times.
    pub(crate) fn alias_bomb() -> String {
        format!(
            "a: &a [{}]\nb: &b [{}]\nc: [{}]\n",
            vec!["x"; 1000].join(","),
            vec!["*a"; 300].join(","),
            vec!["*b"; 300].join(",")
        )
    }
}
