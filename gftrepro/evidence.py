"""The evidence behind each comparison of ``gft report``: which data, which interval, which verdict.

A ``Check`` is ``A relation B`` on one metric (A and B may each be the mean of several models, e.g.
the middle taus). ``Evidence`` reads what a run recorded: per-problem values from the eval sample
shards named in ``summary.json`` (the main benchmark's pass@k, the probes' pass@1), and the per-seed
values of the summary (KL, entropy; any metric of a summary made without eval samples, over seeds
only). ``judge`` turns a claim's checks into its verdict with ``gftrepro.stats``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gftrepro import stats
from gftrepro.stats import MARGIN, NOT_MEASURED, Interval

SEED_METRICS = ("kl_to_base", "entropy")  # one number per training run: seeds only
PROBES = ("testbed-probe", "testbed-probe-hard", "mawps", "svamp", "mmlu_stem")  # prior skills (paper Table 3)


@dataclass(frozen=True)
class Check:
    """One comparison: the mean of models ``a`` relative to the mean of models ``b`` on ``metric``."""

    a: tuple[str, ...]
    b: tuple[str, ...]
    metric: str
    relation: str  # "above" or "not below"

    @classmethod
    def of(cls, a: str | tuple[str, ...], b: str | tuple[str, ...], metric: str, relation: str) -> Check:
        return cls((a,) if isinstance(a, str) else tuple(a), (b,) if isinstance(b, str) else tuple(b), metric,
                   relation)

    @property
    def label(self) -> str:
        def side(models: tuple[str, ...]) -> str:
            return models[0] if len(models) == 1 else "mean(" + ", ".join(models) + ")"
        return f"{side(self.a)} - {side(self.b)}"

    @property
    def margin(self) -> float:
        return MARGIN if self.relation == "not below" and self.metric not in SEED_METRICS else 0.0


class Evidence:
    """The run's data behind the checks: per-problem values from the eval shards (cached per folder) and
    per-seed values from the summary; rows without recorded eval samples fall back to seeds only."""

    def __init__(self, summary: list[dict], run_dir: Path | None):
        self.rows = {r["model"]: r for r in summary}
        self.run_dir = run_dir
        self.counts: dict[tuple[str, int], dict[str, int]] = {}  # (folder, n): correct samples per problem
        self.values: dict[tuple[str, int, int], dict[str, float]] = {}  # (folder, n, k): per-problem pass@k

    def has(self, model: str, metric: str) -> bool:
        row = self.rows.get(model, {})
        return metric in row.get("per_seed", {}) or metric in row

    def seeds(self, model: str) -> list:
        row = self.rows[model]
        return row.get("seed_ids") or list(range(row["seeds"]))

    def per_seed(self, model: str, metric: str) -> dict:
        values = self.rows[model].get("per_seed", {}).get(metric)
        if values is None:  # a hand-made summary with only (mean, spread)
            values = [self.rows[model][metric][0]]
        return dict(zip(self.seeds(model), values, strict=False))

    def shards_for(self, models: tuple[str, ...]) -> bool:
        return self.run_dir is not None and all("eval_folders" in self.rows[m] for m in models)

    def problem_values(self, model: str, seed, bench: str, k: int) -> dict[str, float] | None:
        from gftrepro.evaluate import correct_counts
        from gftrepro.metrics import pass_at_k

        row = self.rows[model]
        i = self.seeds(model).index(seed)
        folder, n = row["eval_folders"][i].get(bench), row["n"][i]
        if folder is None or k > n:
            return None
        key = (folder, n, k)
        if key not in self.values:  # every claim of the report reads the same folders again
            if (folder, n) not in self.counts:
                self.counts[(folder, n)] = correct_counts(self.run_dir / folder, n)
            counts = self.counts[(folder, n)]
            values = pass_at_k(n, np.array(list(counts.values()), dtype=np.int64), k) if counts else []
            self.values[key] = dict(zip(counts, np.atleast_1d(values).tolist(), strict=True))
        return self.values[key]

    def interval(self, check: Check) -> Interval | str:
        """The check's interval, or why it cannot be made."""
        models = check.a + check.b
        if check.metric in SEED_METRICS or not self.shards_for(models):
            per = {m: self.per_seed(m, check.metric) for m in models}
            seeds = sorted(set.intersection(*(set(v) for v in per.values())), key=str)
            if not seeds:
                return "no seed common to " + ", ".join(models)

            def mean_of(side):
                if not side:
                    return np.zeros(len(seeds))
                return np.mean([[per[m][s] for s in seeds] for m in side], axis=0)
            return stats.seed_interval(mean_of(check.a), mean_of(check.b))
        seeds = sorted(set.intersection(*(set(self.seeds(m)) for m in models)), key=str)
        if not seeds:
            return "no seed common to " + ", ".join(models)
        benches, k = self.benchmarks(check)
        a_mats, b_mats = [], []
        for bench in benches:
            values = {(m, s): self.problem_values(m, s, bench, k) for m in models for s in seeds}
            if any(v is None for v in values.values()):
                return f"{bench} pass@{k} not evaluated for every model"
            pids = sorted(set.intersection(*(set(v) for v in values.values())))
            if not pids:
                return f"no {bench} problem complete for every model"

            def matrix(side, values=values, pids=pids):
                if not side:  # one model's own value: against 0
                    return np.zeros((len(seeds), len(pids)))
                return np.mean([[[values[(m, s)][p] for p in pids] for s in seeds] for m in side], axis=0)
            a_mats.append(matrix(check.a))
            b_mats.append(matrix(check.b))
        return stats.paired_bootstrap(a_mats, b_mats)

    def benchmarks(self, check: Check) -> tuple[list[str], int]:
        """The benchmarks and k behind an accuracy metric: the main benchmark's pass@k, or the probes' pass@1."""
        folders = self.rows[check.a[0]]["eval_folders"][0]
        if check.metric == "probe":
            return [b for b in PROBES if b in folders], 1
        return [next(iter(folders))], int(check.metric.split("@")[1])


