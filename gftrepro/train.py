"""Stage ``train``: GFT and its baselines (SFT, SFT-mix, DFT, ASFT, PSFT, GFT w/o DCR, GFT w/o GAL, GFT no mix,
GRPO), one engine.

Offline (the default for every method but grpo) it reads the latest complete ``build-groups``
version (or ``--build-groups-version``): its group shards (gft, gft-no-dcr) or ``sft.parquet`` /
``sft-mix.parquet`` (sft, dft, asft, psft, gft-no-gal, sft-mix), and the student model it was built for
(gft-no-mix: the group shards without their teacher members, advantages normalised again; pear: the
correct teacher samples of ``sft-mix.parquet`` with their per-token log-probs).
On-policy (``--online``; grpo always) it reads a ``verify`` version instead and samples the self
responses of every step from the current weights (``gftrepro/online.py``).
``--init`` starts from an earlier train version's model (chains such as SFT -> GRPO), or ``--model``.
Writes: ``<run>/train/<version>/``: ``model/`` (``save_pretrained``: weights + tokenizer, loadable
by ``gft sample-self`` and ``gft eval``), ``metrics.jsonl`` (one line per step), ``rollouts/``
(online: one Parquet shard per step), ``checkpoint/`` while training (model, optimizer, scheduler,
RNG states, step), ``manifest.json`` last.

    gft train --method gft --tau 0.7                      # embedded default, CPU
    gft train --method sft                                 # also sft-mix, dft, gft-no-dcr, gft-no-gal
    gft train --method gft --online                        # self samples drawn on-policy every step
    gft train --method grpo --init <sft train version>    # GRPO (always on-policy) from an SFT model
    torchrun --nproc_per_node 8 -m gftrepro.cli train --config stages/train.yaml
    accelerate launch --num_processes 8 -m gftrepro.cli train --config stages/train.yaml

The loss is ``gftrepro.losses.token_loss``, computed with its gradient in the LM head's own pass
(``gftrepro.logprobs.FusedTokenLoss``; ``--no-fused-loss``: log-probs from ``Policy``, then the loss).
Distribution is accelerate's (DDP, or FSDP through an ``accelerate config``): never home-made.

Where this departs from the authors' code:

1. Offline: the groups were built before training (see ``gftrepro/sample.py``, departure 1);
   ``--online`` is the authors' on-policy setting.
2. The token-mean denominator is the token count of the whole optimizer step, summed over every
   micro-batch and process before the first backward; the authors' verl code divides per
   micro-batch. Here one batch of 8 equals eight micro-batches of 1 (tested).
3. A response longer than the room left by its prompt is truncated (``truncation: keep``, the
   default: its remaining tokens are trained, without EOS) or dropped (``truncation: drop``);
   either way it is counted. A prompt that leaves no room drops the row.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console

from gftrepro import methods, online, store
from gftrepro.engine.batches import Example, step_batches, tokenize
from gftrepro.engine.config import TrainConfig
from gftrepro.engine.state import summary_line
from gftrepro.engine.step import mean_stats
from gftrepro.engine.trainer import Trainer, make_accelerator, start_model, writing_version
from gftrepro.errors import GftError
from gftrepro.groups import groups_line, without_source
from gftrepro.models import load_tokenizer
from gftrepro.stage import already_done, open_stage


def read_rows(vdir: store.VersionDir, dataset: str, behaviour: bool = False) -> list[dict]:
    """The rows of ``dataset`` (teacher: the correct teacher samples of ``sft-mix.parquet``); ``behaviour``:
    with their sampler log-probs."""
    file = "sft-mix" if dataset == "teacher" else dataset
    paths = vdir.shard_paths() if dataset == "groups" else [vdir.path / f"{file}.parquet"]
    needed = ["group_id", "prompt", "completion", "source", "advantage", "reward"] + (["logprobs"] if behaviour else [])
    rows = []
    for path in paths:
        names = pq.read_schema(path).names
        missing = [c for c in needed if c not in names]
        if missing:
            raise GftError(f"{path} has no column '{missing[0]}' (columns: {', '.join(names)})")
        rows.extend(r for r in pq.read_table(path, columns=needed).to_pylist()
                    if dataset != "teacher" or r["source"] == "teacher")
    for r in rows:
        if r["advantage"] is None or not math.isfinite(r["advantage"]):
            raise GftError(f"advantage {r['advantage']} in group {r['group_id']} of {vdir.path} is not finite")
    if not rows:
        raise GftError(f"no rows to train on in {vdir.path} ({dataset}); build-groups said: "
                       f"{groups_line(vdir.read_manifest())}")
    return rows


def method_rows(config: TrainConfig, vdir: store.VersionDir) -> list[dict]:
    """The rows ``config.method`` trains on: GFT (no mix) drops the groups' teacher members and normalises
    the advantages again with the build-groups version's own std and eps."""
    m = methods.get(config.method)
    rows = read_rows(vdir, config.dataset, m.behaviour)
    if m.behaviour and not any(r["logprobs"] is not None for r in rows):
        raise GftError(f"{config.method} needs the teacher's per-token log-probs and {vdir.path} has none: sample "
                       "them with `gft sample-teacher --logprobs`, then rerun gft verify and gft build-groups (gft run "
                       "does this itself when a method needs them)")
    if m.no_teacher and config.dataset == "groups":
        built = json.loads((vdir.path / store.CONFIG).read_text(encoding="utf-8"))["config"]
        rows = without_source(rows, "teacher", built.get("std", "unbiased"), float(built.get("eps", 1e-6)))
    return rows


