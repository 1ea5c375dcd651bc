"""Stage ``train``: GFT and its baselines (SFT, SFT-mix, DFT, GFT w/o DCR, GFT w/o GAL, GRPO), one engine.

Offline (the default for every method but grpo) it reads the latest complete ``build-groups``
version (or ``--build-groups-version``): its group shards (gft, gft-no-dcr) or ``sft.parquet`` /
``sft-mix.parquet`` (sft, dft, gft-no-gal, sft-mix), and the student model it was built for.
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

import importlib.util
import json
import math
import os
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gftrepro import checkpoint, methods, store
from gftrepro import config as cfg
from gftrepro.build_groups import STD_MODES
from gftrepro.config import opt, require
from gftrepro.errors import GftError
from gftrepro.logprobs import Policy, token_kl
from gftrepro.losses import AGGREGATIONS, TokenObjective, token_loss
from gftrepro.methods import METHODS
from gftrepro.models import ModelRef, first_line, load_tokenizer, resolve_model
from gftrepro.stage import already_done, done_line, open_stage, writing

DATASETS = ("groups", "sft", "sft-mix")


@dataclass(frozen=True)
class TrainConfig:
    method: str = opt("gft", "sft, sft-mix, dft, gft, gft-no-dcr, gft-no-gal or grpo")
    online: bool = opt(False, "sample the self responses from the current weights every step (gft, gft-no-dcr, "
                              "gft-no-gal; grpo always does)")
    init: str = opt("", "start from this model: a complete train version of this run, or a model folder "
                        "('' = --model)")
    data: str = opt("", "training set: groups, sft or sft-mix ('' = the method's own)")
    build_groups_version: str = opt("", "build-groups version to read ('' = the latest complete one)", versioned=False)
    model: str = opt("", "model to train ('' = the student build-groups / sample-self used)")
    verify_version: str = opt("", "online: verify version with the problems, expert solutions and teacher rewards "
                                  "('' = the latest complete one)", versioned=False)
    tau: float = opt(0.7, "DCR threshold: coefficient sg(p) where p < tau, else 1 (paper 0.7; authors' code 0.1)")
    agg: str = opt("token-mean", "loss aggregation: token-mean, seq-mean-token-sum, seq-mean-token-mean")
    lr: float = opt(3e-4, "peak learning rate (AdamW)")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.95, "AdamW beta2")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    warmup_ratio: float = opt(0.1, "share of steps with linear warmup, then cosine decay to 0")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0 = off)")
    epochs: int = opt(6, "passes over the data (ignored when max_steps > 0)")
    max_steps: int = opt(0, "optimizer steps (0 = epochs x steps per epoch)")
    batch_size: int = opt(16, "sequences per optimizer step, all processes together")
    micro_batch_size: int = opt(8, "sequences per forward/backward on one process", versioned=False)
    max_length: int = opt(512, "prompt + response tokens per sequence")
    truncation: str = opt("keep", "over-long responses: keep (truncate, no EOS) or drop")
    seed: int = opt(0, "seed of the data order and of torch")
    dtype: str = opt("auto", "compute dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16")
    param_dtype: str = opt("float32", "dtype of the trained weights, gradients and AdamW states: float32 (master "
                                      "weights; bf16 compute when dtype is bfloat16) or bfloat16 (half the memory, "
                                      "coarser updates; computes in bf16)")
    optimizer: str = opt("adamw", "adamw (torch) or adamw8bit (torchao: AdamW with 8-bit states; with param_dtype "
                                  "bfloat16 the weights are rounded stochastically, so updates smaller than half a "
                                  "bf16 step survive in expectation; one GPU for 7B/8B)", versioned="unless-default")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass", versioned=False)
    compile: bool = opt(False, "torch.compile each decoder layer (one graph the layers share: norms, activation and "
                               "rotary embedding fused; the first step compiles)", versioned=False)
    fsdp: bool = opt(False, "shard parameters, gradients and optimizer states over the processes (FSDP2); with "
                            "dtype bfloat16: bf16 compute, fp32 master shards", versioned=False)
    logprob_chunk: int = opt(512, "tokens per chunk of the LM-head log-softmax", versioned=False)
    fused_loss: bool = opt(True, "make the loss's gradient in the LM head's own pass (same numbers, faster); "
                                 "--no-fused-loss: log-probs first, then the loss", versioned=False)
    save_every: int = opt(50, "write a resumable checkpoint every N steps (0 = only at the end)", versioned=False)
    kl_every: int = opt(0, "every N steps, KL(pi_theta || pi_ref) over the step's tokens (0 = off)", versioned=False)
    ref_model: str = opt("", "reference model for the KL ('' = the starting model)", versioned=False)
    prompts_per_step: int = opt(16, "online: prompts per optimizer step, all processes together (each a group)")
    n_expert: int = opt(-1, "online: expert solutions per group (-1 = the method's: gft 1, grpo 0)", flag="expert")
    n_teacher: int = opt(-1, "online: teacher samples per group (-1 = the method's: gft 3, grpo 0)", flag="teacher")
    self_k: int = opt(-1, "online: on-policy samples per group (-1 = the method's: gft 4, grpo 8)")
    adv_std: str = opt("unbiased", "online advantages: unbiased (authors' code), population (TRL) or none")
    adv_eps: float = opt(1e-6, "online advantages: added to the group std (authors' code 1e-6; TRL 1e-4)")
    ppo_epochs: int = opt(1, "grpo: optimizer updates per batch of rollouts (1 = on-policy, ratio 1)")
    clip_eps: float = opt(0.2, "grpo: clip range of the importance ratio")
    kl_coef: float = opt(0.0, "KL-to-reference coefficient beta in the loss (k3 estimator; 0 = none, as the paper)")
    rollout_backend: str = opt("hf", "online: generation backend, hf (in-process) or vllm (colocated)")
    rollout_temperature: float = opt(1.0, "online: sampling temperature of the self responses")
    rollout_max_new_tokens: int = opt(128, "online: cap on generated tokens per self response")
    rollout_batch_size: int = opt(64, "online, hf: sequences per generate call", versioned=False)
    rollout_gpu_memory_utilization: float = opt(0.3, "online, vllm: share of GPU memory for the engine",
                                                versioned=False)
    verify_workers: int = opt(2, "online: verifier worker processes per training process", versioned=False)
    verify_timeout: float = opt(5.0, "online: wall-clock seconds per answer before its worker is killed")

    def validate(self) -> None:
        checks = [
            (self.method in METHODS, f"unknown method '{self.method}' (known: {', '.join(METHODS)})"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}"),
            (self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}"),
            (self.data in ("", *DATASETS), f"unknown data '{self.data}' (known: {', '.join(DATASETS)})"),
            (0.0 <= self.tau <= 1.0, f"tau must be in [0, 1], got {self.tau}"),
            (self.agg in AGGREGATIONS, f"unknown agg '{self.agg}' (known: {', '.join(AGGREGATIONS)})"),
            (self.lr > 0 and self.batch_size >= 1 and self.micro_batch_size >= 1, "lr, batch sizes must be > 0"),
            (self.max_length >= 2, "max_length must be at least 2"),
            (self.truncation in ("keep", "drop"), "truncation must be keep or drop"),
            (self.dtype in ("auto", "float32", "bfloat16"),
             f"dtype must be auto, float32 or bfloat16, got '{self.dtype}'"),
            (self.param_dtype in ("float32", "bfloat16"), f"param_dtype must be float32 or bfloat16, got "
                                                          f"'{self.param_dtype}'"),
            (not (self.param_dtype == "bfloat16" and self.dtype == "float32"),
             "param_dtype bfloat16 computes in bf16: set dtype bfloat16 or auto, not float32"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer '{self.optimizer}' (known: {', '.join(OPTIMIZERS)})"),
            (not (self.optimizer == "adamw8bit" and self.fsdp),
             "optimizer adamw8bit is for one process or DDP (its states are not sharded): drop --fsdp or use adamw"),
            (not (self.compile and self.fsdp), "compile with fsdp is not supported yet: drop one of them"),
            (self.optimizer != "adamw8bit" or importlib.util.find_spec("torchao") is not None,
             "optimizer adamw8bit needs torchao: pip install -e '.[lowmem]'"),
            (self.epochs >= 1 or self.max_steps >= 1, "set epochs >= 1 or max_steps >= 1"),
            (0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)"),
        ]
        require(checks)
        if self.is_online:
            self.validate_online()
        elif methods.get(self.method).uses_advantage and self.dataset == "sft":
            raise GftError(f"method '{self.method}' needs groups (advantages); data 'sft' has none")

    def validate_online(self) -> None:
        expert, teacher, own = self.group
        checks = [
            (min(expert, teacher) >= 0 and own >= 1, f"an online group needs self_k >= 1 and expert, teacher >= 0, "
                                                     f"got {expert}:{teacher}:{own}"),
            (self.method != "grpo" or own >= 2, f"grpo needs self_k >= 2 (a group advantage over its own samples), "
                                                f"got {own}"),
            (expert + teacher + own >= 2, f"a group needs K >= 2 responses, got {expert + teacher + own}"),
            (self.prompts_per_step >= 1, "prompts_per_step must be at least 1"),
            (self.adv_std in STD_MODES, f"adv_std must be one of {', '.join(STD_MODES)}, got '{self.adv_std}'"),
            (math.isfinite(self.adv_eps) and self.adv_eps >= 0, f"adv_eps must be finite and >= 0, got {self.adv_eps}"),
            (self.ppo_epochs >= 1, f"ppo_epochs must be at least 1, got {self.ppo_epochs}"),
            (0 < self.clip_eps < 1, f"clip_eps must be in (0, 1), got {self.clip_eps}"),
            (self.kl_coef >= 0 and math.isfinite(self.kl_coef), f"kl_coef must be finite and >= 0, got {self.kl_coef}"),
            (self.rollout_backend in ("hf", "vllm"), f"unknown rollout_backend '{self.rollout_backend}' (hf or vllm)"),
            (self.rollout_temperature > 0, "rollout_temperature must be > 0 (on-policy samples are sampled)"),
            (self.rollout_max_new_tokens >= 1 and self.rollout_batch_size >= 1,
             "rollout_max_new_tokens and rollout_batch_size must be at least 1"),
            (self.verify_workers >= 1 and self.verify_timeout > 0, "verify_workers >= 1 and verify_timeout > 0"),
        ]
        require(checks)
        if self.data:
            raise GftError("--data is for offline training; online groups are drawn every step")
        if self.ppo_epochs > 1 and self.method != "grpo":
            raise GftError(f"ppo_epochs > 1 needs the clipped ratio objective (grpo); {self.method} takes one update")

    @property
    def is_online(self) -> bool:
        return methods.runs_online(self.method, self.online)

    @property
    def group(self) -> tuple[int, int, int]:
        """(expert, teacher, self) of an online group: the flags, or the method's defaults."""
        default = methods.get(self.method).group
        given = (self.n_expert, self.n_teacher, self.self_k)
        return tuple(d if g < 0 else g for g, d in zip(given, default, strict=True))  # type: ignore[return-value]

    @property
    def dataset(self) -> str:
        return self.data or methods.get(self.method).data


