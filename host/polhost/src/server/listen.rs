//! The HTTP/1.1 side shared by both servers: the accept loop, one task per
//! keep-alive connection, and a graceful shutdown that ends held long
//! polls and cuts connections that outlive a short grace period.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

use super::protocol::Body;

/// How long connections may finish after shutdown before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(750);
/// Slowloris guard: a client must send its request head within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What answers requests. A handler must end a held request promptly once
/// the server's shutdown token is cancelled.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Response<Body>> + Send;
}

/// Accepts connections on `listener` for `handler` until `shutdown`, then
/// lets open connections finish for a moment and cuts the rest.
pub(crate) async fn serve_connections<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                log_join(joined);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let span = info_span!("connection", %peer);
                    let connection = connection(stream, handler.clone(), shutdown.clone());
                    connections.spawn(connection.instrument(span));
                }
                Err(e) => {
                    // Usually EMFILE or a connection reset before accept;
                    // back off briefly instead of spinning.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);

    let drain = async {
        while let Some(joined) = connections.join_next().await {
            log_join(joined);
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!(
            connections = connections.len(),
            "cutting connections still open after shutdown"
        );
        connections.shutdown().await;
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        error!(error = %e, "connection task panicked");
    }
}

/// Runs one HTTP/1.1 connection (keep-alive) until the client leaves or the
/// server shuts down.
async fn connection<H: Handler>(stream: TcpStream, handler: Arc<H>, shutdown: CancellationToken) {
    // Only small responses and big streamed bodies: Nagle buys nothing here.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        let span = info_span!("request", method = %req.method(), path = req.uri().path());
        async move {
            let response = handler.handle(req).await;
            debug!(status = response.status().as_u16(), "answered");
            Ok::<_, Infallible>(response)
        }
        .instrument(span)
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish the request in flight (held long polls answer at once),
            // then close; `serve_connections` cuts us if this takes too long.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}
