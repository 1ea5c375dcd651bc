"""On-policy training: GFT as its authors run it, and GRPO. ``gft train --online`` (grpo: always).

Every optimizer step, top to bottom (``run``):

1. **prompts**: the step's ``prompts_per_step`` prompts (a seeded shuffle per epoch); with N
   processes each takes every N-th, so a prompt's group never spans processes;
2. **sample**: ``self_k`` completions per prompt from the *current* weights, through the same
   backends as the sampling stages (hf in-process; vLLM colocated), each seeded by
   (seed, step, prompt_id, sample_idx);
3. **reward**: ``gftrepro.answers`` extraction + math-verify in the deadline pool (``Scorer``, the
   verify stage's own), verdicts cached across steps;
4. **group**: that prompt's expert and teacher responses (chosen once, as build-groups chooses
   them, from the verify version's rewards) + the self samples; advantages by
   ``groups.group_advantages``, the very function build-groups uses;
5. **update**: the method's loss (``losses.token_loss``) through the shared ``engine.trainer.Trainer``:
   global token-mean over all processes, gradient clipping, AdamW, cosine schedule;
6. **sync**: the new weights go into the sampler (``Backend.load_weights``).

Each step's rows (group shard columns + ``step``) are written to ``rollouts/step-NNNNNN.parquet``
in the train version. A killed run resumes from its last checkpoint and, the sampling being seeded
per step and sample, redraws the same rollouts (tested on CPU with the hf backend).

Where this departs from the authors' code:

1. Groups whose rewards are all equal stay in the batch with A = 0 (as in verl and TRL): they add
   tokens to the token-mean denominator and nothing to the gradient. Their share is logged.
2. Self samples whose verdict is ``timeout`` or ``error`` leave their group (reward unknown, as
   build-groups treats them); they are counted per step.
3. Self responses are trained on the exact sampled token ids (stop token included), not on the
   re-tokenized text; expert and teacher responses are tokenized as in offline training.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from rich.console import Console

from gftrepro import groups, methods, schema, store
from gftrepro.answers import FALLBACKS
from gftrepro.backends import GenerationOptions, Request, Sample, SamplingParams, make_backend, rollout_seed
from gftrepro.engine.batches import Example, tokenize
from gftrepro.engine.config import TrainConfig
from gftrepro.engine.state import summary_line
from gftrepro.engine.step import mean_stats
from gftrepro.engine.trainer import Trainer, make_accelerator, start_model, writing_version
from gftrepro.errors import GftError
from gftrepro.groups import Candidates, GroupSpec
from gftrepro.models import ModelRef, load_tokenizer, stop_token_ids
from gftrepro.prompts import format_prompt
from gftrepro.scoring import Scorer, gold_map, judge_pool
from gftrepro.stage import already_done, open_stage, verbose

ROLLOUTS = pa.schema(list(schema.GROUPS) + [pa.field("step", pa.int64())])
UNUSABLE = groups.UNUSABLE


@dataclass(frozen=True)
class Prompt:
    """One training prompt: its text and ids in the student's format, gold answer, fixed demonstrations."""

    pid: str
    question: str
    text: str
    ids: list[int]
    gold: str | None
    demos: list[dict]  # expert + teacher members, each with completion, reward, source, sample_idx


def group_spec(config: TrainConfig) -> GroupSpec:
    expert, teacher, own = config.group
    return GroupSpec(n_expert=expert, n_teacher=teacher, n_self=own, seed=config.seed)


