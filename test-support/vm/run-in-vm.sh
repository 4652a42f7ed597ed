#!/usr/bin/env bash
# Run a bash command as root in a throw-away QEMU guest whose cgroups are
# pure cgroup v2 (the hosts the project is developed on have hybrid
# cgroups, where the v2 code paths cannot run). Used by tests/cgroup_v2.rs.
#
#   run-in-vm.sh --prepare     download and unpack the guest kernel, build its initrd
#   run-in-vm.sh 'COMMAND'     boot, run COMMAND, print its stdout+stderr, exit with its code
#
# The guest is Debian's generic kernel (linux-image-amd64's current version:
# its package is only downloaded and unpacked, never installed on the host)
# booted directly with a busybox initrd. The host's / is its root: shared
# read-only over 9p, with a tmpfs overlay on top, so the guest sees every host
# file (the test's binary and rootfs included) and writes go nowhere. cgroup2
# is mounted alone on /sys/fs/cgroup (cgroup_no_v1=all) with nsdelegate, the
# guest's first process moved into /init.scope and every controller enabled at
# the root, as systemd would. /run is a tmpfs; so are the VM_TMPFS
# directories. The guest has no network interface but lo.
#
# Exit code: COMMAND's, or 125 when the guest gave no result (the qemu log
# and the console's tail are printed on stderr).
#
# Needs root, qemu-system-x86_64 (Debian: qemu-system-x86, with
# --no-install-recommends) and /bin/busybox (busybox-static);
# scripts/dev-setup.sh installs both and runs --prepare.
#
# Settings (environment):
#   COMPUTE_WORKER_TEST_VM_DIR  kernel and initrd (default /var/cache/compute-worker/test-vm)
#   VM_TMPFS    guest directories that get an empty tmpfs (default "/tmp /var/tmp";
#               overlayfs cannot use the guest's overlay root as an upper layer)
#   VM_MEM=2048 VM_SMP=2 VM_TIMEOUT=600 (seconds)
#   VM_ACCEL=tcg|kvm  (default tcg: software emulation works everywhere; KVM
#               only where the host offers a normal one)
#   VM_CONSOLE=1  print the guest's console on stderr
set -euo pipefail

VM_DIR=${COMPUTE_WORKER_TEST_VM_DIR:-/var/cache/compute-worker/test-vm}

