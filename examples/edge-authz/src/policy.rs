//! One activated bundle, loaded into regorus: every `.rego` module and every
//! data file of the bundle, compiled for one entry point (`data.<package>.allow`),
//! with the revision and digest it came from. A [`Policy`] never changes
//! once built; a new bundle is a new `Policy`.

use std::io::Read;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

/// How a decision gets an engine to evaluate in (regorus evaluates through
/// `&mut Engine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Engines {
    /// Keep the engines of finished decisions, one per concurrent decision
    /// at most, and reuse them (the default: measured faster, see
    /// `benches/decisions.rs`).
    #[default]
    Pool,
    /// Clone the loaded engine for every decision (an `Rc`-sharing clone
    /// with regorus's `arc` feature).
    Clone,
}

impl std::str::FromStr for Engines {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pool" => Ok(Engines::Pool),
            "clone" => Ok(Engines::Clone),
            other => Err(format!("{other:?}: expected pool or clone")),
        }
    }
}

impl std::fmt::Display for Engines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engines::Pool => "pool",
            Engines::Clone => "clone",
        })
    }
}

/// At most this many idle engines are kept per policy.
const POOL_MAX: usize = 64;

/// What a bundle is loaded for.
#[derive(Clone, Debug)]
pub struct LoadSettings {
    /// The rule every decision evaluates, `data.<package>.allow`.
    pub entrypoint: String,
    /// The wall-clock limit of one evaluation (regorus's execution timer);
    /// `None`: no limit.
    pub eval_timeout: Option<Duration>,
}

impl LoadSettings {
    /// Decisions of `data.<package>.allow`. The package is a dotted Rego
    /// path (`authz`, `http.authz`).
    pub fn for_package(package: &str) -> Result<LoadSettings, String> {
        let valid = !package.is_empty()
            && package.split('.').all(|part| {
                let mut chars = part.chars();
                chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !valid {
            return Err(format!(
                "package {package:?}: expected a dotted Rego path such as authz or http.authz"
            ));
        }
        Ok(LoadSettings {
            entrypoint: format!("data.{package}.allow"),
            eval_timeout: Some(Duration::from_millis(100)),
        })
    }
}

/// Why a bundle could not be loaded into regorus.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The archive could not be read.
    #[error("reading the bundle: {0}")]
    Read(std::io::Error),
    /// The `.manifest` does not parse, or says what regorus cannot honour.
    #[error(".manifest: {0}")]
    Manifest(String),
    /// A module does not parse.
    #[error("{path}: {message}")]
    Module {
        /// The module's path in the bundle.
        path: String,
        /// regorus's message.
        message: String,
    },
    /// A data file does not parse or does not merge.
    #[error("{path}: {message}")]
    Data {
        /// The data file's path in the bundle.
        path: String,
        /// Why.
        message: String,
    },
    /// The modules do not compile, or do not define the entry point.
    #[error("{entrypoint}: {message}")]
    Entrypoint {
        /// `data.<package>.allow`.
        entrypoint: String,
        /// regorus's message.
        message: String,
    },
}

/// Why a decision could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// Evaluation failed (a conflict, a builtin error, the time limit).
    #[error("evaluating {entrypoint}: {message}")]
    Eval {
        /// The rule.
        entrypoint: String,
        /// regorus's message.
        message: String,
    },
    /// The rule's value is neither a boolean nor undefined.
    #[error("{entrypoint} is {value}, not a boolean")]
    NotBoolean {
        /// The rule.
        entrypoint: String,
        /// Its value, as JSON.
        value: String,
    },
}

/// A bundle loaded into regorus.
#[derive(Debug)]
pub struct Policy {
    revision: String,
    sha256: String,
    entrypoint: String,
    modules: usize,
    data_files: usize,
    /// Compiled and prepared: clones of it evaluate without preparing again.
    template: Engine,
    /// Idle engines of this policy (for [`Engines::Pool`]).
    pool: Mutex<Vec<Engine>>,
}

