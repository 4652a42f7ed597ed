//! `compute-worker setup-host`: as root, give a user what the worker
//! needs (subordinate ids, a delegated cgroup, linger, cache directories).

use anyhow::{bail, Context, Result};

use crate::cli::SetupHostArgs;
use crate::ops::setup_host::{apply, cache_dirs, is_v2, plan, User};

pub fn run(args: SetupHostArgs) -> Result<i32> {
    if !args.dry_run && !nix::unistd::geteuid().is_root() {
        bail!(
            "setup-host must run as root (it edits /etc/subuid, /etc/subgid and cgroups): \
             `sudo compute-worker setup-host --user {}`, or add --dry-run to see what it would do",
            args.user
        );
    }
    let user = User::lookup(&args.user)?;
    let steps = plan(&args.root, &args.cgroup_parent, &user)?;
    let mut changed = 0;
    for step in &steps {
        println!("== {}: {}", step.name, step.note);
        for action in &step.actions {
            if args.dry_run {
                println!("   would {action}");
            } else {
                apply(action).with_context(|| format!("{}: {action}", step.name))?;
                println!("   did {action}");
            }
            changed += 1;
        }
    }
    println!();
    match (changed, args.dry_run) {
        (0, _) => println!(
            "nothing to change: the host is already set up for {}",
            user.name
        ),
        (n, true) => println!("dry run: {n} change(s) not made"),
        (n, false) => println!("{n} change(s) made"),
    }
    println!("\nPut these in the worker's environment (or its .env file):");
    if is_v2(&args.root.join("sys/fs/cgroup")) {
        // A subtree chowned to the user is not enough on v2: moving a
        // process into it needs write access at the common ancestor, so
        // the worker uses the cgroup systemd delegates to its service.
        println!(
            "# cgroup v2: leave COMPUTE_WORKER_CGROUP_PARENT unset. The worker's user service \
             (`compute-worker install-service`, Delegate=yes) gets a cgroup of its own, with the \
             controllers of user@{uid}.service, and puts the limits there; for a one-off run: \
             `systemd-run --user --scope -p Delegate=yes compute-worker ...`. The drop-in \
             (cpuset for --cpus) applies once user@{uid}.service restarts: `systemctl restart \
             user@{uid}.service` (it stops {name}'s services), or a reboot",
            uid = user.uid,
            name = user.name
        );
    } else {
        println!(
            "COMPUTE_WORKER_CGROUP_PARENT={}",
            args.cgroup_parent.display()
        );
    }
    let (state, images) = cache_dirs(&user);
    println!("COMPUTE_WORKER_STATE_DIR={}", state.display());
    println!("COMPUTE_WORKER_IMAGE_DIR={}", images.display());
    println!(
        "\nThen, as {}: `compute-worker doctor` and `compute-worker install-service`",
        user.name
    );
    Ok(0)
}
