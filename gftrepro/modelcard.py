"""The model card of a trained model folder: ``<train version>/model/README.md``, as hub users know it.

Written by the train stage after the weights (so it is listed in the train manifest with its hash):
YAML front matter (``library_name``, ``base_model``, ``tags``), then the method and its formula,
the data it trained on with a fingerprint of exactly those files (sha256 over their recorded
hashes), the training (steps, tokens, processes, time), the last step's metrics and the resolved
config. Evaluation comes after training (``gft eval`` writes its own ``report-n<N>.md``), so the
card says how to evaluate rather than carrying numbers it cannot have yet.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gftrepro import config as cfg
from gftrepro import store
from gftrepro.methods import REGISTRY

FORMULAS = {
    "one": "SFT: loss -log p(y_t)",
    "p": "DFT: loss -sg(p) log p(y_t)",
    "adv-dcr": "GFT: loss -A_i C(p) log p(y_t), A_i the group-normalised advantage (Group Advantage Learning), "
               "C(p) = sg(p) if p < tau else 1 (Dynamic Coefficient Rectification)",
    "adv": "GFT without DCR: loss -A_i log p(y_t)",
    "dcr": "GFT without GAL: loss -C(p) log p(y_t) (on-policy: -R_i C(p) log p)",
    "ratio": "GRPO: loss -min(r A_i, clip(r, 1 - eps, 1 + eps) A_i), r = pi_theta / pi_old",
    "proximal": "PSFT: loss -min(r, clip(r, 1 - eps, 1 + eps_high)), advantage 1, r = pi_theta / pi_old",
    "pear": "PEAR: loss -sg(G_t) log p(y_t), G_t the importance weight pi_theta / pi_teacher",
}
FILES_OF = {"groups": None, "sft": ["sft.parquet"], "sft-mix": ["sft-mix.parquet"], "teacher": ["sft-mix.parquet"]}


def formula(method: str) -> str:
    m = REGISTRY[method]
    text = FORMULAS[m.coefficient]
    if m.anchor:
        text = "ASFT: " + text.split(": ", 1)[1] + " + lambda KL(pi_ref || pi_theta) over the vocabulary"
    if m.no_teacher:
        text = "GFT (no mix): " + text.split(": ", 1)[1] + ", groups without teacher members"
    return text


def fingerprint(run_dir: Path, stage: str, version: str, names: list[str] | None) -> str:
    """sha256 over the recorded hashes of the files read (``names``; None: every shard of the version)."""
    manifest = json.loads((run_dir / stage / version / store.MANIFEST).read_text())
    entries = manifest.get("shards", []) if names is None else \
        [f for f in manifest.get("files", []) + manifest.get("shards", []) if f["name"] in names]
    blob = json.dumps(sorted((f["name"], f["sha256"]) for f in entries)).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def card(config: Any, inputs: dict, summary: dict, last: dict, run_dir: Path) -> str:
    base = inputs.get("model", {}).get("ref", config.model)
    if config.is_online:
        source = ("verify", inputs["verify"], None)
        data = f"on-policy: prompts, expert and teacher responses of verify {inputs['verify']}, self samples " \
               f"drawn every step (group {':'.join(map(str, config.group))})"
    else:
        source = ("build-groups", inputs["build-groups"], FILES_OF[config.dataset])
        data = f"{config.dataset} of build-groups {inputs['build-groups']}"
    try:
        data += f"; fingerprint {fingerprint(run_dir, *source)} (sha256 over the files' recorded hashes)"
    except (OSError, KeyError, ValueError):
        data += "; fingerprint unavailable (upstream manifest unreadable)"
    metrics = {k: v for k, v in last.items() if isinstance(v, int | float) and k != "step"}
    rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items()))
    tokens = summary.get("tokens")
    yaml_config = cfg.to_yaml(config).rstrip()
    tags = list(dict.fromkeys(["gft", config.method] + (["on-policy"] if config.is_online else [])))
    return f"""---
library_name: transformers
base_model: {json.dumps(base)}
tags: [{", ".join(tags)}]
---

# {config.method} on {base}

Trained with `gft train`, the staged pipeline for Group Fine-Tuning (arXiv 2604.14258) and its baselines.

- **Method**: `{config.method}` -- {formula(config.method)}
- **Base model**: `{base}` (fingerprint {inputs.get("model", {}).get("fingerprint", "-")})
- **Data**: {data}
- **Training**: {summary["steps"]} optimizer steps ({summary.get("skipped_steps", 0)} skipped), \
{summary.get("sequences", "-")} sequences{f", {tokens:,} response tokens" if tokens else ""}, \
{summary.get("world_size", 1)} process(es)
- **Evaluate**: `gft eval --model <this folder> --pass-k 128` (its report lands in the eval version)

## Last step

| metric | value |
|---|---|
{rows}

## Config (resolved)

```yaml
{yaml_config}
```
"""


def write(path: Path, config: Any, vdir: store.VersionDir, summary: dict, metrics: list[dict]) -> Path:
    inputs = json.loads((vdir.path / store.CONFIG).read_text())["inputs"]
    tokens = sum(int(m.get("tokens", 0)) for m in metrics)
    text = card(config, inputs, {**summary, "tokens": tokens}, metrics[-1] if metrics else {}, vdir.path.parents[1])
    store.atomic_write_bytes(path, text.encode())
    return path