die() { echo "run-in-vm: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "must run as root (qemu shares the host's / with the guest as root)"
command -v qemu-system-x86_64 >/dev/null \
  || die "qemu-system-x86_64 not found: apt-get install --no-install-recommends qemu-system-x86"
[ -x /bin/busybox ] || die "/bin/busybox not found: apt-get install busybox-static"

# The kernel: the package linux-image-amd64 points to today (not
# linux-image-cloud-amd64: it has no 9p), downloaded and unpacked into a
# scratch directory; only vmlinuz and the initrd made from its modules stay.
prepare() {
  [ -f "$VM_DIR/vmlinuz" ] && [ -f "$VM_DIR/initrd.gz" ] && return
  local pkg tmp
  mkdir -p "$VM_DIR"
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$pkg" ] || die "apt-cache knows no linux-image-amd64 (run apt-get update)"
  tmp=$(mktemp -d "$VM_DIR/.prepare.XXXXXX")
  # apt-get download as root warns that it cannot drop privileges for the
  # download into a root-owned directory: harmless.
  (cd "$tmp" && apt-get download -q "$pkg" 2>&1 | grep -v -i unsandboxed || true)
  ls "$tmp"/*.deb >/dev/null 2>&1 || die "apt-get download $pkg failed"
  dpkg-deb -x "$tmp"/*.deb "$tmp/root"
  build_initrd "$tmp/initrd.d" "$(echo "$tmp"/root/lib/modules/*)" "$tmp/initrd.gz"
  cp "$tmp"/root/boot/vmlinuz-* "$tmp/vmlinuz"
  echo "$pkg" > "$VM_DIR/package"
  mv "$tmp/initrd.gz" "$VM_DIR/initrd.gz"
  mv "$tmp/vmlinuz" "$VM_DIR/vmlinuz"
  rm -rf "$tmp"
}

# build_initrd DIR MODULES OUT: a busybox initrd that loads the modules for
# 9p and overlayfs, mounts the host's / read-only with a tmpfs overlay, and
# switches to it.
build_initrd() {
  local ir=$1 mods=$2 out=$3
  mkdir -p "$ir"/{bin,dev,proc,sys,mnt/lower,mnt/rw,mnt/root,mods}
  cp /bin/busybox "$ir/bin/busybox"
  for a in sh mount mkdir insmod switch_root cat sleep poweroff; do
    ln -s busybox "$ir/bin/$a"
  done
  # Module dependencies from each module's `depends=` field (no kmod needed).
  declare -A seen=()
  local order=()
  add() {
    local m=$1 f d
    [ -n "${seen[$m]:-}" ] && return
    seen[$m]=1
    f=$(find "$mods" -name "$m.ko" | head -1)
    [ -n "$f" ] || die "kernel module $m not found in $mods"
    for d in $(grep -a -o 'depends=[a-z0-9_,-]*' "$f" | head -1 | cut -d= -f2 | tr ',' ' '); do
      add "$d"
    done
    cp "$f" "$ir/mods/"
    order+=("$(basename "$f")")
  }
  for m in virtio_pci 9pnet_virtio 9p overlay; do add $m; done
  printf '%s\n' "${order[@]}" > "$ir/mods/order"
  cat > "$ir/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "insmod $m failed"; done
O=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o ro,$O,cache=loose hostroot /mnt/lower || { echo "9p mount failed"; poweroff -f; }
mount -t tmpfs -o mode=755 rw /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work root /mnt/root \
  || { echo "overlay root failed"; poweroff -f; }
mount -t tmpfs -o mode=755 run /mnt/root/run
mkdir -p /mnt/root/run/vmjob
mount -t 9p -o $O,cache=none job /mnt/root/run/vmjob || echo "job share mount failed"
mount --move /dev /mnt/root/dev; mount --move /proc /mnt/root/proc; mount --move /sys /mnt/root/sys
exec switch_root /mnt/root /bin/sh /run/vmjob/stage2.sh
EOF
  chmod +x "$ir/init"
  (cd "$ir" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$out"
}

[ $# -ge 1 ] || die "usage: $0 --prepare | 'COMMAND'"
prepare
if [ "$1" = --prepare ]; then
  echo "run-in-vm: guest kernel $(cat "$VM_DIR/package") ready in $VM_DIR"
  exit 0
fi

JOB=$(mktemp -d "${TMPDIR:-/tmp}/run-in-vm.XXXXXX")
trap 'rm -rf "$JOB"' EXIT
printf '%s\n' "$*" > "$JOB/cmd"
echo "${VM_TMPFS-/tmp /var/tmp}" > "$JOB/tmpfs_dirs"
cat > "$JOB/stage2.sh" <<'EOF'
# pid 1 of the guest, in the switched root (the host's /bin/sh).
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
for d in $(cat /run/vmjob/tmpfs_dirs); do mkdir -p "$d"; mount -t tmpfs -o mode=1777 tmpfs "$d"; done
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
hostname cgv2vm
ip link set lo up 2>/dev/null
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
cd /
# As systemd: no process in the root cgroup but in /init.scope, every
# controller enabled for the root's children.
mkdir /sys/fs/cgroup/init.scope && echo $$ > /sys/fs/cgroup/init.scope/cgroup.procs
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
  echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control
done
/bin/bash -c "$(cat /run/vmjob/cmd)" > /run/vmjob/out 2>&1 < /dev/null
echo $? > /run/vmjob/rc
sync
echo 1 > /proc/sys/kernel/sysrq
echo o > /proc/sysrq-trigger
# pid 1 must outlive the power-off request (its exit would panic the kernel).
sleep 60
EOF

ACCEL=(-accel tcg,thread=multi -cpu max)
[ "${VM_ACCEL:-tcg}" = kvm ] && ACCEL=(-accel kvm -cpu host)
set +e
timeout "${VM_TIMEOUT:-600}" qemu-system-x86_64 "${ACCEL[@]}" \
  -m "${VM_MEM:-2048}" -smp "${VM_SMP:-2}" \
  -nodefaults -no-user-config -display none -no-reboot \
  -serial "file:$JOB/console.log" \
  -kernel "$VM_DIR/vmlinuz" -initrd "$VM_DIR/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 cgroup_no_v1=all" \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
  -virtfs "local,path=$JOB,mount_tag=job,security_model=none" \
  > "$JOB/qemu.log" 2>&1
qrc=$?
set -e
[ "${VM_CONSOLE:-0}" = 1 ] && cat "$JOB/console.log" >&2
[ -f "$JOB/out" ] && cat "$JOB/out"
[ -f "$JOB/rc" ] && exit "$(cat "$JOB/rc")"
echo "run-in-vm: the guest gave no result (qemu exit code $qrc); qemu log and console tail:" >&2
tail -5 "$JOB/qemu.log" >&2
tail -30 "$JOB/console.log" >&2
exit 125
