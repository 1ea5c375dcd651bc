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

from typing import Any

import torch
from torch import nn

from gftrepro.prefix import full_attention, scored_hidden


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
            if with_entropy:  # H = -sum p log p, from the log-softmax (no cancellation against lse)
                shifted = logits.sub_(lse[s : s + chunk, None])
                entropy[s : s + chunk] = -shifted.exp().mul_(shifted).sum(-1)
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


class FusedTokenLoss(torch.autograd.Function):
    """The training loss through the LM head with its gradient made in the same pass, chunk by chunk.

    Every method's per-token loss depends on its own token's log p only (``losses.token_terms``; PEAR's
    stop-gradient weights read the other tokens' log p too, so for it a first no-grad pass makes them), so
    as soon as a chunk's log-softmax is known so is d loss / d log p (``g``, from autograd on that
    chunk's [c] vector), and d loss / d logits = g * (onehot(target) - softmax). The forward pass turns
    the chunk's logits into that in place and multiplies it straight into the hidden-state gradient
    [c, H] and the weight gradient [V, H] (accumulated in fp32); backward only scales the two by the
    upstream gradient. Three matmuls per chunk instead of the four of ``ChunkedTokenLogprob`` + a
    separate loss (no recomputation of the logits), all in the activations' dtype (bf16 on GPU), and
    no fp32 [V, H] matmul. Liger's fused linear cross-entropy does the same for plain cross-entropy.

    Returns the loss (sum over tokens of weight * l_t), log p [N] and the entropy [N] (both without
    gradient). ``tests/test_logprobs.py`` checks loss and gradients against full-logit ``token_loss``
    for every method, aggregation and tau, in float64.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, objective: Any,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, dtype = hidden.shape[0], hidden.dtype
        w = weight.to(dtype)  # bf16 activations with fp32 master weights: matmuls in bf16
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        if getattr(objective, "needs_logprobs", False):  # pear: weights from every token's log p, first
            objective.prepare(target_logprobs(hidden, w, targets, chunk, acc))
        anchor = getattr(objective, "anchor", None)  # asft: + coef * KL(pi_ref || pi_theta) per token
        if anchor is not None:  # a second [c, V] buffer (the reference's softmax): half the rows keep the peak
            chunk, w_ref = max(1, chunk // 2), anchor.weight.to(dtype)
        logp = torch.empty(n, dtype=acc, device=hidden.device)
        entropy = torch.empty_like(logp)
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if ctx.needs_input_grad[1] else None
        # Temporaries beyond the [c, V] fp32 buffer are kept within what the chunked path's backward
        # allocates at the same point (a [c, H] product in fp32; a bf16 copy of the buffer in bf16), so
        # the fused peak is no higher: entropy rows and weight-gradient vocab rows come in blocks.
        ent_rows = max(1, (chunk * hidden.shape[1]) // weight.shape[0]) if dtype == acc else max(1, chunk // 2)
        vocab_rows = max(1, (2 * chunk * weight.shape[0]) // hidden.shape[1])  # [rows, H] bf16 <= [c, V] fp32
        for s in range(0, n, chunk):
            sl, h, t = slice(s, s + chunk), hidden[s : s + chunk], targets[s : s + chunk, None]
            # one [c, V] buffer: the logits, turned in place into the softmax and then into d loss / d logits
            probs = (h @ w.T).to(acc)  # [c, V], this chunk only
            probs.sub_(probs.amax(-1, keepdim=True))
            target = probs.gather(1, t).squeeze(1)
            if anchor is not None:  # the reference's softmax q, and sum_v q_v z_v of the shifted logits z
                q = (anchor.hidden[sl].to(dtype) @ w_ref.T).to(acc)
                q.sub_(q.amax(-1, keepdim=True)).exp_()
                q.div_(q.sum(-1, keepdim=True))
                cross = torch.bmm(q.unsqueeze(1), probs.unsqueeze(2)).view(-1)
            total = probs.exp_().sum(-1)
            probs.div_(total[:, None])  # softmax
            logp[sl] = target - total.log()
            ent = entropy[sl]  # a view; H = -sum p log p, ent_rows rows of temporaries at a time
            for r in range(0, probs.shape[0], ent_rows):
                torch.sum(torch.special.entr(probs[r : r + ent_rows]), -1, out=ent[r : r + ent_rows])
            with torch.enable_grad():
                x = logp[sl].detach().requires_grad_(True)
                terms = objective(x, sl)
                (g,) = torch.autograd.grad(terms.sum(), x)  # d loss / d log p, per token
            loss += terms.detach().sum()
            if anchor is None:
                dlogits = probs.mul_(-g[:, None]).scatter_add_(1, t, g[:, None]).to(dtype)  # g * (onehot - softmax)
            else:  # KL(q || p) = sum q log q - sum q log p; its gradient on the logits is coef * w * (p - q)
                ref_entropy = torch.cat([torch.special.entr(q[r : r + ent_rows]).sum(-1)
                                         for r in range(0, q.shape[0], ent_rows)])
                lam = anchor.coef * objective.weights[sl].to(acc)
                loss += (lam * (total.log() - cross - ref_entropy)).sum()
                probs.mul_((lam - g)[:, None]).sub_(q.mul_(lam[:, None])).scatter_add_(1, t, g[:, None])
                dlogits, q = probs.to(dtype), None
            probs = None  # with bf16 activations the fp32 buffer is freed here (dlogits is its bf16 copy)
            if grad_h is not None:
                torch.matmul(dlogits, w, out=grad_h[sl])
            if grad_w is not None:
                if dtype == acc:
                    grad_w.addmm_(dlogits.T, h)
                else:  # bf16 products (fp32 accumulation inside each matmul) added into the fp32 buffer
                    for v in range(0, grad_w.shape[0], vocab_rows):
                        grad_w[v : v + vocab_rows].add_(dlogits[:, v : v + vocab_rows].T @ h)
            dlogits = None
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        ctx.mark_non_differentiable(logp, entropy)
        return loss, logp, entropy

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_logp: torch.Tensor, _grad_entropy: torch.Tensor):
        grads = list(ctx.saved_tensors)  # grad_h, grad_w (None where no gradient was asked for)
        if not bool(grad_loss == 1):
            grads = [None if g is None else g * grad_loss.to(g.dtype) for g in grads]
        return *grads, None, None, None


@torch.no_grad()
def target_logprobs(hidden: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int, acc: torch.dtype
                    ) -> torch.Tensor:
    """log p(target) [N] through the LM head, chunk by chunk, without gradient (one [c, V] buffer)."""
    out = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        logits = (hidden[s : s + chunk] @ w.T).to(acc)
        out[s : s + chunk] = logits.gather(1, targets[s : s + chunk, None]).squeeze(1) - torch.logsumexp(logits, -1)
    return out


def fused_token_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, objective: Any,
                     chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss (with grad), log p [N] and entropy [N] of the scored tokens: see ``FusedTokenLoss``."""
    if hidden.shape[0] == 0:  # nothing scored: a zero loss still attached to the graph
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return (hidden.sum() + weight.sum()).float() * 0.0, empty, empty
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes are handled explicitly inside
        return FusedTokenLoss.apply(hidden, weight, targets, objective, chunk)


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

    def __init__(self, model: nn.Module, chunk: int = 512, share_prompts: bool = False):
        super().__init__()
        for key in ("final_logit_softcapping", "logit_scale"):
            if getattr(model.config, key, None):
                raise ValueError(f"models with {key} are not supported by the chunked log-prob path")
        self.model, self.chunk = model, chunk
        self.share_prompts = share_prompts and full_attention(model)  # gftrepro.prefix: a group's prompt encoded once

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                with_entropy: bool = False, objective: Any = None) -> tuple[torch.Tensor, ...]:
        """``response_mask`` [B, T] marks tokens to score (token t is predicted from positions < t).

        Returns log-probs and entropies [B, T] (zeros where ``response_mask`` is 0). Given a
        ``losses.TokenObjective`` over the same [B, T], returns (loss, log-probs, entropies) instead,
        from the fused pass (``FusedTokenLoss``): the loss carries the gradient, the rest do not."""
        sel = response_mask[:, 1:].bool()  # [B, T-1]: position t-1 predicts token t
        h = scored_hidden(self.model, input_ids, attention_mask, response_mask, self.share_prompts)  # [N, H]
        targets = input_ids[:, 1:][sel]  # [N]
        pad = torch.zeros_like(response_mask[:, :1], dtype=torch.bool)
        where = torch.cat([pad, sel], dim=1)  # [B, T]: scores sit at the scored token's position
        head = self.model.get_output_embeddings().weight
        if objective is not None:
            loss, logp, ent = fused_token_loss(h, head, targets, objective.select(where), self.chunk)
            return loss, *(scatter_tokens(x, where) for x in (logp.float(), ent.float()))
        logp, ent = selective_logprobs(h, head, targets, self.chunk, with_entropy)
        return scatter_tokens(logp, where), scatter_tokens(ent, where)


def scatter_tokens(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """[N] values of the scored tokens into a [B, T] float32 tensor (zeros elsewhere)."""
    return torch.zeros(where.shape, dtype=torch.float32, device=where.device).masked_scatter(where, values)


@torch.no_grad()
def token_kl(policy_model: nn.Module, ref_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             response_mask: torch.Tensor, chunk: int = 1024, share_prompts: bool = False) -> tuple[float, int]:
    """Sum over response tokens of KL(pi_theta || pi_ref) (full vocabulary), and the token count."""
    h, r = (scored_hidden(m, input_ids, attention_mask, response_mask, share_prompts and full_attention(m))
            for m in (policy_model, ref_model))
    w, wr = policy_model.get_output_embeddings().weight, ref_model.get_output_embeddings().weight
    total = 0.0
    for start in range(0, h.shape[0], chunk):
        lp = torch.log_softmax((h[start : start + chunk] @ w.T).float(), -1)
        lr = torch.log_softmax((r[start : start + chunk].to(wr.dtype) @ wr.T).float(), -1)
        total += float((lp.exp() * (lp - lr)).sum())
    return total, int(h.shape[0])
