"""Per-unit gates on LoRA updates: the relaxed binary mask of ILA stage 2.

docs/method.md, "Stage 2": the masked model is theta_0 + gamma * Delta, where unit i's
LoRA update Delta_i = (alpha / r) B_i A_i is scaled by gamma_i = sigmoid(s_i). Only the
scores s are learned; the base weights and the stage-1 LoRA weights stay frozen.

Implementation: peft's vanilla LoRA forward computes ``base(x) + lora_B(lora_A(drop(x)))
* scaling``. A forward hook on each unit's ``lora_B`` module multiplies its output by the
unit's gate, which scales exactly Delta_i x and nothing else. Hooks are removable and no
peft internals are patched. LoRA variants whose update does not pass through ``lora_B``
this way (DoRA and the other ``lora_variant`` kinds), merged adapters and multiple active
adapters are refused. With a full-fine-tuning stage 1 (:func:`attach_delta_gates`) the
update is Delta_i = W_i(T) - W_i(0) and a hook on the unit's module adds gamma_i Delta_i x.

The gate scores live in a :class:`GateBank` registered as a submodule of the model, so
the HF Trainer's optimizer sees them and data-parallel training (DDP) all-reduces their
gradients like any other parameter. Under FSDP2 the scores are read whole
(:func:`ila.train.sharding.whole`); gates added to a model stage 1 already sharded get their
gradients averaged by :func:`ila.train.sharding.average_unmanaged_gradients`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ila.config import setting
from ila.core.layers import LayerMap, Unit
from ila.errors import IlaError
from ila.train.sharding import whole

__all__ = [
    "GATE_MODULE_NAME",
    "GateBank",
    "GatedModel",
    "attach_delta_gates",
    "attach_gates",
    "budget_loss",
    "project_to_budget",
]

GATE_MODULE_NAME = "ila_gates"


class GateBank(nn.Module):
    """One learnable score s_g per gate; ``forward()`` returns gamma = sigmoid(s)."""

    def __init__(self, num_gates: int, init_score: float) -> None:
        super().__init__()
        if num_gates < 1:
            raise ValueError("a GateBank needs at least one gate")
        self.scores = nn.Parameter(torch.full((num_gates,), float(init_score)))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.scores)


def budget_loss(
    gates: torch.Tensor, *, kind: str, weight: float, target_fraction: float
) -> torch.Tensor:
    """The relaxed sparsity budget on gamma (docs/method.md, Stage 2: ||gamma||_0 <= H).

    [choice] ``hinge``: weight * max(0, mean(gamma) - target_fraction): no pressure once
    the mean gate is within the budget H, so only the loss decides which units keep their
    update; ``penalty``: weight * mean(gamma), a constant push towards zero that only
    units the loss needs resist.
    """
    mean = gates.mean()
    if kind == "hinge":
        return weight * torch.relu(mean - target_fraction)
    if kind == "penalty":
        return weight * mean
    if kind == "project":
        # The constraint is enforced by project_to_budget after each step, not by the loss.
        return torch.zeros((), device=gates.device)
    raise IlaError(
        setting("stage2", "budget"), f": unknown budget '{kind}'; use hinge, penalty or project"
    )


@torch.no_grad()
def project_to_budget(
    scores: torch.Tensor, target_fraction: float, *, iterations: int = 60
) -> None:
    """Shift all scores by one constant c so that mean(sigmoid(s + c)) = target_fraction.

    [choice] The ``project`` budget: the relaxed constraint mean(gamma) = H is kept exactly
    after every optimizer step (bisection on c; mean(sigmoid(s + c)) is increasing in c),
    so no penalty weight needs tuning and only the loss decides the order of the units.
    A common shift leaves the ranking unchanged. Under FSDP every process computes the
    shift from the whole scores and moves its own slice.
    """
    if not 0 < target_fraction < 1:
        raise IlaError(
            setting("stage2", "target_fraction"), f" must be in (0, 1), got {target_fraction}"
        )
    values = whole(scores.detach()).double()
    low = -values.max().item() - 50.0
    high = -values.min().item() + 50.0
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        if torch.sigmoid(values + mid).mean().item() < target_fraction:
            low = mid
        else:
            high = mid
    scores.add_(0.5 * (low + high))


@dataclass
class GatedModel:
    """Handle returned by :func:`attach_gates`; call :meth:`detach` to remove the gates."""

    model: nn.Module
    bank: GateBank
    gate_of_unit: tuple[int, ...]
    """Gate index of each unit, in LayerMap order."""
    gate_names: tuple[str, ...]
    """One name per gate: the unit name (module granularity) or the block name."""
    granularity: str
    _handles: list[torch.utils.hooks.RemovableHandle]

    def gammas(self) -> torch.Tensor:
        """gamma = sigmoid(s) of every gate, whole (gathered under FSDP), with autograd: for
        the budget term. Under FSDP a collective: every process must call it."""
        return torch.sigmoid(whole(self.bank.scores))

    def gate_values(self) -> torch.Tensor:
        """gamma = sigmoid(s), detached, on CPU (whole; a collective under FSDP)."""
        return self.gammas().detach().float().cpu()

    def raw_scores(self) -> torch.Tensor:
        """s, detached, on CPU (whole; a collective under FSDP)."""
        return whole(self.bank.scores.detach()).float().cpu()

    def detach(self) -> None:
        """Remove every hook and the gate module; the model computes theta_0 + Delta again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        base = _base_model(self.model)
        if getattr(base, GATE_MODULE_NAME, None) is self.bank:
            delattr(base, GATE_MODULE_NAME)