@dataclass(frozen=True)
class Example:
    ids: list[int]  # prompt + response token ids
    prompt_len: int
    advantage: float
    source: str
    group: int


# ---------------------------------------------------------------- data


def read_rows(vdir: store.VersionDir, dataset: str) -> list[dict]:
    paths = vdir.shard_paths() if dataset == "groups" else [vdir.path / f"{dataset}.parquet"]
    needed = ["group_id", "prompt", "completion", "source", "advantage"]
    rows = []
    for path in paths:
        names = pq.read_schema(path).names
        missing = [c for c in needed if c not in names]
        if missing:
            raise GftError(f"{path} has no column '{missing[0]}' (columns: {', '.join(names)})")
        rows.extend(pq.read_table(path, columns=needed).to_pylist())
    for r in rows:
        if r["advantage"] is None or not math.isfinite(r["advantage"]):
            raise GftError(f"advantage {r['advantage']} in group {r['group_id']} of {vdir.path} is not finite")
    if not rows:
        raise GftError(f"no rows to train on in {vdir.path} ({dataset}): every group was dropped or had zero variance")
    return rows


def tokenize(rows: list[dict], tokenizer, max_length: int, truncation: str) -> tuple[list[Example], Counter]:
    """Token ids of prompt + response (the response's EOS, appended by build-groups, kept)."""
    counts: Counter = Counter()
    examples = []
    for r in rows:
        prompt = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        response = tokenizer(r["completion"], add_special_tokens=False)["input_ids"]
        if not response:
            counts["empty response (dropped)"] += 1
            continue
        room = max_length - len(prompt)
        if room < 1:
            counts["prompt too long (dropped)"] += 1
            continue
        if len(response) > room:
            if truncation == "drop":
                counts["response too long (dropped)"] += 1
                continue
            counts["response truncated (kept, no EOS)"] += 1
            response = response[:room]
        examples.append(Example(prompt + response, len(prompt), float(r["advantage"]), r["source"], r["group_id"]))
    if not examples:
        raise GftError(f"no trainable rows left after tokenization: {dict(counts)}")
    return examples, counts


