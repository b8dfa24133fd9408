//! `GET`/`HEAD /bundles/<name>`: the agent's active bundle of that name,
//! the activated bytes exactly, over [`crate::server::protocol`]. A held
//! long poll waits on the bundle's activation watch, so it answers as soon
//! as the agent activates a different bundle, not at the next timer tick.

use std::time::Duration;

use http::{Request, Response};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use super::Api;
use crate::Activation;
use crate::server::protocol::{self, Body, BundleRequest, ETag, Served, percent_decode};

/// Answers for the bundle named by `raw` (the path after `/bundles/`,
/// percent-encoded; `/` separates the segments of a name, as OPA allows).
///
/// A bundle that is configured but not yet active is a 404, as an unknown
/// one, unless the request is a long poll: it is then held until the
/// bundle activates or the wait ends (and 404 after all), so an OPA started
/// before polhost's first download gets the bundle the moment it exists.
pub(super) async fn answer<B>(api: &Api, req: &Request<B>, raw: &str) -> Response<Body> {
    let Some(request) = BundleRequest::parse(req) else {
        return protocol::method_not_allowed();
    };
    let Some(name) = percent_decode(raw).filter(|name| !name.is_empty()) else {
        return protocol::not_found();
    };
    let Some(mut watch) = api.agent.watch(&name) else {
        debug!(bundle = %name, "no such bundle");
        return protocol::not_found();
    };
    let content_type = request.content_type();
    let current = watch.borrow_and_update().clone();
    let active = match current {
        Some(active) => active,
        None => {
            let Some(wait) = request.wait.filter(|w| !w.is_zero()) else {
                return protocol::not_found();
            };
            match next_activation(api, &mut watch, None, wait).await {
                Some(active) => active,
                None => return protocol::not_found(),
            }
        }
    };
    let Some(etag) = ETag::from_hex(&active.sha256) else {
        // The agent writes hex SHA-256s; anything else is a bug upstream.
        return protocol::status_only(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "cannot tag bundle\n",
        );
    };
    if !request.has(etag) {
        return protocol::ok(served(&name, &active, etag), request.head, content_type);
    }
    let Some(wait) = request.hold_for(etag) else {
        return protocol::not_modified(etag, content_type);
    };
    match next_activation(api, &mut watch, Some(&active.sha256), wait).await {
        Some(newer) => match ETag::from_hex(&newer.sha256) {
            Some(newer_etag) => protocol::ok(
                served(&name, &newer, newer_etag),
                request.head,
                content_type,
            ),
            None => protocol::not_modified(etag, content_type),
        },
        None => protocol::not_modified(etag, content_type),
    }
}

/// Waits up to `wait` for an activation whose bytes differ from `held`
/// (any activation when `held` is `None`); `None` if the wait ends, or the
/// server shuts down, first. A re-activation of the same bytes keeps it
/// waiting: the client has them.
async fn next_activation(
    api: &Api,
    watch: &mut watch::Receiver<Option<Activation>>,
    held: Option<&str>,
    wait: Duration,
) -> Option<Activation> {
    let deadline = Instant::now() + wait;
    let changed = async {
        loop {
            if watch.changed().await.is_err() {
                // The agent is gone (it cannot be while we hold it, but a
                // closed watch must not spin): wait out the deadline.
                std::future::pending::<()>().await;
            }
            let activation = watch.borrow_and_update().clone();
            if let Some(activation) = activation
                && held != Some(activation.sha256.as_str())
            {
                return activation;
            }
        }
    };
    tokio::select! {
        activation = changed => Some(activation),
        () = tokio::time::sleep_until(deadline) => None,
        () = api.shutdown.cancelled() => None,
    }
}

fn served(name: &str, active: &Activation, etag: ETag) -> Served {
    Served {
        etag,
        len: active.size,
        reader: Box::new(active.reader()),
        label: name.to_string(),
    }
}
