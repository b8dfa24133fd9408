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
//!
//! polhost may run as root while others can reach the persistence
//! directory, so nothing in it is taken on trust: every directory on the
//! way to a bundle (the persistence directory, `bundles/`, `<name>/`) must
//! be owned by polhost's user and writable by nobody else
//! ([`crate::private_dir`]), is opened without following links, and every
//! file is created, renamed and linked relative to the directory's
//! descriptor. A link or a foreign entry is refused, never followed: at
//! start (the agent does not start) or at commit (the download fails and
//! the last good bundle stays).
//!
//! One agent at a time: [`lock`] holds an exclusive `flock` on
//! `polhost.lock` for the agent's life, so a second instance is refused
//! before it cleans temp files the first is still writing.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};
use tempfile::{NamedTempFile, TempPath};

use crate::private_dir::{self, Kind};

pub use polhost_config::bundle_directory::{
    BUNDLE_FILE, METADATA_FILE, PREVIOUS_BUNDLE_FILE, PREVIOUS_METADATA_FILE,
};
use polhost_config::bundle_directory::{KEPT_FILES, TEMP_PREFIX};
/// The lock file in the persistence directory (see [`lock`]).
pub const LOCK_FILE: &str = "polhost.lock";

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

/// The persistence directory, held by one agent: an exclusive `flock` on
/// its `polhost.lock`, released when this is dropped (or the process
/// ends, however it ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Creates (if missing) and checks the persistence directory, then locks
/// it for this agent. Another holder (another polhost, or another agent in
/// this process) is an error naming its pid, and nothing in the directory
/// is touched: the caller must take this before cleaning anything.
pub fn lock(persistence_directory: &Path) -> io::Result<DirLock> {
    let root = private_dir::open_root(persistence_directory, true)?;
    let path = persistence_directory.join(LOCK_FILE);
    let show = |e: rustix::io::Errno| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&root, LOCK_FILE, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            return Err(private_dir::refused(format!(
                "{}: not a regular file (a symbolic link): refused",
                path.display()
            )));
        }
        Err(e) => return Err(show(e)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(show)?;
    private_dir::check(
        &path,
        (&stat).into(),
        private_dir::euid(),
        Kind::RegularFile,
    )
    .map_err(private_dir::refused)?;
    let mut file = File::from(fd);
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => "pid unknown".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "in use by another polhost ({holder}; it holds {})",
                    path.display()
                ),
            ));
        }
        Err(e) => return Err(show(e)),
    }
    // Who holds it, for the message a second instance gives.
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(DirLock { _file: file })
}

/// A bundle's directory on disk.
#[derive(Clone, Debug)]
pub struct BundleDir {
    /// The persistence directory.
    root: PathBuf,
    /// `bundles/<name>` or `active/<name>`, below `root`.
    relative: PathBuf,
    /// `root` joined with `relative`, for messages and readers.
    dir: PathBuf,
}

