"""A base / aligned checkpoint pair: the weight changes alignment made, unit by unit.

``ila score --model BASE --from-model ALIGNED`` (docs/method.md, "ILA on an update you
already have") gates Delta_i = W_i(aligned) - W_i(base) of every unit, as a full-delta
stage 1 does. The aligned model is never loaded whole: its safetensors files are opened
lazily and each unit's matrix is read, subtracted and dropped, so peak memory is one model
plus the unit deltas. Embeddings, norms and the LM head are not units and are not read, so
a pair whose vocabularies differ (an instruct model with added chat tokens) still ranks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ila.config import setting
from ila.core.deltas import unit_weight
from ila.core.layers import LayerMap
from ila.errors import IlaError
from ila.files import read_json

__all__ = ["aligned_unit_deltas", "model_directory"]

FLAG = setting("source", "from_model")


def model_directory(model: str) -> Path:
    """A local directory holding ``model``'s config.json and safetensors files: the
    directory itself, ila's conversion of a GGUF file, or a hub snapshot (downloaded,
    weights and configs only, unless offline and absent, which is refused)."""
    from ila.model.loading import EMBEDDED_MODEL, _looks_like_path, _resolve

    path = Path(model).expanduser()
    if not path.exists() and (model.endswith(".gguf") or _looks_like_path(model)):
        raise IlaError(FLAG, f" {model} does not exist; pass the aligned model's directory")
    if model == EMBEDDED_MODEL or model.endswith(".gguf") or path.exists():
        source = Path(_resolve(model, None))
        if not source.is_dir():
            raise IlaError(FLAG, f" {model} is a file; pass a model directory or a .gguf file")
        return source
    _resolve(model, None)  # refuses a missing path or an absent hub id when offline
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors"]))


def _tensor_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: directory / file for name, file in weight_map.items()}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise IlaError(
            FLAG,
            f" {directory} holds no .safetensors weights; save the aligned model with "
            "save_pretrained(..., safe_serialization=True)",
        )
    from safetensors import safe_open

    found = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            found.update(dict.fromkeys(handle.keys(), file))
    return found


def _check_architecture(base_config: Any, directory: Path, aligned: str) -> None:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise IlaError(FLAG, f" {aligned} has no config.json; pass a saved model directory")
    theirs = read_json(config_file)
    if not isinstance(theirs, dict):
        raise IlaError(FLAG, f" {config_file} holds no JSON object; re-save the aligned model")
    ours = {"model_type": base_config.model_type, "architectures": base_config.architectures}
    for key, value in ours.items():
        if value and theirs.get(key) and theirs.get(key) != value:
            raise IlaError(
                FLAG,
                f" {aligned} is a {theirs.get(key)} model and ",
                setting("model", "model"),
                f" a {value} model ({key}); pass the aligned version of ",
                setting("model", "model"),
                "'s architecture",
            )


@torch.no_grad()
def aligned_unit_deltas(
    base: nn.Module, layer_map: LayerMap, aligned: str
) -> dict[str, torch.Tensor]:
    """Delta_i = W_i(aligned) - W_i(base) for every unit of ``layer_map``, in the base
    weights' dtype and device (computed in float32). Refused with one line: another
    architecture, a unit the aligned checkpoint does not hold, a matrix of another shape."""
    from safetensors import safe_open

    directory = model_directory(aligned)
    _check_architecture(base.config, directory, aligned)
    files = _tensor_files(directory)
    deltas: dict[str, torch.Tensor] = {}
    for unit in layer_map.units:
        key = f"{unit.module_path}.weight"
        if key not in files:
            raise IlaError(
                FLAG,
                f" {aligned} has no tensor {key} (unit {unit.name} of ",
                setting("model", "model"),
                "); pass a fine-tune of ",
                setting("model", "model"),
                " with the same module names",
            )
        weight = unit_weight(base, unit.module_path)
        with safe_open(str(files[key]), framework="pt") as handle:
            theirs = handle.get_tensor(key)
        if tuple(theirs.shape) != tuple(weight.shape):
            raise IlaError(
                FLAG,
                f" {aligned}: {key} has shape {tuple(theirs.shape)}, ",
                setting("model", "model"),
                f"'s {tuple(weight.shape)}; pass a fine-tune of ",
                setting("model", "model"),
                " itself",
            )
        change = theirs.to(weight.device, torch.float32) - weight.float()
        deltas[unit.name] = change.to(weight.dtype)
    return deltas
