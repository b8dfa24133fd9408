//! OPA's rules on data files (`data.json`, `data.yaml`, `data.yml`) in
//! bounded memory, whatever their size.
//!
//! OPA merges every data file at its directory's path in `data`: a root
//! file must hold an object, objects merge key by key, any other value
//! meeting a value is a conflict; every path must lie under a manifest root
//! (objects on the way to a root are looked into). OPA holds all of `data`
//! to check this; polhost holds only what a rule needs:
//!
//! * First look, while the bundle streams ([`sketch`]): syntax and depth,
//!   whether the value is an object, and its keys near the top of `data`
//!   (a fixed budget), which decide the roots rule for most bundles.
//! * A conflict can only arise where two files' directories overlap (one
//!   a prefix of the other, or the same). Only for those, and for files the
//!   sketch could not decide the roots of, a second look ([`look`])
//!   re-reads the bundle's file: the shallower file's part that the deeper
//!   one lands in is held, the deeper one is compared with it as it
//!   streams. Held keys are bounded by `max_data_keys`.

mod look;
pub mod sketch;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use look::{Broken, Ctx, Held, Look, Want};
use sketch::{Budget, Meet, RootsVerdict, Sketch, SketchSeed};

use crate::BundleError;
use crate::paths::{PathId, Paths};
use crate::yaml::{self, Merges, YamlError};

/// One data file, as the first look left it. Small on purpose: a bundle
/// may hold 100,000 of them, all held until the manifest (often last) says
/// the roots.
#[derive(Debug)]
struct DataFile {
    path: PathId,
    size: u64,
    /// A YAML file that may hold merge keys: its first look read them as
    /// ordinary keys, so its sketch knows nothing and the second look
    /// reads it with them expanded.
    merges: bool,
    /// Dropped once the roots are checked.
    sketch: Option<Sketch>,
}

/// The directory of a data file's path: what precedes the last `/`.
fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

fn segments(dir: &str) -> Vec<&str> {
    if dir.is_empty() {
        Vec::new()
    } else {
        dir.split('/').collect()
    }
}

/// The data files of one bundle.
#[derive(Debug, Default)]
pub struct DataFiles {
    files: Vec<DataFile>,
    budget: Budget,
}

/// What the second look must do, for the data files that need it.
#[derive(Debug)]
pub struct Plan {
    index: HashMap<String, usize>,
    /// By index in the bundle's data files; the others need nothing.
    work: BTreeMap<usize, Work>,
}

#[derive(Debug, Default)]
struct Work {
    /// What to keep of the file for the files whose directories lie in it.
    want: Option<Want>,
    /// The files that hold what this one is compared with.
    partners: Vec<usize>,
    /// Whether its roots need the second look.
    roots: bool,
}

impl DataFiles {
    /// The first look at data file `path` (`size` bytes), as it streams.
    pub fn scan(
        &mut self,
        paths: &Paths,
        path: PathId,
        size: u64,
        reader: &mut dyn BufRead,
    ) -> Result<(), BundleError> {
        let name = paths.get(path);
        let depth = segments(dir_of(name)).len();
        let seed = SketchSeed {
            budget: &mut self.budget,
            depth,
        };
        let (sketch, merges) = parse(name, size, Merges::Literal, reader, seed)?;
        if depth == 0 && !sketch.is_object() {
            return Err(BundleError::Rule {
                path: name.to_string(),
                message: "a data file at the bundle root must hold an object".into(),
            });
        }
        let sketch = if merges {
            // Whatever the merges bring in is unknown: an object of keys
            // not known, which leaves every rule to the second look.
            Sketch::Map {
                children: Default::default(),
                complete: false,
            }
        } else {
            sketch
        };
        self.files.push(DataFile {
            path,
            size,
            merges,
            sketch: Some(sketch),
        });
        Ok(())
    }

