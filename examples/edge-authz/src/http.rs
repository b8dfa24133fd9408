//! The HTTP side (hyper 1, HTTP/1.1):
//!
//! * `POST /authorize`, a JSON body (at most 1 MiB) as `input`: 200
//!   `{"allow": bool, "revision": "..."}`; 503 until a policy is active;
//!   400 for a body that is not JSON; 500 when evaluation fails.
//! * `GET /ready`: 200 `{"revision", "sha256"}` of the active policy, else
//!   503; either way `last_load`, what became of the last activation.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{Authorizer, DecisionError, LoadOutcome, Value};

/// The largest request body.
const MAX_BODY: usize = 1 << 20;

/// Serves connections from `listener` until `shutdown`, then lets each
/// connection finish the request in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    authorizer: Arc<Authorizer>,
    shutdown: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                warn!("accepting a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let authorizer = authorizer.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let authorizer = authorizer.clone();
                async move { Ok::<_, Infallible>(handle(&authorizer, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, "connection: {e}");
            }
        });
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

async fn handle(authorizer: &Authorizer, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/authorize") => authorize(authorizer, request).await,
        (&Method::GET, "/ready") => ready(authorizer),
        (_, "/authorize" | "/ready") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method not allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}

async fn authorize(authorizer: &Authorizer, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            let (status, message) = if e.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body exceeds {MAX_BODY} bytes"),
                )
            } else {
                (StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            };
            return json(status, serde_json::json!({ "error": message }));
        }
    };
    let input = match std::str::from_utf8(&body)
        .map_err(|e| e.to_string())
        .and_then(|text| Value::from_json_str(text).map_err(|e| e.to_string()))
    {
        Ok(input) => input,
        Err(e) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("the body is not JSON: {e}") }),
            );
        }
    };
    // Evaluation is CPU work of microseconds, bounded by the evaluation
    // time limit: it runs on this worker rather than a blocking thread.
    match authorizer.decide(input) {
        Ok(decision) => json(
            StatusCode::OK,
            serde_json::json!({ "allow": decision.allow, "revision": decision.revision() }),
        ),
        Err(DecisionError::NotReady) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": DecisionError::NotReady.to_string() }),
        ),
        Err(DecisionError::Decide(e)) => json(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": e.to_string() }),
        ),
    }
}

fn ready(authorizer: &Authorizer) -> Response<Full<Bytes>> {
    let last_load = authorizer.reports().borrow().as_ref().map(|report| {
        let (outcome, error) = match &report.outcome {
            LoadOutcome::Loaded(_) => ("loaded", None),
            LoadOutcome::Unchanged => ("unchanged", None),
            LoadOutcome::Refused(message) => ("refused", Some(message.clone())),
        };
        serde_json::json!({
            "revision": report.revision,
            "sha256": report.sha256,
            "outcome": outcome,
            "error": error,
        })
    });
    match authorizer.policy() {
        Some(policy) => json(
            StatusCode::OK,
            serde_json::json!({
                "revision": policy.revision(),
                "sha256": policy.sha256(),
                "last_load": last_load,
            }),
        ),
        None => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "no policy is active yet", "last_load": last_load }),
        ),
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
