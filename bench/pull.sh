#!/usr/bin/env bash
# Pull + unpack of a realistic image from a loopback registry, rootless:
# `compute-worker pull` against `podman pull` and `skopeo copy` + `umoci
# unpack --rootless`, each run from an empty cache, plus a `compute-worker
# pull` of the image already cached.
#
# The image is the end-to-end Python image (Debian bookworm + python3, numpy,
# scipy, scikit-learn, pandas, psutil, yaml; one gzip layer, ~260 MB
# compressed, ~890 MB unpacked) from scripts/build-python-image.sh, pushed
# with skopeo to a docker-registry started here on 127.0.0.1:<free port>.
# Run as root on a host prepared by scripts/dev-setup.sh; every measured
# command runs as the unprivileged test user. Rounds are interleaved (one run
# of each tool per round) and `sync` runs before each timed command, so that
# one tool's dirty pages are not written back on another's clock. The page
# cache is not dropped: the registry's copy of the blob stays cached for all.
# Prints a markdown table, the cached pull time and compute-worker's download/unpack
# split (from its progress lines).
#
#   bash bench/pull.sh [RUNS]          # RUNS from an empty cache, default 3
#   CW_BASELINE=old/compute-worker bash bench/pull.sh 5
#                                      # also time another build (e.g. main's)
#                                      # in the same rounds
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
CACHED_RUNS=${CACHED_RUNS:-20}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
USER_NAME=${COMPUTE_WORKER_TEST_USER:-cwtest}
[ "$(id -u)" = 0 ] || { echo "$0 must run as root (it switches to $USER_NAME)" >&2; exit 1; }
id "$USER_NAME" >/dev/null 2>&1 || { echo "no user $USER_NAME: run scripts/dev-setup.sh" >&2; exit 1; }
for c in skopeo podman /usr/bin/docker-registry curl setpriv; do
  command -v "$c" >/dev/null || { echo "$c is missing: run scripts/dev-setup.sh" >&2; exit 1; }
done
command -v hyperfine >/dev/null || apt-get install -y -qq hyperfine >/dev/null
command -v umoci >/dev/null || apt-get install -y -qq umoci >/dev/null 2>&1 || true
HAVE_UMOCI=$(command -v umoci >/dev/null && echo 1 || echo 0)
cargo build --release -q --bin compute-worker

# Work directory on disk (not tmpfs), like a real image store; it needs about
# 1.5 GB plus 3.2 GB a round, all deleted at the end.
W=$(mktemp -d /var/tmp/cwpb.XXXXXX)  # short: podman limits --runroot to 50 characters
REG_PID=
cleanup() {
  set +e
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
  # podman's rootless pause process (it keeps the user namespace alive).
  for f in "$W"/xdg/libpod/tmp/pause.pid "$W"/xdg/containers/pause.pid; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  rm -rf --one-file-system "$W" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "== $*" >&2; }

cp target/release/compute-worker "$W/compute-worker"
mkdir -p "$W/xdg" "$W/runs" "$W/config" "$W/data"  # podman creates its files there
chown "$USER_NAME:" "$W/xdg" "$W/runs" "$W/config" "$W/data" "$W/compute-worker"
if [ -n "${CW_BASELINE:-}" ]; then
  cp "$CW_BASELINE" "$W/compute-worker-baseline"
  chown "$USER_NAME:" "$W/compute-worker-baseline"
fi
chmod 700 "$W/xdg"; chmod 755 "$W"
as_user() { setpriv --reuid="$(id -u "$USER_NAME")" --regid="$(id -g "$USER_NAME")" --init-groups \
  env HOME="$W" XDG_RUNTIME_DIR="$W/xdg" XDG_CONFIG_HOME="$W/config" XDG_DATA_HOME="$W/data" "$@"; }

# 1. The image (cached under /var/cache/compute-worker-tests after the first build).
log "image"
scripts/build-python-image.sh "$W/python.tar" >&2

