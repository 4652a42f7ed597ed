//! `compute-worker hitl list|approve|reject`: the operator's side of human
//! in the loop. It talks to a running `serve` of the same user through
//! `<HOST_DIRECTORY>/hitl/` (see [`crate::job::hitl`]), which no sandbox
//! can reach. Nothing imports this module.

use anyhow::{Context, Result};

use crate::cli::{HitlAction, HitlArgs};
use crate::config::codabench::Codabench;
use crate::job::hitl::{self, Decision, Pending};

pub fn run(args: HitlArgs) -> Result<i32> {
    let dir = hitl::dir_of(&Codabench::from_env()?.host_directory);
    let decision = match args.action {
        HitlAction::List { json } => {
            let pending = hitl::list(&dir).map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pending)?);
            } else if pending.is_empty() {
                println!("no job awaits validation (in {})", dir.display());
            } else {
                pending.iter().for_each(print);
            }
            return Ok(0);
        }
        HitlAction::Approve { id } => (id, Decision::Approve),
        HitlAction::Reject { id } => (id, Decision::Reject),
    };
    let (id, decision) = decision;
    let pending = hitl::decide(&dir, id, decision)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("cannot {} submission {id}", decision.word()))?;
    if !worker_alive(&pending) {
        eprintln!(
            "warning: the worker that held submission {id} (pid {}) is gone; \
             the decision applies only if it is still waiting",
            pending.pid
        );
    }
    println!(
        "submission {id}: {} recorded; the worker acts on it within seconds",
        match decision {
            Decision::Approve => "approval",
            Decision::Reject => "rejection",
        }
    );
    Ok(0)
}

fn worker_alive(p: &Pending) -> bool {
    std::path::Path::new(&format!("/proc/{}", p.pid)).exists()
}

fn print(p: &Pending) {
    let alive = if worker_alive(p) {
        ""
    } else {
        " (its worker is gone: stale)"
    };
    println!("submission {}{alive}", p.submission_id);
    println!("  scores:  {}", p.scores);
    println!("  output:  {}", p.output.display());
    if let Some(html) = &p.detailed_results {
        println!("  details: {}", html.display());
    }
    println!(
        "  approve: compute-worker hitl approve {0}    reject: compute-worker hitl reject {0}",
        p.submission_id
    );
}
