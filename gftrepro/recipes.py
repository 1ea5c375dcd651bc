"""The paper's runs as whole-run configs: ``stages/paper/<model>/<run>.yaml``.

    python -m gftrepro.recipes --out stages/paper     # regenerate (a test checks they are current)

One place holds the per-model facts (hub ids, context, chat template, stop tokens, parameter
count) and the per-run choices; every file it writes opens with what it reproduces, its command,
the GPUs it assumes, and where each value comes from. ``gft run --config`` and ``gft plan --config``
accept every file.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import yaml

from gftrepro.entries import ratio_group
from gftrepro.prompts import QWEN_MATH_COT


@dataclass(frozen=True)
class ModelFacts:
    folder: str
    hub: str
    params_b: float  # billions
    context: int  # prompt + completion tokens
    template: str  # auto (chat template) or plain (base models without one)
    stops: tuple[str, ...]
    gpus: int  # GPUs assumed for training

    @property
    def fsdp(self) -> bool:
        """AdamW in mixed precision takes ~16 bytes per parameter: above 80% of one 80 GB GPU, shard it."""
        return 16 * self.params_b > 0.8 * 80

    def layout(self) -> str:
        need = 16 * self.params_b
        if self.fsdp:
            return (f"FSDP over {self.gpus} GPUs (train: fsdp: true): ~{need / self.gpus:.0f} GB of weights, gradients "
                    f"and AdamW states per GPU, of ~{need:.0f} GB in all")
        return f"data parallel, ~{need:.0f} GB of weights, gradients and AdamW states on each GPU"


TEACHER = "Qwen/Qwen2.5-Math-72B-Instruct"
MODELS = [
    ModelFacts("qwen2.5-math-1.5b", "Qwen/Qwen2.5-Math-1.5B", 1.54, 4096, "auto", ("<|im_end|>", "<|endoftext|>"), 8),
    ModelFacts("qwen2.5-math-7b", "Qwen/Qwen2.5-Math-7B", 7.62, 4096, "auto", ("<|im_end|>", "<|endoftext|>"), 8),
    ModelFacts("llama-3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", 3.21, 8192, "auto",
               ("<|eot_id|>", "<|end_of_text|>"), 8),
    ModelFacts("llama-3.1-8b", "meta-llama/Llama-3.1-8B", 8.03, 8192, "plain", ("<|end_of_text|>",), 8),
    ModelFacts("deepseekmath-7b", "deepseek-ai/deepseek-math-7b-base", 6.91, 4096, "plain",
               ("<｜end▁of▁sentence｜>",), 8),
]
PROMPT_BUDGET = 1024  # max prompt tokens (the GFT authors' max_prompt_length)
NUMINA = {"dataset": "AI-MO/NuminaMath-CoT", "split": "train", "question_field": "problem",
          "solution_field": "solution", "answer_field": ""}
SOURCES_NOTE = """# Sources of the values:
#   paper (GFT, arXiv 2604.14258): K = 8 = 1 expert + 3 teacher (Qwen2.5-Math-72B) + 4 self, 10k prompts for
#     group methods and 100k samples for single-trajectory ones (section 4.1); tau = 0.7 (section 4.7);
#     evaluation: mean pass@1 over 16 samples at temperature 0.5, max 4,096 new tokens (appendix 9).
#   authors' code (gftrepro/reference/paper_results.json, public_code_settings): GFT lr 1e-6, token-mean,
#     128 prompts x 8 per step, prompts <= 1,024 and responses <= 2,048 tokens, tau 0.1 in the released
#     script; DFT/SFT lr 5e-5, AdamW (0.9, 0.95), weight decay 0.01, 10% warmup + cosine, clip 1.0,
#     batch 256, max length 2,048, 1 epoch.
#   GRPO (paper section 4.1): 8 samples per prompt, no KL term; its lr and batch are not stated: ours are the
#     authors' GFT values (lr 1e-6, 128 prompts per step), one update per batch (ratio 1).
#   ASFT (arXiv 2509.23753; repo zhuchichi56/ASFT at 6f6f51c, train_v2.py): lambda 0.1 (their README example:
#     0.05), lr 2e-5, 3 epochs, batch 64; PSFT (arXiv 2508.17784; repo zwhong714/PSFT at 569b1ba): batch 64,
#     8 mini-batches (8 updates a batch), clip 0.2 / 0.28, lr 1e-6, no KL. Ours for both: the DFT recipe's
#     max length 2,048 (ASFT's 512 would cut most NuminaMath solutions).
#   our choices: sampling temperature 1.0 for teacher and self samples (not stated), new tokens capped at
#     context - 1,024 (Qwen2.5-Math and DeepSeekMath have 4,096 in total), Llama contexts capped at 8,192
#     for vLLM memory, seeds 0/1, KL to the base logged every 20 steps.
"""


def sampling(facts: ModelFacts, model: str, n: int, limit: int, seed: int, tp: int) -> dict:
    context = facts.context if model == facts.hub else 4096  # the teacher is a Qwen2.5-Math model
    return {**NUMINA, "limit": limit, "model": model, "n": n, "temperature": 1.0, "top_p": 1.0,
            "max_new_tokens": min(2048, context - PROMPT_BUDGET), "system_prompt": QWEN_MATH_COT,
            "prompt_template": facts.template if model == facts.hub else "auto",
            "stop_tokens": list(facts.stops) if model == facts.hub else ["<|im_end|>", "<|endoftext|>"],
            "seed": seed, "backend": "vllm", "shard_size": 256, "tensor_parallel_size": tp,
            "max_model_len": context}


def online_section(facts: ModelFacts) -> dict:
    """On-policy keys (gft-online, grpo): the authors' 128 prompts per step and 2,048 response tokens;
    vLLM colocated with the trainer (our choice: 30% of GPU memory for the engine)."""
    return {"prompts_per_step": 128, "rollout_backend": "vllm", "rollout_temperature": 1.0,
            "rollout_max_new_tokens": min(2048, facts.context - PROMPT_BUDGET), "rollout_batch_size": 64,
            "rollout_gpu_memory_utilization": 0.3, "verify_workers": 16, "verify_timeout": 5.0,
            "adv_std": "unbiased", "adv_eps": 1e-6, "ppo_epochs": 1, "clip_eps": 0.2, "kl_coef": 0.0}


def train_section(method: str, facts: ModelFacts) -> dict:
    single = method in ("sft", "sft-mix", "dft", "asft", "psft", "gft-no-gal")
    base = {"method": method, "agg": "token-mean", "adam_beta1": 0.9, "adam_beta2": 0.95, "weight_decay": 0.01,
            "warmup_ratio": 0.1, "grad_clip": 1.0, "epochs": 1, "truncation": "keep", "seed": 0, "dtype": "auto",
            "gradient_checkpointing": True, "fsdp": facts.fsdp, "logprob_chunk": 512, "save_every": 20,
            "kl_every": 20}
    if single:
        return {**base, "lr": 5.0e-5, "batch_size": 256, "micro_batch_size": 4, "max_length": 2048, "tau": 0.7}
    return {**base, "lr": 1.0e-6, "batch_size": 128, "micro_batch_size": 4,  # 128 groups: 1,024 sequences
            "max_length": min(3072, facts.context), "tau": 0.7}


def eval_section(facts: ModelFacts, n: int, temperature: float, benchmarks: list[str]) -> dict:
    return {"benchmarks": benchmarks, "limit": 0, "n": n, "pass_k": n, "temperature": temperature, "top_p": 1.0,
            "max_new_tokens": min(4096, facts.context - PROMPT_BUDGET), "system_prompt": QWEN_MATH_COT,
            "prompt_template": facts.template, "stop_tokens": list(facts.stops), "seed": 0, "backend": "vllm",
            "max_model_len": facts.context, "workers": 16}


# the authors' own settings of the two baselines (SOURCES_NOTE), over the DFT recipe's train section
BASELINE_KEYS = {"asft": {"lr": 2.0e-5, "epochs": 3, "batch_size": 64, "anchor_coef": 0.1},
                 "psft": {"lr": 1.0e-6, "batch_size": 64, "mini_batches": 8, "clip_eps": 0.2, "clip_eps_high": 0.28}}


def recipe(facts: ModelFacts, methods: list[str], *, limit: int, ratio: tuple[int, int, int] = (1, 3, 4),
           tau: float = 0.7, eval_n: int = 16, eval_t: float = 0.5, benchmarks: list[str] | None = None,
           online: bool = False, per_method: dict | None = None) -> dict:
    first = methods[0].split(":")[-1].removesuffix("-online")
    train = train_section(first, facts) | {"tau": tau} | (online_section(facts) if online else {})
    per_method = dict(per_method or {})
    if online and any(m.split(":")[0] == "sft" for m in methods):  # chains starting with SFT: its own recipe
        sft = train_section("sft", facts)
        per_method["sft"] = {k: sft[k] for k in ("lr", "batch_size", "max_length")}
    return {
        "methods": methods, "seeds": 1, **({"per_method": per_method} if per_method else {}),
        # enough candidates for the group's teacher and self slots (Table 5's 8:0 takes 7 teacher samples)
        "sample-teacher": sampling(facts, TEACHER, max(3, ratio[1]), limit, 0, 4),
        "sample-self": sampling(facts, facts.hub, max(4, ratio[2]), limit, 1, 1),
        "verify": {"workers": 16, "timeout": 5.0},
        "build-groups": {"n_expert": ratio[0], "n_teacher": ratio[1], "n_self": ratio[2], "std": "unbiased",
                         "eps": 1e-6},
        "train": train,
        "eval": eval_section(facts, eval_n, eval_t, benchmarks or ["paper"]),
    }


def runs(facts: ModelFacts) -> dict[str, tuple[str, dict]]:
    """file name -> (what it reproduces, config)."""
    out = {
        "gft.yaml": ("GFT main setting (Tables 1-3): K = 8 = 1 + 3 + 4, 10k prompts, tau 0.7",
                     recipe(facts, ["gft"], limit=10_000)),
        "gft-tau0.1.yaml": ("GFT with the authors' released tau = 0.1 (variant of gft.yaml)",
                            recipe(facts, ["gft"], limit=10_000, tau=0.1)),
        "baselines.yaml": ("SFT, SFT-mix, DFT, ASFT and PSFT on 100k NuminaMath-CoT samples (Table 1 baselines; "
                           "DFT recipe, ASFT and PSFT with their authors' values in per_method)",
                           recipe(facts, ["sft", "sft-mix", "dft", "asft", "psft"], limit=100_000,
                                  per_method=BASELINE_KEYS)),
        "gft-no-mix.yaml": ("GFT (no mix), Table 1: GFT's groups without their teacher samples (1 expert + 4 self), "
                            "advantages normalised over the five",
                            recipe(facts, ["gft-no-mix"], limit=10_000)),
        "ablations.yaml": ("GFT w/o DCR and GFT w/o GAL (ablation table)",
                           recipe(facts, ["gft-no-dcr", "gft-no-gal"], limit=10_000)),
        "passk.yaml": ("GFT at Pass@128 / Pass@256 (Table 4: SAT Math, Minerva Math, TabMWP)",
                       recipe(facts, ["gft"], limit=10_000, eval_n=256, eval_t=1.0,
                              benchmarks=["sat_math", "minerva_math", "tabmwp"])),
        "forgetting.yaml": ("GFT and SFT on the general-reasoning benchmarks (Table 3: MAWPS, SVAMP, MMLU-STEM)",
                            recipe(facts, ["gft", "sft"], limit=10_000, benchmarks=["mawps", "svamp", "mmlu_stem"])),
        "gft-online.yaml": ("GFT on-policy as the authors' code runs it: 4 self samples drawn from the current policy "
                            "every step, 128 prompts x K = 8 per step, lr 1e-6, tau 0.7 (paper)",
                            recipe(facts, ["gft-online"], limit=10_000, online=True)),
        "gft-online-tau0.1.yaml": ("GFT on-policy with the tau = 0.1 of the authors' released script",
                                   recipe(facts, ["gft-online"], limit=10_000, tau=0.1, online=True)),
        "grpo.yaml": ("GRPO, the paper's RL baseline (Tables 1, 4): 8 on-policy samples per prompt, no KL term",
                      recipe(facts, ["grpo"], limit=10_000, online=True)),
        "chains.yaml": ("SFT -> GRPO, GFT -> GRPO and SFT -> GFT -> GRPO (Figure 4), each link from the previous "
                        "model; SFT links keep the SFT recipe's lr, batch and length (per_method)",
                        recipe(facts, ["sft:grpo", "gft-online:grpo", "sft:gft-online:grpo"], limit=10_000,
                               online=True)),
    }
    pear = recipe(facts, ["sft:grpo", "pear:grpo"], limit=10_000, online=True,
                  per_method={"pear": {"lr": 1.0e-5, **{k: v for k, v in train_section("sft", facts).items()
                                                        if k in ("batch_size", "max_length")}}})
    pear["sample-teacher"]["logprobs"] = True  # PEAR's behaviour policy: the teacher's own per-token log-probs
    out["pear.yaml"] = ("PEAR then GRPO beside SFT then GRPO (the PEAR paper's comparison, arXiv 2602.01058): PEAR "
                        "on the teacher's correct samples with their log-probs, token level, gamma 0.999, lr 1e-5 "
                        "(a third-party reading of the paper, unverified)", pear)
    for demo, own in ((8, 0), (6, 2), (4, 4), (2, 6), (0, 8)):
        out[f"ratio-{demo}-{own}.yaml"] = (f"Group composition N_demo:N_sample = {demo}:{own} (Table 5)",
                                           recipe(facts, ["gft"], limit=10_000, ratio=ratio_group(demo, own)))
    return out


def header(facts: ModelFacts, name: str, what: str, config: dict) -> str:
    path = f"stages/paper/{facts.folder}/{name}"
    return (f"# {facts.hub}: {what}.\n#\n#   gft plan --config {path}\n#   gft run --config {path}\n#\n"
            f"# Assumes: {facts.gpus} x 80 GB GPUs for training ({facts.layout()}), 4 for the 72B teacher (vLLM tensor "
            f"parallel), 1 per sampling/eval process.\n" + SOURCES_NOTE)


def write_all(out: Path) -> list[Path]:
    written = []
    for facts in MODELS:
        folder = out / facts.folder
        folder.mkdir(parents=True, exist_ok=True)
        for name, (what, config) in runs(facts).items():
            text = header(facts, name, what, config) + yaml.safe_dump(config, sort_keys=False, allow_unicode=True,
                                                                      width=110)
            (folder / name).write_text(text, encoding="utf-8")
            written.append(folder / name)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("stages/paper"))
    print(f"wrote {len(write_all(ap.parse_args().out))} recipes")


if __name__ == "__main__":
    main()
