"""The hf backend's own decoding loop: the same tokens as ``transformers`` ``generate`` with the
backend's seeded sampler, with four kinds of work left out.

1. **A prompt is encoded once per batch.** Evaluation asks for n samples of each problem, on-policy
   training for K of each prompt: the batch's distinct prompts go through the model once (left-padded)
   and their key/value rows are repeated for every request that shares them.
2. **The key/value cache grows in place** (:class:`GrowingLayer`): each layer's cache is one buffer with
   room for the prompt and the new-token cap, written step by step, instead of being concatenated anew
   every step (which copies the whole cache each token).
3. **Finished rows leave the batch**: once a row has drawn a stop token it is dropped from the cache and
   the batch (when at least an eighth of the live rows have finished, so the cache is not copied every
   step), instead of being decoded on to the batch's longest sample.
4. **A shared prompt's keys and values are stored once** (``SharedLayer``, ``shared_attention``): when a
   batch has at least ``SHARED_ROWS`` rows per distinct prompt, each new token attends to its prompt's one
   copy (each run of rows sharing a prompt is one matrix product with it) and to its own new tokens,
   instead of reading the prompt's cache repeated for every row.
5. **Llama-family steps skip the module tree** (``LeanStep``): for Llama and Qwen2 decoders a new token's
   pass after the prefill is the same operations as the model's own forward (the same weights, the same
   functions in the same order), called directly, without the per-module hooks, keyword plumbing and
   output records of ``transformers``' forward, which cost more than the arithmetic at the tiny models' size.

A row's draws come from its own seeded uniforms (``hf.row_uniforms``), so which rows share its batch or
when the batch shrinks does not change them; ``tests/test_hf_backend.py`` checks that this loop gives
the very tokens ``generate`` gives (on CPU; on a GPU, kernels chosen by batch shape may differ in their
last bits). Models with sliding-window or non-attention layers, or whose generation config adds logits
processors (a repetition penalty, say), keep ``generate`` (``supported``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface

from gftrepro.prefix import full_attention

SHARED_ROWS = 4  # rows per distinct prompt from which the prompts' keys and values are stored once
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
    generation = getattr(model, "generation_config", None)
    extra = [k for k, neutral in PROCESSORS.items() if getattr(generation, k, None) not in (None, neutral, [], {})]
    return full_attention(model) and not getattr(model, "_is_stateful", False) and not extra


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


class SharedLayer(GrowingLayer):
    """A layer's keys and values as its batch's distinct prompts (left-padded, stored once) and each row's new
    tokens (one buffer with room for ``room``, written in place). ``shared_attention`` reads both."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:  # the prefill: the distinct prompts
            self.dtype, self.device = key_states.dtype, key_states.device
            self.prompt_keys, self.prompt_values = key_states, value_states
            self.is_initialized = True
            return key_states, value_states
        return super().update(key_states, value_states)  # a new token of every row, into the rows' buffers

    def get_seq_length(self) -> int:
        return self.prompt_keys.shape[-2] + self.length if self.is_initialized else 0

    def start_rows(self, owner: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        """After the prefill: ``owner[i]``, row i's prompt (``prompt_mask``: the prompts' padding); each row's
        empty buffer of new tokens."""
        self.prompt_mask, self.laid_out = prompt_mask, None
        shape = (len(owner), self.prompt_keys.shape[1], self.room, self.prompt_keys.shape[-1])
        self.key_buffer, self.value_buffer = self.prompt_keys.new_empty(shape), self.prompt_values.new_empty(shape)
        self.set_owner(owner)

    def set_owner(self, owner: torch.Tensor) -> None:
        """Each row's prompt, the prompts' padding per row (None where no row's prompt is padded), and the
        runs of consecutive rows of one prompt (start, end, prompt): the batch's requests come grouped by
        prompt, so there are as many as prompts. ``even``: the rows per run when every run has as many (a
        batch before any row has left it), so that all runs are one batched product."""
        owner_mask = self.prompt_mask.index_select(0, owner)[None]  # [1, B, L]
        self.owner, self.owner_mask = owner, None if bool(owner_mask.all()) else owner_mask
        prompts, counts = torch.unique_consecutive(owner, return_counts=True)
        ends = counts.cumsum(0).tolist()
        self.runs = [(end - n, end, p) for end, n, p in zip(ends, counts.tolist(), prompts.tolist(), strict=True)]
        self.even = int(counts[0]) if bool((counts == counts[0]).all()) else None
        self.run_prompts, self.runs_laid_out = prompts, None

    def prompts(self, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts' keys [P, H, D, L] and values [P, H, L, D] (heads repeated ``groups`` times), laid out once."""
        if self.laid_out is None:
            k, v = self.prompt_keys, self.prompt_values
            if groups > 1:
                k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
            self.laid_out = (k.transpose(-1, -2).contiguous(), v.contiguous())
        return self.laid_out

    def run_prompts_laid_out(self, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``prompts`` in the order of the runs (one per run; the same tensors while every prompt has its run)."""
        if self.runs_laid_out is None:
            k, v = self.prompts(groups)
            order = torch.arange(len(k), device=k.device)
            if len(self.run_prompts) != len(k) or bool((self.run_prompts != order).any()):
                k, v = k.index_select(0, self.run_prompts), v.index_select(0, self.run_prompts)
            self.runs_laid_out = (k, v)
        return self.runs_laid_out

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the rows ``beam_idx``, in that order."""
        super().reorder_cache(beam_idx)
        self.set_owner(self.owner.index_select(0, beam_idx))


def shared_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                     scaling: float, dropout: float = 0.0, shared: Cache | None = None, **kwargs
                     ) -> tuple[torch.Tensor, None]:
    """One new token per row against its prompt's keys (stored once: all runs of rows sharing a prompt are one
    batched product with them while the runs are even, else each run is one product) and against its own new
    tokens. ``query`` [B, H, 1, D]; ``key``/``value`` the rows' new tokens [B, H_kv, T, D]."""
    layer = shared.layers[module.layer_idx]
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    if layer.even is not None:
        return even_attention(layer, query, key, value, scaling, groups)
    prompt_k, prompt_v = layer.prompts(groups)  # [P, H, D, L], [P, H, L, D]
    width = prompt_v.shape[2]
    q = query[:, :, 0].transpose(0, 1)  # [H, B, D]
    to_prompt = torch.cat([q[:, start:end] @ prompt_k[p] for start, end, p in layer.runs], 1)  # [H, B, L]
    if layer.owner_mask is not None:
        to_prompt = to_prompt.masked_fill(~layer.owner_mask, float("-inf"))
    to_own = (query @ key.transpose(-1, -2))[:, :, 0].transpose(0, 1)  # [H, B, T]
    weights = torch.softmax(torch.cat([to_prompt, to_own], -1) * scaling, -1, dtype=torch.float32).to(query.dtype)
    out = torch.cat([weights[:, start:end, :width] @ prompt_v[p] for start, end, p in layer.runs], 1)  # [H, B, D]
    own = (weights[..., width:].transpose(0, 1)[:, :, None] @ value)[:, :, 0]  # [B, H, D]
    return (out.transpose(0, 1) + own)[:, None], None  # [B, 1, H, D]


def even_attention(layer: SharedLayer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
                   groups: int) -> tuple[torch.Tensor, None]:
    """``shared_attention`` when the R runs all have n rows: the prompt parts as one [R, H, n, D] x [R, H, D, L]
    product (and its values' likewise), in the rows' [B, H, ...] layout."""
    prompt_k, prompt_v = layer.run_prompts_laid_out(groups)  # [R, H, D, L], [R, H, L, D]
    rows, heads, _, dim = query.shape
    runs, n, width = len(prompt_k), layer.even, prompt_k.shape[-1]
    q = query[:, :, 0].view(runs, n, heads, dim).transpose(1, 2)  # [R, H, n, D]
    to_prompt = (q @ prompt_k).transpose(1, 2).reshape(rows, heads, width)  # [B, H, L]
    if layer.owner_mask is not None:
        to_prompt = to_prompt.masked_fill(~layer.owner_mask[0, :, None], float("-inf"))
    to_own = (query @ key.transpose(-1, -2))[:, :, 0]  # [B, H, T]
    weights = torch.softmax(torch.cat([to_prompt, to_own], -1) * scaling, -1, dtype=torch.float32).to(query.dtype)
    out = weights[..., :width].reshape(runs, n, heads, width).transpose(1, 2) @ prompt_v  # [R, H, n, D]
    own = (weights[..., width:, None].transpose(-1, -2) @ value)[:, :, 0]  # [B, H, D]
    return (out.transpose(1, 2).reshape(rows, heads, dim) + own)[:, None], None  # [B, 1, H, D]


AttentionInterface.register("gft_shared", shared_attention)
AttentionMaskInterface.register("gft_shared", lambda *args, **kwargs: None)  # shared_attention masks the prompts

LEAN = {"LlamaForCausalLM", "Qwen2ForCausalLM"}  # whose decoder layers LeanStep repeats op for op


class LeanStep:
    """One new token of every row through a Llama or Qwen2 decoder after the prefill, with the prompts stored
    once (``SharedLayer``): ``transformers``' own forward, operation for operation (embedding, RMSNorm in
    float32, q/k/v projections, rotary embedding, the registered ``gft_shared`` attention, o projection,
    SwiGLU MLP, final norm, LM head on the last position), called on the weights directly."""

    def __init__(self, model):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        inner = model.model
        self.rotate, self.rotary, self.embed = apply_rotary_pos_emb, inner.rotary_emb, inner.embed_tokens.weight
        self.attend = AttentionInterface._global_mapping["gft_shared"]
        self.layers = [(layer.input_layernorm, layer.self_attn, layer.post_attention_layernorm, layer.mlp)
                       for layer in inner.layers]
        self.norm, self.head = inner.norm, model.lm_head

    @staticmethod
    def usable(model) -> bool:
        """A Llama or Qwen2 causal LM with SiLU MLPs, no logit scaling, and plain ``nn.Linear`` projections with no
        hooks (no adapters, quantized layers or offloading wrapped around them, whose forwards this step skips)."""
        config = model.config
        if type(model).__name__ not in LEAN or getattr(config, "hidden_act", None) != "silu" or \
                getattr(config, "pretraining_tp", 1) > 1 or getattr(config, "logit_scale", None):
            return False
        parts = [model.lm_head] + [getattr(layer.self_attn, f"{n}_proj") for layer in model.model.layers
                                   for n in "qkvo"] + \
            [getattr(layer.mlp, f"{n}_proj") for layer in model.model.layers for n in ("gate", "up", "down")]
        return all(type(m) is torch.nn.Linear for m in parts) and \
            not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

    @staticmethod
    def rms(norm, hidden: torch.Tensor) -> torch.Tensor:
        dtype = hidden.dtype
        hidden = hidden.to(torch.float32)
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * hidden.to(dtype)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: Cache) -> torch.Tensor:
        """``tokens``, ``positions`` [B]: the scores [B, V] of each row's next token."""
        rows = len(tokens)
        hidden = F.embedding(tokens[:, None], self.embed)  # [B, 1, H]
        cos, sin = self.rotary(hidden, positions[:, None])
        for (pre, attn, post, mlp), layer in zip(self.layers, cache.layers, strict=True):
            x = self.rms(pre, hidden)
            shape = (rows, 1, -1, attn.head_dim)
            q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(shape).transpose(1, 2)
            k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(shape).transpose(1, 2)
            v = F.linear(x, attn.v_proj.weight, attn.v_proj.bias).view(shape).transpose(1, 2)
            q, k = self.rotate(q, k, cos, sin)
            k, v = layer.update(k, v)
            out, _ = self.attend(attn, q, k, v, None, scaling=attn.scaling, shared=cache)
            hidden = hidden + F.linear(out.reshape(rows, 1, -1).contiguous(), attn.o_proj.weight, attn.o_proj.bias)
            x = self.rms(post, hidden)
            gate = F.silu(F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias))
            hidden = hidden + F.linear(gate * F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias),
                                       mlp.down_proj.weight, mlp.down_proj.bias)
        hidden = self.rms(self.norm, hidden)
        return F.linear(hidden[:, -1], self.head.weight, self.head.bias)


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
    # the prompts' keys and values stored once (shared_attention), for models that take a registered attention
    share = len(prompts) * SHARED_ROWS <= len(rows) and getattr(model, "_supports_attention_backend", False)
    cache = Cache(layers=[(SharedLayer if share else GrowingLayer)(cap) for _ in range(layers)])
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    scores = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                   **last_only).logits[:, -1]
    index = torch.tensor(rows, device=device)
    scores = scores.index_select(0, index)
    if share:
        for layer in cache.layers:
            layer.start_rows(index, mask.bool())
    else:
        cache.reorder_cache(index)
    mask, last = mask.index_select(0, index), positions[:, -1].index_select(0, index)
    lean = LeanStep(model) if share and LeanStep.usable(model) else None
    with attention("gft_shared" if share else None, model):
        return decode_steps(model, cache, scores, mask, last, uniforms, draw, cap, stop_ids, record, share,
                            last_only, len(rows), lean)


