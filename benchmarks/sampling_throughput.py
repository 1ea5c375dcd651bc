"""Generated tokens/s of the sampling backends on the embedded tiny teacher model.

    python benchmarks/sampling_throughput.py [--prompts 64] [--max-new-tokens 128] [--no-vllm]
    python benchmarks/sampling_throughput.py loops [--prompts 64] [--n 32] [--rounds 2]
    python benchmarks/sampling_throughput.py shared [--rounds 5]
    python benchmarks/sampling_throughput.py steps [--rounds 5]

Measures, on the same requests (one sample per prompt, temperature 1, per-sample seeds):
hf batched (batch 64) vs hf one prompt at a time, and vllm vs hf batched. vLLM gets one
warm-up call first (its first call compiles/allocates); start-up time is reported apart.
Ratios are what to compare: absolute figures move with the machine and its load.

``loops``: the hf backend's own decoding loop (``backends.decode``) against ``transformers`` ``generate``
on evaluation's shape (the tiny student, n samples of each prompt, batch 256, 64 new tokens), in turn
in one process, ``rounds`` times each; prints each one's seconds, the ratio, and whether the two gave
the same tokens.

``shared``: the own loop with a batch's distinct prompts' keys and values stored once (``SharedLayer``,
``shared_attention``) against the same loop with them repeated for every row (``SHARED_ROWS`` set out
of reach), one thread, at evaluation's shape (64 problems x 32 samples, 64 new tokens, batches of 256
and 512) and on-policy training's (16 prompts x K = 8, 128 new tokens, batches of 64 and 128), each
set-up in turn ``rounds`` times in one process; prints the best and every time, and whether every
set-up gave the same tokens.

``steps``: the own loop's decoding step three ways (``steps``' docstring) at evaluation's and rollouts' shapes,
in turn ``rounds`` times in one process; prints each one's median and its speed-up over the first.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from gftrepro.backends import Request, SamplingParams, sample_seed
from gftrepro.models import load_tokenizer, resolve_model, stop_token_ids
from gftrepro.problems import load_problems
from gftrepro.prompts import QWEN_MATH_COT, format_prompt


def measure(backend, requests, params) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = backend.generate(requests, params, lambda *_: None)
    return time.perf_counter() - t0, sum(len(s.token_ids) for s in out)


def loops(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from gftrepro.backends.hf import HFBackend

    hf_logging.set_verbosity_error()
    model = resolve_model("testbed:student")
    tok = load_tokenizer(model)
    problems = load_problems("testbed", "heldout", "problem", "solution", "answer", args.prompts)
    questions, pids = (problems.table.column(c).to_pylist() for c in ("question", "prompt_id"))
    requests = [Request(tok(format_prompt(tok, q, QWEN_MATH_COT, "auto"), add_special_tokens=False)["input_ids"],
                        sample_seed(0, pid, j)) for q, pid in zip(questions, pids, strict=True) for j in range(args.n)]
    params = SamplingParams(1.0, 1.0, 64, stop_token_ids(tok, model.path, ["<|im_end|>", "<|endoftext|>"]), False)
    backend = HFBackend(model, tok, batch_size=256, device="cpu")
    seconds: dict[str, list[float]] = {"transformers": [], "own": []}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(args.rounds):
        for loop in seconds:
            backend.loop = loop
            t0 = time.perf_counter()
            tokens[loop] = [s.token_ids for s in backend.generate(requests, params, lambda *_: None)]
            seconds[loop].append(time.perf_counter() - t0)
    print(f"{args.prompts} prompts x {args.n} samples, batch 256, tiny student, {os.cpu_count()} cores")
    for loop, values in seconds.items():
        print(f"{loop:<14}" + " ".join(f"{v:.2f}s" for v in values) + f"   {sum(map(len, tokens[loop])):,} tokens")
    print(f"ratio transformers / own: {min(seconds['transformers']) / min(seconds['own']):.2f}x (best of each); "
          f"same tokens: {tokens['own'] == tokens['transformers']}")


def student_setup():
    """The tiny student's hf backend (one thread) and its request maker: (backend, requests(prompts, n), stops)."""
    import torch
    from transformers.utils import logging as hf_logging

    from gftrepro.backends.hf import HFBackend

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    model = resolve_model("testbed:student")
    tok = load_tokenizer(model)
    stops = stop_token_ids(tok, model.path, ["<|im_end|>", "<|endoftext|>"])

    def requests(prompts: int, n: int) -> list[Request]:
        problems = load_problems("testbed", "heldout", "problem", "solution", "answer", prompts)
        questions, pids = (problems.table.column(c).to_pylist() for c in ("question", "prompt_id"))
        return [Request(tok(format_prompt(tok, q, QWEN_MATH_COT, "auto"), add_special_tokens=False)["input_ids"],
                        sample_seed(0, pid, j)) for q, pid in zip(questions, pids, strict=True) for j in range(n)]

    return HFBackend(model, tok, batch_size=256, device="cpu"), requests, stops


