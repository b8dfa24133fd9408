//! OPA's bundle rules: roots, the package of each `.rego` file, and where
//! each data file's content lands in `data`.
//!
//! Owns the bookkeeping the streaming validator needs to check these rules
//! once the archive has ended (the `.manifest` may come last); it never
//! holds a data value, only the key structure of the data files.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};

use super::BundleError;

/// A root path as OPA compares them: `/`-separated, no leading or trailing
/// `/`; "" is the root of everything.
pub fn normalise_root(root: &str) -> String {
    root.trim_matches('/').to_string()
}

fn segments(path: &str) -> Vec<&str> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    }
}

/// Whether `path` lies under `root` (segment-wise prefix; "" holds all).
pub fn root_contains(root: &str, path: &str) -> bool {
    let (root, path) = (segments(root), segments(path));
    root.len() <= path.len() && root.iter().zip(&path).all(|(a, b)| a == b)
}

/// Whether two roots overlap: one contains the other.
pub fn roots_overlap(a: &str, b: &str) -> bool {
    root_contains(a, b) || root_contains(b, a)
}

/// The first pair of overlapping roots of one bundle, if any.
pub fn overlapping_pair(roots: &[String]) -> Option<(&str, &str)> {
    for (i, a) in roots.iter().enumerate() {
        for b in &roots[i + 1..] {
            if roots_overlap(a, b) {
                return Some((a, b));
            }
        }
    }
    None
}

/// Reads the `package` declaration at the top of a `.rego` file (after
/// comments and blank lines) and returns its path, `a/b/c` for
/// `package a.b.c` or `package a["b"].c`. Reads no further than the
/// declaration; at most `limit` bytes of leading comments.
pub fn read_package(reader: &mut impl BufRead, limit: u64) -> Result<String, PackageError> {
    let mut line = Vec::new();
    let mut seen = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(PackageError::Io)?;
        if n == 0 {
            return Err(PackageError::Invalid("no package declaration".into()));
        }
        seen += n as u64;
        if seen > limit {
            return Err(PackageError::Invalid(format!(
                "no package declaration in the first {limit} bytes"
            )));
        }
        let text = std::str::from_utf8(&line)
            .map_err(|_| PackageError::Invalid("not UTF-8 text".into()))?;
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let invalid =
            || PackageError::Invalid(format!("invalid package declaration {:?}", truncate(text)));
        let Some(rest) = text.strip_prefix("package") else {
            return Err(PackageError::Invalid(format!(
                "the first statement must be a package declaration, found {:?}",
                truncate(text)
            )));
        };
        if !rest.starts_with([' ', '\t']) {
            return Err(invalid());
        }
        let reference = rest.split('#').next().unwrap_or("").trim();
        return parse_reference(reference).ok_or_else(invalid);
    }
}

/// Why no package path could be read.
#[derive(Debug)]
pub enum PackageError {
    /// The archive broke under the reader: not the file's fault.
    Io(std::io::Error),
    /// The file has no valid package declaration.
    Invalid(String),
}

fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

/// `a.b["c"].d` -> `a/b/c/d`.
fn parse_reference(reference: &str) -> Option<String> {
    let mut parts = Vec::new();
    let mut rest = reference;
    let ident = |s: &str| -> usize {
        s.char_indices()
            .find(|(i, c)| {
                !(c.is_ascii_alphanumeric() || *c == '_') || (*i == 0 && c.is_ascii_digit())
            })
            .map(|(i, _)| i)
            .unwrap_or(s.len())
    };
    let first = ident(rest);
    if first == 0 {
        return None;
    }
    parts.push(rest[..first].to_string());
    rest = &rest[first..];
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let n = ident(after);
            if n == 0 {
                return None;
            }
            parts.push(after[..n].to_string());
            rest = &after[n..];
        } else if let Some(after) = rest.strip_prefix("[\"") {
            let end = after.find("\"]")?;
            parts.push(after[..end].to_string());
            rest = &after[end + 2..];
        } else {
            return None;
        }
    }
    Some(parts.join("/"))
}

/// The key structure of the bundle's data: objects with their keys, every
/// other value a leaf. Enough to find the merge conflicts and the roots
/// violations OPA finds, without holding a value.
#[derive(Debug, Default)]
pub struct DataTree {
    root: BTreeMap<String, Shape>,
    keys: u64,
}

/// One value's shape.
#[derive(Debug)]
pub enum Shape {
    /// An object and the shapes of its values.
    Object(BTreeMap<String, Shape>),
    /// Anything else (the data file that put it there).
    Leaf,
}

