#!/usr/bin/env bash
# The checks of tests/cgroup_v2.rs, run as root in the cgroup v2 test VM
# (test-support/vm/run-in-vm.sh). Every `compute-worker` runs as the
# unprivileged test user, in a cgroup set up first the way systemd or an
# administrator would. Each result is printed for the test to parse:
#
#   @@case SCENARIO.CHECK EXIT_CODE
#   @@out LINE        (its stdout)
#   @@err LINE        (its stderr)
#
# Environment: CW_BIN (the binary, executable by the user), CW_ROOTFS (a
# busybox rootfs the user can read), CW_USER (the test user).
set -u
CG=/sys/fs/cgroup
STATE=/run/cw-state

# ---------------------------------------------------------------- as the user
if [ "${1:-}" = as-user ]; then
  scenario=$2
  tmp=$(mktemp -d "$HOME/case.XXXXXX")
  # report CHECK CMD...: run CMD, print its exit code and output
  report() {
    local check=$1
    shift
    "$@" > "$tmp/out" 2> "$tmp/err"
    echo "@@case $scenario.$check $?"
    # (a last line without its newline gets one)
    sed -e 's/^/@@out /' -e '$a\' "$tmp/out"
    sed -e 's/^/@@err /' -e '$a\' "$tmp/err"
  }
  cw() { "$CW_BIN" "$@"; }
  run() { cw exec --rootfs "$CW_ROOTFS" "$@"; }
  own=$(sed -n 's/^0:://p' /proc/self/cgroup)
  # The cgroups under DIR (the worker's leaf, run cgroups), one a line.
  children() { find "$CG$1" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort; }

  case $scenario in
  delegated)
    report oom run --memory 32m -- dd if=/dev/zero of=/dev/null bs=100M count=1
    report forkbomb run --pids 40 --timeout 120 -- \
      sh -c 'bomb() { bomb | bomb & }; bomb; sleep 2; echo survived'
    report cpuset run --cpus 0 -- sh -c 'grep Cpus_allowed_list /proc/self/status; cat /proc/self/cgroup'
    report worker-cgroup cat /proc/self/cgroup
    report children children "$own"

    # A crash of every worker process at once leaves the run's cgroup;
    # the next start removes it.
    run --pids 100 -- sleep 4291 > /dev/null 2>&1 &
    exec_pid=$!
    for _ in $(seq 600); do
      ls -d "$CG$own"/cw-* > /dev/null 2>&1 && break
      sleep 0.1
    done
    pids=$exec_pid
    todo=$exec_pid
    while [ -n "$todo" ]; do
      next=
      for p in $todo; do
        for c in $(cat /proc/"$p"/task/*/children 2> /dev/null); do
          [ "$(cat /proc/"$c"/comm 2> /dev/null)" = compute-worker ] && pids="$pids $c"
          next="$next $c"
        done
      done
      todo=$next
    done
    kill -9 $pids
    wait "$exec_pid" 2> /dev/null
    for _ in $(seq 100); do
      pgrep -x -u "$(id -u)" sleep > /dev/null || break
      sleep 0.1
    done
    report crash-left children "$own"
    report crash-next run -- true
    report crash-cleaned children "$own"
    # A multi-threaded caller (a job runner, like `serve`) starts its
    # sandboxes by exec, not fork: the embedded demo job with a limit.
    # The guest has no external interface for pasta: limits, not network, are tested here.
    report job cw run --results "$HOME/results" --memory 64m --network none
    report job-children children "$own"
    # Resource reports from the run's cgroup v2 counters (memory.peak,
    # pids.peak, cpu.stat): a submission that holds 300 MiB while 50
    # sleepers run, with room, then over a 64 MiB limit.
    mkdir -p "$HOME/hog"
    echo 'command: sh /app/program/hog.sh' > "$HOME/hog/metadata.yaml"
    cat > "$HOME/hog/hog.sh" << 'HOG'
x=$(head -c 314572800 /dev/zero | tr '\0' a)
for i in $(seq 50); do sleep 2 & done
wait
echo ${#x} > /app/output/length
HOG
    report usage cw run --rootfs "$CW_ROOTFS" --submission "$HOME/hog" --results "$HOME/usage" --memory 1g --network none
    report usage-oom cw run --rootfs "$CW_ROOTFS" --submission "$HOME/hog" --results "$HOME/usage-oom" --memory 64m --network none
    ;;
  admin)
    report oom run --cgroup-parent /compute-worker --memory 32m -- \
      dd if=/dev/zero of=/dev/null bs=100M count=1
    report cpuset env COMPUTE_WORKER_CGROUP_PARENT=/compute-worker "$CW_BIN" exec \
      --rootfs "$CW_ROOTFS" --cpus 1 -- grep Cpus_allowed_list /proc/self/status
    report worker-cgroup cat /proc/self/cgroup
    report children children /compute-worker
    ;;
  refused)
    # A newuidmap that waits for root's word: the sandbox's start stops
    # there, after the worker checked its delegation and before
    # libcontainer moves the run into its cgroup.
    real=$(command -v newuidmap)
    mkdir -p "$HOME/hook"
    printf '#!/bin/sh\ntouch %s/maps-reached\nwhile [ ! -e %s/maps-go ]; do sleep 0.1; done\nexec %s "$@"\n' \
      "$HOME" "$HOME" "$real" > "$HOME/hook/newuidmap"
    chmod +x "$HOME/hook/newuidmap"
    report run env PATH="$HOME/hook:$PATH" "$CW_BIN" exec --rootfs "$CW_ROOTFS" --memory 64m -- echo ran
    report children children "$(dirname "$own")"
    ;;
  no-cpuset)
    report cpus run --cpus 0 -- true
    report memory run --memory 64m -- echo ran
    report plain run -- echo ran
    report serve env BROKER_URL=pyamqp://guest:guest@127.0.0.1:5672// "$CW_BIN" serve --cpus 0
    report doctor cw doctor --json
    ;;
  outside)
    report admin run --cgroup-parent /compute-worker --memory 32m -- echo ran
    report none run --memory 32m -- echo ran
    report plain run -- echo ran
    report doctor cw doctor --json
    ;;
  esac
  rm -rf "$tmp"
  exit 0
fi

# ---------------------------------------------------------------- as root
uid=$(id -u "$CW_USER")
gid=$(id -g "$CW_USER")
mkdir -p "$STATE"
chown "$uid:$gid" "$STATE"

# delegate CGROUP: made and given to the user as systemd does for a unit
# with Delegate=yes (the directory and the files that move processes and
# enable controllers).
delegate() {
  mkdir -p "$CG$1"
  chown "$uid:$gid" "$CG$1" "$CG$1"/cgroup.{procs,subtree_control,threads}
}
# enable CGROUP CONTROLLER...: in CGROUP's cgroup.subtree_control
enable() {
  local cg=$1 c
  shift
  for c in "$@"; do echo "+$c" > "$CG$cg/cgroup.subtree_control"; done
}
# as_user_in CGROUP SCENARIO: the user's part of SCENARIO, started in CGROUP
as_user_in() {
  (
    echo "$BASHPID" > "$CG$1/cgroup.procs" || exit 1
    exec setpriv --reuid="$uid" --regid="$gid" --init-groups env -i PATH="$PATH" \
      HOME="$STATE" COMPUTE_WORKER_STATE_DIR="$STATE" CW_BIN="$CW_BIN" CW_ROOTFS="$CW_ROOTFS" \
      bash "$0" as-user "$2"
  )
}
# user_manager CONTROLLER...: /user.slice/user-UID.slice/user@UID.service as
# systemd-logind and systemd make it, passing CONTROLLERs (the Delegate= of
# user@.service) to the user's manager, and a service of that manager
# with Delegate=yes in it. Prints the service's cgroup.
user_manager() {
  local slice=/user.slice/user-$uid.slice manager
  manager=$slice/user@$uid.service
  mkdir -p "$CG$manager"
  enable /user.slice "$@"
  enable "$slice" "$@"
  delegate "$manager"
  # The user's manager makes (and owns) everything below.
  mkdir -p "$CG$manager/app.slice/worker.service"
  enable "$manager" "$@"
  enable "$manager/app.slice" "$@"
  chown -R "$uid:$gid" "$CG$manager"
  echo "$manager/app.slice/worker.service"
}
# remove_tree CGROUP: rmdir it and everything under it, deepest first
remove_tree() {
  find "$CG$1" -depth -type d -exec rmdir {} +
}

# systemd's default user@.service: Delegate=cpu memory pids (no cpuset).
service=$(user_manager cpu memory pids)
as_user_in "$service" no-cpuset
remove_tree /user.slice

# With setup-host's drop-in: Delegate=cpu cpuset io memory pids.
service=$(user_manager cpu cpuset io memory pids)
as_user_in "$service" delegated
# The delegation taken back while a run starts (its cgroup.procs given
# back to root): the kernel refuses to move the run into its cgroup, which
# libcontainer lets pass; the worker must not.
as_user_in "$service/supervisor" refused &
user_part=$!
for _ in $(seq 1200); do
  [ -e "$STATE/maps-reached" ] && break
  sleep 0.1
done
chown root:root "$CG$service/cgroup.procs"
touch "$STATE/maps-go"
wait "$user_part"
remove_tree /user.slice

# An administrator's subtree (--cgroup-parent), the worker placed in it,
# then the worker outside of it.
delegate /compute-worker
as_user_in /compute-worker admin
as_user_in /init.scope outside
