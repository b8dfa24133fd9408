//! The second look at a data file, re-read from the bundle's file: what
//! the merge-conflict and roots rules need and the first look did not keep.
//!
//! One visitor walks the file's value without building it, doing up to
//! three things at each path: compare it with what other data files put
//! there (`held`), keep the part other files will be compared with
//! (`want`), and check it against the roots. Where none applies, the value
//! is skipped unread.

use std::collections::{BTreeMap, HashMap};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::sketch::{Position, position};

/// What data files put at one path of `data`, as far as other files need
/// it: objects with their keys, any other value a leaf. `owner` is the
/// first file that put it there, `shared` whether another file did too.
#[derive(Debug)]
pub struct Held {
    owner: u32,
    shared: bool,
    /// `None`: a leaf.
    children: Option<HashMap<String, Held>>,
}

impl Held {
    fn map(owner: u32) -> Held {
        Held {
            owner,
            shared: false,
            children: Some(HashMap::new()),
        }
    }

    fn leaf(owner: u32) -> Held {
        Held {
            owner,
            shared: false,
            children: None,
        }
    }

    /// The empty `data` object, which no file owns.
    pub fn root() -> Held {
        Held {
            owner: u32::MAX,
            shared: true,
            children: Some(HashMap::new()),
        }
    }

    /// Whether this is a leaf (not an object).
    pub fn is_leaf(&self) -> bool {
        self.children.is_none()
    }

    /// Whether a file other than `file` put something here.
    pub fn others_than(&self, file: u32) -> bool {
        self.shared || self.owner != file
    }

    pub fn child(&self, key: &str) -> Option<&Held> {
        self.children.as_ref()?.get(key)
    }

    /// Merges `from` (file `file`'s) at `dir` into this tree, as OPA merges
    /// data files: objects key by key, any other value meeting a value is a
    /// conflict (whose path is returned). The maps of `dir` are the file's.
    pub fn insert(&mut self, dir: &[&str], from: Held, file: u32) -> Result<(), String> {
        let mut at: Vec<String> = Vec::new();
        let mut node = self;
        let Some((last, parents)) = dir.split_last() else {
            return merge(node, from, &mut at);
        };
        for segment in parents.iter().chain([last]) {
            if node.owner != file {
                node.shared = true;
            }
            let Some(children) = node.children.as_mut() else {
                return Err(at.join("/"));
            };
            at.push((*segment).to_string());
            if segment == last {
                return match children.get_mut(*segment) {
                    None => {
                        children.insert((*segment).to_string(), from);
                        Ok(())
                    }
                    Some(existing) => merge(existing, from, &mut at),
                };
            }
            node = children
                .entry((*segment).to_string())
                .or_insert_with(|| Held::map(file));
        }
        unreachable!("the last segment returns")
    }
}

fn merge(into: &mut Held, from: Held, at: &mut Vec<String>) -> Result<(), String> {
    if into.owner != from.owner {
        into.shared = true;
    }
    match (into.children.as_mut(), from.children) {
        (Some(existing), Some(children)) => {
            for (key, child) in children {
                match existing.get_mut(&key) {
                    None => {
                        existing.insert(key, child);
                    }
                    Some(node) => {
                        at.push(key);
                        merge(node, child, at)?;
                        at.pop();
                    }
                }
            }
            Ok(())
        }
        _ => Err(at.join("/")),
    }
}

/// Paths of a file's value that other files will be compared with:
/// toward their directories, and all of what lies at them.
#[derive(Debug, Default)]
pub struct Want {
    /// Everything from here down.
    pub all: bool,
    pub children: BTreeMap<String, Want>,
}

impl Want {
    /// Adds a directory, relative to the file's own.
    pub fn add(&mut self, rel: &[&str]) {
        let mut node = self;
        for segment in rel {
            if node.all {
                return;
            }
            node = node.children.entry((*segment).to_string()).or_default();
        }
        node.all = true;
        node.children.clear();
    }
}

static ALL: Want = Want {
    all: true,
    children: BTreeMap::new(),
};

/// The state of one walk.
pub struct Ctx<'a> {
    pub file: u32,
    pub roots: &'a [String],
    /// Keys kept in `Held` trees so far, and their bound.
    pub held_keys: &'a mut u64,
    pub max_held_keys: u64,
    /// The rule the walk found broken: (path for the message, message).
    pub broken: Option<Broken>,
    path: Vec<String>,
}

