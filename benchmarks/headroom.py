"""Does the embedded miniature have room to move? The criteria of the miniature, on the baselines only.

    python benchmarks/headroom.py                      # gft run --methods sft,grpo --seeds 3, then the checks
    python benchmarks/headroom.py --run outputs/default # reuse a run's finished stages (same settings)

Criteria (held-out pass@1 and the probe, mean ± std over 3 seeds):
- SFT on the expert solutions: at least 5 points above the base, and its mean - std above the
  base's mean + std;
- on-policy GRPO: the same;
- the out-of-domain probe: the base at 60% pass@1 or more.
GFT is not part of these checks: its numbers are whatever they come out to be. Exits 1 when a
criterion fails. Takes about 10 minutes on a 2-core CPU (the figures are in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from gftrepro import pipeline
from gftrepro.report import holds, stat


def check(rows: dict[str, dict]) -> list[tuple[str, bool, str]]:
    out = []
    (bm, bs) = stat(rows, "base", "pass@1")
    for method in ("sft", "grpo"):
        (m, s) = stat(rows, method, "pass@1")
        ok = m - bm >= 0.05 and holds("above", (m, s), (bm, bs))
        out.append((f"{method} pass@1 >= base + 5 points, intervals apart", ok,
                    f"{100 * m:.1f} ± {100 * s:.1f} vs base {100 * bm:.1f} ± {100 * bs:.1f}"))
    probe = rows["base"]["probe"][0]
    out.append(("base probe pass@1 >= 60%", probe >= 0.60, f"{100 * probe:.1f}"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("outputs/headroom"))
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    started = time.perf_counter()
    config = pipeline.run_config(None, {"methods": ["sft", "grpo"], "seeds": args.seeds})
    result = pipeline.run(config, pipeline.stage_configs(None), args.run, Console())
    rows = {r["model"]: r for r in result["rows"]}
    failed = 0
    print(f"\nheadroom criteria ({args.seeds} seeds, {time.perf_counter() - started:.0f} s):")
    for name, ok, numbers in check(rows):
        failed += not ok
        print(f"  {'met' if ok else 'NOT MET':8} {name}: {numbers}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
