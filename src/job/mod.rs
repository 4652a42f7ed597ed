//! job (in progress).
