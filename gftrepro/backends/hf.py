"""The ``hf`` backend: batched ``transformers`` models sampled with per-sample seeds.

Every row draws its tokens by inverse CDF (temperature, top-p) from uniforms drawn up front from its
own ``torch.Generator``, seeded from (stage seed, prompt_id, sample_idx): a row's draws never depend
on the other rows of its batch. Batches hold requests sorted by prompt length (left-padded) so little
compute goes to padding. Decoding is the backend's own loop (``backends.decode``: each distinct prompt
encoded once, the cache grown in place, finished rows dropped), which gives the tokens ``generate``
gives; models it does not cover run ``generate`` with the same sampler as a logits processor.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

from gftrepro.backends.base import Progress, Request, Sample, SamplingParams, cap_new_tokens, decode, finish
from gftrepro.backends.decode import decode as own_decode
from gftrepro.backends.decode import supported
from gftrepro.errors import GftError
from gftrepro.models import ModelRef, first_line


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise GftError(f"unknown dtype '{dtype}' (auto, float32, bfloat16, float16)") from None


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail outside the smallest set whose mass reaches ``top_p`` (keeps the top token)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # mass before this token already suffices
    sorted_p = sorted_p.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p)


def row_uniforms(seeds: list[int], steps: int) -> torch.Tensor:
    """[rows, steps] uniforms, row i's from its own ``torch.Generator`` seeded with ``seeds[i]``."""
    return torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                        for s in seeds])


