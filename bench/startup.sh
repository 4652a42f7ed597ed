#!/usr/bin/env bash
# A thin wrapper over `compute-worker bench startup` for this repository:
# build the release binary, run the benchmark as the unprivileged test user
# (runc, crun, podman come from scripts/dev-setup.sh), keep its JSON and
# SVG beside this script, then the in-process library start
# (bench/sandbox_start.rs) with and without the fork server.
# Run as root on a host prepared by scripts/dev-setup.sh:
#
#   bash bench/startup.sh [RUNS] [PARALLEL]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-100}
PARALLEL=${2:-1}
USER_NAME=${COMPUTE_WORKER_TEST_USER:-cwtest}
cargo build --release --benches -q
LIB_BENCH=$(ls -t target/release/deps/sandbox_start-* | grep -v '\.d$' | head -1)

W=$(mktemp -d /tmp/cw-bench.XXXXXX)
trap 'rm -rf "$W" 2>/dev/null || true' EXIT
cp target/release/compute-worker "$W/compute-worker"; cp "$LIB_BENCH" "$W/sandbox_start"
mkdir -p "$W/state" "$W/xdg" "$W/rootfs"
chown -R "$USER_NAME:" "$W"; chmod 755 "$W"; chmod 700 "$W/xdg"
as_user() { setpriv --reuid="$(id -u "$USER_NAME")" --regid="$(id -g "$USER_NAME")" --init-groups \
  env HOME="$W" XDG_RUNTIME_DIR="$W/xdg" "$@"; }

as_user "$W/compute-worker" bench startup --runs "$RUNS" --parallel "$PARALLEL" \
  --json "$W/startup.json" --svg "$W/startup.svg" --dir "$W"
cp "$W/startup.json" "$W/startup.svg" bench/

# The library start needs a rootfs with `true`: the benchmark's own.
python3 - "$W/rootfs" <<'PY'
import sys, os, shutil
root = sys.argv[1]
for d in ("bin", "proc", "sys", "dev", "tmp"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
os.symlink("busybox", os.path.join(root, "bin/true"))
PY
chown -R "$USER_NAME:" "$W/rootfs"
as_user "$W/sandbox_start" "$W/compute-worker" "$W/rootfs" "$W/state" "$RUNS"
