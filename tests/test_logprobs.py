"""The chunked log-prob path against plain full-logits fp32 computation."""

import pytest
import torch

from gftrepro.logprobs import Policy, fused_token_loss, selective_logprobs
from gftrepro.losses import AGGREGATIONS, METHODS, TokenObjective, token_loss

# every method whose loss reads only its own token (pear's weights read the sequence: tests/test_baselines.py)
OWN_TOKEN_METHODS = [m for m in METHODS if m != "pear"]


def test_selective_logprobs_values_and_gradients_equal_full_logits():
    g = torch.Generator().manual_seed(0)
    n, h, v = 37, 16, 101
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g)

    lp, ent = selective_logprobs(hidden, weight, targets, chunk=8, with_entropy=True)
    (lp * upstream).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()

    hidden.grad = weight.grad = None
    full = torch.log_softmax(hidden @ weight.T, -1)  # [n, v]: the naive path
    ref = full.gather(1, targets[:, None]).squeeze(1)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(lp, ref)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)
    torch.testing.assert_close(ent, -(full.exp() * full).sum(-1).detach())


def test_policy_scores_response_tokens_like_the_model_logits(student_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student_path)
    ids = torch.tensor([[258, 70, 71, 72, 73, 74, 256, 257], [258, 80, 81, 82, 83, 84, 85, 256]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1] * 8])
    response = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]])
    lp, _ = Policy(model, chunk=3)(ids, attention, response)
    full = torch.log_softmax(model(input_ids=ids, attention_mask=attention).logits.float(), -1)
    ref = torch.zeros_like(lp)
    ref[:, 1:] = full[:, :-1].gather(2, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp, torch.where(response.bool(), ref, 0.0), atol=1e-5, rtol=1e-5)


