//! OPA's `--set key=value` and `--set-file key=path`: values given on the
//! command line, applied over the configuration file's tree before its
//! sections are read. Owns their syntax (Helm's `strvals`, as OPA uses it)
//! and where they land; it never shows a value in a message, only keys.
//!
//! The syntax, as OPA's:
//!
//! - `a.b.c=v`: a dotted path of map keys; maps are created as needed.
//! - `a[0]=v`, `a[0].b=v`, `a[1][2]=v`: list items by index; the list is
//!   extended with nulls up to the index.
//! - `a=1,b=2`: several pairs in one argument; `\` escapes the next
//!   character (`a\.b=x` sets the key `a.b`, `a=x\,y` the value `x,y`).
//! - values of `--set` are typed: `true`/`false` (any case) a boolean,
//!   `null` null, an integer without a leading zero a number, `{x,y}` a list
//!   of such values, anything else (`1.5`, `0700`, a path) a string; `a=` is
//!   the empty string.
//! - `--set-file key=path` sets `key` to the content of the file at `path`,
//!   surrounding whitespace trimmed, always a string.
//!
//! A value set over a value of another kind replaces it (a scalar or null
//! becomes a map or list), as OPA's merge does; but a map is never silently
//! replaced by a list or the other way round (`services` written as a list
//! and set as `services.acme.url`): that is an error.

use std::fmt;
use std::path::Path;

use super::error::ConfigError;
use super::read::{MAX_CONFIG_BYTES, ReadError, read_capped, show_size};
use super::tree::{self, Node};

/// The largest list index an override may name (Helm's limit).
const MAX_INDEX: usize = 65536;

/// Which flag an override came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    Set,
    SetFile,
}

impl Flag {
    fn name(self) -> &'static str {
        match self {
            Flag::Set => "--set",
            Flag::SetFile => "--set-file",
        }
    }
}

/// One `--set` or `--set-file` argument, its syntax checked. Its `Debug`
/// shows the keys it sets, never their values.
#[derive(Clone)]
pub struct Override {
    flag: Flag,
    text: String,
    keys: Vec<String>,
}

