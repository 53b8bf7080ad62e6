"""Control selections for stage-3 comparisons (docs/method.md, "What the ranking measures").

ILA's top units are mostly large MLP modules, so a top-30% selection by unit count holds
more trainable parameters than a random 30%. A fair comparison matches what is tuned:

- :func:`parameter_matched` walks a ranking and keeps every unit that still fits a
  parameter budget (for example the parameters of ILA's top 30%), so any scorer (or a
  random order) can be compared at equal trainable parameters;
- :func:`random_within_type` draws, for a reference set, the same number of units of
  each module type at random: it keeps the set's composition and nothing else.

No torch here: units and their shapes come from a :class:`ila.core.layers.LayerMap`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from ila.core.layers import LayerMap, Unit
from ila.errors import IlaError

__all__ = ["parameter_matched", "random_order", "random_within_type", "trainable_parameters"]


def trainable_parameters(units: Iterable[Unit], *, method: str, lora_rank: int = 8) -> int:
    """Parameters a fine-tune trains on ``units``: r (d_in + d_out) each with LoRA (and
    QLoRA), d_in d_out each with full fine-tuning."""
    if method in ("lora", "qlora"):
        return sum(lora_rank * (u.in_features + u.out_features) for u in units)
    if method == "full":
        return sum(u.in_features * u.out_features for u in units)
    raise IlaError(f"unknown fine-tuning method {method!r}; use lora, qlora or full")


def parameter_matched(
    ranking: Sequence[str],
    layer_map: LayerMap,
    budget: int,
    *,
    method: str = "lora",
    lora_rank: int = 8,
) -> list[str]:
    """Units taken down ``ranking`` while they fit ``budget`` trainable parameters.

    A unit that would exceed the budget is skipped and the walk goes on, so the result
    comes within one smallest unit of the budget without exceeding it. Names are returned
    in model order.
    """
    if budget < 1:
        raise IlaError(f"parameter budget must be >= 1, got {budget}")
    chosen, total = set(), 0
    for name in ranking:
        size = trainable_parameters([layer_map.unit(name)], method=method, lora_rank=lora_rank)
        if total + size <= budget:
            chosen.add(name)
            total += size
    if not chosen:
        raise IlaError(f"no unit fits a budget of {budget} trainable parameters")
    return [u.name for u in layer_map.units if u.name in chosen]


def random_order(layer_map: LayerMap, seed: int) -> list[str]:
    """Every unit in a random order drawn from ``seed`` (a random 'ranking')."""
    names = [u.name for u in layer_map.units]
    random.Random(seed).shuffle(names)
    return names


def random_within_type(reference: Sequence[str], layer_map: LayerMap, seed: int) -> list[str]:
    """As many units of each module type as ``reference`` holds, drawn at random (model
    order): the reference set's composition without its choice of blocks."""
    rng = random.Random(seed)
    wanted: dict[str, int] = {}
    for name in reference:
        kind = layer_map.unit(name).module_type
        wanted[kind] = wanted.get(kind, 0) + 1
    chosen: set[str] = set()
    for kind, count in sorted(wanted.items()):
        pool = [u.name for u in layer_map.units if u.module_type == kind]
        chosen.update(rng.sample(pool, count))
    return [u.name for u in layer_map.units if u.name in chosen]
