"""The hf backend's own decoding loop: the same tokens as ``transformers`` ``generate`` with the
backend's seeded sampler, with three kinds of work left out.

1. **A prompt is encoded once per batch.** Evaluation asks for n samples of each problem, on-policy
   training for K of each prompt: the batch's distinct prompts go through the model once (left-padded)
   and their key/value rows are repeated for every request that shares them.
2. **The key/value cache grows in place** (:class:`GrowingLayer`): each layer's cache is one buffer with
   room for the prompt and the new-token cap, written step by step, instead of being concatenated anew
   every step (which copies the whole cache each token).
3. **Finished rows leave the batch**: once a row has drawn a stop token it is dropped from the cache and
   the batch (when at least an eighth of the live rows have finished, so the cache is not copied every
   step), instead of being decoded on to the batch's longest sample.

A row's draws come from its own seeded uniforms (``hf.row_uniforms``), so which rows share its batch or
when the batch shrinks does not change them; ``tests/test_hf_backend.py`` checks that this loop gives
the very tokens ``generate`` gives (on CPU; on a GPU, kernels chosen by batch shape may differ in their
last bits). Models with sliding-window or non-attention layers, or whose generation config adds logits
processors (a repetition penalty, say), keep ``generate`` (``supported``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from transformers.cache_utils import Cache, DynamicLayer

Draw = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (scores [B, V], uniforms [B]) -> tokens [B]


# generation-config settings that make ``generate`` add a logits processor before the sampler's; with any of
# them set (Qwen2.5-Instruct's repetition_penalty 1.05, say) the model keeps ``generate``, which applies them
PROCESSORS = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
              "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "min_length": 0, "min_new_tokens": 0,
              "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
              "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
              "guidance_scale": 1.0, "watermarking_config": None, "constraints": None, "force_words_ids": None}


def supported(model) -> bool:
    """A decoder whose every layer is full attention (Llama, Qwen2, SmolLM2, the testbed models) and whose
    generation config adds no logits processor (so ``generate`` would sample exactly as this loop does)."""
    config = model.config
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    generation = getattr(model, "generation_config", None)
    extra = [k for k, neutral in PROCESSORS.items() if getattr(generation, k, None) not in (None, neutral, [], {})]
    return (kinds == {"full_attention"} and not window and not getattr(config, "is_encoder_decoder", False)
            and not getattr(model, "_is_stateful", False) and not extra)


class GrowingLayer(DynamicLayer):
    """A layer's keys and values in one buffer with ``room`` positions past the prompt, written in place."""

    def __init__(self, room: int):
        super().__init__()
        self.room, self.length = room, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            size = key_states.shape[-2] + self.room
            self.key_buffer = key_states.new_empty(*key_states.shape[:2], size, key_states.shape[-1])
            self.value_buffer = value_states.new_empty(*value_states.shape[:2], size, value_states.shape[-1])
            self.is_initialized = True
        end = self.length + key_states.shape[-2]
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep (or repeat) the rows ``beam_idx``, in that order."""
        self.key_buffer = self.key_buffer.index_select(0, beam_idx)
        self.value_buffer = self.value_buffer.index_select(0, beam_idx)
        self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]


@torch.inference_mode()
def decode(model, prompts: list[list[int]], rows: list[int], uniforms: torch.Tensor, draw: Draw, cap: int,
           stop_ids: list[int], pad: int, record: bool) -> tuple[list[list[int]], list[list[float]] | None]:
    """Decode one batch: ``rows[i]`` is request i's prompt (an index into ``prompts``, which are distinct),
    ``uniforms[i, t]`` its draw at step t. Returns each request's new tokens (up to and including its stop
    token, else ``cap`` of them) and, with ``record``, each token's log-probability."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    layers = model.config.get_text_config().num_hidden_layers
    cache = Cache(layers=[GrowingLayer(cap) for _ in range(layers)])
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    scores = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                   **last_only).logits[:, -1]
    index = torch.tensor(rows, device=device)
    scores = scores.index_select(0, index)
    cache.reorder_cache(index)
    mask, last = mask.index_select(0, index), positions[:, -1].index_select(0, index)
    live = torch.arange(len(rows), device=device)  # request of each batch row
    finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []  # (requests, tokens, log-probs)
    for t in range(cap):
        scores = scores.float()
        choice = draw(scores, uniforms[:, t].index_select(0, live.cpu()).to(device))  # step t's, live rows'
        logp = torch.log_softmax(scores, -1).gather(1, choice[:, None]).squeeze(1) if record else None
        open_rows = ~finished
        steps.append((live[open_rows], choice[open_rows], logp[open_rows] if record else None))
        finished = finished | torch.isin(choice, stops)
        if t == cap - 1 or bool(finished.all()):
            break
        if int(finished.sum()) * 8 >= len(live):  # drop the finished rows
            keep = (~finished).nonzero().squeeze(1)
            cache.reorder_cache(keep)
            live, choice, mask, last, finished = live[keep], choice[keep], mask[keep], last[keep], finished[keep]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], 1)
        last = last + 1
        scores = model(input_ids=choice[:, None], attention_mask=mask, position_ids=last[:, None],
                       past_key_values=cache, use_cache=True, **last_only).logits[:, -1]
    tokens: list[list[int]] = [[] for _ in rows]
    logprobs: list[list[float]] | None = [[] for _ in rows] if record else None
    for who, chosen, lp in steps:
        for i, token in zip(who.tolist(), chosen.tolist(), strict=True):
            tokens[i].append(token)
        if logprobs is not None and lp is not None:
            for i, value in zip(who.tolist(), lp.tolist(), strict=True):
                logprobs[i].append(value)
    return tokens, logprobs
