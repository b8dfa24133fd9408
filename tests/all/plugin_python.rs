//! A fetcher plugin written in Python (`examples/fetchers/python`, built
//! with componentize-py) serving OPA's REST bundle protocol against a real
//! nginx: first fetch, conditional polls answered 304, a new version, bearer
//! auth, failures classified, the component loading although CPython
//! imports `wasi:sockets`, and the memory it needs (a bundle larger than
//! that streams through it). The component is built once per content
//! (see [`python_fetcher`]); the numbers worth knowing (size, compile time
//! vs a cached start, memory needed) are printed with `--nocapture`.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::harness::nginx::{Nginx, NginxOptions};
use crate::harness::venv_bin;
use crate::support::*;

const TOKEN: &str = "py-s3cret-token-0815";

/// The componentize-py the build uses (tests/harness/install.sh installs it).
fn componentize_py() -> PathBuf {
    venv_bin("componentize-py")
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file under `dir`, sorted, as paths relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The Python fetcher's component, built by the example's `build.sh` once
/// per content: cached at
/// `$HOME/.cache/polhost/python-fetcher/<key>/fetcher.wasm`, the key the
/// sha256 of app.py, build.sh, every WIT file and componentize-py's
/// version. The first call in a test run also loads it into polhost once
/// (which compiles it into polhost's component cache), so the tests that
/// follow start in well under their patience.
fn python_fetcher() -> &'static Path {
    static COMPONENT: OnceLock<PathBuf> = OnceLock::new();
    COMPONENT.get_or_init(|| {
        let component = build_cached();
        warm_polhost_cache(&component);
        component
    })
}

fn build_cached() -> PathBuf {
    let root = repo_root();
    let example = root.join("examples/fetchers/python");
    let wit = root.join("wit");
    let cpy = componentize_py();
    let version = Command::new(&cpy)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run tests/harness/install.sh to install componentize-py)",
                cpy.display()
            )
        });
    assert!(
        version.status.success(),
        "{} --version failed",
        cpy.display()
    );

    let mut key = sha2::Sha256::new();
    let mut feed = |name: &str, bytes: &[u8]| {
        // Length-prefixed, so no two inputs hash alike.
        for part in [name.as_bytes(), bytes] {
            key.update((part.len() as u64).to_le_bytes());
            key.update(part);
        }
    };
    for name in ["app.py", "build.sh"] {
        feed(name, &fs::read(example.join(name)).unwrap());
    }
    for file in files_under(&wit) {
        let name = format!("wit/{}", file.display());
        feed(&name, &fs::read(wit.join(&file)).unwrap());
    }
    feed("componentize-py --version", &version.stdout);
    let key = hex::encode(key.finalize());

    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let out = home
        .join(".cache/polhost/python-fetcher")
        .join(&key)
        .join("fetcher.wasm");
    if out.is_file() {
        return out;
    }
    let start = Instant::now();
    // build.sh writes to a temporary name and renames: a concurrent build
    // (another test binary) never leaves half a component here.
    let build = Command::new("bash")
        .arg(example.join("build.sh"))
        .arg("-w")
        .arg(&wit)
        .arg("-o")
        .arg(&out)
        .env("COMPONENTIZE_PY", &cpy)
        .output()
        .expect("running examples/fetchers/python/build.sh");
    assert!(
        build.status.success() && out.is_file(),
        "build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    eprintln!(
        "python fetcher: built {} in {:.1} s",
        out.display(),
        start.elapsed().as_secs_f64()
    );
    out
}

/// Loads the component once with polhost's default component cache (a
/// fetch of a closed port, which must fail as transient after the load).
fn warm_polhost_cache(component: &Path) {
    let work = Workdir::new();
    let cfg = work.config(&config(component, "http://127.0.0.1:9", "b.tar.gz", ""));
    let start = Instant::now();
    let mut process = Polhost::spawn(&["run", "--once", cfg.to_str().unwrap()], &[]);
    let status = process.wait_exit(Duration::from_secs(300));
    let stderr = process.output();
    assert!(stderr.contains("fetcher loaded"), "{stderr}");
    eprintln!(
        "python fetcher: loaded into polhost's component cache in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("kind=\"transient\""), "{stderr}");
}

/// A config serving bundle `authz` from service `web` of type `pyhttp`,
/// the Python fetcher, with `extra_service` lines under the service.
/// The plugin has polhost's default limits (64 MiB of memory: ample, see
/// the memory test).
fn config(component: &Path, url: &str, resource: &str, extra_service: &str) -> String {
    config_with_limits(component, url, resource, extra_service, "")
}