# 2. A loopback registry of our own.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$W/registry"
cat >"$W/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/registry/data
http:
  addr: 127.0.0.1:$PORT
  secret: bench-secret
EOF
/usr/bin/docker-registry serve "$W/registry/config.yml" >"$W/registry/registry.log" 2>&1 </dev/null &
REG_PID=$!
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/v2/" 2>/dev/null && break
  kill -0 "$REG_PID" 2>/dev/null || { cat "$W/registry/registry.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/v2/" || { echo "registry did not start" >&2; exit 1; }
REF=127.0.0.1:$PORT/bench/python:1
log "push $REF"
timeout 600 skopeo copy -q --dest-tls-verify=false "oci-archive:$W/python.tar" "docker://$REF" >&2

# 3. Timed runs. Each run gets fresh, empty directories owned by the user.
# Nothing is deleted until the end (~3 GB a round): on a filesystem mounted
# with `discard`, deleting a 900 MB tree keeps the kernel busy for seconds
# after `rm` returns, which would land on the next run's clock.
PODMAN_DRIVER=overlay
CW=$W/compute-worker
fresh() { rm -rf --one-file-system "$W/runs/$1"; mkdir -p "$W/runs/$1"; chown "$USER_NAME:" "$W/runs/$1"; echo "$W/runs/$1"; }
podman_pull() { # DIR
  as_user timeout "$RUN_TIMEOUT" podman --root "$1/root" --runroot "$1/run" \
    --storage-driver "$PODMAN_DRIVER" pull -q --tls-verify=false "$REF"
}
# Seconds taken by CMD..., appended to $W/times/NAME; its output goes to a log.
timed() { # NAME CMD...
  local name=$1; shift
  mkdir -p "$W/times"
  sync
  local t0 t1
  t0=$(date +%s%N)
  mkdir -p "$W/logs/$name"
  local out=$W/logs/$name/$(ls "$W/logs/$name" | wc -l).log
  if ! "$@" >"$out" 2>&1; then
    echo "$name failed:" >&2; tail -n 20 "$out" >&2; return 1
  fi
  t1=$(date +%s%N)
  echo "$(( (t1 - t0) / 1000 ))" >>"$W/times/$name"
  log "$name: $(awk "BEGIN{printf \"%.2f\", $(( t1 - t0 ))/1e9}") s"
}

# podman: rootless overlay if it works here, else vfs (and say so); this
# first pull also starts podman's pause process, outside the timed runs.
D=$(fresh pprobe)
if ! podman_pull "$D" >"$W/podman-probe.log" 2>&1; then
  log "podman rootless overlay failed ($(tail -n 1 "$W/podman-probe.log")); using vfs"
  PODMAN_DRIVER=vfs
  D=$(fresh pprobe)
  podman_pull "$D" >"$W/podman-probe.log" 2>&1 || { cat "$W/podman-probe.log" >&2; exit 1; }
fi
sync; sleep 5
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

for i in $(seq "$RUNS"); do
  log "round $i/$RUNS"
  D=$(fresh "cw$i")
  timed compute-worker as_user timeout "$RUN_TIMEOUT" "$CW" pull \
    --image-dir "$D/images" --state-dir "$D/state" "$REF"

  if [ -n "${CW_BASELINE:-}" ]; then
    D=$(fresh "base$i")
    timed baseline as_user timeout "$RUN_TIMEOUT" "$W/compute-worker-baseline" pull \
      --image-dir "$D/images" --state-dir "$D/state" "$REF"
  fi

  D=$(fresh "p$i")
  timed podman podman_pull "$D"

  D=$(fresh "s$i")
  timed skopeo as_user timeout "$RUN_TIMEOUT" skopeo copy -q --src-tls-verify=false \
    "docker://$REF" "oci:$D/layout:1"
  if [ "$HAVE_UMOCI" = 1 ]; then
    timed umoci as_user timeout "$RUN_TIMEOUT" umoci unpack --rootless \
      --image "$D/layout:1" "$D/bundle"
  fi
done

# The image is cached in the last round's store: pull it again.
D=$W/runs/cw$RUNS
log "cached pull ($CACHED_RUNS runs)"
as_user hyperfine -N --warmup 3 --runs "$CACHED_RUNS" --export-json "$W/runs/cached.json" \
  -n cached "$CW pull --image-dir $D/images --state-dir $D/state $REF" >"$W/cached.log" 2>&1 \
  || { cat "$W/cached.log" >&2; exit 1; }

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$W/times" "$W/runs/cached.json" "$W/logs/compute-worker" "$HAVE_UMOCI" "$PODMAN_DRIVER" "$(du -sb "$D/images" | cut -f1)" \
  "$LOAD_BEFORE" "$LOAD_AFTER" "$(nproc)" <<'PY'
import json, os, statistics, sys
tdir, cached, cwlogs, have_umoci, driver, store_bytes, load0, load1, ncpu = sys.argv[1:]
t = {n: [int(x) / 1e6 for x in open(os.path.join(tdir, n)).read().split()] for n in os.listdir(tdir)}
med = {n: statistics.median(v) for n, v in t.items()}
rows = [("compute-worker pull", med["compute-worker"], t["compute-worker"])]
if "baseline" in t:
    rows.append(("compute-worker pull (CW_BASELINE build)", med["baseline"], t["baseline"]))
rows.append((f"podman pull (rootless, {driver})", med["podman"], t["podman"]))
if have_umoci == "1":
    both = [a + b for a, b in zip(t["skopeo"], t["umoci"])]
    rows.append(("skopeo copy + umoci unpack --rootless", statistics.median(both), both))
    rows.append(("  skopeo copy (to an OCI layout)", med["skopeo"], t["skopeo"]))
    rows.append(("  umoci unpack --rootless", med["umoci"], t["umoci"]))
else:
    rows.append(("skopeo copy only (umoci not installed)", med["skopeo"], t["skopeo"]))
podman = med["podman"]
print(f"| tool | median (s) | ratio to podman | runs (s) |")
print("|---|---|---|---|")
for name, m, runs in rows:
    print(f"| {name} | {m:.2f} | {m / podman:.2f}× | {', '.join(f'{x:.2f}' for x in runs)} |")
c = json.load(open(cached))["results"][0]
print()
print(f"cached `compute-worker pull` (image already in the store): median {c['median'] * 1000:.1f} ms "
      f"(min {c['min'] * 1000:.1f}, max {c['max'] * 1000:.1f}, {len(c['times'])} runs); "
      f"store after the pull: {int(store_bytes) / 1e6:.0f} MB")
# Where compute-worker's time goes, from its progress lines (info level):
# first "download started" -> last "download verified" -> "layer unpacked"
# (layers unpack while they download: the second figure is what is left after
# the last byte has arrived).
import re
from datetime import datetime
def ts(line):
    m = re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+", re.sub(r"\x1b\[[0-9;]*m", "", line))
    return datetime.fromisoformat(m.group(0)[:26]).timestamp() if m else None
split = []
for f in sorted(os.listdir(cwlogs), key=lambda f: int(f.split(".")[0])):
    lines = open(os.path.join(cwlogs, f), errors="replace").read().splitlines()
    start = [ts(l) for l in lines if "download started" in l]
    done = [ts(l) for l in lines if "download verified" in l]
    unpacked = [ts(l) for l in lines if "layer unpacked" in l]
    if start and done and unpacked and None not in (start[0], done[-1], unpacked[-1]):
        split.append(f"{done[-1] - start[0]:.2f} + {unpacked[-1] - done[-1]:.2f}")
if split:
    print("compute-worker download, then unpack after it (s), per run, from its log: " + "; ".join(split))
print(f"load average (1, 5, 15 min) on {ncpu} CPUs: {load0} before the runs, {load1} after")
PY
