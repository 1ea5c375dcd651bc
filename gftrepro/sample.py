"""Stages ``sample-teacher`` and ``sample-self``: n completions per problem from one model.

Reads: problems (bundled ``testbed``, a local file, or a hub dataset) and a model (``testbed:...``,
a local folder such as a ``gft train`` checkpoint, or a hub id).
Writes: ``<run>/sample-<source>/<version>/`` with ``problems.parquet`` (prompt_id, question,
solution, answer), completion shards in the ``schema.COMPLETIONS`` vocabulary, and
``manifest.json`` last.

    gft sample-teacher                      # embedded default: testbed problems, tiny teacher
    gft sample-self --model Qwen/Qwen2.5-Math-1.5B --n 4 --backend vllm
    gft sample-teacher --shard-index 1 --num-shards 4    # process 1 of 4 over one stage

Where this departs from the paper's setup:

1. The authors' code draws the 4 self rollouts from the current policy at every training step
   (on-policy). Here they are drawn once, before training, from the configured model; sampling
   again from a checkpoint (``--model <train folder>``) is the way to go round by round.
2. Each sample is its own request with its own seed (sha256 of stage seed, prompt_id,
   sample_idx), never ``n`` samples sharing one seed: growing n or resuming keeps old samples.
3. New tokens are capped so prompt + completion fits the model's context (Qwen2.5-Math: 4,096
   in total); a capped sample ends with ``finish_reason = length``.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gftrepro import schema, store
from gftrepro.backends import GenerationOptions, Request, SamplingParams, make_backend, sample_seed
from gftrepro.config import opt, require
from gftrepro.models import ModelRef, load_tokenizer, resolve_model, stop_token_ids
from gftrepro.problems import Problems, load_problems
from gftrepro.prompts import format_prompt
from gftrepro.stage import already_done, done_line, open_stage, writing


@dataclass(frozen=True)
class SampleConfig(GenerationOptions):
    """Generation settings (``GenerationOptions``) plus what to sample from and how to shard it."""

    dataset: str = opt("testbed", "problems: 'testbed', a local .jsonl/.parquet file or folder, or a hub dataset id")
    split: str = opt("train", "dataset split")
    question_field: str = opt("problem", "field holding the question text")
    solution_field: str = opt("solution", "field holding the expert solution ('' if none)")
    answer_field: str = opt("answer", "field holding the gold answer ('' to take it from the solution's \\boxed{})")
    limit: int = opt(512, "use the first N unique problems (0 = all)")
    model: str = opt("testbed:teacher", "model: testbed:<name>, a local folder, or a hub id")
    n: int = opt(3, "samples per problem")
    logprobs: bool = opt(False, "store per-token log-probs of each completion")
    shard_size: int = opt(64, "problems per output shard (the unit of work and of resumption)")
    shard_index: int = opt(0, "this process's part of the stage (0-based)", versioned=False)
    num_shards: int = opt(1, "how many processes share the stage", versioned=False)

    def validate(self) -> None:
        self.validate_generation()
        self.validate_samples(self.n)
        checks = [
            (self.limit >= 0, f"limit must be >= 0, got {self.limit}"),
            (self.shard_size >= 1, f"shard_size must be at least 1, got {self.shard_size}"),
            (self.num_shards >= 1 and 0 <= self.shard_index < self.num_shards,
             f"shard_index must be in [0, num_shards), got {self.shard_index} of {self.num_shards}"),
        ]
        require(checks)


SELF_DEFAULTS = {"model": "testbed:student", "n": 4}


def shard_range(k: int, shard_size: int, num_problems: int) -> range:
    """Problem indices of shard ``k``: shards are consecutive blocks of ``shard_size`` problems."""
    return range(k * shard_size, min((k + 1) * shard_size, num_problems))


def shard_rows(problems: Problems, prompts: list[str], shard: range, config: SampleConfig, source: str,
               tokenizer) -> tuple[list[Request], dict[str, list]]:
    """Requests for one shard (n per problem) and the row columns known before generation."""
    pids = problems.table.column("prompt_id").to_pylist()
    requests, cols = [], {n: [] for n in ("prompt_id", "sample_idx", "source", "prompt", "model", "seed")}
    for i in shard:
        ids = tokenizer(prompts[i], add_special_tokens=False)["input_ids"]
        for j in range(config.n):
            seed = sample_seed(config.seed, pids[i], j)
            requests.append(Request(ids, seed))
            for name, value in zip(cols, (pids[i], j, source, prompts[i], config.model, seed), strict=True):
                cols[name].append(value)
    return requests, cols


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} samples"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        transient=True, disable=not console.is_terminal,  # piped output: the summary line says it all
    )


def summary_line(manifest: dict) -> str:
    s = manifest["summary"]
    gen = max(s["generation_seconds"], 1e-9)
    return (f"{s['samples']} samples, {s['tokens']:,} tokens, {s['truncated_share']:.1%} at the cap; "
            f"{s['generation_seconds']:.0f} s ({s['samples'] / gen:.3g} samples/s, {s['tokens'] / gen:,.0f} tok/s)")


def summarize(vdir: store.VersionDir, num_prompts: int) -> dict:
    """Totals over all shards (read from shard columns and metadata, so resumed runs add up)."""
    samples = tokens = truncated = 0
    seconds = 0.0
    for path in sorted(vdir.path.glob("shard-*.parquet")):  # finalize checks every shard is there
        t = pq.read_table(path, columns=["completion_tokens", "finish_reason"])
        samples += t.num_rows
        tokens += sum(t.column("completion_tokens").to_pylist())
        truncated += t.column("finish_reason").to_pylist().count("length")
        seconds += store.shard_metadata(path).get("generation_seconds", 0.0)
    return {"prompts": num_prompts, "samples": samples, "tokens": tokens,
            "truncated_share": truncated / max(samples, 1), "generation_seconds": seconds}


def run(config: SampleConfig, run_dir: Path, source: str, console: Console | None = None) -> dict | None:
    """Sample this process's shards; write the manifest once all shards exist. Returns it (or None)."""
    console = console or Console()
    stage = f"sample-{source}"
    store.ensure_writable(run_dir)
    problems = load_problems(config.dataset, config.split, config.question_field, config.solution_field,
                             config.answer_field, config.limit)
    model = resolve_model(config.model)
    inputs = {"problems": problems.fingerprint, "model": {"ref": model.ref, "fingerprint": model.fingerprint}}
    vdir = open_stage(run_dir, stage, config, inputs, console)
    if vdir.is_complete(hashes=True):
        return already_done(vdir, console, summary_line)
    with writing(vdir, console, f"part-{config.shard_index}-of-{config.num_shards}" if config.num_shards > 1 else ""):
        return write_version(config, problems, model, vdir, source, console)