    /// Checks what the first look can, and says what a second look must.
    pub fn plan(&mut self, paths: &Paths, roots: &[String]) -> Result<Option<Plan>, BundleError> {
        let dir = |i: usize| dir_of(paths.get(self.files[i].path));
        // The files by directory (then size, so that within a directory
        // the smaller file is held and the larger streamed): the files at
        // one directory are a run found by binary search, without a map of
        // strings.
        let mut by_dir: Vec<usize> = (0..self.files.len()).collect();
        by_dir.sort_by(|&a, &b| {
            (dir(a), self.files[a].size, a).cmp(&(dir(b), self.files[b].size, b))
        });
        let at_dir = |wanted: &str| {
            let start = by_dir.partition_point(|&i| dir(i) < wanted);
            let end = start + by_dir[start..].partition_point(|&i| dir(i) == wanted);
            &by_dir[start..end]
        };
        let mut work: BTreeMap<usize, Work> = BTreeMap::new();
        // Pairs of files whose directories overlap: (shallow, deep, the
        // deep one's directory relative to the shallow one's).
        for deep in 0..self.files.len() {
            let deep_dir = dir(deep);
            let depth = segments(deep_dir).len();
            for cut in 0..depth {
                let prefix = prefix(deep_dir, cut);
                for &shallow in at_dir(prefix) {
                    self.meet(paths, &mut work, shallow, deep, cut)?;
                }
            }
            // The same directory: the files before it in the run.
            let run = at_dir(deep_dir);
            let me = run.iter().position(|&i| i == deep).expect("in its own run");
            for &shallow in &run[..me] {
                self.meet(paths, &mut work, shallow, deep, depth)?;
            }
        }
        for (i, file) in self.files.iter_mut().enumerate() {
            let sketch = file.sketch.take().expect("scanned");
            let path = paths.get(file.path);
            match sketch::check_roots(&segments(dir_of(path)), &sketch, roots) {
                RootsVerdict::Fine => {}
                RootsVerdict::Undecided => work.entry(i).or_default().roots = true,
                RootsVerdict::Outside(at) => return Err(outside(&at, roots)),
            }
        }
        if work.is_empty() {
            return Ok(None);
        }
        let index = work
            .keys()
            .map(|&i| (paths.get(self.files[i].path).to_string(), i))
            .collect();
        Ok(Some(Plan { index, work }))
    }

    /// Whether the data of `shallow` and `deep` (whose directory is `cut`
    /// segments below the other's) can be told apart by their sketches.
    fn meet(
        &self,
        paths: &Paths,
        work: &mut BTreeMap<usize, Work>,
        shallow: usize,
        deep: usize,
        cut: usize,
    ) -> Result<(), BundleError> {
        let (s, d) = (&self.files[shallow], &self.files[deep]);
        let deep_path = paths.get(d.path);
        let dir = segments(dir_of(deep_path));
        let mut at: Vec<String> = dir[..cut].iter().map(|s| (*s).to_string()).collect();
        let (Some(s_sketch), Some(d_sketch)) = (&s.sketch, &d.sketch) else {
            unreachable!("every file is scanned before the plan");
        };
        match sketch::meet(s_sketch, &dir[cut..], d_sketch, &mut at) {
            Meet::Apart => {}
            Meet::Conflict(at) => return Err(conflict(deep_path, &at)),
            Meet::Undecided => {
                work.entry(shallow)
                    .or_default()
                    .want
                    .get_or_insert_with(Want::default)
                    .add(&dir[cut..]);
                work.entry(deep).or_default().partners.push(shallow);
            }
        }
        Ok(())
    }
}

/// The first `cut` segments of `dir`, as a slice of it.
fn prefix(dir: &str, cut: usize) -> &str {
    if cut == 0 {
        return "";
    }
    match dir.match_indices('/').nth(cut - 1) {
        Some((end, _)) => &dir[..end],
        None => dir,
    }
}

fn conflict(file: &str, at: &str) -> BundleError {
    BundleError::Rule {
        path: file.to_string(),
        message: format!("data conflicts with another data file at {at:?}"),
    }
}

/// The second look's state across its passes.
pub struct SecondLook<'p> {
    files: &'p DataFiles,
    paths: &'p Paths,
    plan: &'p Plan,
    roots: &'p [String],
    held: Held,
    held_keys: u64,
    max_held_keys: u64,
    /// Files compared only once every file they meet was held.
    deferred: Vec<usize>,
}

impl<'p> SecondLook<'p> {
    /// A second look per `plan`.
    pub fn new(
        files: &'p DataFiles,
        paths: &'p Paths,
        plan: &'p Plan,
        roots: &'p [String],
        max_held_keys: u64,
    ) -> Self {
        SecondLook {
            files,
            paths,
            plan,
            roots,
            held: Held::root(),
            held_keys: 0,
            max_held_keys,
            deferred: Vec::new(),
        }
    }

