"""A model loaded in memory, saved once into ila's cache under a name made of its content.

``ila.score(model, ...)`` and the other API functions take a loaded ``transformers`` model
with its tokenizer (ila.api.model_source). A run records its model as a path, so that
``--resume``, the reproduce command and the model fingerprint (ila.model.identity) work;
the loaded model is therefore written to ``<ila cache>/models/memory-<digest>/``, where
the digest covers its config, its weights and its tokenizer (vocabulary and rules, chat
template, special tokens). The same weights with another tokenizer (one with a chat
template added, say) are another folder, never the tokenizer saved first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ila.errors import IlaError

__all__ = ["model_digest", "saved_model", "tokenizer_description"]

# Fields that saving fills in (architectures, dtype); the class and the weights' dtypes say
# the same, so the digest does not change once the model has been saved and loaded again.
_SAVE_FILLS = {"architectures", "dtype", "torch_dtype", "_name_or_path", "transformers_version"}


def tokenizer_description(tokenizer: Any) -> dict[str, Any]:
    """What a saved tokenizer is: its vocabulary and rules (``tokenizer.json`` without the
    padding and truncation state that each call sets, or a slow tokenizer's vocabulary),
    its chat template and its special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        rules: Any = json.loads(backend.to_str())
        rules.pop("padding", None)
        rules.pop("truncation", None)
    else:
        rules = sorted(tokenizer.get_vocab().items())
    return {
        "class": type(tokenizer).__name__,
        "rules": rules,
        "chat_template": tokenizer.chat_template,
        "special_tokens": tokenizer.special_tokens_map,
    }


def model_digest(model: Any, tokenizer: Any) -> str:
    """16 hex digits of the SHA-256 of the model's config, weights and tokenizer."""
    import torch

    described = {k: v for k, v in model.config.to_dict().items() if k not in _SAVE_FILLS}
    described["class"] = type(model).__name__
    described["tokenizer"] = tokenizer_description(tokenizer)
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def saved_model(model: Any, tokenizer: Any) -> Path:
    """The cache folder of ``model`` with ``tokenizer``, written on first use (atomically:
    a staging folder renamed into place)."""
    from ila.model.loading import cache_dir

    path = cache_dir() / "models" / f"memory-{model_digest(model, tokenizer)}"
    if (path / "config.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=path.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(path)
    except OSError as exc:
        if not (path / "config.json").is_file():  # not a concurrent save of the same model
            raise IlaError(f"cannot save the loaded model to {path}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once renamed
    return path
