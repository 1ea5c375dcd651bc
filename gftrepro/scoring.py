"""Answer scoring shared by verify, on-policy training and eval: gold answers from a problems table, and
``Scorer``: extraction in this process, equivalence (math-verify) in killable worker processes under a
wall-clock deadline, verdicts cached by (answer, gold) pair."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gftrepro import schema, store
from gftrepro.answers import Verdict, extract_answer, finite_gold, gold_answer, judge
from gftrepro.errors import GftError
from gftrepro.pool import TIMED_OUT, DeadlinePool


def judge_pool(workers: int, timeout: float) -> DeadlinePool:
    """The deadline pool that runs ``answers.judge``, its workers started with math-verify imported."""
    return DeadlinePool(judge, workers, timeout, preload=["math_verify", "gftrepro.answers"])


def read_columns(path: Path, columns: list[str]) -> pa.Table:
    """Read ``columns`` of a Parquet file, or raise naming the file and the problem."""
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid) as e:
        raise GftError(f"cannot read {path}: {e}") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise GftError(f"{path} has no column '{missing[0]}' (columns: {', '.join(names)})")
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid) as e:  # e.g. invalid UTF-8 in a string column
        raise GftError(f"cannot read {path}: {e}") from None


def gold_map(versions: dict[str, store.VersionDir]) -> tuple[dict[str, str | None], pa.Table]:
    """prompt_id -> gold answer (the answer field, else the solution's last \\boxed{})."""
    tables = [read_columns(v.path / "problems.parquet", schema.PROBLEMS.names) for v in versions.values()]
    problems = pa.concat_tables(tables)
    gold: dict[str, str | None] = {}
    for pid, solution, answer in zip(*(problems.column(c).to_pylist() for c in ("prompt_id", "solution", "answer")),
                                     strict=True):
        if isinstance(answer, str) and answer.strip():
            gold[pid] = finite_gold(gold_answer(answer))
        elif isinstance(solution, str) and solution.strip():
            gold.setdefault(pid, finite_gold(gold_answer(solution)))
        else:
            gold.setdefault(pid, None)
    if not any(gold.values()):
        raise GftError("the problems have no gold answers: neither an answer field nor a solution with \\boxed{} "
                       "(set --answer-field / --solution-field when sampling)")
    return gold, problems


class Scorer:
    """Extraction in this process, equivalence in the deadline pool, verdicts cached by answer pair."""

    def __init__(self, fallbacks: Sequence[str], pool: DeadlinePool | None):
        self.fallback_order, self.pool = tuple(fallbacks), pool
        self.cache: dict[tuple[str, str], Verdict] = {}
        self.judged = 0

    def fallbacks(self, stopped: bool) -> tuple[str, ...]:
        """A text cut at the token cap is scored only by an explicit \\boxed{} answer: the last number of a
        text cut mid-sentence is not an answer."""
        return self.fallback_order if stopped else ()

    def score_all(self, texts: list[object], golds: list[str | None], stopped: list[bool] | None = None
                  ) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(texts)
        todo: dict[tuple[str, str], list[int]] = {}
        for i, (text, gold) in enumerate(zip(texts, golds, strict=True)):
            if not isinstance(text, str) or gold is None:
                verdicts[i] = Verdict(False, "error", None)
                continue
            pred = extract_answer(text, self.fallbacks(stopped is None or stopped[i]))
            if pred is None:
                verdicts[i] = Verdict(False, "no_answer", None)
            elif (pred, gold) in self.cache:
                verdicts[i] = self.cache[(pred, gold)]
            else:
                todo.setdefault((pred, gold), []).append(i)
        for key, ok, result in self.pool.run((k, k) for k in todo):
            self.judged += 1
            if result is TIMED_OUT:
                verdict = Verdict(False, "timeout", key[0])
            else:
                verdict = result if ok else Verdict(False, "error", key[0])
            self.cache[key] = verdict
            for i in todo[key]:
                verdicts[i] = verdict
        return verdicts  # type: ignore[return-value]


def found_line(found: dict[str, dict[str, int]], skip: str = "") -> str:
    """'; answers: 3 boxed, 20 by fall-back, 9 none' over the model-written sources."""
    total: dict[str, int] = {}
    for source, counts in found.items():
        if source != skip:
            for how, n in counts.items():
                total[how] = total.get(how, 0) + n
    if not total:
        return ""
    fallback = sum(n for how, n in total.items() if how not in ("boxed", "none"))
    if not fallback and not total.get("none"):
        return ""  # every answer boxed: nothing to say
    return f"; answers: {total.get('boxed', 0)} boxed, {fallback} by fall-back, {total.get('none', 0)} none"
