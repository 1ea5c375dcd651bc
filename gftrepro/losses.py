"""One token-level loss for every method: l_t = -coef_t * log p_t (docs/DESIGN.md section 2).

| method      | coef_t on -log p_t                      | gradient of l_t          |
|-------------|-----------------------------------------|--------------------------|
| sft, sft-mix| 1                                       | -grad log p              |
| dft         | sg(p)                                   | -grad p                  |
| gft         | A * C(p), C(p) = sg(p) if p < tau else 1 | -A grad p  or  -A grad log p |
| gft-no-dcr  | A                                       | -A grad log p            |
| gft-no-gal  | C(p)                                    | -grad p  or  -grad log p |
| gft-no-mix  | A * C(p) (groups without teacher members) | as gft                 |
| asft        | sg(p), plus lambda * KL(pi_ref || pi_theta) | -grad p + lambda (softmax - p_ref) on the logits |
| psft        | min(r, clip(r, 1-eps, 1+eps_high)) / log p, A = 1 | -grad r (unclipped side) |
| grpo        | A * min(r, clip(r, 1-eps, 1+eps)) / log p, | -A grad r (unclipped side) |
|             | r = pi_theta / pi_old (the clipped PPO surrogate) |                   |

ASFT's KL term reads the whole vocabulary at each position, not the trained token's log p alone:
``token_loss`` leaves it out (it equals DFT's there) and the fused LM-head pass adds it chunk by
chunk from the reference's final hidden states (``Anchor``; ``gftrepro.logprobs.FusedTokenLoss``).

GRPO's per-token loss is the clipped surrogate ``-min(r A, clip(r, 1 - eps, 1 + eps) A)`` with
``r = exp(log p - old log p)``, plus ``beta * k3`` where ``k3 = exp(ref - log p) - (ref - log p) - 1``
(the KL estimator of the GRPO paper and TRL) when ``beta > 0``. With one update per batch of
rollouts (``old = sg(log p)``, r = 1) its gradient is ``-A grad log p``: exactly ``gft-no-dcr``'s
on the same groups, aggregated the same way (tested); only the loss value differs (-A, not
-A log p).

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

import math
from dataclasses import dataclass
from typing import Any

import torch

from gftrepro.methods import METHODS, get

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def dcr(p: torch.Tensor, tau: float) -> torch.Tensor:
    """Dynamic Coefficient Rectification: sg(p) where p < tau, else 1."""
    return torch.where(p < tau, p.detach(), torch.ones_like(p))


def coefficient(logprobs: torch.Tensor, advantages: torch.Tensor, method: str, tau: float) -> torch.Tensor:
    """Per-token coefficient on -log p (shape of ``logprobs``; ``advantages`` broadcast to it): a
    stop-gradient quantity everywhere."""
    p = logprobs.detach().exp()  # every coefficient is a stop-gradient quantity
    a = advantages.detach().to(logprobs.dtype)
    kind = get(method).coefficient if method in METHODS else ""
    if kind == "one":
        return torch.ones_like(p)
    if kind == "p":
        return p
    if kind == "adv-dcr":
        return a * dcr(p, tau)
    if kind in ("adv", "pear"):  # pear: the caller passes PEAR's weights G_t as the advantages, per token
        return a.expand_as(p)
    if kind == "dcr":
        return dcr(p, tau)
    raise ValueError(f"method '{method}' has no fixed coefficient on -log p (known: "
                     f"{', '.join(m for m in METHODS if get(m).coefficient not in ('ratio', 'proximal'))})")


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      clip_eps: float, clip_high: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO/PPO per-token loss ``-min(r A, clip(r, 1 - eps, 1 + eps_high) A)`` and where the clip was
    active (``advantages`` broadcast to ``logprobs``; ``clip_high`` 0 = ``clip_eps``)."""
    ratio = torch.exp(logprobs - old_logprobs)
    a = advantages.detach().to(logprobs.dtype)
    unclipped, clipped = ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + (clip_high or clip_eps)) * a
    return -torch.min(unclipped, clipped), (clipped < unclipped).detach()


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi_theta || pi_ref) estimator k3 = exp(ref - lp) - (ref - lp) - 1 (>= 0)."""
    d = ref_logprobs.detach() - logprobs
    return torch.exp(d) - d - 1


def check_args(method: str, tau: float, agg: str, beta: float = 0.0, ref_logprobs: torch.Tensor | None = None
               ) -> None:
    if agg not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation '{agg}' (known: {', '.join(AGGREGATIONS)})")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (known: {', '.join(METHODS)})")
    if beta and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs")


def token_terms(logprobs: torch.Tensor, advantages: torch.Tensor, *, method: str, tau: float,
                old_logprobs: torch.Tensor | None = None, clip_eps: float = 0.2, clip_high: float = 0.0,
                ref_logprobs: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """Per-token loss l_t, elementwise in the shape of ``logprobs`` (``advantages`` broadcast to it;
    ``old_logprobs`` / ``ref_logprobs`` of the same shape). Every token's l_t depends on its own log p
    only, which is what lets ``gftrepro.logprobs`` produce the gradient in the loss's own pass.
    psft ("proximal") reads no advantage: every demonstration token has A = 1."""
    kind = get(method).coefficient
    if kind in ("ratio", "proximal"):
        old = logprobs.detach() if old_logprobs is None else old_logprobs
        a = torch.ones_like(logprobs) if kind == "proximal" else advantages
        terms = clipped_surrogate(logprobs, old, a, clip_eps, clip_high)[0]
    else:
        terms = -coefficient(logprobs, advantages, method, tau) * logprobs
    if beta:
        terms = terms + beta * k3_kl(logprobs, ref_logprobs)
    return terms


PEAR_LEVELS = ("sequence", "token", "block")
# From a third-party reading of PEAR's section 3.7 (the paper's html was not readable here): each token's
# log-ratio is clipped to [-0.08, 0.3] and each log-weight to [-10, 5]. Unverified against the paper.
PEAR_DELTA_CLIP = (-0.08, 0.3)
PEAR_LOG_WEIGHT_CLIP = (-10.0, 5.0)


def pear_weights(logprobs: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor, known: torch.Tensor,
                 level: str = "token", gamma: float = 0.999, block: int = 4) -> torch.Tensor:
    """PEAR's stop-gradient weight G_t of every response token [B, T] (1 where ``mask`` is 0), in log space.

    ``delta_t = clip(log pi_theta(y_t) - log pi_behaviour(y_t))`` (0 where ``known`` is 0: a token without a
    behaviour log-prob, e.g. the EOS build-groups appended); t = 1..T counts a sequence's response tokens.

    - sequence: log G_t = sum over the whole response of delta (the same weight on every token);
    - token: log G_t = (T - t) log gamma + sum_{j > t} delta_j (the discounted suffix after t);
    - block: blocks of ``block`` tokens; for t in block k ending at e_k,
      log G_t = (T - e_k) log gamma + sum of delta over the blocks after k (block 1 is the token level).

    Each log G is clipped to ``PEAR_LOG_WEIGHT_CLIP``. With pi_theta = pi_behaviour and gamma = 1 every
    weight is 1 (SFT)."""
    if level not in PEAR_LEVELS:
        raise ValueError(f"unknown PEAR level '{level}' (known: {', '.join(PEAR_LEVELS)})")
    keep = mask.bool()
    lp, bp = logprobs.detach().double(), behaviour.detach().double()
    delta = torch.where(keep & known.bool(), (lp - bp).clamp(*PEAR_DELTA_CLIP), 0.0)  # [B, T]
    t = torch.cumsum(keep.long(), -1)  # 1-based index among the response tokens
    length = keep.sum(-1, keepdim=True)  # T per sequence
    total = delta.sum(-1, keepdim=True)
    if level == "sequence":
        log_w = total.expand_as(delta)
    else:
        size = 1 if level == "token" else block
        end = torch.minimum(-(-t // size) * size, length).clamp(min=1)  # e_k: the last response index of t's block
        # delta by response index (delta is 0 off the response, so those positions add 0 to column 0)
        by_index = torch.zeros_like(delta).scatter_add_(1, torch.where(keep, t - 1, 0), delta)
        upto = torch.cumsum(by_index, -1).gather(1, end - 1)  # sum of delta over response indices <= e_k
        log_w = (length - end).to(delta.dtype) * math.log(gamma) + (total - upto)
    log_w = log_w.clamp(*PEAR_LOG_WEIGHT_CLIP)
    return torch.where(keep, log_w.exp(), 1.0).to(logprobs.dtype)


def token_weights(mask: torch.Tensor, agg: str, num_tokens: float | torch.Tensor | None = None,
                  num_seqs: float | torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Aggregation weight of every token [B, T] (0 where ``mask`` is 0): the loss is sum(weight * l)."""
    keep = mask.bool()
    if agg == "token-mean":
        denom = keep.sum() if num_tokens is None else num_tokens
        per_token = 1.0 / torch.as_tensor(denom, dtype=dtype, device=mask.device).clamp(min=1)
        return torch.where(keep, per_token, 0.0).to(dtype)
    denom = mask.shape[0] if num_seqs is None else num_seqs
    per_seq = 1.0 / torch.as_tensor(denom, dtype=dtype, device=mask.device).clamp(min=1)
    if agg == "seq-mean-token-mean":
        per_seq = per_seq / keep.sum(-1, keepdim=True).clamp(min=1).to(dtype)
    return torch.where(keep, per_seq, 0.0).to(dtype)


