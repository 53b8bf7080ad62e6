"""The stage-1 LoRA adapter: build it on chosen units, measure each unit's update.

Unit i's LoRA update is Delta_i = (alpha / r) B_i A_i (docs/method.md, "Notation"). Its
Frobenius norm is computed without forming the d_out x d_in product:
||B A||_F^2 = trace((B^T B)(A A^T)), two r x r matrices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ila.config import LoraSettings
from ila.errors import IlaError
from ila.layers import LayerMap, Unit, peft_target_modules

__all__ = ["add_lora", "lora_update_norms", "unit_lora_layer"]


def add_lora(
    model: nn.Module, units: Sequence[Unit], settings: LoraSettings, *, seed: int
) -> nn.Module:
    """Wrap ``model`` in a peft model with a plain LoRA adapter on exactly ``units``.

    The base weights are frozen by peft; the LoRA A matrices are initialised from
    ``seed`` (B starts at zero, so the wrapped model starts equal to the base model).
    """
    from peft import LoraConfig, get_peft_model

    if not units:
        raise IlaError("no unit selected for LoRA")
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=peft_target_modules(units),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def unit_lora_layer(model: nn.Module, unit: Unit) -> nn.Module:
    """The peft LoRA layer that wraps ``unit`` in ``model`` (a peft model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_submodule(unit.module_path)


@torch.no_grad()
def lora_update_norms(
    model: nn.Module, layer_map: LayerMap, *, adapter_name: str = "default"
) -> torch.Tensor:
    """||Delta_i||_F = (alpha / r) ||B_i A_i||_F for every unit, in LayerMap order (CPU float)."""
    norms = []
    for unit in layer_map.units:
        layer = unit_lora_layer(model, unit)
        a = layer.lora_A[adapter_name].weight.float()  # (r, d_in)
        b = layer.lora_B[adapter_name].weight.float()  # (d_out, r)
        squared = torch.trace((b.T @ b) @ (a @ a.T)).clamp_min(0.0)
        norms.append(layer.scaling[adapter_name] * squared.sqrt())
    return torch.stack(norms).cpu()