def test_bf16_activations_with_fp32_master_weights_track_the_fp32_reference():
    """The mixed-precision case on GPU: hidden states in bf16, the LM head's master weight in fp32."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(20, 32, generator=g)
    weight = torch.randn(64, 32, generator=g, requires_grad=True)
    targets = torch.randint(0, 64, (20,), generator=g)
    h16 = hidden.bfloat16().requires_grad_(True)
    lp, _ = selective_logprobs(h16, weight, targets, chunk=6)
    lp.sum().backward()
    assert h16.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32
    w_grad = weight.grad.clone()
    weight.grad = None
    ref = torch.log_softmax(hidden.bfloat16().float() @ weight.bfloat16().float().T, -1)
    ref = ref.gather(1, targets[:, None]).squeeze(1)
    ref.sum().backward()
    torch.testing.assert_close(lp, ref, atol=0.1, rtol=0.02)
    torch.testing.assert_close(w_grad, weight.grad, atol=0.1, rtol=0.05)


# ---------------------------------------------------------------- the fused loss pass

def fused_case(seed=0, dtype=torch.float64, b=3, t=9, h=12, v=50):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, t, generator=g) > 0.3).long()
    mask[:, 0] = 1
    n = int(mask.sum())
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g, dtype=torch.float64) * 0.7).to(dtype).requires_grad_(True)
    targets = torch.randint(0, v, (n,), generator=g)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    old = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.5  # offsets from the current log p
    ref = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    return hidden, weight, targets, mask, adv, old, ref


def full_logit_loss(hidden, weight, targets, mask, adv, **spec):
    """The plain path: full float64 logits, log_softmax, gather, scattered to [B, T], then token_loss."""
    lp = torch.log_softmax(hidden.double() @ weight.double().T, -1).gather(1, targets[:, None]).squeeze(1)
    logprobs = torch.zeros(mask.shape, dtype=torch.float64).masked_scatter(mask.bool(), lp)
    return token_loss(logprobs, mask, adv, **spec), logprobs


@pytest.mark.parametrize("method", OWN_TOKEN_METHODS)
@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("tau", [0.0, 0.3, 0.7, 1.0])
def test_fused_loss_equals_full_logits_token_loss_in_float64(method, agg, tau):
    hidden, weight, targets, mask, adv, _, _ = fused_case()
    spec = dict(method=method, tau=tau, agg=agg)
    ref_loss, _ = full_logit_loss(hidden, weight, targets, mask, adv, **spec)
    ref_loss.backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    objective = TokenObjective.build(mask, adv, **spec).select(mask.bool())
    loss, logp, ent = fused_token_loss(hidden, weight, targets, objective, chunk=4)  # 4 does not divide N
    (loss * 2.5).backward()  # an upstream factor (DDP's process count) scales both gradients
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(hidden.grad, 2.5 * expected[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(weight.grad, 2.5 * expected[1], rtol=1e-10, atol=1e-13)
    full = torch.log_softmax(hidden.detach() @ weight.detach().T, -1)
    torch.testing.assert_close(logp, full.gather(1, targets[:, None]).squeeze(1))
    torch.testing.assert_close(ent, -(full.exp() * full).sum(-1))


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_fused_grpo_clipped_ratio_and_kl_term_equal_token_loss(agg):
    """Later PPO epochs (old log-probs away from the current ones: the clip is active) and beta * k3."""
    hidden, weight, targets, mask, adv, old, ref = fused_case(seed=2)
    with torch.no_grad():
        _, now = full_logit_loss(hidden, weight, targets, mask, adv, method="sft")
    spec = dict(method="grpo", agg=agg, old_logprobs=now + old, ref_logprobs=now + ref, beta=0.04, clip_eps=0.2)
    ref_loss, _ = full_logit_loss(hidden, weight, targets, mask, adv, **spec)
    ref_loss.backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss, _, _ = fused_token_loss(hidden, weight, targets, TokenObjective.build(mask, adv, **spec).select(mask.bool()),
                                  chunk=5)
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(hidden.grad, expected[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(weight.grad, expected[1], rtol=1e-10, atol=1e-13)


def test_fused_bf16_activations_with_fp32_master_weights_track_the_float64_reference():
    hidden, weight, targets, mask, adv, _, _ = fused_case(seed=1, h=32, v=64)
    spec = dict(method="gft", tau=0.7)
    ref_loss, _ = full_logit_loss(hidden.detach().bfloat16().double().requires_grad_(True),
                                  weight.detach().bfloat16().double().requires_grad_(True), targets, mask, adv, **spec)
    w32 = weight.detach().float().requires_grad_(True)
    h16 = hidden.detach().bfloat16().requires_grad_(True)
    loss, _, _ = fused_token_loss(h16, w32, targets, TokenObjective.build(mask, adv, **spec).select(mask.bool()),
                                  chunk=6)
    loss.backward()
    assert h16.grad.dtype == torch.bfloat16 and w32.grad.dtype == torch.float32 and loss.dtype == torch.float32
    ref_h = hidden.detach().bfloat16().double().requires_grad_(True)
    ref_w = weight.detach().bfloat16().double().requires_grad_(True)
    full_logit_loss(ref_h, ref_w, targets, mask, adv, **spec)[0].backward()
    torch.testing.assert_close(loss.double(), ref_loss, atol=0.02, rtol=0.02)
    torch.testing.assert_close(w32.grad.double(), ref_w.grad, atol=2e-3, rtol=0.05)
    torch.testing.assert_close(h16.grad.double(), ref_h.grad, atol=2e-3, rtol=0.05)


def test_policy_with_an_objective_gives_the_loss_of_its_log_probs(student_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student_path)
    ids = torch.tensor([[258, 70, 71, 72, 73, 74, 256, 257], [258, 80, 81, 82, 83, 84, 85, 256]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1] * 8])
    response = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1]])
    adv = torch.tensor([0.8, -1.1])
    policy = Policy(model, chunk=3)
    lp, ent = policy(ids, attention, response, with_entropy=True)
    token_loss(lp, response, adv, method="gft", tau=0.7).backward()
    expected = {n: p.grad.clone() for n, p in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)
    loss, lp2, ent2 = policy(ids, attention, response, objective=TokenObjective.build(response, adv, method="gft"))
    loss.backward()
    torch.testing.assert_close(lp2, lp.detach())
    torch.testing.assert_close(ent2, ent)
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("v,h", [(4096, 64), (1024, 256)])  # LM-head shapes: vocab >> hidden, and hidden > 2 x chunk
def test_fused_pass_peak_memory_is_no_higher_than_the_chunked_path(dtype, v, h):
    """Tensor bytes alive at once (torch's MemTracker counts every allocation, so this is exact and
    deterministic): forward + backward of the fused loss vs the chunked log-probs + ``token_loss``."""
    from torch.distributed._tools.mem_tracker import MemTracker

    n, chunk = 300, 64
    mask, adv = torch.ones(1, n, dtype=torch.long), torch.ones(1)

    def peak(fused: bool) -> int:
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_(True)
        weight = torch.randn(v, h, generator=g, requires_grad=True)  # fp32 master weights, as training
        targets = torch.randint(0, v, (n,), generator=g)
        tracker = MemTracker()
        with tracker:
            if fused:
                objective = TokenObjective.build(mask, adv, method="gft").select(mask.bool())
                loss = fused_token_loss(hidden, weight, targets, objective, chunk)[0]
            else:
                lp, _ = selective_logprobs(hidden, weight, targets, chunk, with_entropy=True)
                loss = token_loss(lp[None], mask, adv, method="gft")
            loss.backward()
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]

    fused, chunked = peak(True), peak(False)
    assert fused <= chunked, (fused, chunked)
    assert fused >= v * h * 4  # the count is real: at least the fp32 weight gradient
