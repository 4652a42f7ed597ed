//! Results: scores files, the `output/metadata` file, and log capping.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::beneath::{self, BeneathError, Cap};

use serde_json::Value;

/// Why scores could not be read; the messages are the Python worker's.
#[derive(Debug, thiserror::Error)]
pub enum ScoresError {
    #[error("Could not find scores file, did the scoring program output it?")]
    Missing,
    #[error("Could not decode scores json properly, it contains an error.\n{0}")]
    BadJson(String),
    #[error("Could not decode scores.txt as YAML: {0}")]
    BadYaml(String),
    #[error("reading scores: {0}")]
    Refused(#[from] BeneathError),
}

/// Read `output/scores.json`, else YAML `output/scores.txt`: regular files
/// of at most `cap`, never through a link.
pub fn read_scores(output_dir: &Path, cap: Cap) -> Result<Value, ScoresError> {
    if let Some(data) = beneath::read(output_dir, Path::new("scores.json"), cap)? {
        let text = String::from_utf8_lossy(&data);
        return serde_json::from_str(&text).map_err(|e| ScoresError::BadJson(e.to_string()));
    }
    if let Some(data) = beneath::read(output_dir, Path::new("scores.txt"), cap)? {
        let text = String::from_utf8_lossy(&data);
        let y: serde_yaml::Value =
            serde_yaml::from_str(&text).map_err(|e| ScoresError::BadYaml(e.to_string()))?;
        return serde_json::to_value(y).map_err(|e| ScoresError::BadYaml(e.to_string()));
    }
    Err(ScoresError::Missing)
}

/// The detailed results page as read now: `data` is `None` when its
/// modification time is still `unless_modified`.
#[derive(Debug)]
pub struct DetailedPage {
    pub modified: Option<SystemTime>,
    pub data: Option<Vec<u8>>,
}

/// The name, in the output, of the detailed results page:
/// `detailed_results.html`, else the first `*.html` regular file (by name).
pub fn detailed_results_name(output: &Path) -> Option<PathBuf> {
    let main = Path::new("detailed_results.html");
    if output.join(main).symlink_metadata().is_ok() {
        return Some(main.to_path_buf());
    }
    let mut html: Vec<PathBuf> = std::fs::read_dir(output)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| PathBuf::from(e.file_name()))
        .filter(|p| p.extension().is_some_and(|e| e == "html"))
        .collect();
    html.sort();
    html.into_iter().next()
}

/// The detailed results page ([`detailed_results_name`]), read without
/// following links and at most `cap` long.
pub fn read_detailed_results(
    output: &Path,
    cap: Cap,
    unless_modified: Option<SystemTime>,
) -> Result<Option<DetailedPage>, BeneathError> {
    let Some(name) = detailed_results_name(output) else {
        return Ok(None);
    };
    let Some(file) = beneath::open_read(output, &name)? else {
        return Ok(None);
    };
    let modified = file.metadata().and_then(|m| m.modified()).ok();
    if unless_modified.is_some() && modified == unless_modified {
        return Ok(Some(DetailedPage {
            modified,
            data: None,
        }));
    }
    drop(file);
    let data = beneath::read(output, &name, cap)?;
    Ok(data.map(|d| DetailedPage {
        modified,
        data: Some(d),
    }))
}

/// Exit code and elapsed time of one program, if it ran.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProgramOutcome {
    pub exit_code: Option<i32>,
    pub elapsed: Option<Duration>,
}

/// The text of `output/metadata` (v1.5 compatibility), as PyYAML's
/// `yaml.dump(..., default_flow_style=False)` writes it: keys sorted,
/// `null` for unknown values; `elapsedTime` falls back to ingestion's.
pub fn output_metadata(program: ProgramOutcome, ingestion: ProgramOutcome) -> String {
    fn num(d: Option<Duration>) -> String {
        d.map(|d| format!("{:?}", d.as_secs_f64()))
            .unwrap_or_else(|| "null".into())
    }
    fn code(c: Option<i32>) -> String {
        c.map(|c| c.to_string()).unwrap_or_else(|| "null".into())
    }
    format!(
        "elapsedTime: {}\nexitCode: {}\ningestionElapsedTime: {}\ningestionExitCode: {}\n",
        num(program.elapsed.or(ingestion.elapsed)),
        code(program.exit_code),
        num(ingestion.elapsed),
        code(ingestion.exit_code),
    )
}

/// Write `output/metadata`; refuses to overwrite anything a program left
/// there, a dangling link too (the Python worker's error).
pub fn write_output_metadata(
    output_dir: &Path,
    program: ProgramOutcome,
    ingestion: ProgramOutcome,
) -> Result<(), String> {
    use std::io::Write;
    let name = Path::new("metadata");
    let mut f = match beneath::create_new(output_dir, name) {
        Ok(f) => f,
        Err(BeneathError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            return Err("Error, the output directory already contains a metadata file. This file is used to store exitCode and other data, do not write to this file manually.".into());
        }
        Err(e) => return Err(format!("writing the output metadata: {e}")),
    };
    f.write_all(output_metadata(program, ingestion).as_bytes())
        .map_err(|e| format!("writing {}: {e}", output_dir.join(name).display()))
}

