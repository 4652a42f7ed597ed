#!/usr/bin/env bash
# One-time set-up of a Debian/Ubuntu host for building and testing
# compute-worker (run as root). Idempotent.
#
#  - system packages the build and the tests need, and the Rust musl
#    target of the static build;
#  - an unprivileged test user with subordinate uid/gid ranges;
#  - a cgroup subtree delegated to that user (the sandbox limit tests);
#  - the guest kernel of the cgroup v2 test VM (tests/cgroup_v2.rs), only
#    downloaded and unpacked, never installed;
#  - RabbitMQ started if it is installed but not running, with a TLS
#    listener on 127.0.0.1:5671 (self-signed test CA) beside plain 5672.
set -euo pipefail

TEST_USER=${COMPUTE_WORKER_TEST_USER:-cwtest}
NOIDS_USER=${COMPUTE_WORKER_TEST_NOIDS_USER:-cwnoids}
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
  docker-registry skopeo debootstrap systemd qemu-system-x86 \
  ca-certificates openssl pkg-config gcc libseccomp-dev \
  libc6-dev libc-bin >/dev/null  # libc6-dev: static libc.a for tests/gpu.rs; libc-bin: ldconfig
# Programs' network (pasta, the default when a competition allows network)
# and tests/network.rs's test host (ip netns + veth).
apt-get install -y -qq --no-install-recommends passt iproute2 >/dev/null
# The peers `compute-worker bench startup` measures against (tests/bench_startup.rs).
apt-get install -y -qq --no-install-recommends runc crun podman >/dev/null

echo "== /dev/net/tun for pasta"
# pasta opens /dev/net/tun inside the run's user and network namespaces,
# but the open is checked against the node's owner and mode as the worker's
# user: at 0600 root (how a container without udev has it) it fails with
# EACCES. udev's default rule makes it 0666 on every ordinary host; opening
# it grants nothing, creating a tap device still needs CAP_NET_ADMIN in the
# device's network namespace. Do what udev would.
if [ ! -c /dev/net/tun ]; then
  mkdir -p /dev/net
  mknod -m 0666 /dev/net/tun c 10 200
fi
chmod 0666 /dev/net/tun
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

echo "== test user $NOIDS_USER, with no subordinate ids (single-id mode)"
if ! id "$NOIDS_USER" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash "$NOIDS_USER"
fi
for f in /etc/subuid /etc/subgid; do
  sed -i "/^$NOIDS_USER:/d" "$f"
done

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

echo "== cgroup v2 test VM: its kernel and initrd (tests/cgroup_v2.rs)"
bash "$(dirname "$0")/../test-support/vm/run-in-vm.sh" --prepare

echo "== RabbitMQ (the broker and serve tests use it; it may be installed but stopped)"
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
fi
# Until the node has booted (right after `rabbitmq-server -detached` it is
# not even known to epmd, and await_startup fails at once).
wait_rabbitmq() {
  for _ in $(seq 120); do
    rabbitmqctl await_startup >/dev/null 2>&1 && return 0
    sleep 1
  done
  rabbitmqctl await_startup
}
if ! rabbitmqctl status >/dev/null 2>&1; then
  rabbitmq-server -detached
fi
wait_rabbitmq
echo "RabbitMQ is up"

echo "== RabbitMQ TLS listener on 127.0.0.1:5671 (the broker TLS tests use it)"
# A test CA and a server certificate for localhost / 127.0.0.1 that it
# signed. The tests trust ca.pem to check verification; the CA key is not
# kept. Remade when missing or expiring within a day.
TLS_DIR=/etc/rabbitmq/tls
mkdir -p "$TLS_DIR"
if ! openssl x509 -checkend 86400 -noout -in "$TLS_DIR/server.pem" >/dev/null 2>&1 \
  || ! openssl verify -CAfile "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem" >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=compute-worker test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" > "$tmp/ext"
  openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 3650 -extfile "$tmp/ext" -out "$tmp/server.pem" 2>/dev/null
  install -m 0644 "$tmp/ca.pem" "$tmp/server.pem" "$TLS_DIR/"
  install -m 0640 -g rabbitmq "$tmp/server.key" "$TLS_DIR/"
  rm -rf "$tmp"
fi
# Our settings live between markers in rabbitmq.conf (every RabbitMQ since
# 3.7 reads it; conf.d/ is not in all of them); the rest is left alone.
CONF=/etc/rabbitmq/rabbitmq.conf
BEGIN="# BEGIN compute-worker dev-setup: TLS listener"
END="# END compute-worker dev-setup"
touch "$CONF"
want=$(mktemp)
sed "/^$BEGIN\$/,/^$END\$/d" "$CONF" > "$want"
cat >> "$want" <<TLSCONF
$BEGIN
listeners.ssl.local = 127.0.0.1:5671
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
$END
TLSCONF
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! cmp -s "$want" "$CONF" || ! port_open 5671; then
  cat "$want" > "$CONF"
  echo "restarting RabbitMQ for the TLS listener"
  rabbitmqctl stop >/dev/null
  rabbitmq-server -detached
  wait_rabbitmq
fi
rm -f "$want"
for port in 5672 5671; do
  for _ in $(seq 60); do port_open "$port" && break; sleep 1; done
  port_open "$port" || { echo "RabbitMQ does not listen on 127.0.0.1:$port" >&2; exit 1; }
done
echo "RabbitMQ listens on 5672 and (TLS) 5671"

echo "== RabbitMQ management API on 127.0.0.1:15672 (tests/broker_monitoring.rs reads it as Codabench's worker panel does)"
rabbitmq-plugins enable rabbitmq_management >/dev/null
for _ in $(seq 60); do port_open 15672 && break; sleep 1; done
port_open 15672 || { echo "RabbitMQ's management API does not listen on 127.0.0.1:15672" >&2; exit 1; }
echo "RabbitMQ management API is up"
echo "== done"
