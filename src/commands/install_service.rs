//! `compute-worker install-service`: run the worker as a systemd user
//! service of the current user.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cli::InstallServiceArgs;
use crate::ops::service::{
    service_env_file, unit_dir, unit_text, user_manager_reachable, user_name, UNIT_NAME,
};

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
        crate::ops::setup_host::replace_file(&path, text.as_bytes(), 0o644)
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
