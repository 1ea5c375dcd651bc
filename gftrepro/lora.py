"""``--lora-rank``: train low-rank adapters (PEFT's LoRA) instead of every weight, for every method.

- Only the adapters train: the optimizer holds the adapter parameters alone, and checkpoints hold the
  adapters and their optimizer state (``trainable_state``); resuming loads them over the frozen base.
- The loss and the fused LM-head pass are unchanged: the policy runs the PEFT-wrapped model, whose
  linear layers add their low-rank update.
- The reference (KL to the base, ASFT's anchor) is the same model with its adapters disabled
  (``AdaptersOff``), so no second copy of the weights is held.
- The saved ``model/`` is merged (``merged_state``: W + scale * B @ A per adapted layer, computed without
  touching the live weights) into a plain transformers folder that both backends load; the adapter is
  saved beside it in ``adapter/`` (PEFT's ``save_pretrained``). On-policy training syncs merged weights
  to the sampler the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gftrepro.errors import GftError


def wrap(net: nn.Module, config: Any) -> nn.Module:
    """The PEFT model with LoRA adapters on ``config.lora_target`` (``all-linear``: every linear layer but
    the LM head)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise GftError("--lora-rank needs the peft package: install with pip install 'gft[lora]'") from None
    target = config.lora_target[0] if config.lora_target == ["all-linear"] else list(config.lora_target)
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=target, bias="none", task_type="CAUSAL_LM")
    try:
        peft_model = get_peft_model(net, lora)
    except ValueError as e:  # e.g. a target module the model does not have
        raise GftError(f"--lora-target {','.join(config.lora_target)}: {str(e).splitlines()[0]}") from None
    return peft_model


def is_peft(net: nn.Module) -> bool:
    return hasattr(net, "disable_adapter") and hasattr(net, "get_base_model")


class AdaptersOff(nn.Module):
    """The PEFT model with its adapters disabled: the base model, sharing the frozen weights (the PEFT model
    is held outside the module tree, so this adds no parameters)."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self.held = [peft_model]

    @property
    def config(self):
        """The base model's config (what ``prefix.full_attention`` and the shared-prompt pass read)."""
        return self.held[0].get_base_model().config

    def get_decoder(self):
        return _DecoderAdaptersOff(self.held[0])

    def get_output_embeddings(self):
        return self.held[0].get_base_model().get_output_embeddings()


class _DecoderAdaptersOff:
    """The base model's decoder, called with the adapters disabled; ``config`` as the decoder's own, so the
    shared-prompt pass (``prefix.shared_hidden``) runs on it as on a plain decoder."""

    def __init__(self, peft_model: nn.Module):
        self.peft_model = peft_model
        self.decoder = peft_model.get_base_model().get_decoder()
        self.config = self.decoder.config

    def __call__(self, **kwargs):
        with self.peft_model.disable_adapter():
            return self.decoder(**kwargs)


@torch.no_grad()
def merged_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """The merged weights under the base model's own names (``...q_proj.weight``), the live model untouched."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    out = {k.replace(".base_layer.", "."): v.detach() for k, v in base.state_dict().items() if "lora_" not in k}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            weight = module.get_base_layer().weight
            delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
            out[f"{name}.weight"] = (weight + delta.to(weight.dtype)).detach()
    return out


def trainable_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in net.named_parameters() if v.requires_grad}


def load_trainable(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    wanted = {k for k, v in net.named_parameters() if v.requires_grad}
    if set(state) != wanted:
        missing, extra = sorted(wanted - set(state)), sorted(set(state) - wanted)
        raise ValueError(f"adapter checkpoint does not match the model (missing {missing[:2]}, unexpected {extra[:2]})")
    net.load_state_dict(state, strict=False)


def trainable_count(net: nn.Module) -> tuple[int, int]:
    train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return train, sum(p.numel() for p in net.parameters())
