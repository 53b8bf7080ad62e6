"""peft adapters made by ila or by any other tool: find them, check their base, load them.

Used by ``ila eval --adapter`` (evaluate a fine-tune) and ``ila score --from-adapter``
(rank the units of an existing LoRA adapter; docs/method.md, "ILA on an update you already
have"). An adapter is checked against the model before it is applied: against the
fingerprint ila saves beside its own adapters, else against the adapter's recorded
``base_model_name_or_path`` when that model is on this machine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ila.config import setting
from ila.core.lora import peft_wrapping
from ila.errors import IlaError, Setting, argument
from ila.run_files import CHANGED_WEIGHTS_FILE

__all__ = [
    "adapter_settings",
    "check_adapter_base",
    "load_lora_adapter",
    "resolve_adapter",
]

log = logging.getLogger(__name__)

ADAPTER = argument("adapter")
"""``ila eval --adapter`` (``ila.evaluate(adapter=...)``)."""


def resolve_adapter(path: Path, *, flag: Setting = ADAPTER) -> Path:
    """The adapter folder in ``path``: itself, or an `ila finetune` directory's ``adapter/``
    or ``changed_weights/``."""
    path = Path(path)
    if not path.exists():
        raise IlaError(flag, f" {path} does not exist; pass an adapter or finetune directory")
    for candidate in (path, path / "adapter", path / "changed_weights"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
        if (candidate / CHANGED_WEIGHTS_FILE).is_file():
            return candidate
    raise IlaError(
        flag,
        f" {path} holds no adapter_config.json, adapter/ or changed_weights/; "
        "pass a peft adapter directory or an `ila finetune` output directory",
    )


def check_adapter_base(
    adapter_dir: Path, model_spec: str, *, allow: bool, flag: Setting = ADAPTER
) -> str | None:
    """Check that ``adapter_dir`` was trained on ``model_spec``: against the fingerprint
    ila saved beside it, else against the adapter's recorded base model when that model is
    on this machine (a foreign adapter whose base is not here is not checked, with a
    warning). Returns the note of an accepted other model (``allow``), else None. Only
    ``--adapter`` (``ila eval``) has ``--allow-other-model``; the refusal offers it there."""
    from ila.model.identity import BASE_MODEL_FILE, check_same_model, model_fingerprint

    recorded = adapter_dir / BASE_MODEL_FILE
    what = (flag, f" {adapter_dir}")
    allowable = flag == ADAPTER
    hint = "pass the base model it was trained on as the model"
    if recorded.is_file():
        from ila.files import read_json

        ours = model_fingerprint(model_spec)
        note = check_same_model(
            read_json(recorded), ours, what=what, allow=allow, hint=hint, allowable=allowable
        )
    else:
        note = _check_foreign_base(
            adapter_dir, model_spec, what, allow=allow, hint=hint, allowable=allowable
        )
    if note is not None:
        log.warning("%s", note)
    return note


def _check_foreign_base(
    adapter_dir: Path, model_spec: str, what: str, *, allow: bool, hint: str, allowable: bool
) -> str | None:
    """A peft adapter not made by ila: its ``base_model_name_or_path``, if that model is
    on this machine, must be ``model_spec``'s model."""
    from ila.model.identity import (
        BASE_MODEL_FILE,
        check_same_model,
        local_fingerprint,
        model_fingerprint,
    )

    if not (adapter_dir / "adapter_config.json").is_file():  # changed weights, older runs
        return None
    base = adapter_settings(adapter_dir).get("base_model_name_or_path")
    if not isinstance(base, str) or not base or base == model_spec:
        return None
    theirs = local_fingerprint(base)
    if theirs is None:
        log.warning(
            "%s names base model %s, which is not on this machine (nor a hub model in the "
            "cache), and holds no %s: whether it was trained on --model %s is not checked",
            what,
            base,
            BASE_MODEL_FILE,
            model_spec,
        )
        return None
    ours = model_fingerprint(model_spec)
    return check_same_model(
        theirs, ours, what=f"{what} (base {base})", allow=allow, hint=hint, allowable=allowable
    )


def adapter_settings(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` as a dict (refused when unreadable)."""
    config_file = adapter_dir / "adapter_config.json"
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IlaError(f"{config_file} is not a readable adapter config ({exc})") from exc
    if not isinstance(data, dict):
        raise IlaError(f"{config_file} is not a readable adapter config (not a mapping)")
    return data


def load_lora_adapter(model: Any, adapter_dir: Path, model_spec: str, *, flag: Setting) -> Any:
    """``model`` with the plain LoRA adapter in ``adapter_dir`` attached (a peft model).

    Refused, each with one line: another peft method than LoRA, a LoRA variant whose update
    is not B A (DoRA), target modules the model does not have, and weights whose shapes do
    not fit the model's modules.
    """
    from peft import PeftModel

    settings = adapter_settings(adapter_dir)
    kind = settings.get("peft_type")
    if kind != "LORA":
        raise IlaError(
            flag,
            f" {adapter_dir} is a {kind} adapter; ILA gates LoRA updates "
            "(Delta = B A): pass a LoRA adapter, or ",
            setting("source", "from_model"),
            " for a merged fine-tune",
        )
    if settings.get("use_dora"):
        raise IlaError(
            flag,
            f" {adapter_dir} is a DoRA adapter, whose update is not a plain B A; "
            "pass a plain LoRA adapter, or merge it and pass ",
            setting("source", "from_model"),
        )
    try:
        with peft_wrapping():
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IlaError(
            flag,
            f" {adapter_dir} does not fit ",
            setting("model", "model"),
            f" {model_spec} ({first[:300]}); pass the base model the adapter was trained on",
        ) from err
