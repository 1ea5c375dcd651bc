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


def tokenize(rows: list[dict], tokenizer, max_length: int, truncation: str) -> tuple[list[Example], Counter]:
    """Token ids of prompt + response (the response's EOS, appended by build-groups, kept)."""
    counts: Counter = Counter()
    examples = []
    for r in rows:
        prompt = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        response = tokenizer(r["completion"], add_special_tokens=False)["input_ids"]
        if not response:
            counts["empty response (dropped)"] += 1
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
        examples.append(Example(prompt + response, len(prompt), float(r["advantage"]), r["source"], r["group_id"]))
    if not examples:
        raise GftError(f"no trainable rows left after tokenization: {dict(counts)}")
    return examples, counts


def step_batches(examples: list[Example], batch_size: int, epochs: int, seed: int, world: int) -> list[list[int]]:
    """Example indices of every optimizer step: groups shuffled per epoch, kept together, then cut."""
    by_group: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        by_group.setdefault(e.group, []).append(i)
    steps = []
    for epoch in range(epochs):
        groups = sorted(by_group)
        random.Random(seed * 1_000_003 + epoch).shuffle(groups)
        order = [i for g in groups for i in by_group[g]]
        steps.extend(order[k : k + batch_size] for k in range(0, len(order), batch_size))
    return [s for s in steps if len(s) >= world]  # every process needs at least one sequence


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
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device), "response_mask": response.to(device),
            "advantages": adv.to(device), "sources": [e.source for e in batch]}