impl BundleDir {
    /// The directory of bundle `name` under `persistence_directory`.
    pub fn new(persistence_directory: &Path, name: &str, persist: bool) -> BundleDir {
        let parent = if persist { "bundles" } else { "active" };
        let relative = Path::new(parent).join(name);
        BundleDir {
            root: persistence_directory.to_path_buf(),
            dir: persistence_directory.join(&relative),
            relative,
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

    /// Opens this directory one component at a time from the persistence
    /// directory, each checked and none followed if it is a link (created
    /// when `create`). Done for every operation, so a directory replaced
    /// while polhost runs is refused, not followed.
    fn open(&self, create: bool) -> io::Result<OwnedFd> {
        let mut fd = private_dir::open_root(&self.root, create)?;
        let mut path = self.root.clone();
        for component in self.relative.components() {
            let Component::Normal(name) = component else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: not a plain relative directory name: refused",
                        self.dir.display()
                    ),
                ));
            };
            fd = private_dir::open_child(&fd, &path, name, create)?;
            path.push(name);
        }
        Ok(fd)
    }

    /// Checks that the files read back are what polhost wrote (regular
    /// files of its user, not links); `present` says which exist.
    fn check_kept(&self, dir: &OwnedFd) -> io::Result<[bool; 4]> {
        let mut present = [false; 4];
        for (found, name) in present.iter_mut().zip(KEPT_FILES) {
            *found = private_dir::check_entry(dir, &self.dir, name, Kind::RegularFile)?;
        }
        Ok(present)
    }

    /// Creates the directory (checked on the way, as [`Self::open`] does),
    /// refuses it if a file read back is not what polhost writes, and
    /// removes temp files a crash left behind. The caller holds the
    /// persistence directory's [`lock`], so no other polhost is writing
    /// them.
    pub fn prepare(&self) -> io::Result<()> {
        let dir = self.open(true)?;
        self.check_kept(&dir)?;
        let show =
            |e: rustix::io::Errno| io::Error::new(e.kind(), format!("{}: {e}", self.dir.display()));
        let mut leftovers = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir).map_err(show)? {
            let entry = entry.map_err(show)?;
            if entry
                .file_name()
                .to_bytes()
                .starts_with(TEMP_PREFIX.as_bytes())
            {
                leftovers.push(entry.file_name().to_owned());
            }
        }
        for name in leftovers {
            // unlinkat removes a planted link itself, never its target.
            rustix::fs::unlinkat(&dir, name.as_c_str(), AtFlags::empty()).map_err(show)?;
        }
        Ok(())
    }

    /// A temp file in this directory (same filesystem, so the rename that
    /// commits it is atomic), created exclusively relative to the checked
    /// directory: a planted name is never opened. Deleted if dropped
    /// uncommitted.
    pub fn temp_file(&self) -> io::Result<NamedTempFile> {
        let dir = self.open(false)?;
        self.temp_file_in(&dir)
    }

    fn temp_file_in(&self, dir: &OwnedFd) -> io::Result<NamedTempFile> {
        let flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut last = None;
        for _ in 0..16 {
            let name = format!("{TEMP_PREFIX}{:016x}.tmp", rand::random::<u64>());
            match rustix::fs::openat(dir, name.as_str(), flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => {
                    let path = TempPath::try_from_path(self.dir.join(&name))?;
                    return Ok(NamedTempFile::from_parts(File::from(fd), path));
                }
                Err(rustix::io::Errno::EXIST) => last = Some(rustix::io::Errno::EXIST),
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{}: {e}", self.dir.join(name).display()),
                    ));
                }
            }
        }
        let e = last.expect("the loop ran");
        Err(io::Error::new(
            e.kind(),
            format!("{}: {e}", self.dir.display()),
        ))
    }

    /// Renames the temp file `temp` (of this directory) to `name`,
    /// relative to `dir`: a link at `name` is replaced, never written
    /// through.
    fn rename_into(&self, dir: &OwnedFd, temp: NamedTempFile, name: &str) -> io::Result<()> {
        let (_file, path) = temp.into_parts();
        let temp_name = path
            .file_name()
            .expect("temp files are named")
            .to_os_string();
        rustix::fs::renameat(dir, temp_name.as_os_str(), dir, name).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}", self.dir.join(name).display()))
        })?;
        // Renamed: nothing is left to delete.
        let _ = path.keep();
        Ok(())
    }

    /// Makes `bundle` (already fsynced by the writer, or synced here) the
    /// bundle of this directory, then its metadata, keeping the pair that
    /// was current as the previous pair. A crash at any point leaves a
    /// current pair that matches, or a mismatched one and a previous pair
    /// that matches: [`BundleDir::pairs`] gives both, for the loader to
    /// check. A directory or file that is not polhost's own is refused
    /// (the bundle is not committed; the one on disk stays).
    pub fn commit(&self, bundle: NamedTempFile, metadata: &Metadata) -> io::Result<PathBuf> {
        bundle.as_file().sync_all()?;
        let dir = self.open(false)?;
        let [bundle_present, metadata_present, ..] = self.check_kept(&dir)?;
        if bundle_present && metadata_present {
            self.link_replacing(&dir, METADATA_FILE, PREVIOUS_METADATA_FILE)?;
            self.link_replacing(&dir, BUNDLE_FILE, PREVIOUS_BUNDLE_FILE)?;
            sync(&dir, &self.dir)?;
        }
        self.rename_into(&dir, bundle, BUNDLE_FILE)?;
        sync(&dir, &self.dir)?;
        self.write_metadata_in(&dir, metadata)?;
        Ok(self.bundle_path())
    }

    /// Replaces the current bundle's metadata (atomically, fsynced): after
    /// a commit, or when the service gave the active bytes a new etag.
    pub fn write_metadata(&self, metadata: &Metadata) -> io::Result<()> {
        let dir = self.open(false)?;
        self.check_kept(&dir)?;
        self.write_metadata_in(&dir, metadata)
    }

    fn write_metadata_in(&self, dir: &OwnedFd, metadata: &Metadata) -> io::Result<()> {
        let mut meta = self.temp_file_in(dir)?;
        serde_json::to_writer_pretty(&mut meta, metadata)?;
        meta.write_all(b"\n")?;
        meta.as_file().sync_all()?;
        self.rename_into(dir, meta, METADATA_FILE)?;
        sync(dir, &self.dir)
    }

    /// Hard-links `from` as `name` in this directory, through a temp name
    /// and a rename, so `name` is never missing once it exists. `from` was
    /// checked to be a regular file (linkat would not follow a link).
    fn link_replacing(&self, dir: &OwnedFd, from: &str, name: &str) -> io::Result<()> {
        let temp = format!("{TEMP_PREFIX}link-{}-{name}", std::process::id());
        let show = |e: rustix::io::Errno| {
            io::Error::new(e.kind(), format!("{}: {e}", self.dir.join(name).display()))
        };
        match rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(show(e)),
        }
        rustix::fs::linkat(dir, from, dir, temp.as_str(), AtFlags::empty()).map_err(show)?;
        rustix::fs::renameat(dir, temp.as_str(), dir, name).map_err(show)
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
        let dir = self.open(false)?;
        self.check_kept(&dir)?;
        for (from, to) in [
            (PREVIOUS_METADATA_FILE, METADATA_FILE),
            (PREVIOUS_BUNDLE_FILE, BUNDLE_FILE),
        ] {
            rustix::fs::renameat(&dir, from, &dir, to).map_err(|e| {
                io::Error::new(e.kind(), format!("{}: {e}", self.dir.join(from).display()))
            })?;
        }
        sync(&dir, &self.dir)
    }
}