impl DataTree {
    /// Merges the shape of data file `file`, whose directory is `dir`, at
    /// that directory, as OPA merges data files: objects merge key by key,
    /// any other value meeting a value is a conflict.
    pub fn insert(&mut self, file: &str, dir: &str, shape: Shape) -> Result<(), BundleError> {
        let bad = |message: String| BundleError::Rule {
            path: file.to_string(),
            message,
        };
        let dir_segments = segments(dir);
        let mut at: Vec<String> = Vec::new();
        let mut node = &mut self.root;
        let mut created = false;
        for segment in &dir_segments {
            at.push((*segment).to_string());
            created = !node.contains_key(*segment);
            let child = node
                .entry((*segment).to_string())
                .or_insert_with(|| Shape::Object(BTreeMap::new()));
            node = match child {
                Shape::Object(map) => map,
                Shape::Leaf => {
                    return Err(bad(format!(
                        "data conflicts with another data file at {:?}",
                        at.join("/")
                    )));
                }
            };
        }
        match shape {
            Shape::Object(map) => merge(node, map, &mut at).map_err(bad),
            Shape::Leaf if dir_segments.is_empty() => Err(bad(
                "a data file at the bundle root must hold an object".into(),
            )),
            // Only a directory path no other data file reached may take a
            // non-object value.
            Shape::Leaf if created => {
                self.replace_with_leaf(&dir_segments);
                Ok(())
            }
            Shape::Leaf => Err(bad(format!(
                "data conflicts with another data file at {dir:?}"
            ))),
        }
    }

    fn replace_with_leaf(&mut self, dir: &[&str]) {
        let mut node = &mut self.root;
        let (last, parents) = dir.split_last().expect("not empty");
        for segment in parents {
            node = match node.get_mut(*segment) {
                Some(Shape::Object(map)) => map,
                _ => return,
            };
        }
        node.insert((*last).to_string(), Shape::Leaf);
    }

    /// Checks every data path against the roots, as OPA does: a path
    /// under a root is fine; an object on the way to a root is looked into;
    /// anything else is data outside the roots.
    pub fn check_roots(&self, roots: &[String]) -> Result<(), BundleError> {
        fn walk(
            map: &BTreeMap<String, Shape>,
            path: &mut Vec<String>,
            roots: &[String],
        ) -> Result<(), BundleError> {
            for (key, shape) in map {
                path.push(key.clone());
                let joined = path.join("/");
                if !roots.iter().any(|r| root_contains(r, &joined)) {
                    let on_the_way = roots.iter().any(|r| root_contains(&joined, r));
                    match shape {
                        Shape::Object(children) if on_the_way => walk(children, path, roots)?,
                        _ => {
                            return Err(BundleError::Rule {
                                path: format!("data at {joined:?}"),
                                message: format!(
                                    "outside the manifest roots {roots:?} (hint: check the bundle's directory structure)"
                                ),
                            });
                        }
                    }
                }
                path.pop();
            }
            Ok(())
        }
        if roots.iter().any(|r| r.is_empty()) {
            return Ok(());
        }
        walk(&self.root, &mut Vec::new(), roots)
    }

    /// Counts keys against the bound on the data's key structure.
    pub fn seed(&mut self, limit: u64) -> ShapeSeed<'_> {
        ShapeSeed {
            keys: &mut self.keys,
            limit,
        }
    }
}

fn merge(
    into: &mut BTreeMap<String, Shape>,
    from: BTreeMap<String, Shape>,
    at: &mut Vec<String>,
) -> Result<(), String> {
    for (key, shape) in from {
        match (into.get_mut(&key), shape) {
            (None, shape) => {
                into.insert(key, shape);
            }
            (Some(Shape::Object(existing)), Shape::Object(map)) => {
                at.push(key);
                merge(existing, map, at)?;
                at.pop();
            }
            (Some(_), _) => {
                at.push(key);
                return Err(format!(
                    "data conflicts with another data file at {:?}",
                    at.join("/")
                ));
            }
        }
    }
    Ok(())
}

/// Deserializes a data file's shape, counting object keys against a bound.
pub struct ShapeSeed<'a> {
    keys: &'a mut u64,
    limit: u64,
}

impl<'de> DeserializeSeed<'de> for ShapeSeed<'_> {
    type Value = Shape;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Shape, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ShapeSeed<'_> {
    type Value = Shape;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_none<E>(self) -> Result<Shape, E> {
        Ok(Shape::Leaf)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Shape::Leaf)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            *self.keys += 1;
            if *self.keys > self.limit {
                return Err(de::Error::custom(format!(
                    "the bundle's data files hold more than {} object keys (polhost.bundle.max_data_keys)",
                    self.limit
                )));
            }
            let shape = map.next_value_seed(ShapeSeed {
                keys: self.keys,
                limit: self.limit,
            })?;
            // Duplicate keys: the last one wins, as in Go's decoder.
            out.insert(key, shape);
        }
        Ok(Shape::Object(out))
    }
}

/// Converts a parsed YAML/JSON value's shape.
pub fn shape_of(value: &serde_json::Value) -> Shape {
    match value {
        serde_json::Value::Object(map) => {
            Shape::Object(map.iter().map(|(k, v)| (k.clone(), shape_of(v))).collect())
        }
        _ => Shape::Leaf,
    }
}
