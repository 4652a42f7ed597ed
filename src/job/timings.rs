//! Where a job's time went, stage by stage, from the task's receipt to
//! the end of the step: what an operator reads when a submission is
//! "slow". The stages follow one another with no gap, so their sum is
//! the step's time from receipt.

use std::time::{Duration, Instant};

use serde::Serialize;

/// One stage of a step; each lasts until the next begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// From the task's receipt to the start of the step (the site
    /// client, the task's checks).
    Received,
    /// The first statuses and every bundle fetched.
    BundlesDownloaded,
    /// The image found in the cache, pulled, or a given rootfs.
    ImageReady,
    /// The programs' sandboxes built and started.
    SandboxUp,
    /// The programs, until the last one ended.
    ProgramDone,
    /// Logs, detailed results, scores read, the result zip uploaded
    /// (and a human-in-the-loop decision, when one is awaited).
    OutputsUploaded,
    /// The final status (or the failure) reported.
    FinalStatus,
    /// The job directory removed.
    Cleanup,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Received,
        Stage::BundlesDownloaded,
        Stage::ImageReady,
        Stage::SandboxUp,
        Stage::ProgramDone,
        Stage::OutputsUploaded,
        Stage::FinalStatus,
        Stage::Cleanup,
    ];

    /// As the metrics label it and the JSON log names it.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Received => "received",
            Stage::BundlesDownloaded => "bundles_downloaded",
            Stage::ImageReady => "image_ready",
            Stage::SandboxUp => "sandbox_up",
            Stage::ProgramDone => "program_done",
            Stage::OutputsUploaded => "outputs_uploaded",
            Stage::FinalStatus => "final_status",
            Stage::Cleanup => "cleanup",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Stage::Received => "task received",
            Stage::BundlesDownloaded => "bundles downloaded",
            Stage::ImageReady => "image ready",
            Stage::SandboxUp => "sandbox up",
            Stage::ProgramDone => "program done",
            Stage::OutputsUploaded => "outputs uploaded",
            Stage::FinalStatus => "final status",
            Stage::Cleanup => "cleanup",
        }
    }
}

/// Where the step's image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// Found in the image store.
    Cached,
    /// Pulled from its registry.
    Pulled,
    /// A root filesystem given to `run` (no image store).
    Rootfs,
}

impl ImageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageSource::Cached => "cached",
            ImageSource::Pulled => "pulled",
            ImageSource::Rootfs => "rootfs",
        }
    }
}

/// The clock of one step.
#[derive(Debug, Clone)]
pub struct Timings {
    current: Stage,
    since: Instant,
    received: Instant,
    /// Time per stage, in [`Stage::ALL`]'s order.
    took: [Duration; 8],
    /// How the image came, and the bytes fetched for it.
    pub image: Option<(ImageSource, u64)>,
}

impl Timings {
    /// A clock started at the task's receipt, in [`Stage::Received`].
    pub fn since(received: Instant) -> Self {
        Timings {
            current: Stage::Received,
            since: received,
            received,
            took: [Duration::ZERO; 8],
            image: None,
        }
    }

    /// End the current stage now and begin `stage`.
    pub fn enter(&mut self, stage: Stage) {
        let now = Instant::now();
        self.took[self.current as usize] += now.saturating_duration_since(self.since);
        self.current = stage;
        self.since = now;
    }

    /// End the current stage now: the clock stops.
    pub fn finish(&mut self) {
        let current = self.current;
        self.enter(current);
    }

    /// Each stage's time, in order.
    pub fn stages(&self) -> impl Iterator<Item = (Stage, Duration)> + '_ {
        Stage::ALL.iter().map(|s| (*s, self.took[*s as usize]))
    }

    /// The time of `stage`.
    pub fn of(&self, stage: Stage) -> Duration {
        self.took[stage as usize]
    }

    /// From the receipt to the last stage's end.
    pub fn total(&self) -> Duration {
        self.since.saturating_duration_since(self.received)
    }

    /// When the task was received.
    pub fn received(&self) -> Instant {
        self.received
    }
}

impl std::fmt::Display for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stage timings:")?;
        for (i, (stage, took)) in self.stages().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{} {:.2} s", stage.words(), took.as_secs_f64())?;
            if let (Stage::ImageReady, Some((source, bytes))) = (stage, self.image) {
                write!(
                    f,
                    " ({}, {} fetched)",
                    source.as_str(),
                    crate::units::human(bytes)
                )?;
            }
        }
        write!(f, "; total {:.2} s", self.total().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_one_another_and_sum_to_the_total() {
        let mut t = Timings::since(Instant::now() - Duration::from_millis(30));
        t.enter(Stage::BundlesDownloaded);
        std::thread::sleep(Duration::from_millis(5));
        t.enter(Stage::ImageReady);
        t.image = Some((ImageSource::Cached, 0));
        t.enter(Stage::FinalStatus);
        t.finish();
        let sum: Duration = t.stages().map(|(_, d)| d).sum();
        assert_eq!(sum, t.total());
        assert!(t.of(Stage::Received) >= Duration::from_millis(30));
        assert!(t.of(Stage::BundlesDownloaded) >= Duration::from_millis(5));
        let text = t.to_string();
        assert!(
            text.contains("image ready 0.00 s (cached, 0 B fetched)"),
            "{text}"
        );
        assert!(text.contains("sandbox up 0.00 s"), "{text}");
    }
}
