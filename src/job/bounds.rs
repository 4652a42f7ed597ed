//! Bounds on what a job may make the worker read and unpack: files the
//! worker parses (metadata, scores, detailed results) and bundles. Past a
//! bound the job fails with a message naming the setting; the worker, and
//! the other jobs in its slots, live on.

use super::beneath::Cap;

/// Setting of [`JobBounds::parsed_file_max`].
pub const PARSED_FILE_MAX: &str = "COMPUTE_WORKER_PARSED_FILE_MAX";
/// Setting of [`JobBounds::bundle_max`].
pub const BUNDLE_MAX: &str = "COMPUTE_WORKER_BUNDLE_MAX";
/// Setting of the bytes each program may write (`Limits::write_max`),
/// named when a program passes it.
pub const WRITE_MAX: &str = "COMPUTE_WORKER_WRITE_MAX";
/// Setting of [`JobBounds::bundle_max_entries`].
pub const BUNDLE_MAX_ENTRIES: &str = "COMPUTE_WORKER_BUNDLE_MAX_ENTRIES";

/// Defaults for a worker with a 100 GB disk and 8 GB of memory: a job's
/// four bundles stay under half the disk, a parsed file is a few MiB.
pub const DEFAULT_PARSED_FILE_MAX: u64 = 8 << 20;
pub const DEFAULT_BUNDLE_MAX: u64 = 10 << 30;
pub const DEFAULT_BUNDLE_MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobBounds {
    /// Bytes of `metadata.yaml`, `scores.json`/`scores.txt`, the detailed
    /// results page.
    pub parsed_file_max: u64,
    /// Unpacked bytes of one bundle.
    pub bundle_max: u64,
    /// Entries of one bundle.
    pub bundle_max_entries: usize,
}

impl Default for JobBounds {
    fn default() -> Self {
        JobBounds {
            parsed_file_max: DEFAULT_PARSED_FILE_MAX,
            bundle_max: DEFAULT_BUNDLE_MAX,
            bundle_max_entries: DEFAULT_BUNDLE_MAX_ENTRIES,
        }
    }
}

impl JobBounds {
    /// The cap of every file the worker parses.
    pub fn parsed(&self) -> Cap {
        Cap {
            bytes: self.parsed_file_max,
            setting: PARSED_FILE_MAX,
        }
    }

    pub fn unzip(&self) -> UnzipLimits {
        UnzipLimits {
            max_bytes: self.bundle_max,
            max_entries: self.bundle_max_entries,
        }
    }
}

/// Limits for extracting a bundle (`bundle::extract_zip`).
#[derive(Debug, Clone, Copy)]
pub struct UnzipLimits {
    /// Total bytes written for all entries.
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl Default for UnzipLimits {
    fn default() -> Self {
        UnzipLimits {
            max_bytes: DEFAULT_BUNDLE_MAX,
            max_entries: DEFAULT_BUNDLE_MAX_ENTRIES,
        }
    }
}
