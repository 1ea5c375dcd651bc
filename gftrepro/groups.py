"""Groups and their advantages (GAL), shared by ``build-groups`` and on-policy training.

- the candidates of every prompt: expert solutions and verified completions, by source;
- ``compose``: the K members of one group (a seeded choice among surplus candidates, missing expert
  slots filled by correct teacher completions or repeats);
- ``group_advantages``: A_k = (R_k - mean R) / (std R + eps) over a group (docs/DESIGN.md section 2);
- ``without_source``: groups with one source's members left out, advantages normalised again (GFT no mix).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow.parquet as pq

from gftrepro import store
from gftrepro.errors import GftError

STD_MODES = ("unbiased", "population", "none")
FILLS = ("teacher", "repeat")
UNUSABLE = ("error", "timeout")


class GroupShape(Protocol):
    """What ``compose`` needs of a group's settings (``BuildGroupsConfig``, or on-policy training's ``GroupSpec``)."""

    n_expert: int
    n_teacher: int
    n_self: int
    seed: int
    expert_fill: list[str]


@dataclass(frozen=True)
class GroupSpec:
    n_expert: int
    n_teacher: int
    n_self: int
    seed: int = 0
    expert_fill: tuple[str, ...] = FILLS


def group_advantages(rewards: np.ndarray, std: str = "unbiased", eps: float = 1e-6) -> np.ndarray:
    """A_k = (R_k - mean R) / (std R + eps) for one group; all-equal rewards (or K = 1) give zeros.

    ``std``: ``unbiased`` (Bessel, n - 1: the authors' code), ``population`` (n: TRL), ``none``
    (mean-centring only).
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.size < 2 or np.all(r == r[0]):
        return np.zeros_like(r)
    centred = r - r.mean()
    if std == "none":
        return centred
    return centred / (r.std(ddof=1 if std == "unbiased" else 0) + eps)


def without_source(rows: list[dict], source: str, std: str, eps: float) -> list[dict]:
    """Group rows (``group_id``, ``source``, ``reward``, ...) without ``source``'s members, each group's
    advantages normalised again over the members left (a group of one gets 0): GFT (no mix) trains on
    GFT's own groups minus their teacher samples."""
    kept: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        if r["source"] != source:
            kept[r["group_id"]].append(r)
    out = []
    for members in kept.values():
        advantages = group_advantages(np.array([m["reward"] for m in members]), std, eps)
        out.extend({**m, "advantage": float(a)} for m, a in zip(members, advantages, strict=True))
    return out


def choose(candidates: list[dict], count: int, seed: int, prompt_id: str, source: str) -> list[dict]:
    """``count`` of ``candidates`` (sorted by sample_idx), a seeded choice when there are more."""
    ordered = sorted(candidates, key=lambda c: c["sample_idx"])
    if len(ordered) <= count:
        return ordered
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{source}".encode()).digest()
    picked = random.Random(int.from_bytes(digest[:8], "little")).sample(range(len(ordered)), count)
    return [ordered[i] for i in sorted(picked)]


@dataclass
class Candidates:
    """Usable candidates of one prompt, by source (rows: sample_idx, completion, reward, ...)."""

    expert: list[dict]
    teacher: list[dict]
    self: list[dict]


def compose(pools: Candidates, config: GroupShape, prompt_id: str) -> tuple[list[dict] | None, str, Counter]:
    """The K responses of one group, or None with the reason it cannot be filled; plus fill counts."""
    fills: Counter = Counter()
    teacher = choose(pools.teacher, config.n_teacher, config.seed, prompt_id, "teacher")
    if len(teacher) < config.n_teacher:
        return None, "too few teacher completions", fills
    selfs = choose(pools.self, config.n_self, config.seed, prompt_id, "self")
    if len(selfs) < config.n_self:
        return None, "too few self completions", fills
    experts = choose(pools.expert, config.n_expert, config.seed, prompt_id, "expert")
    missing = config.n_expert - len(experts)
    for how in config.expert_fill:
        if missing <= 0:
            break
        if how == "teacher":
            taken = {c["sample_idx"] for c in teacher}
            spare = [c for c in pools.teacher if c["reward"] == 1.0 and c["sample_idx"] not in taken]
            extra = choose(spare, missing, config.seed, prompt_id, "teacher-fill")
        else:  # repeat
            extra = [experts[i % len(experts)] for i in range(missing)] if experts else []
        experts, missing = experts + extra, missing - len(extra)
        fills[how] += len(extra)
    if missing > 0:
        return None, "too few expert solutions", Counter()
    return experts + teacher + selfs, "", fills


def read_inputs(run_dir: Path, verify_version: str = "") -> tuple[store.VersionDir, dict[str, store.VersionDir]]:
    """The verify version (named, else the latest complete one) and the sampling versions it scored."""
    verify = store.chosen_version(run_dir, "verify", verify_version)
    sampled = {}
    for stage, version in verify.read_manifest()["inputs"].items():
        sampled[stage.removeprefix("sample-")] = store.chosen_version(run_dir, stage, version)
    return verify, sampled


def load_rewards(verify: store.VersionDir) -> list[dict]:
    rows = []
    for path in verify.shard_paths():
        rows.extend(pq.read_table(path).to_pylist())
    for r in rows:
        if r["reward"] is None or not math.isfinite(r["reward"]) or not 0.0 <= r["reward"] <= 1.0:
            raise GftError(f"reward {r['reward']} of {r['source']} sample {r['sample_idx']} of prompt {r['prompt_id']} "
                           f"in {verify.path} is not a number in [0, 1]")
    return rows


def load_completions(sampled: dict[str, store.VersionDir]) -> dict[tuple[str, str, int], dict]:
    out = {}
    for source, vdir in sampled.items():
        for path in vdir.shard_paths():
            cols = ["prompt_id", "sample_idx", "completion", "finish_reason", "logprobs"]
            for row in pq.read_table(path, columns=cols).to_pylist():
                out[(source, row["prompt_id"], row["sample_idx"])] = row
    return out


def student_settings(sampled: dict[str, store.VersionDir], model: str = "") -> tuple[str, str, str]:
    """(model ref, system prompt, prompt template) the training rows are formatted with."""
    source = sampled.get("self") or next(iter(sampled.values()))
    sample_cfg = source.read_manifest()["config"]
    model = model or (sampled["self"].read_manifest()["config"]["model"] if "self" in sampled else "")
    if not model:
        raise GftError("no sample-self stage to take the student from: pass --model (the model you will train)")
    return model, sample_cfg["system_prompt"], sample_cfg["prompt_template"]


def candidate_pools(rewards: list[dict], completions: dict, problems: dict[str, dict], eos: str,
                    excluded: Counter) -> dict[str, Candidates]:
    """Every prompt's usable responses by source (expert solutions and completions, EOS appended as the trainer
    will see them); unusable verdicts are counted in ``excluded``."""
    pools: dict[str, Candidates] = {}
    for r in rewards:
        if r["status"] in UNUSABLE:
            excluded[f"{r['source']} {r['status']}"] += 1
            continue
        pid, source = r["prompt_id"], r["source"]
        if source == "expert":
            text, logprobs = problems[pid]["solution"] + eos, None
        else:
            c = completions.get((source, pid, r["sample_idx"]))
            if c is None:
                raise GftError(f"reward for {source} sample {r['sample_idx']} of prompt {pid} matches no completion "
                               "(were the sampling folders changed after verify?)")
            stopped = source == "teacher" or c["finish_reason"] == "stop"
            text, logprobs = c["completion"] + (eos if stopped else ""), c["logprobs"]
        pool = pools.setdefault(pid, Candidates([], [], []))
        getattr(pool, source).append({"sample_idx": r["sample_idx"], "completion": text, "reward": r["reward"],
                                      "logprobs": logprobs, "source": source})
    return pools


def groups_line(manifest: dict) -> str:
    """Groups with signal out of prompts in, zero-variance groups by kind, mean reward per sampled source."""
    s = manifest["summary"]
    rewards = ", ".join(f"{src} {st['mean_reward']:.2f}" for src, st in s["by_source"].items() if src != "expert")
    zero = ", ".join(f"{n} zero-var: {kind}" for kind, n in sorted(s["zero_variance"].items()) if n)
    dropped = ", ".join(f"{n} dropped: {reason}" for reason, n in sorted(s.get("dropped", {}).items()) if n)
    line = (f"{s['groups_out']}/{s['prompts_in']} groups" + (f" ({zero})" if zero else "")
            + (f"; {dropped}" if dropped else "") + (f"; reward {rewards}" if rewards else ""))
    if not s["groups_out"]:
        line += ("; no group to train group methods on (sft and sft-mix still can): "
                 + empty_hint(s))
    return line


def empty_hint(summary: dict) -> str:
    """What to change when no group survived, from why the prompts went."""
    dropped = summary.get("dropped", {})
    if any("teacher" in r for r in dropped):
        return "sample more teacher completions (gft sample-teacher --n) or set build-groups n_teacher lower"
    if any("self" in r for r in dropped):
        return "sample more self completions (gft sample-self --n) or set build-groups n_self lower"
    if any("expert" in r for r in dropped):
        return "the problems need expert solutions, or set build-groups n_expert 0"
    return "every group had equal rewards; use more problems, or build-groups keep_zero_variance true"
