"""The chunked log-prob path against plain full-logits fp32 computation."""

import torch

from gftrepro.logprobs import Policy, selective_logprobs


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
