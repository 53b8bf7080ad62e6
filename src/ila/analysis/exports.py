"""Exports: a selection written as configuration that other trainers read.

ILA stage 3 (docs/method.md, "Stage 3: use the ranking" and "Output") tunes
only the selected units, with LoRA or full fine-tuning. Users who train with another
tool should not need to import ila in their trainer, so a :class:`~ila.core.selection.Selection`
is exported in that tool's own terms, and each export names exactly the selected modules:

- ``peft``: a LoraConfig as JSON whose ``target_modules`` are full module paths (peft
  adapts a module whose name equals an entry or ends with ``"." + entry``);
- ``axolotl``: ``unfrozen_parameters`` patterns (full-parameter training) and
  ``lora_target_modules`` (LoRA);
- ``llama-factory``: ``lora_target``, plus the freeze-mode settings when that mode can
  express the selection;
- ``swift`` (ms-swift): ``target_regex`` (LoRA) and ``trainable_parameters_regex``
  (full-parameter training);
- ``list``: one module path per line; ``json``: names, paths and the regexes.

Every regex is anchored (``^...$``), so ``re.fullmatch``, ``re.match`` and ``re.search``
all accept exactly the same names. Parameter regexes match the ``weight`` and ``bias`` of
the selected ``nn.Linear`` / ``Conv1D`` modules, named as ``named_parameters()`` of the
base Hugging Face model names them (``model.layers.3.self_attn.q_proj.weight``).
No torch or peft import here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import yaml

from ila.config import MAX_RANK, setting
from ila.core.layers import LayerMap, Unit, peft_target_modules
from ila.core.selection import Selection
from ila.errors import IlaError, short_repr

__all__ = ["EXPORT_FORMATS", "export_selection", "module_regex", "parameter_regex"]

EXPORT_FORMATS = ("peft", "axolotl", "llama-factory", "swift", "list", "json")
_PARAMS = ("weight", "bias")  # the parameters of nn.Linear and transformers' Conv1D
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


def module_regex(selection: Selection, layer_map: LayerMap) -> str:
    """One anchored regex that full-matches the selected modules' paths and nothing else.

    Module paths are ``named_modules()`` names of the base model; this is the form of
    peft's string ``target_modules`` (which peft applies with ``re.fullmatch``).
    """
    return _regex(_groups(selection.selected_units(layer_map)), layer_map, suffix=())


def parameter_regex(selection: Selection, layer_map: LayerMap) -> str:
    """One anchored regex that full-matches the selected modules' parameter names only.

    Parameter names are ``named_parameters()`` names of the base model, e.g.
    ``model.layers.3.self_attn.q_proj.weight`` (and ``.bias`` where the module has one).
    """
    return _regex(_groups(selection.selected_units(layer_map)), layer_map, suffix=_PARAMS)


def export_selection(
    selection: Selection,
    layer_map: LayerMap,
    fmt: str,
    *,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.05,
) -> str:
    """The content of an export file of ``selection`` in format ``fmt`` (EXPORT_FORMATS).

    ``layer_map`` must be the selection's model (its layout is checked). The LoRA
    settings go into the formats that configure LoRA; axolotl, LLaMA-Factory and ms-swift
    take an integer ``lora_alpha``.
    """
    if fmt not in EXPORT_FORMATS:
        known = ", ".join(EXPORT_FORMATS)
        raise IlaError(f"unknown export format {short_repr(fmt)}; choose one of {known}")
    if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1:
        raise IlaError(
            setting("lora", "rank"), f": must be an integer >= 1, got {short_repr(lora_rank)}"
        )
    if lora_rank > MAX_RANK:
        raise IlaError(
            setting("lora", "rank"), f": must be at most {MAX_RANK:,} (LoRA rank), got {lora_rank}"
        )
    if not 0 < lora_alpha < float("inf"):
        raise IlaError(setting("lora", "alpha"), f": must be a finite number > 0, got {lora_alpha}")
    if not 0 <= lora_dropout < 1:
        raise IlaError(setting("lora", "dropout"), f": must be in [0, 1), got {lora_dropout}")
    units = selection.selected_units(layer_map)
    paths = peft_target_modules(units)
    for path in paths:
        if not _PLAIN_PATH.fullmatch(path):
            raise IlaError(f"module path {path!r} has characters no export regex can spell")
    lora = {"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout}
    if fmt == "peft":
        return _peft(paths, lora)
    if fmt == "list":
        return "".join(f"{path}\n" for path in paths)
    if fmt == "json":
        groups = _groups(units)
        payload = {
            "selected": list(selection.selected),
            "module_paths": paths,
            "module_regex": _regex(groups, layer_map, suffix=()),
            "parameter_regex": _regex(groups, layer_map, suffix=_PARAMS),
        }
        return json.dumps(payload, indent=2) + "\n"
    header = _header(selection)
    if fmt == "axolotl":
        return header + _axolotl(units, layer_map, paths, lora)
    if fmt == "llama-factory":
        return header + _llama_factory(units, layer_map, paths, lora)
    return header + _swift(units, layer_map, lora)


def _peft(paths: list[str], lora: dict[str, Any]) -> str:
    # Only keys every recent peft accepts: LoraConfig(**json.load(f)) loads it, and the
    # file also serves as an adapter_config.json skeleton (peft_type tells peft the kind).
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora["rank"],
        "lora_alpha": lora["alpha"],
        "lora_dropout": lora["dropout"],
        "bias": "none",
        "target_modules": paths,
    }
    return json.dumps(config, indent=2) + "\n"


def _axolotl(units: list[Unit], layer_map: LayerMap, paths: list[str], lora: dict) -> str:
    full = {"unfrozen_parameters": _axolotl_patterns(_groups(units), layer_map)}
    lora_keys = {
        "lora_target_modules": paths,
        "lora_r": lora["rank"],
        "lora_alpha": _whole_alpha(lora["alpha"], "axolotl"),
        "lora_dropout": lora["dropout"],
    }
    return (
        "# Full-parameter training of the selected modules only (as written): axolotl\n"
        "# freezes every parameter whose name no unfrozen_parameters pattern matches. axolotl\n"
        "# reads '.' in these patterns as a literal dot and applies them with re.match;\n"
        "# ^...$ makes each match whole parameter names only.\n"
        + _dump(full)
        + "# LoRA on the selected modules only: uncomment `adapter: lora` and delete\n"
        "# unfrozen_parameters above (axolotl applies it after wrapping the model with peft,\n"
        "# where these names no longer match, so it would also freeze the LoRA weights).\n"
        "# lora_target_modules are full module paths; peft adapts a module whose name equals\n"
        "# an entry or ends with '.' + entry, so exactly these. Without `adapter` axolotl\n"
        "# ignores the lora_* keys.\n"
        "# adapter: lora\n" + _dump(lora_keys)
    )


def _llama_factory(units: list[Unit], layer_map: LayerMap, paths: list[str], lora: dict) -> str:
    config = {
        "finetuning_type": "lora",
        "lora_target": ",".join(paths),
        "lora_rank": lora["rank"],
        "lora_alpha": _whole_alpha(lora["alpha"], "LLaMA-Factory"),
        "lora_dropout": lora["dropout"],
    }
    text = (
        "# LLaMA-Factory takes no list of layers for LoRA, only module names: lora_target is\n"
        "# split at commas and passed to peft as target_modules, and peft adapts a module\n"
        "# whose name equals an entry or ends with '.' + entry. These entries are full module\n"
        "# paths, so exactly the selected modules are adapted.\n" + _dump(config)
    )
    freeze = _llama_factory_freeze(units, layer_map)
    if isinstance(freeze, str):
        return text + (
            "# Freeze (partial-parameter) mode cannot express this selection: it trains the\n"
            "# first or last n blocks, whole sub-modules of each (freeze_trainable_layers,\n"
            f"# freeze_trainable_modules), and {freeze}.\n"
        )
    return text + (
        "# Freeze (partial-parameter) mode, the same modules with full-parameter training:\n"
        "# replace the keys above with the lines below. It trains every parameter whose name\n"
        "# contains '.<block>.<sub-module>', so it is exact when these sub-modules hold\n"
        "# only the selected linear layers (true of Llama's self_attn and mlp; not when they\n"
        "# also hold norms, as Qwen3's self_attn does).\n" + _commented(_dump(freeze))
    )


def _llama_factory_freeze(units: list[Unit], layer_map: LayerMap) -> dict[str, Any] | str:
    """LLaMA-Factory freeze-mode settings that train exactly ``units``, else why not."""
    blocks = sorted({u.block for u in units})
    n, k = layer_map.num_blocks, len(blocks)
    if blocks == list(range(n - k, n)):
        layers = k  # positive: the last k blocks
    elif blocks == list(range(k)):
        layers = -k  # negative: the first k blocks
    else:
        return "the selected blocks are not the first or the last ones"
    chosen = {u.name for u in units}
    child_sets = set()
    for block in blocks:
        in_block = layer_map.units_in_block(block)
        children = {u.module_type.split(".")[0] for u in in_block if u.name in chosen}
        if any(u.module_type.split(".")[0] in children and u.name not in chosen for u in in_block):
            return "the selection tunes only some modules of a sub-module"
        child_sets.add(frozenset(children))
    if len(child_sets) != 1:
        return "the selected blocks do not all tune the same sub-modules"
    every_child = list(dict.fromkeys(t.split(".")[0] for t in layer_map.module_types))
    children = [c for c in every_child if c in next(iter(child_sets))]
    if any(o != c and o.startswith(c) for c in children for o in every_child):
        return "a sub-module name is a prefix of another, which its substring match would train"
    return {
        "finetuning_type": "freeze",
        "freeze_trainable_layers": layers,
        "freeze_trainable_modules": ",".join(children),
    }


def _swift(units: list[Unit], layer_map: LayerMap, lora: dict) -> str:
    groups = _groups(units)
    config = {
        "train_type": "lora",
        "target_regex": _regex(groups, layer_map, suffix=()),
        "lora_rank": lora["rank"],
        "lora_alpha": _whole_alpha(lora["alpha"], "ms-swift"),
        "lora_dropout": lora["dropout"],
    }
    full = {
        "train_type": "full",
        "freeze_parameters_ratio": 1,
        "trainable_parameters_regex": _regex(groups, layer_map, suffix=_PARAMS),
    }
    return (
        "# ms-swift: `swift sft --config <this file>` (or pass each key as --key value;\n"
        "# newer ms-swift calls train_type tuner_type). target_regex replaces target_modules\n"
        "# and peft adapts the modules whose full name re.fullmatch-es it: exactly these.\n"
        + _dump(config)
        + "# Full-parameter training of the same modules: replace the keys above with the\n"
        "# lines below. ms-swift freezes every parameter (ratio 1), then unfreezes those\n"
        "# whose name the regex re.search-es; it is anchored, so whole names only.\n"
        + _commented(_dump(full))
    )


def _groups(units: Sequence[Unit]) -> list[tuple[list[int], list[str]]]:
    """Blocks that tune the same module types, as (blocks, module types), in model order."""
    per_block: dict[int, list[str]] = {}
    for unit in units:
        per_block.setdefault(unit.block, []).append(unit.module_type)
    grouped: dict[tuple[str, ...], list[int]] = {}
    for block, types in per_block.items():
        grouped.setdefault(tuple(types), []).append(block)
    return [(blocks, list(types)) for types, blocks in grouped.items()]


def _alternatives(items: Sequence[str], *, opener: str = "(?:") -> str:
    return items[0] if len(items) == 1 else f"{opener}{'|'.join(items)})"


def _regex(
    groups: list[tuple[list[int], list[str]]], layer_map: LayerMap, suffix: Sequence[str]
) -> str:
    prefix = re.escape(layer_map.blocks_path)
    tail = rf"\.{_alternatives(list(suffix))}" if suffix else ""
    parts = [
        rf"{prefix}\.{_alternatives([str(b) for b in blocks])}"
        rf"\.{_alternatives([re.escape(t) for t in types])}{tail}"
        for blocks, types in groups
    ]
    return f"^{_alternatives(parts)}$"


def _axolotl_patterns(groups: list[tuple[list[int], list[str]]], layer_map: LayerMap) -> list[str]:
    # axolotl rewrites every '.' not followed by '+' into '\.', so dots stay unescaped here
    # (an escaped '\.' would become '\\.'), and no '.' may serve as a wildcard.
    suffix = _alternatives(list(_PARAMS), opener="(")
    return [
        f"^{layer_map.blocks_path}.{_alternatives([str(b) for b in blocks], opener='(')}"
        f".{_alternatives(types, opener='(')}.{suffix}$"
        for blocks, types in groups
    ]


def _whole_alpha(alpha: float, tool: str) -> int:
    if float(alpha) != int(alpha):
        raise IlaError(setting("lora", "alpha"), f": {tool} takes a whole number, got {alpha}")
    return int(alpha)


def _header(selection: Selection) -> str:
    value = selection.value
    shown = str(value)
    if isinstance(value, list):  # a long --units list is summarised, the file lists them all
        shown = " ".join(map(str, value[:4])) + (f" ... ({len(value)} in all)" * (len(value) > 4))
    source = selection.source
    scores = ""
    if source.get("method"):
        scores = f"; ranked by {source['method']} scores of {source.get('model_id')}"
        if source.get("scores_file"):
            scores += f" ({source['scores_file']})"
    within = " --within-module-type" if selection.within_module_type else ""
    lines = [
        f"# ILA stage 3 (docs/method.md): tune {len(selection.selected)} of "
        f"{len(selection.selected) + len(selection.frozen)} units of a "
        f"{selection.layout['model_type']} model, --{selection.rule} {shown}{within}{scores}.",
        "# Names are module paths of the base Hugging Face model (named_modules()).",
    ]
    return "\n".join(lines) + "\n"


def _dump(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=1_000_000, allow_unicode=True)


def _commented(text: str) -> str:
    return "".join(f"#   {line}\n" for line in text.splitlines())