fn config_with_limits(
    component: &Path,
    url: &str,
    resource: &str,
    extra_service: &str,
    limits: &str,
) -> String {
    format!(
        "polhost:
  fetchers:
    pyhttp:
      component: {}
{limits}services:
  web:
    url: {url}
    type: pyhttp
{extra_service}bundles:
  authz:
    service: web
    resource: {resource}
    persist: true
    polling:
      min_delay_seconds: 1
      max_delay_seconds: 1
",
        component.display()
    )
}

fn bearer(token: &str) -> String {
    format!("    credentials:\n      bearer:\n        token: {token}\n")
}

/// A work dir, `bundle("v1")` published at `www/<resource>`, and nginx
/// serving `www/` (requests under `/secure` need [`TOKEN`]).
fn served_v1(resource: &str) -> (Workdir, PathBuf, Nginx) {
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join(resource), &bundle("v1"), 0);
    let server = Nginx::start(NginxOptions {
        root: root.clone(),
        bearer: vec![("/secure".into(), TOKEN.into())],
        ..NginxOptions::default()
    });
    (work, root, server)
}

#[test]
fn first_fetch_persists_then_polls_get_304_then_a_new_version_is_picked_up() {
    let component = python_fetcher();
    let (work, root, server) = served_v1("bundles/authz.tar.gz");
    let served = root.join("bundles/authz.tar.gz");
    let cfg = work.config(&config(
        component,
        &server.url(),
        "bundles/authz.tar.gz",
        "",
    ));

    let polhost = Polhost::spawn(&["run", cfg.to_str().unwrap()], &[]);
    polhost.wait_for_activation("v1", "Download");
    assert_eq!(sha256_file(&work.persisted("authz")), sha256_file(&served));
    assert_eq!(work.metadata("authz")["revision"], "v1");
    let etag = work.metadata("authz")["etag"]
        .as_str()
        .expect("the ETag nginx sent is stored")
        .to_string();
    // The Python fetcher served it: its own debug line, in the bundle's span.
    let output = polhost.output();
    assert!(
        output.contains(&format!(
            "python fetcher: GET {}/bundles/authz.tar.gz: 200, {} bytes streamed",
            server.url(),
            fs::metadata(&served).unwrap().len()
        )),
        "{output}"
    );
    assert!(output.contains("fetcher=pyhttp"), "{output}");

    // The next polls are conditional and re-download nothing.
    polhost.wait_for_n(2, PATIENCE, "not modified", |l| {
        l.contains("bundle not modified")
    });
    let log = server.access_log();
    assert_eq!(
        (log[0].status, log[0].if_none_match.as_str()),
        (200, ""),
        "{log:?}"
    );
    assert_eq!(log[0].body_bytes, fs::metadata(&served).unwrap().len());
    assert!(log.len() >= 3, "{log:?}");
    for entry in &log[1..] {
        assert_eq!((entry.status, entry.body_bytes), (304, 0), "{entry:?}");
        assert_eq!(entry.if_none_match, etag, "{entry:?}");
    }

    publish(&served, &bundle("v2"), 10);
    polhost.wait_for_activation("v2", "Download");
    assert_eq!(work.metadata("authz")["revision"], "v2");
    assert_eq!(sha256_file(&work.persisted("authz")), sha256_file(&served));
    assert_ne!(work.metadata("authz")["etag"], etag.as_str());
    let downloads = server
        .access_log()
        .iter()
        .filter(|e| e.status == 200)
        .count();
    assert_eq!(downloads, 2, "{:?}", server.access_log());
}

#[test]
fn bearer_auth_is_required_sent_and_its_token_never_logged() {
    let component = python_fetcher();
    let (work, root, server) = served_v1("secure/authz.tar.gz");
    let url = format!("{}/secure/authz.tar.gz", server.url());

    // Without credentials: nginx answers 401, the run fails naming it.
    let cfg = work.config(&config(component, &server.url(), "secure/authz.tar.gz", ""));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "bundle download failed: GET {url}: server answered 401"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("kind=\"unauthorized\""),
        "{}",
        run.stderr
    );
    assert!(!work.persisted("authz").exists());
    let first = server.access_log();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(!first[0].authorization_present, "{first:?}");

    // A wrong token: refused too, and not repeated anywhere.
    let wrong = "wr0ng-token-4242";
    let cfg = work.config(&config(
        component,
        &server.url(),
        "secure/authz.tar.gz",
        &bearer(wrong),
    ));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("kind=\"unauthorized\""),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(wrong), "{}", run.stderr);
    assert!(server.access_log()[1].authorization_present);

    // The right token: fetched, persisted, and the token in no log line.
    let cfg = work.config(&config(
        component,
        &server.url(),
        "secure/authz.tar.gz",
        &bearer(TOKEN),
    ));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert!(run.stderr.contains("credentials: bearer"), "{}", run.stderr);
    assert!(!run.stderr.contains(TOKEN), "{}", run.stderr);
    assert_eq!(work.metadata("authz")["revision"], "v1");
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_file(&root.join("secure/authz.tar.gz"))
    );
    let last = server.access_log().last().unwrap().clone();
    assert_eq!((last.status, last.authorization_present), (200, true));
}