def step_batches(examples: list[Example], batch_size: int, epochs: int, seed: int, world: int) -> list[list[int]]:
    """Example indices of every optimizer step: groups shuffled per epoch, kept together, then cut."""
    by_group: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        by_group.setdefault(e.group, []).append(i)
    steps = []
    for epoch in range(epochs):
        groups = sorted(by_group)
        random.Random(seed * 1_000_003 + epoch).shuffle(groups)
        order = [i for g in groups for i in by_group[g]]
        steps.extend(order[k : k + batch_size] for k in range(0, len(order), batch_size))
    return [s for s in steps if len(s) >= world]  # every process needs at least one sequence


def collate(batch: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ids; masks from lengths (never from pad ids, so an EOS used as pad stays trained)."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    response = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        attention[i, : len(e.ids)] = 1
        response[i, e.prompt_len : len(e.ids)] = 1
    adv = torch.tensor([e.advantage for e in batch], dtype=torch.float32)
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device), "response_mask": response.to(device),
            "advantages": adv.to(device), "sources": [e.source for e in batch]}


# ---------------------------------------------------------------- one optimizer step

SOURCE_ORDER = ("expert", "teacher", "self")
STAT_KEYS = ["loss", "tokens", "entropy", "prob", "rectified", "clipped", "kl", "kl_tokens"] + \
    [f"{k}/{s}" for s in SOURCE_ORDER for k in ("logprob", "logprob_tokens", "advantage", "seqs")]


