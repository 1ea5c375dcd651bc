"""The generation backends' protocol: requests, samples, sampling parameters, per-sample seeds.

A backend receives one :class:`Request` per sample (a prompt repeated n times with n seeds) and
returns one :class:`Sample` per request, in order. Per-sample seeds make a sample independent of
which other samples share its batch (exactly so for vLLM's per-request seeds, up to padding
numerics for hf), so a resumed stage reproduces an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from gftrepro.config import opt, require
from gftrepro.errors import GftError
from gftrepro.prompts import QWEN_MATH_COT

BACKENDS = ("hf", "vllm")
MAX_SAMPLES = 100_000  # samples per problem: the paper's largest is 128; a typo of 10^11 would hang building requests


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]
    seed: int


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    max_new_tokens: int
    stop_token_ids: list[int]
    logprobs: bool


@dataclass(frozen=True)
class Sample:
    token_ids: list[int]  # generated ids, stop token included
    text: str  # decoded without the stop token and without special tokens
    finish_reason: str  # "stop" | "length"
    logprobs: list[float] | None  # one per token_ids entry, raw distribution


Progress = Callable[[int, int], None]  # (samples finished, tokens generated) since last call


Weights = Iterable[tuple[str, Any]]  # (transformers parameter name, tensor)


class Backend(Protocol):
    context_length: int

    def generate(self, requests: list[Request], params: SamplingParams, progress: Progress) -> list[Sample]: ...

    def load_weights(self, weights: Weights) -> None:
        """Replace the served model's weights (names as in the transformers checkpoint); on-policy
        training calls it after every optimizer step."""
        ...

    def close(self) -> None: ...


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise GftError(f"unknown backend '{name}' (choose from: {', '.join(BACKENDS)})")


def cap_new_tokens(prompt_len: int, max_new_tokens: int, context_length: int) -> int:
    """New tokens that fit: prompt + new must stay within the model's context."""
    return max(0, min(max_new_tokens, context_length - prompt_len))


def finish(token_ids: list[int], stop_ids: set[int], cap: int) -> tuple[list[int], str]:
    """Cut generated ids after the first stop token; say why generation ended."""
    for i, t in enumerate(token_ids):
        if t in stop_ids:
            return token_ids[: i + 1], "stop"
    return token_ids[:cap], "length"


def decode(tokenizer, token_ids: list[int], stop_ids: set[int]) -> str:
    body = token_ids[:-1] if token_ids and token_ids[-1] in stop_ids else token_ids
    return tokenizer.decode(body, skip_special_tokens=True)


@dataclass(frozen=True)
class GenerationOptions:
    """Generation settings shared by the stages that sample (sample-teacher, sample-self, eval)."""

    temperature: float = opt(1.0, "sampling temperature (0 = greedy)")
    top_p: float = opt(1.0, "nucleus sampling mass")
    max_new_tokens: int = opt(128, "cap on generated tokens (also capped by the model's context)")
    system_prompt: str = opt(QWEN_MATH_COT, "system prompt ('' for none)")
    prompt_template: str = opt("auto", "auto (chat template if the tokenizer has one), chat, or plain")
    stop_tokens: list[str] = opt(["<|im_end|>", "<|endoftext|>"], "extra stop tokens, used when in the vocabulary")
    seed: int = opt(0, "base seed; each sample's seed derives from it, the prompt_id and sample_idx")
    backend: str = opt("hf", "generation backend: hf or vllm")
    batch_size: int = opt(64, "hf: sequences per generate call")
    device: str = opt("auto", "hf: auto, cpu, cuda, cuda:1, ...", versioned=False)
    dtype: str = opt("auto", "auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    tensor_parallel_size: int = opt(1, "vllm: GPUs per engine", versioned=False)
    gpu_memory_utilization: float = opt(0.9, "vllm: share of GPU memory for weights and KV cache", versioned=False)
    max_model_len: int = opt(0, "vllm: context length (0 = the model's)")
    enforce_eager: bool = opt(False, "vllm: skip CUDA-graph / torch.compile capture (faster start)", versioned=False)

    def validate_samples(self, n: int) -> None:
        """``n`` samples per problem: at least 1, and at most ``MAX_SAMPLES`` (each is a request held in memory)."""
        require([(n >= 1, f"n must be at least 1, got {n}"),
                 (n <= MAX_SAMPLES, f"n (samples per problem) must be in [1, {MAX_SAMPLES:,}], got {n:,}")])

    def validate_generation(self) -> None:
        check_backend(self.backend)
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be at least 1, got {self.max_new_tokens}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.prompt_template in ("auto", "chat", "plain"),
             f"prompt_template must be auto, chat or plain, got '{self.prompt_template}'"),
        ]
        require(checks)


def hashed_seed(*parts: object) -> int:
    """A seed from a hash of ``parts`` joined by ':' (< 2**32: valid for torch and vLLM)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def sample_seed(base: int, prompt_id: str, sample_idx: int) -> int:
    """The seed of one sample: a hash of the stage's base seed, the prompt and the sample index."""
    return hashed_seed(base, prompt_id, sample_idx)


def rollout_seed(seed: int, step: int, pid: str, sample_idx: int) -> int:
    """The seed of one on-policy sample: also keyed by the optimizer step."""
    return hashed_seed(seed, step, pid, sample_idx)
