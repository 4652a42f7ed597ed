//! A Celery task's `run_args` as the job step it describes, for sites
//! before and after Codabench 1.27.

use super::celery::RunArgs;
use crate::job::step::{Protocol, Slot, Step, Uploads};

/// The step a Celery task describes, in the protocol its keys name
/// (codabench-protocol-v127.md §3): `submission_data` means a site from
/// v1.27 on, `program_data` an older one. A task with neither, or a
/// current scoring task without its scoring program, is refused with the
/// keys it lacks: it would otherwise run nothing and fail later for a
/// reason nobody could act on.
pub fn step_from(args: &RunArgs) -> Result<Step, String> {
    let given = |url: &Option<String>| url.clone().filter(|u| !u.is_empty());
    let protocol = match (given(&args.submission_data), given(&args.program_data)) {
        (Some(_), Some(_)) => {
            tracing::warn!("the task carries both submission_data and program_data; running it as Codabench ≥ 1.27 does");
            Protocol::Current
        }
        (Some(_), None) => Protocol::Current,
        (None, Some(_)) => Protocol::Legacy,
        (None, None) => {
            return Err(format!(
                "The task carries no submission or program to run: it has neither `submission_data` \
                 (Codabench 1.27 and later) nor `program_data` (earlier versions). Keys received: {}.",
                args.keys().join(", ")
            ))
        }
    };
    let mut bundles = Vec::new();
    let mut add = |slot, url: &Option<String>| {
        if let Some(u) = given(url) {
            bundles.push((slot, u));
        }
    };
    match protocol {
        Protocol::Legacy => {
            add(Slot::Program, &args.program_data);
            add(Slot::IngestionProgram, &args.ingestion_program);
        }
        Protocol::Current => {
            if args.is_scoring && given(&args.scoring_program_data).is_none() {
                return Err(
                    "The scoring task carries no scoring program: `scoring_program_data` is missing."
                        .into(),
                );
            }
            // Upstream's download order (v127 §4).
            add(Slot::IngestionProgram, &args.ingestion_program_data);
            add(Slot::ScoringProgram, &args.scoring_program_data);
            add(Slot::Submission, &args.submission_data);
        }
    }
    add(Slot::InputData, &args.input_data);
    if args.is_scoring {
        add(Slot::ReferenceData, &args.reference_data);
        add(
            Slot::PredictionResult,
            &Some(args.prediction_result.clone()),
        );
    }
    let logs = args.log_urls();
    Ok(Step {
        submission_id: args.id,
        user_pk: args.user_pk,
        is_scoring: args.is_scoring,
        image: args.docker_image.clone(),
        execution_time_limit: args.execution_time_limit,
        ingestion_only_during_scoring: args.ingestion_only_during_scoring,
        human_in_the_loop: args.human_in_the_loop,
        protocol,
        bundles,
        uploads: Uploads {
            result: args.result_put_url().map(str::to_string),
            detailed_results: args.detailed_results_url.clone(),
            stdout: logs.program_stdout,
            stderr: logs.program_stderr,
            ingestion_stdout: logs.ingestion_stdout,
            ingestion_stderr: logs.ingestion_stderr,
        },
    })
}