def shared(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    from gftrepro.backends import decode

    backend, requests, stops = student_setup()
    shapes = {"evaluation (64 problems x 32)": (requests(64, 32), SamplingParams(1.0, 1.0, 64, stops, False),
                                                (256, 512)),
              "rollouts (16 prompts x K 8)": (requests(16, 8), SamplingParams(1.0, 1.0, 128, stops, False),
                                              (64, 128))}
    print(f"tiny student, 1 thread, {os.cpu_count()} cores; best of {args.rounds} (every time)")
    for shape, (reqs, params, sizes) in shapes.items():
        seconds: dict[tuple[int, str], list[float]] = {}
        tokens = set()
        for _ in range(args.rounds):
            for batch in sizes:
                for how, rows in (("repeated", 1 << 30), ("stored once", 4)):
                    decode.SHARED_ROWS, backend.batch_size = rows, batch
                    t0 = time.perf_counter()
                    tokens.add(tuple(tuple(s.token_ids) for s in backend.generate(reqs, params, lambda *_: None)))
                    seconds.setdefault((batch, how), []).append(time.perf_counter() - t0)
        for (batch, how), values in seconds.items():
            print(f"{shape:<32} batch {batch:<4} prompts {how:<12} {min(values):6.3f}s   "
                  + " ".join(f"{v:.3f}" for v in values))
        print(f"{shape}: same tokens in every set-up: {len(tokens) == 1}")


def steps(argv: list[str]) -> None:
    """The decoding step three ways, in turn in one process: the model's forward with each prompt's run of rows
    its own product (the loop before 2026-12-06), the same with even runs as one batched product
    (``decode.even_attention``), and that with ``decode.LeanStep`` (the step on the weights)."""
    import statistics

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    from gftrepro.backends import decode

    backend, requests, stops = student_setup()
    usable, set_owner = decode.LeanStep.usable, decode.SharedLayer.set_owner

    def runs_apart(layer, owner):
        set_owner(layer, owner)
        layer.even = None

    setups = {"module forward, a product per run": (staticmethod(lambda model: False), runs_apart),
              "module forward, even runs batched": (staticmethod(lambda model: False), set_owner),
              "LeanStep, even runs batched": (staticmethod(usable), set_owner)}
    shapes = {"evaluation (64 problems x 32, batch 256)": (requests(64, 32), SamplingParams(1.0, 1.0, 64, stops,
                                                                                           False), 256),
              "rollouts (16 prompts x K 8, batch 128)": (requests(16, 8), SamplingParams(1.0, 1.0, 128, stops,
                                                                                         True), 128)}
    print(f"tiny student, 1 thread, {os.cpu_count()} cores; median of {args.rounds} (every time, sorted)")
    try:
        for shape, (reqs, params, batch) in shapes.items():
            backend.batch_size, seconds, outputs = batch, {}, set()
            for _ in range(args.rounds):
                for name, (lean, owner) in setups.items():
                    decode.LeanStep.usable, decode.SharedLayer.set_owner = lean, owner
                    t0 = time.perf_counter()
                    out = backend.generate(reqs, params, lambda *_: None)
                    seconds.setdefault(name, []).append(time.perf_counter() - t0)
                    outputs.add(tuple(tuple(s.token_ids) for s in out))
            first = statistics.median(seconds[next(iter(setups))])
            for name, values in seconds.items():
                median = statistics.median(values)
                print(f"{shape:<42} {name:<36} {median:6.3f}s ({first / median:.2f}x)   "
                      + " ".join(f"{v:.3f}" for v in sorted(values)))
            print(f"{shape}: same tokens in every set-up: {len(outputs) == 1}")
    finally:
        decode.LeanStep.usable, decode.SharedLayer.set_owner = usable, set_owner


def main() -> None:
    import sys

    if sys.argv[1:2] == ["loops"]:
        return loops(sys.argv[2:])
    if sys.argv[1:2] == ["shared"]:
        return shared(sys.argv[2:])
    if sys.argv[1:2] == ["steps"]:
        return steps(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--no-vllm", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = resolve_model("testbed:teacher")
    tok = load_tokenizer(model)
    problems = load_problems("testbed", "test", "problem", "solution", "answer", args.prompts)
    questions = problems.table.column("question").to_pylist()
    pids = problems.table.column("prompt_id").to_pylist()
    requests = [Request(tok(format_prompt(tok, q, QWEN_MATH_COT, "auto"), add_special_tokens=False)["input_ids"],
                        sample_seed(0, pid, 0)) for q, pid in zip(questions, pids, strict=True)]
    params = SamplingParams(1.0, 1.0, args.max_new_tokens, stop_token_ids(tok, model.path, ["<|im_end|>"]), False)

    from gftrepro.backends.hf import HFBackend

    results = {}
    for name, batch in (("hf batched (64)", 64), ("hf one at a time", 1)):
        seconds, tokens = measure(HFBackend(model, tok, batch_size=batch), requests, params)
        results[name] = (seconds, tokens)
    if not args.no_vllm:
        from gftrepro.backends.vllm import VLLMBackend

        t0 = time.perf_counter()
        engine = VLLMBackend(model, tok, tensor_parallel_size=1, gpu_memory_utilization=0.9, max_model_len=0,
                             dtype="auto", enforce_eager=True, seed=0)
        startup = time.perf_counter() - t0
        measure(engine, requests[:8], params)  # warm-up
        results["vllm (enforce_eager)"] = measure(engine, requests, params)
        engine.close()
        print(f"vllm start-up: {startup:.1f}s")

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.prompts} prompts x 1 sample, "
          f"max_new_tokens {args.max_new_tokens}, tiny teacher")
    print(f"{'backend':<24}{'seconds':>10}{'tokens':>10}{'tok/s':>10}")
    for name, (seconds, tokens) in results.items():
        print(f"{name:<24}{seconds:>10.2f}{tokens:>10}{tokens / seconds:>10.0f}")
    rate = {k: t / s for k, (s, t) in results.items()}
    print(f"ratio hf batched / one at a time: {rate['hf batched (64)'] / rate['hf one at a time']:.1f}x")
    if "vllm (enforce_eager)" in rate:
        print(f"ratio vllm / hf batched: {rate['vllm (enforce_eager)'] / rate['hf batched (64)']:.1f}x")


if __name__ == "__main__":
    main()