def backward_step(policy: torch.nn.Module, micro_batches: list[dict], config: TrainConfig, num_tokens: int,
                  num_seqs: int, scale: float, no_sync: Any) -> dict[str, float]:
    """Forward + backward over this process's micro-batches of one optimizer step.

    Each micro-batch's loss is divided by the step's global token (or sequence) count and
    multiplied by ``scale`` (the process count: DDP averages gradients over processes), so the
    summed gradient equals the whole batch's, however it was split. Returns the metric sums.
    """
    stats = dict.fromkeys(STAT_KEYS, 0.0)
    for j, b in enumerate(micro_batches):
        sync = j == len(micro_batches) - 1
        with no_sync(policy) if not sync else nullcontext():
            old = b.get("old_logprobs")
            spec = dict(method=config.method, tau=config.tau, agg=config.agg, num_tokens=num_tokens, num_seqs=num_seqs,
                        old_logprobs=old, clip_eps=config.clip_eps, ref_logprobs=b.get("ref_logprobs"),
                        beta=config.kl_coef)
            if config.fused_loss:
                objective = TokenObjective.build(b["response_mask"], b["advantages"], **spec)
                loss, logprobs, entropy = policy(b["input_ids"], b["attention_mask"], b["response_mask"],
                                                 with_entropy=True, objective=objective)
            else:
                logprobs, entropy = policy(b["input_ids"], b["attention_mask"], b["response_mask"], with_entropy=True)
                loss = token_loss(logprobs, b["response_mask"], b["advantages"], **spec)
            (loss * scale).backward()
        with torch.no_grad():
            mask = b["response_mask"].bool()
            p = logprobs.detach().exp()[mask]
            stats["loss"] += float(loss)
            stats["tokens"] += float(mask.sum())
            stats["entropy"] += float(entropy[mask].sum())
            stats["prob"] += float(p.sum())
            stats["rectified"] += float((p < config.tau).sum())
            if old is not None:  # share of tokens whose ratio the clip held (grpo, later ppo epochs)
                ratio = (logprobs.detach() - old).exp()[mask]
                stats["clipped"] += float(((ratio - 1).abs() > config.clip_eps).sum())
            per_seq_lp = torch.where(mask, logprobs.detach(), 0.0).sum(-1)
            for i, source in enumerate(b["sources"]):
                stats[f"logprob/{source}"] += float(per_seq_lp[i])
                stats[f"logprob_tokens/{source}"] += float(mask[i].sum())
                stats[f"advantage/{source}"] += float(b["advantages"][i])
                stats[f"seqs/{source}"] += 1.0
    return stats