def fmt(metric: str, x: float) -> str:
    return f"{x:+.4f}" if metric in SEED_METRICS else f"{100 * x:+.1f}"


def fmt_interval(metric: str, iv: Interval) -> str:
    return f"{fmt(metric, iv.estimate)} [{fmt(metric, iv.low)}, {fmt(metric, iv.high)}]"


def judge(evidence: Evidence, checks: list[Check], needs: str) -> dict:
    """The claim's verdict, the text of our numbers, what it rests on and each comparison's interval."""
    if not checks:
        return {"verdict": NOT_MEASURED, "ours": needs, "seeds": 0, "problems": 0, "checks": []}
    missing = sorted({m for c in checks for m in c.a + c.b if not evidence.has(m, c.metric)})
    if missing:
        return {"verdict": NOT_MEASURED, "ours": "needs " + ", ".join(missing) + " in the run", "seeds": 0,
                "problems": 0, "checks": []}
    ivs = [evidence.interval(c) for c in checks]
    for iv in ivs:
        if isinstance(iv, str):
            return {"verdict": NOT_MEASURED, "ours": iv, "seeds": 0, "problems": 0, "checks": []}
    verdicts, parts, made, notes = [], [], [], set()
    for c, iv in zip(checks, ivs, strict=True):
        verdicts.append(stats.verdict(iv, c.relation, c.margin))
        unit = "" if c.metric in SEED_METRICS else " points"
        parts.append(f"{c.metric}: {c.label} = {fmt_interval(c.metric, iv)}{unit}")
        made.append({"label": c.label, "metric": c.metric, "relation": c.relation, "margin": c.margin,
                     "estimate": iv.estimate, "low": iv.low, "high": iv.high, "verdict": verdicts[-1]})
        if iv.seeds_only and iv.seeds < stats.MIN_SEEDS:
            notes.add(f"{c.metric}: one number per run, fewer than {stats.MIN_SEEDS} seeds: inconclusive by rule")
        elif iv.seeds_only and c.metric not in SEED_METRICS:
            notes.add("no eval samples recorded: interval over seeds only")
        elif not iv.seeds_only and iv.seeds == 1:
            notes.add("one seed: training variance is not in the interval")
    return {"verdict": stats.combine(verdicts), "ours": "; ".join(parts), "notes": sorted(notes), "checks": made,
            "seeds": min(iv.seeds for iv in ivs), "problems": max(iv.problems for iv in ivs)}
