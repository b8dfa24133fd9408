//! `GET /metrics`: Prometheus text. OPA's `last_*` bundle gauges (UNIX
//! nanoseconds, OPA's names and labels) are rendered from the agent's
//! status at scrape time, so a revision no longer active leaves no series
//! behind; then whatever the installed recorder holds (the counters and
//! histograms `crate::metrics` records, OPA's counters among them).

use std::fmt::Write;
use std::time::SystemTime;

use http::{Response, StatusCode};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::status::plugin_state;
use super::time::unix_nanos;
use crate::metrics as names;
use crate::server::protocol::Body;
use crate::{Agent, BundleStatus};

/// Prometheus' text exposition format, version 0.0.4.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Seconds: a poll answered not-modified takes milliseconds, a large
/// download minutes.
const FETCH_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Seconds: instantiating a compiled fetcher takes well under a
/// millisecond to a few.
const INSTANTIATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A recorder for polhost's metrics, not installed: names as recorded (no
/// `_total` appended: OPA's counters have none and polhost's carry theirs),
/// and histogram buckets for the durations. For an embedder that combines
/// recorders; [`install_metrics_recorder`] is the usual way.
pub fn metrics_recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        // Off is the default; said here because OPA's names depend on it.
        .with_recommended_naming(false)
        .set_buckets_for_metric(Matcher::Full(names::FETCH_DURATION.into()), FETCH_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::INSTANTIATION_DURATION.into()),
                INSTANTIATION_BUCKETS,
            )
        })
        .expect("bucket lists are not empty")
        .build_recorder()
}

/// Installs [`metrics_recorder`] as the process's `metrics` recorder and
/// returns the handle `/metrics` renders (pass it to
/// [`super::ApiOptions::metrics`]). An error if a recorder is installed
/// already.
pub fn install_metrics_recorder() -> Result<PrometheusHandle, BuildError> {
    let recorder = metrics_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    describe();
    Ok(handle)
}

/// `# HELP` lines for what `crate::metrics` records.
fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(names::BUNDLE_LOADED, "Bundle activations (OPA's name).");
    describe_counter!(
        names::BUNDLE_FAILED_LOAD,
        "Failed bundle polls, message = polhost's failure kind (OPA's name)."
    );
    describe_histogram!(
        names::FETCH_DURATION,
        metrics::Unit::Seconds,
        "Duration of a bundle poll, by bundle and outcome."
    );
    describe_counter!(names::DOWNLOADED_BYTES, "Bundle bytes downloaded.");
    describe_counter!(names::NOT_MODIFIED, "Polls answered not-modified.");
    describe_counter!(
        names::SANDBOX_DENIALS,
        "Requests or file reads the sandbox refused, by service."
    );
    describe_counter!(names::REFUSALS, "Failed polls, by failure kind.");
    describe_histogram!(
        names::INSTANTIATION_DURATION,
        metrics::Unit::Seconds,
        "Time to instantiate a fetcher component, by fetcher."
    );
}

pub(super) fn scrape(agent: &Agent, recorder: Option<&PrometheusHandle>) -> Response<Body> {
    let mut text = gauges(&agent.status());
    if let Some(handle) = recorder {
        text.push_str(&handle.render());
    }
    crate::server::protocol::with_body(StatusCode::OK, TEXT_FORMAT, text)
}

