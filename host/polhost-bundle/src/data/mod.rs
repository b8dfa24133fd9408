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

use std::collections::HashMap;
use std::io::BufRead;

use look::{Broken, Ctx, Held, Look, Want};
use sketch::{Budget, Meet, RootsVerdict, Sketch, SketchSeed};

use crate::BundleError;
use crate::yaml::{self, YamlError};

/// One data file, as the first look left it.
#[derive(Debug)]
struct DataFile {
    /// Its path in the bundle; the directory is what precedes the last `/`.
    path: String,
    size: u64,
    /// Dropped once the roots are checked.
    sketch: Option<Sketch>,
}

impl DataFile {
    fn dir(&self) -> &str {
        self.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
    }

    fn yaml(&self) -> bool {
        !self.path.ends_with(".json")
    }
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

/// What the second look must do for each data file (by index).
#[derive(Debug)]
pub struct Plan {
    index: HashMap<String, usize>,
    work: Vec<Work>,
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

impl Work {
    fn needed(&self) -> bool {
        self.want.is_some() || !self.partners.is_empty() || self.roots
    }
}

impl DataFiles {
    /// The first look at data file `path` (`size` bytes), as it streams.
    pub fn scan(
        &mut self,
        path: &str,
        size: u64,
        reader: &mut dyn BufRead,
    ) -> Result<(), BundleError> {
        let file = DataFile {
            path: path.to_string(),
            size,
            sketch: None,
        };
        let depth = segments(file.dir()).len();
        let seed = SketchSeed {
            budget: &mut self.budget,
            depth,
        };
        let sketch = parse(&file, reader, seed)?;
        if depth == 0 && !sketch.is_object() {
            return Err(BundleError::Rule {
                path: path.to_string(),
                message: "a data file at the bundle root must hold an object".into(),
            });
        }
        self.files.push(DataFile {
            sketch: Some(sketch),
            ..file
        });
        Ok(())
    }

    /// Checks what the first look can, and says what a second look must.
    pub fn plan(&mut self, roots: &[String]) -> Result<Option<Plan>, BundleError> {
        let mut work: Vec<Work> = (0..self.files.len()).map(|_| Work::default()).collect();
        let mut by_dir: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, file) in self.files.iter().enumerate() {
            by_dir.entry(file.dir()).or_default().push(i);
        }
        // Pairs of files whose directories overlap: (shallow, deep, the
        // deep one's directory relative to the shallow one's).
        let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
        for (deep, file) in self.files.iter().enumerate() {
            let dir = segments(file.dir());
            for cut in 0..dir.len() {
                let prefix = dir[..cut].join("/");
                for &shallow in by_dir.get(prefix.as_str()).into_iter().flatten() {
                    pairs.push((shallow, deep, cut));
                }
            }
        }
        for group in by_dir.values().filter(|g| g.len() > 1) {
            // The smaller file of a directory is held, the larger streamed.
            let mut group = group.clone();
            group.sort_by_key(|&i| (self.files[i].size, i));
            for (k, &shallow) in group.iter().enumerate() {
                for &deep in &group[k + 1..] {
                    let cut = segments(self.files[deep].dir()).len();
                    pairs.push((shallow, deep, cut));
                }
            }
        }
        for (shallow, deep, cut) in pairs {
            let (s, d) = (&self.files[shallow], &self.files[deep]);
            let dir = segments(d.dir());
            let mut at: Vec<String> = dir[..cut].iter().map(|s| (*s).to_string()).collect();
            let (Some(s_sketch), Some(d_sketch)) = (&s.sketch, &d.sketch) else {
                unreachable!("every file is scanned before the plan");
            };
            match sketch::meet(s_sketch, &dir[cut..], d_sketch, &mut at) {
                Meet::Apart => {}
                Meet::Conflict(at) => return Err(conflict(&d.path, &at)),
                Meet::Undecided => {
                    work[shallow]
                        .want
                        .get_or_insert_with(Want::default)
                        .add(&dir[cut..]);
                    work[deep].partners.push(shallow);
                }
            }
        }
        for (file, work) in self.files.iter_mut().zip(&mut work) {
            let sketch = file.sketch.take().expect("scanned");
            let dir = file.path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            match sketch::check_roots(&segments(dir), &sketch, roots) {
                RootsVerdict::Fine => {}
                RootsVerdict::Undecided => work.roots = true,
                RootsVerdict::Outside(at) => return Err(outside(&at, roots)),
            }
        }
        if !work.iter().any(Work::needed) {
            return Ok(None);
        }
        let index = self
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| work[*i].needed())
            .map(|(i, f)| (f.path.clone(), i))
            .collect();
        Ok(Some(Plan { index, work }))
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
        plan: &'p Plan,
        roots: &'p [String],
        max_held_keys: u64,
    ) -> Self {
        SecondLook {
            files,
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
        let work = &self.plan.work[i];
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
        let dir = segments(file.dir());
        let file_id = u32::try_from(i).unwrap_or(u32::MAX - 1);
        let conflict = |at: String| conflict(&file.path, &at);
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
        let kept = parse(file, reader, seed);
        // The visitor stashes the rule it found broken in its context.
        let kept = match (kept, ctx.broken.take()) {
            (_, Some(Broken::Conflict(at))) => return Err(conflict(at)),
            (_, Some(Broken::Outside(at))) => return Err(outside(&at, self.roots)),
            (_, Some(Broken::TooManyKeys)) => {
                return Err(BundleError::Rule {
                    path: file.path.clone(),
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

/// Runs `seed` over the data file's value, JSON or YAML.
fn parse<S, T>(file: &DataFile, reader: &mut dyn BufRead, seed: S) -> Result<T, BundleError>
where
    S: for<'de> serde::de::DeserializeSeed<'de, Value = T>,
{
    if file.yaml() {
        let what = if file.path.ends_with(".yml") {
            "data.yml"
        } else {
            "data.yaml"
        };
        yaml::deserialize(reader, file.size, seed).map_err(|e| match e {
            YamlError::Io(e) => BundleError::Corrupt(e),
            YamlError::Invalid(message) => BundleError::Malformed {
                path: file.path.clone(),
                what,
                message,
            },
        })
    } else {
        let mut de = serde_json::Deserializer::from_reader(reader);
        let value = seed
            .deserialize(&mut de)
            .and_then(|v| de.end().map(|()| v))
            .map_err(|e| crate::validate::json_error(&file.path, "data.json", e))?;
        Ok(value)
    }
}
