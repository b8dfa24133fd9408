//! The streaming validator: gzip, then tar, entry by entry, then OPA's
//! bundle rules once the archive has ended.
//!
//! One pass, front to back, while the bytes arrive. Memory does not grow
//! with the bundle's bytes: it holds one tar block and a few buffers, plus,
//! per file, its path (duplicates), per `.rego` its package path, per data
//! file its path and size, and a fixed budget of data keys near the top of
//! `data` (see `data`). Only when a data rule needs more (data files whose
//! directories overlap), a second look re-reads the bundle's file
//! ([`FirstLook::finish`]).
//!
//! Refuses what OPA's loader refuses (not gzip or tar, truncated, bad
//! `.manifest`/data files, files over `size_limit_bytes`, roots violations,
//! delta bundles, which polhost does not support) and, stricter than OPA,
//! hostile archives: anything but regular files and directories,
//! absolute paths, `..`, duplicate paths, non-UTF-8 names, gzip bombs and
//! data after the end of the tar archive.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::rc::Rc;

use flate2::read::MultiGzDecoder;

use super::Manifest;
use super::data::{DataFiles, SecondLook};
use super::paths::{PathId, Paths};
use super::rules;
use super::signing::{self, FileDigests, Hashers, SignedFile, Verification};

/// Default `polhost.bundle.max_expansion_ratio`.
pub const DEFAULT_MAX_EXPANSION_RATIO: u64 = 200;
/// Default `polhost.bundle.max_uncompressed_bytes` (8 GiB).
pub const DEFAULT_MAX_UNCOMPRESSED_BYTES: u64 = 8 << 30;
/// Default `polhost.bundle.max_data_keys`.
pub const DEFAULT_MAX_DATA_KEYS: u64 = 1_000_000;
/// The expansion ratio is only checked past this many uncompressed bytes:
/// tar headers and padding of a small bundle compress far better than 200:1.
pub const EXPANSION_GRACE_BYTES: u64 = 1 << 20;
/// How far into a `.rego` file the package declaration may be.
const PACKAGE_SEARCH_BYTES: u64 = 1 << 20;

/// Bounds on what a bundle may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidationLimits {
    /// The largest size of one file in the bundle (`size_limit_bytes`).
    pub file_size_limit: u64,
    /// Uncompressed bytes per compressed byte, past the first MiB.
    pub max_expansion_ratio: u64,
    /// Uncompressed bytes of the whole archive.
    pub max_uncompressed_bytes: u64,
    /// Object keys of data files held in memory to check the merge of data
    /// files whose directories overlap (nothing else is held: a data file
    /// streams, however many keys it has).
    pub max_data_keys: u64,
}

impl ValidationLimits {
    /// The defaults, with `size_limit_bytes` as given.
    pub fn new(file_size_limit: u64) -> ValidationLimits {
        ValidationLimits {
            file_size_limit,
            max_expansion_ratio: DEFAULT_MAX_EXPANSION_RATIO,
            max_uncompressed_bytes: DEFAULT_MAX_UNCOMPRESSED_BYTES,
            max_data_keys: DEFAULT_MAX_DATA_KEYS,
        }
    }
}

/// What validation learnt about a good bundle.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BundleSummary {
    /// The `.manifest`, if the bundle has one.
    pub manifest: Option<Manifest>,
    /// How many regular files the bundle holds.
    pub files: u64,
    /// Their total size, uncompressed.
    pub uncompressed_bytes: u64,
}

impl BundleSummary {
    /// The manifest's revision, or "" (OPA's revision of a bundle without
    /// one).
    pub fn revision(&self) -> &str {
        self.manifest
            .as_ref()
            .and_then(|m| m.revision.as_deref())
            .unwrap_or("")
    }

    /// The bundle's roots (`[""]` without a manifest or manifest roots).
    pub fn roots(&self) -> Vec<String> {
        self.manifest
            .as_ref()
            .map(Manifest::roots)
            .unwrap_or_else(|| vec![String::new()])
    }
}

/// Why a bundle was refused. Each names the entry at fault where there is
/// one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The bytes are not gzip.
    #[error("not a gzip stream: {0}")]
    NotGzip(io::Error),
    /// The gzip or tar stream is damaged or cut short.
    #[error("corrupt or truncated archive: {0}")]
    Corrupt(io::Error),
    /// An entry polhost refuses (a link, a device, a traversing name, a
    /// duplicate).
    #[error("entry {path:?}: {reason}")]
    Entry {
        /// The entry's name.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file larger than `size_limit_bytes`.
    #[error("entry {path:?}: {size} bytes exceeds size_limit_bytes ({limit})")]
    FileTooLarge {
        /// The file.
        path: String,
        /// Its size (from its header).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A `.manifest`, data or signature file that does not parse.
    #[error("{path}: invalid {what}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// What it should have been (`JSON`, `manifest`, ...).
        what: &'static str,
        /// The parser's message.
        message: String,
    },
    /// An OPA bundle rule (roots, packages, data) is broken.
    #[error("{path}: {message}")]
    Rule {
        /// The file at fault.
        path: String,
        /// The rule it breaks.
        message: String,
    },
    /// The gzip stream expands beyond a configured cap.
    #[error("gzip bomb refused: {0}")]
    Bomb(String),
    /// The bundle's signature is missing, invalid or does not cover it.
    #[error("{path}: signature verification failed: {message}")]
    Signature {
        /// The file at fault (`.signatures.json` or a signed file).
        path: String,
        /// Why.
        message: String,
    },
    /// Non-zero bytes after the tar archive's end, or after the gzip stream.
    #[error("data after the end of the archive: {0}")]
    Trailing(String),
    /// Reading the bytes failed.
    #[error("reading the bundle: {0}")]
    Io(io::Error),
}

/// Counts the compressed bytes read.
struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Counts uncompressed bytes and stops the stream past the caps; the
/// reason is kept aside, as the tar reader may reword the io error.
struct BombGuard<R> {
    inner: R,
    compressed: Rc<Cell<u64>>,
    uncompressed: u64,
    limits: ValidationLimits,
    tripped: Rc<Cell<Option<&'static str>>>,
    reason: Rc<std::cell::RefCell<String>>,
}

