"""Pass@k, avg@n and maj@k from per-sample verdicts.

- ``pass_at_k(n, c, k)``: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k),
  as the product 1 - prod_{i=n-c+1..n} (1 - k/i), never with binomials (n = 256 would overflow
  them). Works on Python numbers and on numpy arrays (broadcast), through a table of cumulative
  log(1 - k/i) per k, so 15,000 problems x 256 samples take milliseconds.
- ``avg@n``: mean correctness over all n samples of a problem (the paper's "Pass@16 Average").
- ``maj@k``: the most frequent extracted answer among the first k samples (ties: the one seen
  first) counts as the problem's answer.
- Benchmarks are averaged per problem; across benchmarks the macro mean is reported, as the paper.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def pass_at_k(n, c, k):
    """Unbiased pass@k for n samples with c correct (scalars or arrays; k <= n required)."""
    n_arr, c_arr, k_arr = (np.asarray(x, dtype=np.int64) for x in (n, c, k))
    n_b, c_b, k_b = np.broadcast_arrays(n_arr, c_arr, k_arr)
    if np.any(k_b < 1) or np.any(k_b > n_b) or np.any(c_b < 0) or np.any(c_b > n_b):
        raise ValueError("pass_at_k needs 1 <= k <= n and 0 <= c <= n")
    out = np.ones(n_b.shape, dtype=np.float64)
    some_wrong = (n_b - c_b) >= k_b  # else every k-subset holds a correct sample: 1
    for k_value in np.unique(k_b[some_wrong]):
        sel = some_wrong & (k_b == k_value)
        top = int(n_b[sel].max())
        i = np.arange(1, top + 1, dtype=np.float64)
        terms = np.zeros_like(i)
        terms[i > k_value] = np.log1p(-k_value / i[i > k_value])
        cum = np.concatenate([[0.0], np.cumsum(terms)])  # cum[m] = sum_{i=k+1..m} log(1 - k/i)
        out[sel] = 1.0 - np.exp(cum[n_b[sel]] - cum[n_b[sel] - c_b[sel]])
    return float(out) if out.ndim == 0 else out


def ks_up_to(n: int, extra: Sequence[int] = ()) -> list[int]:
    """1, 2, 4, ... up to n, plus n and any requested k <= n."""
    ks = {1 << i for i in range(n.bit_length()) if 1 << i <= n} | {n} | {k for k in extra if 1 <= k <= n}
    return sorted(ks)


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Is the most frequent answer (first seen wins ties) a correct one? No answer at all: wrong."""
    seen = [(a, ok) for a, ok in zip(answers, correct, strict=True) if a is not None]
    if not seen:
        return False
    counts = Counter(a for a, _ in seen)
    best = max(counts.values())
    winner = next(a for a, _ in seen if counts[a] == best)
    return any(ok for a, ok in seen if a == winner)


def benchmark_metrics(correct: np.ndarray, answers: list[list[str | None]], ks: Sequence[int]) -> dict:
    """Metrics of one benchmark from a [problems, n] correctness matrix and the extracted answers."""
    problems, n = correct.shape
    c = correct.sum(axis=1)
    out: dict = {"problems": int(problems), "n": int(n), f"avg@{n}": float(correct.mean())}
    for k in ks:
        out[f"pass@{k}"] = float(np.mean(pass_at_k(n, c, k)))
        out[f"maj@{k}"] = float(np.mean([majority_correct(a[:k], correct[i, :k]) for i, a in enumerate(answers)]))
    return out


def macro_average(per_benchmark: dict[str, dict]) -> dict:
    """Mean over benchmarks of every metric they all have."""
    keys = set.intersection(*(set(m) for m in per_benchmark.values())) - {"problems", "n"}
    return {k: float(np.mean([m[k] for m in per_benchmark.values()])) for k in sorted(keys)}
