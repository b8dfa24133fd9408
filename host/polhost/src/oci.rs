//! Pulling a fetcher component from an OCI registry, in the CNCF Wasm OCI
//! artifact layout that `wkg oci push` and `oras push` with wasm media
//! types write (one `application/wasm` layer, an
//! `application/vnd.wasm.config.v0+json` config), with `oci-wasm`.
//!
//! The layer the manifest names must be the digest the operator pinned,
//! and no larger than the host accepts, before a byte of it is fetched; the
//! bytes are checked against the digest again by the caller. A registry on
//! a loopback address is spoken to over plain HTTP, as Docker does; any
//! other over HTTPS unless the entry says `insecure: true`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_wasm::WasmClient;

use crate::config::BearerCredentials;
use crate::source::{MAX_COMPONENT_BYTES, SourceError};

/// Pulls the wasm layer of `reference`, which must have `digest`.
pub(crate) async fn pull(
    reference: &str,
    digest: &str,
    credentials: Option<&BearerCredentials>,
    insecure: bool,
) -> Result<Vec<u8>, SourceError> {
    let error = |message: String| SourceError::Oci {
        reference: reference.to_string(),
        message,
    };
    let image: Reference = reference
        .parse()
        .map_err(|e| error(format!("invalid reference: {e}")))?;
    let auth = registry_auth(credentials).map_err(error)?;
    let protocol = if insecure || is_loopback(image.registry()) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let client = WasmClient::new(Client::new(ClientConfig {
        protocol,
        user_agent: concat!("polhost/", env!("CARGO_PKG_VERSION"), " (component pull)"),
        // A registry that stalls must not hold polhost's start for ever.
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    }));
    let (manifest, _config, manifest_digest) = client
        .pull_manifest_and_config(&image, &auth)
        .await
        .map_err(|e| error(format!("reading the manifest: {e:#}")))?;
    if let Some(pinned) = image.digest()
        && !pinned.eq_ignore_ascii_case(&manifest_digest)
    {
        return Err(error(format!(
            "the registry served manifest {manifest_digest}, the reference pins {pinned}"
        )));
    }
    let layer = &manifest.layers[0];
    if !layer.digest.eq_ignore_ascii_case(digest) {
        return Err(error(format!(
            "its wasm layer is {}, the configuration's digest is {digest}: refused before downloading",
            layer.digest
        )));
    }
    if layer.size < 0 || layer.size as u64 > MAX_COMPONENT_BYTES {
        return Err(SourceError::TooLarge {
            location: format!("oci://{reference}"),
        });
    }
    let mut bytes = CappedBuffer::default();
    client
        .pull_blob(&image, layer, &mut bytes)
        .await
        .map_err(|e| error(format!("downloading layer {}: {e:#}", layer.digest)))?;
    Ok(bytes.0)
}

/// `credentials.bearer` as a registry login: scheme `Basic` with
/// `user:password` (as OPA writes registry credentials), else a bearer
/// token.
fn registry_auth(credentials: Option<&BearerCredentials>) -> Result<RegistryAuth, String> {
    let Some(bearer) = credentials else {
        return Ok(RegistryAuth::Anonymous);
    };
    let token = match (&bearer.token, &bearer.token_path) {
        (Some(token), _) => token.expose().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("credentials.bearer.token_path {}: {e}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => return Ok(RegistryAuth::Anonymous),
    };
    if bearer.scheme.eq_ignore_ascii_case("basic") {
        let (user, password) = token
            .split_once(':')
            .ok_or("credentials.bearer: a Basic token is user:password")?;
        Ok(RegistryAuth::Basic(user.to_string(), password.to_string()))
    } else {
        Ok(RegistryAuth::Bearer(token))
    }
}

/// `127.0.0.0/8`, `[::1]` or `localhost`, with or without a port.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => registry.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A buffer that refuses to grow past [`MAX_COMPONENT_BYTES`]: a registry
/// that sends more than its manifest said is cut off.
#[derive(Default)]
struct CappedBuffer(Vec<u8>);

impl tokio::io::AsyncWrite for CappedBuffer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if (self.0.len() + buf.len()) as u64 > MAX_COMPONENT_BYTES {
            return Poll::Ready(Err(io::Error::other(format!(
                "the layer is larger than {MAX_COMPONENT_BYTES} bytes"
            ))));
        }
        self.0.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_get_plain_http() {
        for registry in [
            "127.0.0.1:5000",
            "localhost",
            "LOCALHOST:80",
            "[::1]:5000",
            "127.9.9.9",
        ] {
            assert!(is_loopback(registry), "{registry}");
        }
        for registry in [
            "registry.example.com",
            "10.0.0.1:5000",
            "ghcr.io",
            "[2001:db8::1]",
        ] {
            assert!(!is_loopback(registry), "{registry}");
        }
    }

    #[test]
    fn basic_credentials_are_user_and_password() {
        let bearer = BearerCredentials {
            token: Some(crate::config::Secret::new("user:pa:ss".into())),
            token_path: None,
            scheme: "Basic".into(),
        };
        match registry_auth(Some(&bearer)).unwrap() {
            RegistryAuth::Basic(user, password) => {
                assert_eq!((user.as_str(), password.as_str()), ("user", "pa:ss"))
            }
            _ => panic!("not basic"),
        }
    }
}
