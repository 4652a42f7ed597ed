//! Rootless sandboxes (work in progress).
