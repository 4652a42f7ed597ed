//! The job: one Codabench step (prediction or scoring) from a decoded task
//! to the final report.
//!
//! * [`lifecycle`]: the step as a sequence of phases (statuses, bundles,
//!   image, programs under the time limit, logs, results, scores, cleanup),
//!   against a [`step::Reporter`]: the Codabench site ([`remote`]) or the
//!   local terminal and a results folder ([`local`]);
//! * [`step`]: what a step is and how it ended; [`settings`]: the worker's;
//! * [`error`]: the one job error (failure type, transient or not);
//! * [`image`]: image resolution and pull retries;
//! * [`image_run`] / [`image_user`]: an image config as a sandbox run
//!   (shared with `exec`), the image's `User` from its own `/etc/passwd`;
//! * [`spec`]: each program's sandbox run; [`drive`]: running them;
//!   [`publish`]: logs and detailed results while and after they run;
//! * [`program`]: one program in a sandbox, driven from async code;
//! * [`command`]: `metadata` lookup, `$token` substitution, argv;
//! * [`bundle`]: safe unzip of bundles, zipping of the output folder;
//! * [`results`]: scores, `output/metadata`, log capping;
//! * [`hitl`]: human in the loop: the config check and the operator's gate;
//! * [`image_policy`]: cached images only (`COMPETITION_ALLOW_IMAGE_PULL` false);
//! * [`silent`]: `COMPUTE_WORKER_DISABLE_LOG_UPLOAD`, as a reporter wrapper;
//! * [`layout`]: the `/app/...` mount table, container env, time limits;
//! * [`room`]: a full disk: evicting unused images and bundles, LRU first.
pub mod beneath;
pub mod bounds;
pub mod bundle;
pub mod bundle_cache;
pub mod command;
pub mod drive;
pub mod error;
pub mod hitl;
pub mod image;
pub mod image_policy;
pub mod image_run;
pub mod image_user;
pub mod kept_prediction;
pub mod layout;
pub mod lifecycle;
pub mod local;
pub mod program;
pub mod publish;
pub mod remote;
pub mod resources;
pub mod results;
pub mod room;
pub mod settings;
pub mod silent;
pub mod spec;
pub mod step;
pub mod timings;
pub mod worker_slots;
