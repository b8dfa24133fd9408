//! A private CA made with the `openssl` CLI (Debian package `openssl`),
//! as an operator's internal CA would be: a server certificate for
//! 127.0.0.1 and localhost, and a client certificate for mutual TLS.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files of one CA, all PEM, in a temp dir that lives as long as it.
pub struct TestCa {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    /// The CA's certificate: what `tls.ca_cert` names.
    pub ca_cert: PathBuf,
    /// The server's certificate (SAN IP:127.0.0.1, DNS:localhost and
    /// DNS:bundles.test, the name the proxy tests reach it by) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate and its key (PKCS#8, unencrypted).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// How every key here is made: EC P-256, unencrypted.
const EC_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

/// `openssl ARGS... EXTRA...` in `dir`: `args` split at spaces (file names
/// here have none), `extra` as given (a subject may hold spaces).
fn openssl(dir: &Path, args: &str, extra: &[&str]) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl (install it: tests/harness/install.sh): {e}"));
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate `NAME.pem` (key `NAME-key.pem`) for `subject`, signed by
/// the CA in `dir`, with `ext` (an openssl extension section's text).
fn issue(dir: &Path, name: &str, subject: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &format!("req -new {EC_KEY} -keyout {name}-key.pem -out {name}.csr"),
        &["-subj", subject],
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 -out {name}.pem -extfile {name}.ext"
        ),
        &[],
    );
}

impl TestCa {
    /// A new CA and its two certificates.
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("polhost-ca-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        openssl(
            d,
            &format!(
                "req -x509 {EC_KEY} -keyout ca-key.pem -out ca.pem -days 2 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
            ),
            &["-subj", "/CN=polhost test CA"],
        );
        issue(
            d,
            "server",
            "/CN=127.0.0.1",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:bundles.test\n",
        );
        issue(
            d,
            "client",
            "/CN=polhost client",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        TestCa {
            dir: d.to_path_buf(),
            ca_cert: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server-key.pem"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client-key.pem"),
            _dir: dir,
        }
    }

    /// The client key encrypted with `passphrase`, in OpenSSL's legacy
    /// PEM form (`Proc-Type: 4,ENCRYPTED`, AES-256-CBC: what OPA reads)
    /// or, with `pkcs8`, as an `ENCRYPTED PRIVATE KEY` (OpenSSL 3's
    /// default).
    pub fn encrypted_client_key(&self, passphrase: &str, pkcs8: bool) -> PathBuf {
        let name = if pkcs8 {
            "client-key-pkcs8.pem"
        } else {
            "client-key-legacy.pem"
        };
        let tool = if pkcs8 { "pkey" } else { "ec" };
        openssl(
            &self.dir,
            &format!("{tool} -in client-key.pem -aes256 -out {name}"),
            &["-passout", &format!("pass:{passphrase}")],
        );
        self.dir.join(name)
    }
}