#[test]
fn missing_bundle_and_unreachable_service_are_classified() {
    let component = python_fetcher();
    let (work, _, server) = served_v1("bundles/authz.tar.gz");

    let cfg = work.config(&config(component, &server.url(), "bundles/nope.tar.gz", ""));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "GET {}/bundles/nope.tar.gz: server answered 404",
            server.url()
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("kind=\"not-found\""), "{}", run.stderr);

    // A port nobody listens on (nginx's, once it is stopped).
    let url = server.url();
    let mut server = server;
    server.stop();
    let cfg = work.config(&config(component, &url, "bundles/authz.tar.gz", ""));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "GET {url}/bundles/authz.tar.gz: ConnectionRefused"
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("kind=\"transient\""), "{}", run.stderr);
    assert!(!work.persisted("authz").exists());
}

#[test]
fn a_download_over_the_size_limit_or_cut_short_is_an_error() {
    let component = python_fetcher();
    // Over size_limit_bytes: the host's stream refuses the write that
    // passes the limit, and the fetcher must fail, not report `fetched`.
    // Every file is under the limit, the download as a whole is not.
    let (work, root, server) = served_v1("bundles/authz.tar.gz");
    let parts: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("authz/part{i}.bin"), noise(40_000, i)))
        .collect();
    let parts: Vec<(&str, Vec<u8>)> = parts.iter().map(|(n, c)| (n.as_str(), c.clone())).collect();
    let big = tar_gz(&parts);
    assert!(big.len() > 4 * 65536, "{} bytes", big.len());
    publish(&root.join("bundles/authz.tar.gz"), &big, 10);
    let cfg = work.config(
        &config(component, &server.url(), "bundles/authz.tar.gz", "").replace(
            "    persist: true\n",
            "    persist: true\n    size_limit_bytes: 65536\n",
        ),
    );
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("bundle exceeds size_limit_bytes (65536 bytes); download stopped"),
        "{}",
        run.stderr
    );
    assert!(!work.persisted("authz").exists());

    // A server that promises a whole bundle, sends half and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let whole = bundle("v1");
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"x\"\r\n\r\n",
            whole.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&whole[..whole.len() / 2]).unwrap();
    });
    let work = Workdir::new();
    let url = format!("http://127.0.0.1:{port}");
    let cfg = work.config(&config(component, &url, "bundles/authz.tar.gz", ""));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    server.join().unwrap();
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("kind=\"transient\""), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "bundle download failed: GET {url}/bundles/authz.tar.gz: "
        )),
        "{}",
        run.stderr
    );
    assert!(!work.persisted("authz").exists());
}

#[test]
fn the_component_imports_wasi_sockets_and_still_loads_and_runs() {
    let component = python_fetcher();
    let inspect = polhost_printing(&["plugin", "inspect", component.to_str().unwrap()], &[]);
    let shown = &inspect.stdout;
    assert!(inspect.status.success(), "{shown}\n{}", inspect.stderr);
    // CPython's imports, beyond what the contract needs.
    for import in [
        "wasi:sockets/tcp@",
        "wasi:sockets/ip-name-lookup@",
        "wasi:filesystem/",
    ] {
        assert!(shown.contains(import), "no {import} in:\n{shown}");
    }

    let (work, root, server) = served_v1("bundles/authz.tar.gz");
    let cfg = work.config(&config(
        component,
        &server.url(),
        "bundles/authz.tar.gz",
        "",
    ));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_file(&root.join("bundles/authz.tar.gz"))
    );
}