def step_metrics(step: int, sums: dict[str, float], lr: float, grad_norm: float, seconds: float,
                 skipped: int) -> dict[str, Any]:
    tokens = max(sums["tokens"], 1.0)
    m: dict[str, Any] = {"step": step, "loss": sums["loss"], "lr": lr, "grad_norm": grad_norm,
                         "tokens": int(sums["tokens"]), "tokens_per_s": sums["tokens"] / max(seconds, 1e-9),
                         "entropy": sums["entropy"] / tokens, "mean_token_prob": sums["prob"] / tokens,
                         "rectified_share": sums["rectified"] / tokens, "clipped_share": sums["clipped"] / tokens,
                         "skipped_steps": skipped}
    for s in SOURCE_ORDER:
        if sums[f"seqs/{s}"]:
            m[f"logprob/{s}"] = sums[f"logprob/{s}"] / max(sums[f"logprob_tokens/{s}"], 1.0)
            m[f"advantage/{s}"] = sums[f"advantage/{s}"] / sums[f"seqs/{s}"]
    if sums["kl_tokens"]:
        m["kl_ref"] = sums["kl"] / sums["kl_tokens"]
    return m


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(trainer: Trainer, step: int) -> None:
    """Every process writes its part into a temporary folder, renamed over the previous checkpoint."""
    acc, vdir = trainer.accelerator, trainer.vdir
    tmp, final = vdir.path / ".checkpoint-tmp", vdir.path / "checkpoint"
    if trainer.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    acc.wait_for_everyone()
    checkpoint.save(tmp, trainer.rank, trainer.main, trainer.net, trainer.optimizer, trainer.scheduler,
                    trainer.sharded)
    acc.wait_for_everyone()
    if trainer.main:
        state = {**trainer.expected, "skipped": trainer.skipped, "step": step, "total_steps": trainer.total_steps}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        old = vdir.path / ".checkpoint-old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def resume_step(trainer: Trainer) -> tuple[int, dict]:
    """Load the checkpoint if there is one; refuse it if it was written under another config or process
    count."""
    ckpt = trainer.vdir.path / "checkpoint"
    state_file = ckpt / "trainer_state.json"
    if not state_file.exists():
        return 0, {}
    try:
        state = json.loads(state_file.read_text())
    except ValueError as e:
        raise GftError(f"cannot resume: {state_file} does not parse ({e}); delete {ckpt} to start over") from None
    changed = [k for k in trainer.expected if state.get(k) != trainer.expected[k]]
    if changed:
        raise GftError(f"checkpoint {ckpt} was written with a different {', '.join(changed)}; refusing to resume "
                       f"(delete the checkpoint folder to start over, or restore the settings)")
    checkpoint.load(ckpt, trainer.rank, trainer.net, trainer.optimizer, trainer.scheduler, trainer.sharded)
    return int(state["step"]), state


