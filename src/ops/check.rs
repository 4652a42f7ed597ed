//! A `doctor` row: a check's name, status, what was found and the fix;
//! and the report they make.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do; `None` for ok and skip rows.
    pub fix: Option<String>,
}

impl Check {
    pub(crate) fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    pub(crate) fn skip(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Skip,
            detail: detail.into(),
            fix: None,
        }
    }
    pub(crate) fn warn(
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    pub(crate) fn fail(
        name: &'static str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// 1 when the worker cannot run (a failure), 0 with only warnings.
pub fn exit_code(checks: &[Check]) -> i32 {
    i32::from(checks.iter().any(|c| c.status == Status::Fail))
}

/// The human table: name, status, detail, and the fix under each row
/// that has one.
pub fn table(checks: &[Check]) -> String {
    let w = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut s = format!("{:w$}  {:6}  {}\n", "check", "status", "detail");
    for c in checks {
        s += &format!("{:w$}  {:6}  {}\n", c.name, c.status.label(), c.detail);
        if let Some(fix) = &c.fix {
            s += &format!("{:w$}  {:6}  fix: {fix}\n", "", "");
        }
    }
    let fails = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warns = checks.iter().filter(|c| c.status == Status::Warn).count();
    s += &match (fails, warns) {
        (0, 0) => "\nall checks passed: this host can run the worker\n".to_string(),
        (0, w) => format!("\n{w} warning(s): the worker can run; see the fixes above\n"),
        (f, _) => format!("\n{f} failure(s): the worker cannot run here until they are fixed\n"),
    };
    s
}