def draw(scores: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Each row's token from its scores [B, V] and its uniform u [B], by inverse CDF (argmax at temperature 0)."""
    if temperature == 0:
        return scores.argmax(-1)
    probs = torch.softmax(scores / temperature, dim=-1)
    if top_p < 1.0:
        probs = top_p_filter(probs, top_p)
    cdf = probs.double().cumsum(-1)
    u = u.to(cdf.device) * cdf[:, -1]  # top-p mass need not sum to 1
    return torch.searchsorted(cdf, u[:, None], right=True).squeeze(1).clamp_(max=scores.shape[1] - 1)


class SeededSampler(LogitsProcessor):
    """``generate``'s path: draw each row's next token from its own seeded stream; hand greedy search a
    one-hot choice. Each row's uniforms for every step are drawn up front (``row_uniforms``); step t
    samples every row at once by inverse CDF (``draw``). A row's tokens thus never depend on the other rows.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, logprobs: bool, steps: int):
        self.temperature, self.top_p, self.record = temperature, top_p, logprobs
        self.uniforms = row_uniforms(seeds, steps)  # [B, steps]
        self.step = 0
        self.steps: list[torch.Tensor] = []  # [B] log-prob of the chosen token, per step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()  # [B, V]
        choice = draw(scores, self.uniforms[:, self.step], self.temperature, self.top_p)
        self.step += 1
        if self.record:
            self.steps.append(torch.log_softmax(scores, -1).gather(1, choice[:, None]).squeeze(1).cpu())
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, choice[:, None], 0.0)


class HFBackend:
    def __init__(self, model: ModelRef, tokenizer, *, batch_size: int, device: str = "auto", dtype: str = "auto"):
        self.device = pick_device(device)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(model.path, dtype=pick_dtype(dtype, self.device),
                                                              trust_remote_code=False)
        except GftError:
            raise
        except Exception as e:
            raise GftError(f"could not load model '{model.ref}': {first_line(e)}") from None
        self.model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # "own": backends.decode's loop (the same tokens, less work); "transformers": generate, for models
        # the own loop does not cover (sliding windows, non-attention layers, logits processors in the
        # generation config: decode.supported)
        self.loop = "own" if supported(self.model) else "transformers"
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)

    @torch.inference_mode()
    def generate(self, requests: list[Request], params: SamplingParams, progress: Progress) -> list[Sample]:
        order = sorted(range(len(requests)), key=lambda i: (len(requests[i].prompt_ids), i))
        results: dict[int, Sample] = {}
        for idx in self.batches(requests, order, params.max_new_tokens):
            batch = [requests[i] for i in idx]
            for i, sample in zip(idx, self.generate_batch(batch, params), strict=True):
                results[i] = sample
            progress(len(batch), sum(len(results[i].token_ids) for i in idx))
        return [results[i] for i in range(len(requests))]

    def batches(self, requests: list[Request], order: list[int], max_new_tokens: int) -> list[list[int]]:
        """Consecutive requests (by prompt length) in batches of ``batch_size`` whose members have the same
        new-token cap: a prompt near the context's end gets a batch of its own caps, never a shorter cap for
        the prompts batched with it (the batch's cap comes from its widest prompt)."""
        cap = [cap_new_tokens(len(r.prompt_ids), max_new_tokens, self.context_length) for r in requests]
        out: list[list[int]] = []
        for i in order:
            if out and len(out[-1]) < self.batch_size and cap[out[-1][0]] == cap[i]:
                out[-1].append(i)
            else:
                out.append([i])
        return out

    def generate_batch(self, batch: list[Request], params: SamplingParams) -> list[Sample]:
        width = max(len(r.prompt_ids) for r in batch)
        cap = cap_new_tokens(width, params.max_new_tokens, self.context_length)
        if cap == 0:
            return [Sample([], "", "length", [] if params.logprobs else None) for _ in batch]
        loop = self.own_loop if self.loop == "own" else self.transformers_loop
        generated, step_lp = loop(batch, params, cap)
        stop = set(params.stop_token_ids)
        samples = []
        for row, tokens in enumerate(generated):
            kept, reason = finish(tokens, stop, cap)
            lp = step_lp[row][: len(kept)] if step_lp is not None else None
            samples.append(Sample(kept, decode(self.tokenizer, kept, stop), reason, lp))
        return samples

    def own_loop(self, batch: list[Request], params: SamplingParams, cap: int
                 ) -> tuple[list[list[int]], list[list[float]] | None]:
        """``backends.decode``: each distinct prompt encoded once, the cache grown in place, finished rows dropped."""
        distinct: dict[tuple[int, ...], int] = {}
        rows = [distinct.setdefault(tuple(r.prompt_ids), len(distinct)) for r in batch]
        temperature, top_p = params.temperature, params.top_p
        return own_decode(self.model, [list(p) for p in distinct], rows, row_uniforms([r.seed for r in batch], cap),
                          lambda scores, u: draw(scores, u, temperature, top_p), cap, params.stop_token_ids,
                          self.tokenizer.pad_token_id, params.logprobs)

    def transformers_loop(self, batch: list[Request], params: SamplingParams, cap: int
                          ) -> tuple[list[list[int]], list[list[float]] | None]:
        """``transformers`` ``generate`` (greedy search over ``SeededSampler``'s one-hot choices)."""
        width = max(len(r.prompt_ids) for r in batch)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch])
        sampler = SeededSampler([r.seed for r in batch], params.temperature, params.top_p, params.logprobs, cap)
        out = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
            logits_processor=LogitsProcessorList([sampler]), do_sample=False, max_new_tokens=cap,
            eos_token_id=params.stop_token_ids, pad_token_id=pad,
            temperature=None, top_p=None, top_k=None,
        )
        step_lp = torch.stack(sampler.steps, 1).tolist() if params.logprobs else None
        return out[:, width:].cpu().tolist(), step_lp

    @torch.no_grad()
    def load_weights(self, weights) -> None:
        """Copy new weights into this backend's own copy of the model (cast to its dtype)."""
        own = self.model.state_dict()
        for name, tensor in weights:
            if name not in own:
                raise GftError(f"hf backend: the new weights hold '{name}', which the served model does not")
            own[name].copy_(tensor.detach())

    def close(self) -> None:
        """Release the model (the protocol's hook for engines that hold processes)."""
        del self.model
