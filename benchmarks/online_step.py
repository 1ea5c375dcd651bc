"""One on-policy GRPO step on the embedded default: ours (sample / verify / update / sync) vs TRL.

    python benchmarks/online_step.py [--prompts-per-step 16] [--k 8] [--steps 6] [--max-new-tokens 64]

Both sides: the committed tiny student, the same prompts (the bundled train split, chat template
and system prompt as the pipeline formats them), K samples per prompt at temperature 1, the same
binary reward (``gftrepro.answers.score``), lr 1e-4, no KL, one update per batch of rollouts, CPU.
Ours runs ``gft train --method grpo`` (hf backend in-process, rewards in the deadline pool); the
peer is TRL's ``GRPOTrainer`` (transformers generation, reward function in-process). Reported:
the median step time over the steps after the first (warm-up), and ours broken down. TRL's step
includes its generation; its own breakdown is not exposed, so only its total is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def prepare(run: Path, prompts: int) -> None:
    from gftrepro import sample, verify
    from gftrepro.sample import SELF_DEFAULTS, SampleConfig
    from gftrepro.verify import VerifyConfig

    sample.run(SampleConfig(limit=prompts, n=1, max_new_tokens=16), run, "teacher")  # problems + gold answers
    sample.run(SampleConfig(**{**SELF_DEFAULTS, "n": 1}, limit=prompts, max_new_tokens=16), run, "self")
    verify.run(VerifyConfig(), run)


def ours(run: Path, args) -> dict:
    from gftrepro import train
    from gftrepro.engine.config import TrainConfig

    config = TrainConfig(method="grpo", max_steps=args.steps, prompts_per_step=args.prompts_per_step,
                         self_k=args.k, rollout_max_new_tokens=args.max_new_tokens, lr=1e-4, save_every=0,
                         warmup_ratio=0.0, batch_size=args.prompts_per_step * args.k)
    manifest = train.run(config, run)
    lines = [json.loads(x) for x in (run / "train" / manifest["version"] / "metrics.jsonl").read_text().splitlines()]
    later = lines[1:]
    step = [m["sample_seconds"] + m["verify_seconds"] + m["update_seconds"] + m["sync_seconds"] for m in later]
    return {"step_s": statistics.median(step),
            **{k: statistics.median(m[k] for m in later) for k in ("sample_seconds", "verify_seconds",
                                                                  "update_seconds", "sync_seconds")},
            "tokens_per_sample": statistics.mean(m["self_tokens_mean"] for m in later)}


def trl_peer(run: Path, args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from gftrepro.answers import score
    from gftrepro.models import resolve_model
    from gftrepro.problems import load_problems
    from gftrepro.prompts import QWEN_MATH_COT

    model = resolve_model("testbed:student")
    problems = load_problems("testbed", "train", "problem", "solution", "answer", args.prompts_per_step * args.steps)
    rows = [{"prompt": [{"role": "system", "content": QWEN_MATH_COT}, {"role": "user", "content": q}], "gold": a}
            for q, a in zip(problems.table.column("question").to_pylist(),
                            problems.table.column("answer").to_pylist(), strict=True)]

    def reward(completions, gold, **_):
        return [1.0 if score(c[0]["content"] if isinstance(c, list) else c, g).correct else 0.0
                for c, g in zip(completions, gold, strict=True)]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    config = GRPOConfig(output_dir=str(run / "trl"), per_device_train_batch_size=args.prompts_per_step * args.k,
                        num_generations=args.k, max_completion_length=args.max_new_tokens, max_steps=args.steps,
                        learning_rate=1e-4, beta=0.0, temperature=1.0, use_cpu=True, report_to="none",
                        save_strategy="no", logging_steps=1, warmup_steps=0, loss_type="dapo", bf16=False,
                        gradient_accumulation_steps=1, num_iterations=1, disable_tqdm=True)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model.path),
                          processing_class=AutoTokenizer.from_pretrained(model.path, padding_side="left"),
                          reward_funcs=[reward], args=config, train_dataset=Dataset.from_list(rows),
                          callbacks=[Timer()])
    trainer.train()
    return {"step_s": statistics.median(times[1:])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        prepare(run, args.prompts_per_step * args.steps)
        a = ours(run, args)
        b = trl_peer(run, args)
    print(f"\n{platform.machine()}, {os.cpu_count()} cores; {args.prompts_per_step} prompts x K = {args.k}, "
          f"<= {args.max_new_tokens} new tokens, {args.steps} steps (median of steps 2..{args.steps})")
    print(f"gft grpo step: {a['step_s']:.3f} s  (sample {a['sample_seconds']:.3f}, "
          f"verify {a['verify_seconds']:.3f}, update {a['update_seconds']:.3f}, sync {a['sync_seconds']:.4f}; "
          f"{a['tokens_per_sample']:.1f} tokens/sample)")
    print(f"TRL GRPOTrainer step: {b['step_s']:.3f} s")
    print(f"ours / TRL step time: {a['step_s'] / b['step_s']:.2f}x")


if __name__ == "__main__":
    main()