/// Cap a captured stream for upload: keep the first and last `max / 2`
/// bytes with a marker saying how much was cut.
pub fn cap_log(data: &[u8], max: usize) -> Vec<u8> {
    if data.len() <= max {
        return data.to_vec();
    }
    let half = max / 2;
    let cut = data.len() - 2 * half;
    let mut out = Vec::with_capacity(max + 100);
    out.extend_from_slice(&data[..half]);
    out.extend_from_slice(
        format!("\n[compute-worker: {cut} bytes of output omitted here]\n").as_bytes(),
    );
    out.extend_from_slice(&data[data.len() - half..]);
    out
}

/// A stream captured for upload with bounded memory: the first and last
/// `max / 2` bytes, with the same marker as [`cap_log`] for what was cut.
#[derive(Debug)]
pub struct LogCapture {
    max: usize,
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    total: u64,
}

impl LogCapture {
    pub fn new(max: usize) -> Self {
        LogCapture {
            max,
            head: Vec::new(),
            tail: std::collections::VecDeque::new(),
            total: 0,
        }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let half = self.max / 2;
        let room = half.saturating_sub(self.head.len());
        let take = room.min(data.len());
        self.head.extend_from_slice(&data[..take]);
        data = &data[take..];
        if data.len() > half {
            data = &data[data.len() - half..];
            self.tail.clear();
        }
        self.tail.extend(data);
        while self.tail.len() > half {
            self.tail.pop_front();
        }
    }

    /// The captured bytes, with a marker where output was omitted.
    pub fn finish(self) -> Vec<u8> {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let mut out = self.head;
        if self.total > kept {
            out.extend_from_slice(
                format!(
                    "\n[compute-worker: {} bytes of output omitted here]\n",
                    self.total - kept
                )
                .as_bytes(),
            );
        }
        out.extend(self.tail);
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn capture_matches_cap_log() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for max in [100, 101, 5000, 20_000] {
            let mut c = super::LogCapture::new(max);
            for chunk in data.chunks(37) {
                c.push(chunk);
            }
            assert_eq!(c.finish(), super::cap_log(&data, max), "max {max}");
        }
    }

    use super::*;

    const CAP: Cap = Cap {
        bytes: 1 << 20,
        setting: "TEST",
    };

    #[test]
    fn scores_json_then_yaml_txt() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_scores(d.path(), CAP),
            Err(ScoresError::Missing)
        ));
        std::fs::write(
            d.path().join("scores.txt"),
            "accuracy: 0.93\nduration: 12\n",
        )
        .unwrap();
        assert_eq!(
            read_scores(d.path(), CAP).unwrap(),
            serde_json::json!({"accuracy": 0.93, "duration": 12})
        );
        std::fs::write(d.path().join("scores.json"), "{\"auc\": 0.5}").unwrap();
        assert_eq!(
            read_scores(d.path(), CAP).unwrap(),
            serde_json::json!({"auc": 0.5})
        );
        std::fs::write(d.path().join("scores.json"), "{auc").unwrap();
        let e = read_scores(d.path(), CAP).unwrap_err().to_string();
        assert!(
            e.starts_with("Could not decode scores json properly"),
            "{e}"
        );
    }

    #[test]
    fn metadata_file_like_pyyaml() {
        let m = output_metadata(
            ProgramOutcome {
                exit_code: Some(0),
                elapsed: Some(Duration::from_millis(1500)),
            },
            ProgramOutcome::default(),
        );
        assert_eq!(
            m,
            "elapsedTime: 1.5\nexitCode: 0\ningestionElapsedTime: null\ningestionExitCode: null\n"
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&m).unwrap();
        assert_eq!(v["exitCode"], serde_yaml::Value::from(0));
        // Program did not run: elapsedTime is ingestion's.
        let m = output_metadata(
            ProgramOutcome::default(),
            ProgramOutcome {
                exit_code: Some(1),
                elapsed: Some(Duration::from_secs(2)),
            },
        );
        assert!(m.starts_with("elapsedTime: 2.0\nexitCode: null\n"), "{m}");
        let d = tempfile::tempdir().unwrap();
        write_output_metadata(d.path(), Default::default(), Default::default()).unwrap();
        assert!(write_output_metadata(d.path(), Default::default(), Default::default()).is_err());
    }

    #[test]
    fn logs_keep_head_and_tail() {
        let data: Vec<u8> = (0..1000).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(cap_log(&data, 2000), data);
        let c = cap_log(&data, 100);
        assert!(c.starts_with(&data[..50]));
        assert!(c.ends_with(&data[950..]));
        assert!(String::from_utf8_lossy(&c).contains("900 bytes of output omitted"));
    }
}
