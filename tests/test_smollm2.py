"""A real pretrained model through every stage: SmolLM2-135M-Instruct (``smollm2:135m-instruct``).

The project's own tiny models have a 355-token vocabulary and a template the project wrote; this
checks what only a real model exercises: a 49,152-token tokenizer, the model's own ChatML template
and ``<|im_end|>`` stop token, answers in real model prose (rambling, cut off, unboxed), and vLLM
serving a real architecture from the folder ``gft train`` saved. The run is the documented one
(``stages/smollm2/run.yaml``: 8 GSM8K test problems from tests/fixtures, 2 training steps per method).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, gft, weights

from gftrepro import store

pytestmark = pytest.mark.slow
CONFIG = REPO / "stages" / "smollm2" / "run.yaml"
DATA = ["--dataset", "tests/fixtures/gsm8k-extract/gsm8k/test.jsonl", "--split", "test", "--question-field",
        "question", "--answer-field", "answer", "--solution-field", "answer", "--limit", "8", "--n", "2",
        "--max-new-tokens", "160", "--shard-size", "8"]


@pytest.fixture(scope="module")
def model_path() -> Path:
    from gftrepro.models import resolve_model

    return Path(resolve_model("smollm2:135m-instruct").path)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, model_path) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("smollm2") / "run"
    return run, gft("run", "--config", str(CONFIG), "--run", str(run), check=True).stdout


def manifest(run: Path, stage: str, **where) -> dict:
    for v in store.versions(run, stage):
        m = v.read_manifest() if v.is_complete() else None
        if m and all(m["summary"].get(k) == val for k, val in where.items()):
            return m | {"path": v.path}
    raise AssertionError(f"no complete {stage} {where}")


# How close a float32 result must come to its float64 reference. A fixed bound does not hold: the error of
# the long float32 sums (over the 49,152 logits) depends on the processor's BLAS and vector kernels (the
# LM-head gradient: relative error 7e-6 on an AVX-512 Xeon, 3.0e-5 on an AMD EPYC; 6.4e-5 on the Xeon with
# MKL and torch held to SSE4.2, MKL_ENABLE_INSTRUCTIONS=SSE4_2 ATEN_CPU_CAPABILITY=default). So the bound
# comes from the machine at hand: the plain float32 full-logit path (log_softmax of the whole [N, V]
# logits) does the same sums over the same data through the same kernels, and its own error measured
# here carries both the kernels and the sums' cancellation (d logp / d logits = onehot - softmax sums to
# zero over the vocabulary). The chunked path may go through other kernels than the plain one ([7, V]
# chunks instead of one [N, V] matmul): its error was 0.05-2.2 times the plain path's over the kernels
# tried (AVX-512, AVX2, SSE4.2; 1 and 2 threads), so it may be up to PLAIN_FACTOR times that, and never
# needs to be under EPS32 * sqrt(V): a float32 sum of n terms with independent rounding errors is off by
# about sqrt(n) * u relative (u = EPS32 / 2; Higham & Mary, "A new approach to probabilistic rounding
# error analysis", SIAM J. Sci. Comput. 2019), which is 2.6e-5 for V = 49,152. A wrong formula is off by
# far more: the test checks that the same rule rejects a gradient scaled by 1.001 or with one token's
# target swapped (relative errors 1e-3 and 1.6e-2, against bounds of at most 2.4e-4 on the kernels tried).
EPS32 = torch.finfo(torch.float32).eps
PLAIN_FACTOR = 4.0


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm()).item()


def float32_bound(ref: torch.Tensor, plain: torch.Tensor, length: int) -> float:
    """The relative error a float32 result may have against the float64 ``ref``, given the plain float32
    path's result ``plain`` on this machine and the longest reduction ``length`` (see above)."""
    return max(PLAIN_FACTOR * relative_error(plain, ref), EPS32 * math.sqrt(length))


def float32_accurate(ours: torch.Tensor, ref: torch.Tensor, plain: torch.Tensor, length: int) -> bool:
    return relative_error(ours, ref) <= float32_bound(ref, plain, length)


