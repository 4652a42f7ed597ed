//! `compute-worker install-service`: a systemd user unit that runs `serve`,
//! enabled and started when the user's systemd manager is reachable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cli::parse_duration;

pub const UNIT_NAME: &str = "compute-worker.service";

#[derive(Debug, Args)]
pub struct InstallServiceArgs {
    /// Print the unit and the commands instead of writing and starting it.
    #[arg(long, alias = "print")]
    pub dry_run: bool,
    /// How long `serve` lets running jobs finish on stop; the unit gives it
    /// one more minute before systemd kills what is left.
    #[arg(long, value_parser = parse_duration, default_value = "5m", env = "COMPUTE_WORKER_DRAIN_TIMEOUT")]
    pub drain_timeout: Duration,
}

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
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(d).join("systemd/user"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("neither XDG_CONFIG_HOME nor HOME is set: cannot tell where user units go")?;
    Ok(PathBuf::from(home).join(".config/systemd/user"))
}

/// Whether `systemctl --user` can reach this user's systemd manager.
fn user_manager_reachable() -> bool {
    let socket = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(|d| PathBuf::from(d).join("systemd/private"));
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
fn service_env_file(given: Option<PathBuf>) -> Result<Option<PathBuf>> {
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

fn user_name() -> String {
    let uid = nix::unistd::getuid().as_raw();
    crate::sandbox::idmap::user_name(uid).unwrap_or_else(|| uid.to_string())
}

pub fn run(args: InstallServiceArgs, env_file: Option<PathBuf>) -> Result<i32> {
    let binary = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("finding this binary's path")?;
    let env_file = service_env_file(env_file)?;
    let text = unit_text(&binary, env_file.as_deref(), args.drain_timeout);
    let path = unit_dir()?.join(UNIT_NAME);
    let user = user_name();
    let start = [
        "systemctl --user daemon-reload".to_string(),
        format!("systemctl --user enable --now {UNIT_NAME}"),
    ];
    if args.dry_run {
        println!("# {}", path.display());
        print!("{text}");
        println!("\n# then: {}", start.join(" && "));
        return Ok(0);
    }
    if nix::unistd::geteuid().is_root() {
        eprintln!(
            "compute-worker: note: this installs a user unit for root; the worker is meant to run as an ordinary user (run install-service as that user)"
        );
    }
    if env_file.is_none() {
        eprintln!(
            "compute-worker: note: no --env-file: the service will see only its own environment; put BROKER_URL and the COMPUTE_WORKER_* settings in a .env file and pass --env-file"
        );
    }
    let unchanged = std::fs::read_to_string(&path).is_ok_and(|t| t == text);
    if unchanged {
        println!("{} is up to date (unchanged)", path.display());
    } else {
        let dir = path.parent().expect("a unit path has a parent");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        super::setup_host::replace_file(&path, text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if !user_manager_reachable() {
        println!(
            "\nNo systemd user manager is reachable for {user} (no $XDG_RUNTIME_DIR/systemd/private, \
             `systemctl --user` does not answer). To start the worker:\n  \
             as root, so it runs without a login:  loginctl enable-linger {user}\n  \
             as {user}, in a login session:        {}\n  \
             logs:                                  journalctl --user -u compute-worker -f",
            start.join(" && ")
        );
        return Ok(0);
    }
    for cmd in [
        vec!["--user", "daemon-reload"],
        vec!["--user", "enable", "--now", UNIT_NAME],
    ] {
        let out = Command::new("systemctl")
            .args(&cmd)
            .output()
            .context("running systemctl")?;
        if !out.status.success() {
            bail!(
                "`systemctl {}` failed: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    println!(
        "enabled and started {UNIT_NAME}; logs: `journalctl --user -u compute-worker -f`; \
         for it to run without a login, as root: `loginctl enable-linger {user}`"
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_words_are_escaped_for_systemd() {
        assert_eq!(exec_word("/usr/bin/cw"), "/usr/bin/cw");
        assert_eq!(exec_word("/opt/my dir/cw"), "\"/opt/my dir/cw\"");
        assert_eq!(exec_word("/opt/100%/a$b"), "/opt/100%%/a$$b");
    }
}
