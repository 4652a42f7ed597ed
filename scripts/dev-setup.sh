#!/usr/bin/env bash
# One-time set-up of a Debian/Ubuntu host for building and testing
# compute-worker (run as root). Idempotent.
#
#  - system packages the build and the tests need, and the Rust musl
#    target of the static build;
#  - an unprivileged test user with subordinate uid/gid ranges;
#  - a cgroup subtree delegated to that user (the sandbox limit tests);
#  - RabbitMQ started if it is installed but not running.
set -euo pipefail

TEST_USER=${COMPUTE_WORKER_TEST_USER:-cwtest}
CGROUP_PARENT=${COMPUTE_WORKER_TEST_CGROUP:-/cw-test}

if [ "$(id -u)" != 0 ]; then
  echo "dev-setup.sh must run as root (it installs packages and creates a test user)" >&2
  exit 1
fi

echo "== packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  uidmap busybox-static util-linux procps time file \
  docker-registry skopeo debootstrap \
  ca-certificates pkg-config gcc libseccomp-dev >/dev/null
# The static (musl) build, scripts/build-static.sh: musl-gcc, and what
# building libseccomp from its Debian source package takes.
apt-get install -y -qq --no-install-recommends \
  musl-tools gperf make dpkg-dev linux-libc-dev >/dev/null

echo "== Rust target x86_64-unknown-linux-musl (the static binary)"
export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
  rustup target add x86_64-unknown-linux-musl || {
    echo "dev-setup.sh: 'rustup target add x86_64-unknown-linux-musl' failed (no access to the Rust toolchain server?); the static binary and tests/static_binary.rs need it" >&2
    exit 1
  }
fi

echo "== Python celery (the broker tests publish with the real Celery)"
python3 -m pip install -q --disable-pip-version-check "celery==5.6.2" "kombu==5.6.2"

echo "== test user $TEST_USER"
if ! id "$TEST_USER" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$TEST_USER"
fi
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  if ! grep -q "^$TEST_USER:" "$f"; then
    # Pick a range above every range already given out.
    start=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' "$f")
    echo "$TEST_USER:$start:65536" >> "$f"
  fi
done
grep "^$TEST_USER:" /etc/subuid /etc/subgid

echo "== cgroup subtree $CGROUP_PARENT delegated to $TEST_USER"
rel=${CGROUP_PARENT#/}
if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
  dir=/sys/fs/cgroup/$rel
  mkdir -p "$dir"
  for c in cpuset memory pids; do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    echo "+$c" > "$dir/cgroup.subtree_control" 2>/dev/null || true
  done
  chown "$TEST_USER:" "$dir" "$dir/cgroup.procs" "$dir/cgroup.subtree_control" "$dir/cgroup.threads"
else
  for mnt in /sys/fs/cgroup/*; do
    [ -L "$mnt" ] && continue
    [ "$(stat -f -c %T "$mnt")" = cgroupfs ] || continue
    case "$(basename "$mnt")" in systemd|unified) continue;; esac
    mkdir -p "$mnt/$rel"
    if [ -f "$mnt/cpuset.cpus" ]; then
      cat "$mnt/cpuset.cpus" > "$mnt/$rel/cpuset.cpus"
      cat "$mnt/cpuset.mems" > "$mnt/$rel/cpuset.mems"
    fi
    chown -R "$TEST_USER:" "$mnt/$rel"
  done
fi

echo "== RabbitMQ (the broker and serve tests use it; it may be installed but stopped)"
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
fi
if ! rabbitmqctl status >/dev/null 2>&1; then
  rabbitmq-server -detached
fi
timeout 120 rabbitmqctl await_startup >/dev/null
echo "RabbitMQ is up"
echo "== done"