    /// Whether the entry at `path` is looked at in `pass` (1: hold, compare
    /// and check roots; 2: compare what had to wait).
    pub fn wants(&self, pass: u8, path: &str) -> bool {
        match self.plan.index.get(path) {
            None => false,
            Some(i) => pass == 1 || self.deferred.contains(i),
        }
    }

    /// Whether a second pass is needed after the first.
    pub fn needs_second_pass(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Looks at the data file `path` again.
    pub fn look(
        &mut self,
        pass: u8,
        path: &str,
        reader: &mut dyn BufRead,
    ) -> Result<(), BundleError> {
        let Some(&i) = self.plan.index.get(path) else {
            return Ok(());
        };
        let file = &self.files.files[i];
        let path = self.paths.get(file.path);
        let work = &self.plan.work[&i];
        let compare =
            !work.partners.is_empty() && (pass == 2 || work.partners.iter().all(|&p| p < i));
        if pass == 1 && !work.partners.is_empty() && !compare {
            self.deferred.push(i);
        }
        let (want, roots) = if pass == 1 {
            (work.want.as_ref(), work.roots)
        } else {
            (None, false)
        };
        let dir = segments(dir_of(path));
        let file_id = u32::try_from(i).unwrap_or(u32::MAX - 1);
        let conflict = |at: String| conflict(path, &at);
        // The file's directories are objects of its own: another file's
        // leaf on the way is a conflict there.
        let mut held = if compare { Some(&self.held) } else { None };
        for (k, segment) in dir.iter().enumerate() {
            let Some(node) = held else { break };
            if node.is_leaf() && node.others_than(file_id) {
                return Err(conflict(dir[..k].join("/")));
            }
            held = node.child(segment);
        }
        let mut ctx = Ctx::new(
            file_id,
            &dir,
            self.roots,
            &mut self.held_keys,
            self.max_held_keys,
        );
        let seed = Look {
            ctx: &mut ctx,
            held,
            want,
            roots,
        };
        let merges = if file.merges {
            Merges::Expanded
        } else {
            Merges::Literal
        };
        let kept = parse(path, file.size, merges, reader, seed).map(|(kept, _)| kept);
        // The visitor stashes the rule it found broken in its context.
        let kept = match (kept, ctx.broken.take()) {
            (_, Some(Broken::Conflict(at))) => return Err(conflict(at)),
            (_, Some(Broken::Outside(at))) => return Err(outside(&at, self.roots)),
            (_, Some(Broken::TooManyKeys)) => {
                return Err(BundleError::Rule {
                    path: path.to_string(),
                    message: format!(
                        "checking its merge with the data files it overlaps needs more than {} object keys held (polhost.bundle.max_data_keys)",
                        self.max_held_keys
                    ),
                });
            }
            (Err(e), None) => return Err(e),
            (Ok(kept), None) => kept,
        };
        if let Some(kept) = kept {
            self.held.insert(&dir, kept, file_id).map_err(conflict)?;
        }
        Ok(())
    }
}

fn outside(at: &str, roots: &[String]) -> BundleError {
    BundleError::Rule {
        path: format!("data at {at:?}"),
        message: format!(
            "outside the manifest roots {roots:?} (hint: check the bundle's directory structure)"
        ),
    }
}

/// Runs `seed` over the data file's value, JSON or YAML (its merge keys
/// read as `merges` says); also says whether a YAML file's bytes hold `<<`.
fn parse<S, T>(
    path: &str,
    size: u64,
    merges: Merges,
    reader: &mut dyn BufRead,
    seed: S,
) -> Result<(T, bool), BundleError>
where
    S: for<'de> serde::de::DeserializeSeed<'de, Value = T>,
{
    if !path.ends_with(".json") {
        let what = if path.ends_with(".yml") {
            "data.yml"
        } else {
            "data.yaml"
        };
        yaml::deserialize(reader, size, merges, seed).map_err(|e| match e {
            YamlError::Io(e) => BundleError::Corrupt(e),
            YamlError::Invalid(message) => BundleError::Malformed {
                path: path.to_string(),
                what,
                message,
            },
        })
    } else {
        let mut de = serde_json::Deserializer::from_reader(reader);
        let value = seed
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| crate::validate::json_error(path, "data.json", e))?;
        Ok((value, false))
    }
}
