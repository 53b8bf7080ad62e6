"""A model ready for evaluation: the base, with a LoRA adapter or the changed weights
of a full fine-tune applied, checked against the model they were made on
(ila.model.identity)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ila.errors import IlaError
from ila.run_files import CHANGED_WEIGHTS_FILE

__all__ = ["ModelForEval", "load_model_for_eval", "merged_for_inference", "update_attached"]

log = logging.getLogger(__name__)


class ModelForEval(NamedTuple):
    """A model loaded for evaluation, and whether its adapter was made on another model."""

    model: Any
    tokenizer: Any
    other_model: str | None


def load_model_for_eval(
    model_spec: str,
    adapter: Path | None,
    *,
    dtype: str = "float32",
    device: str = "auto",
    threads: int | None = None,
    allow_other_model: bool = False,
    quantize_4bit: bool = False,
    max_length: int | None = None,
) -> ModelForEval:
    """Load a model to evaluate: the base, plus ``adapter`` when given.

    ``adapter`` is a peft adapter directory (``adapter_config.json``), or an `ila finetune`
    run directory: its ``adapter/`` (LoRA) or ``changed_weights/`` (full fine-tuning: the
    tuned tensors replace the base's). An adapter made on another model than
    ``model_spec`` (ila.model.identity) is refused unless ``allow_other_model``;
    ``max_length`` is checked against the model's positions (ila.model.loading). A LoRA
    adapter on float32 weights is merged into them (:func:`merged_for_inference`).
    """
    from ila.model.adapters import check_adapter_base, resolve_adapter
    from ila.model.loading import load_model

    adapter_dir = resolve_adapter(adapter) if adapter is not None else None
    model, tokenizer = load_model(
        model_spec,
        dtype=dtype,
        device=device,
        threads=threads,
        quantize_4bit=quantize_4bit,
        max_length=max_length,
    )
    if adapter_dir is None:
        return ModelForEval(model, tokenizer, None)
    other = check_adapter_base(adapter_dir, model_spec, allow=allow_other_model)
    if (adapter_dir / "adapter_config.json").is_file():
        model = _with_adapter(model, adapter_dir, model_spec)
        return ModelForEval(merged_for_inference(model), tokenizer, other)
    changed = _read_changed_weights(adapter_dir)
    return ModelForEval(_apply_changed_weights(model, adapter_dir, changed), tokenizer, other)


def merged_for_inference(model: Any) -> Any:
    """A peft LoRA model with its update merged into the base weights (W + alpha/r B A),
    when they are float32; else the model as it is.

    The merged model computes the same function up to float32 rounding (tested: the same
    loss and greedy answers) with none of the adapter's extra modules (a LoRA on every
    unit adds two small matmuls to each linear module); its gain in time at the demo's
    sizes is within the noise of the measurement (docs/evaluation.md, "Cost"). 16-bit
    weights keep the adapter apart (adding a small update to bf16 weights would round much
    of it away), as do 4-bit ones (merging would quantise the update) and other adapter
    kinds.
    """
    from peft import PeftType

    config = model.peft_config.get(model.active_adapter)
    weights = [p for n, p in model.named_parameters() if "lora_" not in n]
    if config is None or config.peft_type != PeftType.LORA:
        return model
    if not weights or any(p.dtype != torch.float32 for p in weights):
        return model
    return model.merge_and_unload()


@contextlib.contextmanager
def update_attached(
    model: Any, model_spec: str, adapter: Path | None, *, allow_other_model: bool = False
) -> Iterator[ModelForEval]:
    """``model`` (a base already in memory) with ``adapter`` applied for the block, and
    taken off again on exit, so that the next update is applied to the same base.

    What ``adapter`` may be, and the check that it was made on ``model_spec``, are as in
    :func:`load_model_for_eval`. A LoRA adapter stays apart from the base weights (peft's
    layers, removed on exit: merging and unmerging would not give the base back bit for
    bit); the changed weights of a full fine-tune replace the base's and the originals
    are put back. The tokenizer of the result is None (the caller has the base's).
    """
    from ila.model.adapters import check_adapter_base, resolve_adapter

    if adapter is None:
        yield ModelForEval(model, None, None)
        return
    adapter_dir = resolve_adapter(adapter)
    other = check_adapter_base(adapter_dir, model_spec, allow=allow_other_model)
    if (adapter_dir / "adapter_config.json").is_file():
        peft_model = _with_adapter(model, adapter_dir, model_spec)
        try:
            yield ModelForEval(peft_model, None, other)
        finally:
            peft_model.unload()
        return
    changed = _read_changed_weights(adapter_dir)
    params = dict(model.named_parameters())
    originals = {name: params[name].detach().clone() for name in changed if name in params}
    try:
        yield ModelForEval(_apply_changed_weights(model, adapter_dir, changed), None, other)
    finally:
        with torch.no_grad():
            for name, tensor in originals.items():
                params[name].copy_(tensor)


def _with_adapter(model: Any, adapter_dir: Path, model_spec: str) -> Any:
    """``model`` wrapped in peft with the LoRA adapter of ``adapter_dir`` (not merged)."""
    from peft import PeftModel

    from ila.core.lora import peft_wrapping

    try:
        with peft_wrapping():
            return PeftModel.from_pretrained(model, str(adapter_dir))
    except (ValueError, KeyError, RuntimeError) as err:
        raise IlaError(
            f"adapter {adapter_dir} does not fit model {model_spec}: {err}; pass the base "
            "model the adapter was trained on"
        ) from err


def _read_changed_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors a full fine-tune changed (``changed_weights.safetensors``)."""
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / CHANGED_WEIGHTS_FILE))


def _apply_changed_weights(model: Any, adapter_dir: Path, changed: dict[str, torch.Tensor]) -> Any:
    """``model`` with the ``changed`` tensors of ``adapter_dir`` copied into its own."""
    file = adapter_dir / CHANGED_WEIGHTS_FILE
    params = dict(model.named_parameters())
    missing = sorted(set(changed) - set(params))
    if missing:
        raise IlaError(
            f"{file} names {len(missing)} tensors this model lacks (e.g. {missing[0]}); "
            "pass the base model that was fine-tuned"
        )
    with torch.no_grad():
        for name, tensor in changed.items():
            if params[name].shape != tensor.shape:
                raise IlaError(
                    f"{file}: {name} has shape {tuple(tensor.shape)}, the model "
                    f"{tuple(params[name].shape)}; pass the base model that was fine-tuned"
                )
            params[name].copy_(tensor.to(params[name].dtype))
    return model
