//! `compute-worker doctor`: check this host for the worker, as a table
//! or JSON.

use anyhow::Result;

use crate::cli::DoctorArgs;
use crate::ops::doctor::{checks, exit_code, table, DoctorInput, Status};

pub fn run(args: DoctorArgs) -> Result<i32> {
    let checks = checks(&DoctorInput {
        state_dir: args.sandbox.state_dir.clone(),
        image_dir: args.images.image_dir.clone(),
        cgroup_parent: args.sandbox.cgroup_parent.clone(),
        image: args.image.clone(),
        verify_broker_tls: args.verify_broker_tls,
        broker_ca_file: args.broker_ca_file.clone(),
        gpu_root: args.gpu_root.gpu_root.clone(),
        network: args.network.network,
        id_mode: args.sandbox.id_mode,
    });
    if args.json {
        let ok = !checks.iter().any(|c| c.status == Status::Fail);
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "ok": ok, "checks": checks }))?
        );
    } else {
        print!("{}", table(&checks));
    }
    Ok(exit_code(&checks))
}
