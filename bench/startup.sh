#!/usr/bin/env bash
# Container start-to-exit of busybox `true`, rootless, whole process:
# `compute-worker exec` against runc, podman and youki (where installed),
# plus the bare-process floor and the in-process library cost. The commands
# run interleaved (bench/interleave.py); the table gives medians and ratios
# to runc.
# Run as root on a host prepared by scripts/dev-setup.sh; everything is run
# as the unprivileged test user. Prints a markdown table.
#
#   bash bench/startup.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-100}
USER_NAME=${COMPUTE_WORKER_TEST_USER:-cwtest}
# The peers come from the distribution (apt-get update first on a fresh host).
for tool in runc podman; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
cargo build --release --benches -q
BIN_SRC=target/release/compute-worker
LIB_BENCH=$(ls -t target/release/deps/sandbox_start-* | grep -v '\.d$' | head -1)

W=$(mktemp -d /tmp/cw-bench.XXXXXX)
trap 'rm -rf "$W" 2>/dev/null || true' EXIT
cp "$BIN_SRC" "$W/compute-worker"; cp "$LIB_BENCH" "$W/sandbox_start"
R=$W/bundle/rootfs
mkdir -p "$R"/{bin,etc,tmp,proc,sys,dev,root}
cp /bin/busybox "$R/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
mkdir -p "$W/state" "$W/runc" "$W/youki"
chown -R "$USER_NAME:" "$W"
chmod 755 "$W"

as_user() { setpriv --reuid="$(id -u "$USER_NAME")" --regid="$(id -g "$USER_NAME")" --init-groups \
  env HOME="$W" XDG_RUNTIME_DIR="$W/xdg" "$@"; }
mkdir -p "$W/xdg" && chown "$USER_NAME:" "$W/xdg" && chmod 700 "$W/xdg"

# runc/youki bundle: the rootless spec template without its cgroup device rule.
as_user sh -c "cd $W/bundle && runc spec --rootless && \
  sed -i 's/\"terminal\": true/\"terminal\": false/; s/\"sh\"/\"true\"/' config.json"
# youki (unlike runc) fails rootless on a cgroup v1 host unless the container
# cgroup sits in a subtree the user owns: give its copy of the bundle one.
mkdir -p "$W/ybundle"
python3 - "$W/bundle/config.json" "$W/ybundle/config.json" "$R" "${COMPUTE_WORKER_TEST_CGROUP:-/cw-test}" <<'PY'
import json, sys
src, ydst, rootfs, cg = sys.argv[1:]
s = json.load(open(src))
s["linux"].pop("resources", None)
s["root"]["path"] = rootfs
json.dump(s, open(src, "w"))
s["linux"]["cgroupsPath"] = cg + "/bench-youki"
json.dump(s, open(ydst, "w"))
PY
chown -R "$USER_NAME:" "$W/bundle/config.json" "$W/ybundle"

cmds=("floor=/bin/true"
      "compute-worker=timeout 20 $W/compute-worker exec --state-dir $W/state --rootfs $R -- true"
      "compute-worker --network host=timeout 20 $W/compute-worker exec --state-dir $W/state --network host --rootfs $R -- true"
      "runc=timeout 20 runc --root $W/runc run --bundle $W/bundle bench-runc")
# youki 0.7 sometimes hangs in `run` on these hosts (its process is left
# behind); BENCH_SKIP_YOUKI=1 leaves it out.
if [ -z "${BENCH_SKIP_YOUKI:-}" ] && { command -v youki >/dev/null || [ -x "$HOME/.cargo/bin/youki" ]; }; then
  Y=$(command -v youki || echo "$HOME/.cargo/bin/youki"); cp "$Y" "$W/youki-bin"; chown "$USER_NAME:" "$W/youki-bin"
  cmds+=("youki=timeout 20 $W/youki-bin --root $W/youki run --bundle $W/ybundle bench-youki")
fi
if command -v podman >/dev/null; then
  # runc as its runtime: crun refuses hybrid cgroup hosts such as these.
  cmds+=("podman=podman --runtime runc run --rm --network none --rootfs $R true")
fi
# Interleaved: each iteration runs every command once, in a random order
# (see bench/interleave.py).
cp bench/interleave.py "$W/interleave.py"
as_user /usr/bin/python3 "$W/interleave.py" "$RUNS" runc "${cmds[@]}"
as_user "$W/sandbox_start" "$W/compute-worker" "$R" "$W/state" "$RUNS"
