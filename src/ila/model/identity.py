"""Model identity: a fingerprint of the files a model is loaded from.

A ranking, a selection, an adapter and an interrupted run each belong to one model. Two
models with the same layout (a base and its fine-tune, two quantisations of one network)
load into the same shapes, so shapes cannot tell them apart; their files can. The
fingerprint hashes, without reading whole files:

- the model's ``config.json`` (minus the keys that change when a model is only copied or
  re-saved: ``_name_or_path``, ``transformers_version``, ``_commit_hash``);
- every weights file: its name, its size and a sample of its bytes (the first 64 KiB,
  which hold a safetensors or GGUF header, and 64 chunks of 4 KiB spread evenly over the
  rest; small files whole).

A fine-tune changes bytes everywhere in its weights files, so a sample of 64 chunks per
file tells it from its base; a copy of a model directory (or a hub snapshot of it) has
the fingerprint of the original. A GGUF file is fingerprinted as itself, so one network as
GGUF and as a safetensors directory counts as two models (``--allow-other-model`` says
they are one). Runs record the fingerprint (docs/rundirs.md); ``--resume``,
``finetune --scores``/``--selection``, ``eval --adapter`` and ``compare`` check it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ila.errors import IlaError, Parts, argument, render
from ila.run_files import BASE_MODEL_FILE

__all__ = [
    "BASE_MODEL_FILE",
    "ModelFingerprint",
    "check_same_model",
    "fingerprint_of_record",
    "local_fingerprint",
    "model_fingerprint",
]

# Written by `ila finetune` next to an adapter or changed weights: the base's fingerprint.

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Trainer checkpoint files that are not the model.
_NOT_WEIGHTS = ("optimizer", "scheduler", "rng_state", "training_args", "scaler")
_CONFIG_KEYS_IGNORED = frozenset({"_name_or_path", "transformers_version", "_commit_hash"})
_HEAD = 64 * 1024
_CHUNK = 4 * 1024
_SAMPLES = 64


@dataclass(frozen=True)
class ModelFingerprint:
    """What identifies a model's files (see the module docstring)."""

    kind: str  # "gguf", "directory" or "hub"
    config: str | None  # sha256 of the canonical config.json; None for a GGUF file
    weights: str  # sha256 over the weights files' names, sizes and sampled bytes
    num_files: int
    num_bytes: int

    @property
    def id(self) -> str:
        """A short id of config and weights together (what messages and reports show)."""
        digest = hashlib.sha256(f"{self.config}:{self.weights}".encode()).hexdigest()
        return digest[:16]

    def same_model(self, other: ModelFingerprint) -> bool:
        return self.config == other.config and self.weights == other.weights

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelFingerprint:
        try:
            return cls(
                kind=str(data["kind"]),
                config=None if data["config"] is None else str(data["config"]),
                weights=str(data["weights"]),
                num_files=int(data["num_files"]),
                num_bytes=int(data["num_bytes"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IlaError(f"a recorded model fingerprint is malformed ({exc!r})") from exc


def model_fingerprint(model: str) -> ModelFingerprint:
    """The fingerprint of ``model``, any spec :func:`ila.model.loading.load_model` accepts.

    A hub id is fingerprinted from its snapshot in the Hugging Face cache, so call this
    after the model was loaded once (loading downloads it).
    """
    from ila.model.loading import EMBEDDED_MODEL, embedded_gguf_path

    if model == EMBEDDED_MODEL:
        return _file_fingerprint(embedded_gguf_path())
    path = Path(model).expanduser()
    if model.endswith(".gguf") and path.is_file():
        return _file_fingerprint(path)
    if path.is_dir():
        return _directory_fingerprint(path, kind="directory")
    return _directory_fingerprint(_hub_snapshot(model), kind="hub")


def local_fingerprint(model: str) -> ModelFingerprint | None:
    """The fingerprint of ``model`` if its files are on this machine, else ``None``.

    For a model named by someone else (a foreign adapter's ``base_model_name_or_path``):
    ``None`` for a path that does not exist, a hub id that is not in the cache (nothing is
    downloaded) and a model that ila converted from GGUF into its cache (the GGUF file,
    not the conversion, is the model's identity). Unreadable files still raise.
    """
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    from ila.model.loading import EMBEDDED_MODEL, cache_dir

    if model == EMBEDDED_MODEL:
        return model_fingerprint(model)
    path = Path(model).expanduser()
    if path.exists():
        if path.resolve().is_relative_to(cache_dir().resolve()):
            return None
        return model_fingerprint(model)
    try:
        cached = try_to_load_from_cache(model, "config.json")
    except HFValidationError:
        return None
    return model_fingerprint(model) if isinstance(cached, str) else None


def fingerprint_of_record(record: Mapping[str, Any] | None) -> ModelFingerprint | None:
    """The fingerprint stored in a run's record (``None`` for runs made before ila recorded
    one)."""
    if not record:
        return None
    return ModelFingerprint.from_dict(record)


def check_same_model(
    recorded: Mapping[str, Any] | ModelFingerprint | None,
    actual: ModelFingerprint,
    *,
    what: str | Parts,
    allow: bool = False,
    hint: str = "pass the model it was made with",
    allowable: bool = True,
) -> str | None:
    """Raise :class:`IlaError` unless ``recorded`` (from ``what``) is ``actual``'s model.

    Returns ``None`` when the models are the same or nothing was recorded (runs made
    before fingerprints), and, with ``allow`` (``--allow-other-model``), a sentence saying
    that they differ, for the run's record and report. The refusal offers
    ``--allow-other-model`` only where the command has it (``allowable``).
    """
    theirs = recorded if isinstance(recorded, ModelFingerprint) else fingerprint_of_record(recorded)
    if theirs is None or theirs.same_model(actual):
        return None
    part = "config and weights" if theirs.config != actual.config else "weights"
    if theirs.weights == actual.weights:
        part = "config"
    message = (
        *((what,) if isinstance(what, str) else what),
        f" was made with another model (fingerprint {theirs.id}) than this one "
        f"({actual.id}; their {part} differ)",
    )
    if allow:  # a note for the run's record, which names flags
        return render((*message, "; used anyway (", argument("allow_other_model"), ")"), "flag")
    if not allowable:
        raise IlaError(*message, f"; {hint}")
    raise IlaError(
        *message,
        f"; {hint}, or pass ",
        argument("allow_other_model"),
        " if using it with this model is what you mean",
    )


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(cached, str):
        raise IlaError(
            f"model {repo_id!r} is not in the Hugging Face cache, so its identity cannot be "
            "checked; load it once (any ila command does) or pass a local directory"
        )
    return Path(cached).parent


def _directory_fingerprint(directory: Path, *, kind: str) -> ModelFingerprint:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise IlaError(f"model directory {directory} has no config.json; pass a saved model")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IlaError(f"{config_file} is not readable JSON ({exc}); fix or re-save it") from exc
    if not isinstance(config, dict):
        raise IlaError(f"{config_file} holds no JSON object; fix or re-save the model")
    canonical = {k: v for k, v in config.items() if k not in _CONFIG_KEYS_IGNORED}
    config_hash = hashlib.sha256(
        json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    files = sorted(
        f
        for f in directory.iterdir()
        if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES) and not f.name.startswith(_NOT_WEIGHTS)
    )
    weights = hashlib.sha256()
    total = 0
    for f in files:
        total += _hash_sample(f, weights)
    return ModelFingerprint(kind, config_hash, weights.hexdigest(), len(files), total)


def _file_fingerprint(path: Path) -> ModelFingerprint:
    digest = hashlib.sha256()
    size = _hash_sample(path, digest, name="model.gguf")
    return ModelFingerprint("gguf", None, digest.hexdigest(), 1, size)


def _hash_sample(path: Path, digest: Any, *, name: str | None = None) -> int:
    """Add ``path``'s name, size and sampled bytes to ``digest``; return its size."""
    try:
        size = path.stat().st_size
        digest.update(f"{name or path.name}\0{size}\0".encode())
        with path.open("rb") as f:
            if size <= _HEAD + _SAMPLES * _CHUNK:
                digest.update(f.read())
                return size
            digest.update(f.read(_HEAD))
            span = size - _HEAD - _CHUNK
            for i in range(_SAMPLES):
                f.seek(_HEAD + span * i // (_SAMPLES - 1))
                digest.update(f.read(_CHUNK))
    except OSError as exc:
        raise IlaError(f"cannot read model file {path} ({exc.strerror}); check it") from exc
    return size
