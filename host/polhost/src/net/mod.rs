//! The host's side of a fetcher's requests once the sandbox has let them
//! through: one pooled client per service ([`Transport`]), with the TLS
//! OPA's settings ask for.
//!
//! Owns the network only; what may be reached is the sandbox's.

mod tls;
mod transport;

pub use tls::TlsError;
pub use transport::Transport;
pub(crate) use transport::TransportFailure;
