"""Generation backends behind one small protocol (``gftrepro/backends/base.py``): ``hf`` (transformers,
``hf.py``) and ``vllm`` (``vllm.py``). ``make_backend`` opens the one a stage's options name.

A backend receives one :class:`Request` per sample (a prompt repeated n times with n seeds) and
returns one :class:`Sample` per request, in order. Per-sample seeds make a sample independent of
which other samples share its batch (exactly so for vLLM's per-request seeds, up to padding
numerics for hf), so a resumed stage reproduces an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from gftrepro.backends.base import (
    BACKENDS,
    Backend,
    GenerationOptions,
    Progress,
    Request,
    Sample,
    SamplingParams,
    Weights,
    cap_new_tokens,
    check_backend,
    finish,
    rollout_seed,
    sample_seed,
)
from gftrepro.models import ModelRef

__all__ = ["BACKENDS", "Backend", "GenerationOptions", "Progress", "Request", "Sample", "SamplingParams", "Weights",
           "cap_new_tokens", "check_backend", "finish", "make_backend", "rollout_seed", "sample_seed"]


def make_backend(options: GenerationOptions, model: ModelRef, tokenizer: Any) -> Backend:
    if options.backend == "vllm":
        from gftrepro.backends.vllm import VLLMBackend

        return VLLMBackend(model, tokenizer, tensor_parallel_size=options.tensor_parallel_size,
                           gpu_memory_utilization=options.gpu_memory_utilization,
                           max_model_len=options.max_model_len, dtype=options.dtype,
                           enforce_eager=options.enforce_eager, seed=options.seed)
    from gftrepro.backends.hf import HFBackend

    return HFBackend(model, tokenizer, batch_size=options.batch_size, device=options.device, dtype=options.dtype)