def metric_lines(path: Path) -> list[dict]:
    """The complete lines of ``metrics.jsonl`` (a kill during an append leaves a partial last line:
    dropped)."""
    if not path.exists():
        return []
    lines = []
    for ln in path.read_text().splitlines():
        try:
            lines.append(json.loads(ln))
        except ValueError:
            continue
    return lines


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint being resumed from, and a partial last line."""
    if path.exists():
        lines = [m for m in metric_lines(path) if m.get("step", step + 1) <= step]
        store.atomic_write_bytes(path, "".join(json.dumps(m) + "\n" for m in lines).encode())


# ---------------------------------------------------------------- the stage: setup, one step, checkpoint, finish


def training_inputs(config: TrainConfig, run_dir: Path) -> tuple[store.VersionDir, Any]:
    bg = store.chosen_version(run_dir, "build-groups", config.build_groups_version)
    return bg, start_model(config, run_dir, bg.read_manifest()["inputs"]["student"]["ref"])


def start_model(config: TrainConfig, run_dir: Path, default: str) -> ModelRef:
    """``--init`` (a train version of this run, or a folder), else ``--model``, else ``default``."""
    if config.init:
        vdir = run_dir / "train" / config.init
        if vdir.is_dir() or re.fullmatch(r"[0-9a-f]{12}", config.init):
            if not (vdir / store.MANIFEST).exists():
                state = "is not complete" if vdir.is_dir() else "does not exist"
                raise GftError(f"--init: train version {config.init} {state} in {run_dir} (finish it with the same "
                               "gft train command, or name a model folder)")
            return resolve_model(str(vdir / "model"))
        if not Path(config.init).is_dir():
            raise GftError(f"--init {config.init}: neither a train version of {run_dir} nor a model folder")
        return resolve_model(config.init)
    return resolve_model(config.model or default)


def load_causal_lm(path: str, ref: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)  # fp32: master weights
    except Exception as e:
        raise GftError(f"could not load model '{ref}': {first_line(e)}") from None


def plan_steps(config: TrainConfig, examples: list[Example], world: int) -> list[list[int]]:
    per_epoch = step_batches(examples, config.batch_size, 1, config.seed, world)
    if not per_epoch:
        raise GftError(f"batch_size {config.batch_size} leaves no step for {world} processes")
    if config.max_steps:
        epochs = -(-config.max_steps // len(per_epoch))
        return step_batches(examples, config.batch_size, epochs, config.seed, world)[: config.max_steps]
    return step_batches(examples, config.batch_size, config.epochs, config.seed, world)


def make_accelerator(config: TrainConfig) -> Any:
    from accelerate import Accelerator

    autocast = mixed_bf16(config) and not config.fsdp  # FSDP casts the gathered parameters itself
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if autocast else "no")


def bf16(config: TrainConfig) -> bool:
    return config.dtype == "bfloat16" or (config.dtype == "auto" and torch.cuda.is_available())


def mixed_bf16(config: TrainConfig) -> bool:
    """bf16 compute on fp32 master weights (bf16 parameters need no cast)."""
    return bf16(config) and config.param_dtype == "float32"


OPTIMIZERS = ("adamw", "adamw8bit")


def compile_layers(net: torch.nn.Module) -> None:
    """``torch.compile`` every decoder layer in place (regional compilation: the layers run the same code,
    so they share one compiled graph; parameter names and checkpoints are unchanged). Dynamic shapes, so
    micro-batches of other lengths do not recompile."""
    layers = getattr(net.get_decoder(), "layers", None)
    if layers is None:
        raise GftError(f"--compile needs a decoder with .layers; {type(net).__name__} has none")
    for layer in layers:
        layer.compile(dynamic=True)


def make_optimizer(config: TrainConfig, params: Any, fused: bool) -> torch.optim.Optimizer:
    """torch's AdamW (``fused``: one kernel for every tensor's update, CUDA only), or torchao's AdamW8bit."""
    betas = (config.adam_beta1, config.adam_beta2)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay,
                                 **({"fused": True} if fused else {}))
    import warnings

    from torchao.optim import AdamW8bit  # TrainConfig.validate checked it is installed

    warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching.*")  # its compiled step, every tensor
    # stochastic rounding only acts on bf16 weights; fp32 master weights are updated exactly
    return AdamW8bit(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay,
                     bf16_stochastic_round=config.param_dtype == "bfloat16")


