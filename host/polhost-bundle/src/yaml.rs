//! Untrusted YAML (`data.yaml`, `data.yml`) parsed with budgets.
//!
//! `serde_yaml` is deprecated upstream; `serde-saphyr` is maintained, is a
//! serde deserializer that parses as it reads (so the same visitors walk a
//! YAML file as a JSON one, without building a value), and has budgets:
//! alias replay, nesting depth, events, input bytes. The budgets here are
//! tied to the file's size, so an alias bomb can make at most a few times
//! the work and memory its own bytes would, and is refused at once.
//!
//! Keys, as OPA has them: a repeated key is passed through (the last one
//! wins, as for JSON), and merge keys (`<<`) are expanded. Expanding them
//! makes the parser remember every key of every mapping (a 280,000-key
//! mapping: 51 MiB), so a file is read as [`Merges::Literal`] first, which
//! remembers nothing; one whose bytes hold `<<` at all is read again as
//! [`Merges::Expanded`] by the second look.

use std::cell::Cell;
use std::io::Read;

use serde::de::DeserializeSeed;
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::options::AliasLimits;
use serde_saphyr::{Budget, DuplicateKeyPolicy, Error, MergeKeyPolicy, Options};

/// Nesting deeper than this is refused (serde_json's limit for JSON).
pub const MAX_DEPTH: usize = 128;

/// Alias events replayed beyond the file's own: enough for any anchors a
/// person writes, far below what a "billion laughs" file asks for.
const REPLAY_GRACE: usize = 64 * 1024;

/// How merge keys (`<<`) are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merges {
    /// As ordinary keys: right for a file without any, in constant memory.
    Literal,
    /// Expanded, as OPA does (the parser remembers every mapping's keys).
    Expanded,
}

/// The options for one YAML file of `size` bytes.
fn options(size: u64, merges: Merges) -> Options {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    // A YAML event needs at least one byte of input (a scalar and its
    // separator, a bracket), so twice the size plus a margin bounds every
    // honest file; replayed aliases are charged on top, by AliasLimits.
    let replayed = size.max(REPLAY_GRACE);
    let events = size
        .saturating_mul(2)
        .saturating_add(4096)
        .saturating_add(replayed);
    let mut budget = Budget::default();
    budget.max_reader_input_bytes = Some(size.saturating_add(1));
    budget.max_events = events;
    budget.max_nodes = events;
    budget.max_total_scalar_bytes = events;
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_documents = 1;
    let mut alias_limits = AliasLimits::default();
    alias_limits.max_total_replayed_events = replayed;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.alias_limits = alias_limits;
    // The snippet keeps a ring of recent input for error messages: not
    // worth its memory, the message names the file and the position.
    options.with_snippet = false;
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    options.merge_keys = match merges {
        Merges::Literal => MergeKeyPolicy::AsOrdinary,
        Merges::Expanded => MergeKeyPolicy::Merge,
    };
    options
}

/// Runs `seed` over the YAML document `reader` yields (`size` bytes),
/// reading merge keys as `merges` says; also says whether the bytes hold
/// `<<` anywhere (so may hold a merge key). Errors are the message to
/// report for the file.
pub fn deserialize<R, S, T>(
    reader: R,
    size: u64,
    merges: Merges,
    seed: S,
) -> Result<(T, bool), YamlError>
where
    R: Read,
    S: for<'de> DeserializeSeed<'de, Value = T>,
{
    let seen = Cell::new(false);
    let sniffer = MergeSniffer {
        inner: reader,
        last: 0,
        seen: &seen,
    };
    let value = serde_saphyr::with_deserializer_from_reader_with_options(
        sniffer,
        options(size, merges),
        |de| seed.deserialize(de),
    )
    .map_err(YamlError::from)?;
    Ok((value, seen.get()))
}

/// Notes whether `<<` passes by (across reads too).
struct MergeSniffer<'a, R> {
    inner: R,
    last: u8,
    seen: &'a Cell<bool>,
}

impl<R: Read> Read for MergeSniffer<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && !self.seen.get() {
            let got = &buf[..n];
            let across = self.last == b'<' && got[0] == b'<';
            if across || got.windows(2).any(|w| w == b"<<") {
                self.seen.set(true);
            }
            self.last = got[n - 1];
        }
        Ok(n)
    }
}

/// Why a YAML file was refused.
#[derive(Debug)]
pub enum YamlError {
    /// The archive broke under the parser: not the file's fault.
    Io(std::io::Error),
    /// The file is not acceptable YAML (or broke a budget).
    Invalid(String),
}

impl From<Error> for YamlError {
    fn from(e: Error) -> YamlError {
        match e {
            Error::IOError { cause } if cause.kind() != std::io::ErrorKind::FileTooLarge => {
                YamlError::Io(cause)
            }
            Error::AliasReplayLimitExceeded { .. }
            | Error::AliasReplayStackDepthExceeded { .. }
            | Error::AliasReplayCounterOverflow { .. } => {
                YamlError::Invalid(format!("YAML alias budget exceeded ({e})"))
            }
            Error::Budget { ref breach, .. } => {
                let what = match breach {
                    BudgetBreach::Aliases { .. } | BudgetBreach::AliasAnchorRatio { .. } => {
                        "YAML alias budget exceeded"
                    }
                    BudgetBreach::Depth { .. } => "YAML nesting depth budget exceeded",
                    _ => "YAML size budget exceeded",
                };
                YamlError::Invalid(format!("{what} ({e})"))
            }
            other if other.to_string().contains("alias replay") => {
                YamlError::Invalid(format!("YAML alias budget exceeded ({other})"))
            }
            // The parser's own nesting limit (flow collections).
            other if other.to_string().contains("recursion limit exceeded") => {
                YamlError::Invalid(format!("YAML nesting depth budget exceeded ({other})"))
            }
            other => YamlError::Invalid(other.to_string()),
        }
    }
}

/// A YAML file as a JSON value, within the same budgets (the canonical
/// form of a signed `data.yaml`).
pub fn to_json(text: &[u8]) -> Option<serde_json::Value> {
    struct Seed;
    impl<'de> DeserializeSeed<'de> for Seed {
        type Value = serde_json::Value;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            serde::Deserialize::deserialize(d)
        }
    }
    deserialize(text, text.len() as u64, Merges::Expanded, Seed)
        .ok()
        .map(|(value, _)| value)
}

/// 352 bytes that expand to 10^9 scalars (a "billion laughs").
#[cfg(test)]
pub const ALIAS_BOMB: &str = "a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_alias_bomb_is_refused_by_the_alias_budget() {
        let started = std::time::Instant::now();
        assert!(to_json(ALIAS_BOMB.as_bytes()).is_none());
        struct Seed;
        impl<'de> DeserializeSeed<'de> for Seed {
            type Value = ();
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                <serde::de::IgnoredAny as serde::Deserialize>::deserialize(d).map(|_| ())
            }
        }
        match deserialize(
            ALIAS_BOMB.as_bytes(),
            ALIAS_BOMB.len() as u64,
            Merges::Literal,
            Seed,
        ) {
            Err(YamlError::Invalid(m)) => assert!(m.contains("YAML alias budget exceeded"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    }

    #[test]
    fn yaml_as_json_keeps_types() {
        let v = to_json(b"a: 1\nb: [x, true]\nc: {d: null}\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": 1, "b": ["x", true], "c": {"d": null}})
        );
    }
}
