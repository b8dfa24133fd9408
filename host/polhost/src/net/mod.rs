//! The host's side of a fetcher's requests once the sandbox has let them
//! through: one pooled client per service ([`Transport`]), with the TLS
//! OPA's settings ask for, the proxies of the environment, and the
//! grant's rule on the addresses a learned name resolves to.
//!
//! Owns the network only; what may be reached is the sandbox's.

mod client_key;
mod connect;
mod proxy;
mod tls;
mod transport;

use std::sync::{Arc, OnceLock};

pub use proxy::{Proxies, ProxyError};
pub use tls::TlsError;
pub use transport::Transport;
pub(crate) use transport::{TransportFailure, TransportFault};

/// What every service's client shares: the environment's proxies, and the
/// OS store's CA certificates, loaded once (when a service first needs
/// them) however many services there are.
#[derive(Debug, Default)]
pub struct Network {
    proxies: Arc<Proxies>,
    system_roots: OnceLock<Arc<rustls_native_certs::CertificateResult>>,
}

impl Network {
    /// Requests go through `proxies` (see [`Proxies::from_env`]).
    pub fn new(proxies: Proxies) -> Network {
        Network {
            proxies: Arc::new(proxies),
            system_roots: OnceLock::new(),
        }
    }

    fn system_roots(&self) -> Arc<rustls_native_certs::CertificateResult> {
        self.system_roots
            .get_or_init(|| Arc::new(rustls_native_certs::load_native_certs()))
            .clone()
    }
}
