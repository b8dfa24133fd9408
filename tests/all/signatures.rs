//! Bundle signatures, checked against bundles signed independently of
//! polhost: `tests/fixtures/make_signed_bundles.py` makes keys with the
//! `openssl` CLI and JWTs with PyJWT, and says what polhost must answer.

use std::path::PathBuf;
use std::process::Command;

use polhost::bundle::Secret;
use polhost::bundle::{ValidationLimits, Verification, validate_with};
use polhost::config::{Key, Signing};

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::support::*;

/// PyJWT's venv, as tests/harness/install.sh makes it.
fn python() -> PathBuf {
    crate::harness::venv_bin("python")
}

fn generate() -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let script = crate::harness::fixture("make_signed_bundles.py");
    let run = Command::new(python())
        .arg(&script)
        .arg(out.path())
        .output()
        .expect("running the venv's python (run tests/harness/install.sh)");
    assert!(
        run.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

fn keys_of(case: &serde_json::Value) -> Vec<Key> {
    case["keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, k)| Key {
            id: id.clone(),
            key: Secret::new(k["key"].as_str().unwrap().to_string()),
            algorithm: k["algorithm"].as_str().unwrap().to_string(),
            scope: k["scope"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

fn signing_of(case: &serde_json::Value) -> Option<Signing> {
    let s = case["signing"].as_object()?;
    Some(Signing {
        keyid: s.get("keyid").and_then(|v| v.as_str()).map(String::from),
        scope: s.get("scope").and_then(|v| v.as_str()).map(String::from),
        exclude_files: s
            .get("exclude_files")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|p| p.as_str().unwrap().to_string()).collect())
            .unwrap_or_default(),
    })
}

#[test]
fn independently_signed_bundles_get_opas_outcomes() {
    let dir = generate();
    let cases: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(dir.path().join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 25, "{}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let verification = Verification::new(&keys_of(case), signing_of(case).as_ref()).unwrap();
        let file = std::fs::File::open(dir.path().join(case["bundle"].as_str().unwrap())).unwrap();
        let result = validate_with(
            std::io::BufReader::new(file),
            ValidationLimits::new(1 << 30),
            verification.as_ref(),
        );
        match (result, case["expect"].as_str()) {
            (Ok(summary), None) => assert_eq!(summary.revision(), "signed-1", "{name}"),
            (Ok(_), Some(want)) => failures.push(format!("{name}: accepted, want {want}")),
            (Err(e), None) => failures.push(format!("{name}: refused: {e}")),
            (Err(e), Some(want)) if e.to_string().contains(want) => {}
            (Err(e), Some(want)) => failures.push(format!("{name}: {e}\n   want: {want}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn signed_bundle_is_activated_and_a_tampered_one_refused_end_to_end() {
    let dir = generate();
    let work = Workdir::new();
    let root = work.path().join("www");
    let served = root.join("bundles/authz.tar.gz");
    publish(
        &served,
        &std::fs::read(dir.path().join("good-ES256.tar.gz")).unwrap(),
        0,
    );
    let server = Nginx::start(NginxOptions {
        root,
        ..NginxOptions::default()
    });
    let pem = std::fs::read_to_string(dir.path().join("ec256.pub")).unwrap();
    let indented: String = pem.lines().map(|l| format!("      {l}\n")).collect();
    let cfg = work.config(&format!(
        "services:\n  web:\n    url: {}\nkeys:\n  k:\n    algorithm: ES256\n    key: |\n{indented}\
         bundles:\n  authz:\n    resource: bundles/authz.tar.gz\n    persist: true\n    signing:\n      keyid: k\n",
        server.url()
    ));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        !run.stderr.contains("ignoring configuration keys"),
        "{}",
        run.stderr
    );
    let good = std::fs::read(work.persisted("authz")).unwrap();

    publish(
        &served,
        &std::fs::read(dir.path().join("tampered-data-json.tar.gz")).unwrap(),
        10,
    );
    // The tampered bundle is RS256-signed with kid "k": signing.keyid
    // picks the ES256 key, whose algorithm does not match.
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(
        run.stderr
            .contains(".signatures.json: signature verification failed"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(work.persisted("authz")).unwrap(), good);

    // Unsigned while signing.keyid is set: refused too.
    publish(&served, &bundle("unsigned"), 20);
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(
        run.stderr.contains("missing: the bundle is not signed"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(work.persisted("authz")).unwrap(), good);
}

#[test]
fn unusable_key_is_a_config_error_naming_the_field() {
    let work = Workdir::new();
    let cfg = work.config(
        "services:\n  web:\n    url: http://127.0.0.1:9\nkeys:\n  k:\n    key: not-a-pem\n    algorithm: RS256\nbundles:\n  authz: {}\n",
    );
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("keys.k.key: not a PEM public key for RS256"),
        "{}",
        run.stderr
    );
}
