"""Generation backends behind one small protocol: ``hf`` (transformers) and ``vllm``.

A backend receives one :class:`Request` per sample (a prompt repeated n times with n seeds) and
returns one :class:`Sample` per request, in order. Per-sample seeds make a sample independent of
which other samples share its batch (exactly so for vLLM's per-request seeds, up to padding
numerics for hf), so a resumed stage reproduces an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gftrepro.errors import GftError

BACKENDS = ("hf", "vllm")


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


class Backend(Protocol):
    context_length: int

    def generate(self, requests: list[Request], params: SamplingParams, progress: Progress) -> list[Sample]: ...

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