def load_prompts(config: TrainConfig, run_dir: Path, model: ModelRef, tokenizer: Any
                 ) -> tuple[store.VersionDir, list[Prompt], Counter, dict]:
    """The verify version, every prompt whose group can be completed, the dropped counts, and the
    sampling settings (system prompt, template) the student's prompts are formatted with."""
    bgc = group_spec(config)
    verify, sampled = groups.read_inputs(run_dir, config.verify_version)
    _, system_prompt, template = groups.student_settings(sampled, model.ref)
    gold, problems_table = gold_map(sampled)
    problems: dict[str, dict] = {}
    for row in problems_table.to_pylist():
        problems.setdefault(row["prompt_id"], row)
    excluded: Counter = Counter()
    pools = groups.candidate_pools(groups.load_rewards(verify), groups.load_completions(sampled),
                                         problems, tokenizer.eos_token, excluded)
    placeholders = [{"sample_idx": j, "reward": 0.0} for j in range(bgc.n_self)]
    dropped: Counter = Counter()
    prompts = []
    for pid in sorted(problems):
        pool = pools.get(pid, Candidates([], [], []))
        members, reason, _ = groups.compose(Candidates(pool.expert, pool.teacher, placeholders), bgc, pid)
        if members is None:
            dropped[reason] += 1
            continue
        if gold.get(pid) is None:
            dropped["no gold answer"] += 1
            continue
        text = format_prompt(tokenizer, problems[pid]["question"], system_prompt, template)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        prompts.append(Prompt(pid, problems[pid]["question"], text, ids, gold[pid], members[: bgc.n_expert +
                                                                                              bgc.n_teacher]))
    if not prompts:
        raise GftError(f"no prompt of verify {verify.version} can fill a {bgc.n_expert}:{bgc.n_teacher}:{bgc.n_self} "
                       f"group: {dict(dropped)}")
    fallbacks = verify.read_manifest()["config"].get("fallbacks")
    return verify, prompts, dropped, {"system_prompt": system_prompt, "prompt_template": template,
                                      "fallbacks": fallbacks}


def prompt_schedule(count: int, config: TrainConfig, world: int) -> list[list[int]]:
    """Prompt indices of every step: a seeded shuffle per epoch cut into ``prompts_per_step``."""
    per_step = config.prompts_per_step

    def epoch(e: int) -> list[list[int]]:
        order = list(range(count))
        random.Random(config.seed * 1_000_003 + e).shuffle(order)
        return [c for c in (order[k : k + per_step] for k in range(0, count, per_step)) if len(c) >= world]

    if not epoch(0):
        raise GftError(f"{count} prompts leave no step of {per_step} prompts for {world} processes")
    steps: list[list[int]] = []
    e = 0
    while (config.max_steps and len(steps) < config.max_steps) or (not config.max_steps and e < config.epochs):
        steps.extend(epoch(e))
        e += 1
    return steps[: config.max_steps] if config.max_steps else steps


def self_member(sample: Sample, idx: int, reward: float, eos: str) -> dict:
    stopped = sample.finish_reason == "stop"
    return {"sample_idx": idx, "completion": sample.text + (eos if stopped else ""), "reward": reward,
            "logprobs": None, "source": "self", "token_ids": sample.token_ids}


def make_group(prompt: Prompt, selfs: list[dict], config: TrainConfig, counts: Counter) -> list[dict]:
    """The prompt's group with advantages (reward-weighted methods: the correct members, A = 1)."""
    members = [*prompt.demos, *selfs]
    rewards = np.array([m["reward"] for m in members])
    if methods.get(config.method).reward_weighted:
        return [{**m, "advantage": 1.0} for m in members if m["reward"] == 1.0]
    advantages = groups.group_advantages(rewards, config.adv_std, config.adv_eps)
    if np.all(rewards == rewards[0]):
        counts["zero_variance_groups"] += 1
    return [{**m, "advantage": float(a)} for m, a in zip(members, advantages, strict=True)]


def to_examples(prompt: Prompt, members: list[dict], group_id: int, config: TrainConfig, tokenizer: Any,
                counts: Counter) -> list[Example]:
    """Demonstrations tokenized as offline training does; self samples as their sampled ids."""
    out = []
    for m in members:
        if m["source"] == "self":
            room = config.max_length - len(prompt.ids)
            ids = m["token_ids"][: max(room, 0)]
            if not ids:
                counts["dropped (no room)"] += 1
                continue
            counts["self truncated"] += len(ids) < len(m["token_ids"])
            out.append(Example(prompt.ids + ids, len(prompt.ids), m["advantage"], "self", group_id))
        else:
            row = {"prompt": prompt.text, "completion": m["completion"], "advantage": m["advantage"],
                   "source": m["source"], "group_id": group_id}
            try:
                examples, c = tokenize([row], tokenizer, config.max_length, config.truncation)
            except GftError:  # the one row was dropped; counted below
                examples, c = [], Counter({"demonstration dropped (length)": 1})
            counts.update(c)
            out.extend(examples)
    return out


