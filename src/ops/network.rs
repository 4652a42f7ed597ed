//! `doctor`'s network row: the mode programs run with, and whether this
//! host has what it needs (pasta, a usable /dev/net/tun).

use super::check::Check;
use crate::sandbox::{pasta, Network};

const NAME: &str = "network";

/// The row for `mode` (COMPUTE_WORKER_NETWORK) when the competition's
/// network is `disabled` or not.
pub fn check(mode: Network, disabled: bool) -> Check {
    match mode {
        Network::Host => Check::warn(
            NAME,
            "host: programs share this host's network namespace. They reach every service \
             on its 127.0.0.1 (a local broker, the metrics port, agents), its abstract unix \
             sockets, and can bind its ports",
            "unset COMPUTE_WORKER_NETWORK (pasta, the default) unless this is on purpose",
        ),
        Network::None => Check::ok(NAME, "none: programs get only lo"),
        Network::Pasta if disabled => Check::ok(
            NAME,
            "none: COMPETITION_CONTAINER_NETWORK_DISABLED (programs get only lo)",
        ),
        Network::Pasta => match pasta::host_check() {
            Ok(path) => Check::ok(
                NAME,
                format!(
                    "pasta ({}): each run gets its own network namespace, connected by pasta, \
                     with no way to this host's loopback",
                    path.display()
                ),
            ),
            Err(why) => Check::fail(
                NAME,
                format!("pasta: {why}"),
                "as root: `apt-get install passt` and `chmod 0666 /dev/net/tun` (udev's \
                 default), or set COMPUTE_WORKER_NETWORK=none",
            ),
        },
    }
}