/// A rule a walk found broken.
#[derive(Debug)]
pub enum Broken {
    /// Data meets another file's at this path.
    Conflict(String),
    /// Data at this path is outside the roots.
    Outside(String),
    /// More keys must be held than allowed.
    TooManyKeys,
}

impl<'a> Ctx<'a> {
    pub fn new(
        file: u32,
        dir: &[&str],
        roots: &'a [String],
        held_keys: &'a mut u64,
        max_held_keys: u64,
    ) -> Ctx<'a> {
        Ctx {
            file,
            roots,
            held_keys,
            max_held_keys,
            broken: None,
            path: dir.iter().map(|s| (*s).to_string()).collect(),
        }
    }
}

/// One value's walk: `held` what others put at its path (to compare),
/// `want` what to keep of it, `roots` whether its path is on the way to a
/// root (only objects may be there).
pub struct Look<'c, 'a, 'h, 'w> {
    pub ctx: &'c mut Ctx<'a>,
    pub held: Option<&'h Held>,
    pub want: Option<&'w Want>,
    pub roots: bool,
}

impl Look<'_, '_, '_, '_> {
    fn fail<E: de::Error>(&mut self, broken: Broken) -> E {
        self.ctx.broken = Some(broken);
        E::custom("a bundle rule is broken")
    }

    fn here(&self) -> String {
        self.ctx.path.join("/")
    }

    fn leaf<E: de::Error>(mut self) -> Result<Option<Held>, E> {
        if let Some(held) = self.held
            && held.others_than(self.ctx.file)
        {
            let at = self.here();
            return Err(self.fail(Broken::Conflict(at)));
        }
        if self.roots {
            let at = self.here();
            return Err(self.fail(Broken::Outside(at)));
        }
        Ok(self.want.map(|_| Held::leaf(self.ctx.file)))
    }
}

impl<'de> DeserializeSeed<'de> for Look<'_, '_, '_, '_> {
    type Value = Option<Held>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<Held>, D::Error> {
        if self.held.is_none() && self.want.is_none() && !self.roots {
            d.deserialize_ignored_any(IgnoredAny)?;
            return Ok(None);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Look<'_, '_, '_, '_> {
    type Value = Option<Held>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<Held>, E> {
        self.leaf()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<Held>, E> {
        self.leaf()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<Held>, E> {
        self.leaf()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Option<Held>, E> {
        self.leaf()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Option<Held>, E> {
        self.leaf()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<Held>, E> {
        self.leaf()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Option<Held>, E> {
        self.leaf()
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Option<Held>, E> {
        self.leaf()
    }
    fn visit_unit<E: de::Error>(self) -> Result<Option<Held>, E> {
        self.leaf()
    }
    fn visit_none<E: de::Error>(self) -> Result<Option<Held>, E> {
        self.leaf()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<Held>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Held>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.leaf()
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Option<Held>, A::Error> {
        if let Some(held) = self.held
            && held.children.is_none()
            && held.others_than(self.ctx.file)
        {
            let at = self.here();
            return Err(self.fail(Broken::Conflict(at)));
        }
        let mut kept = self.want.map(|_| Held::map(self.ctx.file));
        while let Some(key) = map.next_key::<String>()? {
            self.ctx.path.push(key);
            let key = self.ctx.path.last().expect("just pushed");
            let roots = if self.roots {
                match position(&self.ctx.path, self.ctx.roots) {
                    Position::Under => false,
                    Position::OnTheWay => true,
                    Position::Outside => {
                        let at = self.here();
                        return Err(self.fail(Broken::Outside(at)));
                    }
                }
            } else {
                false
            };
            let held = self.held.and_then(|h| h.child(key));
            let want = self.want.and_then(|w| {
                if w.all {
                    Some(&ALL)
                } else {
                    w.children.get(key)
                }
            });
            if want.is_some() {
                *self.ctx.held_keys += 1;
                if *self.ctx.held_keys > self.ctx.max_held_keys {
                    return Err(self.fail(Broken::TooManyKeys));
                }
            }
            let key = key.clone();
            let child = map.next_value_seed(Look {
                ctx: &mut *self.ctx,
                held,
                want,
                roots,
            })?;
            self.ctx.path.pop();
            if let (Some(kept), Some(child)) = (kept.as_mut(), child) {
                // Duplicate keys: the last one wins, as in Go's decoder.
                kept.children.as_mut().expect("a map").insert(key, child);
            }
        }
        Ok(kept.take())
    }
}