def rollout_rows(step: int, group_id: int, prompt: Prompt, members: list[dict]) -> list[dict]:
    return [{"group_id": group_id, "prompt_id": prompt.pid, "question": prompt.question, "prompt": prompt.text,
             "completion": m["completion"], "source": m["source"], "sample_idx": m["sample_idx"],
             "reward": m["reward"], "advantage": m["advantage"], "logprobs": m["logprobs"], "step": step}
            for m in members]


def write_rollouts(vdir: store.VersionDir, step: int, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["group_id"])  # gathered from every process; order as one process
    folder = vdir.path / "rollouts"
    folder.mkdir(exist_ok=True)
    store.write_table(folder / f"step-{step:06d}.parquet",
                      schema.table({n: [r[n] for r in rows] for n in ROLLOUTS.names}, ROLLOUTS))


def sampler_options(config: TrainConfig, settings: dict) -> GenerationOptions:
    return GenerationOptions(temperature=config.rollout_temperature, top_p=1.0,
                             max_new_tokens=config.rollout_max_new_tokens, system_prompt=settings["system_prompt"],
                             prompt_template=settings["prompt_template"], seed=config.seed,
                             backend=config.rollout_backend, batch_size=config.rollout_batch_size,
                             dtype=config.dtype, gpu_memory_utilization=config.rollout_gpu_memory_utilization)


def open_sampler(config: TrainConfig, settings: dict, model: ModelRef, tokenizer: Any) -> Any:
    options = sampler_options(config, settings)
    if options.backend == "vllm":
        from gftrepro.backends.vllm import VLLMBackend

        return VLLMBackend(model, tokenizer, tensor_parallel_size=1, gpu_memory_utilization=
                           options.gpu_memory_utilization, max_model_len=0, dtype=options.dtype,
                           enforce_eager=True, seed=config.seed, colocated=True)
    return make_backend(options, model, tokenizer)


def run(config: TrainConfig, run_dir: Path, console: Console | None = None) -> dict:
    accelerator = make_accelerator(config)
    world, main = accelerator.num_processes, accelerator.is_main_process
    console = console or Console(quiet=not main)
    default_model = ""
    if not config.init and not config.model:  # the student sample-self used, as build-groups finds it
        _, sampled = groups.read_inputs(run_dir, config.verify_version)
        default_model = groups.student_settings(sampled)[0]
    model = start_model(config, run_dir, default_model)
    tokenizer = load_tokenizer(model)
    verify, prompts, dropped, settings = load_prompts(config, run_dir, model, tokenizer)
    steps = prompt_schedule(len(prompts), config, world)
    inputs = {"verify": verify.version, "model": {"ref": model.ref, "fingerprint": model.fingerprint}}
    vdir = open_stage(run_dir, "train", config, inputs, console)
    if vdir.is_complete(hashes=True):
        return already_done(vdir, console, summary_line)
    with writing_version(accelerator, vdir, console):
        trainer = Trainer(config, accelerator, vdir, model, tokenizer, len(steps), console)
        expert, teacher, own = config.group
        if verbose() or trainer.start or dropped:
            resuming = f"; resuming at step {trainer.start}" if trainer.start else ""
            console.print(f"  on-policy {config.method}: {len(prompts)} prompts ({dict(dropped) or 'none dropped'}), "
                          f"{len(steps)} steps of {config.prompts_per_step} prompts x K = {expert + teacher + own} "
                          f"({expert}:{teacher}:{own}){resuming}", highlight=False)
        stops = stop_token_ids(tokenizer, model.path, ["<|im_end|>", "<|endoftext|>"])
        params = SamplingParams(config.rollout_temperature, 1.0, config.rollout_max_new_tokens, stops, False)
        with ExitStack() as stack:
            sampler = open_sampler(config, settings, model, tokenizer)
            stack.callback(sampler.close)
            sampler.load_weights(trainer.full_weights().items())  # the resumed weights, if resuming
            pool = stack.enter_context(judge_pool(config.verify_workers, config.verify_timeout))
            scorer = Scorer(settings["fallbacks"] or FALLBACKS, pool)
            bar = stack.enter_context(trainer.progress())
            task = bar.add_task("train", total=len(steps), completed=trainer.start, info="")
            for step in range(trainer.start, len(steps)):
                m = one_step(trainer, sampler, scorer, params, [prompts[i] for i in steps[step]], step)
                bar.update(task, advance=1, info=f"loss {m['loss']:.4f} reward {m.get('reward/self', 0):.2f}")
                trainer.checkpoint(step)
        return trainer.finish({"sequences": len(steps) * config.prompts_per_step * (expert + teacher + own),
                               "prompts": len(prompts), "dropped": dict(dropped), "data": "online",
                               "online": True})


