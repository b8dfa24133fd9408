//! The first look at a data file, while it streams: its syntax is checked
//! and its keys near the top of `data` are kept, within a fixed budget, to
//! check the manifest roots without a second look in the common case.
//!
//! Why a budget per depth: roots are a few segments deep, so only the top
//! of `data` matters to them; sharing one budget per depth keeps the keys
//! of the first depths even when one object below holds millions.

use std::collections::BTreeMap;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::rules::root_contains;

/// Depths of `data` (counted from the bundle root) whose keys are kept.
pub const SKETCH_DEPTH: usize = 4;
/// Keys kept per depth, for the whole bundle.
pub const KEYS_PER_DEPTH: u32 = 4096;

/// What the first look kept of one value.
#[derive(Debug)]
pub enum Sketch {
    /// Anything but an object.
    Leaf,
    /// An object; `complete` when every key is in `children`.
    Map {
        children: BTreeMap<String, Sketch>,
        complete: bool,
    },
}

impl Sketch {
    /// Whether the value is an object.
    pub fn is_object(&self) -> bool {
        matches!(self, Sketch::Map { .. })
    }
}

/// The keys still to be kept at each depth.
#[derive(Debug)]
pub struct Budget([u32; SKETCH_DEPTH]);

impl Default for Budget {
    fn default() -> Budget {
        Budget([KEYS_PER_DEPTH; SKETCH_DEPTH])
    }
}

/// Reads one value (a data file's), keeping its keys down to
/// [`SKETCH_DEPTH`]; `depth` is the value's own depth in `data`.
pub struct SketchSeed<'a> {
    pub budget: &'a mut Budget,
    pub depth: usize,
}

