"""One token-level loss for every method: l_t = -coef_t * log p_t (DESIGN.md section 2).

| method      | coef_t on -log p_t                      | gradient of l_t          |
|-------------|-----------------------------------------|--------------------------|
| sft, sft-mix| 1                                       | -grad log p              |
| dft         | sg(p)                                   | -grad p                  |
| gft         | A * C(p), C(p) = sg(p) if p < tau else 1 | -A grad p  or  -A grad log p |
| gft-no-dcr  | A                                       | -A grad log p            |
| gft-no-gal  | C(p)                                    | -grad p  or  -grad log p |

``sg`` is stop-gradient (``detach``). p is the probability of the trained token under the current
policy. Aggregation (``agg``):

- ``token-mean``: sum of l over every response token of the optimizer step / ``num_tokens``
  (the authors' code and TRL's DFT). With gradient accumulation or several processes pass the
  global token count of the whole step, or the result depends on how the batch was split.
- ``seq-mean-token-sum``: per sequence the sum of its tokens' l; mean over sequences.
- ``seq-mean-token-mean``: per sequence the mean of its tokens' l; mean over sequences.
  Both divide by ``num_seqs``, the step's global sequence count (default: this batch's).
"""

from __future__ import annotations

import torch

METHODS = ("sft", "sft-mix", "dft", "gft", "gft-no-dcr", "gft-no-gal")
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
USES_ADVANTAGE = ("gft", "gft-no-dcr")


def dcr(p: torch.Tensor, tau: float) -> torch.Tensor:
    """Dynamic Coefficient Rectification: sg(p) where p < tau, else 1."""
    return torch.where(p < tau, p.detach(), torch.ones_like(p))


def coefficient(logprobs: torch.Tensor, advantages: torch.Tensor, method: str, tau: float) -> torch.Tensor:
    """Per-token coefficient [B, T] on -log p: a stop-gradient quantity everywhere."""
    p = logprobs.detach().exp()  # every coefficient is a stop-gradient quantity
    a = advantages.detach()[:, None].to(logprobs.dtype)
    if method in ("sft", "sft-mix"):
        return torch.ones_like(p)
    if method == "dft":
        return p
    if method == "gft":
        return a * dcr(p, tau)
    if method == "gft-no-dcr":
        return a.expand_as(p)
    if method == "gft-no-gal":
        return dcr(p, tau)
    raise ValueError(f"unknown method '{method}' (known: {', '.join(METHODS)})")


def token_loss(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor | None, *, method: str,
               tau: float = 0.7, agg: str = "token-mean", num_tokens: float | torch.Tensor | None = None,
               num_seqs: float | torch.Tensor | None = None) -> torch.Tensor:
    """Scalar loss whose gradient is the paper's, for ``logprobs`` [B, T] (with grad) and ``mask`` [B, T].

    ``advantages`` [B] is read by gft and gft-no-dcr only (None is allowed for the others).
    Masked positions never reach the result (``where``, not a product, so a -inf there is harmless).
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation '{agg}' (known: {', '.join(AGGREGATIONS)})")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if advantages is None:
        if method in USES_ADVANTAGE:
            raise ValueError(f"method '{method}' needs advantages")
        advantages = torch.zeros(logprobs.shape[0], device=logprobs.device)
    keep = mask.bool()
    safe_lp = torch.where(keep, logprobs, torch.zeros_like(logprobs))  # [B, T]
    per_token = torch.where(keep, -coefficient(safe_lp, advantages, method, tau) * safe_lp, 0.0)  # [B, T]
    if agg == "token-mean":
        denom = keep.sum() if num_tokens is None else num_tokens
        return per_token.sum() / torch.as_tensor(denom, dtype=per_token.dtype).clamp(min=1)
    per_seq = per_token.sum(-1)  # [B]
    if agg == "seq-mean-token-mean":
        per_seq = per_seq / keep.sum(-1).clamp(min=1)
    denom = logprobs.shape[0] if num_seqs is None else num_seqs
    return per_seq.sum() / torch.as_tensor(denom, dtype=per_token.dtype).clamp(min=1)
