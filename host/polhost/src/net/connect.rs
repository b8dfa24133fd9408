//! How one service's connections are made, under its TLS: straight to an
//! origin at addresses its grant allows ([`CheckedResolver`]), or through
//! the proxy the environment names for it ([`Route`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::proxy::Proxies;
use crate::sandbox::{Grant, special_class};

/// A connection refused because of where its name resolves (see
/// `sandbox::address`): the `wasi:http` code is `destination-IP-prohibited`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct AddressRefused(String);

/// getaddrinfo, then the grant's address rule on every address: what is
/// returned is what is connected to.
#[derive(Clone)]
pub(crate) struct CheckedResolver {
    inner: GaiResolver,
    grant: Arc<Grant>,
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, io::Error>> + Send>>;

impl Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Resolving {
        let grant = self.grant.clone();
        let resolving = self.inner.call(name.clone());
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = resolving.await?.collect();
            let host = name.as_str();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
                .into_iter()
                .partition(|a| grant.address_refusal(host, a.ip()).is_none());
            if allowed.is_empty() && !refused.is_empty() {
                let listed: Vec<String> = refused
                    .iter()
                    .map(|a| format!("{} ({})", a.ip(), special_class(a.ip()).unwrap_or("public")))
                    .collect();
                return Err(io::Error::other(AddressRefused(format!(
                    "{host}, learned in this fetch, resolves to {}, which service {:?} was not granted ({})",
                    listed.join(", "),
                    grant.service,
                    crate::sandbox::LEARNED_PRIVATE
                ))));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// The connector under the TLS layer: direct, or through a proxy.
#[derive(Clone)]
pub(crate) struct Route {
    direct: HttpConnector<CheckedResolver>,
    /// Connections to proxies (named by the operator's environment: not
    /// checked against the grant).
    to_proxy: HttpConnector,
    proxies: Arc<Proxies>,
}

impl Route {
    pub(crate) fn new(
        grant: Arc<Grant>,
        proxies: Arc<Proxies>,
        connect_timeout: Duration,
    ) -> Route {
        let mut direct = HttpConnector::new_with_resolver(CheckedResolver {
            inner: GaiResolver::new(),
            grant,
        });
        let mut to_proxy = HttpConnector::new();
        configure(&mut direct, connect_timeout);
        configure(&mut to_proxy, connect_timeout);
        Route {
            direct,
            to_proxy,
            proxies,
        }
    }
}

fn configure<R>(http: &mut HttpConnector<R>, connect_timeout: Duration) {
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
}

type Connecting = Pin<Box<dyn Future<Output = Result<Routed, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for Route {
    type Response = Routed;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // HttpConnector is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: Uri) -> Connecting {
        let https = target.scheme_str() == Some("https");
        match self.proxies.for_uri(&target).cloned() {
            None => {
                let connecting = self.direct.call(target);
                Box::pin(async move {
                    Ok(Routed {
                        io: connecting.await?,
                        via_proxy: false,
                    })
                })
            }
            // https: a CONNECT tunnel, then TLS with the origin inside it.
            Some(proxy) if https => {
                let shown = proxy.uri.to_string();
                let mut tunnel = Tunnel::new(proxy.uri, self.to_proxy.clone());
                if let Some(authorization) = proxy.authorization {
                    tunnel = tunnel.with_auth(authorization);
                }
                Box::pin(async move {
                    let io = tunnel.call(target).await.map_err(|e| TunnelFailed {
                        proxy: shown,
                        source: Box::new(e),
                    })?;
                    Ok(Routed {
                        io,
                        via_proxy: false,
                    })
                })
            }
            // http: the request goes to the proxy in absolute form.
            Some(proxy) => {
                let connecting = self.to_proxy.call(proxy.uri);
                Box::pin(async move {
                    Ok(Routed {
                        io: connecting.await?,
                        via_proxy: true,
                    })
                })
            }
        }
    }
}

/// A `CONNECT` the proxy did not open; the transport's description walks
/// into hyper-util's reason and its cause.
#[derive(Debug, thiserror::Error)]
#[error("CONNECT through proxy {proxy}")]
struct TunnelFailed {
    proxy: String,
    #[source]
    source: BoxError,
}

/// A connection made by [`Route`]: hyper sends absolute-form requests on
/// one that goes to an HTTP proxy.
pub(crate) struct Routed {
    io: TokioIo<TcpStream>,
    via_proxy: bool,
}

impl Connection for Routed {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.via_proxy)
    }
}

impl Read for Routed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Routed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
