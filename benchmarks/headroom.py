"""Does the embedded miniature have room to move? The criteria of the miniature, on the baselines only.

    python benchmarks/headroom.py                      # gft run --methods sft,grpo --seeds 3, then the checks
    python benchmarks/headroom.py --run outputs/default # reuse a run's finished stages (same settings)

Criteria (held-out pass@1 and the probe, 3 seeds):
- SFT on the expert solutions: at least 5 points above the base, and the 95% interval of the
  difference (gft report's paired bootstrap over seeds and problems) wholly above 0;
- on-policy GRPO: the same;
- the out-of-domain probe (testbed-probe-hard): the base between 60% and 90% pass@1, so that
  forgetting (and its absence) can show.
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
from gftrepro.evidence import Check, Evidence, fmt_interval


def check(summary: list[dict], run_dir: Path) -> list[tuple[str, bool, str]]:
    evidence, out = Evidence(summary, run_dir), []
    for method in ("sft", "grpo"):
        iv = evidence.interval(Check.of(method, "base", "pass@1", "above"))
        ok = not isinstance(iv, str) and iv.estimate >= 0.05 and iv.low > 0
        out.append((f"{method} pass@1 >= base + 5 points, interval above 0", ok,
                    iv if isinstance(iv, str) else f"{method} - base = {fmt_interval('pass@1', iv)} points "
                    f"({iv.seeds} seeds x {iv.problems} problems)"))
    probe = evidence.rows["base"]["probe"][0]
    out.append(("base probe pass@1 in [60%, 90%]", 0.60 <= probe <= 0.90, f"{100 * probe:.1f}"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("outputs/headroom"))
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    started = time.perf_counter()
    config = pipeline.run_config(None, {"methods": ["sft", "grpo"], "seeds": args.seeds})
    result = pipeline.run(config, pipeline.stage_configs(None), args.run, Console())
    failed = 0
    print(f"\nheadroom criteria ({args.seeds} seeds, {time.perf_counter() - started:.0f} s):")
    for name, ok, numbers in check(result["rows"], args.run):
        failed += not ok
        print(f"  {'met' if ok else 'NOT MET':8} {name}: {numbers}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