def step_update(trainer: Trainer, step: int, batch: list[Example]) -> dict[str, float]:
    """One offline step: one optimizer update on the batch, or (psft) ``updates_per_batch`` updates on its
    mini-batches in turn, every one against the log-probs of the policy at the batch's start (the first
    update has ratio 1: SFT's gradient). Returns the step's statistics (the mean over its updates)."""
    n, rank, world = trainer.config.updates_per_batch, trainer.rank, trainer.world
    if n == 1:
        mine = batch[rank::world]
        return trainer.update(step, trainer.micro_batches(mine), trainer.global_tokens(mine), len(batch))
    size = len(batch) // n
    if size < world:
        raise GftError(f"psft: a mini-batch of {size} sequences (batch_size / mini_batches) cannot be split over "
                       f"{world} processes: raise batch_size or lower mini_batches")
    minis = [batch[k * size : (k + 1) * size] for k in range(n)]
    mine = [m[rank::world] for m in minis]
    micro = [trainer.micro_batches(x) for x in mine]
    for part in micro:  # pi_old: the policy before this batch's first update
        trainer.add_reference_logprobs(part, old=True)
    stats = [trainer.update(step, part, trainer.global_tokens(x), len(m)) for part, x, m in zip(micro, mine, minis,
                                                                                               strict=True)]
    return mean_stats(stats)


def training_inputs(config: TrainConfig, run_dir: Path) -> tuple[store.VersionDir, Any]:
    bg = store.chosen_version(run_dir, "build-groups", config.build_groups_version)
    return bg, start_model(config, run_dir, bg.read_manifest()["inputs"]["student"]["ref"])


def plan_steps(config: TrainConfig, examples: list[Example], world: int) -> list[list[int]]:
    per_epoch = step_batches(examples, config.batch_size, 1, config.seed, world)
    if not per_epoch:
        raise GftError(f"batch_size {config.batch_size} leaves no step for {world} processes")
    if config.max_steps:
        epochs = -(-config.max_steps // len(per_epoch))
        return step_batches(examples, config.batch_size, epochs, config.seed, world)[: config.max_steps]
    return step_batches(examples, config.batch_size, config.epochs, config.seed, world)


def run(config: TrainConfig, run_dir: Path, console: Console | None = None) -> dict:
    if config.is_online:
        return online.run(config, run_dir, console)
    accelerator = make_accelerator(config)
    world, main = accelerator.num_processes, accelerator.is_main_process
    console = console or Console(quiet=not main)
    bg, model = training_inputs(config, run_dir)
    tokenizer = load_tokenizer(model)
    examples, dropped = tokenize(method_rows(config, bg), tokenizer, config.max_length, config.truncation,
                                 methods.get(config.method).behaviour)
    steps = plan_steps(config, examples, world)
    inputs = {"build-groups": bg.version, "model": {"ref": model.ref, "fingerprint": model.fingerprint},
              **config.unit_inputs}
    vdir = open_stage(run_dir, "train", config, inputs, console)
    if vdir.is_complete(hashes=True):
        return already_done(vdir, console, summary_line)
    with writing_version(accelerator, vdir, console):
        trainer = Trainer(config, accelerator, vdir, model, tokenizer, len(steps), console)
        if dropped or trainer.start:
            console.print(f"  {dict(dropped) or 'no'} sequences dropped" + (f"; resuming at step {trainer.start}"
                                                                              if trainer.start else ""))
        with trainer.progress() as bar:
            task = bar.add_task("train", total=len(steps), completed=trainer.start, info="")
            for step in range(trainer.start, len(steps)):
                t0 = time.perf_counter()
                sums = step_update(trainer, step, [examples[i] for i in steps[step]])
                extra = {"updates": config.updates_per_batch} if config.updates_per_batch > 1 else None
                m = trainer.log(step, sums, time.perf_counter() - t0, extra)
                bar.update(task, advance=1, info=f"loss {m['loss']:.4f} {m['tokens_per_s']:.0f} tok/s")
                trainer.checkpoint(step)
        return trainer.finish({"sequences": len(examples), "dropped": dict(dropped), "data": config.dataset})
