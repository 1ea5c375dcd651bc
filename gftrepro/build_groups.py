"""Stage ``build-groups``: hybrid response groups with group-normalised advantages (GAL).

Reads: the latest complete ``verify`` version (or ``--verify-version``), and through its manifest
the sampling versions it scored (completions, ``problems.parquet``, the student's prompt settings).
Writes: ``<run>/build-groups/<version>/``:

- ``shard-*.parquet``: the groups, ``schema.GROUPS`` rows, K consecutive rows per ``group_id``;
- ``sft.parquet``: every expert solution (the SFT / DFT training set);
- ``sft-mix.parquet``: expert solutions plus every teacher completion that verified correct;
- ``manifest.json`` last, with the counts of the closing table.

    gft build-groups                                   # K = 8: 1 expert, 3 teacher, 4 self
    gft build-groups --expert 1 --teacher 1 --self 6   # the paper's 2:6 ratio (1 expert + 1 teacher demo)
    gft build-groups --std population --eps 1e-4       # TRL's conventions

For each prompt: A_k = (R_k - mean(R)) / (std(R) + eps) over its K responses (docs/DESIGN.md section 2).

Where this departs from the paper / the authors' code:

1. Responses are chosen before training from samples drawn once (the authors draw the 4 self
   rollouts on-policy at every step; see ``gftrepro/sample.py``).
2. With fewer expert solutions than ``--expert`` slots (datasets have one), slots are filled in
   the order of ``expert_fill``: ``teacher`` = teacher completions that verified correct (extra
   demonstrations, kept with source ``teacher``), ``repeat`` = the expert solution again. Each
   fill is counted; with ``expert_fill: []`` such prompts are dropped.
3. Groups whose rewards are all equal carry no signal (every A = 0): they are counted by kind and
   left out of the shards unless ``--keep-zero-variance``.
4. Completions whose verify status is ``error`` or ``timeout`` are not candidates (counted):
   their reward is unknown, not zero.
5. Expert and teacher responses (and self samples that stopped) get the student tokenizer's EOS
   appended as text, exactly as the trainer will tokenize them, so the model learns to stop.
   Self samples cut at the length cap get none.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from gftrepro import schema, store
from gftrepro.config import opt
from gftrepro.errors import GftError
from gftrepro.groups import (
    FILLS,
    STD_MODES,
    Candidates,
    candidate_pools,
    compose,
    group_advantages,
    groups_line,
    load_completions,
    load_rewards,
    read_inputs,
    student_settings,
)
from gftrepro.models import ModelRef, load_tokenizer, resolve_model
from gftrepro.prompts import format_prompt
from gftrepro.stage import already_done, done_line, open_stage, writing


@dataclass(frozen=True)
class BuildGroupsConfig:
    n_expert: int = opt(1, "expert (dataset) solutions per group", flag="expert")
    n_teacher: int = opt(3, "teacher completions per group", flag="teacher")
    n_self: int = opt(4, "self completions per group", flag="self")
    std: str = opt("unbiased", "advantage scale: unbiased (authors' code), population (TRL), none (mean-centring)")
    eps: float = opt(1e-6, "added to the std (authors' code 1e-6; TRL 1e-4)")
    keep_zero_variance: bool = opt(False, "keep groups whose rewards are all equal (every advantage 0)")
    expert_fill: list[str] = opt(["teacher", "repeat"], "how to fill missing expert slots, in order: teacher, repeat")
    seed: int = opt(0, "seed of the choice among surplus candidates")
    verify_version: str = opt("", "verify version to read ('' = the latest complete one)", versioned=False)
    model: str = opt("", "student whose chat template and EOS the rows use ('' = sample-self's model)")
    groups_per_shard: int = opt(1024, "groups per output shard")

    @property
    def k(self) -> int:
        return self.n_expert + self.n_teacher + self.n_self

    def validate(self) -> None:
        if min(self.n_expert, self.n_teacher, self.n_self) < 0:
            raise GftError("--expert, --teacher and --self must be >= 0")
        if self.k == 0:
            raise GftError("the group ratio sums to 0: ask for at least one expert, teacher or self response")
        if self.k < 2:
            raise GftError(f"a group needs K >= 2 responses for a group advantage, got K = {self.k}")
        if self.std not in STD_MODES:
            raise GftError(f"std must be one of {', '.join(STD_MODES)}, got '{self.std}'")
        if not math.isfinite(self.eps) or self.eps < 0:
            raise GftError(f"eps must be a finite number >= 0, got {self.eps}")
        bad = [f for f in self.expert_fill if f not in FILLS]
        if bad:
            raise GftError(f"unknown expert_fill '{bad[0]}' (known: {', '.join(FILLS)})")
        if self.groups_per_shard < 1:
            raise GftError("groups_per_shard must be at least 1")




















def run(config: BuildGroupsConfig, run_dir: Path, console: Console | None = None) -> dict:
    console = console or Console()
    verify, sampled = read_inputs(run_dir, config.verify_version)
    model_ref, system_prompt, template = student_settings(sampled, config.model)
    model = resolve_model(model_ref)
    inputs = {"verify": verify.version, "student": {"ref": model.ref, "fingerprint": model.fingerprint}}
    vdir = open_stage(run_dir, "build-groups", config, inputs, console)
    if vdir.is_complete(hashes=True):
        return already_done(vdir, console, groups_line)
    with writing(vdir, console):
        return write_version(config, vdir, verify, sampled, model, system_prompt, template, console)


def write_version(config: BuildGroupsConfig, vdir: store.VersionDir, verify: store.VersionDir,
                  sampled: dict[str, store.VersionDir], model: ModelRef, system_prompt: str, template: str,
                  console: Console) -> dict:
    vdir.clear_stale_temporaries()
    tokenizer = load_tokenizer(model)
    problems: dict[str, dict] = {}
    for v in sampled.values():
        for row in pq.read_table(v.path / "problems.parquet").to_pylist():
            problems.setdefault(row["prompt_id"], row)
    prompts = {pid: format_prompt(tokenizer, p["question"], system_prompt, template) for pid, p in problems.items()}
    excluded: Counter = Counter()
    pools = candidate_pools(load_rewards(verify), load_completions(sampled), problems, tokenizer.eos_token, excluded)
    groups, counts = build_all(config, pools)
    counts["excluded"] = dict(excluded)
    counts["prompts_in"] = len(problems)
    write_groups(vdir, groups, prompts, problems, config.groups_per_shard)
    write_single(vdir.path / "sft.parquet", pools, prompts, problems, with_teacher=False)
    write_single(vdir.path / "sft-mix.parquet", pools, prompts, problems, with_teacher=True)
    count = max(1, -(-len(groups) // config.groups_per_shard))
    singles = [vdir.path / "sft.parquet", vdir.path / "sft-mix.parquet"]
    manifest = store.finalize(vdir, count, {"summary": counts}, singles)
    assert manifest is not None
    done_line(console, groups_line(manifest))
    return manifest


def build_all(config: BuildGroupsConfig, pools: dict[str, Candidates]) -> tuple[list[tuple[str, list[dict]]], dict]:
    """Compose, score and filter every prompt's group; return the groups and the counts."""
    dropped, zero, fills = Counter(), Counter(), Counter()
    groups: list[tuple[str, list[dict]]] = []
    for pid in sorted(pools):
        members, reason, filled = compose(pools[pid], config, pid)
        if members is None:
            dropped[reason] += 1
            continue
        fills.update(filled)
        rewards = np.array([m["reward"] for m in members])
        advantages = group_advantages(rewards, config.std, config.eps)
        if not np.all(np.isfinite(advantages)):  # unreachable with finite rewards; never write a NaN
            raise GftError(f"non-finite advantage in the group of prompt {pid}: rewards {rewards.tolist()}")
        if np.all(rewards == rewards[0]):
            zero["all correct" if rewards[0] == 1.0 else "all wrong" if rewards[0] == 0.0 else "all equal"] += 1
            if not config.keep_zero_variance:
                continue
        groups.append((pid, [{**m, "advantage": float(a)} for m, a in zip(members, advantages, strict=True)]))
    return groups, {"groups_out": len(groups), "dropped": dict(dropped), "zero_variance": dict(zero),
                    "expert_fills": dict(fills), **group_stats(groups)}


