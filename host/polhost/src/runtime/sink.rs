//! The output-stream a fetcher writes a bundle into.
//!
//! It only counts bytes against the size limit and hands chunks to a bounded
//! channel; the consumer (hashing, writing, validating) runs elsewhere. The
//! channel's bound is the backpressure: a guest splicing a fast response
//! waits while the consumer catches up, so memory stays flat whatever the
//! bundle's size. It must not block: `wasi:io` calls `write` synchronously.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc::{self, OwnedPermit, error::TrySendError};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// The most a single write may carry.
const MAX_WRITE: usize = 1 << 20;

/// Why a sink refused a write: the host reports this rather than the
/// guest's account of a failed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkFailure {
    /// The bundle grew past the size limit.
    SizeLimit { limit: u64 },
    /// The consumer stopped reading (it refused the bundle).
    Closed,
}

/// A shared slot in which the sink records why it failed.
pub type SinkFailureSlot = Arc<Mutex<Option<SinkFailure>>>;

pub struct BundleSink {
    tx: mpsc::Sender<Bytes>,
    permit: Option<OwnedPermit<Bytes>>,
    written: u64,
    limit: u64,
    failure: SinkFailureSlot,
}

impl BundleSink {
    pub fn new(tx: mpsc::Sender<Bytes>, limit: u64, failure: SinkFailureSlot) -> Self {
        BundleSink {
            tx,
            permit: None,
            written: 0,
            limit,
            failure,
        }
    }

    fn fail(&self, failure: SinkFailure) -> StreamError {
        let message = match &failure {
            SinkFailure::SizeLimit { limit } => {
                format!("bundle exceeds the size limit of {limit} bytes")
            }
            SinkFailure::Closed => "polhost stopped reading the bundle".to_string(),
        };
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(failure);
        }
        StreamError::LastOperationFailed(wasmtime::format_err!("{message}"))
    }

    /// Takes a channel slot if one is free now; `Ok(false)` if the channel
    /// is full.
    fn try_reserve(&mut self) -> StreamResult<bool> {
        if self.permit.is_some() {
            return Ok(true);
        }
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => {
                self.permit = Some(permit);
                Ok(true)
            }
            Err(TrySendError::Full(_)) => Ok(false),
            Err(TrySendError::Closed(_)) => Err(self.fail(SinkFailure::Closed)),
        }
    }
}

#[async_trait::async_trait]
impl Pollable for BundleSink {
    async fn ready(&mut self) {
        if self.permit.is_none()
            && let Ok(permit) = self.tx.clone().reserve_owned().await
        {
            self.permit = Some(permit);
        }
        // A closed channel is ready too: the next call reports it.
    }
}

impl OutputStream for BundleSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let written = self.written + bytes.len() as u64;
        if written > self.limit {
            return Err(self.fail(SinkFailure::SizeLimit { limit: self.limit }));
        }
        if bytes.len() > MAX_WRITE || !self.try_reserve()? {
            return Err(StreamError::trap("write without a check-write permit"));
        }
        let permit = self.permit.take().expect("reserved above");
        permit.send(bytes);
        self.written = written;
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Chunks are handed over as they are written; there is no buffer.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.try_reserve()? {
            Ok(MAX_WRITE)
        } else {
            Ok(0)
        }
    }
}
