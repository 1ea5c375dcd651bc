"""Resumable training state in safe formats only: nothing in a checkpoint is unpickled.

A run folder may have been copied from another machine or a shared filesystem; resuming it must
not execute what is inside. So the checkpoint is tensors in safetensors and everything else in
JSON (docs/DESIGN.md section 3, checkpoints)::

    checkpoint/
        model.safetensors        the weights (tied tensors stored once)
        optimizer.safetensors    every per-parameter state tensor (AdamW: step, exp_avg, exp_avg_sq)
        optimizer.json           param_groups and any non-tensor state
        scheduler.json           the LR scheduler's state_dict (plain numbers)
        rng-<rank>.safetensors   torch CPU (and CUDA) generator states of each process
        rng-<rank>.json          Python's and NumPy's generator states of each process
        trainer_state.json       step, total steps, skipped steps and the settings it was written under
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from gftrepro.errors import GftError


def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"], "scalars": scalars}))


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*load_file(str(folder / "optimizer.safetensors")).items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_rng(folder: Path, rank: int) -> None:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    save_file(tensors, str(folder / f"rng-{rank}.safetensors"))
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    (folder / f"rng-{rank}.json").write_text(json.dumps({
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}))


def load_rng(folder: Path, rank: int) -> None:
    tensors = load_file(str(folder / f"rng-{rank}.safetensors"))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"]))
    states = json.loads((folder / f"rng-{rank}.json").read_text())
    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save(folder: Path, rank: int, main: bool, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: Any) -> None:
    """This process's part of a checkpoint into ``folder`` (which exists): the main process writes the
    weights, optimizer and scheduler (replicated under DDP), every process its generator states."""
    if main:
        save_model(net, str(folder / "model.safetensors"))
        save_optimizer(optimizer, folder)
        (folder / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    save_rng(folder, rank)


def load(folder: Path, rank: int, net: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Restore what ``save`` wrote; any unreadable part is one clear error naming the checkpoint."""
    try:
        load_model(net, str(folder / "model.safetensors"))  # strict; tied tensors stored once are fine
        load_optimizer(optimizer, folder)
        scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
        load_rng(folder, rank)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise GftError(f"cannot resume from {folder}: {type(e).__name__}: {e} (delete it to start over)") from None