def check_float32(what: str, ours: torch.Tensor, ref: torch.Tensor, plain: torch.Tensor, length: int) -> None:
    assert float32_accurate(ours, ref, plain, length), (
        f"{what}: relative error {relative_error(ours, ref):.2e} against float64, bound "
        f"{float32_bound(ref, plain, length):.2e} (plain float32 path: {relative_error(plain, ref):.2e})")


def test_the_converted_model_is_a_plain_safetensors_folder_with_the_models_own_template(model_path):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_path)
    tok = AutoTokenizer.from_pretrained(model_path)
    assert config.vocab_size == 49152 and len(tok) == 49152 and not hasattr(config, "quantization_config")
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    assert (model_path / "model.safetensors").is_file()


def test_chunked_logprobs_equal_full_logits_on_the_real_model(model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gftrepro.logprobs import Policy, selective_logprobs

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12 * 7?"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt + "12 * 7 = 84, so the answer is \\boxed{84}.<|im_end|>", return_tensors="pt")["input_ids"]
    mask = torch.ones_like(ids)
    response = torch.zeros_like(ids)
    response[:, len(tok(prompt)["input_ids"]):] = 1
    sel = response[:, 1:].bool()
    head = model.get_output_embeddings().weight

    # the LM head on the model's real hidden states: values and both gradients, chunked vs full logits
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1][sel].detach()
    targets = ids[:, 1:][sel]
    vocab = head.shape[0]
    upstream = torch.arange(1.0, len(targets) + 1)  # a distinct gradient per token

    def head_pass(dtype: torch.dtype, chunk: int | None, tgt: torch.Tensor = targets) -> tuple[torch.Tensor, ...]:
        h, w = hidden.to(dtype).clone().requires_grad_(), head.detach().to(dtype).clone().requires_grad_()
        if chunk:
            lp, _ = selective_logprobs(h, w, tgt, chunk=chunk)
        else:  # full [N, V] logits
            lp = torch.log_softmax(h @ w.T, -1).gather(-1, tgt[:, None])[:, 0]
        (lp * upstream.to(dtype)).sum().backward()
        return lp.detach(), h.grad, w.grad

    ref = head_pass(torch.float64, None)  # the float64 reference
    plain = head_pass(torch.float32, None)  # the plain float32 path: sets the bound on this machine
    chunked = head_pass(torch.float32, 7)  # 7 does not divide the token count
    for what, ours, r, p in zip(("log p", "hidden grad", "head grad"), chunked, ref, plain, strict=True):
        check_float32(f"LM head {what}", ours, r, p, vocab)
    # the rule is strict enough to catch a wrong formula: one token's target swapped (the least-weighted
    # token), or the gradient 0.1% off
    swapped = targets.clone()
    swapped[0] = (swapped[0] + 1) % vocab
    wrong = head_pass(torch.float32, 7, swapped)
    for ours, r, p in zip(chunked[1:], ref[1:], plain[1:], strict=True):
        assert not float32_accurate(ours * 1.001, r, p, vocab)
    for ours, r, p in zip(wrong, ref, plain, strict=True):
        assert not float32_accurate(ours, r, p, vocab)

    # the whole model through Policy against the same model in float64 (full logits): log-probs, and the
    # gradient of every parameter as one vector; the bound comes from the same model in float32 with full
    # logits (measured: chunked 6e-6, plain float32 3e-5 on an AVX-512 Xeon; 7e-5 and 6e-5 with SSE4.2)
    def grads() -> torch.Tensor:
        out = torch.cat([p.grad.flatten().double() for p in model.parameters()])
        model.zero_grad()
        return out

    def full_logits() -> torch.Tensor:
        logits = model(input_ids=ids, attention_mask=mask).logits
        return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0][sel]

    lp, _ = Policy(model, chunk=7)(ids, mask, response)
    lp[response.bool()].sum().backward()
    ours = grads()
    fewer = response.clone()
    fewer[0, fewer[0].nonzero()[0]] = 0  # a gradient missing one token's term (the first response token)
    lp_fewer, _ = Policy(model, chunk=7)(ids, mask, fewer)
    lp_fewer[fewer.bool()].sum().backward()
    missing = grads()
    plain_lp = full_logits()
    plain_lp.sum().backward()
    plain_grad = grads()
    model.double()
    ref_lp = full_logits()
    ref_lp.sum().backward()
    ref_grad = grads()
    check_float32("model log p", lp[response.bool()], ref_lp.detach(), plain_lp.detach(), vocab)
    check_float32("model gradient", ours, ref_grad, plain_grad, vocab)
    assert not float32_accurate(ours * 1.001, ref_grad, plain_grad, vocab)
    assert not float32_accurate(missing, ref_grad, plain_grad, vocab)


