"""``TrainConfig``: every setting of ``gft train`` (offline and on-policy), each documented once, validated
at config time."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

from gftrepro import methods
from gftrepro.config import opt, require
from gftrepro.errors import GftError
from gftrepro.groups import STD_MODES
from gftrepro.losses import AGGREGATIONS, PEAR_LEVELS
from gftrepro.methods import METHODS

DATASETS = ("groups", "sft", "sft-mix", "teacher")
OPTIMIZERS = ("adamw", "adamw8bit")


@dataclass(frozen=True)
class TrainConfig:
    method: str = opt("gft", "sft, sft-mix, dft, asft, psft, pear, gft, gft-no-dcr, gft-no-gal, gft-no-mix or grpo")
    online: bool = opt(False, "sample the self responses from the current weights every step (gft, gft-no-dcr, "
                              "gft-no-gal; grpo always does)")
    init: str = opt("", "start from this model: a complete train version of this run, or a model folder "
                        "('' = --model)")
    data: str = opt("", "training set: groups, sft, sft-mix or teacher (the correct teacher samples) ('' = the "
                        "method's own)")
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
    batch_size: int = opt(16, "groups (prompts) per optimizer step, all processes together: K sequences each on "
                              "group data, one sequence each on single-trajectory data (sft, dft, ...)")
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
    share_prompts: bool = opt(True, "encode each distinct prompt of a micro-batch once (a group's K rows share it; "
                                    "same numbers, fewer tokens; not with fsdp, gradient checkpointing or compile)",
                              versioned=False)
    lora_rank: int = opt(0, "train LoRA adapters of this rank instead of every weight (0 = full fine-tuning; PEFT: "
                            "the lora extra)", versioned="unless-default")
    lora_alpha: float = opt(16.0, "LoRA scale numerator: updates scaled by alpha / rank", versioned="unless-default")
    lora_dropout: float = opt(0.0, "dropout on the LoRA input", versioned="unless-default")
    lora_target: list[str] = opt(["all-linear"], "modules given adapters: all-linear (every linear layer but the "
                                 "LM head) or names such as q_proj,v_proj", versioned="unless-default")
    report_to: list[str] = opt([], "experiment trackers, comma-separated: tensorboard, mlflow, wandb, trackio (each an "
                               "optional extra; local and offline by default)", versioned=False)
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
    anchor_coef: float = opt(0.1, "asft: lambda, the weight of KL(pi_ref || pi_theta) over the vocabulary at each "
                                  "response token, pi_ref the starting model (authors' code 0.1; their README 0.05)",
                             versioned="unless-default")
    mini_batches: int = opt(-1, "psft: optimizer updates per batch, each on batch_size / mini_batches sequences, all "
                                "against the policy at the batch's start (-1 = the method's: psft 8, as the authors' "
                                "64-prompt batches of 8; others 1)", versioned="unless-default")
    pear_level: str = opt("token", "pear: weight level, sequence, token (the discounted suffix after each token) or "
                                   "block", versioned="unless-default")
    pear_gamma: float = opt(0.999, "pear: discount per token of the suffix product (token and block levels; from a "
                                   "third-party reading of the paper, unverified)", versioned="unless-default")
    pear_block: int = opt(4, "pear: tokens per block at the block level (third-party reading, unverified)",
                          versioned="unless-default")
    clip_eps_high: float = opt(-1.0, "upper clip range of the ratio, 1 + clip_eps_high (-1 = the method's: psft 0.28 "
                                     "as the authors; grpo clip_eps)", versioned="unless-default")
    rollout_backend: str = opt("hf", "online: generation backend, hf (in-process) or vllm (colocated)")
    rollout_temperature: float = opt(1.0, "online: sampling temperature of the self responses")
    rollout_max_new_tokens: int = opt(128, "online: cap on generated tokens per self response")
    rollout_batch_size: int = opt(64, "online, hf: sequences per generate call", versioned=False)
    rollout_gpu_memory_utilization: float = opt(0.3, "online, vllm: share of GPU memory for the engine",
                                                versioned=False)
    verify_workers: int = opt(2, "online: verifier worker processes per training process", versioned=False)
    verify_timeout: float = opt(5.0, "online: wall-clock seconds per answer before its worker is killed")

    def validate(self) -> None:
        if self.lora_rank:
            require([(self.lora_rank > 0 and self.lora_alpha > 0 and 0 <= self.lora_dropout < 1,
                      "--lora-rank must be > 0, --lora-alpha > 0 and --lora-dropout in [0, 1)"),
                     (not self.fsdp, "--lora-rank with --fsdp is not supported: adapters are small, train them data "
                                     "parallel (drop --fsdp) or fully fine-tune with FSDP (drop --lora-rank)")])
            try:
                import peft  # noqa: F401
            except ImportError:
                raise GftError("--lora-rank needs the peft package: install with pip install 'gft[lora]'") from None
        if self.report_to:
            from gftrepro.trackers import names_of

            names_of(self.report_to)
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
            (math.isfinite(self.grad_clip) and self.grad_clip >= 0,
             f"grad_clip must be a finite number >= 0 (0 = off), got {self.grad_clip}"),
            (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0,
             f"adam_beta1 and adam_beta2 must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be a finite number >= 0, got {self.weight_decay}"),
            (0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}"),
        ]
        require(checks)
        self.validate_baselines()
        if self.is_online:
            self.validate_online()
        elif methods.get(self.method).uses_advantage and self.dataset == "sft":
            raise GftError(f"method '{self.method}' needs groups (advantages); data 'sft' has none")

    def validate_online(self) -> None:
        expert, teacher, own = self.group
        checks = [
            (self.method != "grpo" or own >= 2, f"grpo needs self_k >= 2 (a group advantage over its own samples), "
                                                f"got {own}"),
            (min(expert, teacher, own) >= 0 and expert + teacher + own >= 2,
             f"an online group needs expert, teacher, self_k >= 0 and at least 2 members (8:0, Table 5's all-"
             f"demonstration group, has no self sample), got {expert}:{teacher}:{own}"),
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
            (self.verify_workers >= 1 and math.isfinite(self.verify_timeout) and self.verify_timeout > 0,
             f"verify_workers >= 1 and a finite verify_timeout > 0, got {self.verify_workers}, {self.verify_timeout}"),
        ]
        require(checks)
        if self.data:
            raise GftError("--data is for offline training; online groups are drawn every step")
        if self.ppo_epochs > 1 and self.method != "grpo":
            raise GftError(f"ppo_epochs > 1 needs the clipped ratio objective (grpo); {self.method} takes one update")

    def validate_baselines(self) -> None:
        m = methods.get(self.method)
        checks = [
            (math.isfinite(self.anchor_coef) and self.anchor_coef >= 0,
             f"anchor_coef must be a finite number >= 0, got {self.anchor_coef}"),
            (self.mini_batches == -1 or self.mini_batches >= 1, f"mini_batches must be >= 1 (or -1 = the method's), "
                                                                f"got {self.mini_batches}"),
            (self.clip_eps_high == -1 or 0 < self.clip_eps_high < 10,
             f"clip_eps_high must be in (0, 10) (or -1 = the method's), got {self.clip_eps_high}"),
            (self.batch_size % self.updates_per_batch == 0,
             f"mini_batches {self.updates_per_batch} must divide batch_size {self.batch_size} (each update takes "
             "batch_size / mini_batches sequences)"),
            (self.updates_per_batch == 1 or m.coefficient == "proximal",
             f"mini_batches > 1 is psft's several updates per batch; {self.method} takes one update a batch"),
            (self.pear_level in PEAR_LEVELS, f"pear_level must be one of {', '.join(PEAR_LEVELS)}, got "
                                             f"'{self.pear_level}'"),
            (0 < self.pear_gamma <= 1, f"pear_gamma must be in (0, 1], got {self.pear_gamma}"),
            (self.pear_block >= 1, f"pear_block must be at least 1, got {self.pear_block}"),
            (not m.behaviour or self.dataset == "teacher",
             f"pear trains on the teacher's samples with their log-probs (data 'teacher'), not '{self.dataset}'"),
            (not m.anchor or self.fused_loss,
             "asft's KL anchor is made in the fused LM-head pass: drop --no-fused-loss"),
        ]
        require(checks)

    @property
    def updates_per_batch(self) -> int:
        """Optimizer updates per offline batch (psft's mini-batches), the flag's or the method's."""
        return self.mini_batches if self.mini_batches >= 1 else methods.get(self.method).mini_batches

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per step: grpo's ppo_epochs times psft's mini-batches (1 for the others)."""
        return self.ppo_epochs * self.updates_per_batch

    @property
    def clip_high(self) -> float:
        """The upper clip range of the ratio: the flag's, else the method's, else clip_eps."""
        return self.clip_eps_high if self.clip_eps_high > 0 else methods.get(self.method).clip_high or self.clip_eps

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

    @property
    def unit_inputs(self) -> dict[str, str]:
        """What an offline train version records of its step unit: on group data ``batch_size`` counts groups
        since 2026-12-03 (sequences before), so those versions are new; other data is unchanged."""
        return {"batch_unit": "groups"} if self.dataset == "groups" else {}
