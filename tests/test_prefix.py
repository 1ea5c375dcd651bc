"""A micro-batch's shared prompts encoded once (gftrepro.prefix) against the plain forward: the same
log-probs, entropies, loss and gradient; batches it cannot share take the plain pass."""

import pytest
import torch

from gftrepro.engine.batches import Example, collate, grouped_by_length
from gftrepro.logprobs import Policy, token_kl
from gftrepro.losses import TokenObjective
from gftrepro.prefix import full_attention, shared_prompts


def group_batch(sizes: list[int], seed: int = 0) -> dict:
    """Groups of random prompts (lengths 5-7) with ``sizes[g]`` random responses (lengths 1-9) each."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for group, size in enumerate(sizes):
        prompt = torch.randint(3, 250, (5 + group % 3,), generator=g).tolist()
        for _ in range(size):
            response = torch.randint(3, 250, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist()
            examples.append(Example(prompt + response, len(prompt), float(torch.randn(1, generator=g)), "self", group))
    return collate(grouped_by_length(examples), 0, torch.device("cpu"))


def forward(model, batch: dict, share: bool) -> tuple[torch.Tensor, ...]:
    model.zero_grad()
    objective = TokenObjective.build(batch["response_mask"], batch["advantages"], method="gft", tau=0.7,
                                     agg="token-mean", num_tokens=int(batch["response_mask"].sum()), num_seqs=8)
    loss, logprobs, entropy = Policy(model, 512, share)(batch["input_ids"], batch["attention_mask"],
                                                        batch["response_mask"], with_entropy=True, objective=objective)
    loss.backward()
    return loss.detach(), logprobs, entropy, torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.fixture(scope="module")
def student(student_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(student_path)


@pytest.mark.parametrize("sizes", [[4, 4], [3, 1, 5], [2, 2, 2, 2]])
def test_shared_prompts_give_the_plain_forwards_scores_and_gradient(student, sizes):
    batch = group_batch(sizes)
    assert shared_prompts(batch["input_ids"], batch["attention_mask"], batch["response_mask"]) is not None
    plain, shared = forward(student, batch, False), forward(student, batch, True)
    for a, b in zip(plain[:3], shared[:3], strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    assert torch.isfinite(shared[3]).all() and shared[3].abs().max() > 0
    torch.testing.assert_close(plain[3], shared[3], atol=1e-7, rtol=1e-4)


def test_the_kl_probe_is_the_same_with_shared_prompts(student, student_path):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(student_path)
    with torch.no_grad():
        ref.model.norm.weight.mul_(1.5)  # a reference that differs
    batch = group_batch([3, 3])
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"], 512)
    plain, shared = token_kl(student, ref, *args, False), token_kl(student, ref, *args, True)
    assert plain[1] == shared[1] and plain[0] > 0
    assert shared[0] == pytest.approx(plain[0], rel=1e-4)


def test_batches_that_cannot_share_take_the_plain_pass():
    batch = group_batch([1, 1, 1])  # no prompt repeats
    assert shared_prompts(batch["input_ids"], batch["attention_mask"], batch["response_mask"]) is None
    batch = group_batch([2, 2])
    left = {k: v.flip(1) if isinstance(v, torch.Tensor) and v.dim() == 2 else v for k, v in batch.items()}
    assert shared_prompts(left["input_ids"], left["attention_mask"], left["response_mask"]) is None  # left-padded
    no_prompt = batch["response_mask"].clone()
    no_prompt[0, : int(batch["attention_mask"][0].sum())] = 1  # a row scored from its first token
    assert shared_prompts(batch["input_ids"], batch["attention_mask"], no_prompt) is None


def test_a_groups_rows_sit_side_by_side_groups_by_their_longest_row():
    rows = [Example([1] * n, 1, 0.0, "self", g) for g, n in [(0, 9), (1, 3), (0, 2), (1, 4), (2, 5)]]
    order = [(e.group, len(e.ids)) for e in grouped_by_length(rows)]
    assert order == [(1, 3), (1, 4), (2, 5), (0, 2), (0, 9)]


def test_sliding_window_models_do_not_share(student):
    from transformers import AutoConfig, AutoModelForCausalLM

    assert full_attention(student)
    config = AutoConfig.for_model("mistral", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, sliding_window=4)
    assert not full_attention(AutoModelForCausalLM.from_config(config))


def test_the_adapters_off_reference_shares_prompts_and_scores_as_the_base(student_path):
    """LoRA's reference (gftrepro.lora.AdaptersOff) goes through the shared-prompt pass as a plain model does
    (CI on the study's commits: it had no ``config``), and scores as the base model, adapters or not."""
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from gftrepro import lora
    from gftrepro.engine.config import TrainConfig

    base = AutoModelForCausalLM.from_pretrained(student_path)
    peft_model = lora.wrap(AutoModelForCausalLM.from_pretrained(student_path), TrainConfig(lora_rank=4, lora_alpha=8.0))
    with torch.no_grad():  # adapters that change the model (PEFT starts B at zero)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ref = lora.AdaptersOff(peft_model)
    assert full_attention(ref)
    batch = group_batch([3, 3])
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    with torch.no_grad():
        expected = Policy(base, 512, False)(*args)[0]
        for share in (False, True):
            torch.testing.assert_close(Policy(ref, 512, share)(*args)[0], expected, atol=2e-5, rtol=1e-5)
        assert (Policy(peft_model, 512, True)(*args)[0] - expected).abs().max() > 1e-3
