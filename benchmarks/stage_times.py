"""Where a run's time goes: each stage's seconds and share, from the manifests the stages wrote.

    python benchmarks/stage_times.py --run outputs/default
    python benchmarks/stage_times.py --run outputs/paper-tiny --by method     # training split by method

Reads every complete version's manifest: sampling (``generation_seconds``), verify
(``verify_seconds``), training (``train_seconds_this_run`` of the run that finished it: a resumed
training counts its last part only), evaluation (``sampling_seconds_last_run``: sampling and scoring
of the last call that drew samples). Stages that record no time (build-groups: well under a second
on the miniature) are left out. Prints a table and a JSON line to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

FIELDS = {"sample-teacher": "generation_seconds", "sample-self": "generation_seconds", "verify": "verify_seconds",
          "train": "train_seconds_this_run"}


def stage_seconds(run: Path, by_method: bool = False) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for manifest in sorted(run.glob("*/*/manifest.json")):
        stage = manifest.parent.parent.name
        data = json.loads(manifest.read_text())
        if stage == "eval":
            seconds = data.get("sampling_seconds_last_run")
        else:
            seconds = data.get("summary", {}).get(FIELDS.get(stage, ""))
        if seconds is None:
            continue
        key = f"train {data['summary'].get('method', '?')}" if stage == "train" and by_method else stage
        out[key] += float(seconds)
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--by", choices=["stage", "method"], default="stage")
    args = ap.parse_args()
    seconds = stage_seconds(args.run, args.by == "method")
    total = sum(seconds.values()) or 1.0
    print(f"{'stage':<28}{'seconds':>10}{'share':>8}")
    for name, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"{name:<28}{s:>10.0f}{100 * s / total:>7.1f}%")
    print(f"{'total recorded':<28}{total:>10.0f}")
    print(json.dumps({"run": str(args.run), "seconds": {k: round(v, 1) for k, v in seconds.items()}}))


if __name__ == "__main__":
    main()