def token_loss(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor | None, *, method: str,
               tau: float = 0.7, agg: str = "token-mean", num_tokens: float | torch.Tensor | None = None,
               num_seqs: float | torch.Tensor | None = None, old_logprobs: torch.Tensor | None = None,
               clip_eps: float = 0.2, clip_high: float = 0.0, ref_logprobs: torch.Tensor | None = None,
               beta: float = 0.0, pear: Pear | None = None) -> torch.Tensor:
    """Scalar loss whose gradient is the paper's, for ``logprobs`` [B, T] (with grad) and ``mask`` [B, T].

    ``advantages`` [B] is read by gft, gft-no-dcr and grpo only (None is allowed for the others).
    grpo, psft: ``old_logprobs`` [B, T] (default ``sg(logprobs)``: one update per batch), ``clip_eps``
    and ``clip_high`` (the upper clip range; 0 = ``clip_eps``).
    Any method: ``beta > 0`` adds ``beta * k3`` against ``ref_logprobs`` [B, T] per token.
    pear: ``pear`` (the behaviour log-probs); its weights come from ``sg(logprobs)``.
    Masked positions never reach the result (``where``, not a product, so a -inf there is harmless).
    The training loop computes the same sum with ``gftrepro.logprobs.FusedTokenLoss`` (tested equal).
    """
    check_args(method, tau, agg, beta, ref_logprobs)
    advantages = check_advantages(advantages, method, logprobs)
    keep = mask.bool()
    safe_lp = torch.where(keep, logprobs, torch.zeros_like(logprobs))  # [B, T]
    old = None if old_logprobs is None else torch.where(keep, old_logprobs, 0.0)
    ref = torch.where(keep, ref_logprobs, 0.0) if beta else None
    per = advantages[:, None] if get(method).coefficient != "pear" else pear_of(pear, method).weights(safe_lp, mask)
    terms = token_terms(safe_lp, per, method=method, tau=tau, old_logprobs=old, clip_eps=clip_eps,
                        clip_high=clip_high, ref_logprobs=ref, beta=beta)
    per_token = torch.where(keep, terms, 0.0)  # [B, T]
    return (per_token * token_weights(mask, agg, num_tokens, num_seqs, per_token.dtype)).sum()