impl Policy {
    /// Reads a bundle (a gzipped tar, as polhost validated and activated
    /// it), loads its modules and data into a fresh engine and compiles it
    /// for `settings.entrypoint`.
    ///
    /// As OPA: every `*.rego` file is a module; `data.json`, `data.yaml`
    /// and `data.yml` are merged at their directory's path (`a/b/data.json`
    /// holding `X` is `data.a.b = X`); the `.manifest`'s `rego_version`
    /// (0 or 1, default 1) says how modules parse. Other files (signatures,
    /// wasm) are not read.
    pub fn load(
        bundle: impl Read,
        revision: &str,
        sha256: &str,
        settings: &LoadSettings,
    ) -> Result<Policy, LoadError> {
        let files = read_files(bundle)?;
        let mut engine = Engine::new();
        if let Some(config) = settings.eval_timeout.map(timer) {
            engine.set_execution_timer_config(config);
        }
        if let Some((_, manifest)) = files.iter().find(|(path, _)| path == ".manifest") {
            let manifest: serde_json::Value =
                serde_json::from_slice(manifest).map_err(|e| LoadError::Manifest(e.to_string()))?;
            match manifest.get("rego_version").and_then(|v| v.as_u64()) {
                None | Some(1) => {}
                Some(0) => engine.set_rego_v0(true),
                Some(other) => {
                    return Err(LoadError::Manifest(format!(
                        "rego_version {other} is not 0 or 1"
                    )));
                }
            }
            if manifest
                .get("file_rego_versions")
                .and_then(|v| v.as_object())
                .is_some_and(|m| !m.is_empty())
            {
                return Err(LoadError::Manifest(
                    "file_rego_versions is not supported by edge-authz".into(),
                ));
            }
        }
        let (mut modules, mut data_files) = (0, 0);
        for (path, content) in &files {
            let name = path.rsplit('/').next().unwrap_or(path);
            if name.ends_with(".rego") {
                let text = String::from_utf8(content.clone()).map_err(|_| LoadError::Module {
                    path: path.clone(),
                    message: "not UTF-8".into(),
                })?;
                engine
                    .add_policy(path.clone(), text)
                    .map_err(|e| LoadError::Module {
                        path: path.clone(),
                        message: e.to_string().trim().to_string(),
                    })?;
                modules += 1;
            } else if matches!(name, "data.json" | "data.yaml" | "data.yml") {
                let value = parse_data(name, content).map_err(|message| LoadError::Data {
                    path: path.clone(),
                    message,
                })?;
                let dirs: Vec<&str> = path.split('/').collect();
                let value = dirs[..dirs.len() - 1]
                    .iter()
                    .rev()
                    .fold(value, |value, dir| {
                        serde_json::Value::Object([(dir.to_string(), value)].into_iter().collect())
                    });
                if !value.is_object() {
                    return Err(LoadError::Data {
                        path: path.clone(),
                        message: "a data file at the bundle's root must hold an object".into(),
                    });
                }
                engine
                    .add_data(Value::from(value))
                    .map_err(|e| LoadError::Data {
                        path: path.clone(),
                        message: e.to_string().trim().to_string(),
                    })?;
                data_files += 1;
            }
        }
        // Compiling checks what evaluation would otherwise find on the first
        // request (unsafe variables, a missing rule) and prepares the engine,
        // so clones of it start ready.
        engine
            .compile_with_entrypoint(&settings.entrypoint.as_str().into())
            .map_err(|e| LoadError::Entrypoint {
                entrypoint: settings.entrypoint.clone(),
                message: e.to_string().trim().to_string(),
            })?;
        Ok(Policy {
            revision: revision.to_string(),
            sha256: sha256.to_string(),
            entrypoint: settings.entrypoint.clone(),
            modules,
            data_files,
            template: engine,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The bundle's revision.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Hex SHA-256 of the bundle file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// How many modules and data files were loaded.
    pub fn counts(&self) -> (usize, usize) {
        (self.modules, self.data_files)
    }

    /// Evaluates the entry point for `input`: `true` allows; `false` and
    /// undefined deny.
    pub fn decide(&self, input: Value, engines: Engines) -> Result<bool, DecideError> {
        let mut engine = match engines {
            Engines::Pool => self
                .pool
                .lock()
                .expect("pool lock")
                .pop()
                .unwrap_or_else(|| self.template.clone()),
            Engines::Clone => self.template.clone(),
        };
        engine.set_input(input);
        let result = engine.eval_rule(self.entrypoint.clone());
        if engines == Engines::Pool {
            let mut pool = self.pool.lock().expect("pool lock");
            if pool.len() < POOL_MAX {
                pool.push(engine);
            }
        }
        match result {
            Ok(Value::Bool(allow)) => Ok(allow),
            Ok(Value::Undefined) => Ok(false),
            Ok(other) => Err(DecideError::NotBoolean {
                entrypoint: self.entrypoint.clone(),
                value: other.to_json_str().unwrap_or_else(|_| format!("{other:?}")),
            }),
            Err(e) => Err(DecideError::Eval {
                entrypoint: self.entrypoint.clone(),
                message: e.to_string().trim().to_string(),
            }),
        }
    }
}

fn timer(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::new(64).expect("non-zero"),
    }
}

/// The regular files of a gzipped tar, as (normalised path, content), in
/// path order. polhost validated the archive: paths are UTF-8, relative
/// (a leading `/` is the bundle root), without `..`, and unique once
/// normalised.
fn read_files(bundle: impl Read) -> Result<Vec<(String, Vec<u8>)>, LoadError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bundle));
    let mut files = Vec::new();
    for entry in archive.entries().map_err(LoadError::Read)? {
        let mut entry = entry.map_err(LoadError::Read)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw = entry.path().map_err(LoadError::Read)?;
        let path = raw
            .to_str()
            .unwrap_or_default()
            .split('/')
            .filter(|segment| !segment.is_empty() && *segment != ".")
            .collect::<Vec<_>>()
            .join("/");
        let mut content = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut content).map_err(LoadError::Read)?;
        files.push((path, content));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