#[test]
fn compiled_once_then_started_from_the_cache() {
    let component = python_fetcher();
    let size = fs::metadata(component).unwrap().len();
    eprintln!(
        "python fetcher: component {} bytes ({:.1} MiB)",
        size,
        size as f64 / f64::from(1 << 20)
    );
    let (work, _, server) = served_v1("bundles/authz.tar.gz");
    let cfg = work.config(&config(
        component,
        &server.url(),
        "bundles/authz.tar.gz",
        "",
    ));
    let cache = tempfile::tempdir().unwrap();
    let env = [("XDG_CACHE_HOME", cache.path().to_str().unwrap())];
    let compiled = cache.path().join("polhost/components");

    // Until "fetcher loaded": compiling (first) or reading the cache.
    let start_once = || {
        let start = Instant::now();
        let mut process = Polhost::spawn(&["run", "--once", cfg.to_str().unwrap()], &env);
        process.wait_for_n(1, Duration::from_secs(300), "fetcher loaded", |l| {
            l.contains("fetcher loaded")
        });
        let loaded = start.elapsed();
        let status = process.wait_exit(PATIENCE * 3);
        assert!(status.success(), "{}", process.output());
        (loaded, start.elapsed())
    };
    let (first_load, first_run) = start_once();
    assert!(
        files_under(&compiled)
            .iter()
            .any(|f| { fs::metadata(compiled.join(f)).unwrap().len() > 1 << 20 }),
        "no compiled component in {}: {:?}",
        compiled.display(),
        files_under(&compiled)
    );
    let (cached_load, cached_run) = start_once();
    eprintln!(
        "python fetcher: first start (compile) {:.2} s to load, {:.2} s run --once; \
         cached start {:.2} s to load, {:.2} s run --once",
        first_load.as_secs_f64(),
        first_run.as_secs_f64(),
        cached_load.as_secs_f64(),
        cached_run.as_secs_f64()
    );
    assert!(
        cached_load < first_load,
        "the cached start ({cached_load:?}) is not faster than compiling ({first_load:?})"
    );
}

/// `run --once` of `resource` with `limits` for the plugin, in a fresh
/// work dir (returned, to look at what was persisted).
fn run_with_limits(
    component: &Path,
    url: &str,
    resource: &str,
    limits: &str,
) -> (Workdir, Finished) {
    let work = Workdir::new();
    let cfg = work.config(&config_with_limits(component, url, resource, "", limits));
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    (work, run)
}

#[test]
fn it_needs_little_memory_and_no_more_for_a_bundle_larger_than_that() {
    let component = python_fetcher();
    let (_work, root, server) = served_v1("bundles/authz.tar.gz");
    let url = server.url();
    let small = "bundles/authz.tar.gz";
    let limit = |mib: u64| format!("      limits: {{memory_mib: {mib}}}\n");

    // The least memory_mib that fetches the bundle: it fails at `low` and
    // works at `high` (64 MiB being polhost's default).
    let (mut low, mut high) = (1, 64);
    let (_, run) = run_with_limits(component, &url, small, &limit(high));
    assert!(
        run.status.success(),
        "fails with {high} MiB:\n{}",
        run.stderr
    );
    let (_, run) = run_with_limits(component, &url, small, &limit(low));
    assert!(
        !run.status.success(),
        "works with {low} MiB:\n{}",
        run.stderr
    );
    let mut failure = run.stderr;
    while high - low > 1 {
        let mid = (low + high) / 2;
        let (_, run) = run_with_limits(component, &url, small, &limit(mid));
        if run.status.success() {
            high = mid;
        } else {
            low = mid;
            failure = run.stderr;
        }
    }
    // Below it, the fetch fails for lack of memory, not for another reason.
    let reason = failure
        .lines()
        .find(|l| l.contains("bundle download failed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{failure}"));
    assert!(reason.contains("memory"), "{reason}");
    eprintln!(
        "python fetcher: needs memory_mib >= {high} (polhost's default is 64); at {low}: {}",
        reason
            .split("bundle download failed: ")
            .nth(1)
            .unwrap_or(reason)
    );

    // With just that much, a bundle of more than twice as many bytes: they
    // go from the response to the host's stream without entering the
    // guest's memory.
    let blob = noise(usize::try_from((2 * high + 8) << 20).unwrap(), 1);
    let big = tar_gz(&[
        (
            ".manifest",
            br#"{"revision":"big","roots":["authz"]}"#.to_vec(),
        ),
        (
            "authz/policy.rego",
            b"package authz\n\ndefault allow := false\n".to_vec(),
        ),
        ("authz/blob.bin", blob),
    ]);
    assert!(big.len() as u64 > 2 * (high << 20), "{} bytes", big.len());
    publish(&root.join("bundles/big.tar.gz"), &big, 0);
    let (work, run) = run_with_limits(component, &url, "bundles/big.tar.gz", &limit(high));
    assert!(
        run.status.success(),
        "a {} byte bundle with {high} MiB:\n{}",
        big.len(),
        run.stderr
    );
    assert_eq!(work.metadata("authz")["revision"], "big");
    assert_eq!(
        sha256_file(&work.persisted("authz")),
        sha256_file(&root.join("bundles/big.tar.gz"))
    );
    assert!(
        run.stderr
            .contains(&format!("200, {} bytes streamed", big.len())),
        "{}",
        run.stderr
    );
    eprintln!(
        "python fetcher: fetched a {:.1} MiB bundle with memory_mib {high}",
        big.len() as f64 / f64::from(1 << 20)
    );
}