def one_step(trainer: Trainer, sampler: Any, scorer: Scorer, params: SamplingParams, step_prompts: list[Prompt],
             step: int) -> dict:
    """Sample -> reward -> group -> update -> sync, for one step; returns its metrics line."""
    from accelerate.utils import gather_object

    config, acc, tokenizer = trainer.config, trainer.accelerator, trainer.tokenizer
    k = config.group[2]
    t0 = time.perf_counter()
    first = trainer.rank
    mine = step_prompts[first :: trainer.world]
    gids = [step * config.prompts_per_step + i for i in range(first, len(step_prompts), trainer.world)]
    requests = [Request(p.ids, rollout_seed(config.seed, step, p.pid, j)) for p in mine for j in range(k)]
    samples = sampler.generate(requests, params, lambda *_: None) if requests else []  # 8:0 samples nothing
    t1 = time.perf_counter()
    verdicts = scorer.score_all([s.text for s in samples], [p.gold for p in mine for _ in range(k)],
                                [s.finish_reason == "stop" for s in samples]) if samples else []
    t2 = time.perf_counter()
    counts: Counter = Counter()
    examples, rows = [], []
    for i, (prompt, gid) in enumerate(zip(mine, gids, strict=True)):
        selfs = []
        for j in range(k):
            s, v = samples[i * k + j], verdicts[i * k + j]
            counts["self_samples"] += 1
            counts["self_correct"] += v.correct
            counts["self_tokens"] += len(s.token_ids)
            counts["self_truncated"] += s.finish_reason == "length"
            if v.status in UNUSABLE:
                counts[f"self_{v.status}"] += 1
                continue
            selfs.append(self_member(s, j, 1.0 if v.correct else 0.0, tokenizer.eos_token))
        members = make_group(prompt, selfs, config, counts)
        rows.extend(rollout_rows(step + 1, gid, prompt, members))
        examples.extend(to_examples(prompt, members, gid, config, tokenizer, counts))
    all_rows = gather_object(rows) if trainer.world > 1 else rows
    if trainer.main:
        write_rollouts(trainer.vdir, step + 1, all_rows)
    keys = ["self_samples", "self_correct", "self_tokens", "self_truncated", "self_timeout", "self_error",
            "zero_variance_groups", "sequences"]
    counts["sequences"] = len(examples)
    totals = acc.reduce(torch.tensor([float(counts[c]) for c in keys], dtype=torch.float64, device=acc.device),
                        "sum").tolist()
    totals = dict(zip(keys, totals, strict=True))
    micro = trainer.micro_batches(examples)
    num_tokens = trainer.global_tokens(examples)
    trainer.add_reference_logprobs(micro, old=config.ppo_epochs > 1)
    stats: list[dict] = []
    for _ in range(config.ppo_epochs):
        stats.append(trainer.update(step, micro, num_tokens, int(totals["sequences"])))
    sums = mean_stats(stats)
    t3 = time.perf_counter()
    sampler.load_weights(trainer.full_weights().items())
    t4 = time.perf_counter()
    n = max(totals["self_samples"], 1.0)
    extra = {"reward/self": totals["self_correct"] / n, "self_tokens_mean": totals["self_tokens"] / n,
             "self_truncated_share": totals["self_truncated"] / n,
             "self_unscored": int(totals["self_timeout"] + totals["self_error"]),
             "zero_variance_share": totals["zero_variance_groups"] / max(len(step_prompts), 1),
             "sample_seconds": t1 - t0, "verify_seconds": t2 - t1, "update_seconds": t3 - t2,
             "sync_seconds": t4 - t3, "updates": config.ppo_epochs}
    return trainer.log(step, sums, t4 - t0, extra)

