"""``Trainer``: what every training loop shares (offline ``gftrepro/train.py``, on-policy
``gftrepro/online.py``): the model and optimizer set up under accelerate or FSDP, one optimizer step,
the metrics line, resumable checkpoints, and the final save with the manifest."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gftrepro import config as cfg
from gftrepro import fsdp, lora, methods, modelcard, store
from gftrepro.engine.batches import Example, collate, grouped_by_length
from gftrepro.engine.config import TrainConfig
from gftrepro.engine.state import (
    last_metric,
    metric_lines,
    resume_step,
    save_checkpoint,
    summary_line,
    truncate_metrics,
)
from gftrepro.engine.step import STAT_KEYS, backward_step, step_metrics
from gftrepro.errors import GftError
from gftrepro.logprobs import Policy, token_kl
from gftrepro.models import ModelRef, first_line, resolve_model
from gftrepro.stage import done_line, writing
from gftrepro.trackers import Trackers, names_of


def bf16(config: TrainConfig) -> bool:
    return config.dtype == "bfloat16" or (config.dtype == "auto" and torch.cuda.is_available())


def mixed_bf16(config: TrainConfig) -> bool:
    """bf16 compute on fp32 master weights (bf16 parameters need no cast)."""
    return bf16(config) and config.param_dtype == "float32"


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
    from torchao.optim import AdamW8bit  # TrainConfig.validate checked it is installed

    warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching.*")  # its compiled step, every tensor
    # stochastic rounding only acts on bf16 weights; fp32 master weights are updated exactly
    return AdamW8bit(params, lr=config.lr, betas=betas, weight_decay=config.weight_decay,
                     bf16_stochastic_round=config.param_dtype == "bfloat16")


def load_causal_lm(path: str, ref: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False)  # fp32: master
    except Exception as e:
        raise GftError(f"could not load model '{ref}': {first_line(e)}") from None


def make_accelerator(config: TrainConfig) -> Any:
    from accelerate import Accelerator

    autocast = mixed_bf16(config) and not config.fsdp  # FSDP casts the gathered parameters itself
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if autocast else "no")


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


def with_adapters(net: torch.nn.Module, config: TrainConfig, console: Console) -> torch.nn.Module:
    """``--lora-rank``: the PEFT model (only its adapters train), said on the console."""
    if config.gradient_checkpointing:
        net.enable_input_require_grads()  # frozen embeddings: checkpointed layers still get a gradient
    net = lora.wrap(net, config)
    trained, total = lora.trainable_count(net)
    console.print(f"  LoRA rank {config.lora_rank}: {trained:,} of {total:,} parameters train "
                  f"({100 * trained / total:.2f}%)", highlight=False)
    return net


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
        self.lora = bool(config.lora_rank)
        if self.lora:
            net = with_adapters(net, config, console)
        if config.compile:
            compile_layers(net)
        # gftrepro.prefix calls the decoder twice with a cache: not under FSDP, checkpointing or compiled layers
        self.share_prompts = config.share_prompts and not (config.fsdp or config.gradient_checkpointing
                                                           or config.compile)
        policy = Policy(net, config.logprob_chunk, self.share_prompts)
        self.sharded = None  # under FSDP: the root unit (the Policy)
        if config.fsdp:
            net.to(accelerator.device)
            self.sharded = fsdp.shard(policy, accelerator.device.type, self.world, mixed_bf16(config))
        optimizer = make_optimizer(config, [p for p in policy.parameters() if p.requires_grad],
                                   accelerator.device.type == "cuda" and self.sharded is None)
        if config.param_dtype == "bfloat16" and config.optimizer == "adamw":
            console.print("  note: bf16 weights with adamw drop every update below half a bf16 step (20 SFT steps "
                          "at lr 1e-6 on SmolLM2-135M moved the loss 0.4% as far as fp32 weights); "
                          "--optimizer adamw8bit rounds them stochastically (98.6%)", markup=False)
        updates = total_steps * config.updates_per_step
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
        self.trackers = Trackers(names_of(config.report_to) if self.main else [], vdir.path, vdir.path.parents[1],
                                 f"train {vdir.version} {config.method}", cfg.to_dict(config), self.start)
        for m in metric_lines(self.metrics_path) if self.start else []:  # steps done before a kill, not yet sent
            self.trackers.add(m)
        self.anchored = methods.get(config.method).anchor  # asft: the KL anchor to the starting model
        needs_ref = config.kl_every or config.kl_coef or self.anchored
        ref_path = resolve_model(config.ref_model).path if config.ref_model else model.path
        if needs_ref and self.lora and ref_path == model.path:  # the base is the model without its adapters
            self.ref = lora.AdaptersOff(self.net)
        else:
            self.ref = load_causal_lm(ref_path, "ref").to(accelerator.device).eval() if needs_ref else None
        self.anchor = None  # asft's anchor is the model this training started from, whatever --ref-model says
        if self.anchored:
            self.anchor = self.ref if ref_path == model.path else lora.AdaptersOff(self.net) if self.lora else \
                load_causal_lm(model.path, "anchor").to(accelerator.device).eval()
            self.anchor.requires_grad_(False)
        self.ref_policy = Policy(self.ref, config.logprob_chunk, self.share_prompts) if config.kl_coef else None
        self.started = time.perf_counter()

    @property
    def net(self) -> torch.nn.Module:
        """The underlying transformers model (full weights under DDP; shards under FSDP)."""
        return self.policy.model if self.sharded is not None else self.accelerator.unwrap_model(self.policy).model

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The model's whole tensors by name, on every process (under FSDP a collective gather)."""
        if self.sharded is not None:
            return fsdp.full_model_state(self.sharded)
        if self.lora:  # merged, under the base model's names
            return lora.merged_state(self.net)
        return dict(self.net.state_dict())

    def micro_batches(self, mine: list[Example]) -> list[dict]:
        """The step's examples cut into micro-batches of similar lengths, a group's rows side by side (groups
        sorted by their longest row, so little of each batch is padding, and a group's rows share their prompt's
        pass: ``gftrepro.prefix``); the loss's denominators are the step's, so how the step is cut does not
        change its gradient."""
        size, device = self.config.micro_batch_size, self.accelerator.device
        mine = grouped_by_length(mine)
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
        sharded = self.sharded is not None
        sums = backward_step(self.policy, micro, config, num_tokens, num_seqs, float(self.world),
                             fsdp.no_sync if sharded else acc.no_sync, self.anchor)
        if config.kl_every and (step + 1) % config.kl_every == 0:
            with fsdp.unsharded(self.sharded) if sharded else nullcontext():
                for b in micro:
                    kl, n = token_kl(self.net, self.ref, b["input_ids"], b["attention_mask"], b["response_mask"],
                                     config.logprob_chunk, self.share_prompts)
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
            self.trackers.add(m)
        return m

    def checkpoint(self, step: int) -> None:
        """After step ``step`` (0-based): a resumable checkpoint every ``save_every`` steps (not after the last)."""
        done = step + 1
        if self.config.save_every and done % self.config.save_every == 0 and done < self.total_steps:
            save_checkpoint(self, done)
            self.trackers.flush()  # the steps up to a checkpoint are safe: a resumed run never sends them again

    def progress(self) -> Progress:
        return Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=self.console, disable=not (self.main and self.console.is_terminal),
                        transient=True)

    def finish(self, summary: dict[str, Any]) -> dict:
        """Save the model, write the manifest (main process), remove the checkpoint."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if self.skipped >= self.total_steps * self.config.updates_per_step and self.total_steps:
            raise GftError(f"every optimizer step was skipped (non-finite loss or gradient): nothing trained; "
                           f"see {self.metrics_path}")
        state = self.full_weights() if self.sharded is not None else None  # gathered on every process
        if self.main:
            if not all(torch.isfinite(t).all() for t in (state or dict(self.net.state_dict())).values()):
                raise GftError("the trained weights are not finite; not saving them (lower --lr?)")
            if self.lora:  # the adapter beside a plain merged folder
                self.net.save_pretrained(str(self.vdir.path / "adapter"))
                save_model(self.net.get_base_model(), self.tokenizer, self.vdir.path / "model",
                           lora.merged_state(self.net))
            else:
                save_model(self.net, self.tokenizer, self.vdir.path / "model", state)
        acc.wait_for_everyone()
        summary = {"steps": self.total_steps, "skipped_steps": self.skipped, "world_size": self.world,
                   "final_loss": last_metric(self.metrics_path, "loss"),
                   "train_seconds_this_run": time.perf_counter() - self.started, "method": self.config.method,
                   **summary}
        if self.main:  # the model card, listed in the manifest with the weights
            modelcard.write(self.vdir.path / "model" / "README.md", self.config, self.vdir, summary,
                            metric_lines(self.metrics_path))
        model_files = sorted(p for d in ("model", "adapter") for p in (self.vdir.path / d).rglob("*") if p.is_file())
        manifest = store.finalize(self.vdir, 0, {"summary": summary}, model_files) if self.main else \
            {"summary": summary}
        if self.main:
            shutil.rmtree(self.vdir.path / "checkpoint", ignore_errors=True)
            self.trackers.close()
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


def save_model(net: torch.nn.Module, tokenizer: Any, final: Path, state: dict[str, torch.Tensor] | None = None
               ) -> None:
    """``save_pretrained`` (of ``state``, the gathered full tensors, under FSDP) to a temporary folder, renamed."""
    tmp = final.with_name(".model-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state} if state is not None else {}))
    tokenizer.save_pretrained(tmp)
    if final.is_symlink():  # a link put in place of the folder: remove the link, never what it points to
        final.unlink()
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
