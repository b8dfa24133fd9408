//! Directories and files polhost trusts because nobody but its own user
//! can change them: the component cache (compiled code is run) and the
//! persistence directory (a link planted there would make polhost, perhaps
//! running as root, write and delete where the link points).
//!
//! Trusted means: of the expected kind (a link is never one), owned by
//! polhost's effective user, and writable by neither group nor others.
//! Directories are opened one component at a time relative to their
//! parent's descriptor with `O_NOFOLLOW`, and checked with `fstat` on the
//! descriptor that is then used, so what was checked is what is written.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};

/// What an entry must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Directory,
    RegularFile,
}

/// The facts about an entry the check looks at, from `lstat`/`fstat`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    file_type: FileType,
    uid: u32,
    mode: u32,
}

impl From<&fs::Metadata> for Found {
    fn from(meta: &fs::Metadata) -> Found {
        Found {
            file_type: FileType::from_raw_mode(meta.mode() as _),
            uid: meta.uid(),
            mode: meta.mode(),
        }
    }
}

impl From<&rustix::fs::Stat> for Found {
    // `st_mode` is narrower than u32 on some platforms.
    #[allow(clippy::unnecessary_cast)]
    fn from(stat: &rustix::fs::Stat) -> Found {
        Found {
            file_type: FileType::from_raw_mode(stat.st_mode as _),
            uid: stat.st_uid,
            mode: stat.st_mode as u32,
        }
    }
}

/// polhost's effective user id, the owner every trusted entry must have.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Refuses anything another user could have written: a link, an entry of
/// the wrong kind, another owner, group or world write permission. The
/// message names `path` and what is wrong.
pub(crate) fn check(path: &Path, found: Found, euid: u32, kind: Kind) -> Result<(), String> {
    let (kind_ok, expected) = match kind {
        Kind::Directory => (found.file_type == FileType::Directory, "directory"),
        Kind::RegularFile => (found.file_type == FileType::RegularFile, "regular file"),
    };
    if !kind_ok {
        let what = if found.file_type == FileType::Symlink {
            "a symbolic link"
        } else {
            "another kind of file"
        };
        return Err(format!(
            "{}: not a {expected} ({what}): refused",
            path.display()
        ));
    }
    if found.uid != euid {
        return Err(format!(
            "{}: owned by uid {}, not by polhost's user (uid {euid}): refused",
            path.display(),
            found.uid
        ));
    }
    if found.mode & 0o022 != 0 {
        return Err(format!(
            "{}: writable by group or others (mode {:o}): refused",
            path.display(),
            found.mode & 0o7777
        ));
    }
    Ok(())
}

/// A refusal as an I/O error (what the store's callers handle).
pub(crate) fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message)
}

/// Mode of the directories polhost creates: others may read bundles (OPA
/// may run as another user), nobody else may write.
const DIR_MODE: u32 = 0o755;

/// Opens the trusted directory `path` (created, with its parents, when
/// `create` and missing). The last component may not be a link; the
/// parents above it are the operator's choice and are not judged.
pub(crate) fn open_root(path: &Path, create: bool) -> io::Result<OwnedFd> {
    if create {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    open_checked(CWD, path, path)
}

/// Opens `name`, a single component, in the trusted directory `parent`
/// (whose path is `parent_path`, for messages), creating it when `create`
/// and missing. Never follows a link.
pub(crate) fn open_child(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &OsStr,
    create: bool,
) -> io::Result<OwnedFd> {
    let path = parent_path.join(name);
    if create {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(DIR_MODE as _)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
    open_checked(parent, Path::new(name), &path)
}

fn open_checked<Fd: std::os::fd::AsFd>(dir: Fd, name: &Path, shown: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        // A link (ELOOP under O_NOFOLLOW) or not a directory: say which.
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", shown.display())))?;
            return Err(refused(
                check(shown, Found::from(&stat), euid(), Kind::Directory)
                    .expect_err("openat refused it as a directory"),
            ));
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", shown.display()),
            ));
        }
    };
    let stat = rustix::fs::fstat(&fd)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", shown.display())))?;
    check(shown, Found::from(&stat), euid(), Kind::Directory).map_err(refused)?;
    Ok(fd)
}

/// Checks the entry `name` of the trusted directory `dir` without
/// following it: `Ok(false)` when absent.
pub(crate) fn check_entry(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
    kind: Kind,
) -> io::Result<bool> {
    let path = dir_path.join(name);
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => {
            check(&path, Found::from(&stat), euid(), kind).map_err(refused)?;
            Ok(true)
        }
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn found(path: &Path) -> Found {
        Found::from(&fs::symlink_metadata(path).unwrap())
    }

    #[test]
    fn only_an_entry_of_its_kind_owned_by_this_user_and_writable_by_nobody_else_passes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let me = euid();
        check(&file, found(&file), me, Kind::RegularFile).unwrap();
        check(dir.path(), found(dir.path()), me, Kind::Directory).unwrap();

        let err = check(&file, found(&file), me + 1, Kind::RegularFile).unwrap_err();
        assert!(
            err.contains(&format!(
                "owned by uid {me}, not by polhost's user (uid {}): refused",
                me + 1
            )),
            "{err}"
        );
        fs::set_permissions(&file, fs::Permissions::from_mode(0o664)).unwrap();
        let err = check(&file, found(&file), me, Kind::RegularFile).unwrap_err();
        assert!(
            err.ends_with("f: writable by group or others (mode 664): refused"),
            "{err}"
        );
        let err = check(&file, found(&file), me, Kind::Directory).unwrap_err();
        assert!(
            err.contains("not a directory (another kind of file)"),
            "{err}"
        );

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let err = check(&link, found(&link), me, Kind::Directory).unwrap_err();
        assert!(
            err.contains("link: not a directory (a symbolic link): refused"),
            "{err}"
        );
    }

    #[test]
    fn a_linked_directory_component_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(dir.path(), false).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("bundles")).unwrap();
        let err = open_child(&root, dir.path(), "bundles".as_ref(), true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string()
                .contains("bundles: not a directory (a symbolic link): refused"),
            "{err}"
        );
        let err = open_root(&dir.path().join("bundles"), true).unwrap_err();
        assert!(
            err.to_string().contains("(a symbolic link): refused"),
            "{err}"
        );
        // Created with a mode nobody else can write through.
        let made = open_child(&root, dir.path(), "active".as_ref(), true).unwrap();
        assert_eq!(rustix::fs::fstat(&made).unwrap().st_mode & 0o022, 0);
    }
}
