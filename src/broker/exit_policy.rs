//! When a consumer stops taking jobs on its own, for autoscaling (spot
//! instances, workers run as batch jobs): after N jobs (`--exit-after`), or
//! once no job has run and none was received for a while
//! (`--exit-when-idle`). The consumer then finishes what it holds, gives
//! any prefetched but unstarted task back to the broker, and returns.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// What makes a consumer stop taking jobs (besides its shutdown token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitPolicy {
    /// Start at most this many jobs, then take no more.
    pub after_jobs: Option<u64>,
    /// Stop when no job has run and none was received for this long.
    pub when_idle: Option<Duration>,
}

impl ExitPolicy {
    pub fn is_set(&self) -> bool {
        self.after_jobs.is_some() || self.when_idle.is_some()
    }
}

/// The consumer's count of started jobs and its last activity, and the
/// reason it stopped taking jobs, if it did.
#[derive(Debug)]
pub(super) struct Closing {
    policy: ExitPolicy,
    /// Cancelled when the consumer takes no new job (a child of the
    /// shutdown token, so a signal cancels it too).
    taking: CancellationToken,
    state: Mutex<ClosingState>,
}

#[derive(Debug)]
struct ClosingState {
    started: u64,
    running: usize,
    last_activity: Instant,
    reason: Option<String>,
}

/// Whether a received job may start.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    Start,
    /// The consumer is closing: the task goes back to the broker.
    GiveBack,
}

impl Closing {
    pub(super) fn new(policy: ExitPolicy, shutdown: &CancellationToken) -> Self {
        Closing {
            policy,
            taking: shutdown.child_token(),
            state: Mutex::new(ClosingState {
                started: 0,
                running: 0,
                last_activity: Instant::now(),
                reason: None,
            }),
        }
    }

    /// Cancelled once no new job may be taken.
    pub(super) fn taking(&self) -> &CancellationToken {
        &self.taking
    }

    /// A job was received: start it, or give it back when closing. The
    /// job that reaches `after_jobs` starts and closes the consumer.
    pub(super) fn admit(&self) -> Admit {
        let mut st = self.state.lock().unwrap();
        st.last_activity = Instant::now();
        if st.reason.is_some() || self.taking.is_cancelled() {
            return Admit::GiveBack;
        }
        st.started += 1;
        st.running += 1;
        if self.policy.after_jobs.is_some_and(|n| st.started >= n) {
            let reason = format!("--exit-after: {} job(s) taken", st.started);
            self.close(&mut st, reason);
        }
        Admit::Start
    }

    /// A started job ended.
    pub(super) fn finished(&self) {
        let mut st = self.state.lock().unwrap();
        st.running = st.running.saturating_sub(1);
        st.last_activity = Instant::now();
    }

    /// Why the consumer stopped taking jobs on its own, if it did.
    pub(super) fn reason(&self) -> Option<String> {
        self.state.lock().unwrap().reason.clone()
    }

    fn close(&self, st: &mut ClosingState, reason: String) {
        if st.reason.is_none() {
            tracing::info!(%reason, "taking no new job; finishing the running ones, then exiting");
            st.reason = Some(reason);
        }
        self.taking.cancel();
    }

    /// Close the consumer once it has been idle for `when_idle`; returns
    /// when it is closed (by this or anything else). Without `when_idle`,
    /// waits for the close.
    pub(super) async fn watch_idle(&self) {
        let Some(idle) = self.policy.when_idle else {
            self.taking.cancelled().await;
            return;
        };
        let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            {
                let mut st = self.state.lock().unwrap();
                if st.running == 0 && st.last_activity.elapsed() >= idle {
                    let reason = format!("--exit-when-idle: idle for {idle:?}");
                    self.close(&mut st, reason);
                }
            }
            tokio::select! {
                _ = self.taking.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_n_jobs_the_next_is_given_back() {
        let shutdown = CancellationToken::new();
        let c = Closing::new(
            ExitPolicy {
                after_jobs: Some(2),
                when_idle: None,
            },
            &shutdown,
        );
        assert_eq!(c.admit(), Admit::Start);
        assert!(!c.taking().is_cancelled());
        assert_eq!(c.admit(), Admit::Start);
        assert!(c.taking().is_cancelled());
        assert_eq!(c.admit(), Admit::GiveBack);
        assert!(c.reason().unwrap().contains("--exit-after"));
        assert!(!shutdown.is_cancelled(), "running jobs are not killed");
    }

    #[test]
    fn a_signal_closes_without_a_reason() {
        let shutdown = CancellationToken::new();
        let c = Closing::new(ExitPolicy::default(), &shutdown);
        shutdown.cancel();
        assert_eq!(c.admit(), Admit::GiveBack);
        assert_eq!(c.reason(), None);
    }

    #[tokio::test]
    async fn idle_closes_only_when_nothing_runs() {
        let shutdown = CancellationToken::new();
        let c = std::sync::Arc::new(Closing::new(
            ExitPolicy {
                after_jobs: None,
                when_idle: Some(Duration::from_millis(200)),
            },
            &shutdown,
        ));
        assert_eq!(c.admit(), Admit::Start);
        let watch = tokio::spawn({
            let c = c.clone();
            async move { c.watch_idle().await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!c.taking().is_cancelled(), "a job runs");
        c.finished();
        tokio::time::timeout(Duration::from_secs(2), watch)
            .await
            .unwrap()
            .unwrap();
        assert!(c.reason().unwrap().contains("--exit-when-idle"));
    }
}
