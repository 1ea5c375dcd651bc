"""Per-token log-probs of the trained tokens without materialising full fp32 logits.

Full logits are vocab x tokens: 151,936 x 4,096 in fp32 is 2.3 GiB per sequence, and the
backward pass keeps as much again. Here only response positions go through the LM head, in chunks
of ``chunk`` tokens (``ChunkedTokenLogprob``): a chunk's logits are upcast to fp32 for the
log-softmax and only the target token's log-prob (and, when asked, the entropy, without gradient)
leaves it; the backward pass recomputes them chunk by chunk. Peak extra memory is one chunk's
logits plus one fp32 weight-gradient buffer instead of the whole sequence's logits.
``tests/test_logprobs.py`` checks values and gradients against a plain full-logits fp32
computation.
"""

from __future__ import annotations

import torch
from torch import nn


class ChunkedTokenLogprob(torch.autograd.Function):
    """log p(target) per token through the LM head, one chunk of tokens at a time.

    Forward keeps only each token's logsumexp [N]. Backward recomputes a chunk's logits, turns them
    in place into d logp / d logits = onehot(target) - softmax (times the upstream gradient), and
    accumulates the weight gradient with ``addmm_`` into one fp32 [V, H] buffer: peak extra memory
    is one chunk of fp32 logits plus that buffer, whatever the sequence length.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        w = weight.to(hidden.dtype)  # bf16 activations with fp32 master weights: matmul in bf16
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.zeros_like(logp)
        for s in range(0, n, chunk):
            logits = (hidden[s : s + chunk] @ w.T).float()  # [c, V] fp32, this chunk only
            lse[s : s + chunk] = torch.logsumexp(logits, -1)
            logp[s : s + chunk] = logits.gather(1, targets[s : s + chunk, None]).squeeze(1) - lse[s : s + chunk]
            if with_entropy:  # H = lse - sum softmax * logits
                entropy[s : s + chunk] = lse[s : s + chunk] - (
                    logits.sub(lse[s : s + chunk, None]).exp_().mul_(logits).sum(-1))
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk = chunk
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp: torch.Tensor, _grad_entropy: torch.Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        w = weight.to(hidden.dtype)
        for s in range(0, hidden.shape[0], ctx.chunk):
            h, g = hidden[s : s + ctx.chunk], grad_logp[s : s + ctx.chunk].float()
            dlogits = (h @ w.T).float().sub_(lse[s : s + ctx.chunk, None]).exp_()  # softmax, in place
            dlogits.mul_(-g[:, None]).scatter_add_(1, targets[s : s + ctx.chunk, None], g[:, None])  # [c, V] fp32
            if grad_w is not None:
                grad_w.addmm_(dlogits.T, h.float())
            if grad_h is not None:
                grad_h[s : s + ctx.chunk] = dlogits.to(hidden.dtype) @ w
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None


def selective_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 512,
                       with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) [N] (with grad) and entropy [N] (no grad) from hidden [N, H] and LM head weight [V, H]."""
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes are handled explicitly inside
        return ChunkedTokenLogprob.apply(hidden, weight, targets, chunk, with_entropy)


class Policy(nn.Module):
    """Wraps a causal LM so one ``forward`` gives per-token log-probs of response tokens.

    Wrapping (rather than calling the model's parts from the training loop) keeps DDP / FSDP
    hooks on the whole computation. Works for decoder models whose logits are ``lm_head(hidden)``
    (Llama, Qwen2, Mistral); models with logit soft-capping or scaling are refused.
    """

    def __init__(self, model: nn.Module, chunk: int = 512):
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
