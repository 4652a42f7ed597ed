//! The job layer's one error type: the message for `Failed`, the Codabench
//! failure report to send first (if any), and whether trying again may help.
//! Retry rules look at [`JobError::transient`] and nothing else.

use crate::site::FailureType;

/// Why a job step (or one of its phases) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    /// The `Failed` status detail a participant sees.
    pub message: String,
    /// A failure report (`type`, `error_message`) sent before `Failed`.
    pub report: Option<(FailureType, String)>,
    /// A retry may succeed (network trouble, a registry's 5xx); `false`
    /// for everything that would fail the same way again.
    pub transient: bool,
}

impl JobError {
    /// A permanent failure with this message and no failure report.
    pub fn new(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            report: None,
            transient: false,
        }
    }

    /// A failure that trying again may cure.
    pub fn transient(message: impl Into<String>) -> Self {
        JobError {
            transient: true,
            ..JobError::new(message)
        }
    }

    /// Send this failure report (type and text) before `Failed`.
    pub fn with_report(mut self, kind: FailureType, text: impl Into<String>) -> Self {
        self.report = Some((kind, text.into()));
        self
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl From<String> for JobError {
    fn from(message: String) -> Self {
        JobError::new(message)
    }
}

impl From<&str> for JobError {
    fn from(message: &str) -> Self {
        JobError::new(message)
    }
}
