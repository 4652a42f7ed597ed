#!/usr/bin/env python3
"""Time whole commands start to exit, interleaved.

    interleave.py RUNS REF NAME=COMMAND [NAME=COMMAND ...]

Every iteration runs each command once, in a fresh random order, so that a
change in the machine's load (these hosts are shared) falls on every
command alike instead of on whichever ran during it, as when each command's
runs come back to back. Prints a markdown table: the median, quartiles,
and the ratio to REF (one of the names) both as a ratio of medians and as
the median of the per-iteration ratios (each taken from runs made moments
apart). A command that exits non-zero stops the benchmark.
"""
import os
import random
import shlex
import statistics
import sys
import time


def run(argv, null):
    t = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, null, 1)])
    _, status = os.waitpid(pid, 0)
    elapsed = (time.perf_counter_ns() - t) / 1e9
    if status != 0:
        sys.exit(f"interleave: {' '.join(argv)} failed (wait status {status})")
    return elapsed


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    runs, ref = int(sys.argv[1]), sys.argv[2]
    cmds = {}
    for arg in sys.argv[3:]:
        name, _, command = arg.partition("=")
        argv = shlex.split(command)
        if argv and not os.path.isabs(argv[0]):
            from shutil import which
            argv[0] = which(argv[0]) or argv[0]
        cmds[name] = argv
    if ref not in cmds:
        sys.exit(f"interleave: no command named {ref}")
    null = os.open(os.devnull, os.O_WRONLY)
    for argv in cmds.values():  # warm-up: page cache, first-run caches
        for _ in range(3):
            run(argv, null)
    times = {name: [] for name in cmds}
    for _ in range(runs):
        order = list(cmds)
        random.shuffle(order)
        for name in order:
            times[name].append(run(cmds[name], null))
    ref_median = statistics.median(times[ref])
    print(f"| command | median (s) | p25–p75 (s) | ratio to {ref} (of medians) | median of per-iteration ratios |")
    print("|---|---|---|---|---|")
    for name, t in times.items():
        q = statistics.quantiles(t, n=4)
        paired = statistics.median(a / b for a, b in zip(t, times[ref]))
        print(f"| {name} | {statistics.median(t):.4f} | {q[0]:.4f}–{q[2]:.4f} "
              f"| {statistics.median(t) / ref_median:.2f}× | {paired:.2f}× |")


if __name__ == "__main__":
    main()