/// fsyncs a directory, so the renames in it survive a crash.
fn sync(dir: &OwnedFd, path: &Path) -> io::Result<()> {
    rustix::fs::fsync(dir).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A metadata file, if it exists, is a regular file (a link is not
/// followed) and parses.
pub fn read_metadata(path: &Path) -> Option<Metadata> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

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

    #[test]
    fn a_locked_persistence_directory_is_refused_naming_the_holder_until_released() {
        let root = tempfile::tempdir().unwrap();
        let held = lock(root.path()).unwrap();
        let err = lock(root.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
        assert!(
            err.to_string().starts_with(&format!(
                "in use by another polhost (pid {}; it holds {}",
                std::process::id(),
                root.path().join(LOCK_FILE).display()
            )),
            "{err}"
        );
        drop(held);
        lock(root.path()).unwrap();
    }

    #[test]
    fn commit_refuses_a_linked_bundle_file_and_writes_nothing_through_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = BundleDir::new(root.path(), "authz", true);
        dir.prepare().unwrap();
        let mut temp = dir.temp_file().unwrap();
        temp.write_all(b"one").unwrap();
        dir.commit(temp, &metadata("x")).unwrap();
        let elsewhere = root.path().join("elsewhere");
        fs::write(&elsewhere, b"theirs").unwrap();
        fs::remove_file(dir.bundle_path()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.bundle_path()).unwrap();

        let mut temp = dir.temp_file().unwrap();
        temp.write_all(b"two").unwrap();
        let err = dir.commit(temp, &metadata("y")).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("bundle.tar.gz: not a regular file (a symbolic link): refused"),
            "{err}"
        );
        assert_eq!(fs::read(&elsewhere).unwrap(), b"theirs");
        // The refused temp file is gone, the metadata untouched.
        assert_eq!(
            read_metadata(&dir.path().join(METADATA_FILE)).unwrap(),
            metadata("x")
        );
        let temps = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(TEMP_PREFIX)
            })
            .count();
        assert_eq!(temps, 0);
        // And at start it is refused too.
        assert!(
            dir.prepare()
                .unwrap_err()
                .to_string()
                .contains("(a symbolic link)")
        );
    }
}
