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


def save_optimizer(sd: dict[str, Any], folder: Path) -> None:
    """An optimizer state dict (keyed by parameter index, or by name under FSDP) as tensors + JSON."""
    tensors, scalars = {}, {}
    for key, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{key}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{key}.{name}"] = value
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"], "scalars": scalars}))


def load_optimizer(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int | str, dict[str, Any]] = {}
    tensors = {k: v.clone() for k, v in load_file(str(folder / "optimizer.safetensors")).items()}  # not mmapped
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        param, name = key.rsplit(".", 1)  # a parameter name has dots; a state entry (exp_avg) has none
        state.setdefault(int(param) if param.isdigit() else param, {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


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
         scheduler: Any, sharded: torch.nn.Module | None = None) -> None:
    """This process's part of a checkpoint into ``folder`` (which exists): the main process writes the
    weights, optimizer and scheduler (replicated under DDP; gathered whole from the shards of
    ``sharded`` under FSDP, which every process must join), every process its generator states."""
    if sharded is not None:
        from gftrepro import fsdp

        model_sd, optim_sd = fsdp.full_state(sharded, optimizer)
        if main:
            save_file({k: v.contiguous().clone() for k, v in model_sd.items()}, str(folder / "model.safetensors"))
            save_optimizer(optim_sd, folder)
    elif main:
        save_model(net, str(folder / "model.safetensors"))
        save_optimizer(optimizer.state_dict(), folder)
    if main:
        (folder / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
    save_rng(folder, rank)


def load(folder: Path, rank: int, net: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
         sharded: torch.nn.Module | None = None) -> None:
    """Restore what ``save`` wrote; any unreadable part is one clear error naming the checkpoint."""
    try:
        if sharded is not None:
            from gftrepro import fsdp

            fsdp.load_full_state(sharded, optimizer, load_file(str(folder / "model.safetensors")),
                                 load_optimizer(folder))
        else:
            load_model(net, str(folder / "model.safetensors"))  # strict; tied tensors stored once are fine
            optimizer.load_state_dict(load_optimizer(folder))
        scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
        load_rng(folder, rank)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise GftError(f"cannot resume from {folder}: {type(e).__name__}: {e} (delete it to start over)") from None
