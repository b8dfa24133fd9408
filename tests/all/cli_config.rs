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
