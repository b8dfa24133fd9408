//! Where bundles live on disk, and how they get there without ever being
//! torn.
//!
//! Layout, as OPA lays it out, plus polhost's metadata:
//! `<persistence_directory>/bundles/<name>/bundle.tar.gz` and
//! `.../metadata.json`. Every write is temp file + fsync + rename + fsync of
//! the directory, so a crash leaves the old file or the new one. A bundle
//! with `persist: false` lives in `<persistence_directory>/active/<name>/`
//! instead, which is never loaded at start. This module moves and reads
//! files; it does not judge their content (see [`crate::bundle`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;

/// The bundle file's name in its directory.
pub const BUNDLE_FILE: &str = "bundle.tar.gz";
/// The metadata file's name in its directory.
pub const METADATA_FILE: &str = "metadata.json";
/// The bundle that was current before the last commit (a hard link).
pub const PREVIOUS_BUNDLE_FILE: &str = "previous.tar.gz";
/// Its metadata.
pub const PREVIOUS_METADATA_FILE: &str = "previous.metadata.json";
/// Temp files start with this, so leftovers of a crash are recognisable.
const TEMP_PREFIX: &str = ".download-";

/// What polhost records beside a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The etag the service gave this bundle, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// Hex SHA-256 of `bundle.tar.gz`: a metadata file that does not match
    /// its bundle is not trusted.
    pub sha256: String,
    /// The manifest's revision ("" without one).
    pub revision: String,
    /// Size of `bundle.tar.gz` in bytes.
    pub size: u64,
    /// When it was downloaded (RFC 3339, UTC).
    pub fetched_at: String,
}

/// A bundle's directory on disk.
#[derive(Clone, Debug)]
pub struct BundleDir {
    dir: PathBuf,
}

impl BundleDir {
    /// The directory of bundle `name` under `persistence_directory`.
    pub fn new(persistence_directory: &Path, name: &str, persist: bool) -> BundleDir {
        let parent = if persist { "bundles" } else { "active" };
        BundleDir {
            dir: persistence_directory.join(parent).join(name),
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of the bundle file.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join(BUNDLE_FILE)
    }

    /// Creates the directory and removes temp files a crash left behind.
    pub fn prepare(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// A temp file in this directory (same filesystem, so the rename that
    /// commits it is atomic). Deleted if dropped uncommitted.
    pub fn temp_file(&self) -> io::Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(".tmp")
            .tempfile_in(&self.dir)
    }

    /// Makes `bundle` (already fsynced by the writer, or synced here) the
    /// bundle of this directory, then its metadata, keeping the pair that
    /// was current as the previous pair. A crash at any point leaves a
    /// current pair that matches, or a mismatched one and a previous pair
    /// that matches: [`BundleDir::pairs`] gives both, for the loader to
    /// check.
    pub fn commit(&self, bundle: NamedTempFile, metadata: &Metadata) -> io::Result<PathBuf> {
        bundle.as_file().sync_all()?;
        let path = self.bundle_path();
        let meta_path = self.dir.join(METADATA_FILE);
        if path.exists() && meta_path.exists() {
            self.link_replacing(&meta_path, PREVIOUS_METADATA_FILE)?;
            self.link_replacing(&path, PREVIOUS_BUNDLE_FILE)?;
            self.sync_dir()?;
        }
        bundle.persist(&path).map_err(|e| e.error)?;
        self.sync_dir()?;
        let mut meta = self.temp_file()?;
        serde_json::to_writer_pretty(&mut meta, metadata)?;
        meta.write_all(b"\n")?;
        meta.as_file().sync_all()?;
        meta.persist(&meta_path).map_err(|e| e.error)?;
        self.sync_dir()?;
        Ok(path)
    }

    /// Hard-links `from` as `name` in this directory, through a temp name
    /// and a rename, so `name` is never missing once it exists.
    fn link_replacing(&self, from: &Path, name: &str) -> io::Result<()> {
        let temp = self
            .dir
            .join(format!("{TEMP_PREFIX}link-{}-{name}", std::process::id()));
        let _ = fs::remove_file(&temp);
        fs::hard_link(from, &temp)?;
        fs::rename(&temp, self.dir.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// The (bundle, metadata) pairs on disk, current first then previous,
    /// for the loader to try in turn.
    pub fn pairs(&self) -> [(PathBuf, PathBuf); 2] {
        [
            (self.bundle_path(), self.dir.join(METADATA_FILE)),
            (
                self.dir.join(PREVIOUS_BUNDLE_FILE),
                self.dir.join(PREVIOUS_METADATA_FILE),
            ),
        ]
    }

    /// Makes the previous pair current again (after the current one was
    /// refused at load): metadata first, so a crash in between leaves a
    /// mismatched pair, never a wrong match.
    pub fn promote_previous(&self) -> io::Result<()> {
        fs::rename(
            self.dir.join(PREVIOUS_METADATA_FILE),
            self.dir.join(METADATA_FILE),
        )?;
        fs::rename(self.dir.join(PREVIOUS_BUNDLE_FILE), self.bundle_path())?;
        self.sync_dir()
    }
}

/// A metadata file, if it exists and parses.
pub fn read_metadata(path: &Path) -> Option<Metadata> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

impl BundleDir {}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(sha: &str) -> Metadata {
        Metadata {
            etag: Some("\"e1\"".into()),
            sha256: sha.into(),
            revision: "r1".into(),
            size: 3,
            fetched_at: "2026-11-27T00:00:00Z".into(),
        }
    }

    #[test]
    fn commit_replaces_bundle_and_metadata_and_leaves_no_temp() {
        let root = tempfile::tempdir().unwrap();
        let dir = BundleDir::new(root.path(), "authz", true);
        dir.prepare().unwrap();
        for content in [b"one".as_slice(), b"two"] {
            let mut temp = dir.temp_file().unwrap();
            temp.write_all(content).unwrap();
            dir.commit(temp, &metadata("x")).unwrap();
            assert_eq!(fs::read(dir.bundle_path()).unwrap(), content);
        }
        assert_eq!(
            read_metadata(&dir.path().join(METADATA_FILE)).unwrap(),
            metadata("x")
        );
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "bundle.tar.gz",
                "metadata.json",
                "previous.metadata.json",
                "previous.tar.gz"
            ]
        );
        assert_eq!(
            fs::read(dir.path().join(PREVIOUS_BUNDLE_FILE)).unwrap(),
            b"one"
        );
        dir.promote_previous().unwrap();
        assert_eq!(fs::read(dir.bundle_path()).unwrap(), b"one");
        assert!(dir.path().ends_with("bundles/authz"));
    }

    #[test]
    fn prepare_removes_crash_leftovers_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = BundleDir::new(root.path(), "b", false);
        dir.prepare().unwrap();
        let leftover = dir.temp_file().unwrap().keep().unwrap().1;
        fs::write(dir.bundle_path(), b"keep").unwrap();
        dir.prepare().unwrap();
        assert!(!leftover.exists());
        assert!(dir.bundle_path().exists());
        assert!(dir.path().ends_with("active/b"));
    }
}
