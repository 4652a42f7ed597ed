//! The sandbox run of one program of a step: its command from `metadata`
//! with the `$` tokens substituted, on the step's image, with the
//! `/app/...` mounts, container env, network, limits and hostname.

use std::path::Path;

use super::command::{self, Metadata, ProgramKind};
use super::error::JobError;
use super::image::ResolvedImage;
use super::image_run::{image_run, set_env};
use super::layout::{self, MountPlan};
use super::settings::Worker;
use super::step::{Protocol, Step};
use crate::sandbox::{Bind, Network, RunSpec};

/// How the participant's messages name `kind`.
pub fn kind_name(kind: ProgramKind, is_scoring: bool) -> &'static str {
    match (kind, is_scoring) {
        (ProgramKind::Ingestion, _) => "ingestion program",
        (ProgramKind::Program, true) => "scoring program",
        (ProgramKind::Program, false) => "submission",
    }
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// The sandbox run of `kind`, or `None` when there is nothing to run.
pub fn program_spec(
    w: &Worker,
    step: &Step,
    root: &Path,
    kind: ProgramKind,
    image: &ResolvedImage,
) -> Result<Option<RunSpec>, JobError> {
    let dir = root.join(layout::program_dir(kind, step.protocol));
    if !dir.is_dir() {
        return Ok(None);
    }
    let name = kind_name(kind, step.is_scoring);
    let metadata = command::read_metadata(&dir, w.settings.bounds.parsed())
        .map_err(|e| format!("reading the {name}'s metadata: {e}"))?;
    let cmd = match (metadata, kind, step.protocol) {
        (Metadata::Command(c), _, _) => c,
        (Metadata::Missing, ProgramKind::Program, Protocol::Legacy) => {
            // A result submission: its files are the predictions.
            super::bundle::copy_dir(&dir, &root.join("output"))
                .map_err(|e| format!("copying the result submission: {e}"))?;
            return Ok(None);
        }
        (Metadata::NoCommand, ProgramKind::Program, Protocol::Legacy) => {
            tracing::warn!("{name} has metadata without a command: nothing to run");
            return Ok(None);
        }
        (Metadata::Missing, _, _) => return Err(command::missing_metadata(name).into()),
        (Metadata::NoCommand, _, _) => return Err(command::missing_command(name).into()),
    };
    let cmd = command::substitute(
        &cmd,
        kind,
        step.is_scoring,
        step.ingestion_only_during_scoring,
    );
    // The image's Entrypoint stays, as with docker-py (Cmd = the command).
    let argv = command::split_argv(&cmd).map_err(|e| format!("the {name}'s command: {e}"))?;
    let mut run = image_run(&step.image, &image.layers, &image.config, argv)
        .map_err(|e| JobError::new(format!("The {name} cannot run: {e}")))?;

    let s = &w.settings;
    for (k, v) in layout::container_env(&s.http_proxy, &s.https_proxy) {
        set_env(&mut run.env, &k, &v);
    }
    run.cwd = layout::WORKDIR.into();
    let plan = MountPlan {
        root,
        data_dir: s.data_dir.as_deref().filter(|d| d.is_dir()),
        is_scoring: step.is_scoring,
        ingestion_only_during_scoring: step.ingestion_only_during_scoring,
        has_input_data: root.join("input_data").is_dir(),
        protocol: step.protocol,
    };
    run.binds = layout::mounts(kind, &plan)
        .into_iter()
        .map(|m| Bind {
            source: m.source,
            destination: m.destination.into(),
            read_only: m.read_only,
        })
        .collect();
    for b in &run.binds {
        std::fs::create_dir_all(&b.source)
            .map_err(|e| format!("creating {}: {e}", b.source.display()))?;
        // Writable for whatever user the image runs as; the job root is
        // private to the worker's user, so nobody else on the host gets in.
        if !b.read_only {
            set_mode(&b.source, 0o777).map_err(|e| format!("chmod {}: {e}", b.source.display()))?;
        }
    }
    run.network = if s.network {
        s.network_mode
    } else {
        Network::None
    };
    run.limits = s.limits.clone();
    // As the Python worker names its containers: by step (legacy), by
    // program (current).
    let scoring = match step.protocol {
        Protocol::Legacy => step.is_scoring,
        Protocol::Current => kind == ProgramKind::Program,
    };
    run.hostname = format!(
        "{}-{}",
        if scoring { "scoring" } else { "ingestion" },
        step.submission_id
    );
    Ok(Some(run))
}