impl<R: Read> Read for BombGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.uncompressed += n as u64;
        let compressed = self.compressed.get().max(1);
        let why = if self.uncompressed > self.limits.max_uncompressed_bytes {
            Some(format!(
                "the archive expands past max_uncompressed_bytes ({} bytes)",
                self.limits.max_uncompressed_bytes
            ))
        } else if self.uncompressed > EXPANSION_GRACE_BYTES
            && self.uncompressed / compressed >= self.limits.max_expansion_ratio
        {
            Some(format!(
                "{} bytes expanded from {compressed} exceeds max_expansion_ratio ({})",
                self.uncompressed, self.limits.max_expansion_ratio
            ))
        } else {
            None
        };
        if let Some(why) = why {
            *self.reason.borrow_mut() = why;
            self.tripped.set(Some("bomb"));
            return Err(io::Error::other("expansion cap exceeded"));
        }
        Ok(n)
    }
}

/// What a file's name makes it, for OPA.
#[derive(Debug, PartialEq)]
enum Kind {
    Manifest,
    Signatures,
    Data,
    Rego,
    Delta,
    Other,
}

fn kind_of(path: &str) -> Kind {
    let (dir, base) = match path.rsplit_once('/') {
        Some((dir, base)) => (dir, base),
        None => ("", path),
    };
    match base {
        ".manifest" if dir.is_empty() => Kind::Manifest,
        ".signatures.json" if dir.is_empty() => Kind::Signatures,
        "data.json" | "data.yaml" | "data.yml" => Kind::Data,
        "patch.json" => Kind::Delta,
        _ if base.ends_with(".rego") => Kind::Rego,
        _ => Kind::Other,
    }
}

/// Reads a gzipped tar bundle to its end and checks it, without signature
/// verification (a signed bundle is refused). Seeks back to the start for
/// a second look only if a data rule needs one.
pub fn validate(
    reader: impl Read + Seek,
    limits: ValidationLimits,
) -> Result<BundleSummary, BundleError> {
    validate_with(reader, limits, None)
}

/// Reads a gzipped tar bundle to its end and checks it, verifying its
/// signature with `verification` when given (OPA's rules: a signed bundle
/// needs keys; with `signing.keyid` an unsigned bundle is refused). Seeks
/// back to the start for a second look only if a data rule needs one.
pub fn validate_with(
    mut reader: impl Read + Seek,
    limits: ValidationLimits,
    verification: Option<&Verification>,
) -> Result<BundleSummary, BundleError> {
    let first = validate_stream(&mut reader, limits, verification)?;
    first.finish_seek(&mut reader)
}

/// A bundle read once, front to back, with every check done that needs
/// nothing more; [`FirstLook::finish`] does the rest.
pub struct FirstLook<'v> {
    state: State<'v>,
}

impl std::fmt::Debug for FirstLook<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstLook")
            .field("summary", &self.state.summary)
            .finish_non_exhaustive()
    }
}

/// Where the second look reads the bundle again, from its start.
trait Source {
    fn reader(&mut self) -> io::Result<Box<dyn Read + '_>>;
}

struct Reopen<F>(F);

impl<F: FnMut() -> io::Result<R>, R: Read + 'static> Source for Reopen<F> {
    fn reader(&mut self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new((self.0)()?))
    }
}

struct Rewind<'a, R>(&'a mut R);

impl<R: Read + Seek> Source for Rewind<'_, R> {
    fn reader(&mut self) -> io::Result<Box<dyn Read + '_>> {
        self.0.seek(SeekFrom::Start(0))?;
        Ok(Box::new(&mut *self.0))
    }
}

impl FirstLook<'_> {
    /// The rules that need the whole bundle, with a second look at its
    /// bytes when a data rule needs one: `reopen` gives them again from the
    /// start (the temp file the download wrote, the persisted file). It is
    /// not called for most bundles, and at most twice.
    pub fn finish<R: Read + 'static>(
        self,
        reopen: impl FnMut() -> io::Result<R>,
    ) -> Result<BundleSummary, BundleError> {
        self.state.finish(&mut Reopen(reopen))
    }

    /// [`FirstLook::finish`], rewinding `reader` for a second look.
    pub fn finish_seek(
        self,
        reader: &mut (impl Read + Seek),
    ) -> Result<BundleSummary, BundleError> {
        self.state.finish(&mut Rewind(reader))
    }
}

/// The first look: reads a gzipped tar bundle to its end and checks all
/// that can be checked as it streams (see [`validate_with`]).
pub fn validate_stream(
    reader: impl Read,
    limits: ValidationLimits,
    verification: Option<&Verification>,
) -> Result<FirstLook<'_>, BundleError> {
    let compressed = Rc::new(Cell::new(0));
    let tripped = Rc::new(Cell::new(None));
    let reason = Rc::new(std::cell::RefCell::new(String::new()));
    // Every gzip member, as Go's reader (OPA) reads them all: a second
    // member must not slip past validation.
    let mut gz = MultiGzDecoder::new(Counted {
        inner: reader,
        count: compressed.clone(),
    });
    // Read the header eagerly so "not gzip" is told apart from "corrupt".
    if gz.header().is_none() {
        let mut probe = [0u8; 0];
        gz.read(&mut probe).map_err(BundleError::NotGzip)?;
        if gz.header().is_none() {
            return Err(BundleError::NotGzip(io::Error::new(
                io::ErrorKind::InvalidData,
                "missing gzip header",
            )));
        }
    }
    let guard = BombGuard {
        inner: gz,
        compressed,
        uncompressed: 0,
        limits,
        tripped: tripped.clone(),
        reason: reason.clone(),
    };
    let mut state = State {
        limits,
        summary: BundleSummary::default(),
        paths: Paths::default(),
        packages: Vec::new(),
        data: DataFiles::default(),
        wasm_files: HashSet::new(),
        verification,
        digests: BTreeMap::new(),
        signed: None,
    };
    let mut archive = tar::Archive::new(guard);
    let result = read_entries(&mut archive, &mut state);
    let bomb = |e: BundleError| {
        if tripped.get().is_some() {
            BundleError::Bomb(reason.borrow().clone())
        } else {
            e
        }
    };
    result.map_err(bomb)?;
    // What follows the end-of-archive blocks (the rest of the tar record)
    // must be zeros, and the gzip stream must end there, its CRC and length
    // checked.
    let mut rest = archive.into_inner();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = match rest.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // After a whole gzip member, the decoder reads what follows as
            // the next member's header.
            Err(e) if e.to_string().contains("invalid gzip header") => {
                return Err(bomb(BundleError::Trailing(format!(
                    "bytes after the gzip stream are not a gzip member: {e}"
                ))));
            }
            Err(e) => return Err(bomb(BundleError::Corrupt(e))),
        };
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return Err(BundleError::Trailing(format!(
                "non-zero byte {} bytes after the tar end-of-archive marker",
                offset + i as u64
            )));
        }
        offset += n as u64;
    }
    Ok(FirstLook { state })
}

