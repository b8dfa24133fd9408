//! The paths of a bundle's entries, each held once.
//!
//! Why not a `HashSet<String>`: a bundle of 100,000 files would hold each
//! path in its own allocation, and again wherever a later rule names a file
//! (data files, Rego modules). Here the paths share one buffer and the rest
//! of validation holds 4-byte [`PathId`]s; the duplicate check's table holds
//! ids too, so the paths' cost is about their bytes.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// One path in a [`Paths`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathId(u32);

/// Every entry path seen so far, in order.
#[derive(Default)]
pub struct Paths {
    bytes: String,
    /// Where each path ends in `bytes`; it starts where the one before ends.
    ends: Vec<usize>,
    /// Ids by their path's hash, to find a path already seen.
    index: HashTable<PathId>,
    // Keyed per process, so a bundle cannot be built to collide.
    hasher: std::hash::RandomState,
}

impl std::fmt::Debug for Paths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paths")
            .field("count", &self.ends.len())
            .finish_non_exhaustive()
    }
}

impl Paths {
    /// Adds `path`: its id, or `None` when it was already there.
    pub fn insert(&mut self, path: &str) -> Option<PathId> {
        let hash = self.hasher.hash_one(path);
        let Paths {
            bytes,
            ends,
            index,
            hasher,
        } = self;
        let get = |id: &PathId| resolve(bytes, ends, *id);
        if index.find(hash, |id| get(id) == path).is_some() {
            return None;
        }
        // Four billion entries are far past any size limit: the tar reader
        // stops long before.
        let id = PathId(u32::try_from(ends.len()).expect("fewer than 2^32 entries"));
        index.insert_unique(hash, id, |id| hasher.hash_one(resolve(bytes, ends, *id)));
        bytes.push_str(path);
        ends.push(bytes.len());
        Some(id)
    }

    /// The path `id` stands for.
    pub fn get(&self, id: PathId) -> &str {
        resolve(&self.bytes, &self.ends, id)
    }
}

fn resolve<'p>(bytes: &'p str, ends: &[usize], id: PathId) -> &'p str {
    let i = id.0 as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] };
    &bytes[start..ends[i]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_inserted_once_and_resolves_to_itself() {
        let mut paths = Paths::default();
        let a = paths.insert("a/data.json").unwrap();
        let b = paths.insert("b/data.json").unwrap();
        let empty = paths.insert("").unwrap();
        assert_eq!(paths.insert("a/data.json"), None);
        assert_eq!(paths.insert(""), None);
        assert_eq!(paths.get(a), "a/data.json");
        assert_eq!(paths.get(b), "b/data.json");
        assert_eq!(paths.get(empty), "");
    }

    #[test]
    fn many_paths_stay_distinct_across_table_growth() {
        let mut paths = Paths::default();
        let ids: Vec<PathId> = (0..10_000)
            .map(|i| paths.insert(&format!("t{i}/data.json")).unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(paths.get(*id), format!("t{i}/data.json"));
            assert_eq!(paths.insert(&format!("t{i}/data.json")), None);
        }
    }
}
