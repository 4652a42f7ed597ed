//! The job: one Codabench step (prediction or scoring) from a decoded task
//! to the final report.
//!
//! * [`lifecycle`]: the orchestration (statuses, bundles, image, programs
//!   under the time limit, logs, results, scores, cleanup), against a
//!   [`lifecycle::Reporter`]: the Codabench site ([`remote`]) or the local
//!   terminal and a results folder ([`local`]);
//! * [`program`]: one program in a sandbox, driven from async code;
//! * [`command`]: `metadata` lookup, `$token` substitution, argv;
//! * [`bundle`]: safe unzip of bundles, zipping of the output folder;
//! * [`results`]: scores, `output/metadata`, log capping;
//! * [`layout`]: the `/app/...` mount table, container env, time limits.
pub mod bundle;
pub mod bundle_cache;
pub mod command;
pub mod layout;
pub mod lifecycle;
pub mod local;
pub mod program;
pub mod remote;
pub mod results;
pub mod worker_slots;
