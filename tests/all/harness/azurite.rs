//! azurite (npm `azurite`, its `azurite-blob` server) on 127.0.0.1: Azure
//! Blob Storage that really verifies SharedKey and SAS signatures, for the
//! well-known development account `devstoreaccount1`. Uploads go through
//! azure-storage-blob (`tests/fixtures/azure_client.py`).
//!
//! ```ignore
//! let azurite = Azurite::start();
//! azurite.put("authz.tar.gz", &bytes);      // container `bundles`
//! let sas = azurite.sas("authz.tar.gz");    // read-only blob SAS
//! azurite.requests();                       // from azurite's debug log
//! ```
//!
//! Started with `--disableTelemetry` (it phones out otherwise) and
//! `--skipApiVersionCheck` (new SDKs send versions it does not know).
//! [`Azurite::requests`] reads its `--debug` log: method, path and status
//! of every request.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::python;
use super::{free_port, spawn_tied, terminate, wait_until_listening};

/// The development account every azurite has.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Its key: public, documented by Microsoft for the emulator.
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
pub const CONTAINER: &str = "bundles";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;

/// `node_modules/.bin` of the npm install `tests/harness/install.sh` made
/// (`POLHOST_NODE_MODULES` overrides).
fn node_bin(name: &str) -> PathBuf {
    let modules = std::env::var_os("POLHOST_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/polhost/node/node_modules")
        });
    modules.join(".bin").join(name)
}

/// One request from azurite's debug log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzuriteRequest {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub status: u16,
}

/// A running azurite-blob; stopped on drop.
pub struct Azurite {
    child: Child,
    port: u16,
    debug_log: PathBuf,
    dir: tempfile::TempDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = tempfile::tempdir().unwrap();
        let debug_log = dir.path().join("debug.log");
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut command = Command::new(node_bin("azurite-blob"));
            command
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .arg("--location")
                .arg(dir.path().join("data"))
                .args(["--disableTelemetry", "--skipApiVersionCheck", "--silent"])
                .arg("--debug")
                .arg(&debug_log)
                .stdin(Stdio::null())
                .stdout(fs::File::create(dir.path().join("out.log")).unwrap())
                .stderr(Stdio::null());
            let mut child =
                spawn_tied(command).expect("starting azurite-blob (run tests/harness/install.sh)");
            if wait_until_listening(&mut child, port, START_TIMEOUT) {
                return Azurite {
                    child,
                    port,
                    debug_log,
                    dir,
                };
            }
        }
        panic!(
            "azurite-blob did not start:\n{}",
            fs::read_to_string(dir.path().join("out.log")).unwrap_or_default()
        );
    }

    /// The path-style (emulator) blob endpoint:
    /// `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Uploads `content` as blob `name` of container `bundles`.
    pub fn put(&self, name: &str, content: &[u8]) {
        let file = self.dir.path().join("upload.tmp");
        fs::write(&file, content).unwrap();
        python(
            "azure_client.py",
            &[
                "put",
                &self.endpoint(),
                ACCOUNT,
                KEY,
                CONTAINER,
                name,
                file.to_str().unwrap(),
            ],
        );
    }

    /// A read-only SAS token for blob `name`.
    pub fn sas(&self, name: &str) -> String {
        python("azure_client.py", &["sas", ACCOUNT, KEY, CONTAINER, name])
            .trim()
            .to_string()
    }

    /// The requests azurite answered so far, in order.
    pub fn requests(&self) -> Vec<AzuriteRequest> {
        let text = fs::read_to_string(&self.debug_log).unwrap_or_default();
        let mut pending: HashMap<String, (String, String)> = HashMap::new();
        let mut out = Vec::new();
        for line in text.lines() {
            let Some(id) = line.split_whitespace().nth(1) else {
                continue;
            };
            if let Some(at) = line.find("RequestMethod=") {
                let mut fields = line[at..].split_whitespace();
                let method = fields
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("RequestMethod=");
                let url = fields
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("RequestURL=");
                let path = url.splitn(4, '/').nth(3).unwrap_or("");
                let path = format!("/{}", path.split('?').next().unwrap_or(""));
                pending.insert(id.to_string(), (method.to_string(), path));
            } else if line.contains("End response.")
                && let Some(at) = line.find("StatusCode=")
                && let Some((method, path)) = pending.remove(id)
            {
                let status = line[at + 11..]
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                out.push(AzuriteRequest {
                    method,
                    path,
                    status,
                });
            }
        }
        out
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        terminate(&mut self.child, libc::SIGTERM, Duration::from_secs(3));
    }
}