class Trainer:
    """The parts every training loop shares: the model and optimizer, one optimizer step, the metrics
    line, checkpoints, and the final save. ``run`` (offline) and ``online.run`` drive it."""

    def __init__(self, config: TrainConfig, accelerator: Any, vdir: store.VersionDir, model: ModelRef,
                 tokenizer: Any, total_steps: int, console: Console):
        from transformers import get_cosine_schedule_with_warmup

        self.config, self.accelerator, self.vdir, self.tokenizer, self.console = config, accelerator, vdir, \
            tokenizer, console
        self.world, self.rank, self.main = accelerator.num_processes, accelerator.process_index, \
            accelerator.is_main_process
        self.total_steps = total_steps
        if self.world > 1 and config.optimizer == "adamw8bit" and config.param_dtype == "bfloat16":
            raise GftError("optimizer adamw8bit on bf16 weights is for one process: its stochastic rounding draws "
                           "would differ between processes and their replicas drift apart (use one GPU, or "
                           "param_dtype float32)")
        torch.manual_seed(config.seed)
        net = load_causal_lm(model.path, model.ref, getattr(torch, config.param_dtype))
        if config.gradient_checkpointing:
            net.gradient_checkpointing_enable()
        if config.compile:
            compile_layers(net)
        policy = Policy(net, config.logprob_chunk)
        self.sharded = None  # under FSDP: the root unit (the Policy)
        if config.fsdp:
            from gftrepro import fsdp

            net.to(accelerator.device)
            self.sharded = fsdp.shard(policy, accelerator.device.type, self.world, mixed_bf16(config))
        optimizer = make_optimizer(config, policy.parameters(), accelerator.device.type == "cuda" and
                                   self.sharded is None)
        if config.param_dtype == "bfloat16" and config.optimizer == "adamw":
            console.print("  note: bf16 weights with adamw drop every update below half a bf16 step (20 SFT steps "
                          "at lr 1e-6 on SmolLM2-135M moved the loss 0.4% as far as fp32 weights); "
                          "--optimizer adamw8bit rounds them stochastically (98.6%)", markup=False)
        updates = total_steps * config.ppo_epochs
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * updates), updates)
        if self.sharded is not None:
            self.policy, self.optimizer = policy, optimizer
        else:
            self.policy, self.optimizer = accelerator.prepare(policy, optimizer)  # the scheduler is stepped by hand
        self.expected = {"config": cfg.versioned_dict(config), "world_size": self.world, "fsdp": config.fsdp}
        self.start, state = resume_step(self)
        self.skipped = int(state.get("skipped", 0))
        self.metrics_path = vdir.path / "metrics.jsonl"
        if self.main:
            truncate_metrics(self.metrics_path, self.start)
        needs_ref = config.kl_every or config.kl_coef
        ref_path = resolve_model(config.ref_model).path if config.ref_model else model.path
        self.ref = load_causal_lm(ref_path, "ref").to(accelerator.device).eval() if needs_ref else None
        self.ref_policy = Policy(self.ref, config.logprob_chunk) if config.kl_coef else None
        self.started = time.perf_counter()

    @property
    def net(self) -> torch.nn.Module:
        """The underlying transformers model (full weights under DDP; shards under FSDP)."""
        return self.policy.model if self.sharded is not None else self.accelerator.unwrap_model(self.policy).model

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The model's whole tensors by name, on every process (under FSDP a collective gather)."""
        if self.sharded is not None:
            from gftrepro import fsdp

            return fsdp.full_model_state(self.sharded)
        return dict(self.net.state_dict())

    def micro_batches(self, mine: list[Example]) -> list[dict]:
        size, device = self.config.micro_batch_size, self.accelerator.device
        return [collate(mine[k : k + size], self.tokenizer.pad_token_id, device) for k in range(0, len(mine), size)]

    def global_tokens(self, mine: list[Example]) -> int:
        local = torch.tensor(sum(len(e.ids) - e.prompt_len for e in mine), device=self.accelerator.device)
        return int(self.accelerator.reduce(local, "sum"))

    @torch.no_grad()
    def add_reference_logprobs(self, micro: list[dict], old: bool) -> None:
        """Behaviour log-probs (for ppo_epochs > 1) and reference log-probs (for kl_coef), recomputed here."""
        if old:
            self.policy.eval()
            for b in micro:
                b["old_logprobs"] = self.policy(b["input_ids"], b["attention_mask"], b["response_mask"])[0].detach()
        if self.ref_policy is not None:
            for b in micro:
                b["ref_logprobs"] = self.ref_policy(b["input_ids"], b["attention_mask"], b["response_mask"])[0]

    def update(self, step: int, micro: list[dict], num_tokens: int, num_seqs: int) -> dict[str, float]:
        """One optimizer step over this process's micro-batches; returns the step's summed statistics."""
        config, acc = self.config, self.accelerator
        self.policy.train()
        from gftrepro import fsdp

        sharded = self.sharded is not None
        sums = backward_step(self.policy, micro, config, num_tokens, num_seqs, float(self.world),
                             fsdp.no_sync if sharded else acc.no_sync)
        if config.kl_every and (step + 1) % config.kl_every == 0:
            with fsdp.unsharded(self.sharded) if sharded else nullcontext():
                for b in micro:
                    kl, n = token_kl(self.net, self.ref, b["input_ids"], b["attention_mask"], b["response_mask"],
                                     config.logprob_chunk)
                    sums["kl"] += kl
                    sums["kl_tokens"] += n
        packed = acc.reduce(torch.tensor([sums[k] for k in STAT_KEYS], device=acc.device, dtype=torch.float64), "sum")
        sums = dict(zip(STAT_KEYS, packed.tolist(), strict=True))
        clip = config.grad_clip or float("inf")
        grad_norm = fsdp.grad_norm(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), clip)) if sharded \
            else float(acc.clip_grad_norm_(self.policy.parameters(), clip))
        if math.isfinite(sums["loss"]) and math.isfinite(grad_norm):
            self.optimizer.step()
        else:  # never apply a non-finite update; count it
            self.skipped += 1
        sums["lr"], sums["grad_norm"] = float(self.scheduler.get_last_lr()[0]), grad_norm  # torchao: a tensor
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def log(self, step: int, sums: dict[str, float], seconds: float, extra: dict[str, Any] | None = None) -> dict:
        m = step_metrics(step + 1, sums, sums["lr"], sums["grad_norm"], seconds, self.skipped) | (extra or {})
        if self.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(m) + "\n")
        return m

    def checkpoint(self, step: int) -> None:
        """After step ``step`` (0-based): a resumable checkpoint every ``save_every`` steps (not after the last)."""
        done = step + 1
        if self.config.save_every and done % self.config.save_every == 0 and done < self.total_steps:
            save_checkpoint(self, done)

    def progress(self) -> Progress:
        return Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=self.console, disable=not (self.main and self.console.is_terminal),
                        transient=True)

    def finish(self, summary: dict[str, Any]) -> dict:
        """Save the model, write the manifest (main process), remove the checkpoint."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if self.skipped >= self.total_steps * self.config.ppo_epochs and self.total_steps:
            raise GftError(f"every optimizer step was skipped (non-finite loss or gradient): nothing trained; "
                           f"see {self.metrics_path}")
        state = self.full_weights() if self.sharded is not None else None  # gathered on every process
        if self.main:
            if not all(torch.isfinite(t).all() for t in (state or dict(self.net.state_dict())).values()):
                raise GftError("the trained weights are not finite; not saving them (lower --lr?)")
            save_model(self.net, self.tokenizer, self.vdir.path / "model", state)
        acc.wait_for_everyone()
        summary = {"steps": self.total_steps, "skipped_steps": self.skipped, "world_size": self.world,
                   "final_loss": last_metric(self.metrics_path, "loss"),
                   "train_seconds_this_run": time.perf_counter() - self.started, "method": self.config.method,
                   **summary}
        model_files = sorted(p for p in (self.vdir.path / "model").rglob("*") if p.is_file())
        manifest = store.finalize(self.vdir, 0, {"summary": summary}, model_files) if self.main else \
            {"summary": summary}
        if self.main:
            shutil.rmtree(self.vdir.path / "checkpoint", ignore_errors=True)
            done_line(self.console, summary_line(manifest))
        acc.wait_for_everyone()
        return manifest


@contextmanager
def writing_version(accelerator: Any, vdir: store.VersionDir, console: Console) -> Iterator[None]:
    """The main process holds the version's writer lock (and removes damaged outputs) while every process
    trains."""
    with writing(vdir, console) if accelerator.is_main_process else nullcontext():
        accelerator.wait_for_everyone()
        yield


def run(config: TrainConfig, run_dir: Path, console: Console | None = None) -> dict:
    if config.is_online:
        from gftrepro import online

        return online.run(config, run_dir, console)
    accelerator = make_accelerator(config)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    console = console or Console(quiet=not main)
    bg, model = training_inputs(config, run_dir)
    tokenizer = load_tokenizer(model)
    examples, dropped = tokenize(read_rows(bg, config.dataset), tokenizer, config.max_length, config.truncation)
    steps = plan_steps(config, examples, world)
    inputs = {"build-groups": bg.version, "model": {"ref": model.ref, "fingerprint": model.fingerprint}}
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
                batch = [examples[i] for i in steps[step]]
                mine = batch[rank::world]
                sums = trainer.update(step, trainer.micro_batches(mine), trainer.global_tokens(mine), len(batch))
                m = trainer.log(step, sums, time.perf_counter() - t0)
                bar.update(task, advance=1, info=f"loss {m['loss']:.4f} {m['tokens_per_s']:.0f} tok/s")
                trainer.checkpoint(step)
        return trainer.finish({"sequences": len(examples), "dropped": dict(dropped), "data": config.dataset})


def save_model(net: torch.nn.Module, tokenizer: Any, final: Path, state: dict[str, torch.Tensor] | None = None
               ) -> None:
    """``save_pretrained`` (of ``state``, the gathered full tensors, under FSDP) to a temporary folder, renamed."""
    tmp = final.with_name(".model-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state} if state is not None else {}))
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def last_metric(path: Path, key: str) -> float | None:
    lines = metric_lines(path)
    return lines[-1].get(key) if lines else None


def summary_line(manifest: dict) -> str:
    s = manifest["summary"]
    loss = "-" if s["final_loss"] is None else f"{s['final_loss']:.4f}"
    skipped = f" ({s['skipped_steps']} skipped)" if s["skipped_steps"] else ""
    procs = f", {s['world_size']} processes" if s["world_size"] > 1 else ""
    return f"{s['method']}: {s['steps']} steps{skipped}, {s['sequences']} sequences, final loss {loss}{procs}"
