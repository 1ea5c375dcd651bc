"""``gft plan --config RUN.yaml``: what a run will do and cost, before it spends GPU-days.

Loads no model and no dataset: it resolves the whole-run config (as ``gft run`` does), finds
which stages already have a complete version with exactly this config in the run folder, and
estimates from stated assumptions (each overridable by a flag):

- generated tokens = samples x ``--mean-new-tokens`` (default 600: an assumption for math
  chain-of-thought; ``gft eval``/sampling record the real ``completion_tokens`` after a first run);
- trained tokens = training sequences x (``--mean-prompt-tokens`` + mean new tokens) x epochs, or
  ``max_steps`` x ``batch_size`` groups (K sequences each on group data) where the train config sets
  ``max_steps``;
- asft's reference forward and psft's old-policy log-probs (several updates a batch) add a no-grad forward
  each, about a third of a training step's compute; gft-no-mix trains GFT's groups less their teacher
  members;
- every training and evaluation is counted once per seed (``seeds``: each seed trains every method and
  evaluates the base and every model); eval counts ``limit`` problems per benchmark where set;
- on-policy methods: steps x prompts_per_step x self_k samples generated during training (counted
  as generation) plus the groups' tokens trained, per link of a chain;
- GPU-hours: generation at ``--gen-tok-s`` x (1.5 / params in B) tokens/s per GPU (default 15,000
  for a 1.5B model: an assumption, vLLM was not measurable here); training at 16,912 x (1.54 /
  params in B) tokens/s per H100 (measured: benchmarks/RESULTS.md, Qwen2-1.5B-shaped, bf16);
- memory: full fine-tuning with AdamW in mixed precision takes about 16 bytes per parameter
  (fp32 weights, gradients, two moments); above 80% of one GPU it says to use FSDP.

Train and eval rows count as complete only through their upstream versions (a complete train
version whose build-groups input is this run's); eval completeness is not checked (its samples
are reused by ``gft eval`` anyway).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gftrepro import config as cfg
from gftrepro import store
from gftrepro.methods import REGISTRY
from gftrepro.recipes import MODELS, TEACHER

PARAMS_B = {f.hub: f.params_b for f in MODELS} | {TEACHER: 72.7, "testbed:teacher": 0.0009,
                                                  "testbed:student": 0.00012}
TRAIN_TOK_S_1P5B = 16_912  # measured on one H100 (benchmarks/RESULTS.md)


@dataclass(frozen=True)
class Assumptions:
    mean_new_tokens: float = 600.0
    mean_prompt_tokens: float = 200.0
    gen_tok_s: float = 15_000.0  # per GPU for a 1.5B model
    gpu_gb: float = 80.0


def params_of(model: str) -> float | None:
    return PARAMS_B.get(model)


def complete_with(run_dir: Path, stage: str, config: Any, inputs: dict[str, Any] | None = None) -> str | None:
    """A complete version of ``stage`` with this config (versioned keys) and, where given, these upstream
    versions."""
    wanted = cfg.versioned_dict(config)  # version selectors are unversioned: the inputs check covers them
    for v in store.versions(run_dir, stage):
        if not v.is_complete():
            continue
        stored = json.loads((v.path / store.CONFIG).read_text())
        same = all(stored["config"].get(k) == val for k, val in wanted.items())
        if same and all(stored["inputs"].get(k) == val for k, val in (inputs or {}).items()):
            return v.version
    return None


def chain(run_dir: Path, stages: dict[str, Any]) -> dict[str, str | None]:
    """Complete versions of the data stages that match this run, following their inputs."""
    done: dict[str, str | None] = {s: complete_with(run_dir, s, stages[s]) for s in ("sample-teacher", "sample-self")}
    ups = {"sample-teacher": done["sample-teacher"], "sample-self": done["sample-self"]}
    done["verify"] = complete_with(run_dir, "verify", stages["verify"], ups) if all(ups.values()) else None
    as_run = dataclasses.replace(stages["build-groups"], model=stages["sample-self"].model)  # as gft run builds it
    done["build-groups"] = complete_with(run_dir, "build-groups", as_run,
                                         {"verify": done["verify"]}) if done["verify"] else None
    return done


def gpu_hours_gen(tokens: float, model: str, a: Assumptions) -> float | None:
    p = params_of(model)
    return None if p is None else tokens / (a.gen_tok_s * 1.5 / max(p, 1e-3)) / 3600


def plan_rows(run: Any, stages: dict[str, Any], run_dir: Path, a: Assumptions) -> list[dict]:
    """One row per stage (and per training link of each method), every training and evaluation counted
    over ``run.seeds`` seeds: each seed trains every method again and evaluates the base and every model."""
    done = chain(run_dir, stages)
    rows = []
    for source in ("teacher", "self"):
        c = stages[f"sample-{source}"]
        samples = c.limit * c.n
        tokens = samples * a.mean_new_tokens
        lp = " + log-probs" if getattr(c, "logprobs", False) else ""  # pear's behaviour log-probs: no extra pass
        rows.append({"stage": f"sample-{source}", "work": f"{c.limit:,} prompts x {c.n}{lp}",
                     "samples": samples, "tokens": tokens, "gpu_h": gpu_hours_gen(tokens, c.model, a),
                     "done": done[f"sample-{source}"]})
    g = stages["build-groups"]
    st, ss = stages["sample-teacher"], stages["sample-self"]
    rows.append({"stage": "verify", "work": f"{st.limit * (st.n + 1) + ss.limit * ss.n:,} answers",
                 "samples": None, "tokens": None, "gpu_h": 0.0, "done": done["verify"]})
    rows.append({"stage": "build-groups", "work": f"K = {g.k} ({g.n_expert}:{g.n_teacher}:{g.n_self})",
                 "samples": None, "tokens": None, "gpu_h": 0.0, "done": done["build-groups"]})
    from gftrepro.pipeline import chain as links_of
    from gftrepro.pipeline import train_config_for

    p = params_of(ss.model)
    for entry in run.methods:
        links = links_of(entry)
        for link in links:
            method, online, t = link.method, link.online, train_config_for(stages, link)
            if online:
                rows.append(over_seeds(online_row(entry, method, t, stages, a, p), run.seeds))
            else:  # an entry's own build-groups settings (gft@ratio=2:6) make its own groups
                own = {**stages, "build-groups": dataclasses.replace(g, **dict(link.groups))}
                rows.append(over_seeds(offline_row(entry, method, t, own, run_dir, done, a, p,
                                                   single=len(links) == 1 and not link.groups, seeds=run.seeds),
                                       run.seeds))
            if not online and run.rounds > 1 and REGISTRY[method].rounds:
                rows.append(over_seeds(rounds_row(rows[-1], method, run.rounds, ss, a, p, run.seeds), run.seeds))
    e = stages["eval"]
    from gftrepro.evalsets import resolve_names

    names = [b.name for b in resolve_names(e.benchmarks)]
    problems = sum(min(e.limit, BENCH_SIZES.get(n, 0)) if e.limit else BENCH_SIZES.get(n, 0) for n in names)
    models = (len(run.methods) + 1) * run.seeds  # every seed evaluates the base and each trained model
    samples = problems * e.samples * models
    tokens = samples * a.mean_new_tokens
    seeds = f" x {run.seeds} seeds" if run.seeds > 1 else ""
    rows.append({"stage": "eval", "work": f"base + {len(run.methods)} trained{seeds}: {len(names)} benchmarks, "
                 f"{problems:,} problems x n = {e.samples}", "samples": samples,
                 "tokens": tokens, "gpu_h": gpu_hours_gen(tokens, ss.model, a), "done": None})
    return rows


def over_seeds(row: dict, seeds: int) -> dict:
    """A training row counted once per seed (each seed trains the method again)."""
    if seeds == 1:
        return row
    scale = {k: None if row[k] is None else row[k] * seeds for k in ("samples", "tokens", "gpu_h")}
    return row | scale | {"work": f"{row['work']} x {seeds} seeds"}


def train_hours(tokens: float, p: float | None) -> float | None:
    return None if p is None else tokens / (TRAIN_TOK_S_1P5B * 1.54 / max(p, 1e-3)) / 3600


def offline_row(entry: str, method: str, t: Any, stages: dict[str, Any], run_dir: Path, done: dict, a: Assumptions,
                p: float | None, single: bool, seeds: int = 1) -> dict:
    """One seed's offline training: ``max_steps`` x ``batch_size`` sequences where max_steps is set (the
    data cycles), else every sequence once per epoch; complete per seed (``seeds`` from the train seed)."""
    from gftrepro import methods

    ss, st, g = stages["sample-self"], stages["sample-teacher"], stages["build-groups"]
    trained: list[str] = []
    if single and done["build-groups"]:
        for seed in range(t.seed, t.seed + seeds):
            as_run = dataclasses.replace(t, method=method, build_groups_version=done["build-groups"], model=ss.model,
                                         seed=seed)
            version = complete_with(run_dir, "train", as_run, {"build-groups": done["build-groups"], **t.unit_inputs})
            trained += [version] if version else []
    m = methods.get(method)
    group = g.n_expert + g.n_self if m.no_teacher else g.k  # gft-no-mix: GFT's groups without the teacher
    sequences = ss.limit * {"groups": group, "sft": 1, "sft-mix": 1 + st.n, "teacher": st.n}[m.data]
    per_group = group if m.data == "groups" else 1  # batch_size counts groups: K sequences each on group data
    steps = f", {t.max_steps:,} steps x {t.batch_size}" + (f" groups of {group}" if per_group > 1 else "") \
        if t.max_steps else ""
    seen = t.max_steps * t.batch_size * per_group if t.max_steps else sequences * t.epochs
    tokens = seen * (a.mean_prompt_tokens + a.mean_new_tokens)
    # a no-grad forward is about a third of a training step's compute: asft's reference forward, psft's
    # old-policy log-probs (several updates a batch)
    forwards = int(m.anchor) + int(t.updates_per_batch > 1)  # never both: mini-batches are psft's alone
    extra = ", + 1 reference forward" if m.anchor else ", + old log-probs" if forwards else ""
    state = (trained[0] if seeds == 1 else f"{len(trained)}/{seeds}") if trained else None
    return {"stage": f"train {method}" + ("" if single else f" ({entry})"),
            "work": f"{sequences:,} sequences{steps}{extra}", "samples": None, "tokens": tokens,
            "gpu_h": None if p is None else train_hours(tokens, p) * (1 + forwards / 3), "done": state}


def rounds_row(first: dict, method: str, rounds: int, ss: Any, a: Assumptions, p: float | None,
               seeds: int = 1) -> dict:
    """``--rounds R``: rounds 2..R each re-sample the self rollouts from the new checkpoint (then verify,
    build groups) and train again as much as the first round (one seed's worth: ``first`` holds ``seeds``)."""
    more = rounds - 1
    samples = more * ss.limit * ss.n
    gen = gpu_hours_gen(samples * a.mean_new_tokens, ss.model, a)
    train = train_hours(more * first["tokens"] / seeds, p)
    return {"stage": f"train {method} rounds 2-{rounds}",
            "work": f"{more} x (re-sample {ss.limit:,} x {ss.n}, retrain)", "samples": samples,
            "tokens": samples * a.mean_new_tokens + more * first["tokens"] / seeds,
            "gpu_h": None if gen is None or train is None else gen + train, "done": None}


def online_row(entry: str, method: str, t: Any, stages: dict[str, Any], a: Assumptions, p: float | None) -> dict:
    """On-policy: every step samples prompts_per_step x self_k completions, then trains on the groups."""
    ss = stages["sample-self"]
    per_epoch = max(1, ss.limit // t.prompts_per_step)
    steps = t.max_steps or per_epoch * t.epochs
    expert, teacher, own = t.group
    samples = steps * t.prompts_per_step * own
    new_tokens = min(a.mean_new_tokens, t.rollout_max_new_tokens)
    trained = steps * t.prompts_per_step * (expert + teacher + own) * (a.mean_prompt_tokens + new_tokens)
    gen = gpu_hours_gen(samples * new_tokens, ss.model, a)
    hours = None if gen is None or p is None else gen + train_hours(trained * t.ppo_epochs, p)
    return {"stage": f"train {method} on-policy" + (f" ({entry})" if entry != method else ""),
            "work": f"{steps:,} steps x {t.prompts_per_step} prompts, K = {expert}+{teacher}+{own}",
            "samples": samples, "tokens": samples * new_tokens + trained, "gpu_h": hours, "done": None}


# problems per benchmark (the shared copies' counts; TabMWP: the 1,000-problem test subset, assumed)
BENCH_SIZES = {"math500": 500, "minerva_math": 272, "olympiadbench": 675, "aime24": 30, "aime25": 30, "amc23": 40,
               "college_math": 2818, "gaokao2023en": 383, "tabmwp": 1000, "sat_math": 32, "mmlu_stem": 3018,
               "mawps": 2065, "svamp": 1000, "gsm8k": 1319, "testbed": 300, "testbed-probe": 300,
               "testbed-probe-hard": 500, "testbed-heldout": 1000}


# optimizer-state bytes per parameter of torchao's AdamW8bit (8-bit moments, fp32 block scales; tensors under
# 4,096 values stay in the weights' dtype): measured on SmolLM2-135M, benchmarks/train_step.py lowmem
ADAMW8BIT_STATE_BYTES = 2.03


# LoRA parameters per rank as a share of the model's (all-linear adapters: r x (in + out) per linear layer):
# 7.5e-4 for Qwen2.5-1.5B (28 layers, hidden 1536, KV 256, MLP 8960: 1.15M per rank over 1.54B), lower for
# larger models, so an upper estimate for the recipes' models
LORA_SHARE_PER_RANK = 7.5e-4


def bytes_per_param(param_dtype: str = "float32", optimizer: str = "adamw") -> float:
    """Weights + gradients + AdamW moments per parameter, as ``gft train`` stores them."""
    weight = 4 if param_dtype == "float32" else 2
    return 2 * weight + (ADAMW8BIT_STATE_BYTES if optimizer == "adamw8bit" else 2 * weight)


def layout(param_dtype: str, optimizer: str) -> str:
    if (param_dtype, optimizer) == ("float32", "adamw"):
        return "mixed precision"
    return f"param_dtype {param_dtype}, optimizer {optimizer}"


def memory_note(model: str, a: Assumptions, train: Any = None, gpus: int = 0) -> str:
    """The training layout the train config assumes and whether it fits: ``train.fsdp`` shards weights,
    gradients and AdamW states over ``gpus`` (the recipe's count; 8 where unknown); ``param_dtype`` and
    ``optimizer`` set the bytes per parameter."""
    p = params_of(model)
    if p is None:
        return f"training memory of {model}: parameter count unknown to gft plan"
    fsdp = bool(getattr(train, "fsdp", False))
    dtype, optimizer = getattr(train, "param_dtype", "float32"), getattr(train, "optimizer", "adamw")
    rank = getattr(train, "lora_rank", 0)
    if rank:  # frozen weights, plus adapters with their gradients and AdamW states
        weights = (4 if dtype == "float32" else 2) * p
        adapters = LORA_SHARE_PER_RANK * rank * p * bytes_per_param(dtype, optimizer)
        need = weights + adapters
        verdict = "fits" if need <= 0.8 * a.gpu_gb else "does NOT fit one GPU: lower param_dtype to bfloat16"
        return (f"training {model} ({p:.2f}B) with LoRA rank {rank}: ~{weights:.0f} GB of frozen {dtype} weights + "
                f"~{adapters:.1f} GB of adapters, their gradients and AdamW states on each {a.gpu_gb:.0f} GB GPU, "
                f"plus activations: {verdict}")
    need = bytes_per_param(dtype, optimizer) * p  # GB for weights + grads + AdamW moments
    what = f"weights, gradients and AdamW states ({layout(dtype, optimizer)})"
    gpus = gpus or {f.hub: f.gpus for f in MODELS}.get(model, 8)
    if fsdp:
        per = need / gpus
        verdict = "fits" if per <= 0.8 * a.gpu_gb else "does NOT fit: use more GPUs"
        return f"training {model} ({p:.2f}B): layout FSDP over {gpus} GPUs (fsdp: true): ~{per:.0f} GB of {what} " \
               f"per {a.gpu_gb:.0f} GB GPU (of ~{need:.0f} GB), plus activations: " \
               f"{verdict}{one_gpu_note(p, a) if need > 0.8 * a.gpu_gb else ''}"
    if need <= 0.8 * a.gpu_gb:
        return f"training {model} ({p:.2f}B): layout data parallel over {gpus} GPUs: ~{need:.0f} GB of {what} " \
               f"on each: fits one {a.gpu_gb:.0f} GB GPU"
    shards = int(-(-need // (0.6 * a.gpu_gb)))
    return f"training {model} ({p:.2f}B): ~{need:.0f} GB of {what} does NOT fit one {a.gpu_gb:.0f} GB GPU: shard " \
           f"them with FSDP over >= {shards} GPUs (train: fsdp: true, or gft train --fsdp){one_gpu_note(p, a)}"


def one_gpu_note(p: float, a: Assumptions) -> str:
    """The one-GPU way and its price, in numbers (benchmarks/train_step.py lowmem and lowmem-train)."""
    low = bytes_per_param("bfloat16", "adamw8bit") * p
    return (f". On one GPU: --param-dtype bfloat16 --optimizer adamw8bit (torchao's 8-bit AdamW: the lowmem extra) "
            f"takes ~{low:.0f} GB before activations and keeps AdamW's updates in expectation through stochastic "
            f"rounding (on SmolLM2-135M at lr 1e-6, 20 SFT steps move the loss 98.6% as far as fp32 weights do; "
            f"plain bf16 weights: 0.4%); its GPU speed is not measured yet")


def show(rows: list[dict], notes: list[str], console: Console, models: str = "") -> None:
    """The plan at the terminal's width (80 columns fit): long stage and work texts fold, numbers do not;
    the complete versions and the assumptions follow as wrapped lines."""
    from rich import box

    if models:
        console.print(models, markup=False)
    table = Table(title="gft plan (estimates: see the assumptions below)", box=box.SIMPLE_HEAD)
    for col in ("stage", "work", "samples", "tokens (M)", "GPU-h", "state"):
        number = col in ("samples", "tokens (M)", "GPU-h")
        table.add_column(col, justify="right" if number else "left", no_wrap=number,
                         overflow="ellipsis" if number else "fold", ratio=None if number else 1)
    total, complete = 0.0, []
    for r in rows:
        hours = "?" if r["gpu_h"] is None else f"{r['gpu_h']:,.1f}"
        total += r["gpu_h"] or 0.0
        state = "to run"
        if r["done"]:
            state = f"{r['done']} done" if "/" in r["done"] else "done"
            complete += [f"{r['stage']} {r['done']}"] if "/" not in r["done"] else []
        table.add_row(r["stage"], r["work"], "-" if r["samples"] is None else f"{r['samples']:,}",
                      "-" if r["tokens"] is None else f"{r['tokens'] / 1e6:,.1f}", hours, state)
    console.print(table)
    console.print(f"total: about {total:,.0f} GPU-hours (H100-class), stages marked done included")
    if complete:
        console.print("complete versions: " + "; ".join(complete), markup=False)
    for n in notes:
        console.print(n, markup=False)
