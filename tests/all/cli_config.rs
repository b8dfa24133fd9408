//! What an operator sees for a bad configuration: one line naming the file
//! and field, and exit code 2, before anything is fetched.

use crate::support::*;

fn run_config(yaml: &str) -> (Finished, String) {
    let work = Workdir::new();
    let cfg = work.config(yaml);
    let run = polhost(&["run", "--once", cfg.to_str().unwrap()], &[]);
    (run, cfg.display().to_string())
}

fn assert_config_error(yaml: &str, field_and_message: &str) {
    let (run, file) = run_config(yaml);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let expected = format!("polhost: {file}: {field_and_message}");
    assert!(
        run.stderr.lines().any(|l| l == expected),
        "expected line:\n{expected}\ngot:\n{}",
        run.stderr
    );
}

const SERVICE: &str = "services:\n  web:\n    url: http://127.0.0.1:9\n";

#[test]
fn max_delay_below_min_delay() {
    assert_config_error(
        &format!(
            "{SERVICE}bundles:\n  authz:\n    polling:\n      min_delay_seconds: 30\n      max_delay_seconds: 10\n"
        ),
        "bundles.authz.polling.max_delay_seconds: must be >= min_delay_seconds (10 < 30)",
    );
}

#[test]
fn only_one_polling_delay() {
    let (run, _) = run_config(&format!(
        "{SERVICE}bundles:\n  authz:\n    polling:\n      min_delay_seconds: 30\n"
    ));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("bundles.authz.polling"),
        "{}",
        run.stderr
    );
}