/// What the entries taught so far.
struct State<'v> {
    verification: Option<&'v Verification>,
    /// Per file, its digests (only when verifying).
    digests: BTreeMap<String, FileDigests>,
    /// The files the verified signature lists.
    signed: Option<BTreeMap<String, SignedFile>>,
    limits: ValidationLimits,
    summary: BundleSummary,
    /// Every entry's path, once (a second entry of one path is refused).
    paths: Paths,
    /// Each Rego module's package.
    packages: Vec<(PathId, String)>,
    data: DataFiles,
    wasm_files: HashSet<String>,
}

fn read_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    state: &mut State<'_>,
) -> Result<(), BundleError> {
    let entries = archive.entries().map_err(BundleError::Corrupt)?;
    for entry in entries {
        let mut entry = entry.map_err(BundleError::Corrupt)?;
        let (written, path) = entry_path(&entry)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() || kind.is_pax_global_extensions() {
            continue;
        }
        if !kind.is_file() {
            let what = match kind {
                tar::EntryType::Symlink => "symlinks",
                tar::EntryType::Link => "hardlinks",
                tar::EntryType::Char | tar::EntryType::Block => "device files",
                tar::EntryType::Fifo => "fifos",
                _ => "entries of this type",
            };
            return Err(BundleError::Entry {
                path: written,
                reason: format!("{what} are not allowed ({kind:?}; regular files only)"),
            });
        }
        let Some(id) = state.paths.insert(&path) else {
            return Err(BundleError::Entry {
                path: written,
                reason: format!("duplicate path (another entry is also {path:?})"),
            });
        };
        let size = entry.header().size().map_err(BundleError::Corrupt)?;
        if size > state.limits.file_size_limit {
            return Err(BundleError::FileTooLarge {
                path,
                size,
                limit: state.limits.file_size_limit,
            });
        }
        state.summary.files += 1;
        state.summary.uncompressed_bytes += size;
        let kind = kind_of(&path);
        let verifying = state.verification.is_some();
        // OPA hashes `.manifest` and data.json/data.yaml in canonical form:
        // those are held (one at a time, at most size_limit_bytes) when a
        // signature may need them. Everything else is hashed as it streams.
        let structured = verifying
            && (kind == Kind::Manifest
                || path == "data.json"
                || path.ends_with("/data.json")
                || path == "data.yaml"
                || path.ends_with("/data.yaml"));
        let held_needed = structured || kind == Kind::Signatures;
        let mut tee = Tee {
            inner: &mut entry,
            hashers: (verifying && !held_needed).then(Hashers::default),
        };
        let mut streamed = BufReader::with_capacity(64 * 1024, &mut tee);
        let held = if held_needed {
            let mut bytes = Vec::new();
            streamed
                .read_to_end(&mut bytes)
                .map_err(BundleError::Corrupt)?;
            Some(bytes)
        } else {
            None
        };
        let mut reader: Box<dyn BufRead + '_> = match &held {
            Some(bytes) => Box::new(bytes.as_slice()),
            None => Box::new(&mut streamed),
        };
        match &kind {
            Kind::Signatures => {
                let bytes = held.as_deref().unwrap_or_default();
                let Some(verification) = state.verification else {
                    return Err(BundleError::Signature {
                        path,
                        message: "the bundle is signed but no keys are configured to verify it"
                            .into(),
                    });
                };
                let files =
                    verification
                        .verify(bytes)
                        .map_err(|message| BundleError::Signature {
                            path: path.clone(),
                            message,
                        })?;
                state.signed = Some(files);
            }
            Kind::Manifest => {
                state.summary.manifest = Some(parse_json(&path, "manifest", &mut reader)?);
            }
            Kind::Data => state.data.scan(&state.paths, id, size, &mut reader)?,
            Kind::Rego => {
                let package = rules::read_package(&mut reader, PACKAGE_SEARCH_BYTES).map_err(
                    |e| match e {
                        rules::PackageError::Io(e) => BundleError::Corrupt(e),
                        rules::PackageError::Invalid(message) => BundleError::Malformed {
                            path: path.clone(),
                            what: "Rego module",
                            message,
                        },
                    },
                )?;
                state.packages.push((id, package));
            }
            Kind::Delta => {
                return Err(BundleError::Rule {
                    path,
                    message: "delta bundles (patch.json) are not supported by polhost".into(),
                });
            }
            Kind::Other => {
                if path.ends_with(".wasm") {
                    state.wasm_files.insert(path.clone());
                }
            }
        }
        // Whatever the entry, read it to its end: the tar reader must pass
        // over it anyway, and a truncation inside it must surface here.
        io::copy(&mut reader, &mut io::sink()).map_err(BundleError::Corrupt)?;
        drop(reader);
        drop(streamed);
        if verifying && kind != Kind::Signatures {
            let digests = match (&held, tee.hashers) {
                (Some(bytes), _) => {
                    let canonical = if path.ends_with(".yaml") {
                        signing::canonical_yaml(bytes)
                    } else {
                        signing::canonical_json(bytes)
                    };
                    let canonical = canonical.ok_or_else(|| BundleError::Malformed {
                        path: path.clone(),
                        what: "JSON",
                        message: "cannot be put in canonical form".into(),
                    })?;
                    let mut hashers = Hashers::default();
                    hashers.update(&canonical);
                    hashers.finish()
                }
                (None, Some(hashers)) => hashers.finish(),
                (None, None) => FileDigests::default(),
            };
            state.digests.insert(path, digests);
        }
    }
    Ok(())
}