impl<'de> DeserializeSeed<'de> for SketchSeed<'_> {
    type Value = Sketch;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Sketch, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SketchSeed<'_> {
    type Value = Sketch;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Sketch, E> {
        Ok(Sketch::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Sketch, E> {
        Ok(Sketch::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Sketch, E> {
        Ok(Sketch::Leaf)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Sketch, E> {
        Ok(Sketch::Leaf)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Sketch, E> {
        Ok(Sketch::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Sketch, E> {
        Ok(Sketch::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<Sketch, E> {
        Ok(Sketch::Leaf)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Sketch, E> {
        Ok(Sketch::Leaf)
    }
    fn visit_unit<E>(self) -> Result<Sketch, E> {
        Ok(Sketch::Leaf)
    }
    fn visit_none<E>(self) -> Result<Sketch, E> {
        Ok(Sketch::Leaf)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Sketch, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sketch, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Sketch::Leaf)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Sketch, A::Error> {
        let mut children = BTreeMap::new();
        let mut complete = true;
        let key_depth = self.depth + 1;
        loop {
            let keep = key_depth <= SKETCH_DEPTH && self.budget.0[key_depth - 1] > 0;
            if keep {
                let Some(key) = map.next_key::<String>()? else {
                    break;
                };
                self.budget.0[key_depth - 1] -= 1;
                let child = map.next_value_seed(SketchSeed {
                    budget: self.budget,
                    depth: key_depth,
                })?;
                // Duplicate keys: the last one wins, as in Go's decoder.
                children.insert(key, child);
            } else {
                if map.next_key::<IgnoredAny>()?.is_none() {
                    break;
                }
                complete = false;
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Sketch::Map { children, complete })
    }
}

/// What the sketch tells about data and the manifest roots.
#[derive(Debug, PartialEq)]
pub enum RootsVerdict {
    /// Every path of the file is under a root or on the way to one.
    Fine,
    /// Data at this path lies outside the roots.
    Outside(String),
    /// The sketch misses keys the roots need: look again.
    Undecided,
}

/// Checks a data file at `dir` (its segments) against `roots`, as OPA's
/// walk over `data` does: a path under a root is fine, an object on the way
/// to a root is looked into, anything else is data outside the roots.
pub fn check_roots(dir: &[&str], sketch: &Sketch, roots: &[String]) -> RootsVerdict {
    if roots.iter().any(|r| r.is_empty()) {
        return RootsVerdict::Fine;
    }
    let mut path: Vec<String> = Vec::new();
    for segment in dir {
        path.push((*segment).to_string());
        match position(&path, roots) {
            Position::Under => return RootsVerdict::Fine,
            Position::OnTheWay => {}
            Position::Outside => return RootsVerdict::Outside(path.join("/")),
        }
    }
    // `path` is on the way to a root (or the bundle root).
    walk(sketch, &mut path, roots)
}

fn walk(sketch: &Sketch, path: &mut Vec<String>, roots: &[String]) -> RootsVerdict {
    let Sketch::Map { children, complete } = sketch else {
        return RootsVerdict::Outside(path.join("/"));
    };
    let mut verdict = if *complete {
        RootsVerdict::Fine
    } else {
        RootsVerdict::Undecided
    };
    for (key, child) in children {
        path.push(key.clone());
        let here = match position(path, roots) {
            Position::Under => RootsVerdict::Fine,
            Position::OnTheWay => walk(child, path, roots),
            Position::Outside => RootsVerdict::Outside(path.join("/")),
        };
        path.pop();
        match here {
            RootsVerdict::Fine => {}
            RootsVerdict::Outside(_) => return here,
            RootsVerdict::Undecided => verdict = RootsVerdict::Undecided,
        }
    }
    verdict
}

/// Where a path of `data` lies relative to the roots.
#[derive(Debug, PartialEq)]
pub enum Position {
    /// Under a root: anything may be there.
    Under,
    /// A strict prefix of a root: only an object may be there.
    OnTheWay,
    /// Neither.
    Outside,
}

/// Where `path` (segments) lies relative to `roots`.
pub fn position(path: &[String], roots: &[String]) -> Position {
    let joined = path.join("/");
    if roots.iter().any(|r| root_contains(r, &joined)) {
        Position::Under
    } else if roots.iter().any(|r| root_contains(&joined, r)) {
        Position::OnTheWay
    } else {
        Position::Outside
    }
}

/// Whether two data files' values meet, as far as their sketches tell.
#[derive(Debug, PartialEq)]
pub enum Meet {
    /// No path holds a value of both.
    Apart,
    /// Both put a value at this path, not both objects.
    Conflict(String),
    /// The sketches miss keys that could meet: look again.
    Undecided,
}

/// Whether the value `shallow` of a file at directory `at` meets the value
/// `deep` of a file whose directory is `rel` below it.
pub fn meet(shallow: &Sketch, rel: &[&str], deep: &Sketch, at: &mut Vec<String>) -> Meet {
    let mut node = shallow;
    for segment in rel {
        match node {
            // The deeper file's directories are objects: a leaf on the way
            // is a conflict there.
            Sketch::Leaf => return Meet::Conflict(at.join("/")),
            Sketch::Map { children, complete } => match children.get(*segment) {
                Some(child) => {
                    at.push((*segment).to_string());
                    node = child;
                }
                None if *complete => return Meet::Apart,
                None => return Meet::Undecided,
            },
        }
    }
    compare(node, deep, at)
}

fn compare(a: &Sketch, b: &Sketch, at: &mut Vec<String>) -> Meet {
    let (
        Sketch::Map {
            children: ca,
            complete: xa,
        },
        Sketch::Map {
            children: cb,
            complete: xb,
        },
    ) = (a, b)
    else {
        return Meet::Conflict(at.join("/"));
    };
    let mut verdict = if *xa && *xb {
        Meet::Apart
    } else {
        Meet::Undecided
    };
    for (key, va) in ca {
        if let Some(vb) = cb.get(key) {
            at.push(key.clone());
            let here = compare(va, vb, at);
            at.pop();
            match here {
                Meet::Apart => {}
                Meet::Conflict(_) => return here,
                Meet::Undecided => verdict = Meet::Undecided,
            }
        }
    }
    verdict
}