impl fmt::Debug for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Override")
            .field("flag", &self.flag.name())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Override {
    /// A `--set` argument: `key=value[,key=value...]`. Its values may refer
    /// to `${VAR}`, substituted when it is applied, as in the file.
    pub fn parse_set(arg: &str) -> Result<Override, ConfigError> {
        Override::new(Flag::Set, arg)
    }

    /// A `--set-file` argument: `key=path[,key=path...]`. The files are read
    /// when it is applied (a relative path is relative to the current
    /// directory).
    pub fn parse_set_file(arg: &str) -> Result<Override, ConfigError> {
        Override::new(Flag::SetFile, arg)
    }

    fn new(flag: Flag, arg: &str) -> Result<Override, ConfigError> {
        let keys = parse(flag, arg)?.into_iter().map(|a| a.key).collect();
        Ok(Override {
            flag,
            text: arg.to_string(),
            keys,
        })
    }

    /// The keys it sets, as written.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Sets its values in `root` (`env` substitutes `${VAR}` in a `--set`
    /// argument); returns the field path of each value set.
    fn apply(
        &self,
        root: &mut Node,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<String>, ConfigError> {
        let text = match self.flag {
            Flag::Set => super::env::substitute(&self.text, env, MAX_CONFIG_BYTES).map_err(
                |super::env::TooLong| {
                    override_error(
                        self.flag,
                        self.keys.first().map_or("", String::as_str),
                        format!(
                            "larger than {} after ${{ENV}} substitution, the most polhost reads",
                            show_size(MAX_CONFIG_BYTES)
                        ),
                    )
                },
            )?,
            Flag::SetFile => self.text.clone(),
        };
        let mut paths = Vec::new();
        for assignment in parse(self.flag, &text)? {
            let error = |message: String| override_error(self.flag, &assignment.key, message);
            let value = match assignment.value {
                Value::Node(node) => node,
                Value::File(path) => Node::String(read_value(Path::new(&path)).map_err(error)?),
            };
            let path = set(root, &assignment.path, value).map_err(error)?;
            paths.push(path);
        }
        Ok(paths)
    }
}

/// Applies `overrides`, in order, to the document's tree. A document that
/// is not a map (nor empty) is left alone: reading it fails anyway. Returns
/// which flag set which field path.
pub(crate) fn apply(
    root: &mut Node,
    overrides: &[Override],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(&'static str, String)>, ConfigError> {
    if !matches!(root, Node::Map(_) | Node::Null) {
        return Ok(Vec::new());
    }
    let mut set_paths = Vec::new();
    for item in overrides {
        for path in item.apply(root, env)? {
            set_paths.push((item.flag.name(), path));
        }
    }
    Ok(set_paths)
}

/// An error at a field an override set (or below one): it names the flag
/// and the field instead of the file, which does not hold that value.
pub(crate) fn attribute(error: ConfigError, set_paths: &[(&'static str, String)]) -> ConfigError {
    let ConfigError::Invalid {
        file: None,
        path,
        message,
    } = error
    else {
        return error;
    };
    let covered = |set: &str| {
        path == set
            || path
                .strip_prefix(set)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    match set_paths.iter().rev().find(|(_, set)| covered(set)) {
        Some((flag, _)) => ConfigError::Override {
            flag: flag.to_string(),
            key: path,
            message,
        },
        None => ConfigError::Invalid {
            file: None,
            path,
            message,
        },
    }
}

fn override_error(flag: Flag, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Override {
        flag: flag.name().to_string(),
        key: if key.is_empty() {
            "\"\"".to_string()
        } else {
            key.to_string()
        },
        message: message.into(),
    }
}

/// The content of a `--set-file` file, trimmed. Errors name the file, never
/// show its content.
fn read_value(path: &Path) -> Result<String, String> {
    let text = read_capped(path, MAX_CONFIG_BYTES).map_err(|e| match e {
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            format!("{} is not UTF-8 text", path.display())
        }
        ReadError::Io(e) => format!("cannot read {}: {e}", path.display()),
        ReadError::TooLarge => format!(
            "{} is larger than {}, the most polhost reads of a file",
            path.display(),
            show_size(MAX_CONFIG_BYTES)
        ),
    })?;
    Ok(text.trim().to_string())
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// What a pair sets.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// A `--set` value, typed.
    Node(Node),
    /// A `--set-file` path, still to be read.
    File(String),
}

/// One `key=value` pair of an argument.
#[derive(Debug, Clone, PartialEq)]
struct Assignment {
    /// The key as written (for messages).
    key: String,
    path: Vec<Segment>,
    value: Value,
}

/// Splits an argument into its pairs.
fn parse(flag: Flag, text: &str) -> Result<Vec<Assignment>, ConfigError> {
    let mut parser = Parser {
        chars: text.chars().collect(),
        at: 0,
        flag,
    };
    let mut assignments = Vec::new();
    if text.is_empty() {
        return Err(override_error(
            flag,
            "",
            "empty argument (expected key=value)",
        ));
    }
    loop {
        let previous = assignments.last().map(|a: &Assignment| a.key.as_str());
        if !parser.pair_has_equals() {
            return Err(parser.pair_without_equals(previous));
        }
        assignments.push(parser.assignment()?);
        match parser.next() {
            None => return Ok(assignments),
            Some(',') => {
                if parser.peek().is_none() {
                    // `a=1,`: OPA (Helm) ignores the trailing comma.
                    return Ok(assignments);
                }
            }
            Some(_) => unreachable!("a value ends at a comma or the end"),
        }
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
    flag: Flag,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    /// The key at the cursor as written: up to the first unescaped `=` or
    /// `,` (what messages name).
    fn written_key(&self) -> String {
        let mut end = self.at;
        let mut escaped = false;
        while let Some(&c) = self.chars.get(end) {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '=' || c == ',' {
                break;
            }
            end += 1;
        }
        self.chars[self.at..end].iter().collect()
    }

    /// Whether an unescaped `=` comes before the next unescaped `,`.
    fn pair_has_equals(&self) -> bool {
        let mut escaped = false;
        for &c in &self.chars[self.at..] {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '=' => return true,
                ',' => return false,
                _ => {}
            }
        }
        false
    }

    /// The error for a pair with no `=`, which shows its text only if it
    /// can be nothing but a key. After an earlier pair, it is most likely
    /// the rest of that pair's value (a token with an unescaped `,`), so it
    /// is never shown: the earlier key is named instead.
    fn pair_without_equals(&self, previous: Option<&str>) -> ConfigError {
        let text = self.written_key();
        match previous {
            Some(key) => override_error(
                self.flag,
                key,
                "its value is followed by a ',' and text that is not key=value (not shown: \
                 it may be part of the value; write a ',' inside a value as '\\,')",
            ),
            None if is_key_like(&text) => {
                override_error(self.flag, &text, "no value (expected key=value)")
            }
            None => override_error(
                self.flag,
                "argument",
                "no '=' in it (expected key=value; not shown: it may hold a value)",
            ),
        }
    }

    /// `key=value`, up to (not including) the `,` after it.
    fn assignment(&mut self) -> Result<Assignment, ConfigError> {
        let key = self.written_key();
        let flag = self.flag;
        let error = |message: &str| override_error(flag, &key, message);
        let mut path = Vec::new();
        loop {
            // A name: up to an unescaped `.`, `[`, `=` or `,`.
            let mut name = String::new();
            while let Some(c) = self.peek() {
                match c {
                    '.' | '[' | '=' | ',' => break,
                    '\\' => {
                        self.at += 1;
                        match self.next() {
                            Some(c) => name.push(c),
                            None => return Err(error("ends with an escaping backslash")),
                        }
                    }
                    c => {
                        self.at += 1;
                        name.push(c);
                    }
                }
            }
            if name.is_empty() {
                return Err(error(match self.peek() {
                    None | Some(',') if path.is_empty() => "no value (expected key=value)",
                    _ => "empty key (expected key=value, keys separated by dots)",
                }));
            }
            path.push(Segment::Key(name));
            // Indexes after the name: `[0]`, `[0][1]`.
            while self.peek() == Some('[') {
                self.at += 1;
                let mut digits = String::new();
                while let Some(c) = self.peek().filter(|c| *c != ']') {
                    self.at += 1;
                    digits.push(c);
                }
                if self.next() != Some(']') {
                    return Err(error("unclosed [ in the key"));
                }
                let index = parse_index(&digits).map_err(|m| error(&m))?;
                path.push(Segment::Index(index));
            }
            match self.next() {
                Some('.') => continue,
                Some('=') => break,
                None | Some(',') => return Err(error("no value (expected key=value)")),
                Some(_) => return Err(error("expected ., [ or = after an index")),
            }
        }
        let value = match self.flag {
            Flag::Set if self.peek() == Some('{') => {
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    let item = self.text_until(&[',', '}']);
                    match self.next() {
                        Some(',') => items.push(typed(&item)),
                        Some(_) => {
                            // `{}` is the empty list.
                            if !(item.is_empty() && items.is_empty()) {
                                items.push(typed(&item));
                            }
                            break;
                        }
                        None => return Err(error("unclosed { in the value")),
                    }
                }
                if !matches!(self.peek(), None | Some(',')) {
                    return Err(error("expected , or the end after a {list}"));
                }
                Value::Node(Node::List(items))
            }
            Flag::Set => Value::Node(typed(&self.text_until(&[',']))),
            Flag::SetFile => {
                let path = self.text_until(&[',']);
                if path.is_empty() {
                    return Err(error("no file named (expected key=path)"));
                }
                Value::File(path)
            }
        };
        Ok(Assignment { key, path, value })
    }

    /// Unescaped text up to (not including) one of `ends`, or to the end
    /// of the argument.
    fn text_until(&mut self, ends: &[char]) -> String {
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if ends.contains(&c) {
                break;
            }
            self.at += 1;
            if c == '\\' {
                // A lone trailing backslash stays itself.
                text.push(self.next().unwrap_or('\\'));
            } else {
                text.push(c);
            }
        }
        text
    }
}

/// Text that can be nothing but a key path (`services.acme`, `a[0].b`):
/// safe to show.
fn is_key_like(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c))
}

