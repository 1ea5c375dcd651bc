"""Our GRPO loss against TRL's own ``GRPOTrainer._compute_loss`` on one hand-built batch.

TRL (pinned in the test extra) computes the loss inside its trainer; here its method runs on a bare
instance whose model call returns the batch's log-probs, so both implementations see exactly the
same log-probs, old log-probs, reference log-probs, advantages and masks.
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from gftrepro.losses import token_loss

trl = pytest.importorskip("trl")

B, T = 6, 9
# TRL aggregation -> ours: "grpo" averages each sequence's token mean; "dapo" and "bnpo" divide by the
# batch's token count (one process, no accumulation)
MATCHING = {"grpo": "seq-mean-token-mean", "dapo": "token-mean", "bnpo": "token-mean"}


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g, dtype=torch.float32) * 4
    old = lp + 0.4 * torch.randn(B, T, generator=g)  # many ratios outside 1 +- eps
    ref = lp + 0.3 * torch.randn(B, T, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.25).float()
    mask[:, 0] = 1
    adv = torch.randn(B, generator=g)
    return lp, old, ref, mask, adv


def trl_loss(lp: torch.Tensor, old, ref, mask, adv, loss_type: str, eps: float, beta: float,
             eps_high: float | None = None) -> torch.Tensor:
    from trl import GRPOTrainer

    t = GRPOTrainer.__new__(GRPOTrainer)
    attrs = dict(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        loss_type=loss_type, epsilon_low=eps, epsilon_high=eps if eps_high is None else eps_high, use_vllm=False,
        vllm_importance_sampling_correction=False, current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, max_completion_length=T,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        accelerator=SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x),
        _metrics=defaultdict(lambda: defaultdict(list)),
    )
    for k, v in attrs.items():
        object.__setattr__(t, k, v)
    object.__setattr__(t, "model", SimpleNamespace(training=True))
    object.__setattr__(t, "_get_per_token_logps_and_entropies", lambda *a, **k: (lp, torch.zeros_like(lp), None))
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    return GRPOTrainer._compute_loss(t, None, inputs)


@pytest.mark.parametrize("loss_type", sorted(MATCHING))
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_and_gradient_equal_trl(loss_type, beta):
    lp0, old, ref, mask, adv = batch(seed=3)
    ours_lp, theirs_lp = lp0.clone().requires_grad_(True), lp0.clone().requires_grad_(True)
    ours = token_loss(ours_lp, mask, adv, method="grpo", agg=MATCHING[loss_type], old_logprobs=old, clip_eps=0.2,
                      ref_logprobs=ref, beta=beta)
    theirs = trl_loss(theirs_lp, old, ref, mask, adv, loss_type, 0.2, beta)
    assert abs(float(ours) - float(theirs)) <= 1e-6
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, atol=1e-6, rtol=0)


def test_one_update_per_batch_matches_trl_without_old_logprobs():
    """TRL's on-policy path (old = sg(log p)) and ours with no old log-probs: the same gradient."""
    lp0, _, ref, mask, adv = batch(seed=4)
    ours_lp, theirs_lp = lp0.clone().requires_grad_(True), lp0.clone().requires_grad_(True)
    token_loss(ours_lp, mask, adv, method="grpo", agg="token-mean").backward()
    trl_loss(theirs_lp, theirs_lp.detach(), ref, mask, adv, "dapo", 0.2, 0.0).backward()
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, atol=1e-7, rtol=0)


@pytest.mark.parametrize("loss_type", sorted(MATCHING))
def test_psft_equals_trls_clipped_loss_with_unit_advantages(loss_type):
    """PSFT (Zhu et al. 2025b): the clipped surrogate with A = 1 and the authors' asymmetric clip (0.2 / 0.28)."""
    lp0, old, ref, mask, _ = batch(seed=5)
    ours_lp, theirs_lp = lp0.clone().requires_grad_(True), lp0.clone().requires_grad_(True)
    ours = token_loss(ours_lp, mask, None, method="psft", agg=MATCHING[loss_type], old_logprobs=old, clip_eps=0.2,
                      clip_high=0.28)
    theirs = trl_loss(theirs_lp, old, ref, mask, torch.ones(B), loss_type, 0.2, 0.0, eps_high=0.28)
    assert abs(float(ours) - float(theirs)) <= 1e-6
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_lp.grad, theirs_lp.grad, atol=1e-6, rtol=0)
