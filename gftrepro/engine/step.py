"""One optimizer step's forward and backward over micro-batches (global token-mean denominators), and the
metrics line made from its summed statistics."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from gftrepro.engine.config import TrainConfig
from gftrepro.losses import Anchor, Pear, TokenObjective, token_loss

SOURCE_ORDER = ("expert", "teacher", "self")
STAT_KEYS = ["loss", "tokens", "entropy", "prob", "rectified", "clipped", "kl", "kl_tokens"] + \
    [f"{k}/{s}" for s in SOURCE_ORDER for k in ("logprob", "logprob_tokens", "advantage", "seqs")]


@torch.no_grad()
def anchor_for(ref: torch.nn.Module, b: dict, coef: float) -> Anchor:
    """asft: the frozen reference's final hidden states at the micro-batch's scored positions (one no-grad
    forward, in the order ``Policy`` flattens them) and its LM head."""
    sel = b["response_mask"][:, 1:].bool()
    hidden = ref.get_decoder()(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    return Anchor(hidden[:, :-1][sel], ref.get_output_embeddings().weight, coef)


def pear_for(b: dict, config: TrainConfig) -> Pear | None:
    """pear: the micro-batch's behaviour log-probs and the weight's settings."""
    if "behaviour_logprobs" not in b:
        return None
    return Pear(b["behaviour_logprobs"], b["behaviour_known"], config.pear_level, config.pear_gamma, config.pear_block)


def backward_step(policy: torch.nn.Module, micro_batches: list[dict], config: TrainConfig, num_tokens: int,
                  num_seqs: int, scale: float, no_sync: Any, anchor_ref: torch.nn.Module | None = None
                  ) -> dict[str, float]:
    """Forward + backward over this process's micro-batches of one optimizer step.

    Each micro-batch's loss is divided by the step's global token (or sequence) count and
    multiplied by ``scale`` (the process count: DDP averages gradients over processes), so the
    summed gradient equals the whole batch's, however it was split. ``anchor_ref`` (asft): the frozen
    reference whose KL to the policy joins the loss. Returns the metric sums.
    """
    stats = dict.fromkeys(STAT_KEYS, 0.0)
    for j, b in enumerate(micro_batches):
        sync = j == len(micro_batches) - 1
        with no_sync(policy) if not sync else nullcontext():
            old = b.get("old_logprobs")
            spec = dict(method=config.method, tau=config.tau, agg=config.agg, num_tokens=num_tokens, num_seqs=num_seqs,
                        old_logprobs=old, clip_eps=config.clip_eps, clip_high=config.clip_high,
                        ref_logprobs=b.get("ref_logprobs"), beta=config.kl_coef, pear=pear_for(b, config))
            if config.fused_loss:
                anchor = None if anchor_ref is None else anchor_for(anchor_ref, b, config.anchor_coef)
                objective = TokenObjective.build(b["response_mask"], b["advantages"], anchor=anchor, **spec)
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
            if old is not None:  # share of tokens whose ratio the clip held (grpo, later ppo epochs, psft)
                ratio = (logprobs.detach() - old).exp()[mask]
                stats["clipped"] += float(((ratio > 1 + config.clip_high) | (ratio < 1 - config.clip_eps)).sum())
            per_seq_lp = torch.where(mask, logprobs.detach(), 0.0).sum(-1)
            for i, source in enumerate(b["sources"]):
                stats[f"logprob/{source}"] += float(per_seq_lp[i])
                stats[f"logprob_tokens/{source}"] += float(mask[i].sum())
                stats[f"advantage/{source}"] += float(b["advantages"][i])
                stats[f"seqs/{source}"] += 1.0
    return stats


def mean_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    """One step's statistics from its several updates (grpo's ppo epochs, psft's mini-batches): the mean."""
    return {key: sum(s[key] for s in stats) / len(stats) for key in stats[0]}


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
