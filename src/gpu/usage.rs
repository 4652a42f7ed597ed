//! What a program did with its GPUs: a [`Sampler`] reads NVML's used
//! memory and utilisation for each GPU while the program runs (once at
//! the start, every [`SAMPLE_EVERY`], once at the end), on a thread of
//! its own so that a slow driver never holds up the job. It keeps each
//! GPU's peak of used memory and its mean utilisation.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::Nvml;
use serde::Serialize;

pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// One GPU's figures over a program's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuFigures {
    pub uuid: String,
    pub peak_memory_bytes: u64,
    pub mean_utilisation_percent: f64,
}

/// What the sampler found: the figures of the GPUs it could read, and
/// why the others (or all, when NVML could not be opened) have none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuUsage {
    pub figures: Vec<GpuFigures>,
    pub unavailable: Option<String>,
}

/// Samples NVML on a thread until [`Sampler::finish`].
pub struct Sampler {
    stop: mpsc::Sender<()>,
    /// `Err`: the thread could not be started (why).
    thread: Result<JoinHandle<GpuUsage>, String>,
}

impl Sampler {
    /// Start sampling the GPUs with `uuids` (`GPU-...`).
    pub fn start(uuids: Vec<String>) -> Sampler {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("gpu-usage".into())
            .spawn(move || sample(&uuids, &stopped))
            .map_err(|e| format!("no sampler thread: {e}"));
        Sampler { stop, thread }
    }

    /// Take the last sample and the figures (waits for that sample only).
    pub async fn finish(self) -> GpuUsage {
        let _ = self.stop.send(());
        let why = match self.thread {
            Err(why) => why,
            Ok(thread) => match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(Ok(usage)) => return usage,
                _ => "the sampler failed".to_string(),
            },
        };
        GpuUsage {
            figures: Vec::new(),
            unavailable: Some(why),
        }
    }
}

/// One GPU's running totals.
#[derive(Default)]
struct Tally {
    peak: Option<u64>,
    utilisation_sum: f64,
    samples: u32,
    error: Option<String>,
}

fn sample(uuids: &[String], stopped: &mpsc::Receiver<()>) -> GpuUsage {
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            return GpuUsage {
                figures: Vec::new(),
                unavailable: Some(super::discovery::nvml_init_error(e).to_string()),
            }
        }
    };
    let mut tallies: Vec<Tally> = uuids.iter().map(|_| Tally::default()).collect();
    loop {
        for (uuid, t) in uuids.iter().zip(&mut tallies) {
            t.add(read(&nvml, uuid));
        }
        match stopped.recv_timeout(SAMPLE_EVERY) {
            Err(RecvTimeoutError::Timeout) => continue,
            _ => break,
        }
    }
    for (uuid, t) in uuids.iter().zip(&mut tallies) {
        t.add(read(&nvml, uuid));
    }
    summarise(uuids, &tallies)
}

/// Used memory (bytes) and utilisation (percent) of one GPU now.
fn read(nvml: &Nvml, uuid: &str) -> Result<(u64, u32), String> {
    let device = nvml.device_by_uuid(uuid).map_err(|e| e.to_string())?;
    let used = device.memory_info().map_err(|e| e.to_string())?.used;
    let gpu = device.utilization_rates().map_err(|e| e.to_string())?.gpu;
    Ok((used, gpu))
}

impl Tally {
    fn add(&mut self, sample: Result<(u64, u32), String>) {
        match sample {
            Ok((used, utilisation)) => {
                self.peak = Some(self.peak.map_or(used, |p| p.max(used)));
                self.utilisation_sum += f64::from(utilisation);
                self.samples += 1;
            }
            Err(e) => self.error = Some(e),
        }
    }
}

fn summarise(uuids: &[String], tallies: &[Tally]) -> GpuUsage {
    let mut usage = GpuUsage::default();
    let mut problems = Vec::new();
    for (uuid, t) in uuids.iter().zip(tallies) {
        match t.peak {
            Some(peak) => usage.figures.push(GpuFigures {
                uuid: uuid.clone(),
                peak_memory_bytes: peak,
                mean_utilisation_percent: t.utilisation_sum / f64::from(t.samples),
            }),
            None => problems.push(format!(
                "{uuid}: {}",
                t.error.as_deref().unwrap_or("never sampled")
            )),
        }
    }
    if !problems.is_empty() {
        usage.unavailable = Some(problems.join("; "));
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_and_mean_per_gpu_and_why_a_gpu_has_none() {
        let mut a = Tally::default();
        a.add(Ok((100, 40)));
        a.add(Ok((300, 60)));
        a.add(Ok((200, 80)));
        let mut b = Tally::default();
        b.add(Err("Not Found".into()));
        let usage = summarise(&["GPU-a".into(), "GPU-b".into()], &[a, b]);
        assert_eq!(
            usage.figures,
            vec![GpuFigures {
                uuid: "GPU-a".into(),
                peak_memory_bytes: 300,
                mean_utilisation_percent: 60.0,
            }]
        );
        assert_eq!(usage.unavailable.as_deref(), Some("GPU-b: Not Found"));
    }
}
