//! One download of one bundle: a fresh fetcher instance streams the bytes
//! into a sink; a blocking consumer writes them to a temp file while
//! hashing and validating them, in one pass, concurrently with the
//! transfer. The result is a validated temp file ready to commit, or an
//! error that says whose fault it was.

use std::io::{self, BufWriter, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tempfile::NamedTempFile;
use tokio::sync::mpsc;

use crate::bundle::{self, BundleError, BundleSummary, ValidationLimits, Verification};
use crate::config;
use crate::net::Transport;
use crate::runtime::{
    self, BundleSink, ErrorKind, FetchOutcome, FetcherComponent, ResponseInfo, Runtime,
    RuntimeError, SinkFailure, SinkFailureSlot,
};
use crate::sandbox::Grant;
use crate::store::BundleDir;

/// Chunks in flight between the sink and the consumer: with chunks of at
/// most 1 MiB, the bound on a download's buffered memory.
const CHANNEL_CHUNKS: usize = 8;

/// A downloaded, validated bundle, not yet committed.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The bundle's bytes, fsynced.
    pub file: NamedTempFile,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// What validation found.
    pub summary: BundleSummary,
    /// What the service said about it.
    pub info: ResponseInfo,
}

/// The result of a download that did not fail.
#[derive(Debug)]
pub(crate) enum Download {
    /// The active bundle is still current.
    NotModified(ResponseInfo),
    /// A new bundle, validated.
    Fetched(Fetched),
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum FetchError {
    /// The fetcher reported a failure (its message names the URL).
    #[error("{message}")]
    Fetcher {
        kind: ErrorKind,
        message: String,
        http_status: Option<u16>,
    },
    /// The sandbox refused a request the fetcher made.
    #[error("sandbox refused {0}")]
    Denied(String),
    /// The bundle is larger than `size_limit_bytes`.
    #[error("bundle exceeds size_limit_bytes ({limit} bytes); download stopped")]
    SizeLimit { limit: u64 },
    /// The bytes are not an acceptable bundle.
    #[error("invalid bundle: {0}")]
    Invalid(#[source] BundleError),
    /// The service vouched for a digest the bytes do not have.
    #[error("digest mismatch: the service announced {announced}, the bytes are sha256:{actual}")]
    DigestMismatch { announced: String, actual: String },
    /// The fetcher trapped, timed out or could not be run.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Local I/O (the temp file) failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// What kind of failure a poll met: the fetcher's own kinds (the WIT's
/// `error-kind`), then the host's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The network or the service failed in a way that may pass.
    Transient,
    /// The service refused the credentials.
    Unauthorized,
    /// The service has no such bundle.
    NotFound,
    /// The fetcher found the service's configuration unusable.
    InvalidConfig,
    /// The service broke its protocol.
    Protocol,
    /// The sandbox refused a request of the fetcher.
    Sandbox,
    /// The bundle grew past `size_limit_bytes`.
    SizeLimit,
    /// The bytes are not an acceptable bundle, or not those announced.
    InvalidBundle,
    /// The fetcher trapped, timed out or could not be run.
    Fetcher,
    /// Local I/O failed.
    Io,
    /// The bundle's roots overlap another active bundle's.
    Roots,
}

impl FailureKind {
    /// The word logs and status use (`sandbox`, `not-found`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Transient => "transient",
            FailureKind::Unauthorized => "unauthorized",
            FailureKind::NotFound => "not-found",
            FailureKind::InvalidConfig => "invalid-config",
            FailureKind::Protocol => "protocol",
            FailureKind::Sandbox => "sandbox",
            FailureKind::SizeLimit => "size-limit",
            FailureKind::InvalidBundle => "invalid-bundle",
            FailureKind::Fetcher => "fetcher",
            FailureKind::Io => "io",
            FailureKind::Roots => "roots",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FetchError {
    /// The HTTP status the service answered with, where the fetcher
    /// reported one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            FetchError::Fetcher { http_status, .. } => *http_status,
            _ => None,
        }
    }

    /// The kind of failure, for logs, events and status.
    pub fn kind(&self) -> FailureKind {
        match self {
            FetchError::Fetcher { kind, .. } => match kind {
                ErrorKind::Transient => FailureKind::Transient,
                ErrorKind::Unauthorized => FailureKind::Unauthorized,
                ErrorKind::NotFound => FailureKind::NotFound,
                ErrorKind::InvalidConfig => FailureKind::InvalidConfig,
                ErrorKind::Protocol => FailureKind::Protocol,
            },
            FetchError::Denied(_) => FailureKind::Sandbox,
            FetchError::SizeLimit { .. } => FailureKind::SizeLimit,
            FetchError::Invalid(_) | FetchError::DigestMismatch { .. } => {
                FailureKind::InvalidBundle
            }
            FetchError::Runtime(_) => FailureKind::Fetcher,
            FetchError::Io { .. } => FailureKind::Io,
        }
    }
}

/// Everything one download needs.
pub(crate) struct DownloadJob<'a> {
    pub runtime: &'a Runtime,
    pub fetcher: &'a FetcherComponent,
    pub grant: Arc<Grant>,
    /// The service's pooled client.
    pub transport: Arc<Transport>,
    pub service: &'a config::Service,
    pub bundle: &'a config::Bundle,
    /// The etag of the active bundle.
    pub etag: Option<String>,
    /// Where the temp file goes (the bundle's own directory).
    pub dir: &'a BundleDir,
    /// What the bundle's archive may hold.
    pub limits: ValidationLimits,
    /// How its signature is verified (`None`: no keys, no `signing`).
    pub verification: Option<Arc<Verification>>,
    /// Told the bytes received so far, as they arrive.
    pub progress: Option<Arc<ProgressFn>>,
}

