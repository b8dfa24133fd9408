//! Download progress on a terminal: a spinner per bundle showing bytes so
//! far and the average rate, only for downloads past a few MiB (a small
//! bundle is done before a bar would help), only when stderr is a terminal
//! and logs are text. Log lines are written above the bars.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{BinaryBytes, MultiProgress, ProgressBar, ProgressState, ProgressStyle};
use tokio::sync::broadcast;

use polhost::Event;

/// A download gets a bar once this much of it has arrived.
pub const THRESHOLD: u64 = 4 << 20;

/// The bars of the downloads in flight.
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
    downloads: Arc<Mutex<HashMap<String, Download>>>,
}

/// One bundle's download in flight.
struct Download {
    started: Instant,
    bytes: u64,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Bars drawn on stderr, if stderr is a terminal.
    pub fn on_terminal() -> Option<Progress> {
        io::IsTerminal::is_terminal(&io::stderr()).then(|| Progress {
            multi: MultiProgress::new(),
            downloads: Arc::default(),
        })
    }

    /// What [`polhost::AgentBuilder::progress`] is given: `bytes` of
    /// `bundle`'s download have arrived (called from polhost's writer
    /// thread, once per chunk).
    pub fn report(&self, bundle: &str, bytes: u64) {
        let mut downloads = self.downloads.lock().expect("progress lock");
        let download = downloads
            .entry(bundle.to_string())
            .or_insert_with(|| Download {
                started: Instant::now(),
                bytes: 0,
                bar: None,
            });
        if bytes < download.bytes {
            // Fewer bytes than before: a new download of the bundle.
            if let Some(bar) = download.bar.take() {
                self.clear(&bar);
            }
            download.started = Instant::now();
        }
        download.bytes = bytes;
        match &download.bar {
            Some(bar) => bar.set_position(bytes),
            None if bytes >= THRESHOLD => {
                let bar = ProgressBar::new_spinner()
                    .with_style(style())
                    .with_prefix(bundle.to_string())
                    .with_position(bytes)
                    .with_elapsed(download.started.elapsed());
                let bar = self.multi.add(bar);
                // Drawn now, and then at least as often as the spinner turns.
                bar.tick();
                bar.enable_steady_tick(Duration::from_millis(120));
                download.bar = Some(bar);
            }
            None => {}
        }
    }

    /// Clears a bundle's bar once its download is over (the agent says so
    /// with an event: the log line tells the outcome).
    pub fn finished(&self, bundle: &str) {
        let download = self.downloads.lock().expect("progress lock").remove(bundle);
        if let Some(bar) = download.and_then(|d| d.bar) {
            self.clear(&bar);
        }
    }

    /// Clears each bar when its bundle is activated or fails, until the
    /// agent is gone.
    pub fn follow(&self, mut events: broadcast::Receiver<Event>) {
        let progress = self.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::Activated(activation)) => progress.finished(&activation.bundle),
                    Ok(Event::Failed { bundle, .. } | Event::NotModified { bundle }) => {
                        progress.finished(&bundle)
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// Clears every bar (on the way out).
    pub fn clear_all(&self) {
        let downloads: Vec<Download> = self
            .downloads
            .lock()
            .expect("progress lock")
            .drain()
            .map(|(_, d)| d)
            .collect();
        for bar in downloads.into_iter().filter_map(|d| d.bar) {
            self.clear(&bar);
        }
        let _ = self.multi.clear();
    }

    fn clear(&self, bar: &ProgressBar) {
        bar.finish_and_clear();
        self.multi.remove(bar);
    }

    /// Where log lines go: stderr, above the bars.
    pub fn log_writer(&self) -> LogWriter {
        LogWriter(self.multi.clone())
    }
}

/// `⠋ authz: 12.50 MiB (3.10 MiB/s, 4s)`: the total is unknown, so no bar
/// and no ETA; the rate is the download's average so far.
fn style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix}: {bytes} ({average}, {elapsed})")
        .expect("a valid template")
        .with_key(
            "average",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let seconds = state.elapsed().as_secs_f64();
                if seconds > 0.0 {
                    let _ = write!(
                        w,
                        "{}/s",
                        BinaryBytes((state.pos() as f64 / seconds) as u64)
                    );
                }
            },
        )
}

/// Writes log lines to stderr with the bars hidden meanwhile.
#[derive(Clone)]
pub struct LogWriter(MultiProgress);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.suspend(|| io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}
