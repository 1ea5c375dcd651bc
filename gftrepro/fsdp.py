"""FSDP for ``gft train``: parameters, gradients and optimizer states sharded over the processes.

``--fsdp`` applies PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) directly: one unit per
decoder layer, then the ``Policy`` wrapper as the root unit (it holds the embeddings, the final
norm and the LM head, which the chunked log-prob function reads inside the root's forward). Launch
it like any multi-process run (``accelerate launch`` or ``torchrun``); it also runs on CPU over
gloo, which is how the tests check it against one process.

- Mixed precision as FSDP does it: with ``--dtype bfloat16`` the all-gathered parameters are cast
  to bf16 for compute once per unit, gradients are reduced in fp32 and the optimizer updates fp32
  master shards (no per-matmul autocast); otherwise everything stays fp32.
- Activation checkpointing: ``--gradient-checkpointing`` (the model's own, per decoder layer).
- Gradient accumulation over micro-batches skips the reduce-scatter until the last one.
- The saved model, checkpoints and the on-policy sampler use full tensors gathered from the shards
  (``torch.distributed.checkpoint.state_dict`` with ``full_state_dict``), so a checkpoint holds whole
  tensors; resuming needs the same process count and sharding (checked, as for DDP).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

PREFIX = "model."  # Policy keeps the transformers model as .model


def shard(policy: nn.Module, device_type: str, world: int, bf16: bool) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    layers = getattr(policy.model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError("FSDP needs a decoder with .layers (every transformers causal LM gft trains has them)")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(policy, mesh=mesh, mp_policy=mp)
    return policy


@contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate this micro-batch's gradient locally (no reduce-scatter)."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Every parameter whole while the block runs (for computing outside the root's forward: the KL)."""
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def full_model_state(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The transformers model's full state dict on every process (a collective: call on all)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    sd = {k.removeprefix(PREFIX): v for k, v in sd.items()}
    net = policy.model
    if getattr(net.config, "tie_word_embeddings", False):  # the gather copies a tied head: keep the one tensor
        head = next(n for n, m in net.named_modules() if m is net.get_output_embeddings())
        sd.pop(f"{head}.weight", None)
    return sd


def full_state(policy: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full model and optimizer state dicts (optimizer keyed by parameter name), on every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(policy, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(policy: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict[str, Any],
                    optim_sd: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(policy, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True))


def grad_norm(total: torch.Tensor) -> float:
    """clip_grad_norm_'s result as a number (a DTensor under FSDP)."""
    return float(total.full_tensor() if hasattr(total, "full_tensor") else total)