fn parse_data(name: &str, content: &[u8]) -> Result<serde_json::Value, String> {
    if content.iter().all(u8::is_ascii_whitespace) {
        // OPA reads an empty data file as nothing.
        return Ok(serde_json::Value::Object(Default::default()));
    }
    if name == "data.json" {
        serde_json::from_slice(content).map_err(|e| e.to_string())
    } else {
        serde_yaml::from_slice(content).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in files {
            // Raw names: `opa build` writes a leading `/`, which `tar`'s
            // path setters refuse.
            let mut header = tar::Header::new_gnu();
            header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            builder.append(&header, content.as_bytes()).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&builder.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    fn load(files: &[(&str, &str)]) -> Result<Policy, LoadError> {
        let settings = LoadSettings::for_package("authz").unwrap();
        Policy::load(tar_gz(files).as_slice(), "r", "s", &settings)
    }

    fn input(json: &str) -> Value {
        Value::from_json_str(json).unwrap()
    }

    #[test]
    fn data_files_merge_at_their_directory_path() {
        let policy = load(&[
            (
                "/authz/policy.rego",
                "package authz\nallow if input.user in data.authz.users\nallow if data.teams.ops[input.user]\n",
            ),
            ("/authz/data.json", r#"{"users": ["alice"]}"#),
            ("teams/ops/data.yaml", "bob: true\n"),
            ("data.json", r#"{"unrelated": 1}"#),
        ])
        .unwrap();
        assert_eq!(policy.counts(), (1, 3));
        for engines in [Engines::Pool, Engines::Clone] {
            assert!(
                policy
                    .decide(input(r#"{"user":"alice"}"#), engines)
                    .unwrap()
            );
            assert!(policy.decide(input(r#"{"user":"bob"}"#), engines).unwrap());
            assert!(!policy.decide(input(r#"{"user":"eve"}"#), engines).unwrap());
        }
    }

    #[test]
    fn undefined_denies_and_a_non_boolean_is_an_error() {
        let policy = load(&[(
            "authz/p.rego",
            "package authz\nallow := \"yes\" if input.odd\nallow if input.user == \"alice\"\n",
        )])
        .unwrap();
        assert!(!policy.decide(input("{}"), Engines::Pool).unwrap());
        let err = policy
            .decide(input(r#"{"odd": true}"#), Engines::Pool)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is \"yes\", not a boolean"), "{err}");
        // The engine that failed goes back to the pool and still decides.
        assert!(
            policy
                .decide(input(r#"{"user":"alice"}"#), Engines::Pool)
                .unwrap()
        );
    }

    #[test]
    fn rego_v0_bundles_parse_as_v0() {
        let rule = "package authz\nallow { input.user == \"alice\" }\n";
        let err = load(&[("authz/p.rego", rule)]).unwrap_err().to_string();
        assert!(err.starts_with("authz/p.rego: "), "{err}");
        let policy = load(&[
            (".manifest", r#"{"rego_version": 0}"#),
            ("authz/p.rego", rule),
        ])
        .unwrap();
        assert!(
            policy
                .decide(input(r#"{"user":"alice"}"#), Engines::Clone)
                .unwrap()
        );
    }

    #[test]
    fn what_does_not_compile_or_lacks_the_rule_is_refused() {
        let err = load(&[("authz/p.rego", "package authz\nallow if x == 1\n")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("data.authz.allow: ") && err.contains("unsafe"),
            "{err}"
        );
        let err = load(&[("authz/p.rego", "package authz\ndeny if true\n")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("data.authz.allow: "), "{err}");
        let err = load(&[
            ("authz/p.rego", "package authz\nallow if true\n"),
            ("a/data.json", "[1"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("a/data.json: "), "{err}");
        let err = load(&[
            ("authz/p.rego", "package authz\nallow if true\n"),
            ("data.json", "[1]"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("must hold an object"), "{err}");
    }

    #[test]
    fn package_names_are_rego_paths() {
        assert_eq!(
            LoadSettings::for_package("http.authz").unwrap().entrypoint,
            "data.http.authz.allow"
        );
        for bad in ["", "a..b", "1a", "a-b", "a.allow x"] {
            assert!(LoadSettings::for_package(bad).is_err(), "{bad}");
        }
    }
}