def group_stats(groups: list[tuple[str, list[dict]]]) -> dict:
    rows = [m for _, members in groups for m in members]
    per_source = {}
    for source in schema.SOURCES:
        mine = [m for m in rows if m["source"] == source]
        if mine:
            per_source[source] = {"rows": len(mine), "mean_reward": float(np.mean([m["reward"] for m in mine])),
                                  "positive_advantage_share": float(np.mean([m["advantage"] > 0 for m in mine]))}
    adv = np.array([m["advantage"] for m in rows]) if rows else np.zeros(0)
    quantiles = np.percentile(adv, [0, 25, 50, 75, 100]).tolist() if adv.size else [0.0] * 5
    return {"by_source": per_source,
            "advantage": {"min": quantiles[0], "p25": quantiles[1], "median": quantiles[2], "p75": quantiles[3],
                          "max": quantiles[4], "positive_share": float((adv > 0).mean()) if adv.size else 0.0,
                          "zero_share": float((adv == 0).mean()) if adv.size else 0.0}}


def rows_table(rows: list[dict]) -> pa.Table:
    cols = {name: [r[name] for r in rows] for name in schema.GROUPS.names}
    return schema.table(cols, schema.GROUPS)


def training_row(group_id: int, pid: str, member: dict, prompts: dict, problems: dict, advantage: float) -> dict:
    return {"group_id": group_id, "prompt_id": pid, "question": problems[pid]["question"], "prompt": prompts[pid],
            "completion": member["completion"], "source": member["source"], "sample_idx": member["sample_idx"],
            "reward": member["reward"], "advantage": advantage, "logprobs": member["logprobs"]}


def write_groups(vdir: store.VersionDir, groups: list[tuple[str, list[dict]]], prompts: dict, problems: dict,
                 per_shard: int) -> None:
    """Groups in shards of ``per_shard`` groups (one empty shard if there are none)."""
    count = max(1, -(-len(groups) // per_shard))
    done = vdir.done_shards()
    for k in range(count):
        if k in done:
            continue
        rows = [training_row(k * per_shard + i, pid, m, prompts, problems, m["advantage"])
                for i, (pid, members) in enumerate(groups[k * per_shard : (k + 1) * per_shard]) for m in members]
        store.write_table(vdir.shard_path(k, count), rows_table(rows))


def write_single(path: Path, pools: dict[str, Candidates], prompts: dict, problems: dict, with_teacher: bool) -> None:
    """Single-trajectory training set: each row its own group, advantage 1 (SFT / DFT ignore it)."""
    if store.readable_parquet(path):
        return
    rows: list[dict] = []
    for pid in sorted(pools):
        correct_teacher = [t for t in pools[pid].teacher if t["reward"] == 1.0] if with_teacher else []
        members = pools[pid].expert[:1] + correct_teacher
        rows.extend(training_row(len(rows), pid, m, prompts, problems, 1.0) for m in members)
    store.write_table(path, rows_table(rows))