def attach_gates(
    model: nn.Module,
    layer_map: LayerMap,
    *,
    granularity: str = "module",
    init_score: float = 3.0,
    adapter_name: str = "default",
) -> GatedModel:
    """Put a gate on every unit's LoRA update of a peft model (ILA stage 2).

    Args:
        model: a peft model with LoRA injected on every unit of ``layer_map``.
        layer_map: the units (from :func:`ila.core.layers.find_layers`).
        granularity: ``module`` (one gate per unit) or ``block`` (one gate per block,
            shared by the block's units) [choice, see docs/method.md].
        init_score: initial s of every gate.
        adapter_name: the LoRA adapter to gate.
    """
    gate_of_unit, gate_names = _gate_layout(model, layer_map, granularity)
    lora_layers = [_lora_layer(_base_model(model), unit, adapter_name) for unit in layer_map.units]
    bank = _add_gate_bank(model, len(gate_names), init_score)
    handles = [
        layer.lora_B[adapter_name].register_forward_hook(_gate_hook(bank, gate))
        for layer, gate in zip(lora_layers, gate_of_unit, strict=True)
    ]
    return GatedModel(model, bank, gate_of_unit, gate_names, granularity, handles)


def attach_delta_gates(
    model: nn.Module,
    layer_map: LayerMap,
    deltas: dict[str, torch.Tensor],
    *,
    granularity: str = "module",
    init_score: float = 3.0,
) -> GatedModel:
    """Put a gate on every unit's full fine-tuning change Delta_i (``--stage1-method full``).

    docs/method.md, "Stage 1 as a full fine-tune": the masked model is theta_0 +
    gamma * Delta with Delta_i = W_i(T) - W_i(0) (:mod:`ila.core.deltas`). A forward hook
    on each unit's linear module adds gamma_i * Delta_i x to its output, so the base
    weights (which must hold W_i(0)) are not rewritten and only s is learned. Each unit
    costs one more matmul of its size in the forward and backward passes.
    """
    missing = [u.name for u in layer_map.units if u.name not in deltas]
    if missing:
        raise IlaError(f"no stage-1 delta for units {missing[:3]}")
    gate_of_unit, gate_names = _gate_layout(model, layer_map, granularity)
    base = _base_model(model)
    modules = [base.get_submodule(unit.module_path) for unit in layer_map.units]
    bank = _add_gate_bank(model, len(gate_names), init_score)
    handles = [
        module.register_forward_hook(_delta_hook(bank, gate, deltas[unit.name]))
        for unit, module, gate in zip(layer_map.units, modules, gate_of_unit, strict=True)
    ]
    return GatedModel(model, bank, gate_of_unit, gate_names, granularity, handles)


def _gate_layout(
    model: nn.Module, layer_map: LayerMap, granularity: str
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Each unit's gate and each gate's name; refuses a model that already has gates."""
    if granularity not in ("module", "block"):
        raise IlaError(
            setting("stage2", "unit"), f": unknown unit '{granularity}'; use module or block"
        )
    base = _base_model(model)
    if hasattr(base, GATE_MODULE_NAME):
        raise IlaError("the model already carries ILA gates; detach them before attaching again")
    if granularity == "module":
        gate_of_unit = tuple(range(len(layer_map.units)))
        gate_names = tuple(unit.name for unit in layer_map.units)
    else:
        blocks = sorted({unit.block for unit in layer_map.units})
        index = {block: i for i, block in enumerate(blocks)}
        gate_of_unit = tuple(index[unit.block] for unit in layer_map.units)
        gate_names = tuple(layer_map.block_name(block) for block in blocks)
    return gate_of_unit, gate_names


def _add_gate_bank(model: nn.Module, num_gates: int, init_score: float) -> GateBank:
    """A GateBank of ``num_gates`` registered on the model (so the optimizer sees it)."""
    bank = GateBank(num_gates, init_score).to(next(model.parameters()).device)
    _base_model(model).add_module(GATE_MODULE_NAME, bank)
    return bank


def _delta_hook(bank: GateBank, gate: int, delta: torch.Tensor):
    def hook(
        _module: nn.Module, inputs: Sequence[torch.Tensor], output: torch.Tensor
    ) -> torch.Tensor:
        gamma = torch.sigmoid(bank.scores[gate]).to(output.dtype)
        return output + gamma * torch.nn.functional.linear(inputs[0], delta.to(output.dtype))

    return hook


def _gate_hook(bank: GateBank, gate: int):
    def hook(
        _module: nn.Module, _inputs: Sequence[torch.Tensor], output: torch.Tensor
    ) -> torch.Tensor:
        gamma = torch.sigmoid(bank.scores[gate])
        return output * gamma.to(output.dtype)

    return hook


def _base_model(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _lora_layer(base: nn.Module, unit: Unit, adapter_name: str) -> nn.Module:
    from peft.tuners.lora import LoraLayer

    try:
        layer = base.get_submodule(unit.module_path)
    except AttributeError as exc:
        raise IlaError(
            f"unit {unit.name}: module {unit.module_path} not found in the model"
        ) from exc
    if not isinstance(layer, LoraLayer) or adapter_name not in getattr(layer, "lora_B", {}):
        raise IlaError(
            f"unit {unit.name} carries no LoRA adapter '{adapter_name}'; stage 2 needs the "
            "stage-1 adapter on every unit"
        )
    if adapter_name in getattr(layer, "lora_variant", {}) or layer.use_dora.get(adapter_name):
        raise IlaError(
            f"unit {unit.name}: LoRA variants such as DoRA are not supported by ILA gates; "
            "train stage 1 with plain LoRA (use_dora=False)"
        )
    if layer.merged:
        raise IlaError(f"unit {unit.name}: the LoRA adapter is merged; unmerge it before stage 2")
    if len(layer.active_adapters) != 1:
        raise IlaError(f"unit {unit.name}: exactly one active LoRA adapter is supported")
    return layer
