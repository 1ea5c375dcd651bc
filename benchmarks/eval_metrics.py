"""Eval-side figures: metric computation speed, and end-to-end eval throughput on the embedded default.

    python benchmarks/eval_metrics.py            # metrics for 15,000 problems x 256 synthetic verdicts
    python benchmarks/eval_metrics.py --e2e      # also `gft eval` on the bundled test split (hf, CPU)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gftrepro.metrics import benchmark_metrics, ks_up_to, pass_at_k


def metrics_speed(problems: int = 15_000, n: int = 256) -> dict:
    rng = np.random.default_rng(0)
    difficulty = rng.beta(0.5, 2.0, size=problems)
    correct = rng.random((problems, n)) < difficulty[:, None]  # [problems, n] synthetic verdicts
    c = correct.sum(1)
    t0 = time.perf_counter()
    table = {k: float(pass_at_k(n, c, k).mean()) for k in ks_up_to(n)}
    passk_seconds = time.perf_counter() - t0
    answers = [[None if not ok else "x" for ok in row] for row in correct[:1000]]
    t0 = time.perf_counter()
    benchmark_metrics(correct[:1000], answers, ks_up_to(n))
    with_maj = time.perf_counter() - t0
    return {"problems": problems, "n": n, "pass@k for k=1..256 (9 values), seconds": passk_seconds,
            "pass@256": table[256], "pass@1": table[1],
            "full metrics incl. maj@k for 1,000 problems, seconds": with_maj}


def end_to_end() -> dict:
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gftrepro.cli", "eval", "--run", run, "--pass-k", "16"], check=True,
                       capture_output=True)
        seconds = time.perf_counter() - t0
        metrics = json.loads(next(Path(run).glob("eval/*/metrics-n16.json")).read_text())
    samples = metrics["benchmarks"]["testbed"]["problems"] * 16
    return {"command": "gft eval --pass-k 16 (testbed:student, 300 problems, hf, CPU)", "seconds": seconds,
            "samples": samples, "samples_per_s": samples / seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--e2e", action="store_true")
    args = ap.parse_args()
    print(json.dumps(metrics_speed(), indent=1))
    if args.e2e:
        print(json.dumps(end_to_end(), indent=1))


if __name__ == "__main__":
    main()
