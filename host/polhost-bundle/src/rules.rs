//! OPA's bundle rules: roots, the package of each `.rego` file, and where
//! each data file's content lands in `data`.
//!
//! The data files' rules (merge, data under the roots) are in `data`.

use std::io::BufRead;

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
