"""Stage ``verify``: a reward for every completion (and every expert solution) of a run.

Reads: the latest complete ``sample-teacher`` and ``sample-self`` versions of the run (or the
versions named with ``--teacher-version`` / ``--self-version``), their ``problems.parquet``
(gold answers, expert solutions) and completion shards.
Writes: ``<run>/verify/<version>/`` with one reward shard per input shard (expert solutions first,
then teacher, then self): ``prompt_id``, ``sample_idx``, ``source``, ``reward``, ``status``,
``extracted``, ``gold``; ``manifest.json`` last.

    gft verify
    gft verify --workers 16 --timeout 5

Where this departs from the authors' code:

1. Their reward is Qwen2.5-Math's ``extract_answer`` + ``math_equal``; here it is our
   extraction plus Hugging Face's math-verify (``gftrepro/answers.py``), run in killable worker
   processes under a wall-clock deadline per answer (status ``timeout`` instead of a hang).
2. Verdicts are cached by (extracted answer, gold) for the whole stage: a group's samples often
   repeat an answer, and the cache makes repeats nearly free.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gftrepro import schema, store
from gftrepro.answers import FALLBACKS, STATUSES, found_by
from gftrepro.config import opt
from gftrepro.errors import GftError
from gftrepro.scoring import Scorer, found_line, gold_map, judge_pool, read_columns
from gftrepro.stage import already_done, done_line, open_stage, writing

SAMPLED = ("teacher", "self")


@dataclass(frozen=True)
class VerifyConfig:
    sources: list[str] = opt(["expert", "teacher", "self"], "what to score: expert solutions, teacher, self samples")
    teacher_version: str = opt("", "sample-teacher version to read ('' = the latest complete one)", versioned=False)
    self_version: str = opt("", "sample-self version to read ('' = the latest complete one)", versioned=False)
    fallbacks: list[str] = opt(list(FALLBACKS), "answer extraction after \\boxed{}: answer_is, last_number")
    timeout: float = opt(5.0, "wall-clock seconds per answer before its worker is killed (status timeout)")
    workers: int = opt(2, "verifier worker processes", versioned=False)

    def validate(self) -> None:
        unknown = [s for s in self.sources if s not in schema.SOURCES]
        if unknown or not self.sources:
            raise GftError(f"sources must be a non-empty subset of {', '.join(schema.SOURCES)}, got {self.sources}")
        bad = [f for f in self.fallbacks if f not in FALLBACKS]
        if bad:
            raise GftError(f"unknown fallback {bad[0]!r} (known: {', '.join(FALLBACKS)})")
        if not (math.isfinite(self.timeout) and self.timeout > 0) or self.workers < 1:
            raise GftError(f"timeout must be a finite number of seconds > 0 and workers >= 1, got {self.timeout} "
                           f"and {self.workers}")


@dataclass(frozen=True)
class Unit:
    """One input shard (or the expert solutions) -> one reward shard."""

    source: str
    path: Path  # a completion shard, or problems.parquet for the expert solutions


def input_versions(config: VerifyConfig, run_dir: Path) -> dict[str, store.VersionDir]:
    """The sampling versions to score: named ones, else the latest complete one per source."""
    chosen = {}
    for source in SAMPLED:
        stage, wanted = f"sample-{source}", getattr(config, f"{source}_version")
        if wanted or source in config.sources:
            chosen[source] = store.chosen_version(run_dir, stage, wanted)
    if not chosen:  # expert solutions only: any complete sampling stage holds the problems
        for source in SAMPLED:
            if any(v.manifest_path.exists() for v in store.versions(run_dir, f"sample-{source}")):
                chosen[source] = store.latest_complete(run_dir, f"sample-{source}")
                break
    if not chosen:
        raise GftError(f"no complete sampling stage in {run_dir}: run `gft sample-teacher` or `gft sample-self` first")
    return chosen






def plan_units(config: VerifyConfig, versions: dict[str, store.VersionDir]) -> list[Unit]:
    units = []
    if "expert" in config.sources:
        units.append(Unit("expert", next(iter(versions.values())).path / "problems.parquet"))
    for source in SAMPLED:
        if source in config.sources and source in versions:
            units.extend(Unit(source, p) for p in versions[source].shard_paths())
    return units


def unit_rows(unit: Unit, problems: pa.Table) -> tuple[list[str], list[int], list[object], list[bool]]:
    """prompt_ids, sample_idx, texts to score for one unit, and whether each text ended by itself (an
    expert solution always did)."""
    if unit.source == "expert":
        pids = problems.column("prompt_id").to_pylist()
        solutions = problems.column("solution").to_pylist()
        seen, keep = set(), []
        for i, pid in enumerate(pids):
            if pid not in seen and isinstance(solutions[i], str):
                seen.add(pid)
                keep.append(i)
        return [pids[i] for i in keep], [0] * len(keep), [solutions[i] for i in keep], [True] * len(keep)
    t = read_columns(unit.path, ["prompt_id", "sample_idx", "completion"])
    finish = read_columns(unit.path, ["finish_reason"]).column(0).to_pylist() \
        if "finish_reason" in pq.read_schema(unit.path).names else [None] * t.num_rows  # completions from elsewhere
    stopped = [f != "length" for f in finish]
    return (t.column("prompt_id").to_pylist(), t.column("sample_idx").to_pylist(), t.column("completion").to_pylist(),
            stopped)




def summarize(vdir: store.VersionDir, seconds: float) -> dict:
    counts: dict[str, dict[str, int]] = {}
    found: dict[str, dict[str, int]] = {}
    for path in sorted(vdir.path.glob("shard-*.parquet")):  # finalize checks every shard is there
        t = pq.read_table(path, columns=["source", "status", "found_by"])
        for source, status, how in zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True):
            row = counts.setdefault(source, dict.fromkeys(STATUSES, 0))
            row[status] += 1
            found.setdefault(source, {})[how] = found.get(source, {}).get(how, 0) + 1
    return {"by_source": counts, "found_by": found, "verify_seconds": seconds}


def summary_line(manifest: dict) -> str:
    """Accuracy per source, then what did not score as a clean answer (counted, never a crash)."""
    s = manifest["summary"]
    total = sum(sum(c.values()) for c in s["by_source"].values())
    parts = [f"{source} {c['correct'] / max(sum(c.values()), 1):.0%}" for source in schema.SOURCES
             if (c := s["by_source"].get(source))]
    odd = {k: sum(c[k] for c in s["by_source"].values()) for k in ("no_answer", "timeout", "error")}
    unclean = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in odd.items() if v) or "all answered"
    return f"{total} scored; correct: {', '.join(parts)}; {unclean}" + found_line(s.get("found_by", {}), "expert")




def run(config: VerifyConfig, run_dir: Path, console: Console | None = None) -> dict:
    console = console or Console()
    versions = input_versions(config, run_dir)
    inputs = {f"sample-{s}": v.version for s, v in versions.items()}
    vdir = open_stage(run_dir, "verify", config, inputs, console)
    if vdir.is_complete(hashes=True):
        return already_done(vdir, console, summary_line)
    with writing(vdir, console):
        return write_version(config, versions, vdir, console)


def write_version(config: VerifyConfig, versions: dict[str, store.VersionDir], vdir: store.VersionDir,
                  console: Console) -> dict:
    gold, problems = gold_map(versions)
    units = plan_units(config, versions)
    todo = [k for k in range(len(units)) if k not in vdir.done_shards()]
    if len(todo) != len(units):
        console.print(f"resuming: {len(units) - len(todo)} of {len(units)} shards already scored")
    started = time.perf_counter()
    with judge_pool(config.workers, config.timeout) as pool, \
            Progress(TextColumn("[bold]verify"), BarColumn(), TextColumn("{task.completed}/{task.total} shards"),
                     TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                     console=console, transient=True, disable=not console.is_terminal) as bar:
        scorer, answered = Scorer(config.fallbacks, pool), 0
        task = bar.add_task("verify", total=len(todo), rate="")
        for k in todo:
            unit = units[k]
            pids, idx, texts, stopped = unit_rows(unit, problems)
            golds = [gold.get(p) for p in pids]
            t0 = time.perf_counter()
            verdicts = scorer.score_all(texts, golds, stopped)
            answered += len(verdicts)
            cols = {"prompt_id": pids, "sample_idx": idx, "source": [unit.source] * len(pids),
                    "reward": [1.0 if v.correct else 0.0 for v in verdicts], "status": [v.status for v in verdicts],
                    "extracted": [v.extracted for v in verdicts],
                    "found_by": [found_by(t, scorer.fallbacks(ok)) for t, ok in zip(texts, stopped, strict=True)],
                    "gold": golds}
            store.write_table(vdir.shard_path(k, len(units)), schema.table(cols, schema.REWARDS),
                              {"verify_seconds": time.perf_counter() - t0, "input": str(unit.path)})
            rate = answered / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:.0f} answers/s, cache {len(scorer.cache)}")
    seconds = sum(store.shard_metadata(p).get("verify_seconds", 0.0) for p in vdir.path.glob("shard-*.parquet"))
    manifest = store.finalize(vdir, len(units), {"summary": summarize(vdir, seconds)})
    assert manifest is not None  # this process wrote every shard
    if units[0].source == "expert":
        report_expert_failures(vdir.shard_path(0, len(units)), console)
    done_line(console, summary_line(manifest))
    return manifest


def report_expert_failures(expert_shard: Path, console: Console) -> None:
    """Expert solutions should all score correct; any that do not point at data or extraction bugs."""
    bad = [r for r in pq.read_table(expert_shard).to_pylist() if r["status"] != "correct"]
    if bad:
        console.print(f"[yellow]warning[/yellow]: {len(bad)} expert solutions did not verify (data or extraction "
                      f"problem); first: prompt_id {bad[0]['prompt_id']} status {bad[0]['status']} "
                      f"extracted {bad[0]['extracted']!r} gold {bad[0]['gold']!r}")
