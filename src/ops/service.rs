//! `compute-worker install-service`: a systemd user unit that runs `serve`,
//! enabled and started when the user's systemd manager is reachable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

pub const UNIT_NAME: &str = "compute-worker.service";

/// Quote one ExecStart word: `%` is a specifier and `$` a variable to
/// systemd, so both are doubled; words with spaces or quotes are quoted.
fn exec_word(w: &str) -> String {
    let escaped = w.replace('%', "%%").replace('$', "$$");
    if escaped
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        escaped
    }
}

/// The unit text for `binary` (absolute) with an optional env file.
pub fn unit_text(binary: &Path, env_file: Option<&Path>, drain: Duration) -> String {
    let drain_secs = drain.as_secs().max(1);
    let mut exec = vec![
        binary.to_string_lossy().into_owned(),
        "serve".into(),
        "--drain-timeout".into(),
        format!("{drain_secs}s"),
    ];
    if let Some(f) = env_file {
        exec.extend(["--env-file".into(), f.to_string_lossy().into_owned()]);
    }
    let exec: Vec<String> = exec.iter().map(|w| exec_word(w)).collect();
    format!(
        "# Written by `compute-worker install-service`; run it again to update.\n\
[Unit]\n\
Description=Codabench compute worker (compute-worker serve)\n\
Documentation=https://github.com/codalab/codabench/wiki\n\
\n\
[Service]\n\
Type=exec\n\
# Settings come from the --env-file (Codabench's .env names and the\n\
# COMPUTE_WORKER_* variables), read by the worker itself.\n\
ExecStart={exec}\n\
# Restarted only after a failure (a non-zero exit, a signal): an exit 0,\n\
# a stop or an autoscaling exit (COMPUTE_WORKER_EXIT_WHEN_IDLE,\n\
# COMPUTE_WORKER_EXIT_AFTER), leaves the worker stopped.\n\
Restart=on-failure\n\
RestartSec=5s\n\
# SIGTERM to the worker only: it stops taking jobs, lets running ones\n\
# finish for the drain timeout, then kills its sandboxes itself. systemd\n\
# kills whatever is left one minute after the drain timeout.\n\
KillMode=mixed\n\
KillSignal=SIGTERM\n\
TimeoutStopSec={stop}s\n\
# cgroup v2: the worker may create the sandboxes' cgroups under its own.\n\
Delegate=yes\n\
\n\
[Install]\n\
WantedBy=default.target\n",
        exec = exec.join(" "),
        stop = drain_secs + 60,
    )
}

/// `$XDG_CONFIG_HOME/systemd/user`, else `~/.config/systemd/user`.
pub fn unit_dir() -> Result<PathBuf> {
    Ok(dirs::config_dir()
        .context("neither XDG_CONFIG_HOME nor a home directory is known: cannot tell where user units go")?
        .join("systemd/user"))
}

/// Whether `systemctl --user` can reach this user's systemd manager.
pub fn user_manager_reachable() -> bool {
    let socket = dirs::runtime_dir().map(|d| d.join("systemd/private"));
    if socket.is_some_and(|s| s.exists()) {
        return true;
    }
    Command::new("systemctl")
        .args(["--user", "is-system-running"])
        .output()
        .is_ok_and(|o| {
            let state = String::from_utf8_lossy(&o.stdout);
            matches!(
                state.trim(),
                "running" | "degraded" | "starting" | "initializing"
            )
        })
}

/// The env file the service reads: `--env-file`, else `./.env` when it
/// exists (what this command itself read), made absolute.
pub fn service_env_file(given: Option<PathBuf>) -> Result<Option<PathBuf>> {
    let candidate = match given {
        Some(p) => p,
        None if Path::new(".env").is_file() => PathBuf::from(".env"),
        None => return Ok(None),
    };
    let abs = std::fs::canonicalize(&candidate).with_context(|| {
        format!(
            "the env file {} does not exist: create it or drop --env-file",
            candidate.display()
        )
    })?;
    Ok(Some(abs))
}

pub fn user_name() -> String {
    let uid = nix::unistd::getuid().as_raw();
    crate::sandbox::idmap::user_name(uid).unwrap_or_else(|| uid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_autoscaling_exit_is_not_restarted() {
        let text = unit_text(Path::new("/usr/bin/cw"), None, Duration::from_secs(60));
        let restart: Vec<&str> = text.lines().filter(|l| l.starts_with("Restart")).collect();
        // on-failure: systemd does not restart after exit 0 (`always` and
        // `on-success` would), and nothing turns exit 0 into a failure.
        assert_eq!(restart, ["Restart=on-failure", "RestartSec=5s"], "{text}");
        assert!(!text.contains("SuccessExitStatus"), "{text}");
        assert!(text.contains("COMPUTE_WORKER_EXIT_WHEN_IDLE"), "{text}");
    }

    #[test]
    fn exec_words_are_escaped_for_systemd() {
        assert_eq!(exec_word("/usr/bin/cw"), "/usr/bin/cw");
        assert_eq!(exec_word("/opt/my dir/cw"), "\"/opt/my dir/cw\"");
        assert_eq!(exec_word("/opt/100%/a$b"), "/opt/100%%/a$$b");
    }
}