def test_every_stage_handles_the_real_model(real_run, model_path):
    run, out = real_run
    for stage in store.STAGES:
        assert any(v.is_complete(hashes=True) for v in store.versions(run, stage)), stage

    # prompts: the model's own chat template, the recipe's system prompt, the generation header
    self_version = manifest(run, "sample-self")
    rows = pq.read_table(self_version["path"] / self_version["shards"][0]["name"]).to_pylist()
    for r in rows:
        assert r["prompt"].startswith("<|im_start|>system\nPlease reason step by step")
        assert r["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert "<|im_end|>" not in r["completion"]  # the stop token ends a sample and is not in its text
        assert r["finish_reason"] != "length" or r["completion_tokens"] == 160

    # verify: every model-written answer counted by how it was found; no status outside the vocabulary
    verify = manifest(run, "verify")["summary"]
    written = sum(sum(c.values()) for s, c in verify["by_source"].items() if s != "expert")
    assert written == 8 * 1 + 8 * 2
    assert sum(sum(c.values()) for s, c in verify["found_by"].items() if s != "expert") == written
    assert verify["by_source"]["expert"]["correct"] == 8  # GSM8K's own solutions, gold after '####'

    # build-groups: stopped members end with the model's EOS text, cut ones do not
    groups = manifest(run, "build-groups")
    for r in pq.read_table(groups["path"] / groups["shards"][0]["name"]).to_pylist():
        if r["source"] == "expert":
            assert r["completion"].endswith("<|im_end|>")

    # train: a few steps of sft and gft change the weights and keep the loss finite
    base = weights(model_path)
    for method in ("sft", "gft"):
        m = manifest(run, "train", method=method)
        lines = [json.loads(x) for x in (m["path"] / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 2 and all(torch.isfinite(torch.tensor(x["loss"])) for x in lines)
        trained = weights(m["path"] / "model")
        assert any(not trained[k].equal(base[k]) for k in base if k in trained)

    # eval: pass@k on the extract, and how the answers were found
    evals = [v.read_manifest()["metrics"] for v in store.versions(run, "eval") if v.is_complete()]
    assert len(evals) == 3 and all("gsm8k" in e["benchmarks"] and "found_by" in e for e in evals)
    assert "answers:" in out


@pytest.mark.vllm
def test_both_backends_sample_the_trained_model_from_the_same_prompts(real_run, tmp_path):
    run, _ = real_run
    sft = manifest(run, "train", method="sft")["path"] / "model"
    throughput = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / backend
        extra = ["--enforce-eager"] if backend == "vllm" else []
        gft("sample-self", "--model", str(sft), "--backend", backend, *extra, *DATA, "--run", str(out), check=True)
        m = manifest(out, "sample-self")
        rows = pq.read_table(m["path"] / m["shards"][0]["name"]).to_pylist()
        throughput[backend] = (m["summary"]["tokens"] / m["summary"]["generation_seconds"], rows)
    hf, vllm = throughput["hf"][1], throughput["vllm"][1]
    assert [r["prompt"] for r in hf] == [r["prompt"] for r in vllm] and len(hf) == 16
    for rows in (hf, vllm):
        assert all("<|im_end|>" not in r["completion"] for r in rows)
        assert any(r["finish_reason"] == "stop" for r in rows) or all(r["completion_tokens"] == 160 for r in rows)
    print(f"\nSmolLM2-135M sampling, 16 samples: hf {throughput['hf'][0]:.0f} tok/s, "
          f"vllm {throughput['vllm'][0]:.0f} tok/s", file=sys.stderr)
