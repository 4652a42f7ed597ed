//! Where a sandbox start spends its time, as tracing data (trace level,
//! so that the log shows them only when asked to): the caller's
//! phases are spans on [`TARGET`] (`configuration`, `user namespace`,
//! `sandbox setup`, `program`, `teardown`), and the keeper's own share of
//! `sandbox setup` (`mounts`, `libcontainer init`, measured in the keeper
//! and carried back in `Event::Started`) are events on [`TARGET`] with a
//! `phase` and its `micros`.
//!
//! [`Recorder`] is a tracing layer that sums them per name while armed;
//! `compute-worker exec --phases FILE` arms it and writes the sums, which
//! is how `compute-worker bench startup` breaks a start down.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The target of every phase span and event.
pub const TARGET: &str = "compute_worker::sandbox::phase";

/// Enter a caller-side phase: `let _phase = phase!("configuration");`
macro_rules! phase {
    ($name:literal) => {
        tracing::trace_span!(target: $crate::sandbox::phases::TARGET, $name).entered()
    };
}
pub(crate) use phase;

/// The keeper's share of a start, measured in the keeper.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeeperTimes {
    /// Private mounts, loopback, scratch, the overlay rootfs, cgroup
    /// masking and config.json.
    pub mounts_us: u64,
    /// libcontainer's create and start, up to the program's exec.
    pub init_us: u64,
}

impl KeeperTimes {
    /// Report them as phase events (inside the caller's `sandbox setup`).
    pub fn record(&self) {
        tracing::trace!(target: TARGET, phase = "mounts", micros = self.mounts_us);
        tracing::trace!(target: TARGET, phase = "libcontainer init", micros = self.init_us);
    }
}

/// What `exec --phases` writes: the phase sums and the time from the
/// command's start to its end, both in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub phases_us: BTreeMap<String, u64>,
    pub total_us: u64,
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

static ARMED: AtomicBool = AtomicBool::new(false);
static SUMS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Start summing phases (in this process, from now on).
pub fn arm() {
    SUMS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ARMED.store(true, Ordering::Relaxed);
}

/// The sums so far, in microseconds per phase name.
pub fn sums() -> BTreeMap<String, u64> {
    SUMS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn add(name: &str, us: u64) {
    if ARMED.load(Ordering::Relaxed) {
        *SUMS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default() += us;
    }
}

/// The recorder's filter: phases only (decided once per callsite).
pub fn filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE)
}

/// The layer that sums phase spans and events while armed.
pub struct Recorder;

struct Opened(Instant);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Opened(Instant::now()));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(Opened(at)) = span.extensions().get::<Opened>() {
                add(span.name(), micros(at.elapsed()));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut v = PhaseEvent::default();
        event.record(&mut v);
        if let (Some(phase), Some(us)) = (v.phase, v.micros) {
            add(&phase, us);
        }
    }
}

#[derive(Default)]
struct PhaseEvent {
    phase: Option<String>,
    micros: Option<u64>,
}

impl Visit for PhaseEvent {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "phase" {
            self.phase = Some(value.to_string());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "micros" {
            self.micros = Some(value);
        }
    }
    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}