@contextmanager
def attention(name: str | None, model) -> Iterator[None]:
    """The model's attention implementation set to ``name`` for the block (none: left as it is)."""
    if name is None:
        yield
        return
    before = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def decode_steps(model, cache: Cache, scores: torch.Tensor, mask: torch.Tensor, last: torch.Tensor,
                 uniforms: torch.Tensor, draw: Draw, cap: int, stop_ids: list[int], record: bool, share: bool,
                 last_only: dict, count: int, lean: LeanStep | None = None
                 ) -> tuple[list[list[int]], list[list[float]] | None]:
    """The token-by-token loop after the prefill (``decode``'s)."""
    device = scores.device
    live = torch.arange(count, device=device)  # request of each batch row
    finished = torch.zeros(count, dtype=torch.bool, device=device)
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
        last = last + 1
        if lean is not None:
            scores = lean(choice, last, cache)
            continue
        if share:
            attend = {"attention_mask": None, "shared": cache}
        else:
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], 1)
            attend = {"attention_mask": mask}
        scores = model(input_ids=choice[:, None], position_ids=last[:, None], past_key_values=cache, use_cache=True,
                       **attend, **last_only).logits[:, -1]
    tokens: list[list[int]] = [[] for _ in range(count)]
    logprobs: list[list[float]] | None = [[] for _ in range(count)] if record else None
    for who, chosen, lp in steps:
        for i, token in zip(who.tolist(), chosen.tolist(), strict=True):
            tokens[i].append(token)
        if logprobs is not None and lp is not None:
            for i, value in zip(who.tolist(), lp.tolist(), strict=True):
                logprobs[i].append(value)
    return tokens, logprobs