#[test]
fn wrong_type_names_field() {
    let (run, _) = run_config(&format!(
        "{SERVICE}bundles:\n  authz:\n    polling:\n      min_delay_seconds: soon\n      max_delay_seconds: 10\n"
    ));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("bundles.authz.polling.min_delay_seconds: invalid type"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_service_of_a_bundle() {
    let (run, _) = run_config(&format!("{SERVICE}bundles:\n  authz:\n    service: nope\n"));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("bundles.authz.service"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
}

#[test]
fn two_credential_methods() {
    let (run, _) = run_config(
        "services:\n  web:\n    url: http://127.0.0.1:9\n    credentials:\n      bearer:\n        token: abc\n      oauth2:\n        token_url: https://x\nbundles:\n  authz: {}\n",
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("services.web.credentials"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("abc"),
        "a secret leaked: {}",
        run.stderr
    );
}

#[test]
fn service_type_without_a_fetcher() {
    let (run, file) = run_config(
        "services:\n  registry:\n    url: https://ghcr.io\n    type: nosuch\nbundles:\n  authz: {}\n",
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "polhost: {file}: services.registry.type: no fetcher for service type \"nosuch\" (polhost has: http, oci, s3, azure, gcs; add one under polhost.fetchers.nosuch)"
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn unused_service_needs_no_fetcher() {
    let (run, _) = run_config(
        "services:\n  logs:\n    url: https://logs.example\n    type: nosuch\n  web:\n    url: http://127.0.0.1:9\nbundles:\n  authz:\n    service: web\n",
    );
    // Not a config error: it goes on to fetch (and fails: nothing listens on :9).
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
}

#[test]
fn credential_method_the_http_fetcher_lacks_is_refused_at_start() {
    let (run, file) = run_config(
        "services:\n  web:\n    url: http://127.0.0.1:9\n    credentials:\n      oauth2:\n        token_url: https://auth.example/token\n        client_id: c\n        client_secret: topsecret\nbundles:\n  authz: {}\n",
    );
    // The fetcher's descriptor says what it accepts: refused before any
    // request, as a configuration error.
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "polhost: {file}: services.web.credentials.oauth2: the http fetcher does not accept this credential method (it accepts: bearer)"
        )),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("topsecret"),
        "a secret leaked: {}",
        run.stderr
    );
}

#[test]
fn credential_method_the_s3_fetcher_lacks_is_refused_at_start() {
    let (run, _) = run_config(
        "services:\n  store:\n    type: s3\n    url: http://127.0.0.1:9\n    credentials:\n      bearer:\n        token: topsecret\nbundles:\n  authz: {}\n",
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "services.store.credentials.bearer: the s3 fetcher does not accept this credential method (it accepts: s3_signing)"
        ),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("topsecret"),
        "a secret leaked: {}",
        run.stderr
    );
}

#[test]
fn missing_file_names_it() {
    let run = polhost(&["run", "--once", "/nonexistent/polhost.yaml"], &[]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("/nonexistent/polhost.yaml"),
        "{}",
        run.stderr
    );
}

#[test]
fn invalid_yaml_names_file_and_line() {
    let (run, file) = run_config("services: [\n  url: x\n");
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains(&file), "{}", run.stderr);
    assert!(run.stderr.contains("line"), "{}", run.stderr);
}

#[test]
fn unimplemented_keys_get_one_warning_naming_them() {
    let (run, _) = run_config(&format!(
        "{SERVICE}bundles:\n  authz:\n    trigger: manual\nlabels:\n  app: x\ndecision_logs:\n  console: true\n"
    ));
    let warnings: Vec<_> = run
        .stderr
        .lines()
        .filter(|l| l.contains("ignoring configuration keys"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    for key in ["bundles.authz.trigger", "labels", "decision_logs"] {
        assert!(warnings[0].contains(key), "{key} missing: {}", warnings[0]);
    }
    // Not a config error: it goes on to fetch (and fails: nothing listens on :9).
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
}

// `polhost config check`: what `run` checks, without running.

fn sha256_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn check(work: &Workdir, yaml: &str, extra: &[&str]) -> Printed {
    let cfg = work.config(yaml);
    let mut args = vec!["config", "check", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    polhost_printing(&args, &[])
}

#[test]
fn config_check_prints_each_used_service_and_creates_no_state() {
    let work = Workdir::new();
    let printed = check(
        &work,
        "services:\n  web:\n    url: http://127.0.0.1:9\n  logs:\n    url: https://logs.example\n    type: nosuch\n  \
         reg:\n    url: https://registry.example.com\n    type: oci\n\
         bundles:\n  authz:\n    service: web\n  other:\n    service: web\n  image:\n    service: reg\n    resource: acme/authz:latest\n",
        &[],
    );
    assert_eq!(printed.status.code(), Some(0), "{}", printed.stderr);
    let out = &printed.stdout;
    let http = sha256_of(polhost_fetchers::component("http").unwrap());
    let oci = sha256_of(polhost_fetchers::component("oci").unwrap());
    for expected in [
        "service \"web\"\n  bundles: authz, other\n  fetcher: http\n",
        &format!(
            "  digest:  {http}\n  grant:   origins: http://127.0.0.1:9; files: none; env: none\n"
        ),
        "  limits:  memory 64 MiB, 32 requests per fetch, fetch timeout 600 s, connect timeout 10 s, between bytes 30 s\n",
        "service \"reg\"\n  bundles: image\n  fetcher: oci\n",
        &format!("  digest:  {oci}\n"),
        "(+ per fetch: redirect targets and token realms they name)",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // A service no bundle uses needs no fetcher, and is not shown.
    assert!(!out.contains("logs"), "{out}");
    assert!(out.contains("valid; 2 used service(s)"), "{out}");
    assert!(
        !work.state().exists(),
        "config check created the persistence directory"
    );
}

#[test]
fn config_check_fails_as_run_does_and_creates_no_state() {
    for (yaml, line) in [
        (
            format!(
                "{SERVICE}bundles:\n  authz:\n    polling:\n      min_delay_seconds: 30\n      max_delay_seconds: 10\n"
            ),
            "bundles.authz.polling.max_delay_seconds: must be >= min_delay_seconds (10 < 30)",
        ),
        (
            "services:\n  registry:\n    url: https://ghcr.io\n    type: nosuch\nbundles:\n  authz: {}\n"
                .to_string(),
            "services.registry.type: no fetcher for service type \"nosuch\" (polhost has: http, oci, s3, azure, gcs; add one under polhost.fetchers.nosuch)",
        ),
        (
            "services:\n  web:\n    url: http://127.0.0.1:9\n    credentials:\n      oauth2:\n        token_url: https://auth.example/token\n        client_id: c\n        client_secret: topsecret\nbundles:\n  authz: {}\n"
                .to_string(),
            "services.web.credentials.oauth2: the http fetcher does not accept this credential method (it accepts: bearer)",
        ),
        (
            format!(
                "{SERVICE}bundles:\n  authz: {{}}\npolhost:\n  fetchers:\n    http:\n      component: missing.wasm\n"
            ),
            "",
        ),
    ] {
        let work = Workdir::new();
        let printed = check(&work, &yaml, &[]);
        let file = work.path().join("config.yaml").display().to_string();
        assert_eq!(printed.status.code(), Some(2), "{yaml}\n{}", printed.stderr);
        if line.is_empty() {
            // A component that cannot be had: named by its field.
            assert!(
                printed.stderr.contains(&format!("polhost: {file}: polhost.fetchers.http.component")),
                "{}",
                printed.stderr
            );
        } else {
            let expected = format!("polhost: {file}: {line}");
            assert!(
                printed.stderr.lines().any(|l| l == expected),
                "expected line:\n{expected}\ngot:\n{}",
                printed.stderr
            );
        }
        assert!(!printed.stderr.contains("topsecret"), "{}", printed.stderr);
        assert!(printed.stdout.is_empty(), "{}", printed.stdout);
        assert!(!work.state().exists(), "config check created the persistence directory");
        // `run` says the same.
        let run = polhost(&["run", "--once", &file], &[]);
        assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
        if !line.is_empty() {
            assert!(run.stderr.contains(line), "{}", run.stderr);
        }
    }
}

#[test]
fn config_check_of_a_missing_file_exits_2() {
    let printed = polhost_printing(&["config", "check", "/nonexistent/polhost.yaml"], &[]);
    assert_eq!(printed.status.code(), Some(2), "{}", printed.stderr);
    assert!(
        printed
            .stderr
            .contains("polhost: /nonexistent/polhost.yaml: cannot read"),
        "{}",
        printed.stderr
    );
}

#[test]
fn config_check_warns_about_ignored_keys_as_run_does() {
    let work = Workdir::new();
    let printed = check(
        &work,
        &format!("{SERVICE}bundles:\n  authz:\n    trigger: manual\nlabels:\n  app: x\n"),
        &[],
    );
    assert_eq!(printed.status.code(), Some(0), "{}", printed.stderr);
    let warnings: Vec<_> = printed
        .stderr
        .lines()
        .filter(|l| l.contains("ignoring configuration keys polhost does not implement yet"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", printed.stderr);
    assert!(
        warnings[0].contains("labels, bundles.authz.trigger"),
        "{}",
        warnings[0]
    );
}

// --version and completions.

#[test]
fn version_names_the_contract_and_the_standard_fetchers_digests() {
    for flag in ["--version", "-V"] {
        let printed = polhost_printing(&[flag], &[]);
        assert_eq!(printed.status.code(), Some(0), "{}", printed.stderr);
        let out = &printed.stdout;
        assert!(
            out.starts_with(&format!("polhost {}\n", env!("CARGO_PKG_VERSION"))),
            "{out}"
        );
        assert!(
            out.contains("fetcher contract: polhost:fetcher@0.1.0\n"),
            "{out}"
        );
        for service_type in ["http", "oci", "s3", "azure", "gcs"] {
            let digest = sha256_of(polhost_fetchers::component(service_type).unwrap());
            assert!(
                out.lines()
                    .any(|l| l.split_whitespace().collect::<Vec<_>>() == [service_type, &digest]),
                "{service_type} {digest} missing:\n{out}"
            );
        }
    }
}

#[test]
fn completions_for_bash_know_the_subcommands() {
    let printed = polhost_printing(&["completions", "bash"], &[]);
    assert_eq!(printed.status.code(), Some(0), "{}", printed.stderr);
    for word in [
        "run",
        "serve",
        "config",
        "check",
        "plugin",
        "inspect",
        "wit",
        "completions",
        "--set",
        "--set-file",
        "--once",
    ] {
        assert!(printed.stdout.contains(word), "{word} missing");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let printed = polhost_printing(&["completions", shell], &[]);
        assert_eq!(
            printed.status.code(),
            Some(0),
            "{shell}: {}",
            printed.stderr
        );
        assert!(printed.stdout.contains("polhost"), "{shell}");
    }
    let printed = polhost_printing(&["completions", "tcsh"], &[]);
    assert_eq!(printed.status.code(), Some(2), "{}", printed.stderr);
}

// --set and --set-file, as OPA has them.

#[test]
fn set_overrides_the_file_for_run() {
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    let (_server, url) = crate::long_polling::serve(&root);
    // The file's service is unreachable; --set points it at the server and
    // adds the bundle's resource.
    let cfg = work.config(&format!("{SERVICE}bundles:\n  authz: {{}}\n"));
    let run = polhost(
        &[
            "run",
            "--once",
            cfg.to_str().unwrap(),
            "--set",
            &format!("services.web.url={url}"),
            "--set",
            "bundles.authz.resource=bundles/authz.tar.gz,bundles.authz.persist=true",
        ],
        &[],
    );
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("revision=v1"), "{}", run.stderr);
    // persist: true came from --set, typed as a boolean.
    assert!(work.persisted("authz").exists(), "{}", run.stderr);
}

#[test]
fn set_and_set_file_are_shown_by_config_check() {
    let work = Workdir::new();
    let url_file = work.path().join("url");
    std::fs::write(&url_file, "https://from-file.example:8443\n").unwrap();
    let printed = check(
        &work,
        &format!("{SERVICE}bundles:\n  authz: {{}}\n"),
        &[
            "--set",
            "services.other.url=https://other.example",
            "--set",
            "bundles.second.service=other",
            "--set-file",
            &format!("services.web.url={}", url_file.display()),
        ],
    );
    assert_eq!(printed.status.code(), Some(0), "{}", printed.stderr);
    let out = &printed.stdout;
    assert!(out.contains("service \"web\"\n  bundles: authz\n"), "{out}");
    assert!(
        out.contains("grant:   origins: https://from-file.example:8443;"),
        "{out}"
    );
    assert!(
        out.contains("service \"other\"\n  bundles: second\n"),
        "{out}"
    );
    assert!(
        out.contains("grant:   origins: https://other.example:443;"),
        "{out}"
    );
    assert!(!work.state().exists());
}

#[test]
fn a_bad_set_names_the_argument_and_exits_2() {
    let work = Workdir::new();
    let cfg = work.config(&format!("{SERVICE}bundles:\n  authz: {{}}\n"));
    let cfg = cfg.to_str().unwrap();
    for (args, line) in [
        (
            vec!["--set", "services.web.url"],
            "polhost: --set services.web.url: no value (expected key=value)",
        ),
        (
            vec!["--set", "services.web.url=ftp://x.example"],
            "polhost: --set services.web.url: must be an absolute http:// or https:// URL: the scheme must be http or https",
        ),
        (
            vec!["--set-file", "services.web.url=/nonexistent/polhost-url"],
            "polhost: --set-file services.web.url: cannot read /nonexistent/polhost-url: No such file or directory (os error 2)",
        ),
    ] {
        for command in [&["run", "--once"][..], &["config", "check"][..]] {
            let mut all = command.to_vec();
            all.push(cfg);
            all.extend_from_slice(&args);
            let printed = polhost_printing(&all, &[]);
            assert_eq!(
                printed.status.code(),
                Some(2),
                "{all:?}: {}",
                printed.stderr
            );
            assert!(
                printed.stderr.lines().any(|l| l == line),
                "{all:?}: expected line:\n{line}\ngot:\n{}",
                printed.stderr
            );
        }
    }
    assert!(!work.state().exists());
}

#[test]
fn a_secret_given_with_set_is_not_echoed() {
    let work = Workdir::new();
    let cfg = work.config(&format!("{SERVICE}bundles:\n  authz: {{}}\n"));
    for arg in [
        // Malformed after the value.
        "services.web.credentials.bearer.token={topsecret",
        // Valid syntax, a value of the wrong kind for its field.
        "services.web.credentials.bearer.token={topsecret,more}",
        // A second credential method next to the one set.
        "services.web.credentials.bearer.token=topsecret,services.web.credentials.oauth2.client_secret=topsecret",
    ] {
        let printed = polhost_printing(
            &["config", "check", cfg.to_str().unwrap(), "--set", arg],
            &[],
        );
        assert_eq!(printed.status.code(), Some(2), "{arg}: {}", printed.stderr);
        assert!(
            !printed.stderr.contains("topsecret") && !printed.stdout.contains("topsecret"),
            "a secret leaked: {}",
            printed.stderr
        );
    }
}

// The progress bar: only on a terminal.

fn big_bundle_served(work: &Workdir) -> (Polhost, std::path::PathBuf) {
    let root = work.path().join("www");
    let tar = tar_gz(&[
        (
            ".manifest",
            br#"{"revision":"big","roots":["authz"]}"#.to_vec(),
        ),
        ("authz/policy.rego", b"package authz\n".to_vec()),
        ("authz/blob.bin", noise(12 << 20, 3)),
    ]);
    assert!(tar.len() > 8 << 20);
    publish(&root.join("bundles/authz.tar.gz"), &tar, 0);
    let (server, url) = crate::long_polling::serve(&root);
    let cfg = work.config(&format!(
        "services:\n  web:\n    url: {url}\nbundles:\n  authz:\n    resource: bundles/authz.tar.gz\n"
    ));
    (server, cfg)
}

#[test]
fn no_progress_output_without_a_terminal() {
    let work = Workdir::new();
    let (_server, cfg) = big_bundle_served(&work);
    let printed = polhost_printing(&["run", "--once", cfg.to_str().unwrap()], &[]);
    assert_eq!(printed.status.code(), Some(0), "{}", printed.stderr);
    assert!(
        printed.stderr.contains("bundle activated"),
        "{}",
        printed.stderr
    );
    assert!(!printed.stderr.contains('\r'), "{:?}", printed.stderr);
    assert!(!printed.stderr.contains("\x1b["), "{:?}", printed.stderr);
    assert!(!printed.stderr.contains("MiB"), "{:?}", printed.stderr);
}

/// `polhost ARGS` on a pseudo-terminal (util-linux's `script`, in Debian's
/// essential bsdutils): what the terminal received.
fn on_a_terminal(args: &[&str]) -> (std::process::ExitStatus, String) {
    let command = std::iter::once(POLHOST)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-f", "-c", &command, "/dev/null"])
        .env("POLHOST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running script (util-linux)");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_terminal_shows_a_spinner_for_a_big_download_and_clears_it() {
    let work = Workdir::new();
    let (_server, cfg) = big_bundle_served(&work);
    let (status, screen) = on_a_terminal(&["run", "--once", cfg.to_str().unwrap()]);
    assert_eq!(status.code(), Some(0), "{screen}");
    assert!(screen.contains("bundle activated"), "{screen:?}");
    // `⠁ authz: 5.62 MiB (478.04 MiB/s, 0s)`, then cleared.
    assert!(screen.contains(" authz: "), "{screen:?}");
    assert!(screen.contains("MiB/s"), "{screen:?}");
    assert!(
        screen.trim_end_matches(['\r', '\n']).ends_with("\x1b[2K"),
        "{screen:?}"
    );

    // Not with JSON logs, not for a small download.
    let (status, screen) = on_a_terminal(&[
        "--log-format",
        "json",
        "run",
        "--once",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(0), "{screen}");
    assert!(screen.contains("bundle activated"), "{screen:?}");
    assert!(!screen.contains("MiB"), "{screen:?}");
}

#[test]
fn a_terminal_shows_no_spinner_for_a_small_download() {
    let work = Workdir::new();
    let root = work.path().join("www");
    publish(&root.join("bundles/authz.tar.gz"), &bundle("v1"), 0);
    let (_server, url) = crate::long_polling::serve(&root);
    let cfg = work.config(&format!("services:\n  web:\n    url: {url}\nbundles:\n  authz:\n    resource: bundles/authz.tar.gz\n"));
    let (status, screen) = on_a_terminal(&["run", "--once", cfg.to_str().unwrap()]);
    assert_eq!(status.code(), Some(0), "{screen}");
    assert!(screen.contains("bundle activated"), "{screen:?}");
    assert!(!screen.contains("/s,"), "{screen:?}");
}

// Hostile configuration files (issue 10): refused with exit 2 and one line
// naming the file, in memory that does not grow with what the file would
// expand to. Memory is read as the child's peak RSS (`harness::reap`), not
// timed.

/// The most a refused configuration may make polhost hold: its own floor
/// (about 30 MiB, the binary and its embedded components) plus room for a
/// file at the 4 MiB cap and a tree at the parser's budgets. Before the
/// fix, the alias bomb went past 1 GiB and `/dev/zero` had no bound.
const REFUSED_CONFIG_MAX_RSS_MIB: u64 = 128;

/// `polhost run --once CONFIG` to its end: exit status, stderr and peak RSS
/// in MiB. Killed (and the test failed) after a generous minute, so a
/// regression fails instead of hanging the suite.
fn run_measured(config: &std::path::Path) -> (std::process::ExitStatus, String, u64) {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let mut command = Command::new(POLHOST);
    command
        .args(["run", "--once", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = crate::harness::spawn_tied(command).expect("starting polhost");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let reaped = crate::harness::reap(child, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("polhost run {}: {e}", config.display()));
    let stderr = reader.join().unwrap();
    (
        std::process::ExitStatus::from_raw(reaped.status),
        stderr,
        reaped.peak_rss_kib / 1024,
    )
}

fn assert_refused_in_bounded_memory(config: &std::path::Path, message: &str) {
    let (status, stderr, rss_mib) = run_measured(config);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let expected = format!("polhost: {}: {message}", config.display());
    assert!(
        stderr.lines().any(|l| l.starts_with(&expected)),
        "expected a line starting:\n{expected}\ngot:\n{stderr}"
    );
    assert!(
        rss_mib <= REFUSED_CONFIG_MAX_RSS_MIB,
        "peak RSS {rss_mib} MiB > {REFUSED_CONFIG_MAX_RSS_MIB} MiB"
    );
}

/// Issue 10, item 1: 3.8 KB of aliases that expand to 90 million values.
#[test]
fn yaml_alias_bomb_exits_2_in_bounded_memory() {
    let work = Workdir::new();
    let bomb = format!(
        "a: &a [{}]\nb: &b [{}]\nc: [{}]\n",
        vec!["x"; 1000].join(","),
        vec!["*a"; 300].join(","),
        vec!["*b"; 300].join(",")
    );
    assert!(bomb.len() < 4096);
    let cfg = work.config(&bomb);
    assert_refused_in_bounded_memory(&cfg, "invalid YAML: ");
}

/// Issue 10, item 13: a file that never ends.
#[test]
fn dev_zero_as_config_exits_2_in_bounded_memory() {
    assert_refused_in_bounded_memory(
        "/dev/zero".as_ref(),
        "the configuration file is larger than 4 MiB, the most polhost reads of one",
    );
}

/// Issue 10, item 13: a 32 MB YAML list (it peaked at 523 MB).
#[test]
fn config_file_over_the_cap_exits_2_in_bounded_memory() {
    let work = Workdir::new();
    let path = work.path().join("big.yaml");
    let mut text = String::from("l:\n");
    while text.len() < 32 << 20 {
        text.push_str("- abcdefgh\n");
    }
    std::fs::write(&path, text).unwrap();
    assert_refused_in_bounded_memory(
        &path,
        "the configuration file is larger than 4 MiB, the most polhost reads of one",
    );
}

/// Issue 10, item 5: the HMAC key was printed by serde's "invalid type".
#[test]
fn numeric_hmac_key_is_not_printed() {
    let (run, file) = run_config("keys: {k: {algorithm: HS256, key: 12345678}}\n");
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.lines().any(|l| l
            == format!("polhost: {file}: keys.k.key: invalid type: a number, expected a string")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("12345678"), "{}", run.stderr);
}