/// OPA's bundle gauges and plugin state, and polhost's failure streak,
/// from the status as it is now.
fn gauges(statuses: &[BundleStatus]) -> String {
    let mut out = String::new();
    let time_gauge = |out: &mut String,
                      name: &str,
                      help: &str,
                      at: &dyn Fn(&BundleStatus) -> Option<SystemTime>| {
        family(out, name, help, "gauge");
        for status in statuses {
            if let Some(t) = at(status) {
                sample(out, name, &[("name", &status.name)], unix_nanos(t));
            }
        }
    };
    time_gauge(
        &mut out,
        "last_bundle_request",
        "When the bundle was last polled, UNIX nanoseconds (OPA's name).",
        &|s| s.last_request,
    );
    family(
        &mut out,
        "last_success_bundle_activation",
        "When the active revision was activated, UNIX nanoseconds (OPA's name).",
        "gauge",
    );
    for status in statuses {
        if let (Some(t), Some(active)) = (status.last_successful_activation, &status.active) {
            let labels = [
                ("name", status.name.as_str()),
                ("active_revision", &active.revision),
            ];
            sample(
                &mut out,
                "last_success_bundle_activation",
                &labels,
                unix_nanos(t),
            );
        }
    }
    time_gauge(
        &mut out,
        "last_success_bundle_download",
        "When a bundle was last downloaded and validated, UNIX nanoseconds (OPA's name).",
        &|s| s.last_successful_download,
    );
    time_gauge(
        &mut out,
        "last_success_bundle_request",
        "When a poll last succeeded, UNIX nanoseconds (OPA's name).",
        &|s| s.last_successful_request,
    );
    family(
        &mut out,
        "plugin_status_gauge",
        "1 for the state each plugin is in (OPA's name).",
        "gauge",
    );
    let state = plugin_state(statuses);
    sample(
        &mut out,
        "plugin_status_gauge",
        &[("name", "bundle"), ("status", state)],
        1,
    );
    family(
        &mut out,
        "polhost_bundle_consecutive_failures",
        "Polls of the bundle failed in a row.",
        "gauge",
    );
    for status in statuses {
        let labels = [("name", status.name.as_str())];
        sample(
            &mut out,
            "polhost_bundle_consecutive_failures",
            &labels,
            status.consecutive_failures,
        );
    }
    out
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    out.push('{');
    for (i, (label, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{label}=\"{}\"", escape(value));
    }
    let _ = writeln!(out, "}} {value}");
}

/// A label value as the text format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, UNIX_EPOCH};

    use crate::FailureKind;

    #[test]
    fn gauges_hold_unix_nanoseconds_of_what_happened() {
        let mut polled = BundleStatus::new("team/au\"thz", "s", "http");
        polled.requested(UNIX_EPOCH + Duration::new(1_795_813_560, 5));
        polled.succeeded(UNIX_EPOCH + Duration::new(1_795_813_561, 0));
        let never = BundleStatus::new("other", "s", "http");

        let text = gauges(&[polled, never]);

        let lines: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                r#"last_bundle_request{name="team/au\"thz"} 1795813560000000005"#,
                r#"last_success_bundle_request{name="team/au\"thz"} 1795813561000000000"#,
                r#"plugin_status_gauge{name="bundle",status="NOT_READY"} 1"#,
                r#"polhost_bundle_consecutive_failures{name="team/au\"thz"} 0"#,
                r#"polhost_bundle_consecutive_failures{name="other"} 0"#,
            ]
        );
        assert!(text.contains("# TYPE last_success_bundle_activation gauge\n"));
    }

    #[test]
    fn opa_counters_render_without_a_total_suffix() {
        let recorder = metrics_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            crate::metrics::activated("authz");
            crate::metrics::failed("authz", "svc", FailureKind::Sandbox);
            crate::metrics::polled("authz", "activated", Duration::from_millis(30));
        });

        let text = handle.render();

        for line in [
            "# TYPE bundle_loaded_counter counter",
            r#"bundle_loaded_counter{name="authz"} 1"#,
            r#"bundle_failed_load_counter{name="authz",code="bundle_error",message="sandbox"} 1"#,
            r#"polhost_sandbox_denials_total{service="svc"} 1"#,
            r#"polhost_refusals_total{kind="sandbox"} 1"#,
            r#"polhost_fetch_duration_seconds_bucket{bundle="authz",outcome="activated",le="0.05"} 1"#,
            r#"polhost_fetch_duration_seconds_bucket{bundle="authz",outcome="activated",le="0.025"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("bundle_loaded_counter_total"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
