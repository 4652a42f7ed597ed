//! site (in progress).
