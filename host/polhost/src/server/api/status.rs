//! `GET /v1/status`: OPA's status document, built from the agent's
//! per-bundle state at request time. Bundle fields keep OPA's names, order
//! (`bundle/status.go`) and formats, and are omitted when empty; polhost's
//! own fields sit under `polhost`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use http::{Response, StatusCode};
use serde::Serialize;

use super::time::rfc3339_nano;
use crate::server::protocol::Body;
use crate::{Agent, BundleStatus, Source};

/// OPA's `code` for a bundle whose last poll failed.
const BUNDLE_ERROR: &str = "bundle_error";

pub(super) fn status(agent: &Agent) -> Response<Body> {
    let statuses = agent.status();
    super::json(StatusCode::OK, &document(&statuses))
}

/// The bundle plugin's state, as OPA names it: `OK` once every bundle has
/// been activated; before that `ERROR` if a bundle not yet active failed
/// its last poll, else `NOT_READY`. A failed poll of an active bundle
/// keeps `OK`: the bundle it has is still served, as in OPA.
pub(super) fn plugin_state(statuses: &[BundleStatus]) -> &'static str {
    let pending = statuses.iter().filter(|s| s.activations == 0);
    let mut pending = pending.peekable();
    if pending.peek().is_none() {
        "OK"
    } else if pending.any(|s| s.last_failure.is_some()) {
        "ERROR"
    } else {
        "NOT_READY"
    }
}

#[derive(Serialize)]
struct Document<'a> {
    result: Result<'a>,
}

#[derive(Serialize)]
struct Result<'a> {
    labels: Labels,
    // Go marshals a map with its keys sorted; so does a BTreeMap.
    bundles: BTreeMap<&'a str, Bundle<'a>>,
    plugins: BTreeMap<&'static str, Plugin>,
}

#[derive(Serialize)]
struct Labels {
    id: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Plugin {
    state: &'static str,
}

/// One bundle, in OPA's field order.
#[derive(Serialize)]
struct Bundle<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_revision: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_successful_activation: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_successful_download: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_successful_request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_request: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    // OPA lists parse and compile errors here; a polhost failure is one
    // message, so this stays empty (and omitted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_code: Option<u16>,
    polhost: Polhost<'a>,
}

/// polhost's own view of the bundle.
#[derive(Serialize)]
struct Polhost<'a> {
    service: &'a str,
    fetcher: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
    activations: u64,
    consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_poll: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_kind: Option<&'static str>,
}

fn document(statuses: &[BundleStatus]) -> Document<'_> {
    Document {
        result: Result {
            labels: Labels {
                id: super::instance_id(),
                version: env!("CARGO_PKG_VERSION"),
            },
            bundles: statuses
                .iter()
                .map(|s| (s.name.as_str(), bundle(s)))
                .collect(),
            plugins: BTreeMap::from([(
                "bundle",
                Plugin {
                    state: plugin_state(statuses),
                },
            )]),
        },
    }
}

fn bundle(status: &BundleStatus) -> Bundle<'_> {
    let time = |t: Option<SystemTime>| t.map(rfc3339_nano);
    let active = status.active.as_ref();
    let failure = status.last_failure.as_ref();
    Bundle {
        name: &status.name,
        active_revision: active
            .map(|a| a.revision.as_str())
            .filter(|r| !r.is_empty()),
        last_successful_activation: time(status.last_successful_activation),
        // polhost refuses delta bundles: whatever is active is a snapshot.
        kind: active.map(|_| "snapshot"),
        size: active.map(|a| a.size).filter(|&size| size != 0),
        last_successful_download: time(status.last_successful_download),
        last_successful_request: time(status.last_successful_request),
        last_request: time(status.last_request),
        code: failure.map(|_| BUNDLE_ERROR),
        message: failure.map(|f| f.message.as_str()),
        errors: Vec::new(),
        http_code: failure.and_then(|f| f.http_code),
        polhost: Polhost {
            service: &status.service,
            fetcher: &status.fetcher,
            etag: active.and_then(|a| a.etag.as_deref()),
            sha256: active.map(|a| a.sha256.as_str()),
            source: active.map(|a| match a.source {
                Source::Disk => "disk",
                Source::Download => "download",
            }),
            activations: status.activations,
            consecutive_failures: status.consecutive_failures,
            next_poll: time(status.next_poll),
            failure_kind: failure.map(|f| f.kind.as_str()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, UNIX_EPOCH};

    use crate::FailureKind;
    use crate::status::Failure;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_failed_bundle_shows_opa_fields_in_opa_order() {
        let mut status = BundleStatus::new("team/authz", "remote", "http");
        status.requested(at(1_795_813_560));
        status.failed(Failure {
            kind: FailureKind::NotFound,
            message: "GET http://x/b: 404 Not Found".into(),
            http_code: Some(404),
            at: at(1_795_813_561),
        });
        let json = serde_json::to_string(&document(&[status])).unwrap();
        let bundle = json
            .split_once(r#""bundles":{"team/authz":"#)
            .and_then(|(_, rest)| rest.split_once(r#"},"plugins""#))
            .map(|(bundle, _)| bundle.to_string())
            .unwrap_or_else(|| panic!("{json}"));
        assert_eq!(
            bundle,
            concat!(
                r#"{"name":"team/authz","last_request":"2026-11-27T21:06:00Z","#,
                r#""code":"bundle_error","message":"GET http://x/b: 404 Not Found","#,
                r#""http_code":404,"polhost":{"service":"remote","fetcher":"http","#,
                r#""activations":0,"consecutive_failures":1,"failure_kind":"not-found"}}"#
            )
        );
        assert!(
            json.ends_with(r#""plugins":{"bundle":{"state":"ERROR"}}}}"#),
            "{json}"
        );
        assert!(json.starts_with(r#"{"result":{"labels":{"id":""#), "{json}");
    }

    #[test]
    fn plugin_state_is_ok_only_once_every_bundle_was_activated() {
        let waiting = BundleStatus::new("a", "s", "http");
        let mut failing = BundleStatus::new("b", "s", "http");
        failing.failed(Failure {
            kind: FailureKind::Transient,
            message: "refused".into(),
            http_code: None,
            at: at(1),
        });
        assert_eq!(plugin_state(&[]), "OK");
        assert_eq!(plugin_state(std::slice::from_ref(&waiting)), "NOT_READY");
        assert_eq!(plugin_state(&[waiting, failing]), "ERROR");
    }
}
