"""Training-step benchmarks: GFT overhead, the chunked log-prob path's memory, tokens/s, MFU.

    python benchmarks/train_step.py overhead  [--model tiny|qwen0.5b] [--batch 8] [--seq 512] [--steps 10]
    python benchmarks/train_step.py logprobs  [--tokens 4096] [--vocab 151936] [--hidden 1536]
    python benchmarks/train_step.py all                          # every part with its defaults

- ``overhead``: the same batch, steps of ``--method gft`` vs ``--method sft`` interleaved (median
  step time of each); prints tokens/s, and on a GPU the model FLOPs utilisation against the H100's
  989 TFLOP/s dense bf16 (6 x parameters x tokens plus attention, per step).
- ``logprobs``: log p of every token of one 4,096-token sequence with a Qwen2.5-1.5B-sized LM head
  (vocab 151,936, hidden 1,536), forward + backward, naive (full fp32 logits, log_softmax, gather)
  vs ``gftrepro.logprobs.selective_logprobs`` (chunks of 1,024 and 512). Each variant runs in a
  fresh process; peak memory is ``torch.cuda.max_memory_allocated`` on a GPU, else the growth of
  the process's peak RSS over its inputs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

H100_BF16_DENSE = 989e12


def build_model(kind: str, device: torch.device):
    from transformers import AutoModelForCausalLM, Qwen2Config

    if kind == "tiny":
        from gftrepro.testbed.models import ensure_model

        return AutoModelForCausalLM.from_pretrained(ensure_model("teacher")).to(device)
    shapes = {"qwen0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                               intermediate_size=4864),
              "qwen1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                               intermediate_size=8960)}[kind]
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=True, **shapes)
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


def logprob_variant(variant: str, tokens: int, vocab: int, hidden: int) -> dict:
    """One variant in this (fresh) process: forward + backward, peak memory over the inputs."""
    from gftrepro.logprobs import selective_logprobs

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
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if variant == "naive":
        lp = torch.log_softmax((h @ w.T).float(), -1).gather(1, t[:, None]).squeeze(1)
    else:
        lp, _ = selective_logprobs(h, w, t, chunk=int(variant.split("-")[1]))
    lp.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "seconds": time.perf_counter() - t0, "peak_extra_gib": peak / 2**30,
            "device": str(device), "dtype": str(dtype)}


def logprobs(args: argparse.Namespace) -> list[dict]:
    rows = []
    for variant in ("naive", "chunk-1024", "chunk-512"):
        proc = subprocess.run([sys.executable, __file__, "_variant", variant, str(args.tokens), str(args.vocab),
                               str(args.hidden)], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    naive = rows[0]["peak_extra_gib"]
    for r in rows:
        r["peak_vs_naive"] = r["peak_extra_gib"] / naive
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_variant":
        print(json.dumps(logprob_variant(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["overhead", "logprobs", "all"])
    ap.add_argument("--model", default="tiny", choices=["tiny", "qwen0.5b", "qwen1.5b"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (recompute is not in MFU)")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=1536)
    args = ap.parse_args()
    if args.part in ("overhead", "all"):
        print(json.dumps(overhead(args), indent=1))
    if args.part in ("logprobs", "all"):
        for row in logprobs(args):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
