"""The stage-1 LoRA adapter: build it on chosen units, measure each unit's update.

Unit i's LoRA update is Delta_i = (alpha / r) B_i A_i (docs/method.md, "Notation"). Its
Frobenius norm is computed without forming the d_out x d_in product:
||B A||_F^2 = trace((B^T B)(A A^T)), two r x r matrices.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ila.config import LoraSettings, setting
from ila.core.layers import LayerMap, Unit, peft_target_modules
from ila.errors import IlaError
from ila.train.sharding import whole, whole_tensors

__all__ = [
    "add_lora",
    "lora_state",
    "lora_update_norms",
    "peft_wrapping",
    "read_unit_lora",
    "set_unit_lora",
    "unit_lora_layer",
]


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Wrap a model with peft without transformers' FutureWarning about
    ``is_gradient_checkpointing``: peft (0.21) reads that deprecated property of the model
    whenever it wraps one, so the warning is about peft's internals, which no user of ila
    can act on; every other warning passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


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
        with peft_wrapping():
            return get_peft_model(model, config)


def read_unit_lora(
    folder: Path, units: Sequence[Unit], settings: LoraSettings
) -> dict[str, torch.Tensor]:
    """The LoRA A and B weights of ``units`` in the adapter saved in ``folder`` (peft
    ``save_pretrained``), checked to fit a LoRA of ``settings`` on ``units``.

    For ``ila finetune --init-from-stage1`` (docs/method.md, "Stage 3"): the fine-tune
    starts where stage 1 left the selected units. Load them with :func:`set_unit_lora`.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise IlaError(f"{folder} holds no saved LoRA adapter (adapter_config.json and weights)")
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    theirs = (saved.get("r"), saved.get("lora_alpha"))
    if theirs != (settings.rank, settings.alpha):
        raise IlaError(
            f"the adapter in {folder} has rank {theirs[0]} and alpha {theirs[1]}, this "
            f"fine-tune rank {settings.rank} and alpha {settings.alpha}; pass ",
            setting("lora", "rank"),
            f" {theirs[0]} ",
            setting("lora", "alpha"),
            f" {theirs[1]} to start from it",
        )
    weights = load_file(str(weights_file))
    chosen: dict[str, torch.Tensor] = {}
    for unit in units:
        prefix = f"base_model.model.{unit.module_path}.lora_"
        found = {k: v for k, v in weights.items() if k.startswith(prefix)}
        if not found:
            raise IlaError(
                f"the adapter in {folder} has no LoRA on unit {unit.name}; it was trained "
                "on other units (another ",
                setting("lora", "module_types"),
                "?)",
            )
        chosen.update(found)
    return chosen


def set_unit_lora(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load LoRA weights from :func:`read_unit_lora` into ``model`` (from :func:`add_lora`)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, weights)
    if list(getattr(result, "unexpected_keys", [])):
        raise IlaError(
            f"the stage-1 LoRA weights do not fit this model's LoRA layers "
            f"({list(result.unexpected_keys)[:3]})"
        )


def lora_state(model: nn.Module, *, keep: bool = True) -> dict[str, torch.Tensor]:
    """The LoRA weights of a peft ``model`` by state-dict name, whole and on the CPU, as
    peft's ``save_pretrained(state_dict=...)`` takes them. Under FSDP they are gathered
    (every process must call this) and only the process that writes (``keep``) holds them."""
    lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    return whole_tensors(lora, keep=keep)


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
        # Whole under FSDP (gathered: a collective, every process computes the norms).
        a = whole(layer.lora_A[adapter_name].weight).float()  # (r, d_in)
        b = whole(layer.lora_B[adapter_name].weight).float()  # (d_out, r)
        squared = torch.trace((b.T @ b) @ (a @ a.T)).clamp_min(0.0)
        norms.append(layer.scaling[adapter_name] * squared.sqrt())
    return torch.stack(norms).cpu()