/// Feeds what is read to the hashers, if any.
struct Tee<R> {
    inner: R,
    hashers: Option<Hashers>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(hashers) = &mut self.hashers {
            hashers.update(&buf[..n]);
        }
        Ok(n)
    }
}

impl State<'_> {
    /// The rules that need the whole bundle (the manifest may come last),
    /// with a second look through `source` if a data rule needs one.
    fn finish(mut self, source: &mut dyn Source) -> Result<BundleSummary, BundleError> {
        let manifest = self.summary.manifest.clone().unwrap_or_default();
        let roots = manifest.roots();
        if let Some((a, b)) = rules::overlapping_pair(&roots) {
            return Err(BundleError::Rule {
                path: ".manifest".into(),
                message: format!("roots {a:?} and {b:?} overlap"),
            });
        }
        if let Some(version) = manifest.rego_version
            && !(0..=1).contains(&version)
        {
            return Err(BundleError::Rule {
                path: ".manifest".into(),
                message: format!("rego_version must be 0 or 1, not {version}"),
            });
        }
        for (file, package) in &self.packages {
            if !roots.iter().any(|r| rules::root_contains(r, package)) {
                return Err(BundleError::Rule {
                    path: self.paths.get(*file).to_string(),
                    message: format!(
                        "package {:?} is outside the manifest roots {roots:?}",
                        package.replace('/', ".")
                    ),
                });
            }
        }
        for wasm in manifest.wasm.iter().flatten() {
            let entrypoint = rules::normalise_root(&wasm.entrypoint);
            if !roots.iter().any(|r| rules::root_contains(r, &entrypoint)) {
                return Err(BundleError::Rule {
                    path: ".manifest".into(),
                    message: format!(
                        "wasm entrypoint {:?} is outside the manifest roots {roots:?}",
                        wasm.entrypoint
                    ),
                });
            }
            let module = normalise(&wasm.module).unwrap_or_default();
            if !self.wasm_files.contains(&module) {
                return Err(BundleError::Rule {
                    path: ".manifest".into(),
                    message: format!("wasm module {:?} is not in the bundle", wasm.module),
                });
            }
        }
        self.check_signature()?;
        if let Some(plan) = self.data.plan(&self.paths, &roots)? {
            let mut look = SecondLook::new(
                &self.data,
                &self.paths,
                &plan,
                &roots,
                self.limits.max_data_keys,
            );
            for pass in [1, 2] {
                if pass == 2 && !look.needs_second_pass() {
                    break;
                }
                let reader = source.reader().map_err(BundleError::Io)?;
                reread(reader, |path, entry| {
                    if look.wants(pass, path) {
                        look.look(pass, path, entry)?;
                    }
                    Ok(())
                })?;
            }
        }
        Ok(self.summary)
    }

    /// OPA's outcomes: no verification -> nothing to check (a signed
    /// bundle was refused as it came); keyid configured and unsigned ->
    /// refused; signed -> every file (minus exclusions) listed with its
    /// hash, every listed file present.
    fn check_signature(&self) -> Result<(), BundleError> {
        let Some(verification) = self.verification else {
            return Ok(());
        };
        let Some(signed) = &self.signed else {
            if verification.requires_signature() {
                return Err(BundleError::Signature {
                    path: ".signatures.json".into(),
                    message: "missing: the bundle is not signed, and signing.keyid is configured"
                        .into(),
                });
            }
            return Ok(());
        };
        for (path, digests) in &self.digests {
            if verification.excluded(path) {
                continue;
            }
            signing::check_file(signed.get(path), digests).map_err(|message| {
                BundleError::Signature {
                    path: path.clone(),
                    message,
                }
            })?;
        }
        for name in signed.keys() {
            if !self.digests.contains_key(name) {
                return Err(BundleError::Signature {
                    path: name.clone(),
                    message: "listed in the bundle signature but not in the bundle".into(),
                });
            }
        }
        Ok(())
    }
}

/// Reads the bundle again, handing each regular file to `each`. The bytes
/// passed the first look, so only what could differ between two reads of
/// a file (someone changed it) is an error here.
fn reread(
    reader: Box<dyn Read + '_>,
    mut each: impl FnMut(&str, &mut dyn BufRead) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let changed = |e: io::Error| {
        BundleError::Corrupt(io::Error::other(format!(
            "the bundle's file changed after it was read: {e}"
        )))
    };
    let mut archive = tar::Archive::new(MultiGzDecoder::new(BufReader::with_capacity(
        64 * 1024,
        reader,
    )));
    for entry in archive.entries().map_err(changed)? {
        let mut entry = entry.map_err(changed)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let (_, path) = entry_path(&entry)?;
        let mut reader = BufReader::with_capacity(64 * 1024, &mut entry);
        each(&path, &mut reader)?;
    }
    Ok(())
}

/// `path` relative to the bundle root: `./` and `/` prefixes, empty and `.`
/// segments dropped; `None` if a `..` segment would leave the bundle.
fn normalise(path: &str) -> Option<String> {
    let mut out = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => return None,
            s => out.push(s),
        }
    }
    Some(out.join("/"))
}

/// The entry's path as written and relative to the bundle root, refused if
/// it could reach outside the bundle.
///
/// Paths in a bundle are bundle-root paths: `opa build` writes them with a
/// leading `/` (`/data.json`) and `tar -C dir .` with `./`; both mean the
/// same file as `data.json` and are normalised to it. A path that still
/// starts with `/` after that (`//etc/x`), or has a `..` segment, is refused.
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<(String, String), BundleError> {
    let raw = entry.path_bytes();
    let written = String::from_utf8(raw.to_vec()).map_err(|_| BundleError::Entry {
        path: String::from_utf8_lossy(&raw).into_owned(),
        reason: "name is not UTF-8".into(),
    })?;
    let path = written
        .strip_prefix("./")
        .or_else(|| written.strip_prefix('/'))
        .unwrap_or(&written);
    if path.starts_with('/') {
        return Err(BundleError::Entry {
            path: written,
            reason: "absolute paths are not allowed".into(),
        });
    }
    if path.contains('\0') {
        return Err(BundleError::Entry {
            path: written,
            reason: "NUL in the name".into(),
        });
    }
    if path.split(['/', '\\']).any(|segment| segment == "..") {
        return Err(BundleError::Entry {
            path: written,
            reason: "`..` segments are not allowed".into(),
        });
    }
    let normalised = normalise(path).unwrap_or_default();
    Ok((written, normalised))
}

