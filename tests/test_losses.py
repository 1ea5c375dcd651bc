"""token_loss against a float64 reference written here, its invariants, and accumulation invariance."""

import numpy as np
import pytest
import torch

from gftrepro.losses import AGGREGATIONS, METHODS, Pear, token_loss

# every method whose loss reads only its own token (pear's weights read the sequence: tests/test_baselines.py)
OWN_TOKEN_METHODS = [m for m in METHODS if m != "pear"]

B, T = 4, 7


def make(seed=0, low=-6.0):
    g = torch.Generator().manual_seed(seed)
    logprobs = (torch.rand(B, T, generator=g, dtype=torch.float64) * low).requires_grad_(True)  # p in (e^-6, 1)
    mask = (torch.rand(B, T, generator=g) > 0.3).double()
    mask[:, 0] = 1
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return logprobs, mask, adv


def reference_coef(lp: np.ndarray, adv: np.ndarray, method: str, tau: float) -> np.ndarray:
    """The coefficient on -log p, straight from the paper's table (numpy, float64). GRPO with one update
    per batch (old = sg(log p), ratio 1) has gradient -A grad log p: coefficient A, as gft-no-dcr; psft
    likewise with A = 1. asft's token term is DFT's (its KL anchor needs the logits: tests/test_baselines.py)."""
    p = np.exp(lp)
    c = np.where(p < tau, p, 1.0)
    a = adv[:, None]
    return {"sft": np.ones_like(p), "sft-mix": np.ones_like(p), "dft": p, "gft": a * c,
            "gft-no-dcr": a * np.ones_like(p), "gft-no-gal": c, "grpo": a * np.ones_like(p), "gft-no-mix": a * c,
            "asft": p, "psft": np.ones_like(p)}[method]


def reference_grad(lp, mask, adv, method, tau, agg):
    """d loss / d log p: coefficients are stop-gradient, so it is -coef times the aggregation weight."""
    coef = reference_coef(lp, adv, method, tau)
    if agg == "token-mean":
        weight = mask / mask.sum()
    elif agg == "seq-mean-token-sum":
        weight = mask / mask.shape[0]
    else:
        weight = mask / mask.sum(-1, keepdims=True) / mask.shape[0]
    return -coef * weight


