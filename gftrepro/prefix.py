"""The forward pass of a micro-batch whose rows share prompts, with each distinct prompt encoded once.

A group's K responses answer one question: in the plain forward every row carries the whole prompt
(40 of the tiny task's 68 tokens a row), so each prompt goes through the model K times. Here the
distinct prompts go through it once; their keys and values are then repeated for every row that
shares them (an ``index_select``, so the gradient of each row reaches its prompt) and the responses
run on top of them. Causal attention never lets a prompt position see its response, so this is the
plain forward's computation rearranged: the same hidden state at every scored position and the
same gradient, up to float rounding (``tests/test_prefix.py`` checks both against the plain pass).

Rows must be laid out as ``engine.batches.collate`` lays them (prompt, response, then padding, the
masks from lengths); micro-batches in which no prompt repeats, or laid out otherwise, take the plain
forward. Only models whose every layer is full attention share (no sliding windows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Shared:
    """The rows' distinct prompts (their ids), each row's prompt, and each row's prompt and total lengths;
    ``copies``: the rows per prompt where every prompt has as many, in order (0,0,1,1,...), else None."""

    prompts: list[list[int]]
    rows: torch.Tensor  # [B] index into prompts
    starts: torch.Tensor  # [B] prompt length = first response position
    lengths: torch.Tensor  # [B] prompt + response
    copies: int | None = None


def full_attention(model: nn.Module) -> bool:
    """A decoder whose every layer is full attention (no sliding windows, no encoder): what both shared-prompt
    passes (this one, and ``backends.decode``'s) and the own decoding loop rely on."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    return kinds == {"full_attention"} and not window and not getattr(config, "is_encoder_decoder", False)


def shared_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
                   ) -> Shared | None:
    """Which rows share a prompt, or None when none does or the rows are not laid out as collate lays them."""
    rows, width = input_ids.shape
    at = torch.arange(width, device=input_ids.device)
    lengths = attention_mask.sum(1)
    starts = (response_mask.cumsum(1) == 0).sum(1)
    laid_out = bool((attention_mask.bool() == (at < lengths[:, None])).all()) and \
        bool((response_mask.bool() == ((at >= starts[:, None]) & (at < lengths[:, None]))).all()) and \
        bool((starts >= 1).all()) and bool((lengths > starts).all())
    if not laid_out:
        return None
    ids, cut = input_ids.tolist(), starts.tolist()
    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(ids[i][: cut[i]]), len(distinct)) for i in range(rows)]
    if len(distinct) == rows:
        return None
    copies = rows // len(distinct)
    even = copies * len(distinct) == rows and which == [i // copies for i in range(rows)]
    return Shared([list(p) for p in distinct], torch.tensor(which, device=input_ids.device), starts, lengths,
                  copies if even else None)


def shared_hidden(decoder: nn.Module, input_ids: torch.Tensor, shared: Shared) -> torch.Tensor:
    """[N, H]: the final hidden state at each scored position (the one before each response token), in the
    order of the plain forward's ``hidden[:, :-1][response_mask[:, 1:]]``."""
    from transformers.cache_utils import Cache, DynamicLayer

    device = input_ids.device
    width = max(len(p) for p in shared.prompts)
    prompt_ids = torch.tensor([p + [0] * (width - len(p)) for p in shared.prompts], device=device)  # right-padded
    prompt_mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in shared.prompts], device=device)
    layers = decoder.config.get_text_config().num_hidden_layers
    cache = Cache(layers=[DynamicLayer() for _ in range(layers)])
    prompt_hidden = decoder(input_ids=prompt_ids, attention_mask=prompt_mask, past_key_values=cache,
                            use_cache=True).last_hidden_state
    prompt_len = torch.tensor([len(p) for p in shared.prompts], device=device)
    last = prompt_hidden[torch.arange(len(shared.prompts), device=device), prompt_len - 1]  # [P, H]
    for layer in cache.layers:  # each row's copy of its prompt's keys and values (the gradient flows back)
        layer.keys, layer.values = repeat_rows(layer.keys, shared), repeat_rows(layer.values, shared)
    answer = shared.lengths - shared.starts
    steps = torch.arange(int(answer.max()), device=device)
    inside = steps < answer[:, None]  # [B, R]
    at = (shared.starts[:, None] + steps).clamp(max=input_ids.shape[1] - 1)
    response_ids = torch.where(inside, input_ids.gather(1, at), 0)
    mask = torch.cat([prompt_mask.index_select(0, shared.rows), inside.long()], 1)
    hidden = decoder(input_ids=response_ids, attention_mask=mask, position_ids=shared.starts[:, None] + steps,
                     past_key_values=cache, use_cache=True).last_hidden_state  # [B, R, H]
    scoring = torch.cat([last.index_select(0, shared.rows)[:, None], hidden[:, :-1]], 1)  # column j predicts token j
    return scoring[inside]


def repeat_rows(x: torch.Tensor, shared: Shared) -> torch.Tensor:
    """``x.index_select(0, shared.rows)``; where every prompt has ``shared.copies`` rows in order, an expand, whose
    gradient is a sum over the copies instead of a scatter (several times faster on CPU; the same values)."""
    if shared.copies is None:
        return x.index_select(0, shared.rows)
    return x[:, None].expand(len(x), shared.copies, *x.shape[1:]).reshape(len(shared.rows), *x.shape[1:])


def scored_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  response_mask: torch.Tensor, share: bool) -> torch.Tensor:
    """[N, H] hidden states of the positions that predict the response tokens: each distinct prompt encoded
    once when ``share`` and rows share prompts, else the plain forward."""
    decoder = model.get_decoder()
    shared = shared_prompts(input_ids, attention_mask, response_mask) if share else None
    if shared is not None:
        return shared_hidden(decoder, input_ids, shared)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden[:, :-1][response_mask[:, 1:].bool()]
