"""Stage 1 as a full fine-tune: each unit's weight change Delta_i = W_i(T) - W_i(0).

docs/method.md, "Stage 1 as a full fine-tune": with ``--stage1-method full`` stage 1 trains
every unit's weight matrix (not a LoRA adapter) to the epsilon-stable point T, and stage 2
gates the change each unit's weights made, Delta_i = W_i(T) - W_i(0), exactly as it gates
a LoRA update (:func:`ila.core.gates.attach_delta_gates`). The price is memory: the
starting weights W_i(0) of every unit are kept beside the trained ones during stage 1 (a
second copy of the unit weights; `ila plan` counts it), and stage 2 holds Delta_i in
their place while the model's own weights are put back to W_i(0).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ila.config import setting
from ila.core.layers import LayerMap
from ila.errors import IlaError

__all__ = [
    "DELTAS_FILE",
    "delta_norms",
    "load_deltas",
    "load_unit_weights",
    "save_deltas",
    "snapshot_unit_weights",
    "take_deltas",
    "unit_weight",
]

DELTAS_FILE = "deltas.safetensors"


def unit_weight(model: nn.Module, module_path: str) -> nn.Parameter:
    """The weight matrix of the linear module at ``module_path``."""
    weight = getattr(model.get_submodule(module_path), "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
        raise IlaError(f"{module_path} has no 2-D weight matrix to fine-tune in stage 1")
    return weight


@torch.no_grad()
def snapshot_unit_weights(model: nn.Module, layer_map: LayerMap) -> dict[str, torch.Tensor]:
    """W_i(0) of every unit: a copy, on the weights' device and in their dtype."""
    return {
        unit.name: unit_weight(model, unit.module_path).detach().clone() for unit in layer_map.units
    }


@torch.no_grad()
def delta_norms(
    model: nn.Module, layer_map: LayerMap, initial: dict[str, torch.Tensor]
) -> torch.Tensor:
    """||W_i - W_i(0)||_F for every unit, in LayerMap order (CPU float)."""
    norms = [
        (unit_weight(model, u.module_path).float() - initial[u.name].float()).norm()
        for u in layer_map.units
    ]
    return torch.stack(norms).cpu()


@torch.no_grad()
def take_deltas(
    model: nn.Module, layer_map: LayerMap, initial: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Delta_i = W_i - W_i(0) of every unit; the model's unit weights go back to W_i(0).

    ``initial`` is consumed: its tensors are copied into the model and dropped, so at no
    point are three copies of the unit weights held.
    """
    deltas = {}
    for unit in layer_map.units:
        weight = unit_weight(model, unit.module_path)
        start = initial.pop(unit.name)
        deltas[unit.name] = weight.detach() - start
        weight.copy_(start)
    return deltas


def save_deltas(path: Path, deltas: dict[str, torch.Tensor], layer_map: LayerMap) -> None:
    """Write the deltas (safetensors, keyed by unit name) with the model layout beside them."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in deltas.items()}
    save_file(tensors, str(path), metadata={"layout": json.dumps(layer_map.to_dict())})


def load_deltas(
    path: Path, layer_map: LayerMap, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """The deltas saved by :func:`save_deltas`, checked against ``layer_map``."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise IlaError(f"{path}: file not found; the stage-1 deltas are incomplete")
    deltas = load_file(str(path), device=str(device))
    missing = [u.name for u in layer_map.units if u.name not in deltas]
    if missing or len(deltas) != len(layer_map.units):
        raise IlaError(
            f"{path}: holds deltas for other units than this model's ({missing[:3]} missing); "
            "was the run made with other ",
            setting("lora", "module_types"),
            " or another model?",
        )
    return deltas


@torch.no_grad()
def load_unit_weights(model: nn.Module, layer_map: LayerMap, folder: Path) -> None:
    """Load the unit weights of a Trainer checkpoint of a full stage 1 into ``model``."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    elif (folder / "model.safetensors").is_file():
        weight_map = None
    else:
        raise IlaError(f"{folder}: holds no model weights; the stage-1 checkpoint is incomplete")
    for unit in layer_map.units:
        key = f"{unit.module_path}.weight"
        file = folder / (weight_map.get(key, "") if weight_map else "model.safetensors")
        if not file.is_file():
            raise IlaError(f"{folder}: has no weight for unit {unit.name}")
        with safe_open(str(file), framework="pt") as handle:
            available = handle.keys()
            if key not in available:
                raise IlaError(f"{folder}: has no weight for unit {unit.name}")
            weight = unit_weight(model, unit.module_path)
            weight.copy_(handle.get_tensor(key).to(weight.device, weight.dtype))
