"""Verdicts per second of the verify stage's scorer on 2,000 realistic (completion, gold) pairs.

    python benchmarks/verify_throughput.py [--pairs 2000]

The pairs mix correct and wrong answers, LaTeX-heavy ones (fractions, radicals, tuples,
intervals, units) and no-answer completions, each wrapped in a chain-of-thought paragraph; the
numbers are randomised so every pair is distinct (a cold cache really is cold). Measured: the
scorer (extraction here + math-verify in the deadline pool) with 1 and 2 worker processes, cold;
then the same pairs again through the warm cache; then a group-shaped set (8 samples per prompt
drawing from 3 answers) cold, where the cache removes the repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

from gftrepro.scoring import Scorer, judge_pool
from gftrepro.verify import VerifyConfig

COT = ("Let us think step by step. We first rewrite the expression and collect the terms; "
       "then we simplify each factor and check the result against the constraints.\n")


def answer_pair(rng: random.Random) -> tuple[str, str]:
    """(predicted answer, gold) of one of several shapes; about half are equivalent."""
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
    right = rng.random() < 0.5
    shapes = [
        (f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}" if right else f"\\frac{{{b}}}{{{a}}}"),
        (f"{c}\\sqrt{{{a}}}", f"\\sqrt{{{c * c * a}}}" if right else f"\\sqrt{{{c * a}}}"),
        (f"({a}, {b})", f"({a},{b})" if right else f"({b},{a})"),
        (f"[{a}, {a + b})", f"[{a},{a + b})" if right else f"({a},{a + b}]"),
        (f"{a}\\text{{ cm}}", str(a) if right else str(a + 1)),
        (f"x = {a}", str(a) if right else str(-a)),
        (f"{a}.5", f"\\frac{{{2 * a + 1}}}{{2}}" if right else f"\\frac{{{a}}}{{2}}"),
        (str(a * b), str(a * b) if right else str(a * b + c)),
    ]
    return rng.choice(shapes)


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, golds = [], []
    for i in range(n):
        pred, gold = answer_pair(rng)
        if i % 10 == 9:  # 10% no answer at all
            texts.append(COT + "I could not finish the computation.")
        else:
            texts.append(f"{COT}Therefore the final answer is $\\boxed{{{pred}}}$.")
        golds.append(f"{gold}")
    return texts, golds


def grouped_pairs(prompts: int, seed: int = 1) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, golds = [], []
    for _ in range(prompts):
        options = [answer_pair(rng) for _ in range(3)]
        gold = options[0][1]
        for _ in range(8):
            pred = rng.choice(options)[0]
            texts.append(f"{COT}So the answer is $\\boxed{{{pred}}}$.")
            golds.append(gold)
    return texts, golds


def timed(scorer: Scorer, texts: list[str], golds: list[str]) -> tuple[float, int]:
    before = scorer.judged
    t0 = time.perf_counter()
    scorer.score_all(texts, golds)
    return time.perf_counter() - t0, scorer.judged - before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2000)
    args = ap.parse_args()
    texts, golds = make_pairs(args.pairs)
    g_texts, g_golds = grouped_pairs(args.pairs // 8)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.pairs} pairs")
    print(f"{'setting':<34}{'seconds':>9}{'judged':>8}{'verdicts/s':>12}")
    rates = {}
    for workers in (1, 2):
        config = VerifyConfig(workers=workers)
        with judge_pool(workers, config.timeout) as pool:
            scorer = Scorer(config.fallbacks, pool)
            scorer.score_all(texts[:20], golds[:20])  # warm the workers' imports (not the measured pairs)
            scorer.cache.clear()
            for label, (t, g) in ((f"{workers} worker(s), cold", (texts, golds)),
                                  (f"{workers} worker(s), warm cache", (texts, golds))):
                seconds, judged = timed(scorer, t, g)
                rates[label] = len(t) / seconds
                print(f"{label:<34}{seconds:>9.2f}{judged:>8}{rates[label]:>12.0f}")
            scorer.cache.clear()
            label = f"{workers} worker(s), groups of 8, cold"
            seconds, judged = timed(scorer, g_texts, g_golds)
            rates[label] = len(g_texts) / seconds
            print(f"{label:<34}{seconds:>9.2f}{judged:>8}{rates[label]:>12.0f}")
    print(f"2 workers / 1 worker (cold): {rates['2 worker(s), cold'] / rates['1 worker(s), cold']:.2f}x")
    print(f"warm cache / cold (2 workers): {rates['2 worker(s), warm cache'] / rates['2 worker(s), cold']:.0f}x")


if __name__ == "__main__":
    main()
