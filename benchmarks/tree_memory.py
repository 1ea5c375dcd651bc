"""Run a command and report its wall time and the peak memory of its whole process tree (Linux).

    python benchmarks/tree_memory.py [--every 2] -- gft run --config stages/tiny/paper.yaml --run outputs/paper-tiny

Every ``--every`` seconds it sums the proportional set size (``Pss`` of ``/proc/<pid>/smaps_rollup``: pages
shared between processes split among them, so the sum does not count them twice) over the command and all
its descendants, and keeps the largest sum and the largest single process's resident set. Prints one JSON
line at the end; the command's own output passes through.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += children(p)
    return seen


def kib(pid: int, key: str, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("tree_memory.py: give the command after --")
    started = time.perf_counter()
    proc = subprocess.Popen(command)
    peak_pss = peak_rss = 0
    while proc.poll() is None:
        pids = tree(proc.pid)
        peak_pss = max(peak_pss, sum(kib(p, "Pss", "smaps_rollup") for p in pids))
        peak_rss = max([peak_rss] + [kib(p, "VmRSS", "status") for p in pids])
        time.sleep(args.every)
    print(json.dumps({"command": " ".join(command), "returncode": proc.returncode,
                      "wall_s": round(time.perf_counter() - started, 1),
                      "peak_tree_pss_gib": round(peak_pss / 2**20, 2),
                      "peak_process_rss_gib": round(peak_rss / 2**20, 2),
                      "sampled_every_s": args.every}))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
