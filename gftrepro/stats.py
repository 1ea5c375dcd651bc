"""The statistics behind ``gft report``'s verdicts: paired intervals over seeds and problems.

A claim compares two models (or the mean of several, e.g. the middle taus) on one statistic. Two
sources of error move a difference of accuracies: which seeds trained the models (data order,
sampling) and which problems the held-out set happens to hold. For the held-out set the second
is several times larger than the first, so an interval over seeds alone is far too narrow.

- **Accuracy** (pass@k, the forgetting probe): per model a ``[seeds, problems]`` matrix of
  per-problem values (the unbiased pass@k of that problem's n samples). The difference of two
  models is paired: the same seeds (seed s of A against seed s of B) and the same problems.
  ``paired_bootstrap`` resamples seeds and problems independently (seeds and problems are crossed,
  not nested: every seed answers every problem; the "pigeonhole" bootstrap of Owen 2007, which
  errs on the wide side) and takes the 2.5 and 97.5 percentiles of the mean difference over
  ``REPLICATES`` replicates. Several benchmarks (probes) are resampled within each benchmark and
  macro-averaged, as the metric itself. With one seed only problems are resampled, and the
  interval leaves out training variance (the report says so).
- **One number per training run** (KL to the base, entropy): only seeds vary, so the interval is
  Student's t over the paired per-seed differences (``seed_interval``); a bootstrap over three
  values would be far too narrow. Fewer than ``MIN_SEEDS`` seeds: inconclusive by rule.

Verdicts (``verdict``), decided by the interval alone:

- ``above`` (A better than B): reproduced when the interval lies above 0, contradicted when it
  lies below 0, inconclusive when it straddles 0;
- ``not below`` (A at or above B, A keeps B): a non-inferiority test with the margin ``MARGIN``
  (1 point of accuracy), fixed here before any result: reproduced when the interval lies above
  -margin, contradicted when it lies wholly below -margin, else inconclusive.

A claim of several comparisons is reproduced when all are, contradicted when any is, else
inconclusive (an intersection-union test: no multiplicity correction is needed for "reproduced";
"contradicted" is not corrected for the number of comparisons, at most three per claim).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
REPLICATES = 4000
BOOTSTRAP_SEED = 20261203  # fixed: the same data always gives the same interval
MARGIN = 0.01  # non-inferiority margin on accuracy (pass@k, probe): 1 point
MIN_SEEDS = 3  # one number per run: fewer seeds than this cannot support a verdict

REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED = "reproduced", "contradicted", "inconclusive", "not measured"


@dataclass(frozen=True)
class Interval:
    """A difference (or a value) with its 95% interval, and what it rests on."""

    estimate: float
    low: float
    high: float
    seeds: int
    problems: int  # 0: seeds only (one number per run)

    @property
    def seeds_only(self) -> bool:
        return self.problems == 0


def paired_bootstrap(a: list[np.ndarray], b: list[np.ndarray], replicates: int = REPLICATES,
                     seed: int = BOOTSTRAP_SEED) -> Interval:
    """A - B for per-problem values, one ``[seeds, problems]`` matrix per benchmark for each model, the
    same seeds and problems (in the same order) for both; the statistic is the macro mean over the
    benchmarks of the mean over seeds and problems."""
    if not a or len(a) != len(b) or any(x.shape != y.shape or x.ndim != 2 or x.size == 0
                                        for x, y in zip(a, b, strict=False)):
        raise ValueError("paired_bootstrap needs matching non-empty [seeds, problems] matrices")
    n_seeds = a[0].shape[0]
    if any(x.shape[0] != n_seeds for x in a):
        raise ValueError("every benchmark must hold the same seeds")
    rng = np.random.default_rng(seed)
    w_seed = (rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=replicates) if n_seeds > 1
              else np.ones((replicates, 1), dtype=np.int64))
    reps = np.zeros(replicates)
    estimate = 0.0
    for x, y in zip(a, b, strict=True):
        d = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
        n_problems = d.shape[1]
        w_problem = rng.multinomial(n_problems, np.full(n_problems, 1 / n_problems), size=replicates)
        reps += ((w_seed @ d) * w_problem).sum(axis=1) / (n_seeds * n_problems)
        estimate += float(d.mean())
    reps /= len(a)
    low, high = np.quantile(reps, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Interval(estimate / len(a), float(low), float(high), n_seeds, sum(x.shape[1] for x in a))


def unpaired_bootstrap(a: np.ndarray, b: np.ndarray, replicates: int = REPLICATES,
                       seed: int = BOOTSTRAP_SEED) -> Interval:
    """A - B resampling each model's problems on their own (one seed, one benchmark): what ignoring the
    pairing would give; for comparison only (the report always pairs)."""
    rng = np.random.default_rng(seed)
    means = [np.asarray(x, dtype=np.float64).ravel() for x in (a, b)]
    reps = [m[rng.integers(0, m.size, size=(replicates, m.size))].mean(axis=1) for m in means]
    low, high = np.quantile(reps[0] - reps[1], [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return Interval(float(means[0].mean() - means[1].mean()), float(low), float(high), 1, means[0].size)


def seed_interval(a: np.ndarray, b: np.ndarray | None = None) -> Interval:
    """A - B (or A) for one number per training run, paired by seed: Student's t interval over the seeds;
    with one seed the interval is the point (and the verdict inconclusive by ``MIN_SEEDS``)."""
    d = np.asarray(a, dtype=np.float64) - (0.0 if b is None else np.asarray(b, dtype=np.float64))
    mean = float(d.mean())
    if d.size < 2:
        return Interval(mean, mean, mean, int(d.size), 0)
    half = float(scipy_stats.t.ppf((1 + LEVEL) / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    return Interval(mean, mean - half, mean + half, int(d.size), 0)


def verdict(interval: Interval, relation: str, margin: float = MARGIN) -> str:
    """The verdict of one comparison from its interval (module docstring)."""
    if interval.seeds_only and interval.seeds < MIN_SEEDS:
        return INCONCLUSIVE
    if relation == "above":
        bound = 0.0
    elif relation == "not below":
        bound = -margin
    else:
        raise ValueError(f"unknown relation {relation!r}")
    if interval.low > bound:
        return REPRODUCED
    if interval.high < bound:
        return CONTRADICTED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """A claim of several comparisons: reproduced if all are, contradicted if any is, else inconclusive."""
    if not verdicts or NOT_MEASURED in verdicts:
        return NOT_MEASURED
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return CONTRADICTED if CONTRADICTED in verdicts else INCONCLUSIVE
