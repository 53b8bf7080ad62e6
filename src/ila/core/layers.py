"""The units ILA ranks: transformer blocks and the LoRA-adaptable linear modules inside them.

ILA (arXiv 2410.17875) learns one importance score per *unit* of a causal LM and keeps
the top fraction for fine-tuning. A unit is a linear module inside a transformer block
(``layers.12.self_attn.q_proj``) or, at coarser granularity, a whole block
(``layers.12``). This module finds both for any Hugging Face causal LM, generically:
the blocks are the ``nn.ModuleList`` of same-class children that holds the most
parameters, and the units are the ``nn.Linear`` / GPT-2 ``Conv1D`` modules inside them
(or the peft ``LoraLayer`` already wrapping one). Unit names are relative to the parent
of the blocks container, so a scores file reads the same whether the model was loaded
plain or wrapped by peft.

Importing this module imports neither torch nor peft; :func:`find_layers` does.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ila.config import setting
from ila.errors import IlaError

if TYPE_CHECKING:
    import torch

__all__ = ["LayerMap", "Unit", "find_layers", "peft_target_modules"]

_BLOCKS_HINT = (
    "pass ",
    setting("model", "blocks_path"),
    " with the dotted path of the nn.ModuleList of blocks, e.g. model.layers",
)


@dataclass(frozen=True)
class Unit:
    """One adaptable linear module inside a transformer block.

    ``name`` is relative to the parent of the blocks container (``layers.12.mlp.up_proj``);
    ``module_path`` is the full dotted path from the base model's root
    (``model.layers.12.mlp.up_proj``), the key peft and ``named_modules`` use.
    """

    name: str
    module_path: str
    block: int
    module_type: str
    in_features: int
    out_features: int

    @property
    def num_params(self) -> int:
        """Weight parameters of the full module (``in_features * out_features``, no bias)."""
        return self.in_features * self.out_features


@dataclass(frozen=True)
class LayerMap:
    """The blocks of a model and the units inside them, in a stable order.

    ``units`` are ordered by block, then by ``named_modules`` order inside the block;
    ``module_types`` lists the distinct paths-inside-a-block in order of first appearance.
    """

    model_type: str
    blocks_path: str
    num_blocks: int
    units: tuple[Unit, ...]
    module_types: tuple[str, ...]
    _by_name: dict[str, Unit] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {u.name: u for u in self.units})

    def restricted_to(self, module_types: Sequence[str]) -> LayerMap:
        """The same model's units of ``module_types`` only (as ``--lora-module-types``
        gives), e.g. for a ranking of the modules one adapter covers."""
        kept = tuple(t for t in self.module_types if t in set(module_types))
        return replace(
            self, units=tuple(u for u in self.units if u.module_type in kept), module_types=kept
        )

    def unit(self, name: str) -> Unit:
        """The unit called ``name``; an unknown name raises IlaError naming close matches."""
        found = self._by_name.get(name)
        if found is not None:
            return found
        close = difflib.get_close_matches(name, list(self._by_name), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise IlaError(f"unknown unit {name!r} in this {self.model_type} model{hint}")

    def units_in_block(self, block: int) -> tuple[Unit, ...]:
        """The units of block ``block`` (0-based), in module order."""
        self._check_block(block)
        return tuple(u for u in self.units if u.block == block)

    def block_name(self, block: int) -> str:
        """The block-granularity unit name, e.g. ``layers.12`` (same prefix as unit names)."""
        self._check_block(block)
        return f"{self.blocks_path.rsplit('.', 1)[-1]}.{block}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary; two equal dicts mean the same model layout and unit names."""
        return {
            "model_type": self.model_type,
            "blocks_path": self.blocks_path,
            "num_blocks": self.num_blocks,
            "module_types": list(self.module_types),
            "units": [asdict(u) for u in self.units],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerMap:
        """Rebuild a LayerMap from :meth:`to_dict` output (e.g. read back from a scores file)."""
        return cls(
            model_type=data["model_type"],
            blocks_path=data["blocks_path"],
            num_blocks=int(data["num_blocks"]),
            units=tuple(Unit(**u) for u in data["units"]),
            module_types=tuple(data["module_types"]),
        )

    def _check_block(self, block: int) -> None:
        if not 0 <= block < self.num_blocks:
            raise IlaError(
                f"block {block} is out of range: this model has blocks 0..{self.num_blocks - 1}"
            )


def find_layers(
    model: torch.nn.Module,
    *,
    blocks_path: str | None = None,
    module_types: Sequence[str] | None = None,
) -> LayerMap:
    """Find the transformer blocks of ``model`` and the adaptable units inside them.

    ``model`` may be a ``PreTrainedModel`` or a peft ``PeftModel`` (paths are then relative
    to its base model). ``blocks_path`` overrides block discovery; ``module_types`` keeps
    only units whose module type, or its last component, equals an entry (``"q_proj"`` and
    ``"self_attn.q_proj"`` both work). Raises IlaError if the blocks or the requested
    module types cannot be found.
    """
    if isinstance(module_types, str):
        raise TypeError("module_types must be a sequence of strings, not a single string")
    base = _unwrap_peft(model)
    config = getattr(base, "config", None)
    model_type = str(getattr(config, "model_type", None) or "unknown")
    if blocks_path is None:
        blocks_path, blocks = _discover_blocks(base, model_type)
    else:
        blocks = _blocks_at(base, blocks_path)

    prefix = blocks_path.rsplit(".", 1)[-1]
    units: list[Unit] = []
    for index_name, block in blocks.named_children():
        for inner, module in _walk_units(block, ""):
            in_features, out_features = _features(module)
            units.append(
                Unit(
                    name=f"{prefix}.{index_name}.{inner}",
                    module_path=f"{blocks_path}.{index_name}.{inner}",
                    block=int(index_name),
                    module_type=inner,
                    in_features=in_features,
                    out_features=out_features,
                )
            )
    if not units:
        raise IlaError(
            f"the blocks at {blocks_path!r} contain no nn.Linear or Conv1D modules; ",
            *_BLOCKS_HINT,
        )
    available = list(dict.fromkeys(u.module_type for u in units))
    if module_types is not None:
        units = _filter_units(units, list(module_types), available)
    return LayerMap(
        model_type=model_type,
        blocks_path=blocks_path,
        num_blocks=len(blocks),
        units=tuple(units),
        module_types=tuple(dict.fromkeys(u.module_type for u in units)),
    )


def peft_target_modules(units: Iterable[Unit]) -> list[str]:
    """``target_modules`` for peft's ``LoraConfig`` that adapt exactly ``units``.

    peft matches a list entry when a module key equals it or ends with ``"." + entry``;
    a full path from the base model's root therefore selects that one module only.
    """
    paths = list(dict.fromkeys(u.module_path for u in units))
    if not paths:
        raise IlaError("no units selected, so there is nothing for LoRA to adapt")
    return paths


def _unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The base model of a ``PeftModel`` (or of its ``LoraModel``), else ``model`` itself."""
    if "peft" not in sys.modules:
        return model
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    if isinstance(model, PeftModel):
        return model.get_base_model()
    if isinstance(model, BaseTuner):
        return model.model
    return model


def _wrapper_types() -> tuple[type, ...]:
    """peft wrappers that stand for the module they wrap (only if peft was ever imported).

    A model cannot contain peft modules unless peft has been imported, so a plain model
    never pays for importing it.
    """
    if "peft" not in sys.modules:
        return ()
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    return (BaseTunerLayer, ModulesToSaveWrapper)


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    if hasattr(module, "get_base_layer"):  # peft BaseTunerLayer (LoRA, IA3, ...)
        return module.get_base_layer()
    return getattr(module, "original_module", module)  # peft ModulesToSaveWrapper


def _is_adaptable(module: torch.nn.Module) -> bool:
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def _walk_units(module: torch.nn.Module, path: str) -> Iterator[tuple[str, torch.nn.Module]]:
    """Adaptable modules strictly below ``module``, in ``named_modules`` (pre-)order.

    A peft wrapper is the unit itself: its ``base_layer``/``lora_A``/``lora_B`` children
    are never units.
    """
    wrappers = _wrapper_types()
    for name, child in module.named_children():
        child_path = f"{path}.{name}" if path else name
        if wrappers and isinstance(child, wrappers):
            if _is_adaptable(_unwrapped(child)):
                yield child_path, child
        elif _is_adaptable(child):
            yield child_path, child
        else:
            yield from _walk_units(child, child_path)


def _features(module: torch.nn.Module) -> tuple[int, int]:
    import torch

    base = _unwrapped(module)
    if isinstance(base, torch.nn.Linear):
        return int(base.in_features), int(base.out_features)
    # transformers Conv1D (GPT-2): weight is (in, out) = (nx, nf), the transpose of Linear.
    return int(base.weight.shape[0]), int(base.weight.shape[1])


def _is_block_list(modules: torch.nn.ModuleList) -> bool:
    children = list(modules.children())
    return (
        len(children) > 0
        and len({type(c) for c in children}) == 1
        and all(next(_walk_units(c, ""), None) is not None for c in children)
    )


def _discover_blocks(model: torch.nn.Module, model_type: str) -> tuple[str, torch.nn.ModuleList]:
    """The same-class ModuleList with the most parameters (ties: the shallowest path)."""
    import torch

    best: tuple[int, int, str, torch.nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if path and isinstance(module, torch.nn.ModuleList) and _is_block_list(module):
            num_params = sum(p.numel() for p in module.parameters())
            key = (num_params, -path.count("."))
            if best is None or key > best[:2]:
                best = (*key, path, module)
    if best is None:
        raise IlaError(
            f"could not find the transformer blocks of {type(model).__name__} "
            f"(model_type {model_type!r}); ",
            *_BLOCKS_HINT,
        )
    return best[2], best[3]


def _blocks_at(model: torch.nn.Module, blocks_path: str) -> torch.nn.ModuleList:
    import torch

    try:
        module = model.get_submodule(blocks_path)
    except AttributeError:
        module = None
    if isinstance(module, torch.nn.ModuleList) and blocks_path:
        return module
    lists = [p for p, m in model.named_modules() if p and isinstance(m, torch.nn.ModuleList)]
    close = difflib.get_close_matches(blocks_path, lists, n=1)
    ordered = close + [p for p in lists if p not in close]
    found = f"ModuleLists in this model: {', '.join(ordered[:8])}" if lists else "it has none"
    what = "does not exist" if module is None else f"is a {type(module).__name__}"
    raise IlaError(
        setting("model", "blocks_path"),
        f" {blocks_path!r} {what}, not an nn.ModuleList of blocks; {found}",
    )


def _filter_units(units: list[Unit], wanted: list[str], available: list[str]) -> list[Unit]:
    def matches(unit: Unit, entry: str) -> bool:
        return unit.module_type == entry or unit.module_type.rsplit(".", 1)[-1] == entry

    unknown = [e for e in wanted if not any(matches(u, e) for u in units)]
    if unknown or not wanted:
        what = "module_types is empty"
        if unknown:
            what = f"module type(s) {', '.join(map(repr, unknown))} match nothing"
        raise IlaError(f"{what}; available module types: {', '.join(available)}")
    return [u for u in units if any(matches(u, e) for e in wanted)]