fn parse_index(digits: &str) -> Result<usize, String> {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits.strip_prefix('-').is_some_and(all_digits) {
        return Err("negative list index".to_string());
    }
    if !all_digits(digits) {
        return Err("a list index must be a number: [0], [1], ...".to_string());
    }
    match digits.parse::<usize>() {
        Ok(i) if i <= MAX_INDEX => Ok(i),
        _ => Err(format!("list index too large (at most {MAX_INDEX})")),
    }
}

/// A `--set` value as OPA types it (Helm's `typedVal`).
fn typed(text: &str) -> Node {
    if text.eq_ignore_ascii_case("true") {
        Node::Bool(true)
    } else if text.eq_ignore_ascii_case("false") {
        Node::Bool(false)
    } else if text.eq_ignore_ascii_case("null") {
        Node::Null
    } else if text == "0" {
        Node::Number(0.into())
    } else if !text.starts_with('0')
        && let Ok(n) = text.parse::<i64>()
    {
        // Go's strconv.ParseInt(text, 10, 64), as Rust's: an optional sign,
        // then decimal digits.
        Node::Number(n.into())
    } else {
        Node::String(text.to_string())
    }
}

/// Sets `value` at `path` under `node`; returns its field path.
fn set(node: &mut Node, path: &[Segment], value: Node) -> Result<String, String> {
    let mut node = node;
    let mut at = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if let Node::List(_) = node {
                    return Err(format!(
                        "{} is a list, not a map (set its items by index: {}[0]...)",
                        shown(&at),
                        shown(&at)
                    ));
                }
                if !matches!(node, Node::Map(_)) {
                    *node = Node::Map(Vec::new());
                }
                let Node::Map(entries) = node else {
                    unreachable!("made a map above")
                };
                let position = match entries.iter().position(|(k, _)| k == key) {
                    Some(position) => position,
                    None => {
                        entries.push((key.clone(), Node::Null));
                        entries.len() - 1
                    }
                };
                at = tree::join(&at, key);
                node = &mut entries[position].1;
            }
            Segment::Index(i) => {
                if let Node::Map(_) = node {
                    return Err(format!("{} is a map, not a list", shown(&at)));
                }
                if !matches!(node, Node::List(_)) {
                    *node = Node::List(Vec::new());
                }
                let Node::List(items) = node else {
                    unreachable!("made a list above")
                };
                if items.len() <= *i {
                    items.resize(i + 1, Node::Null);
                }
                at = tree::index(&at, *i);
                node = &mut items[*i];
            }
        }
    }
    *node = value;
    Ok(at)
}

