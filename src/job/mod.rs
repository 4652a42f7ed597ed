//! The job: everything between a decoded task and the site reports that
//! does not need a sandbox. Plain functions and data, unit-tested:
//!
//! * [`command`]: `metadata` lookup, `$token` substitution, argv;
//! * [`bundle`]: safe unzip of bundles, zipping of the output folder;
//! * [`results`]: scores, `output/metadata`, log capping;
//! * [`layout`]: the `/app/...` mount table, container env, time limits;
//! * [`runner`]: the `ProgramRunner` interface the sandbox implements
//!   (the orchestrating lifecycle is not written yet).
pub mod bundle;
pub mod command;
pub mod layout;
pub mod results;
pub mod runner;