/// Told `(bundle, bytes received so far)` while a download streams in
/// (for a progress bar): called from polhost's writer thread, once per
/// chunk of at most 1 MiB, so it must be quick.
pub type ProgressFn = dyn Fn(&str, u64) + Send + Sync;

/// Runs one download.
pub(crate) async fn download(job: DownloadJob<'_>) -> Result<Download, FetchError> {
    let io_error = |context: &str| {
        let context = format!("{context} in {}", job.dir.path().display());
        move |source| FetchError::Io { context, source }
    };
    let (tx, mut rx) = mpsc::channel(CHANNEL_CHUNKS);
    let limits = job.limits;
    let verification = job.verification.clone();
    let progress = job
        .progress
        .clone()
        .map(|report| (job.bundle.name.clone(), report));
    // The temp file and the consumer's threads wait for the first byte:
    // most polls are 304s, and a file created and deleted per poll was
    // most of what 1,000 bundles polled every second cost (ext4 inode
    // allocation, in the kernel).
    let consumer = async {
        let Some(first) = rx.recv().await else {
            return Ok(None);
        };
        let file = job
            .dir
            .temp_file()
            .map_err(io_error("creating a temp file"))?;
        tokio::task::spawn_blocking(move || {
            consume(first, rx, file, limits, verification.as_deref(), progress)
        })
        .await
        .map(Some)
        .map_err(|e| FetchError::Io {
            context: "the bundle consumer".into(),
            source: io::Error::other(e.to_string()),
        })
    };
    let failure = SinkFailureSlot::default();
    let sink = BundleSink::new(tx, job.bundle.size_limit_bytes, failure.clone());

    let long_poll = job
        .bundle
        .polling
        .long_polling_timeout
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    let service = runtime::Service {
        name: job.service.name.clone(),
        url: job.service.url.clone(),
        headers: job.service.headers.clone(),
        config: job.service.raw.to_string(),
    };
    let request = runtime::BundleRequest {
        name: job.bundle.name.clone(),
        resource: job.bundle.resource.clone(),
        etag: job.etag.clone(),
        long_polling_timeout_seconds: long_poll,
    };
    let first_byte_timeout = Duration::from_secs(
        job.service.response_header_timeout_seconds + u64::from(long_poll.unwrap_or(0)),
    );
    let call = job.fetcher.call(
        job.runtime,
        runtime::Reach {
            grant: job.grant.clone(),
            transport: job.transport.clone(),
        },
        first_byte_timeout,
        &service,
        &request,
        sink,
    );
    let (call, consumed) = tokio::join!(call, consumer);
    // No byte at all: what validating an empty stream says.
    let consumed =
        consumed?.unwrap_or_else(|| Err(empty_stream(limits, job.verification.as_deref())));

    if let Some(SinkFailure::SizeLimit { limit }) = failure.lock().ok().and_then(|f| f.clone()) {
        return Err(FetchError::SizeLimit { limit });
    }
    let call = call?;
    // A fetch during which the sandbox refused a request failed, whatever
    // the fetcher made of the refusal: a fetcher must not be able to paper
    // over a denied request with bytes from elsewhere.
    if let Some(denial) = call.denial {
        return Err(FetchError::Denied(denial));
    }
    if let Some(fault) = &call.transport_failure
        && fault.address_refused
    {
        return Err(FetchError::Denied(format!(
            "request to {}: {}",
            fault.url, fault.why
        )));
    }
    match call.result {
        Err(error) => Err(match consumed {
            // The consumer refused the bytes while they were still coming:
            // that refusal, not the guest's failed write, is the cause.
            Err(Consumed::Refused(e)) => FetchError::Invalid(e),
            _ => FetchError::Fetcher {
                kind: error.kind,
                // The guest saw only an error code; the host knows which
                // certificate or connection failed.
                message: match call.transport_failure {
                    Some(fault) if error.message.contains(&fault.url) => {
                        format!("{} ({})", error.message, fault.why)
                    }
                    Some(fault) => format!("{} ({}: {})", error.message, fault.url, fault.why),
                    None => error.message,
                },
                http_status: error.http_status,
            },
        }),
        Ok(FetchOutcome::NotModified(info)) => Ok(Download::NotModified(info)),
        Ok(FetchOutcome::Fetched(info)) => {
            let (file, summary, sha256, size) = match consumed {
                Ok(done) => done,
                Err(Consumed::Refused(e) | Consumed::Incomplete(e)) => {
                    return Err(FetchError::Invalid(e));
                }
                Err(Consumed::Io(e)) => {
                    return Err(io_error("writing the bundle")(e));
                }
            };
            if let Some(announced) = &info.digest
                && let Some(hex) = announced.strip_prefix("sha256:")
                && !hex.eq_ignore_ascii_case(&sha256)
            {
                return Err(FetchError::DigestMismatch {
                    announced: announced.clone(),
                    actual: sha256,
                });
            }
            Ok(Download::Fetched(Fetched {
                file,
                sha256,
                size,
                summary,
                info,
            }))
        }
    }
}

