"""Training rows -> token ids -> padded tensors: tokenization (EOS kept, over-long rows counted), the
example order of every optimizer step (groups kept together), and collation with masks from lengths."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch

from gftrepro.errors import GftError


@dataclass(frozen=True)
class Example:
    ids: list[int]  # prompt + response token ids
    prompt_len: int
    advantage: float
    source: str
    group: int
    behaviour: tuple[float | None, ...] | None = None  # pear: the sampler's log-prob of each response token


def behaviour_of(row: dict, n: int) -> tuple[float | None, ...] | None | bool:
    """pear: the sampler's log-probs aligned with the row's ``n`` response tokens: as many, or one fewer (the
    EOS build-groups appended has none: None there); False when they cannot belong to these tokens."""
    lp = row.get("logprobs")
    if lp is None:
        return None
    if len(lp) == n:
        return tuple(lp)
    if len(lp) == n - 1:
        return (*lp, None)
    return False


def tokenize(rows: list[dict], tokenizer, max_length: int, truncation: str, behaviour: bool = False
             ) -> tuple[list[Example], Counter]:
    """Token ids of prompt + response (the response's EOS, appended by build-groups, kept). ``behaviour``
    (pear): each row's sampler log-probs come along, aligned with the response tokens; a row whose count
    does not match its tokens is dropped and counted."""
    counts: Counter = Counter()
    examples = []
    for r in rows:
        prompt = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        response = tokenizer(r["completion"], add_special_tokens=False)["input_ids"]
        if not response:
            counts["empty response (dropped)"] += 1
            continue
        lp = behaviour_of(r, len(response)) if behaviour else None
        if lp is False or (behaviour and lp is None):
            counts["behaviour log-probs missing or not matching the tokens (dropped)"] += 1
            continue
        room = max_length - len(prompt)
        if room < 1:
            counts["prompt too long (dropped)"] += 1
            continue
        if len(response) > room:
            if truncation == "drop":
                counts["response too long (dropped)"] += 1
                continue
            counts["response truncated (kept, no EOS)"] += 1
            response = response[:room]
            lp = None if lp is None else lp[:room]
        examples.append(Example(prompt + response, len(prompt), float(r["advantage"]), r["source"], r["group_id"], lp))
    if not examples:
        raise GftError(f"no trainable rows left after tokenization: {dict(counts)}")
    return examples, counts


def step_batches(examples: list[Example], batch_size: int, epochs: int, seed: int, world: int) -> list[list[int]]:
    """Example indices of every optimizer step: groups shuffled per epoch, ``batch_size`` groups a step.

    The batch counts groups (prompts), as on-policy training's ``prompts_per_step`` does: offline GFT
    with batch 16 and K = 8 trains 128 sequences a step, the same steps over the same groups as
    on-policy GFT. A single-trajectory row (sft, dft, ...) is a group of one, so there a group is a
    sequence."""
    by_group: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        by_group.setdefault(e.group, []).append(i)
    steps = []
    for epoch in range(epochs):
        groups = sorted(by_group)
        random.Random(seed * 1_000_003 + epoch).shuffle(groups)
        steps.extend([i for g in groups[k : k + batch_size] for i in by_group[g]]
                     for k in range(0, len(groups), batch_size))
    return [s for s in steps if len(s) >= world]  # every process needs at least one sequence


def grouped_by_length(examples: list[Example]) -> list[Example]:
    """The examples with each group's rows side by side, groups in order of their longest row (rows of a
    group by length): cut into micro-batches, little of each is padding and a group's rows share one."""
    longest: dict[int, int] = {}
    for e in examples:
        longest[e.group] = max(longest.get(e.group, 0), len(e.ids))
    return sorted(examples, key=lambda e: (longest[e.group], e.group, len(e.ids)))


def collate(batch: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ids; masks from lengths (never from pad ids, so an EOS used as pad stays trained)."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    response = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        attention[i, : len(e.ids)] = 1
        response[i, e.prompt_len : len(e.ids)] = 1
    adv = torch.tensor([e.advantage for e in batch], dtype=torch.float32)
    out = {"input_ids": ids.to(device), "attention_mask": attention.to(device), "response_mask": response.to(device),
           "advantages": adv.to(device), "sources": [e.source for e in batch]}
    if any(e.behaviour is not None for e in batch):  # pear: log-probs at the response tokens' positions
        lp = torch.zeros((len(batch), width), dtype=torch.float32)
        known = torch.zeros((len(batch), width), dtype=torch.bool)
        for i, e in enumerate(batch):
            for j, value in enumerate(e.behaviour or ()):
                if value is not None:
                    lp[i, e.prompt_len + j], known[i, e.prompt_len + j] = value, True
        out |= {"behaviour_logprobs": lp.to(device), "behaviour_known": known.to(device)}
    return out