pub(crate) fn json_error(path: &str, what: &'static str, e: serde_json::Error) -> BundleError {
    if e.is_io() {
        // The archive broke under the parser: not the file's fault.
        BundleError::Corrupt(e.into())
    } else {
        BundleError::Malformed {
            path: path.to_string(),
            what,
            message: e.to_string(),
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    path: &str,
    what: &'static str,
    reader: impl BufRead,
) -> Result<T, BundleError> {
    serde_json::from_reader(reader).map_err(|e| json_error(path, what, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tar_gz;

    const LIMITS: ValidationLimits = ValidationLimits {
        file_size_limit: 1 << 20,
        max_expansion_ratio: DEFAULT_MAX_EXPANSION_RATIO,
        max_uncompressed_bytes: DEFAULT_MAX_UNCOMPRESSED_BYTES,
        max_data_keys: DEFAULT_MAX_DATA_KEYS,
    };

    #[test]
    fn good_bundle_reports_revision_and_counts() {
        let bundle = tar_gz(&[
            (
                ".manifest",
                br#"{"revision":"r1","roots":["authz"]}"#.as_slice(),
            ),
            ("authz/policy.rego", b"package authz\nallow := true\n"),
            ("authz/data.json", br#"{"users":["alice"]}"#),
        ]);
        let summary = validate(std::io::Cursor::new(bundle.as_slice()), LIMITS).unwrap();
        assert_eq!(summary.revision(), "r1");
        assert_eq!(summary.files, 3);
    }

    #[test]
    fn opa_build_and_tar_dot_paths_are_bundle_root_paths() {
        use crate::testing::tar_gz_raw;
        let bundle = tar_gz_raw(
            &[
                ("/.manifest", br#"{"revision":"from-opa-build"}"#.as_slice()),
                ("/data.json", br#"{"a":1}"#),
            ],
            true,
        );
        assert_eq!(
            validate(std::io::Cursor::new(bundle.as_slice()), LIMITS)
                .unwrap()
                .revision(),
            "from-opa-build"
        );
        let bundle = tar_gz_raw(
            &[("./.manifest", br#"{"revision":"from-tar-dot"}"#.as_slice())],
            true,
        );
        assert_eq!(
            validate(std::io::Cursor::new(bundle.as_slice()), LIMITS)
                .unwrap()
                .revision(),
            "from-tar-dot"
        );
    }

    #[test]
    fn double_slash_absolute_path_is_refused() {
        let bundle = crate::testing::tar_gz_raw_path("//etc/x.rego", b"package x");
        let err = validate(std::io::Cursor::new(bundle.as_slice()), LIMITS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("absolute paths"), "{err}");
    }

    #[test]
    fn a_second_gzip_member_is_validated_too() {
        // The first member's tar has no end-of-archive blocks, so the tar
        // stream runs on into the second member: that is where the entry is.
        use crate::testing::tar_gz_raw;
        let mut bundle = tar_gz_raw(&[("a/data.json", br#"{"x":1}"#.as_slice())], false);
        bundle.extend(tar_gz_raw(&[("../../evil.rego", b"package evil")], true));
        let err = validate(std::io::Cursor::new(bundle.as_slice()), LIMITS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("../../evil.rego"), "{err}");
    }

    #[test]
    fn trailing_garbage_after_the_gzip_stream_is_refused() {
        let mut bundle = tar_gz(&[("a/data.json", br#"{"x":1}"#.as_slice())]);
        bundle.extend_from_slice(b"garbage after the end");
        assert!(validate(std::io::Cursor::new(bundle.as_slice()), LIMITS).is_err());
    }

    #[test]
    fn plain_text_is_not_gzip() {
        let err = validate(
            std::io::Cursor::new(b"<html>not a bundle</html>".as_slice()),
            LIMITS,
        )
        .unwrap_err();
        assert!(matches!(err, BundleError::NotGzip(_)), "{err}");
    }

    #[test]
    fn truncated_stream_is_corrupt() {
        let bundle = tar_gz(&[("a/data.json", br#"{"x":1}"#.as_slice())]);
        let err = validate(std::io::Cursor::new(&bundle[..bundle.len() - 10]), LIMITS).unwrap_err();
        assert!(matches!(err, BundleError::Corrupt(_)), "{err}");
    }

    #[test]
    fn malformed_manifest_names_the_file() {
        let bundle = tar_gz(&[(".manifest", b"{not json".as_slice())]);
        let err = validate(std::io::Cursor::new(bundle.as_slice()), LIMITS)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(".manifest: invalid manifest"), "{err}");
    }

    #[test]
    fn truncation_inside_the_manifest_is_corruption_not_bad_json() {
        let bundle = tar_gz(&[(
            ".manifest",
            br#"{"revision":"a-long-revision-string"}"#.as_slice(),
        )]);
        let err = validate(std::io::Cursor::new(&bundle[..bundle.len() / 2]), LIMITS).unwrap_err();
        assert!(matches!(err, BundleError::Corrupt(_)), "{err}");
    }

    #[test]
    fn malformed_data_json_names_the_file() {
        let bundle = tar_gz(&[("x/data.json", b"[1,".as_slice())]);
        let err = validate(std::io::Cursor::new(bundle.as_slice()), LIMITS)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x/data.json: invalid data.json"), "{err}");
    }

    #[test]
    fn parent_segments_are_refused() {
        let bundle = crate::testing::tar_gz_raw_path("a/../../etc/x.rego", b"package x");
        let err = validate(std::io::Cursor::new(bundle.as_slice()), LIMITS)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a/../../etc/x.rego") && err.contains("`..`"),
            "{err}"
        );
    }

    #[test]
    fn file_over_limit_is_refused() {
        let big = vec![b'a'; 2 << 20];
        let bundle = tar_gz(&[("big.rego", big.as_slice())]);
        let err = validate(std::io::Cursor::new(bundle.as_slice()), LIMITS).unwrap_err();
        assert!(matches!(err, BundleError::FileTooLarge { .. }), "{err}");
    }

    #[test]
    fn symlinks_are_refused() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, "link.rego", "/etc/passwd")
            .unwrap();
        let bundle = crate::testing::gzip(&builder.into_inner().unwrap());
        let err = validate(std::io::Cursor::new(bundle.as_slice()), LIMITS)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("link.rego") && err.contains("Symlink"),
            "{err}"
        );
    }

    fn refused(files: &[(&str, &[u8])]) -> String {
        let bundle = tar_gz(files);
        match validate(std::io::Cursor::new(bundle.as_slice()), LIMITS) {
            Ok(summary) => panic!("accepted: {summary:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn accepted(files: &[(&str, &[u8])]) -> BundleSummary {
        validate(std::io::Cursor::new(tar_gz(files).as_slice()), LIMITS).unwrap()
    }

    #[test]
    fn overlapping_manifest_roots_are_refused() {
        let err = refused(&[(".manifest", br#"{"roots":["a/b","a"]}"#)]);
        assert_eq!(err, r#".manifest: roots "a/b" and "a" overlap"#);
        let err = refused(&[(".manifest", br#"{"roots":["x","/x/"]}"#)]);
        assert!(err.contains("overlap"), "{err}");
        // A common prefix that is not a whole segment is no overlap.
        accepted(&[(".manifest", br#"{"roots":["ab","a"]}"#)]);
    }

    #[test]
    fn manifest_roots_default_to_everything() {
        let summary = accepted(&[("x/y/policy.rego", b"package x.y\n")]);
        assert_eq!(summary.roots(), [""]);
        let summary = accepted(&[(".manifest", br#"{"roots":["/a/"]}"#)]);
        assert_eq!(summary.roots(), ["a"]);
    }

    #[test]
    fn package_outside_the_roots_is_refused() {
        let err = refused(&[
            (
                "x/policy.rego",
                b"# licence header\n\npackage other.rules\n",
            ),
            (".manifest", br#"{"roots":["authz"]}"#),
        ]);
        assert_eq!(
            err,
            r#"x/policy.rego: package "other.rules" is outside the manifest roots ["authz"]"#
        );
        accepted(&[
            (".manifest", br#"{"roots":["authz"]}"#),
            (
                "p.rego",
                b"package authz[\"sub\"].x # trailing\nallow := true\n",
            ),
            ("q.rego", b"package authz\n"),
        ]);
    }

    #[test]
    fn rego_without_a_package_is_refused() {
        let err = refused(&[("p.rego", b"# only comments\nallow := true\n")]);
        assert!(
            err.starts_with("p.rego: invalid Rego module: the first statement must be a package"),
            "{err}"
        );
        let err = refused(&[("p.rego", b"# nothing\n")]);
        assert!(err.contains("no package declaration"), "{err}");
    }

    #[test]
    fn data_outside_the_roots_is_refused() {
        let err = refused(&[
            (".manifest", br#"{"roots":["authz"]}"#),
            ("other/data.json", br#"{"x":1}"#),
        ]);
        assert!(
            err.starts_with(r#"data at "other": outside the manifest roots ["authz"]"#),
            "{err}"
        );
        // Root data file: each key is checked, objects on the way to a root
        // are looked into.
        let err = refused(&[
            (".manifest", br#"{"roots":["a/b"]}"#),
            ("data.json", br#"{"a":{"b":{"x":1},"c":2}}"#),
        ]);
        assert!(err.starts_with(r#"data at "a/c": outside"#), "{err}");
        accepted(&[
            (".manifest", br#"{"roots":["a/b"]}"#),
            ("data.json", br#"{"a":{"b":{"x":1}}}"#),
            ("a/b/c/data.yaml", b"y: 2\n"),
        ]);
    }

    #[test]
    fn root_data_file_must_be_an_object() {
        let err = refused(&[("data.json", b"[1,2]")]);
        assert_eq!(
            err,
            "data.json: a data file at the bundle root must hold an object"
        );
        // Below the root, any value is fine.
        accepted(&[("a/data.json", b"[1,2]")]);
    }

    #[test]
    fn conflicting_data_files_are_refused() {
        let err = refused(&[
            ("data.json", br#"{"a":{"b":1}}"#),
            ("a/data.json", br#"{"b":2}"#),
        ]);
        assert_eq!(
            err,
            r#"a/data.json: data conflicts with another data file at "a/b""#
        );
        let err = refused(&[("a/data.json", b"1"), ("a/data.yml", b"x: 1\n")]);
        assert!(err.contains("conflicts"), "{err}");
        let err = refused(&[("a/data.json", b"1"), ("a/b/data.json", b"{}")]);
        assert!(err.starts_with("a/b/data.json: data conflicts"), "{err}");
        // Objects merge key by key.
        accepted(&[
            ("data.json", br#"{"a":{"b":1}}"#),
            ("a/data.json", br#"{"c":2}"#),
            ("a/d/data.yaml", b"e: 3\n"),
        ]);
    }

    /// OPA (v1.22.3, `opa build`) on the same files: a repeated YAML key is
    /// no error (the last one wins), merge keys are expanded before the
    /// rules apply.
    #[test]
    fn yaml_keys_are_read_as_opa_reads_them_repeated_and_merged() {
        accepted(&[("data.yaml", b"x:\n  k: 1\n  k: 2\n")]);
        // Expanded, `a` holds `x`, under the root "a/x"; read literally, it
        // would hold "<<", outside the roots.
        accepted(&[
            (".manifest", br#"{"roots":["a/x","b"]}"#),
            ("data.yaml", b"b: &m {x: 1}\na:\n  <<: *m\n"),
        ]);
        // The merge puts a value at a/x, where another file puts an object.
        let err = refused(&[
            ("data.yaml", b"b: &m {x: 1}\na:\n  <<: *m\n"),
            ("a/x/data.json", br#"{"y":2}"#),
        ]);
        assert!(err.contains("conflicts"), "{err}");
    }

    #[test]
    fn malformed_data_yaml_names_the_file() {
        let err = refused(&[("a/data.yaml", b"key: [unclosed\n")]);
        assert!(err.starts_with("a/data.yaml: invalid data.yaml"), "{err}");
    }

    #[test]
    fn held_data_keys_of_overlapping_files_are_bounded() {
        let limits = ValidationLimits {
            max_data_keys: 3,
            ..LIMITS
        };
        // Deep enough that the first look keeps no key: the smaller file
        // is held for the second look, and it has 5 keys.
        let json = br#"{"x":{"p":1,"q":2,"r":3,"s":4}}"#.as_slice();
        let yaml = b"x:\n  t: 1\n  u: 2\n  v: 3\n  w: 4\n  z: 5\n".as_slice();
        let bundle = tar_gz(&[("a/b/c/d/data.json", json), ("a/b/c/d/data.yaml", yaml)]);
        let err = validate(std::io::Cursor::new(&bundle), limits)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("a/b/c/d/data.json: checking its merge")
                && err.contains("more than 3 object keys held"),
            "{err}"
        );
        // The same keys in files that do not overlap hold nothing.
        let bundle = tar_gz(&[("a/b/c/d/data.json", json), ("a/b/c/e/data.yaml", yaml)]);
        validate(std::io::Cursor::new(&bundle), limits).unwrap();
    }

    #[test]
    fn a_data_json_with_more_than_a_million_keys_is_accepted_by_default() {
        let mut json = String::from("{\"users\":{");
        for i in 0..1_200_000 {
            if i > 0 {
                json.push(',');
            }
            json.push_str(&format!("\"u{i}\":{{\"n\":{i}}}"));
        }
        json.push_str("}}");
        let bundle = tar_gz(&[
            ("data.json", json.as_bytes()),
            (".manifest", br#"{"roots":["users"]}"#),
        ]);
        let summary = validate(
            std::io::Cursor::new(&bundle),
            ValidationLimits::new(1 << 30),
        )
        .unwrap();
        assert_eq!(summary.files, 2);
    }

    #[test]
    fn a_bundle_without_overlapping_data_files_is_not_read_twice() {
        let bundle = tar_gz(&[
            ("data.json", br#"{"a":{"x":1}}"#.as_slice()),
            ("b/data.json", br#"{"y":2}"#),
            ("c/d/data.yaml", b"z: 3\n"),
            (".manifest", br#"{"roots":["a","b","c"]}"#),
        ]);
        let first = validate_stream(bundle.as_slice(), LIMITS, None).unwrap();
        first
            .finish(|| -> io::Result<&'static [u8]> { panic!("read twice") })
            .unwrap();
    }

    #[test]
    fn yaml_alias_bomb_in_data_yaml_is_refused_naming_the_file() {
        let bomb = crate::yaml::ALIAS_BOMB.as_bytes();
        let started = std::time::Instant::now();
        let err = refused(&[("a/data.yaml", bomb)]);
        assert!(
            err.starts_with("a/data.yaml: invalid data.yaml: YAML alias budget exceeded"),
            "{err}"
        );
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    }

    #[test]
    fn deeply_nested_data_is_refused() {
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = refused(&[("a/data.yaml", deep.as_bytes())]);
        assert!(
            err.starts_with("a/data.yaml: invalid data.yaml: YAML nesting depth budget exceeded"),
            "{err}"
        );
        let block: String = (0..200).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        let err = refused(&[("b/data.yml", block.as_bytes())]);
        assert!(err.contains("YAML nesting depth budget exceeded"), "{err}");
        // JSON below the keys the first look keeps is skipped by
        // serde_json without recursion (a byte per level), so it is
        // accepted however deep, as OPA accepts 10,000 levels.
        let deep = format!("{}1{}", "{\"k\":".repeat(10_000), "}".repeat(10_000));
        accepted(&[("c/data.json", deep.as_bytes())]);
    }

    #[test]
    fn conflicts_between_overlapping_data_files_are_found_in_any_order() {
        // At the top of `data` the first look's keys decide; four levels
        // down it keeps none, and the second look re-reads the files.
        for pre in ["", "p/q/r/s/"] {
            let refused = |files: &[(&str, &[u8])]| {
                let files: Vec<(String, &[u8])> = files
                    .iter()
                    .map(|(p, c)| (format!("{pre}{p}"), *c))
                    .collect();
                let files: Vec<(&str, &[u8])> =
                    files.iter().map(|(p, c)| (p.as_str(), *c)).collect();
                refused(&files)
            };
            let accepted = |files: &[(&str, &[u8])]| {
                let files: Vec<(String, &[u8])> = files
                    .iter()
                    .map(|(p, c)| (format!("{pre}{p}"), *c))
                    .collect();
                let files: Vec<(&str, &[u8])> =
                    files.iter().map(|(p, c)| (p.as_str(), *c)).collect();
                accepted(&files)
            };
            // data.json and data.yaml in one directory, both orders.
            for files in [
                [
                    ("a/data.json", br#"{"x":{"y":1}}"#.as_slice()),
                    ("a/data.yaml", b"x:\n  y: 2\n".as_slice()),
                ],
                [
                    ("a/data.yaml", b"x:\n  y: 2\n".as_slice()),
                    ("a/data.json", br#"{"x":{"y":1}}"#.as_slice()),
                ],
            ] {
                let err = refused(&files);
                let want = format!(r#"data conflicts with another data file at "{pre}a/x/y""#);
                assert!(err.ends_with(&want), "{err}");
            }
            accepted(&[
                ("a/data.json", br#"{"x":{"y":1}}"#),
                ("a/data.yaml", b"x:\n  z: 2\n"),
            ]);
            // Parent and child directories, the deeper one first in the
            // archive.
            let err = refused(&[
                ("a/b/c/data.json", br#"{"d":1}"#),
                ("a/data.json", br#"{"b":{"c":{"d":{"e":1}}}}"#),
            ]);
            assert_eq!(
                err,
                format!(
                    r#"{pre}a/b/c/data.json: data conflicts with another data file at "{pre}a/b/c/d""#
                )
            );
            let err = refused(&[
                ("a/data.json", br#"{"b":[1]}"#),
                ("a/b/c/data.json", br#"{"d":1}"#),
            ]);
            assert_eq!(
                err,
                format!(
                    r#"{pre}a/b/c/data.json: data conflicts with another data file at "{pre}a/b""#
                )
            );
            // A leaf at a directory another file's data lands below.
            let err = refused(&[("a/b/data.json", b"{}"), ("a/data.yml", b"b: 7\n")]);
            let want = format!(r#"data conflicts with another data file at "{pre}a/b""#);
            assert!(err.contains(&want), "{err}");
            // Four files at one path, merging key by key.
            accepted(&[
                ("q/data.json", br#"{"a":{"b":{"x":1}}}"#),
                ("q/a/b/data.yaml", b"y: 2\n"),
                ("q/a/b/data.json", br#"{"z":3}"#),
                ("q/a/data.json", br#"{"b":{"w":4},"c":5}"#),
            ]);
            let err = refused(&[
                ("q/data.json", br#"{"a":{"b":{"x":1}}}"#),
                ("q/a/b/data.yaml", b"y: 2\n"),
                ("q/a/data.json", br#"{"b":{"y":{}}}"#),
            ]);
            let want = format!(r#"at "{pre}q/a/b/y""#);
            assert!(err.contains(&want), "{err}");
        }
    }

    #[test]
    fn data_outside_the_roots_is_refused_beyond_the_first_looks_keys() {
        // More keys on the way to the roots than the first look keeps,
        // and the manifest last: the second look finds the stray one.
        let mut json = String::from("{\"a\":{");
        for i in 0..5000 {
            json.push_str(&format!("\"k{i:05}\":{{}},"));
        }
        json.push_str("\"stray\":1}}");
        let roots: Vec<String> = (0..5000).map(|i| format!("a/k{i:05}")).collect();
        let manifest = serde_json::json!({ "roots": roots }).to_string();
        let err = refused(&[
            ("data.json", json.as_bytes()),
            (".manifest", manifest.as_bytes()),
        ]);
        assert!(err.starts_with(r#"data at "a/stray": outside"#), "{err}");
        let json = json.replace(",\"stray\":1", "");
        accepted(&[
            ("data.json", json.as_bytes()),
            (".manifest", manifest.as_bytes()),
        ]);
    }

    #[test]
    fn delta_bundles_are_not_supported() {
        let err = refused(&[("patch.json", br#"{"data":[]}"#)]);
        assert_eq!(
            err,
            "patch.json: delta bundles (patch.json) are not supported by polhost"
        );
    }

    #[test]
    fn bad_rego_version_and_wasm_entries_are_refused() {
        let err = refused(&[(".manifest", br#"{"rego_version":3}"#)]);
        assert!(err.contains("rego_version must be 0 or 1"), "{err}");
        let err = refused(&[(
            ".manifest",
            br#"{"roots":["a"],"wasm":[{"entrypoint":"b/allow","module":"/policy.wasm"}]}"#,
        )]);
        assert!(err.contains("wasm entrypoint \"b/allow\""), "{err}");
        let err = refused(&[(
            ".manifest",
            br#"{"wasm":[{"entrypoint":"a/allow","module":"/policy.wasm"}]}"#,
        )]);
        assert!(
            err.contains("wasm module \"/policy.wasm\" is not in"),
            "{err}"
        );
        accepted(&[
            (
                ".manifest",
                br#"{"roots":["a"],"wasm":[{"entrypoint":"a/allow","module":"/policy.wasm"}]}"#,
            ),
            ("policy.wasm", b"\0asm"),
        ]);
    }

    #[test]
    fn manifest_fields_are_read() {
        let summary = accepted(&[(
            ".manifest",
            br#"{"revision":"r","roots":["a"],"rego_version":1,"metadata":{"k":"v"},"extra":true}"#,
        )]);
        let manifest = summary.manifest.unwrap();
        assert_eq!(manifest.rego_version, Some(1));
        assert_eq!(manifest.metadata.unwrap()["k"], "v");
    }
}

#[cfg(test)]
mod bit_rot {
    use super::*;

    #[test]
    fn any_flipped_bit_that_changes_the_content_is_refused() {
        let bundle = crate::testing::tar_gz(&[
            (
                ".manifest",
                br#"{"revision":"v1","roots":["authz"]}"#.as_slice(),
            ),
            (
                "authz/policy.rego",
                b"package authz\n\ndefault allow := false\n",
            ),
            ("authz/data.json", br#"{"revision":"v1"}"#),
        ]);
        let mut accepted = Vec::new();
        for i in 0..bundle.len() {
            let mut rotten = bundle.clone();
            rotten[i] ^= 0x40;
            if validate(
                std::io::Cursor::new(rotten.as_slice()),
                ValidationLimits::new(1 << 20),
            )
            .is_ok()
            {
                // Deflate has slack (header mtime, unused Huffman codes):
                // only a flip that leaves the content intact may pass.
                let mut out = Vec::new();
                let mut orig = Vec::new();
                MultiGzDecoder::new(rotten.as_slice())
                    .read_to_end(&mut out)
                    .unwrap();
                MultiGzDecoder::new(bundle.as_slice())
                    .read_to_end(&mut orig)
                    .unwrap();
                if out != orig {
                    accepted.push(i);
                }
            }
        }
        assert!(accepted.is_empty(), "len {}: {accepted:?}", bundle.len());
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in [
            (
                ".manifest",
                br#"{"revision":"v1","roots":["authz"]}"#.to_vec(),
            ),
            (
                "authz/policy.rego",
                b"package authz\n\ndefault allow := false\n".to_vec(),
            ),
            ("authz/data.json", br#"{"revision":"v1"}"#.to_vec()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, path, content.as_slice())
                .unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &builder.into_inner().unwrap()).unwrap();
        let mut bundle = gz.finish().unwrap();
        let n = bundle.len();
        bundle[n - 8] ^= 0x40;
        let r = validate(
            std::io::Cursor::new(bundle.as_slice()),
            ValidationLimits::new(1 << 20),
        );
        assert!(r.is_err(), "len {n}: {r:?}");
    }
}