/// How the consumer ended, when not with a good bundle.
enum Consumed {
    /// Validation failed before the stream ended: the bytes are bad.
    Refused(BundleError),
    /// Validation failed at or after the end: maybe the transfer was cut.
    Incomplete(BundleError),
    /// The temp file could not be written.
    Io(io::Error),
}

type ConsumedBundle = (NamedTempFile, BundleSummary, String, u64);

/// Reads the chunks as they arrive and validates them, while a second
/// thread writes and hashes the same chunks: inflating is the slowest step,
/// so it gets a core of its own instead of taking turns with SHA-256 and
/// the writes.
fn consume(
    first: Bytes,
    rx: mpsc::Receiver<Bytes>,
    file: NamedTempFile,
    limits: ValidationLimits,
    verification: Option<&Verification>,
    progress: Option<(String, Arc<ProgressFn>)>,
) -> Result<ConsumedBundle, Consumed> {
    let (to_writer, writer_rx) = std::sync::mpsc::sync_channel(CHANNEL_CHUNKS);
    let writer = std::thread::Builder::new()
        .name("polhost-bundle-writer".into())
        .spawn(move || write_and_hash(writer_rx, file, progress))
        .map_err(Consumed::Io)?;
    // The first chunk was taken from the channel to learn that bytes come;
    // the writer gets it as the reader would have handed it on.
    let _ = to_writer.send(first.clone());
    let mut input = ChannelReader {
        rx,
        chunk: first,
        ended: false,
        copy_to: Some(to_writer),
    };
    let validated = bundle::validate_stream(&mut input, limits, verification).and_then(|first| {
        // Whatever follows the archive is part of the file and its digest.
        io::copy(&mut input, &mut io::sink()).map_err(BundleError::Io)?;
        Ok(first)
    });
    let ended = input.ended;
    // Closing the copy lets the writer finish.
    drop(input);
    let written = writer
        .join()
        .map_err(|_| Consumed::Io(io::Error::other("the bundle writer thread panicked")))?;
    let first = match validated {
        Ok(first) => first,
        Err(BundleError::Io(e)) => return Err(Consumed::Io(e)),
        Err(e) if ended => return Err(Consumed::Incomplete(e)),
        Err(e) => return Err(Consumed::Refused(e)),
    };
    let (file, sha256, size) = written.map_err(Consumed::Io)?;
    // The rules the streamed pass could not decide (overlapping data
    // files) get a second look at the temp file, read through its own
    // handle; most bundles need none.
    let summary = match first.finish(|| file.reopen()) {
        Ok(summary) => summary,
        Err(BundleError::Io(e)) => return Err(Consumed::Io(e)),
        // The file is whole here: what the second look finds is the
        // bundle's fault, not a cut transfer's.
        Err(e) => return Err(Consumed::Refused(e)),
    };
    Ok((file, summary, sha256, size))
}

/// How a download that sent no byte at all ends: as validation of an empty
/// stream does (a fetcher that says it fetched, with nothing, is wrong).
fn empty_stream(limits: ValidationLimits, verification: Option<&Verification>) -> Consumed {
    match bundle::validate_stream(&mut io::empty(), limits, verification) {
        Err(BundleError::Io(e)) => Consumed::Io(e),
        Err(e) => Consumed::Incomplete(e),
        Ok(_) => Consumed::Incomplete(BundleError::Io(io::Error::other("no bytes"))),
    }
}

/// Writes the chunks to the temp file and hashes them; fsyncs at the end.
fn write_and_hash(
    chunks: std::sync::mpsc::Receiver<Bytes>,
    file: NamedTempFile,
    progress: Option<(String, Arc<ProgressFn>)>,
) -> io::Result<(NamedTempFile, String, u64)> {
    use sha2::{Digest, Sha256};
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    for chunk in chunks {
        hasher.update(&chunk);
        writer.write_all(&chunk)?;
        size += chunk.len() as u64;
        if let Some((bundle, report)) = &progress {
            report(bundle, size);
        }
    }
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.as_file().sync_all()?;
    Ok((file, hex::encode(hasher.finalize()), size))
}

/// Reads the chunks of a channel as one byte stream, handing each chunk to
/// `copy_to` as it is taken; ends when every sender is gone.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
    ended: bool,
    copy_to: Option<std::sync::mpsc::SyncSender<Bytes>>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    if let Some(copy_to) = &self.copy_to
                        && copy_to.send(chunk.clone()).is_err()
                    {
                        // The writer stopped: it reports why when joined.
                        return Err(io::Error::other("the bundle writer stopped"));
                    }
                    self.chunk = chunk;
                }
                None => {
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}
