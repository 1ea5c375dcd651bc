"""Per-token log-probs of the trained tokens without materialising full fp32 logits.

Full logits are vocab x tokens: 151,936 x 4,096 in fp32 is 2.3 GiB per sequence, and the
backward pass keeps as much again. Here only response positions go through the LM head, in chunks
of ``chunk`` tokens; each chunk's logits live only inside a checkpointed function (recomputed in
the backward pass), are upcast to fp32 for the log-softmax, and only the target token's log-prob
(and, when asked, the entropy, without gradient) leaves it. Peak extra memory is one chunk's
logits instead of the whole sequence's. ``tests/test_logprobs.py`` checks values and gradients
against a plain full-logits fp32 computation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logits = (hidden @ weight.T).float()  # [n, V] fp32, this chunk only
    lse = torch.logsumexp(logits, dim=-1)  # [n]
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - lse  # [n]
    if not with_entropy:
        return logp, torch.zeros_like(lse).detach()
    with torch.no_grad():
        entropy = lse - (torch.softmax(logits, -1) * logits).sum(-1)  # [n]
    return logp, entropy


def selective_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024,
                       with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) [N] (with grad) and entropy [N] (no grad) from hidden [N, H] and LM head weight [V, H]."""
    logps, ents = [], []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
            lp, ent = checkpoint(chunk_logprobs, h, weight, t, with_entropy, use_reentrant=False)
        else:
            lp, ent = chunk_logprobs(h, weight, t, with_entropy)
        logps.append(lp)
        ents.append(ent)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(logps), torch.cat(ents)


class Policy(nn.Module):
    """Wraps a causal LM so one ``forward`` gives per-token log-probs of response tokens.

    Wrapping (rather than calling the model's parts from the training loop) keeps DDP / FSDP
    hooks on the whole computation. Works for decoder models whose logits are ``lm_head(hidden)``
    (Llama, Qwen2, Mistral); models with logit soft-capping or scaling are refused.
    """

    def __init__(self, model: nn.Module, chunk: int = 1024):
        super().__init__()
        for key in ("final_logit_softcapping", "logit_scale"):
            if getattr(model.config, key, None):
                raise ValueError(f"models with {key} are not supported by the chunked log-prob path")
        self.model, self.chunk = model, chunk

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``response_mask`` [B, T] marks tokens to score (token t is predicted from positions < t).

        Returns log-probs and entropies [B, T] (zeros where ``response_mask`` is 0)."""
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        sel = response_mask[:, 1:].bool()  # [B, T-1]: position t-1 predicts token t
        h = hidden[:, :-1][sel]  # [N, H]
        targets = input_ids[:, 1:][sel]  # [N]
        logp, ent = selective_logprobs(h, self.model.get_output_embeddings().weight, targets, self.chunk,
                                       with_entropy)
        out_lp = hidden.new_zeros(input_ids.shape, dtype=torch.float32)
        out_ent = torch.zeros_like(out_lp)
        pad = torch.zeros_like(response_mask[:, :1], dtype=torch.bool)
        where = torch.cat([pad, sel], dim=1)  # [B, T]: scores sit at the scored token's position
        out_lp = out_lp.masked_scatter(where, logp)
        out_ent = out_ent.masked_scatter(where, ent)
        return out_lp, out_ent


@torch.no_grad()
def token_kl(policy_model: nn.Module, ref_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             response_mask: torch.Tensor, chunk: int = 1024) -> tuple[float, int]:
    """Sum over response tokens of KL(pi_theta || pi_ref) (full vocabulary), and the token count."""
    sel = response_mask[:, 1:].bool()
    h = policy_model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1][sel]
    r = ref_model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1][sel]
    w, wr = policy_model.get_output_embeddings().weight, ref_model.get_output_embeddings().weight
    total = 0.0
    for start in range(0, h.shape[0], chunk):
        lp = torch.log_softmax((h[start : start + chunk] @ w.T).float(), -1)
        lr = torch.log_softmax((r[start : start + chunk].to(wr.dtype) @ wr.T).float(), -1)
        total += float((lp.exp() * (lp - lr)).sum())
    return total, int(h.shape[0])