def write_version(config: SampleConfig, problems: Problems, model: ModelRef, vdir: store.VersionDir, source: str,
                  console: Console) -> dict | None:
    count = -(-len(problems) // config.shard_size)
    mine = [k for k in range(count) if k % config.num_shards == config.shard_index]
    todo = [k for k in mine if k not in vdir.done_shards()]
    vdir.clear_stale_temporaries()
    problems_path = vdir.path / "problems.parquet"
    if not store.readable_parquet(problems_path):
        store.write_table(problems_path, problems.table)
    if problems.duplicates:
        console.print(f"note: {problems.duplicates} duplicate questions dropped")
    if len(mine) != len(todo):
        console.print(f"  resuming: {len(mine) - len(todo)} of this process's {len(mine)} already done (shards)")
    if todo:
        sample_shards(config, problems, model, vdir, todo, count, source, console)
    manifest = store.finalize(vdir, count, {"summary": summarize(vdir, len(problems))}, [problems_path])
    if manifest is None:
        missing = count - len(vdir.done_shards())
        console.print(f"part {config.shard_index}/{config.num_shards} done; {missing} shards of other parts missing, "
                      "manifest not written yet")
        return None
    done_line(console, summary_line(manifest))
    return manifest


def sample_shards(config: SampleConfig, problems: Problems, model: ModelRef, vdir: store.VersionDir,
                  todo: list[int], count: int, source: str, console: Console) -> None:
    tokenizer = load_tokenizer(model)
    questions = problems.table.column("question").to_pylist()
    prompts = [format_prompt(tokenizer, q, config.system_prompt, config.prompt_template) for q in questions]
    stops = stop_token_ids(tokenizer, model.path, config.stop_tokens)
    params = SamplingParams(config.temperature, config.top_p, config.max_new_tokens, stops, config.logprobs)
    total = sum(len(shard_range(k, config.shard_size, len(problems))) for k in todo)
    started, done_tokens = time.perf_counter(), 0
    with closing(make_backend(config, model, tokenizer)) as backend, progress_bar(console) as bar:
        task = bar.add_task(f"sample-{source}", total=total * config.n, rate="")

        def advance(samples: int, tokens: int) -> None:
            nonlocal done_tokens
            done_tokens += tokens
            elapsed = max(time.perf_counter() - started, 1e-9)
            done = bar.tasks[task].completed + samples
            bar.update(task, advance=samples, rate=f"{done / elapsed:.1f} samples/s {done_tokens / elapsed:.0f} tok/s")

        for k in todo:
            requests, cols = shard_rows(problems, prompts, shard_range(k, config.shard_size, len(problems)), config,
                                        source, tokenizer)
            t0 = time.perf_counter()
            samples = backend.generate(requests, params, advance)
            cols["completion"] = [s.text for s in samples]
            cols["completion_tokens"] = [len(s.token_ids) for s in samples]
            cols["finish_reason"] = [s.finish_reason for s in samples]
            cols["logprobs"] = [s.logprobs for s in samples]
            store.write_table(vdir.shard_path(k, count), schema.table(cols, schema.COMPLETIONS),
                              {"generation_seconds": time.perf_counter() - t0})