/// A field path for a message (the document itself has none).
fn shown(path: &str) -> &str {
    if path.is_empty() {
        "the document"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::tests::test_env;

    const FILE: &str = "
services:
  acme:
    url: https://acme.example
    credentials:
      bearer:
        token: file-token
bundles:
  authz:
    resource: bundles/authz.tar.gz
keys:
  k1:
    key: secret-key-one
    algorithm: HS256
";

    fn sets(args: &[&str]) -> Vec<Override> {
        args.iter()
            .map(|a| Override::parse_set(a).unwrap())
            .collect()
    }

    fn with(text: &str, overrides: &[Override]) -> Config {
        match Config::parse_with_overrides(text, &test_env, overrides) {
            Ok(config) => config,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn error_of(text: &str, overrides: &[Override]) -> String {
        match Config::parse_with_overrides(text, &test_env, overrides) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// The tree `args` make from `text`, as JSON.
    fn tree_of(text: &str, args: &[&str]) -> serde_json::Value {
        let mut root = crate::yaml::parse(text).unwrap();
        apply(&mut root, &sets(args), &test_env).unwrap();
        root.to_json()
    }

    #[test]
    fn replaces_a_value_of_the_file() {
        let config = with(FILE, &sets(&["services.acme.url=https://other.example/v2"]));
        assert_eq!(config.services[0].url, "https://other.example/v2");
        assert_eq!(config.bundles[0].resource, "bundles/authz.tar.gz");
    }

    #[test]
    fn adds_a_new_key() {
        let config = with(FILE, &sets(&["bundles.authz.persist=true"]));
        assert!(config.bundles[0].persist);
        let config = with(FILE, &sets(&["persistence_directory=/var/lib/polhost"]));
        assert_eq!(
            config.persistence_directory,
            std::path::PathBuf::from("/var/lib/polhost")
        );
    }

    #[test]
    fn creates_nested_maps() {
        let config = with(
            FILE,
            &sets(&[
                "bundles.other.service=web",
                "services.web.url=http://127.0.0.1:8181",
                "bundles.other.polling.min_delay_seconds=5",
                "bundles.other.polling.max_delay_seconds=10",
            ]),
        );
        assert_eq!(config.services[1].name, "web");
        assert_eq!(config.bundles[1].name, "other");
        assert_eq!(config.bundles[1].service, "web");
        assert_eq!(
            config.bundles[1].polling.max_delay,
            std::time::Duration::from_secs(10)
        );
        // Into an empty document, too.
        let config = with("", &sets(&["services.s.url=https://s.example"]));
        assert_eq!(config.services[0].url, "https://s.example");
    }

    #[test]
    fn overrides_a_list_item_in_place() {
        let text = "services:\n  - name: a\n    url: https://a.example\n  - name: b\n    url: https://b.example\n";
        let config = with(text, &sets(&["services[1].url=https://new.example"]));
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.services[0].url, "https://a.example");
        assert_eq!(config.services[1].name, "b");
        assert_eq!(config.services[1].url, "https://new.example");
        // Past the end: the list grows, with nulls between.
        assert_eq!(
            tree_of("a: [x]\n", &["a[2]=z"]),
            serde_json::json!({"a": ["x", null, "z"]})
        );
        assert_eq!(
            tree_of("", &["a[0][1]=z", "b[0].c=1"]),
            serde_json::json!({"a": [[null, "z"]], "b": [{"c": 1}]})
        );
    }

    #[test]
    fn values_are_typed_as_opa_does() {
        assert_eq!(
            tree_of(
                "",
                &[
                    "t=true,f=FALSE,n=null,i=42,neg=-7,zero=0,octal=0700,float=1.5",
                    "s=hello,empty=,big=99999999999999999999,list={a,2,true}"
                ]
            ),
            serde_json::json!({
                "t": true, "f": false, "n": null, "i": 42, "neg": -7, "zero": 0,
                "octal": "0700", "float": "1.5", "s": "hello", "empty": "",
                "big": "99999999999999999999", "list": ["a", 2, true],
            })
        );
    }

    #[test]
    fn a_bool_and_a_number_reach_typed_fields() {
        let config = with(
            FILE,
            &sets(&[
                "bundles.authz.persist=true",
                "bundles.authz.polling.min_delay_seconds=5,bundles.authz.polling.max_delay_seconds=7",
            ]),
        );
        assert!(config.bundles[0].persist);
        assert_eq!(
            config.bundles[0].polling.min_delay,
            std::time::Duration::from_secs(5)
        );
    }

    #[test]
    fn a_string_that_looks_like_a_path_stays_a_string() {
        let config = with(
            FILE,
            &sets(&[
                "services.acme.credentials.bearer.token=null",
                "services.acme.credentials.bearer.token_path=/run/secrets/token",
            ]),
        );
        let crate::Credentials::Bearer(bearer) = &config.services[0].credentials else {
            panic!("not bearer")
        };
        assert_eq!(bearer.token, None);
        assert_eq!(
            bearer.token_path.as_deref(),
            Some(Path::new("/run/secrets/token"))
        );
        assert_eq!(
            tree_of("", &["p=./relative/dir.d", "r=bundles/authz.tar.gz"]),
            serde_json::json!({"p": "./relative/dir.d", "r": "bundles/authz.tar.gz"})
        );
    }

    #[test]
    fn escapes_and_commas() {
        assert_eq!(
            tree_of("", &[r"a\.b=x\,y,c=1,", r"h.X-Key=a\=b"]),
            serde_json::json!({"a.b": "x,y", "c": 1, "h": {"X-Key": "a=b"}})
        );
    }

    #[test]
    fn a_later_override_wins() {
        let config = with(
            FILE,
            &sets(&[
                "services.acme.url=https://one.example",
                "services.acme.url=https://two.example",
            ]),
        );
        assert_eq!(config.services[0].url, "https://two.example");
    }

    #[test]
    fn env_is_substituted_in_set_values() {
        let config = with(FILE, &sets(&["services.acme.url=https://${HOST}/v1"]));
        assert_eq!(config.services[0].url, "https://example.com/v1");
    }

    #[test]
    fn an_argument_without_equals_is_an_error_naming_it() {
        let e = Override::parse_set("services.acme.url").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set services.acme.url: no value (expected key=value)"
        );
        let e = Override::parse_set("a=1,services.acme").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set a: its value is followed by a ',' and text that is not key=value (not shown: \
             it may be part of the value; write a ',' inside a value as '\\,')"
        );
        let e = Override::parse_set_file("token").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set-file token: no value (expected key=value)"
        );
        let e = Override::parse_set("").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set \"\": empty argument (expected key=value)"
        );
    }

    /// Issue 10, item 5: a token holding an unescaped `,` was split, and
    /// its second half shown as a key with no value.
    #[test]
    fn a_value_split_at_a_comma_is_not_shown() {
        for arg in [
            "services.acme.credentials.bearer.token=abc,s3cr3t-half",
            "services.acme.credentials.bearer.token=abc,s3cr3t:half",
        ] {
            let message = Override::parse_set(arg).unwrap_err().to_string();
            assert!(!message.contains("s3cr3t"), "{message}");
            assert!(
                message.starts_with("--set services.acme.credentials.bearer.token: "),
                "{message}"
            );
        }
        let message = Override::parse_set("token:s3cr3t").unwrap_err().to_string();
        assert_eq!(
            message,
            "--set argument: no '=' in it (expected key=value; not shown: it may hold a value)"
        );
    }

    #[test]
    fn a_set_file_larger_than_the_cap_is_refused_naming_it() {
        let e = error_of(
            FILE,
            &[Override::parse_set_file("services.acme.url=/dev/zero").unwrap()],
        );
        assert_eq!(
            e,
            "--set-file services.acme.url: /dev/zero is larger than 4 MiB, the most polhost reads of a file"
        );
    }

    #[test]
    fn malformed_keys_are_errors_naming_them() {
        for (arg, expected) in [
            (
                "a..b=1",
                "--set a..b: empty key (expected key=value, keys separated by dots)",
            ),
            (
                "=1",
                "--set \"\": empty key (expected key=value, keys separated by dots)",
            ),
            (
                "a[x]=1",
                "--set a[x]: a list index must be a number: [0], [1], ...",
            ),
            ("a[-1]=1", "--set a[-1]: negative list index"),
            (
                "a[99999999]=1",
                "--set a[99999999]: list index too large (at most 65536)",
            ),
            ("a[0=1", "--set a[0: unclosed [ in the key"),
            ("a[0]b=1", "--set a[0]b: expected ., [ or = after an index"),
            ("a={x,y", "--set a: unclosed { in the value"),
        ] {
            assert_eq!(
                Override::parse_set(arg).unwrap_err().to_string(),
                expected,
                "{arg}"
            );
        }
    }

    #[test]
    fn a_secret_value_is_not_echoed_in_errors() {
        // Malformed after the value.
        let e = Override::parse_set("services.acme.credentials.bearer.token={s3cr3t-value")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cr3t-value"), "{e}");
        assert!(
            e.starts_with("--set services.acme.credentials.bearer.token: "),
            "{e}"
        );
        // A value that cannot be applied where it is set.
        let e = error_of(
            FILE,
            &sets(&["services.acme.credentials.bearer.token[0]=s3cr3t-value"]),
        );
        assert!(!e.contains("s3cr3t-value"), "{e}");
        // A value of the wrong kind for its field.
        let e = error_of(FILE, &sets(&["keys.k1.key={s3cr3t-value,other}"]));
        assert!(!e.contains("s3cr3t-value"), "{e}");
        assert!(e.starts_with("--set keys.k1.key: "), "{e}");
        // Debug of an override shows keys only.
        let debug = format!("{:?}", sets(&["keys.k1.key=s3cr3t-value"]));
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        assert!(debug.contains("keys.k1.key"), "{debug}");
    }

    #[test]
    fn an_invalid_value_set_names_the_flag_and_field_not_the_file() {
        let e = error_of(FILE, &sets(&["services.acme.url=ftp://acme.example"]));
        assert!(e.starts_with("--set services.acme.url: "), "{e}");
        let e = error_of(
            FILE,
            &sets(&["bundles.authz.polling.min_delay_seconds=soon"]),
        );
        assert!(
            e.starts_with("--set bundles.authz.polling.min_delay_seconds: invalid type"),
            "{e}"
        );
        // A field the override did not set keeps the plain field path.
        let e = error_of(
            "services: {s: {url: ''}}\n",
            &sets(&["bundles.b.service=s"]),
        );
        assert_eq!(e, "services.s.url: required");
    }

    #[test]
    fn a_map_is_not_replaced_by_a_list_nor_the_other_way_round() {
        let list = "services:\n  - name: a\n    url: https://a.example\n";
        assert_eq!(
            error_of(list, &sets(&["services.acme.url=https://x"])),
            "--set services.acme.url: services is a list, not a map (set its items by index: services[0]...)"
        );
        assert_eq!(
            error_of(FILE, &sets(&["services[0].url=https://x"])),
            "--set services[0].url: services is a map, not a list"
        );
        // A scalar or null is replaced, as OPA's merge does.
        assert_eq!(
            tree_of("a: text\nb:\n", &["a.x=1", "b[0]=2"]),
            serde_json::json!({"a": {"x": 1}, "b": [2]})
        );
    }

    #[test]
    fn set_file_reads_the_content_trimmed_as_a_string() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  42\n").unwrap();
        let arg = format!("services.acme.credentials.bearer.token={}", token.display());
        let config = with(FILE, &[Override::parse_set_file(&arg).unwrap()]);
        let crate::Credentials::Bearer(bearer) = &config.services[0].credentials else {
            panic!("not bearer")
        };
        // A string, not the number 42.
        assert_eq!(
            bearer.token.as_ref().map(polhost_bundle::Secret::expose),
            Some("42")
        );
    }

    #[test]
    fn set_file_of_a_missing_file_names_flag_key_and_path() {
        let e = error_of(
            FILE,
            &[Override::parse_set_file("services.acme.url=/nonexistent/polhost-url").unwrap()],
        );
        assert!(
            e.starts_with("--set-file services.acme.url: cannot read /nonexistent/polhost-url: "),
            "{e}"
        );
    }

    #[test]
    fn set_file_content_is_not_echoed_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "s3cr3t-content").unwrap();
        let arg = format!("services.acme.url={}", file.display());
        let e = error_of(FILE, &[Override::parse_set_file(&arg).unwrap()]);
        assert!(!e.contains("s3cr3t-content"), "{e}");
        assert!(e.starts_with("--set-file services.acme.url: "), "{e}");
    }

    #[test]
    fn load_with_overrides_applies_them_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, FILE).unwrap();
        let config = Config::load_with_overrides(
            &path,
            &test_env,
            &sets(&["bundles.authz.resource=other.tar.gz"]),
        )
        .unwrap();
        assert_eq!(config.bundles[0].resource, "other.tar.gz");
        // Errors of the file still name it; those of an override name the flag.
        let e =
            Config::load_with_overrides(&path, &test_env, &sets(&["bundles.authz.service=nope"]))
                .unwrap_err()
                .to_string();
        assert!(e.starts_with("--set bundles.authz.service: "), "{e}");
        std::fs::write(&path, "services: {s: {url: ''}}\n").unwrap();
        let e = Config::load_with_overrides(&path, &test_env, &sets(&["labels.a=b"]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, format!("{}: services.s.url: required", path.display()));
    }
}