def pear_of(pear: Pear | None, method: str) -> Pear:
    if pear is None:
        raise ValueError(f"method '{method}' needs the behaviour policy's log-probs (pear=Pear(...))")
    return pear


def check_advantages(advantages: torch.Tensor | None, method: str, logprobs: torch.Tensor) -> torch.Tensor:
    if advantages is None:
        if get(method).uses_advantage:
            raise ValueError(f"method '{method}' needs advantages")
        return torch.zeros(logprobs.shape[0], device=logprobs.device)
    return advantages


@dataclass(frozen=True)
class Pear:
    """PEAR's inputs: the behaviour policy's log-probs [B, T] at the response tokens, where they are known
    [B, T], and the weight's level, discount and block size (``pear_weights``)."""

    behaviour: torch.Tensor
    known: torch.Tensor
    level: str = "token"
    gamma: float = 0.999
    block: int = 4

    def weights(self, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pear_weights(logprobs, self.behaviour, mask, self.known, self.level, self.gamma, self.block)


class TokenObjective:
    """One micro-batch's loss as the fused LM-head pass needs it: per scored token, its aggregation
    weight and what its loss term reads (advantage, behaviour and reference log-probs).

    ``build`` takes the [B, T] tensors of ``token_loss``; ``select`` keeps the scored tokens in the
    order ``Policy`` flattens them; calling it on a slice of log-probs [n] gives weight * l_t [n],
    whose sum over every token is ``token_loss``'s value.
    """

    def __init__(self, method: str, tau: float, clip_eps: float, beta: float, weights: torch.Tensor,
                 advantages: torch.Tensor, old_logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None,
                 clip_high: float = 0.0, anchor: Anchor | None = None, pear: Pear | None = None,
                 where: torch.Tensor | None = None):
        self.method, self.tau, self.clip_eps, self.beta, self.clip_high = method, tau, clip_eps, beta, clip_high
        self.weights, self.advantages, self.old, self.ref = weights, advantages, old_logprobs, ref_logprobs
        self.anchor, self.pear, self.where = anchor, pear, where

    @property
    def needs_logprobs(self) -> bool:
        """pear: every token's weight reads the other tokens' log p, so the fused pass computes them first."""
        return self.pear is not None

    def prepare(self, logprobs: torch.Tensor) -> None:
        """pear: the scored tokens' log p [N] (no gradient) -> PEAR's weights, read as the advantages."""
        full = torch.zeros(self.where.shape, dtype=torch.float64, device=logprobs.device)
        full[self.where] = logprobs.detach().to(torch.float64)
        self.advantages = self.pear.weights(full, self.where)[self.where]

    @classmethod
    def build(cls, mask: torch.Tensor, advantages: torch.Tensor | None, *, method: str, tau: float = 0.7,
              agg: str = "token-mean", num_tokens: float | torch.Tensor | None = None,
              num_seqs: float | torch.Tensor | None = None, old_logprobs: torch.Tensor | None = None,
              clip_eps: float = 0.2, clip_high: float = 0.0, ref_logprobs: torch.Tensor | None = None,
              beta: float = 0.0, anchor: Anchor | None = None, pear: Pear | None = None) -> TokenObjective:
        """``anchor``: asft's KL term (its hidden states already [N, H], in the scored tokens' order);
        ``pear``: the behaviour log-probs, whose weights ``prepare`` makes once the log-probs are known."""
        check_args(method, tau, agg, beta, ref_logprobs)
        if get(method).coefficient == "pear":
            pear_of(pear, method)
        wide = torch.float64  # small [B, T] tensors, cast to the log-probs' dtype per chunk
        adv = check_advantages(advantages, method, mask).detach().to(wide)[:, None].expand(mask.shape)
        return cls(method, tau, clip_eps, beta, token_weights(mask, agg, num_tokens, num_seqs, wide), adv,
                   None if old_logprobs is None else old_logprobs.detach().to(wide),
                   ref_logprobs.detach().to(wide) if beta else None, clip_high, anchor, pear)

    def select(self, where: torch.Tensor) -> TokenObjective:
        """The scored tokens only ([B, T] boolean ``where`` -> [N]; the anchor is already [N, H])."""
        return TokenObjective(self.method, self.tau, self.clip_eps, self.beta, self.weights[where],
                              self.advantages[where], part(self.old, where), part(self.ref, where), self.clip_high,
                              self.anchor, self.pear, where if self.pear is not None else None)

    def __call__(self, logprobs: torch.Tensor, s: slice) -> torch.Tensor:
        dt = logprobs.dtype
        terms = token_terms(logprobs, part(self.advantages, s, dt), method=self.method, tau=self.tau,
                            old_logprobs=part(self.old, s, dt), clip_eps=self.clip_eps, clip_high=self.clip_high,
                            ref_logprobs=part(self.ref, s, dt), beta=self.beta)
        return part(self.weights, s, dt) * terms


class Anchor:
    """ASFT's anchor: ``coef`` (lambda) times KL(pi_ref || pi_theta) over the vocabulary at each scored
    token, aggregated with the token's own weight. ``hidden`` [N, H]: the frozen reference's final hidden
    states at the scored positions (no gradient); ``weight`` [V, H]: its LM head."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, coef: float):
        self.hidden, self.weight, self.coef = hidden.detach(), weight.detach(), float(coef)


def part(t: torch.Tensor | None, index: Any, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """``t[index]`` (cast to ``dtype`` when given), or None for None."""
    return None if t is None else t[index].to(dtype or t.dtype)
