//! Each bundle's status, kept by the agent as state: what the local API,
//! `/v1/status` and `/metrics` read, and what an embedder polls. Events
//! only notify; a subscriber that falls behind re-reads this.
//!
//! One [`BundleStatus`] per configured bundle, updated at the points of a
//! poll OPA's status plugin reports (request, download, activation,
//! failure), so its fields mean what OPA's do.

use std::time::SystemTime;

use crate::agent::Activation;
use crate::download::FailureKind;

/// What the agent knows about one configured bundle.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BundleStatus {
    /// The bundle's name.
    pub name: String,
    /// Its service.
    pub service: String,
    /// The fetcher (its service type) that serves it.
    pub fetcher: String,
    /// The active bundle, if any.
    pub active: Option<Activation>,
    /// How many times a bundle of this name was activated (from disk at
    /// start included).
    pub activations: u64,
    /// When a bundle was last activated.
    pub last_successful_activation: Option<SystemTime>,
    /// When a bundle was last downloaded and validated (a 200 that was
    /// kept, even if its bytes were those already active).
    pub last_successful_download: Option<SystemTime>,
    /// When a poll last succeeded (a bundle or a not-modified).
    pub last_successful_request: Option<SystemTime>,
    /// When the last poll started.
    pub last_request: Option<SystemTime>,
    /// Why the last poll failed; `None` once a poll succeeds.
    pub last_failure: Option<Failure>,
    /// Polls failed in a row.
    pub consecutive_failures: u32,
    /// When the next poll is due (`None` before the first and while one
    /// runs).
    pub next_poll: Option<SystemTime>,
}

/// A failed poll.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// What went wrong, naming the URL, file or field; never a secret.
    pub message: String,
    /// The HTTP status the service answered with, where the fetcher saw
    /// one.
    pub http_code: Option<u16>,
    /// When it happened.
    pub at: SystemTime,
}

impl BundleStatus {
    pub(crate) fn new(name: &str, service: &str, fetcher: &str) -> BundleStatus {
        BundleStatus {
            name: name.to_string(),
            service: service.to_string(),
            fetcher: fetcher.to_string(),
            active: None,
            activations: 0,
            last_successful_activation: None,
            last_successful_download: None,
            last_successful_request: None,
            last_request: None,
            last_failure: None,
            consecutive_failures: 0,
            next_poll: None,
        }
    }

    pub(crate) fn requested(&mut self, at: SystemTime) {
        self.last_request = Some(at);
        self.next_poll = None;
    }

    pub(crate) fn succeeded(&mut self, at: SystemTime) {
        self.last_successful_request = Some(at);
        self.last_failure = None;
        self.consecutive_failures = 0;
    }

    pub(crate) fn downloaded(&mut self, at: SystemTime) {
        self.succeeded(at);
        self.last_successful_download = Some(at);
    }

    pub(crate) fn activated(&mut self, activation: Activation, at: SystemTime) {
        self.active = Some(activation);
        self.activations += 1;
        self.last_successful_activation = Some(at);
    }

    pub(crate) fn failed(&mut self, failure: Failure) {
        self.last_failure = Some(failure);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
    }
}
