"""Resumable training state in safe formats only: nothing in a checkpoint is unpickled.

A run folder may have been copied from another machine or a shared filesystem; resuming it must
not execute what is inside. So the checkpoint is tensors in safetensors and everything else in
JSON (docs/DESIGN.md section 3, checkpoints)::

    checkpoint/
        model.safetensors        the weights (tied tensors stored once)
        optimizer.safetensors    every per-parameter state tensor (AdamW: step, exp_avg, exp_avg_sq; torchao's
                                 8-bit states as their parts: uint8 codes, block scales, code map)
        optimizer.json           param_groups and any non-tensor state (what rebuilds an 8-bit state)
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

PACKED = {"OptimState8bit": ("torchao.optim.subclass_8bit", ("codes", "scale", "qmap"))}  # the only ones rebuilt


def save_optimizer(sd: dict[str, Any], folder: Path) -> None:
    """An optimizer state dict (keyed by parameter index, or by name under FSDP) as tensors + JSON.

    torchao's 8-bit AdamW states (``OptimState8bit``) are stored as their parts (uint8 codes, block
    scales, the code map) under ``key.name#part``, with what rebuilds them in the JSON; a tensor-valued
    hyper-parameter (torchao keeps lr as a tensor) is stored as its number."""
    tensors, scalars = {}, {}
    for key, state in sd["state"].items():
        for name, value in state.items():
            kind = type(value).__name__
            if kind in PACKED:
                for part in PACKED[kind][1]:
                    tensors[f"{key}.{name}#{part}"] = getattr(value, part).detach().contiguous().cpu()
                scalars[f"{key}.{name}"] = {"packed": kind, "signed": bool(value.signed), "dtype": str(value.dtype)}
            elif torch.is_tensor(value):
                tensors[f"{key}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{key}.{name}"] = value
    groups = numbers(sd["param_groups"])
    save_file(tensors, str(folder / "optimizer.safetensors"))
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": groups, "scalars": scalars}))


def load_optimizer(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int | str, dict[str, Any]] = {}
    tensors = {k: v.clone() for k, v in load_file(str(folder / "optimizer.safetensors")).items()}  # not mmapped
    parts = {k: v for k, v in tensors.items() if "#" in k}
    for key, value in [*((k, v) for k, v in tensors.items() if "#" not in k), *meta["scalars"].items()]:
        if isinstance(value, dict) and "packed" in value:
            value = unpack_state(key, value, parts)
        param, name = key.rsplit(".", 1)  # a parameter name has dots; a state entry (exp_avg) has none
        state.setdefault(int(param) if param.isdigit() else param, {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def unpack_state(key: str, spec: dict[str, Any], parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """A quantized optimizer state rebuilt from its stored parts (only the classes in ``PACKED``)."""
    import importlib

    if spec["packed"] not in PACKED:
        raise ValueError(f"unknown packed optimizer state '{spec['packed']}' for {key}")
    module, names = PACKED[spec["packed"]]
    cls = getattr(importlib.import_module(module), spec["packed"])
    dtype = getattr(torch, str(spec["dtype"]).removeprefix("torch."))
    return cls(*(parts[f"{key}#{n}"] for n in names), bool(spec["signed"]), dtype=dtype)


def numbers(value: Any) -> Any:
    """JSON-able: tensors (torchao keeps lr, and so the scheduler its base lrs, as tensors) become numbers."""
    if torch.is_tensor(value):
        return value.item()
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [numbers(v) for v in value]
    return value


def tensors_like(value: Any, live: Any) -> Any:
    """Undo ``numbers`` where the live object holds tensors, so a resumed run computes as an unbroken one."""
    if torch.is_tensor(live):
        return torch.tensor(value, dtype=live.dtype, device=live.device)
    if isinstance(live, list | tuple) and isinstance(value, list) and len(live) == len(value):
        return [tensors_like(v, x) for v, x in zip(value, live, strict=True)]
    return value


def load_optimizer_into(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """``optimizer.load_state_dict``, keeping hyper-parameters the optimizer holds as tensors (torchao's lr)."""
    live = [{k: v for k, v in g.items() if torch.is_tensor(v)} for g in optimizer.param_groups]
    optimizer.load_state_dict(sd)
    for group, tensors in zip(optimizer.param_groups, live, strict=True):
        for k, v in tensors.items():
            group[k] = tensors_like(group[k], v)


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
        from gftrepro.lora import is_peft, trainable_state

        if is_peft(net):  # LoRA: the adapters alone (the base weights are frozen and reloaded from the model)
            save_file(trainable_state(net), str(folder / "model.safetensors"))
        else:
            save_model(net, str(folder / "model.safetensors"))
        save_optimizer(optimizer.state_dict(), folder)
    if main:
        (folder / "scheduler.json").write_text(json.dumps(numbers(scheduler.state_dict())))
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
            from gftrepro.lora import is_peft, load_trainable

            if is_peft(net):
                load_trainable(net, load_file(str(folder / "model.safetensors")))
            else:
                load_model(net, str(folder / "model.safetensors"))  # strict; tied tensors stored once are fine
            load_optimizer_into(optimizer, load_optimizer(folder))
        live = scheduler.state_dict()
        saved = json.loads((folder / "scheduler.json").read_text())
        scheduler.load_state_dict({k: tensors_like(v, live.get(k)) for k, v in saved.items()})
        load_rng(folder, rank)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise GftError(f"cannot resume from {folder}: {type(e).__name__}: {e} (delete it to start over)") from None
