"""Stage ``eval``: n samples per benchmark problem, verified, and avg@n / pass@k / maj@k tables.

Reads: a model (``testbed:<name>``, a ``gft train`` model folder, a hub id) and benchmarks
(``gftrepro.evalsets``: the bundled testbed split, local copies in ``--benchmark-dir``, or the
hub). Writes ``<run>/eval/<version>/``:

- ``<benchmark>/problems.parquet`` and ``<benchmark>/shard-pXXXXX-sAAAAA-BBBBB.parquet``: samples
  AAAAA..BBBBB-1 of problem block XXXXX, with their verdicts (``correct``, ``status``,
  ``extracted``, ``finish_reason``);
- ``metrics-n<N>.json``, ``report-n<N>.md``, ``passk-n<N>.png``; ``manifest.json`` last.

``version`` hashes the model and the sampling settings but not n, k or the benchmark list:
samples are seeded per (problem, sample index), so ``--pass-k 256`` after ``--pass-k 128`` draws
only samples 128..255, and a crash loses at most one shard.

    gft eval                                            # tiny student on the bundled test split
    gft eval --model outputs/default/train/<version>/model --benchmarks math500,minerva_math --pass-k 128
    gft eval --model Qwen/Qwen2.5-Math-1.5B --benchmarks paper --n 16 --temperature 0.5
    gft eval --compare outputs/runA/eval,outputs/runB/eval

Where this departs from the paper's harness:

1. New tokens are capped at context - prompt (Qwen2.5-Math has 4,096 tokens in total, so "4,096
   new tokens" cannot fit); the number of capped samples is reported, and a sample that ends
   without a stop token counts as wrong.
2. pass@k is the unbiased estimator over n samples (not the first sample's accuracy, not a
   bootstrapped best-of-k).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from gftrepro import store
from gftrepro.answers import FALLBACKS, found_by, normalise
from gftrepro.backends import GenerationOptions, Request, SamplingParams, make_backend, sample_seed
from gftrepro.config import opt
from gftrepro.errors import GftError
from gftrepro.evalsets import Benchmark, load_benchmark, resolve_names
from gftrepro.metrics import benchmark_metrics, ks_up_to, macro_average
from gftrepro.models import load_tokenizer, resolve_model, stop_token_ids
from gftrepro.prompts import format_prompt
from gftrepro.scoring import Scorer, found_line, judge_pool
from gftrepro.stage import done_line, open_stage, verbose, writing

MC_PROMPT = ("Please reason step by step, and put the letter of the correct option (A, B, C, ...) "
             "within \\boxed{}.")
SHARD_RE = re.compile(r"^shard-p(\d{5})-s(\d{5})-(\d{5})\.parquet$")
SAMPLES = pa.schema([("prompt_id", pa.string()), ("sample_idx", pa.int32()), ("completion", pa.string()),
                     ("completion_tokens", pa.int32()), ("finish_reason", pa.string()), ("correct", pa.bool_()),
                     ("status", pa.string()), ("extracted", pa.string()), ("found_by", pa.string()),
                     ("gold", pa.string())])


@dataclass(frozen=True)
class EvalConfig(GenerationOptions):
    """Generation settings (``GenerationOptions``) plus what to evaluate."""

    model: str = opt("testbed:student", "model: testbed:<name>, a local folder (a gft train model), or a hub id")
    benchmarks: list[str] = opt(["testbed", "testbed-probe-hard"], "benchmark names (the first is the main one), or "
                                "'paper' for the paper's 11", versioned=False)
    benchmark_dir: str = opt("", "folder with <benchmark>/test.jsonl copies ('' = data/benchmarks, then the hub)",
                             versioned=False)
    limit: int = opt(0, "first N problems of each benchmark (0 = all)", versioned=False)
    pass_k: int = opt(16, "largest k reported (pass@1, 2, 4, ... up to it)", versioned=False)
    n: int = opt(0, "samples per problem (0 = pass_k)", versioned=False)
    mc_system_prompt: str = opt(MC_PROMPT, "system prompt of multiple-choice benchmarks")
    shard_size: int = opt(64, "problems per shard")
    workers: int = opt(2, "verifier processes", versioned=False)
    timeout: float = opt(5.0, "seconds per verdict before its worker is killed", versioned=False)
    compare: list[str] = opt([], "compare finished evaluations (eval folders) instead of evaluating",
                             versioned=False)
    report_to: list[str] = opt([], "experiment trackers for the final metrics and plot: tensorboard, mlflow, wandb, "
                               "trackio (optional extras; local and offline by default)", versioned=False)

    @property
    def samples(self) -> int:
        return self.n or self.pass_k

    def validate(self) -> None:
        if self.report_to:
            from gftrepro.trackers import names_of

            names_of(self.report_to)
        self.validate_generation()
        if self.compare:
            return
        if self.pass_k < 1 or self.n < 0:
            raise GftError(f"--pass-k must be at least 1 (got {self.pass_k}) and --n at least 0 (0 = pass-k; "
                           f"got {self.n})")
        if not self.pass_k <= self.samples:
            raise GftError(f"pass_k must be in [1, n]: k = {self.pass_k} > n = {self.samples}")
        self.validate_samples(self.samples)
        if self.limit < 0 or self.shard_size < 1:
            raise GftError("limit must be >= 0 and shard_size >= 1")


def sample_ranges(folder: Path) -> dict[int, int]:
    """{problem block: samples present} (ranges are written contiguously from 0)."""
    have: dict[int, int] = {}
    if folder.is_dir():
        for entry in folder.iterdir():
            m = SHARD_RE.match(entry.name)
            if m:
                block, end = int(m.group(1)), int(m.group(3))
                have[block] = max(have.get(block, 0), end)
    return have


def folder_name(benchmark: str, limit: int) -> str:
    """The folder of a benchmark's samples inside an eval version (limit is not versioned: its own folder)."""
    return benchmark if not limit else f"{benchmark}-first{limit}"