@pytest.mark.parametrize("method", OWN_TOKEN_METHODS)
@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("tau", [0.0, 0.3, 0.7, 1.0])
def test_gradient_matches_the_float64_reference(method, agg, tau):
    lp, mask, adv = make()
    token_loss(lp, mask, adv, method=method, tau=tau, agg=agg).backward()
    expected = reference_grad(lp.detach().numpy(), mask.numpy(), adv.numpy(), method, tau, agg)
    np.testing.assert_allclose(lp.grad.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_float32_gradient_close_to_the_float64_one():
    lp, mask, adv = make()
    lp32 = lp.detach().float().requires_grad_(True)
    token_loss(lp32, mask.float(), adv.float(), method="gft", tau=0.7).backward()
    expected = reference_grad(lp.detach().numpy(), mask.numpy(), adv.numpy(), "gft", 0.7, "token-mean")
    np.testing.assert_allclose(lp32.grad.double().numpy(), expected, rtol=1e-5, atol=1e-8)


def grad_of(method, tau, adv_value=None, agg="token-mean"):
    lp, mask, adv = make(seed=3)
    if adv_value is not None:
        adv = torch.full_like(adv, adv_value)
    token_loss(lp, mask, adv, method=method, tau=tau, agg=agg).backward()
    return lp.grad


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gft_with_unit_advantage_reduces_to_sft_and_dft(agg):
    torch.testing.assert_close(grad_of("gft", 0.0, 1.0, agg), grad_of("sft", 0.0, agg=agg))  # tau 0: never rectified
    torch.testing.assert_close(grad_of("gft", 1.0, 1.0, agg), grad_of("dft", 0.5, agg=agg))  # tau 1: always sg(p)
    torch.testing.assert_close(grad_of("gft-no-dcr", 0.5, 1.0, agg), grad_of("sft", 0.5, agg=agg))


def test_gradient_wrt_logits_is_A_grad_p_below_tau_and_A_grad_log_p_above():
    """Through a real softmax: for p < tau the update is A * grad p (bounded), else A * grad log p."""
    torch.manual_seed(0)
    for logit_gap, below in ((-4.0, True), (4.0, False)):
        logits = torch.zeros(1, 5, dtype=torch.float64)
        logits[0, 2] = logit_gap
        logits.requires_grad_(True)
        logp = torch.log_softmax(logits, -1)[:, 2:3]  # [B=1, T=1]
        a = torch.tensor([1.7], dtype=torch.float64)
        token_loss(logp, torch.ones(1, 1), a, method="gft", tau=0.7).backward()
        probe = logits.detach().clone().requires_grad_(True)
        lp_probe = torch.log_softmax(probe, -1)[0, 2]
        (lp_probe.exp() if below else lp_probe).backward()
        assert (lp_probe.exp() < 0.7) == below
        torch.testing.assert_close(logits.grad, -1.7 * probe.grad)


def test_extreme_log_probs_give_no_nan_or_inf():
    lp = torch.full((2, 3), -1e4, dtype=torch.float32, requires_grad=True)
    mask = torch.ones(2, 3)
    for method in METHODS:
        for agg in AGGREGATIONS:
            lp.grad = None
            pear = Pear(torch.full((2, 3), -1.0), mask.bool()) if method == "pear" else None  # log-ratio -1e4
            loss = token_loss(lp, mask, torch.tensor([1.0, -1.0]), method=method, tau=0.7, agg=agg, pear=pear)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(lp.grad).all(), (method, agg)


def test_masked_positions_are_ignored_even_when_infinite():
    lp, mask, adv = make()
    lp2 = torch.where(mask.bool(), lp.detach(), torch.tensor(float("-inf"), dtype=torch.float64)).requires_grad_(True)
    a = token_loss(lp, mask, adv, method="gft")
    b = token_loss(lp2, mask, adv, method="gft")
    assert torch.isfinite(b) and torch.allclose(a, b)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_micro_batches_with_global_denominators_equal_the_whole_batch(agg):
    lp, mask, adv = make(seed=5)
    token_loss(lp, mask, adv, method="gft", agg=agg).backward()
    whole = lp.grad.clone()
    lp.grad = None
    n_tok, n_seq = mask.sum(), mask.shape[0]
    for i in range(B):  # B micro-batches of one sequence
        token_loss(lp[i : i + 1], mask[i : i + 1], adv[i : i + 1], method="gft", agg=agg,
                   num_tokens=n_tok, num_seqs=n_seq).backward()
    torch.testing.assert_close(lp.grad, whole)


def test_bad_arguments():
    lp, mask, adv = make()
    with pytest.raises(ValueError, match="unknown method"):
        token_loss(lp, mask, adv, method="ppo")
    with pytest.raises(ValueError, match="tau must be in"):
        token_loss(lp, mask, adv, method="gft", tau=1.5)
    with pytest.raises(ValueError, match="needs advantages"):
        token_loss(lp, mask, None, method="gft")


def test_grpo_with_one_update_per_batch_equals_minus_A_log_p():
    """Ratio 1 (old = sg(log p)): the clipped surrogate's gradient is gft-no-dcr's, for every aggregation."""
    for agg in AGGREGATIONS:
        torch.testing.assert_close(grad_of("grpo", 0.7, agg=agg), grad_of("gft-no-dcr", 0.7, agg=agg))


def reference_grpo(lp, old, adv, mask, eps, beta=0.0, ref=None):
    """Clipped surrogate + beta * k3, token-mean (numpy float64): loss value."""
    r = np.exp(lp - old)
    a = adv[:, None]
    per = -np.minimum(r * a, np.clip(r, 1 - eps, 1 + eps) * a)
    if beta:
        per = per + beta * (np.exp(ref - lp) - (ref - lp) - 1)
    return (per * mask).sum() / mask.sum()


def test_grpo_clipped_objective_and_kl_term_against_a_float64_reference():
    lp, mask, adv = make(seed=11)
    g = torch.Generator().manual_seed(12)
    old = lp.detach() + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)  # ratios well outside 1 +- 0.2
    ref = lp.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    loss = token_loss(lp, mask, adv, method="grpo", old_logprobs=old, clip_eps=0.2, ref_logprobs=ref, beta=0.04)
    expected = reference_grpo(lp.detach().numpy(), old.numpy(), adv.numpy(), mask.numpy(), 0.2, 0.04, ref.numpy())
    assert abs(float(loss) - expected) < 1e-12
    loss.backward()
    # where the clipped side is taken the ratio gets no gradient: only the KL term's remains there
    r = (lp.detach() - old).exp()
    held = ((r > 1.2) & (adv[:, None] > 0)) | ((r < 0.8) & (adv[:, None] < 0))
    kl_grad = 0.04 * (1 - (ref - lp.detach()).exp()) * mask / mask.sum()
    torch.testing.assert_close(lp.grad[held & mask.bool()], kl_grad[held & mask.bool()])
    assert held.any() and (~held & mask.bool()).any()


def test_kl_term_needs_reference_logprobs():
    lp, mask, adv = make()
    with pytest.raises(ValueError, match="ref_logprobs"):
        token_loss(lp, mask, adv, method="grpo", beta=0.1)
