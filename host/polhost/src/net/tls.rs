//! The TLS of one service's requests, from OPA's settings: the system's
//! roots (the OS store) plus `tls.ca_cert`, the client certificate of
//! `credentials.client_tls`, or no verification under `allow_insecure_tls`.
//!
//! Why the host and not the fetcher: a client key must never enter a
//! sandbox, and one place verifies certificates for every fetcher alike.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use polhost_config::{ClientTls, Service};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{Network, client_key};

/// Why a service's TLS settings cannot be used: the field and what is
/// wrong (never a key's bytes or its passphrase).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TlsError {
    /// `services.<name>.tls.ca_cert`, ...
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The rustls client configuration for `service`'s requests.
pub(crate) fn client_config(
    service: &Service,
    network: &Network,
) -> Result<rustls::ClientConfig, TlsError> {
    let field = |key: &str| format!("services.{}.{key}", service.name);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            field: field("tls"),
            message: e.to_string(),
        })?;
    let builder = if service.allow_insecure_tls {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        builder.with_root_certificates(roots(service, network, &field)?)
    };
    // hyper-rustls sets the ALPN protocols (h2, http/1.1) itself.
    let config = match &service.credentials {
        polhost_config::Credentials::ClientTls(client) => {
            let (chain, key) = client_identity(client, &|key| {
                field(&format!("credentials.client_tls.{key}"))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError {
                    field: field("credentials.client_tls"),
                    message: format!("the certificate and the key do not go together: {e}"),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// The system's roots, and `tls.ca_cert`'s certificates.
fn roots(
    service: &Service,
    network: &Network,
    field: &dyn Fn(&str) -> String,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let system = network.system_roots();
    if service.tls.system_ca_required && (system.certs.is_empty() || !system.errors.is_empty()) {
        let why = system
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no certificate found".into());
        return Err(TlsError {
            field: field("tls.system_ca_required"),
            message: format!("the system's CA certificates cannot be loaded: {why}"),
        });
    }
    // A system root rustls cannot parse is skipped, as Go skips it.
    let (_added, _skipped) = roots.add_parsable_certificates(system.certs.iter().cloned());
    if let Some(path) = &service.tls.ca_cert {
        let field = field("tls.ca_cert");
        let certs = read_certs(path, &field)?;
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError {
                field: field.clone(),
                message: format!("{}: not a usable CA certificate: {e}", path.display()),
            })?;
        }
    }
    Ok(roots)
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError {
        field: field.to_string(),
        message: format!("{}: {message}", path.display()),
    };
    let pem = fs::read(path).map_err(|e| error(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(error("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The client certificate chain and key of `credentials.client_tls`.
fn client_identity(
    client: &ClientTls,
    field: &dyn Fn(&str) -> String,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = read_certs(&client.cert, &field("cert"))?;
    let key_field = field("private_key");
    let error = |message: String| TlsError {
        field: key_field.clone(),
        message: format!("{}: {message}", client.private_key.display()),
    };
    let pem = fs::read(&client.private_key).map_err(|e| error(e.to_string()))?;
    let passphrase = client.private_key_passphrase.as_ref().map(|p| p.expose());
    let key = client_key::private_key(&pem, passphrase).map_err(error)?;
    Ok((chain, key))
}

/// `allow_insecure_tls`: any certificate is accepted (signatures are still
/// checked, so the handshake itself is sound).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
