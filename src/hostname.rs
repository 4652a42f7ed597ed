//! This machine's name, as the site and the broker are told it.

/// This machine's host name (as `socket.gethostname()`).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_string())
}
