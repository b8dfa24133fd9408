//! What the agent counts, through the `metrics` facade: a no-op until the
//! embedder (or `polhost run`, for `/metrics`) installs a recorder. Every
//! metric name is here, so the list in docs/local-api.md has one source.
//!
//! OPA's own bundle metrics keep OPA's names and labels (no `_total`
//! suffix, as OPA has none); polhost's are prefixed `polhost_`. OPA's
//! `last_*` gauges are not recorded here: the local API derives them from
//! [`crate::BundleStatus`] at scrape time, so a revision that is no longer
//! active leaves no stale series.

use std::time::Duration;

use metrics::{counter, histogram};

use crate::download::FailureKind;

/// OPA's counter of activations, label `name`.
pub const BUNDLE_LOADED: &str = "bundle_loaded_counter";
/// OPA's counter of failed polls, labels `name`, `code`, `message`. OPA
/// puts the error text in `message`; polhost puts the failure kind there,
/// so the series stay few whatever servers answer.
pub const BUNDLE_FAILED_LOAD: &str = "bundle_failed_load_counter";
/// Seconds per poll, labels `bundle`, `outcome` (`activated`, `unchanged`,
/// `not-modified`, or the failure kind).
pub const FETCH_DURATION: &str = "polhost_fetch_duration_seconds";
/// Bundle bytes downloaded, label `bundle`.
pub const DOWNLOADED_BYTES: &str = "polhost_downloaded_bytes_total";
/// Polls answered not-modified, label `bundle`.
pub const NOT_MODIFIED: &str = "polhost_not_modified_total";
/// Requests or file reads the sandbox refused, label `service`.
pub const SANDBOX_DENIALS: &str = "polhost_sandbox_denials_total";
/// Failed polls, label `kind`.
pub const REFUSALS: &str = "polhost_refusals_total";
/// Seconds to instantiate a fetcher, label `fetcher`.
pub const INSTANTIATION_DURATION: &str = "polhost_instantiation_duration_seconds";

/// OPA's `code` for a failed bundle poll.
pub const BUNDLE_ERROR_CODE: &str = "bundle_error";

pub(crate) fn activated(bundle: &str) {
    counter!(BUNDLE_LOADED, "name" => bundle.to_string()).increment(1);
}

pub(crate) fn polled(bundle: &str, outcome: &str, took: Duration) {
    histogram!(FETCH_DURATION, "bundle" => bundle.to_string(), "outcome" => outcome.to_string())
        .record(took.as_secs_f64());
}

pub(crate) fn downloaded(bundle: &str, bytes: u64) {
    counter!(DOWNLOADED_BYTES, "bundle" => bundle.to_string()).increment(bytes);
}

pub(crate) fn not_modified(bundle: &str) {
    counter!(NOT_MODIFIED, "bundle" => bundle.to_string()).increment(1);
}

pub(crate) fn failed(bundle: &str, service: &str, kind: FailureKind) {
    counter!(
        BUNDLE_FAILED_LOAD,
        "name" => bundle.to_string(),
        "code" => BUNDLE_ERROR_CODE,
        "message" => kind.as_str()
    )
    .increment(1);
    counter!(REFUSALS, "kind" => kind.as_str()).increment(1);
    if kind == FailureKind::Sandbox {
        counter!(SANDBOX_DENIALS, "service" => service.to_string()).increment(1);
    }
}

pub(crate) fn instantiated(fetcher: &str, took: Duration) {
    histogram!(INSTANTIATION_DURATION, "fetcher" => fetcher.to_string()).record(took.as_secs_f64());
}