def bench_folder(vdir: store.VersionDir, bench: Benchmark, limit: int) -> Path:
    return vdir.path / folder_name(bench.name, limit)


def correct_counts(folder: Path, n: int) -> dict[str, int]:
    """{prompt_id: correct samples among samples 0..n-1} for every problem whose n samples are all in the
    folder's shards (a sample counted once, whatever the shards' order or overlap): ``gft report``'s
    per-problem data."""
    seen: dict[tuple[str, int], bool] = {}
    for path in sorted(folder.glob("shard-p*.parquet")):
        t = pq.read_table(path, columns=["prompt_id", "sample_idx", "correct"])
        for pid, j, ok in zip(*(t.column(c).to_pylist() for c in ("prompt_id", "sample_idx", "correct")), strict=True):
            if j < n:
                seen[(pid, j)] = bool(ok)
    counts: dict[str, list[int]] = {}
    for (pid, _), ok in seen.items():
        c = counts.setdefault(pid, [0, 0])
        c[0] += ok
        c[1] += 1
    return {pid: c for pid, (c, m) in counts.items() if m == n}


def missing_jobs(problems: list[dict], folder: Path, shard_size: int, n: int) -> list[tuple[int, int, int]]:
    """(problem block, first sample, end sample) still to draw."""
    have = sample_ranges(folder)
    blocks = -(-len(problems) // shard_size)
    return [(k, have.get(k, 0), n) for k in range(blocks) if have.get(k, 0) < n]


def sample_block(backend, scorer: Scorer, problems: list[dict], prompts: list[list[int]], job: tuple[int, int, int],
                 config: EvalConfig, params: SamplingParams, progress) -> pa.Table:
    k, start, end = job
    rows = range(k * config.shard_size, min((k + 1) * config.shard_size, len(problems)))
    requests, keys = [], []
    for i in rows:
        for j in range(start, end):
            requests.append(Request(prompts[i], sample_seed(config.seed, problems[i]["prompt_id"], j)))
            keys.append((i, j))
    samples = backend.generate(requests, params, progress)
    verdicts = scorer.score_all([s.text for s in samples], [problems[i]["gold"] for i, _ in keys],
                                [s.finish_reason == "stop" for s in samples])
    cols = {
        "prompt_id": [problems[i]["prompt_id"] for i, _ in keys], "sample_idx": [j for _, j in keys],
        "completion": [s.text for s in samples], "completion_tokens": [len(s.token_ids) for s in samples],
        "finish_reason": [s.finish_reason for s in samples],
        "correct": [v.correct and s.finish_reason == "stop" for v, s in zip(verdicts, samples, strict=True)],
        "status": [v.status if s.finish_reason == "stop" else "truncated" for v, s in zip(verdicts, samples,
                                                                                             strict=True)],
        "extracted": [v.extracted for v in verdicts],
        "found_by": [found_by(s.text, scorer.fallbacks(s.finish_reason == "stop")) for s in samples],
        "gold": [problems[i]["gold"] for i, _ in keys],
    }
    return pa.Table.from_pydict(cols, schema=SAMPLES)


def collect(folder: Path, problems: list[dict], n: int) -> tuple[np.ndarray, list[list[str | None]], int,
                                                                 dict[str, int]]:
    """[problems, n] correctness, extracted answers, how many samples hit the token cap, and how the
    answers of the others were found (boxed / a fall-back / none)."""
    index = {p["prompt_id"]: i for i, p in enumerate(problems)}
    correct = np.zeros((len(problems), n), dtype=bool)
    answers: list[list[str | None]] = [[None] * n for _ in problems]
    capped, found = 0, Counter()
    for path in sorted(folder.glob("shard-p*.parquet")):
        names = ["prompt_id", "sample_idx", "correct", "extracted", "finish_reason"]
        t = pq.read_table(path, columns=names + [c for c in ("found_by",) if c in pq.read_schema(path).names])
        hows = t.column("found_by").to_pylist() if "found_by" in t.column_names else [None] * t.num_rows
        for pid, j, ok, ans, fin, how in zip(*(t.column(c).to_pylist() for c in names), hows, strict=True):
            if pid in index and j < n:
                correct[index[pid], j] = ok
                answers[index[pid]][j] = normalise(ans) if ans is not None and fin == "stop" else None
                capped += fin == "length"
                if fin == "stop" and how is not None:
                    found[how] += 1
    return correct, answers, capped, dict(found)


def run(config: EvalConfig, run_dir: Path, console: Console | None = None, show_table: bool = True) -> dict:
    """Sample, score and report; ``show_table``: print the metrics table (``gft eval``) or only the summary
    line (inside ``gft run``, whose own table follows)."""
    console = console or Console()
    if config.compare:
        from gftrepro.compare import compare

        return compare([Path(p) for p in config.compare], run_dir, console)
    n = config.samples
    benches = resolve_names(config.benchmarks)
    loaded = {b.name: load_benchmark(b, config.benchmark_dir, config.limit) for b in benches}
    model = resolve_model(config.model)
    vdir = open_stage(run_dir, "eval", config, {"model": {"ref": model.ref, "fingerprint": model.fingerprint}},
                      console)
    if verbose():
        for name, (problems, source) in loaded.items():
            console.print(f"  {name}: {len(problems)} problems from {source}", highlight=False)
    with writing(vdir, console):
        jobs = {b.name: missing_jobs(loaded[b.name][0], bench_folder(vdir, b, config.limit), config.shard_size, n)
                for b in benches}
        started = time.perf_counter()
        if any(jobs.values()):
            draw(config, model, benches, loaded, jobs, vdir, console)
        seconds = time.perf_counter() - started
        return write_metrics(config, vdir, benches, loaded, n, seconds, console, show_table)


def draw(config: EvalConfig, model, benches: list[Benchmark], loaded: dict, jobs: dict, vdir: store.VersionDir,
         console: Console) -> None:
    tokenizer = load_tokenizer(model)
    params = SamplingParams(config.temperature, config.top_p, config.max_new_tokens,
                            stop_token_ids(tokenizer, model.path, config.stop_tokens), False)
    total = sum((min((k + 1) * config.shard_size, len(loaded[b][0])) - k * config.shard_size) * (e - s)
                for b, js in jobs.items() for k, s, e in js)
    with closing(make_backend(config, model, tokenizer)) as backend, \
            judge_pool(config.workers, config.timeout) as pool, \
            Progress(TextColumn("[bold]eval"), BarColumn(), TextColumn("{task.completed}/{task.total} samples"),
                     TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                     disable=not console.is_terminal) as bar:
        scorer = Scorer(FALLBACKS, pool)
        task = bar.add_task("eval", total=total)
        for bench in benches:
            problems, source = loaded[bench.name]
            folder = bench_folder(vdir, bench, config.limit)
            folder.mkdir(parents=True, exist_ok=True)
            if not store.readable_parquet(folder / "problems.parquet"):
                store.write_table(folder / "problems.parquet", pa.Table.from_pylist(problems),
                                  {"source": source})
            system = config.mc_system_prompt if bench.multiple_choice else config.system_prompt
            prompts = [tokenizer(format_prompt(tokenizer, p["question"], system, config.prompt_template),
                                 add_special_tokens=False)["input_ids"] for p in problems]
            for job in jobs[bench.name]:
                table = sample_block(backend, scorer, problems, prompts, job, config, params,
                                     lambda done, _tokens: bar.update(task, advance=done))
                k, start, end = job
                store.write_table(folder / f"shard-p{k:05d}-s{start:05d}-{end:05d}.parquet", table)


def write_metrics(config: EvalConfig, vdir: store.VersionDir, benches: list[Benchmark], loaded: dict, n: int,
                  seconds: float, console: Console, show_table: bool = True) -> dict:
    ks = ks_up_to(n, [config.pass_k])
    per_bench, capped, found = {}, {}, {}
    for bench in benches:
        correct, answers, capped[bench.name], found[bench.name] = collect(bench_folder(vdir, bench, config.limit),
                                                                          loaded[bench.name][0], n)
        per_bench[bench.name] = benchmark_metrics(correct, answers, ks)
    metrics = {"n": n, "ks": ks, "benchmarks": per_bench, "average": macro_average(per_bench),
               "capped_samples": capped, "found_by": found, "model": config.model, "temperature": config.temperature}
    path = vdir.path / f"metrics-n{n}.json"
    same = json.loads(json.dumps(metrics))
    # the manifest says the last n evaluated: an eval at another n in between means the reports are rewritten
    manifest = vdir.read_manifest() if vdir.is_complete() and path.exists() else {}
    if manifest.get("metrics") == same and json.loads(path.read_text()) == same:
        done_line(console, summary_line(metrics), "already complete, nothing to sample")
    else:
        files = sorted(p for b in benches for p in bench_folder(vdir, b, config.limit).iterdir() if p.is_file()
                       and not p.name.startswith("."))
        manifest = write_reports(vdir, metrics, config.model, seconds, files)
        done_line(console, summary_line(metrics))
    if config.report_to:
        from gftrepro.trackers import Trackers, names_of

        flat = {f"{b}/{k}": v for b, m in metrics["benchmarks"].items() for k, v in m.items()
                if k.startswith(("pass@", "avg@", "maj@"))}
        trackers = Trackers(names_of(config.report_to), vdir.path, vdir.path.parents[1],
                            f"eval {vdir.version} {config.model}", {"model": config.model, "n": n})
        trackers.final(flat, {"passk": vdir.path / f"passk-n{n}.png"})
        trackers.close()
    if show_table:
        console.print(metrics_table(metrics, f"eval {vdir.version}: {config.model}", console.width))
    return manifest


def summary_line(metrics: dict) -> str:
    """pass@1 / pass@n per benchmark, and how many samples hit the token cap (counted wrong)."""
    n, capped = metrics["n"], sum(metrics["capped_samples"].values())
    parts = [f"{name} {100 * m['pass@1']:.1f} / {100 * m[f'pass@{n}']:.1f}"
             for name, m in metrics["benchmarks"].items()]
    return (", ".join(parts) + f" (pass@1 / pass@{n})" + (f"; {capped} at the token cap" if capped else "")
            + found_line({"all": dict(sum((Counter(c) for c in metrics.get("found_by", {}).values()), Counter()))}))


def write_reports(vdir: store.VersionDir, metrics: dict, model: str, seconds: float, files: list[Path]) -> dict:
    """metrics json, markdown table, pass@k PNG, then the manifest (last), which lists the sample shards and
    the metrics file with their sizes and hashes."""
    from gftrepro.plots import passk_plot

    n = metrics["n"]
    store.atomic_write_json(vdir.path / f"metrics-n{n}.json", metrics)
    store.atomic_write_bytes(vdir.path / f"report-n{n}.md", markdown_table(metrics, model).encode())
    passk_plot({model: metrics}, vdir.path / f"passk-n{n}.png")
    manifest = {"stage": "eval", "version": vdir.version, "complete": True, "completed_at": store.now(),
                "config": json.loads((vdir.path / store.CONFIG).read_text())["config"], "metrics": metrics,
                "sampling_seconds_last_run": seconds, "environment": store.environment(),
                "files": [store.file_record(p, vdir.path) for p in [*files, vdir.path / f"metrics-n{n}.json"]]}
    store.atomic_write_json(vdir.manifest_path, manifest)
    return manifest


def metric_columns(metrics: dict) -> list[str]:
    n, ks = metrics["n"], metrics["ks"]
    return [f"avg@{n}"] + [f"pass@{k}" for k in ks] + [f"maj@{ks[-1]}"]


def metrics_table(metrics: dict, title: str, width: int = 200) -> Table:
    """avg@n, pass@k for each k, maj@n; in a narrow terminal only the k that fit (1, 4, 16, ... and n),
    so no number is ever clipped."""
    table = Table(title=title, title_justify="left")
    table.add_column("benchmark", overflow="fold")
    columns = metric_columns(metrics)
    while 18 + 9 * len(columns) > width and len(columns) > 4:  # drop every other k from the middle
        ks = [c for c in columns if c.startswith("pass@")]
        columns = [c for c in columns if c not in ks[1:-1:2]] if len(ks) > 2 else columns[:4]
    for col in columns:
        table.add_column(col, justify="right")
    rows = list(metrics["benchmarks"].items())
    if len(rows) > 1:
        rows.append(("average (macro)", metrics["average"]))
    for name, m in rows:
        table.add_row(name, *(f"{100 * m[c]:.1f}" for c in columns))
    return table


def markdown_table(metrics: dict, model: str) -> str:
    columns = metric_columns(metrics)
    lines = [f"# eval: {model} (n = {metrics['n']}, temperature {metrics['temperature']})", "",
             "| benchmark | problems | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, m in metrics["benchmarks"].items():
        lines.append(f"| {name} | {m['problems']} | " + " | ".join(f"{100 * m[c]:.1f}" for c in columns) + " |")
    if len(metrics["benchmarks"]) > 1:
        lines.append("| average (macro) | | " + " | ".join(f"{100 * metrics['average'][c]:.1f}" for c in columns)
                     + " |")
    return "\n".join(lines) + "\n"
