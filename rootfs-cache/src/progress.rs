//! Progress reporting for pulls: a trait with byte counts, and two
//! implementations (an indicatif bar on a terminal, tracing lines otherwise).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One thing that happened during a pull or import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// A blob download starts. `total` is its size from the manifest.
    DownloadStarted {
        /// Image being pulled.
        image: String,
        /// Blob digest.
        digest: String,
        /// Size in bytes.
        total: u64,
    },
    /// More bytes of a blob arrived; `done` counts from the start of the blob.
    Downloaded {
        /// Blob digest.
        digest: String,
        /// Bytes received so far.
        done: u64,
        /// Size in bytes.
        total: u64,
    },
    /// A blob was fully received and verified.
    DownloadFinished {
        /// Blob digest.
        digest: String,
    },
    /// A layer was already in the store (unpacked by an earlier or concurrent pull).
    LayerCached {
        /// Layer digest.
        digest: String,
    },
    /// A layer was unpacked.
    LayerUnpacked {
        /// Layer digest.
        digest: String,
        /// Size of its files.
        bytes: u64,
    },
    /// The image is complete in the store.
    ImageReady {
        /// Canonical reference.
        image: String,
        /// Manifest digest.
        digest: String,
    },
}

/// Receives progress events. Must be cheap: it is called for every chunk.
pub trait Progress: Send + Sync {
    /// Handle one event.
    fn event(&self, ev: &ProgressEvent);
}

/// Ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn event(&self, _ev: &ProgressEvent) {}
}

/// Structured `tracing` lines: one at the start and end of each blob, and at
/// most one every few seconds in between.
#[derive(Debug)]
pub struct TracingProgress {
    interval: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Default for TracingProgress {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl TracingProgress {
    /// Log intermediate byte counts at most every `interval` per blob.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }
}

impl Progress for TracingProgress {
    fn event(&self, ev: &ProgressEvent) {
        match ev {
            ProgressEvent::DownloadStarted {
                image,
                digest,
                total,
            } => {
                self.last
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(digest.clone(), Instant::now());
                tracing::info!(image = %image, digest = %digest, total, "download started");
            }
            ProgressEvent::Downloaded {
                digest,
                done,
                total,
            } => {
                let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
                let t = last.entry(digest.clone()).or_insert_with(Instant::now);
                if t.elapsed() >= self.interval {
                    *t = Instant::now();
                    tracing::info!(digest = %digest, done, total, "downloading");
                }
            }
            ProgressEvent::DownloadFinished { digest } => {
                self.last
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(digest);
                tracing::info!(digest = %digest, "download verified");
            }
            ProgressEvent::LayerCached { digest } => {
                tracing::info!(digest = %digest, "layer already in the store")
            }
            ProgressEvent::LayerUnpacked { digest, bytes } => {
                tracing::info!(digest = %digest, bytes, "layer unpacked")
            }
            ProgressEvent::ImageReady { image, digest } => {
                tracing::info!(image = %image, digest = %digest, "image ready")
            }
        }
    }
}

/// indicatif bars on stderr, one per blob being downloaded.
pub struct IndicatifProgress {
    multi: indicatif::MultiProgress,
    bars: Mutex<HashMap<String, indicatif::ProgressBar>>,
}

impl Default for IndicatifProgress {
    fn default() -> Self {
        Self {
            multi: indicatif::MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

fn short(d: &str) -> &str {
    let h = d.strip_prefix("sha256:").unwrap_or(d);
    &h[..h.len().min(12)]
}

impl Progress for IndicatifProgress {
    fn event(&self, ev: &ProgressEvent) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            ProgressEvent::DownloadStarted { digest, total, .. } => {
                let bar = self.multi.add(indicatif::ProgressBar::new(*total));
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(short(digest).to_string());
                bars.insert(digest.clone(), bar);
            }
            ProgressEvent::Downloaded { digest, done, .. } => {
                if let Some(b) = bars.get(digest) {
                    b.set_position(*done);
                }
            }
            ProgressEvent::DownloadFinished { digest } => {
                if let Some(b) = bars.remove(digest) {
                    b.finish_with_message("done");
                }
            }
            ProgressEvent::LayerCached { digest } => {
                let _ = self
                    .multi
                    .println(format!("{} already present", short(digest)));
            }
            ProgressEvent::LayerUnpacked { digest, .. } => {
                let _ = self.multi.println(format!("{} unpacked", short(digest)));
            }
            ProgressEvent::ImageReady { image, digest } => {
                let _ = self.multi.println(format!("{image} ready ({digest})"));
            }
        }
    }
}

/// A bar when stderr is a terminal, tracing lines otherwise.
pub fn auto() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(IndicatifProgress::default())
    } else {
        Arc::new(TracingProgress::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implementations_take_every_event() {
        let evs = [
            ProgressEvent::DownloadStarted {
                image: "i".into(),
                digest: "sha256:0123456789abcdef".into(),
                total: 10,
            },
            ProgressEvent::Downloaded {
                digest: "sha256:0123456789abcdef".into(),
                done: 5,
                total: 10,
            },
            ProgressEvent::DownloadFinished {
                digest: "sha256:0123456789abcdef".into(),
            },
            ProgressEvent::LayerCached { digest: "d".into() },
            ProgressEvent::LayerUnpacked {
                digest: "d".into(),
                bytes: 1,
            },
            ProgressEvent::ImageReady {
                image: "i".into(),
                digest: "d".into(),
            },
        ];
        let bar = IndicatifProgress {
            multi: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::hidden(),
            ),
            bars: Mutex::new(HashMap::new()),
        };
        let lines = TracingProgress::new(Duration::ZERO);
        for e in &evs {
            bar.event(e);
            lines.event(e);
            NoProgress.event(e);
            auto().event(e);
        }
        assert!(bar.bars.lock().unwrap().is_empty());
        assert!(lines.last.lock().unwrap().is_empty());
    }
}
